import json
import warnings

import pytest
import torch

import repedit
from repedit.adapters import CONFIG_NAME, WEIGHTS_NAME, AdapterError, fingerprint, attach_adapter

from conftest import all_hooks, ours, tiny_model


def make_edited(tok, model=None, **kw):
    model = model or tiny_model("llama")
    edited = repedit.wrap(model, tok)
    edited.add("a", "loreft", layer=1, positions="last_prompt", config={"rank": 4, "seed": 1}, **kw)
    with torch.no_grad():
        edited.interventions["a"].learned_source.bias.normal_()
    return model, edited


def logits(model, tok):
    x = tok(["the capital of france is", "he was born in"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**x).logits


def test_round_trip_bit_identical_and_files(tmp_path, tok):
    model, edited = make_edited(tok)
    want = logits(model, tok)
    edited.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert list(cfg) == sorted(cfg)
    assert cfg["format_version"] == 1 and cfg["repedit_version"] == repedit.__version__
    assert cfg["interventions"][0]["method"] == "loreft" and cfg["interventions"][0]["layer"] == 1
    assert cfg["fingerprint"]["num_layers"] == 2 and cfg["fingerprint"]["weights_sha256"]
    edited.unwrap()
    fresh = tiny_model("llama")  # a freshly built copy of the same base model
    again = repedit.load_adapter(fresh, str(tmp_path), tokenizer=tok)
    assert torch.equal(logits(fresh, tok), want)
    assert again.attachments()[0].positions.value == "last_prompt"


def test_bf16_target_gets_model_device_and_compute_dtype(tmp_path, tok):
    model, edited = make_edited(tok)
    edited.save_pretrained(tmp_path)
    bf = tiny_model("llama", dtype=torch.bfloat16)
    e2 = repedit.load_adapter(bf, str(tmp_path), tokenizer=tok)  # same fingerprint through bf16 hashing
    assert all(p.dtype == torch.float32 for p in e2.interventions.parameters())
    assert logits(bf, tok).dtype == torch.bfloat16


def test_named_adapters_in_subfolders(tmp_path, tok):
    model, edited = make_edited(tok)
    edited.add("b", "loreft", layer=0, config={"seed": 2}, adapter="second")
    edited.save_pretrained(tmp_path)
    assert (tmp_path / CONFIG_NAME).exists() and (tmp_path / "second" / CONFIG_NAME).exists()
    edited.unwrap()
    fresh = tiny_model("llama")
    e2 = repedit.wrap(fresh, tok)
    e2.load_adapter(str(tmp_path))
    e2.load_adapter(str(tmp_path), adapter="second")
    assert sorted(e2.adapters()) == ["default", "second"]
    assert [a.name for a in e2.attachments("second")] == ["b"]


@pytest.fixture
def saved(tmp_path, tok):
    model, edited = make_edited(tok)
    edited.save_pretrained(tmp_path)
    edited.unwrap()
    return tmp_path


def assert_untouched(fresh, e2, before):
    assert not e2.attachments()
    assert torch.equal(logits(fresh, e2.tokenizer), before)


def _try_load(saved, tok, **kw):
    fresh = tiny_model("llama")
    e2 = repedit.wrap(fresh, tok)
    before = logits(fresh, tok)
    files = {p.name: p.read_bytes() for p in saved.iterdir() if p.is_file()}
    with pytest.raises(AdapterError) as err:
        e2.load_adapter(str(saved), **kw)
    assert_untouched(fresh, e2, before)
    assert {p.name: p.read_bytes() for p in saved.iterdir() if p.is_file()} == files
    return str(err.value)


def test_missing_file(saved, tok):
    (saved / WEIGHTS_NAME).unlink()
    assert WEIGHTS_NAME in _try_load(saved, tok)


def test_missing_directory(tmp_path, tok):
    e2 = repedit.wrap(tiny_model("llama"), tok)
    with pytest.raises(AdapterError, match="does not exist"):
        e2.load_adapter(str(tmp_path / "nope"))


def test_newer_format_version(saved, tok):
    cfg = json.loads((saved / CONFIG_NAME).read_text())
    cfg["format_version"] = 99
    (saved / CONFIG_NAME).write_text(json.dumps(cfg))
    assert "format version 99" in _try_load(saved, tok)


def test_unknown_keys_warn_and_are_dropped(saved, tok):
    cfg = json.loads((saved / CONFIG_NAME).read_text())
    cfg["future_field"] = 1
    cfg["interventions"][0]["config"]["future_knob"] = 3
    (saved / CONFIG_NAME).write_text(json.dumps(cfg))
    e2 = repedit.wrap(tiny_model("llama"), tok)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e2.load_adapter(str(saved))
    text = " ".join(str(w.message) for w in caught)
    assert "future_field" in text and "future_knob" in text
    assert len(e2.attachments()) == 1


def edit_config(saved, change, where=None):
    """Apply ``change(cfg)`` to the saved config (``where``: the adapter folder)."""
    path = (where or saved) / CONFIG_NAME
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


def replace_tensor(saved, key, value):
    """Put ``value`` in the tensor file and record the new file's sha256, as a save would."""
    from safetensors.torch import load_file, save_file

    from repedit.hashing import file_sha256

    t = load_file(str(saved / WEIGHTS_NAME))
    t[key] = value
    save_file(t, str(saved / WEIGHTS_NAME))
    edit_config(saved, lambda c: c.update(tensors_sha256=file_sha256(saved / WEIGHTS_NAME)))


def test_wrong_shape_tensor(saved, tok):
    replace_tensor(saved, "a.learned_source.weight", torch.zeros(5, 32))
    msg = _try_load(saved, tok)
    assert "learned_source.weight" in msg and "shape" in msg


def test_corrupted_safetensors(saved, tok):
    data = bytearray((saved / WEIGHTS_NAME).read_bytes())
    data[:8] = b"\xff" * 8
    (saved / WEIGHTS_NAME).write_bytes(bytes(data))
    assert "sha256" in _try_load(saved, tok)
    from repedit.hashing import file_sha256

    edit_config(saved, lambda c: c.update(tensors_sha256=file_sha256(saved / WEIGHTS_NAME)))
    assert "safetensors" in _try_load(saved, tok)


def test_corrupted_config(saved, tok):
    (saved / CONFIG_NAME).write_text("{not json")
    assert "not valid JSON" in _try_load(saved, tok)


def test_fingerprint_mismatch_and_override(saved, tok):
    other = tiny_model("llama", seed=123)
    e2 = repedit.wrap(other, tok)
    with pytest.raises(AdapterError, match="another base model"):
        e2.load_adapter(str(saved))
    assert not e2.attachments()
    with pytest.warns(UserWarning, match="another base model"):
        e2.load_adapter(str(saved), ignore_fingerprint=True)
    assert len(e2.attachments()) == 1


def test_crash_before_the_config_is_written_keeps_the_old_adapter(tmp_path, tok, monkeypatch):
    model, edited = make_edited(tok)
    edited.save_pretrained(tmp_path)
    old = logits(model, tok)
    with torch.no_grad():
        edited.interventions["a"].learned_source.bias.add_(1.0)
    import repedit.adapters as ad

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ad, "_atomic_write_bytes", crash)  # new tensors written, config not yet
    with pytest.raises(KeyboardInterrupt):
        edited.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    fresh = tiny_model("llama")
    repedit.load_adapter(fresh, str(tmp_path), tokenizer=tok)
    assert torch.equal(logits(fresh, tok), old)


