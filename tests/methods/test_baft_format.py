"""A BaFT adapter saved before BaFT became a package loads and gives bit-identical logits,
and saving it again writes the same tensors and config (the format did not change)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from repedit.hooks import EditableModel

from conftest import tiny_model

SAVED = Path(__file__).resolve().parents[1] / "data" / "baft_adapter_v1"


def test_saved_adapter_loads_bit_identically(tok, tmp_path):
    expected = load_file(str(SAVED / "expected.safetensors"))  # no pickle, even for our own fixtures
    model = tiny_model("llama", initializer_range=0.5)
    with torch.no_grad():
        base = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits[:, -3:]
    assert not torch.equal(base, expected["logits"])  # the edit changes something
    edited = EditableModel.from_pretrained(model, str(SAVED), tokenizer=tok)
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits[:, -3:]
    assert torch.equal(logits, expected["logits"])
    edited.save_pretrained(str(tmp_path / "again"))
    old, new = load_file(str(SAVED / "adapter_model.safetensors")), load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
    assert sorted(old) == sorted(new)
    assert all(torch.equal(old[k], new[k]) for k in old)
    old_cfg = json.loads((SAVED / "adapter_config.json").read_text())
    new_cfg = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
    # the same entries; the config only gains fields added since, at their defaults
    added = {"gate_fit": "active", "gate_fit_sample": 1024, "gate_fit_slack": 4.0, "gate_fit_rounds": 3,
             "value": "reft", "routing": "auto", "routing_top_k": 8, "routing_min_edits": 256, "num_fold": -1,
                 "train_as_inference": "earlier"}
    for o, n in zip(old_cfg["interventions"], new_cfg["interventions"], strict=True):
        assert {k: v for k, v in n.items() if k != "config"} == {k: v for k, v in o.items() if k != "config"}
        assert {k: v for k, v in n["config"].items() if k in o["config"]} == o["config"]
        assert {k: v for k, v in n["config"].items() if k not in o["config"]} == added
