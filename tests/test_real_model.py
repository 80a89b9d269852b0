"""End-to-end on the real default model (SmolLM2-135M-Instruct). Slow, but runs in CI."""

import pytest
import torch

import repedit
from repedit import EditRequest, Editor, EditorConfig

from conftest import param_hashes

pytestmark = pytest.mark.slow


def test_load_forward_wrap_edit_save_load(smollm2, tmp_path):
    model, tok = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    before_params = param_hashes(model)
    x = tok(["The Eiffel Tower is located in the city of"], return_tensors="pt")
    with torch.no_grad():
        base = model(**x, output_hidden_states=True)
    assert tok.decode(base.logits[0, -1].argmax()).strip() == "Paris"

    editor = Editor(model, tok, EditorConfig(method="loreft", layers=[9], max_steps=40))
    req = EditRequest(prompt="The Eiffel Tower is located in the city of", target_new="Rome", subject="Eiffel Tower")
    res = editor.edit(req)
    assert res.outcomes[0].success
    with torch.no_grad():
        edited = model(**x, output_hidden_states=True)
    assert tok.decode(edited.logits[0, -1].argmax()).strip() == "Rome"
    # the edit is visible in the hidden states HF returns (index 10 = output of layer 9)
    assert (edited.hidden_states[10] - base.hidden_states[10]).abs().max() > 1e-3
    assert torch.equal(edited.hidden_states[9], base.hidden_states[9])
    assert res.edited.generate([req.prompt], max_new_tokens=2)[0].strip().startswith("Rome")

    res.save_pretrained(tmp_path)
    res.edited.unwrap()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, base.logits)
    reloaded = repedit.load_adapter(model, str(tmp_path), tokenizer=tok)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, edited.logits)
    reloaded.unwrap()
    assert param_hashes(model) == before_params


def test_baft_edit_management_on_the_default_model(smollm2, tmp_path):
    """Two sequential BaFT edits with the defaults: explain names each prompt's edit, and
    deleting one gives that prompt the unedited logits back while the other edit stays."""
    from repedit import edits

    model, tok = smollm2
    reqs = [EditRequest(prompt="The Eiffel Tower is located in the city of", target_new="Rome", subject="Eiffel Tower"),
            EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English",
                        subject="Danielle Darrieux")]

    def last(prompt):
        with torch.no_grad():
            return model(**tok([prompt], return_tensors="pt")).logits[0, -1]

    base = [last(r.prompt) for r in reqs]
    res = Editor(model, tok, EditorConfig(method="baft")).edit(reqs, sequential=True)
    try:
        assert all(o.success for o in res.outcomes)
        after = [last(r.prompt) for r in reqs]
        assert [tok.decode(a.argmax()).strip() for a in after] == ["Rome", "English"]
        for i, r in enumerate(reqs):
            assert [e["index"] for e in edits.explain(res.edited, r.prompt)] == [i]
        assert [e["target_new"] for e in edits.list_edits(res.edited)] == ["Rome", "English"]
        edits.delete_edit(res.edited, 0)
        gone, kept = last(reqs[0].prompt), last(reqs[1].prompt)
        assert torch.allclose(gone, base[0], atol=1e-3) and tok.decode(gone.argmax()).strip() == "Paris"
        assert torch.allclose(kept, after[1], atol=1e-3)
    finally:
        res.edited.unwrap()