def _crash_on_call(monkeypatch, target, name, n):
    """Make ``target.name`` raise (a killed process) on its ``n``-th call; returns the call list."""
    real, calls = getattr(target, name), []

    def fake(*a, **k):
        calls.append(a)
        if len(calls) == n:
            raise KeyboardInterrupt(f"killed at {name} call {n}")
        return real(*a, **k)

    monkeypatch.setattr(target, name, fake)
    return calls


@pytest.mark.parametrize("step", ["save_file", "fsync", "replace:1", "replace:2", "replace:3"])
def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_adapter(tmp_path, tok, monkeypatch, step):
    import os

    import repedit.adapters as ad

    model, edited = make_edited(tok)
    edited.save_pretrained(tmp_path)
    old = logits(model, tok)
    with torch.no_grad():
        edited.interventions["a"].learned_source.bias.add_(1.0)
    new = logits(model, tok)
    with monkeypatch.context() as m:
        if step == "save_file":
            _crash_on_call(m, ad, "save_file", 1)
        elif step == "fsync":
            _crash_on_call(m, os, "fsync", 1)
        else:  # 1: tensors beside the old ones, 2: the config (the switch), 3: tensors into place
            _crash_on_call(m, os, "replace", int(step.split(":")[1]))
        with pytest.raises(KeyboardInterrupt):
            edited.save_pretrained(tmp_path)
    fresh = tiny_model("llama")
    repedit.load_adapter(fresh, str(tmp_path), tokenizer=tok)
    got = logits(fresh, tok)
    assert torch.equal(got, new if step == "replace:3" else old)
    # a killed process leaves its temporaries; the next save removes them
    (tmp_path / f".{WEIGHTS_NAME}.x1y2.tmp").write_bytes(b"partial")
    (tmp_path / f".{CONFIG_NAME}.x1y2.tmp").write_bytes(b"{")
    (tmp_path / f".{WEIGHTS_NAME}.{'0' * 64}.pending").write_bytes(b"stale")
    edited.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    fresh = tiny_model("llama")
    repedit.load_adapter(fresh, str(tmp_path), tokenizer=tok)
    assert torch.equal(logits(fresh, tok), new)


