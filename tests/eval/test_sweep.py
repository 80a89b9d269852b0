"""Knob sweeps (generic scale, live config fields, a method's own knobs), scope AUC on a
constructed case, and the Pareto plot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from conftest import tiny_model, tiny_tokenizer
from repedit import EditRequest, Editor, EditorConfig
from repedit.eval import metrics as M
from repedit.eval.harness import evaluate
from repedit.eval.sweep import (
    AXIS_LABELS,
    get_knob,
    knob_setting,
    knobs,
    pareto_plot,
    scope_auc,
    scope_scores,
    set_knob,
    sweep,
)
from repedit.hooks import EditableModel
from repedit.methods import register_method
from repedit.methods.base import Intervention, MethodConfig
from repedit.positions import encode


# ---------------------------------------------------------------- a method with its own knob
@dataclass
class KeyMatchConfig(MethodConfig):
    threshold: float = field(default=0.999, metadata={"help": "fire when cosine similarity to a key exceeds this"})


class KeyMatch(Intervention):
    """Fires (adds ``bump``) where the state matches a stored key: its firing score is the
    best cosine similarity, so in-scope prompts (whose states are the keys) score ~1."""

    def __init__(self, config: KeyMatchConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        self.register_buffer("keys", torch.zeros(0, hidden_size))
        self.bump = nn.Parameter(torch.zeros(hidden_size))

    def knobs(self) -> dict[str, float]:
        return {"threshold": self.config.threshold}

    def set_knob(self, name: str, value: float) -> None:
        self.config.threshold = float(value)

    def _sim(self, h: torch.Tensor) -> torch.Tensor:
        if self.keys.shape[0] == 0:
            return torch.zeros(h.shape[:-1])
        hn = h.float() / h.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        kn = self.keys / self.keys.norm(dim=-1, keepdim=True)
        return (hn @ kn.T).amax(-1)  # (B, T)

    def firing_score(self, h, mask, ctx=None):
        return torch.where(mask, self._sim(h), torch.full_like(self._sim(h), -1.0)).amax(-1)

    def forward(self, h, mask, ctx=None):
        fire = mask & (self._sim(h) > self.config.threshold)
        return torch.where(fire.unsqueeze(-1), h + self.bump.to(h.dtype), h)


register_method("test_keymatch", KeyMatchConfig, KeyMatch)


def requests() -> list[EditRequest]:
    return [
        EditRequest("the capital of france is", "rome", subject="france", ground_truth="paris",
                    rephrase_prompts=["the city of france is"],
                    locality_prompts=[{"prompt": "people in london speak", "ground_truth": "english"}], case_id=0),
        EditRequest("danielle darrieux was born in", "berlin", subject="danielle darrieux", ground_truth="paris",
                    rephrase_prompts=["where was danielle darrieux born it was in"],
                    locality_prompts=[{"prompt": "the eiffel tower is located in", "ground_truth": "paris"}], case_id=1),
    ]


@pytest.fixture(scope="module")
def loreft_edit():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    cfg = EditorConfig(method="loreft", layers=[1], lr=0.05, max_steps=60, method_config={"rank": 4, "seed": 0})
    return Editor(model, tok, cfg).edit(requests()).edited, tok


def keymatch_edit():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    edited = EditableModel(model, tok)
    mod = edited.add("km", "test_keymatch", layer=1, positions="last_prompt")
    store = []
    hook = mod.register_forward_pre_hook(lambda m, a: store.append(a[0][a[1]].detach().float()))
    for r in requests():  # keys = the states of the in-scope prompts, each run alone
        for p in [r.prompt] + r.rephrase_prompts:
            b = encode(tok, [p])
            with torch.no_grad(), b.info():
                model(**b.model_inputs())
    hook.remove()
    mod.keys = torch.cat(store)
    with torch.no_grad():
        mod.bump.normal_(generator=torch.Generator().manual_seed(0))
        mod.bump.mul_(10.0)
    return edited, tok


# ---------------------------------------------------------------- scope AUC
def test_scope_auc_of_scores():
    assert scope_auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert scope_auc([1, 1, 0, 0], [0.1, 0.2, 0.9, 0.8]) == 0.0
    assert scope_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert scope_auc([1, 0], [math.inf, -math.inf]) == 1.0  # "no query" scores rank lowest
    assert math.isnan(scope_auc([1, 1], [0.3, 0.4]))


def test_rank_auc_is_the_pairwise_win_rate_with_half_ties():
    import random

    from repedit.eval.sweep import rank_auc

    rng = random.Random(0)
    for _ in range(20):
        labels = [rng.randint(0, 1) for _ in range(30)] + [0, 1]
        scores = [rng.choice([0.1, 0.2, 0.2, 0.5, 0.9, rng.random()]) for _ in labels]
        pos = [s for s, y in zip(scores, labels) if y]
        neg = [s for s, y in zip(scores, labels) if not y]
        pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
        assert abs(rank_auc(labels, scores) - pairs / (len(pos) * len(neg))) < 1e-12
    assert rank_auc([1, 0, 1, 0], [0.9, 0.9, 0.5, 0.1]) == 0.625


def test_scope_auc_is_one_when_firing_separates_perfectly():
    edited, tok = keymatch_edit()
    s = scope_scores(edited, tok, requests())["test_keymatch"]
    assert s["labels"] == [1, 1, 0, 1, 1, 0]
    assert min(s["scores"][i] for i in (0, 1, 3, 4)) > 0.9999 > max(s["scores"][i] for i in (2, 5))
    assert scope_auc(s["labels"], s["scores"]) == 1.0
    # a method with its own knob (knobs()/set_knob()) sweeps through the same protocol
    assert knobs(edited)["km"] == {"scale": 1.0, "threshold": 0.999}
    res = sweep(edited, tok, requests(), "threshold", [0.999, 2.0])
    assert res.rows[0]["scope_auc"] == {"test_keymatch": 1.0}
    assert res.rows[1]["locality"] == 1.0  # threshold 2 > any cosine: the edit never fires
    assert get_knob(edited.attachments()[0], "threshold") == 0.999  # restored


# ---------------------------------------------------------------- knobs
def test_scale_knob_scales_the_change_and_restores(loreft_edit):
    edited, tok = loreft_edit
    att = edited.attachments()[0]
    h = torch.randn(2, 5, 32)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, -1] = True
    with torch.no_grad():
        full = att.module(h, mask)
        with knob_setting(edited, "scale", 0.5):
            half = att.module(h, mask)
            assert get_knob(att, "scale") == 0.5
        assert get_knob(att, "scale") == 1.0
        again = att.module(h, mask)
    assert torch.allclose(half, h + 0.5 * (full - h), atol=1e-6)
    assert torch.equal(half[:, :-1], h[:, :-1])  # unmasked positions untouched
    assert torch.equal(again, full)  # scale 1: the hook is gone, bit-exact
    with pytest.raises(ValueError, match="has no knob 'radius_scale'; its knobs: scale"):
        set_knob(att, "radius_scale", 2.0)


def test_live_config_knob_of_a_codebook():
    edited = EditableModel(tiny_model("llama"), tiny_tokenizer())
    edited.add("cb", "codebook", layer=0)
    att = edited.attachments()[0]
    assert knobs(edited)["cb"]["radius_scale"] == 0.7
    with knob_setting(edited, "radius_scale", 2.5):
        assert att.module.config.radius_scale == 2.5
    assert att.module.config.radius_scale == 0.7
    with pytest.raises(ValueError, match="radius_scale must be >= 0"):  # the module's own validation
        set_knob(att, "radius_scale", -1.0)
    edited.add("bf", "baft", layer=1)
    assert knobs(edited)["bf"] == {"scale": 1.0, "temperature": 1.0, "gate_shift": -4.0}  # BaFT's default
    with knob_setting(edited, "temperature", 0.5, attachments=["bf"]):
        assert edited.attachments()[1].module.config.temperature == 0.5
    assert edited.attachments()[1].module.config.temperature == 1.0


def test_sweep_scale_records_generality_locality_and_plots(loreft_edit, tmp_path):
    edited, tok = loreft_edit
    reqs = requests()
    res = sweep(edited, tok, reqs, "scale", [0.0, 1.0], protocols=("teacher_forced", "probability"))
    ref = evaluate(edited, tok, reqs, protocols=("teacher_forced",)).summary["headline"][M.TEACHER_FORCED]
    off, on = res.rows
    assert off["protocol"] == on["protocol"] == M.TEACHER_FORCED
    assert off["locality"] == 1.0 and off["generality"] == ref["pre"]["generality"]  # scale 0 = unedited
    assert on["generality"] == ref["post"]["generality"] and on["locality"] == ref["post"]["locality"]
    assert set(on["headline"]) == {M.TEACHER_FORCED, M.PROBABILITY}
    assert set(on["scope_auc"]) == {"loreft"} and 0.0 <= on["scope_auc"]["loreft"] <= 1.0
    assert get_knob(edited.attachments()[0], "scale") == 1.0
    saved = json.loads(res.save(tmp_path / "sweep.json").read_text())
    assert saved["rows"][1]["value"] == 1.0 and saved["metadata"]["protocols"] == [M.TEACHER_FORCED, M.PROBABILITY]
    # two curves (the second with another label) in one plot
    res2 = sweep(edited, tok, reqs, "scale", [0.5, 2.0], scope=False, label="loreft (other)")
    png = pareto_plot([res, res2], tmp_path / "pareto.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert "Generality" in AXIS_LABELS[M.TEACHER_FORCED][1] and "unedited" in AXIS_LABELS[M.TEACHER_FORCED][0]


def test_sweep_with_a_setter_callable(loreft_edit):
    edited, tok = loreft_edit
    att = edited.attachments()[0]
    seen = []

    def setter(v: float) -> None:
        seen.append(v)
        att.active = v > 0

    res = sweep(edited, tok, requests(), "on/off", [0.0, 1.0], setter=setter, original=1.0, scope=False)
    assert seen == [0.0, 1.0, 1.0, 1.0] and att.active  # set, restore, set, restore
    assert res.rows[0]["locality"] == 1.0 and res.knob == "on/off"
