"""pyreft interop: files built here in pyreft's documented layout (no pyreft install needed).

Layout (pyvene ``IntervenableModel.save``): ``config.json`` + ``intkey_<key>.bin`` holding
``LoreftIntervention.state_dict()`` = {weight (r, d), bias (r,), rotate_layer (d, r)};
pyreft computes ``h + (h Wᵀ + b − h P) Pᵀ`` with P = rotate_layer.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from repedit import AdapterError, wrap
from repedit.interop import LOREFT_CLASS, inspect_pyreft, read_pyreft, write_pyreft
from repedit.interop.pyreft import EXACT_KEY, REPRESENTATION_FIELDS, pyvene_key

D, R = 32, 4  # tiny llama hidden size, LoReFT rank
PYVENE_FIELDS = {
    "intervention_constant_sources",
    "intervention_dimensions",
    "intervention_types",
    "mode",
    "representations",
    "sorted_keys",
    "transformers_version",
}


def loreft_state(seed: int = 0, d: int = D, r: int = R, dtype=torch.float32) -> OrderedDict:
    """What pyreft's LoreftIntervention.state_dict() returns."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=g))
    sd = OrderedDict()
    sd["weight"] = (0.5 * torch.randn(r, d, generator=g)).to(dtype)
    sd["bias"] = torch.randn(r, generator=g).to(dtype)
    sd["rotate_layer"] = q.contiguous()  # fp32, orthonormal columns
    return sd


def write_pyreft_dir(path: Path, sites, states=None, types=None, extra: dict | None = None) -> list[str]:
    """Write a pyreft save for ``sites`` = [(layer, component), ...]; returns the keys."""
    path.mkdir(parents=True, exist_ok=True)
    counter: dict[str, int] = {}
    keys, reps = [], []
    for i, (layer, comp) in enumerate(sites):
        rep = [layer, comp, "pos", 1, R] + [None] * 9
        reps.append(rep)
        k = pyvene_key(layer, comp)
        counter[k] = counter.get(k, -1) + 1
        key = f"{k}#{counter[k]}"
        keys.append(key)
        state = states[i] if states is not None else loreft_state(seed=i)
        torch.save(state, path / f"intkey_{key}.bin")
    cfg = {
        "intervention_constant_sources": [True] * len(sites),
        "intervention_dimensions": [D] * len(sites),
        "intervention_types": types or [LOREFT_CLASS] * len(sites),
        "mode": "parallel",
        "representations": reps,
        "sorted_keys": keys,
        "transformers_version": "5.23.0",
    }
    cfg.update(extra or {})
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return keys


def hand_hook(state):
    """Reference: pyreft's formula on the last position, in float64, from the raw tensors."""
    W, b, P = (state[k].double() for k in ("weight", "bias", "rotate_layer"))

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        last = h[:, -1].double()
        new = last + (last @ W.T + b - last @ P) @ P.T
        h = h.clone()
        h[:, -1] = new.to(h.dtype)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    return hook


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