def two_interventions(tmp_path, tok):
    model, edited = make_edited(tok)
    edited.add("b", "loreft", layer=0, positions="last_prompt", config={"rank": 4, "seed": 2})
    edited.save_pretrained(tmp_path)
    edited.unwrap()
    return tmp_path


@pytest.mark.parametrize("change, message", [
    ({"component": "bogus"}, "unknown component 'bogus'"),
    ({"name": "a"}, "used twice"),
    ({"name": "b.x"}, "without '.'"),
    ({"layer": 1.7}, "'layer' must be int"),
    ({"layer": True}, "'layer' must be int"),
    ({"active": "no"}, "'active' must be bool"),
    ({"positions": "middle"}, "unknown position rule"),
])
def test_a_bad_second_intervention_attaches_nothing(tmp_path, tok, change, message):
    saved = two_interventions(tmp_path, tok)
    edit_config(saved, lambda c: c["interventions"][1].update(change))
    assert message in _try_load(saved, tok)
    fresh = tiny_model("llama")
    before = logits(fresh, tok)
    hooks = all_hooks(fresh)
    with pytest.raises(AdapterError, match="intervention 1"):
        repedit.load_adapter(fresh, str(saved), tokenizer=tok)
    assert all_hooks(fresh) == hooks and torch.equal(logits(fresh, tok), before)


def test_failed_loads_leave_no_hooks(saved, tok):
    other = tiny_model("llama", seed=123)
    before = logits(other, tok)
    hooks = all_hooks(other)
    for _ in range(5):
        with pytest.raises(AdapterError, match="another base model"):
            repedit.load_adapter(other, str(saved), tokenizer=tok)
    assert all_hooks(other) == hooks and not ours(all_hooks(other))
    assert torch.equal(logits(other, tok), before)


def test_adapter_names_cannot_leave_the_directory(tmp_path, tok):
    model, edited = make_edited(tok)
    with pytest.raises(ValueError, match="adapter names"):
        edited.add("b", "loreft", layer=0, adapter="../../escaped")
    for bad in ("../x", "a/b", "v1.2", "", "x\\y"):
        with pytest.raises(ValueError, match="adapter names"):
            edited.save_pretrained(tmp_path / "out", adapter=bad)
    edited.add("b", "loreft", layer=0, config={"seed": 2}, adapter="b")
    edited.save_pretrained(tmp_path / "sibling")  # a loadable adapter "b" one level up
    inner = tmp_path / "sibling" / "inner"
    inner.mkdir()
    e2 = repedit.wrap(tiny_model("llama"), tok)
    for bad in ("../b", "..", "b/../b"):
        with pytest.raises(AdapterError, match="adapter names"):
            e2.load_adapter(str(inner), adapter=bad)
    assert not e2.attachments()
    edit_config(tmp_path / "sibling", lambda c: c.update(adapter_name="../../escaped"))
    with pytest.raises(AdapterError, match="adapter names"):
        e2.load_adapter(str(tmp_path / "sibling"))
    assert not e2.attachments() and not (tmp_path / "escaped").exists()


