"""Training forwards that start at the edited layer (repedit.resume): the same logits and
gradients as the full forward, and the same edits."""

import pytest
import torch

from repedit import EditRequest, Editor, EditorConfig
from repedit.hooks import EditableModel
from repedit.positions import encode
from repedit.resume import can_resume, resumed_at, site_input

from conftest import tiny_model

PROMPTS = ["the capital of france is", "danielle darrieux speaks the language"]


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_resumed_forward_equals_full_forward(tok, arch):
    model = tiny_model(arch, initializer_range=0.5, num_hidden_layers=3)
    edited = EditableModel(model, tok)
    torch.manual_seed(0)
    below = edited.add("below", "loreft", layer=0, positions="all", config={"rank": 2})
    with torch.no_grad():  # a lower edit that changes the states the site reads
        for p in below.parameters():
            p.add_(0.3 * torch.randn_like(p))
    site = edited.add("site", "loreft", layer=1, positions="all", config={"rank": 2})
    for p in below.parameters():
        p.requires_grad_(False)
    batch = encode(tok, PROMPTS)
    for p in model.parameters():
        p.requires_grad_(False)

    def run(resume: bool):
        site.zero_grad(set_to_none=True)
        if resume:
            states = site_input(edited, 1, batch)
            assert states is not None
            with resumed_at(edited, 1, states), batch.info():
                logits = model(**batch.model_inputs()).logits
        else:
            with batch.info():
                logits = model(**batch.model_inputs()).logits
        logits.float().pow(2).mean().backward()
        return logits.detach(), [p.grad.clone() for p in site.parameters() if p.grad is not None]

    full, g_full = run(False)
    res, g_res = run(True)
    assert torch.allclose(full, res, atol=1e-5)
    assert len(g_full) == len(g_res) > 0
    for a, b in zip(g_full, g_res):
        assert torch.allclose(a, b, atol=1e-5)
    # the layers compute again afterwards
    layer0 = edited.layout.layer(model, 0)
    assert "forward" not in layer0.__dict__
    with batch.info():
        again = model(**batch.model_inputs()).logits
    assert torch.allclose(again, full, atol=1e-6)
    # a wrong state would change the logits: the resumed forward really uses the captured states
    with resumed_at(edited, 1, torch.zeros_like(site_input(edited, 1, batch))), batch.info():
        assert not torch.allclose(model(**batch.model_inputs()).logits, full, atol=1e-3)


def test_resume_only_where_it_is_exact(tok):
    model = tiny_model("llama", initializer_range=0.5)
    edited = EditableModel(model, tok)
    edited.add("a", "loreft", layer=1, positions="all")
    edited.add("m", "loreft", layer=1, component="mlp_output", positions="all")
    a, m = edited.get("a"), edited.get("m")
    assert can_resume(edited, [a]) == 1
    assert can_resume(edited, [a, m]) is None  # the MLP's output is inside the layer
    assert can_resume(edited, []) is None
    model.train()
    try:
        assert can_resume(edited, [a]) is None  # dropout would not replay
    finally:
        model.eval()


def test_edit_with_resumed_forward_equals_full_forward(tok, monkeypatch):
    req = EditRequest(prompt="the capital of france is", target_new="rome", subject="france")
    cfg = EditorConfig(method="baft", layers=[1], lr=5e-2, max_steps=40, stop_prob=0.5, augment=0,
                       method_config={"num_corpus_negatives": 0})
    out = {}
    for flag in (False, True):
        model = tiny_model("llama", initializer_range=0.5)
        monkeypatch.setattr(Editor, "resume_forward", flag)
        calls = []
        monkeypatch.setattr("repedit.training_forward.site_input", lambda *a, **k: calls.append(1) or site_input(*a, **k))
        res = Editor(model, tok, cfg).edit(req)
        x = tok([req.prompt, "the eiffel tower is located in"], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**x).logits
        out[flag] = (res.outcomes[0], logits, len(calls))
    (o0, l0, c0), (o1, l1, c1) = out[False], out[True]
    assert c0 == 0 and c1 == 1  # the states are captured once per edit, only when resuming
    assert o0.steps == o1.steps and o0.success == o1.success
    assert abs(o0.loss - o1.loss) < 1e-5
    assert torch.allclose(l0, l1, atol=1e-5)
