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