def test_delete_adapter_removes_all_of_its_interventions(tok):
    model = tiny_model("llama")
    before = logits(model, tok)
    _, edited = make_edited(tok, model=model)
    edited.add("b", "loreft", layer=0, config={"seed": 2}, adapter="second")
    edited.add("c", "loreft", layer=1, config={"seed": 3}, adapter="second")
    assert edited.delete_adapter("second") == ["b", "c"]
    assert edited.adapters() == ["default"] and list(edited.interventions) == ["a"]
    with pytest.raises(KeyError, match="no adapter named 'second'"):
        edited.delete_adapter("second")
    edited.delete_adapter("default")
    assert not edited.attachments() and not edited._site_handles  # the layers' hooks are gone too
    assert torch.equal(logits(model, tok), before)


def _bad_tensor(saved, dtype_or_nan):
    from safetensors.torch import load_file

    w = load_file(str(saved / WEIGHTS_NAME))["a.learned_source.bias"]
    value = torch.full_like(w, float("nan")) if dtype_or_nan == "nan" else w.to(dtype_or_nan)
    replace_tensor(saved, "a.learned_source.bias", value)


@pytest.mark.parametrize("change, message", [
    (lambda s: edit_config(s, lambda c: c.update(format_version=-5)), "format_version must be a positive integer"),
    (lambda s: edit_config(s, lambda c: c.update(format_version=True)), "format_version must be a positive integer"),
    (lambda s: edit_config(s, lambda c: c.update(fingerprint={})), "missing from the adapter"),
    (lambda s: edit_config(s, lambda c: c.update(fingerprint=[])), "'fingerprint' must be dict"),
    (lambda s: edit_config(s, lambda c: c.update(compute_dtype="float8")), "compute_dtype must be one of"),
    (lambda s: edit_config(s, lambda c: c.update(interventions={})), "'interventions' must be list"),
    (lambda s: edit_config(s, lambda c: c.update(metadata="x")), "'metadata' must be dict"),
    (lambda s: edit_config(s, lambda c: c.pop("tensors_sha256")), "lacks the required key 'tensors_sha256'"),
    (lambda s: edit_config(s, lambda c: c.update(tensors_sha256="")), "tensors_sha256 must be"),
    (lambda s: _bad_tensor(s, "nan"), "NaN or infinite"),
    (lambda s: _bad_tensor(s, torch.int64), "dtype torch.int64"),
])
def test_configs_and_tensors_are_checked_strictly(saved, tok, change, message):
    change(saved)
    assert message in _try_load(saved, tok)


def test_sha256_removed_with_a_flipped_byte_is_refused(saved, tok):
    data = bytearray((saved / WEIGHTS_NAME).read_bytes())
    data[-3] ^= 0x40  # a flipped bit in the last tensor's values
    (saved / WEIGHTS_NAME).write_bytes(bytes(data))
    edit_config(saved, lambda c: c.pop("tensors_sha256"))
    assert "tensors_sha256" in _try_load(saved, tok)
    with pytest.raises(AdapterError, match="tensors_sha256"):
        repedit.load_adapter(tiny_model("llama"), str(saved))


def test_fingerprint_fields(tok):
    fp = fingerprint(tiny_model("llama"))
    assert fp["architecture"] == "LlamaForCausalLM" and fp["hidden_size"] == 32 and fp["vocab_size"] > 0
    assert fingerprint(tiny_model("llama"))["weights_sha256"] == fp["weights_sha256"]
    assert fingerprint(tiny_model("llama", seed=9))["weights_sha256"] != fp["weights_sha256"]


def test_no_pickle_in_files(saved):
    raw = (saved / WEIGHTS_NAME).read_bytes()
    assert b"\x80\x02" not in raw[:16] and raw[8:9] == b"{"  # safetensors header is JSON