IDS = torch.tensor([[5, 6, 7, 8, 9, 3], [10, 11, 12, 13, 14, 15]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------- reading
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_read_matches_hand_reference(tmp_path, w_dtype):
    state = loreft_state(seed=3, dtype=w_dtype)  # pyreft's default learned_source dtype is bf16
    write_pyreft_dir(tmp_path, [(1, "block_output")], states=[state])
    ref_model = tiny_model("llama")
    ref_model.model.layers[1].register_forward_hook(hand_hook(state))
    expected = logits(ref_model)

    model = tiny_model("llama")
    base = logits(model)
    edited = read_pyreft(tmp_path, model, positions="last_prompt")
    got = logits(model)
    assert [(a.layer, a.component, a.positions.value) for a in edited.attachments()] == [(1, "block_output", "last_prompt")]
    assert (got - base).abs().max() > 1e-2  # the edit does something
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(got[:, :-1], base[:, :-1], atol=0, rtol=0)  # only the last position moves
    # the tensors land in repedit's orientation: R = rotate_layerᵀ, W and b as stored (widened exactly)
    mod = edited.interventions["pyreft_0"]
    torch.testing.assert_close(mod.rotate.matrix(), state["rotate_layer"].T, atol=1e-6, rtol=0)
    assert torch.equal(mod.learned_source.weight, state["weight"].float())
    assert torch.equal(mod.learned_source.bias, state["bias"].float())


def test_read_components_and_module_paths(tmp_path):
    sites = [(0, "attention_output"), (0, "model.layers[0].mlp.output"), (1, "model.layers[1].output")]
    states = [loreft_state(seed=i) for i in range(3)]
    write_pyreft_dir(tmp_path, sites, states=states)
    ref = tiny_model("llama")
    ref.model.layers[0].self_attn.register_forward_hook(hand_hook(states[0]))
    ref.model.layers[0].mlp.register_forward_hook(hand_hook(states[1]))
    ref.model.layers[1].register_forward_hook(hand_hook(states[2]))
    model = tiny_model("llama")
    edited = read_pyreft(tmp_path, model)
    assert [(a.layer, a.component) for a in edited.attachments()] == [
        (0, "attention_output"),
        (0, "mlp_output"),
        (1, "block_output"),
    ]
    torch.testing.assert_close(logits(model), logits(ref), atol=2e-5, rtol=0)


def test_read_adds_to_existing_editable_and_positions_list(tmp_path):
    write_pyreft_dir(tmp_path, [(0, "block_output"), (1, "block_output")])
    edited = wrap(tiny_model("llama"))
    edited.add("mine", "loreft", layer=1, config={"rank": 2})
    read_pyreft(tmp_path, edited, positions=["prompt", "all"], adapter="imported")
    rows = [(a.name, a.adapter, a.positions.value) for a in edited.attachments()]
    assert rows == [("mine", "default", "last_prompt"), ("pyreft_0", "imported", "prompt"), ("pyreft_1", "imported", "all")]
    with pytest.raises(ValueError, match="2 interventions"):
        read_pyreft(tmp_path, edited, positions=["all"], prefix="other")
    with pytest.raises(AdapterError, match="already attached"):
        read_pyreft(tmp_path, edited)  # names pyreft_0/1 are taken
    assert len(edited.attachments()) == 3


def test_read_into_bf16_model_with_model_compute_dtype(tmp_path):
    state = loreft_state(seed=5, dtype=torch.bfloat16)
    write_pyreft_dir(tmp_path, [(1, "block_output")], states=[state])
    model = tiny_model("llama", dtype=torch.bfloat16)
    edited = read_pyreft(tmp_path, model, compute_dtype="model")
    mod = edited.interventions["pyreft_0"]
    assert {p.dtype for p in mod.parameters()} == {torch.bfloat16}
    assert torch.equal(mod.learned_source.weight, state["weight"])
    ref = tiny_model("llama", dtype=torch.bfloat16)
    ref.model.layers[1].register_forward_hook(hand_hook(state))
    torch.testing.assert_close(logits(model).float(), logits(ref).float(), atol=0.1, rtol=0)


def test_write_skips_inactive(tmp_path, caplog):
    edited = _edited_with_loreft(tiny_model("llama"))
    edited.set_active(["a"], active=False)
    expected = logits(edited.model)
    write_pyreft(edited, tmp_path)
    assert "skipping inactive" in caplog.text
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["repedit"]["names"] == ["b"]
    fresh = tiny_model("llama")
    read_pyreft(tmp_path, fresh)
    assert torch.equal(logits(fresh), expected)


def test_inspect_without_model(tmp_path):
    write_pyreft_dir(tmp_path, [(1, "block_output"), (1, "block_output")])
    items = inspect_pyreft(tmp_path)
    assert [i.key for i in items] == [
        "layer_1_comp_block_output_unit_pos_nunit_1#0",
        "layer_1_comp_block_output_unit_pos_nunit_1#1",
    ]
    assert {(i.rank, i.hidden_size) for i in items} == {(R, D)}


# ------------------------------------------------------------------------- writing
def _edited_with_loreft(model, seed=0):
    edited = wrap(model)
    g = torch.Generator().manual_seed(seed)
    for name, layer, comp, pos in [("a", 0, "mlp_output", "prompt"), ("b", 1, "block_output", "last_prompt")]:
        mod = edited.add(name, "loreft", layer=layer, component=comp, positions=pos, config={"rank": R, "seed": seed})
        with torch.no_grad():
            mod.learned_source.bias.copy_(torch.randn(R, generator=g))
    return edited


def test_write_layout_matches_pyvene(tmp_path):
    edited = _edited_with_loreft(tiny_model("llama"))
    write_pyreft(edited, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert PYVENE_FIELDS <= set(cfg)
    assert cfg["intervention_types"] == [LOREFT_CLASS, LOREFT_CLASS]
    assert cfg["intervention_constant_sources"] == [True, True]
    assert cfg["intervention_dimensions"] == [D, D]
    assert cfg["mode"] == "parallel"
    assert cfg["representations"] == [
        [0, "mlp_output", "pos", 1, R] + [None] * 9,
        [1, "block_output", "pos", 1, R] + [None] * 9,
    ]
    assert len(cfg["representations"][0]) == len(REPRESENTATION_FIELDS)
    assert cfg["sorted_keys"] == ["layer_0_comp_mlp_output_unit_pos_nunit_1#0", "layer_1_comp_block_output_unit_pos_nunit_1#0"]
    assert cfg["repedit"]["positions"] == ["prompt", "last_prompt"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json"] + sorted(f"intkey_{k}.bin" for k in cfg["sorted_keys"])  # no temp files left
    for key, att in zip(cfg["sorted_keys"], edited.attachments()):
        sd = torch.load(tmp_path / f"intkey_{key}.bin", weights_only=True, map_location="cpu")
        assert type(sd) is dict and set(sd) == {"weight", "bias", "rotate_layer", EXACT_KEY}
        assert sd["weight"].shape == (R, D) and sd["bias"].shape == (R,) and sd["rotate_layer"].shape == (D, R)
        assert torch.equal(sd["rotate_layer"], att.module.rotate.matrix().T)
        P = sd["rotate_layer"].double()
        torch.testing.assert_close(P.T @ P, torch.eye(R, dtype=torch.float64), atol=1e-6, rtol=0)
    write_pyreft(edited, tmp_path / "plain", exact=False)
    sd = torch.load(next((tmp_path / "plain").glob("intkey_*.bin")), weights_only=True)
    assert set(sd) == {"weight", "bias", "rotate_layer"}


#: config.json that pyreft 0.1.0 / pyvene 0.1.8 wrote (ReftModel.save on transformers 5.23) for
#: tiny llama, LoreftIntervention(embed_dim=32, low_rank_dimension=4) on layer 1 block_output.
PYREFT_WROTE = json.loads(
    """{"intervention_constant_sources": [true], "intervention_dimensions": [32],
    "intervention_types": ["<class 'pyreft.interventions.LoreftIntervention'>"], "mode": "parallel",
    "representations": [[1, "block_output", "pos", 1, 4, null, null, null, null, null, null, null, null, null]],
    "sorted_keys": ["layer_1_comp_block_output_unit_pos_nunit_1#0"], "transformers_version": "5.23.0"}"""
)


def test_write_config_equals_what_pyreft_wrote(tmp_path):
    import transformers

    edited = wrap(tiny_model("llama"))
    edited.add("e", "loreft", layer=1, config={"rank": 4})
    write_pyreft(edited, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg.pop("repedit")["names"] == ["e"]
    assert cfg == dict(PYREFT_WROTE, transformers_version=transformers.__version__)
    assert (tmp_path / "intkey_layer_1_comp_block_output_unit_pos_nunit_1#0.bin").is_file()


def test_roundtrip_bit_identical(tmp_path):
    edited = _edited_with_loreft(tiny_model("llama"))
    expected = logits(edited.model)
    write_pyreft(edited, tmp_path)
    fresh = tiny_model("llama")
    back = read_pyreft(tmp_path, fresh)  # names and positions come from the 'repedit' block
    assert [(a.name, a.layer, a.component, a.positions.value) for a in back.attachments()] == [
        (a.name, a.layer, a.component, a.positions.value) for a in edited.attachments()
    ]
    assert torch.equal(logits(fresh), expected)
    # pyreft's three tensors only: equal up to re-orthonormalising R
    write_pyreft(edited, tmp_path / "plain", exact=False)
    fresh2 = tiny_model("llama")
    read_pyreft(tmp_path / "plain", fresh2)
    torch.testing.assert_close(logits(fresh2), expected, atol=1e-5, rtol=0)


def test_roundtrip_bf16_model_compute_dtype(tmp_path):
    model = tiny_model("llama", dtype=torch.bfloat16)
    edited = wrap(model, compute_dtype="model")
    edited.add("e", "loreft", layer=1, config={"rank": R, "seed": 2})
    with torch.no_grad():
        edited.interventions["e"].learned_source.bias.fill_(3.0)
    expected = logits(model)
    write_pyreft(edited, tmp_path)
    sd = torch.load(next(tmp_path.glob("*.bin")), weights_only=True)
    assert {t.dtype for t in sd.values()} == {torch.bfloat16}
    fresh = tiny_model("llama", dtype=torch.bfloat16)
    back = read_pyreft(tmp_path, fresh)  # compute_dtype comes from the 'repedit' block
    assert back.compute_dtype == "model"
    assert torch.equal(logits(fresh), expected)


def test_roundtrip_path_components_for_arch_pyvene_lacks(tmp_path):
    model = tiny_model("gptj")  # not in pyvene 0.1.8's registry: module paths are written
    edited = wrap(model)
    edited.add("e", "loreft", layer=1, component="attention_output", config={"rank": R, "seed": 1})
    with torch.no_grad():
        edited.interventions["e"].learned_source.bias.fill_(2.0)
    expected = logits(model)
    write_pyreft(edited, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["representations"][0][1] == "transformer.h[1].attn.output"
    assert cfg["sorted_keys"] == ["comp_transformer_h[1]_attn_output_unit_pos_nunit_1#0"]
    fresh = tiny_model("gptj")
    read_pyreft(tmp_path, fresh)
    assert torch.equal(logits(fresh), expected)


def test_write_refuses_non_loreft(tmp_path):
    edited = wrap(tiny_model("llama"))
    edited.add("e", "loreft", layer=1, config={"rank": R})
    other = next((m for m in ("baft", "codebook") if _buildable(m)), None)
    if other is None:
        pytest.skip("no non-LoReFT method registered")
    edited.add("x", other, layer=0)
    with pytest.raises(ValueError, match=f"LoReFT only.*x \\({other}\\)"):
        write_pyreft(edited, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="no interventions"):
        write_pyreft(edited, tmp_path / "out", adapter="nope")


def _buildable(name):
    from repedit.methods import available_methods, build

    if name not in available_methods():
        return False
    try:
        build(name, None, D)
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------- safety
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("how", ["torch_save", "raw_pickle"])
def test_malicious_pickle_refused(tmp_path, how):
    marker = tmp_path / "pwned.txt"
    d = tmp_path / "reft"
    (key,) = write_pyreft_dir(d, [(1, "block_output")])
    payload = {"weight": _Evil(marker), "bias": torch.zeros(R), "rotate_layer": torch.zeros(D, R)}
    path = d / f"intkey_{key}.bin"
    if how == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # a protocol torch.load parses
    assert b"system" in path.read_bytes()  # the file really carries the os.system call
    model = tiny_model("llama")
    before = hook_count(model)
    with pytest.raises(AdapterError, match=r"intkey_layer_1_comp_block_output_unit_pos_nunit_1#0\.bin.*refused.*posix\.system"):
        read_pyreft(d, model)
    assert not marker.exists()
    assert hook_count(model) == before  # nothing attached, the temporary wrapper unhooked


# ------------------------------------------------------------------------- malformed input
def _bad_state(**changes):
    sd = loreft_state()
    for k, v in changes.items():
        if v is None:
            del sd[k]
        else:
            sd[k] = v
    return sd


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
        (lambda d: (d / "config.json").unlink(), "config.json does not exist.*ReftTrainer"),
        (lambda d: _patch(d, intervention_types=["<class 'pyreft.interventions.NoreftIntervention'>"]), "NoreftIntervention.*only LoReFT"),
        (lambda d: _patch(d, representations=[[1, "block_output", "h", 1, R]]), "unit 'h' is not supported"),
        (lambda d: _patch(d, representations=[[1, "head_query_output", "pos", 1, R]]), "component 'head_query_output' is not supported"),
        (lambda d: _patch(d, representations=[[1, "model.layers[1].input", "pos", 1, R]]), "supports module outputs only"),
        (lambda d: _patch(d, representations=[[1, "lm_head.output", "pos", 1, R]]), "not a decoder layer"),
        (lambda d: _patch(d, representations=[[7, "block_output", "pos", 1, R]]), "layer 7 is out of range"),
        (lambda d: _patch(d, representations=[[1, "block_output", "pos", 1, R + 1]]), "low_rank_dimension=5.*rank 4"),
        (lambda d: _patch(d, representations=[[1, "a/b.output", "pos", 1, R]]), "path characters"),
        (lambda d: _patch(d, representations="oops"), "'representations' must be"),
        (lambda d: _patch(d, intervention_dimensions=[64]), "intervention_dimensions=64"),
        (lambda d: _patch(d, intervention_types=[LOREFT_CLASS, LOREFT_CLASS]), "one class per representation"),
        (lambda d: _rewrite_bin(d, _bad_state(rotate_layer=None)), r"#0\.bin: missing \['rotate_layer'\]"),
        (lambda d: _rewrite_bin(d, _bad_state(rotate_layer=torch.randn(R, D))), "'rotate_layer' has shape"),
        (lambda d: _rewrite_bin(d, _bad_state(rotate_layer=torch.randn(D, R))), "not orthonormal"),
        (lambda d: _rewrite_bin(d, _bad_state(bias=torch.full((R,), float("nan")))), "NaN"),
        (lambda d: _rewrite_bin(d, [torch.zeros(1)]), "expected a dict of tensors"),
        (lambda d: _rewrite_bin(d, loreft_state(d=48)), "intervention_dimensions=32.*hidden size 48"),
        (lambda d: next(d.glob("*.bin")).write_bytes(b"\x00garbage"), "refused to load"),
        (lambda d: next(d.glob("*.bin")).unlink(), "tensor file .*intkey_.* is missing"),
    ],
)
def test_malformed_inputs_raise_and_attach_nothing(tmp_path, mutate, match):
    write_pyreft_dir(tmp_path, [(1, "block_output")])
    mutate(tmp_path)
    edited = wrap(tiny_model("llama"))
    edited.add("keep", "loreft", layer=0, config={"rank": 2})
    with pytest.raises(AdapterError, match=match):
        read_pyreft(tmp_path, edited)
    assert [a.name for a in edited.attachments()] == ["keep"]


def test_hidden_size_mismatch_with_model(tmp_path):
    write_pyreft_dir(tmp_path, [(1, "block_output")])
    model = tiny_model("llama", hidden_size=64, intermediate_size=64)
    before = hook_count(model)
    with pytest.raises(AdapterError, match="hidden size 32 does not match the model's 64"):
        read_pyreft(tmp_path, model)
    assert hook_count(model) == before


def test_second_file_bad_attaches_nothing(tmp_path):
    keys = write_pyreft_dir(tmp_path, [(0, "block_output"), (1, "block_output")])
    torch.save(_bad_state(weight=None), tmp_path / f"intkey_{keys[1]}.bin")
    edited = wrap(tiny_model("llama"))
    with pytest.raises(AdapterError, match=r"layer_1_comp_block_output_unit_pos_nunit_1#0\.bin: missing"):
        read_pyreft(tmp_path, edited)
    assert edited.attachments() == []


def _patch(d: Path, **fields):
    """Change config fields; a changed representation renames the tensor file to its new key,
    so the error under test is the field's, not a missing file."""
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(fields)
    (d / "config.json").write_text(json.dumps(cfg))
    reps = fields.get("representations")
    if isinstance(reps, list) and len(reps) == 1 and isinstance(reps[0], list):
        layer, comp, unit, n = reps[0][:4]
        key = pyvene_key(layer, comp, unit, n) + "#0"
        if "/" not in key:
            next(d.glob("intkey_*.bin")).rename(d / f"intkey_{key}.bin")


def _rewrite_bin(d: Path, obj):
    torch.save(obj, next(d.glob("intkey_*.bin")))
