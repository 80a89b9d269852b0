import json
import warnings

import pytest
import torch

import repedit
from repedit.adapters import CONFIG_NAME, WEIGHTS_NAME, AdapterError, fingerprint, load_adapter

from conftest import tiny_model


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


def test_wrong_shape_tensor(saved, tok):
    from safetensors.torch import load_file, save_file

    t = load_file(str(saved / WEIGHTS_NAME))
    t["a.learned_source.weight"] = torch.zeros(5, 32)
    save_file(t, str(saved / WEIGHTS_NAME))
    cfg = json.loads((saved / CONFIG_NAME).read_text())
    cfg["tensors_sha256"] = ""  # skip the hash check so the shape check is what fires
    (saved / CONFIG_NAME).write_text(json.dumps(cfg))
    msg = _try_load(saved, tok)
    assert "learned_source.weight" in msg and "shape" in msg


def test_corrupted_safetensors(saved, tok):
    data = bytearray((saved / WEIGHTS_NAME).read_bytes())
    data[:8] = b"\xff" * 8
    (saved / WEIGHTS_NAME).write_bytes(bytes(data))
    assert "sha256" in _try_load(saved, tok)
    cfg = json.loads((saved / CONFIG_NAME).read_text())
    cfg["tensors_sha256"] = ""
    (saved / CONFIG_NAME).write_text(json.dumps(cfg))
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


def test_crash_during_save_never_leaves_loadable_half(tmp_path, tok, monkeypatch):
    model, edited = make_edited(tok)
    edited.save_pretrained(tmp_path)
    old = logits(model, tok)
    with torch.no_grad():
        edited.interventions["a"].learned_source.bias.add_(1.0)
    import repedit.adapters as ad

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ad, "_atomic_write_bytes", crash)  # tensors renamed, config not yet
    with pytest.raises(KeyboardInterrupt):
        edited.save_pretrained(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    e2 = repedit.wrap(tiny_model("llama"), tok)
    with pytest.raises(AdapterError, match="sha256"):
        e2.load_adapter(str(tmp_path))
    del old


def test_fingerprint_fields(tok):
    fp = fingerprint(tiny_model("llama"))
    assert fp["architecture"] == "LlamaForCausalLM" and fp["hidden_size"] == 32 and fp["vocab_size"] > 0
    assert fingerprint(tiny_model("llama"))["weights_sha256"] == fp["weights_sha256"]
    assert fingerprint(tiny_model("llama", seed=9))["weights_sha256"] != fp["weights_sha256"]


def test_no_pickle_in_files(saved):
    raw = (saved / WEIGHTS_NAME).read_bytes()
    assert b"\x80\x02" not in raw[:16] and raw[8:9] == b"{"  # safetensors header is JSON
