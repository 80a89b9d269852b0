"""Mixed-precision training forwards: weight copies, restoration, and edits trained with them."""

import pytest
import torch

from repedit import Editor, EditorConfig, EditRequest
from repedit.hooks import EditableModel
from repedit.precision import MixedPrecision

from conftest import param_hashes, tiny_model

#: the codebook with no resource files (as in tests/methods/test_codebook.py)
CODEBOOK_NOFILES = {"corpus_sentences": 0, "num_names": 0}


def _linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_frozen_linear_weights_are_swapped_inside_and_restored_after(llama):
    for p in llama.parameters():
        p.requires_grad_(False)
    trainable = _linears(llama)[0]
    trainable.weight.requires_grad_(True)
    before = {id(m): m.weight for m in _linears(llama)}
    mp = MixedPrecision("bf16")
    with mp(llama):
        inside = {id(m): m.weight for m in _linears(llama)}
        assert torch.is_autocast_enabled("cpu")
    for m in _linears(llama):
        assert m.weight is before[id(m)] and m.weight.dtype == torch.float32
        if m is trainable:
            assert inside[id(m)] is before[id(m)]  # trainable: never swapped
        else:
            assert inside[id(m)].dtype == torch.bfloat16
            torch.testing.assert_close(inside[id(m)].float(), m.weight.detach().bfloat16().float())
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(RuntimeError, match="boom"), mp(llama):
        raise RuntimeError("boom")
    assert all(m.weight is before[id(m)] for m in _linears(llama))


def test_copies_are_kept_between_calls_and_remade_after_an_in_place_change(llama):
    for p in llama.parameters():
        p.requires_grad_(False)
    lin = _linears(llama)[1]
    mp = MixedPrecision("bf16")
    with mp(llama):
        first = lin.weight
    with mp(llama):
        assert lin.weight is first  # no cast at every step
    with torch.no_grad():
        lin.weight.add_(1.0)
    with mp(llama):
        assert lin.weight is not first
        torch.testing.assert_close(lin.weight.float(), _linears(llama)[1]._parameters["weight"].float(), atol=0.1, rtol=0.01)
    with mp(llama):
        remade = lin.weight
    torch.testing.assert_close(remade.float(), (first.float() + 1.0), atol=0.05, rtol=0.02)



def test_copies_do_not_keep_the_models_weights_alive():
    """The cache refers to a model's weights weakly: once the model is gone, so are they."""
    import gc
    import weakref

    from conftest import tiny_model

    llama = tiny_model("llama")
    for p in llama.parameters():
        p.requires_grad_(False)
    mp = MixedPrecision("bf16")
    with mp(llama):
        pass
    probe = weakref.ref(_linears(llama)[1]._parameters["weight"])
    del llama
    gc.collect()
    assert probe() is None and mp._copies


def test_logits_under_mixed_precision_are_close_to_full_precision(llama, tok):
    for p in llama.parameters():
        p.requires_grad_(False)
    x = tok(["the capital of france is paris"], return_tensors="pt")
    with torch.no_grad():
        full = llama(**x).logits
        with MixedPrecision("bf16")(llama):
            half = llama(**x).logits
    assert half.dtype == torch.bfloat16
    assert not torch.equal(half.float(), full)
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.05)


def test_config_rejects_an_unknown_precision():
    with pytest.raises(ValueError, match="mixed_precision"):
        EditorConfig(mixed_precision="int8")
    with pytest.raises(ValueError, match="mixed precision"):
        MixedPrecision("fp8")


@pytest.mark.parametrize("method", ["baft", "codebook"])
def test_edit_trained_in_bf16_takes_and_leaves_the_model_in_fp32(tok, method, monkeypatch):
    model = tiny_model("llama", initializer_range=0.5)
    hashes = param_hashes(model)
    edited = EditableModel(model, tok)
    seen = []
    real = MixedPrecision.__call__

    def spy(self, m):
        seen.append(self.name)
        return real(self, m)

    monkeypatch.setattr(MixedPrecision, "__call__", spy)
    if method == "baft":  # the settings of tests/methods/test_baft.py
        cfg = EditorConfig(method="baft", layers=[1], positions="last_prompt", lr=5e-2, max_steps=150, stop_prob=0.5,
                           relation_copies=0, mixed_precision="bf16", method_config={"num_corpus_negatives": 0})
    else:  # those of tests/methods/test_codebook.py
        cfg = EditorConfig(method="codebook", layers=[0], lr=0.1, max_steps=40, mixed_precision="bf16",
                           method_config=dict(CODEBOOK_NOFILES, value_positions="attachment"))
    res = Editor(edited, tok, cfg).edit(EditRequest(prompt="the capital of france is", target_new="rome", subject="france"))
    assert seen and set(seen) == {"bf16"}  # the training forwards ran in bf16
    assert res.outcomes[0].success  # verified in full precision
    assert param_hashes(model) == hashes
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = tok(["the capital of france is"], return_tensors="pt")
    with torch.no_grad():
        assert tok.decode(edited.model(**x).logits[0, -1].argmax()) == "rome"


def test_cached_banks_build_in_mixed_precision_under_their_own_key(tok, tmp_path, monkeypatch):
    """``Editor.cached(..., autocast=True)`` builds in the editor's mixed precision and keys the
    result (in memory and on disk) by it, so fp32 and bf16 banks never mix; without the flag,
    or without mixed precision, the build runs in full precision under the old key."""
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path))
    seen = []

    def build():
        seen.append(torch.is_autocast_enabled("cpu"))
        return {"x": torch.ones(2)}

    edited = EditableModel(tiny_model("llama"), tok)
    bf16 = Editor(edited, tok, EditorConfig(method="baft", mixed_precision="bf16"))
    fp32 = Editor(edited, tok, EditorConfig(method="baft"))
    bf16.cached("bank", build, autocast=True, layer=1)
    bf16.cached("bank", build, autocast=True, layer=1)  # kept
    bf16.cached("other", build, layer=1)  # no autocast asked
    fp32.cached("bank", build, autocast=True, layer=1)  # another key on disk: built again, in fp32
    assert seen == [True, False, False]
    files = sorted(p.name for p in (tmp_path / "bank").iterdir())
    assert len(files) == 2  # one per precision


def test_verification_does_not_resume_from_states_captured_in_mixed_precision(tok, monkeypatch):
    """Without the cached prefix, training resumes at the edited layer from states captured in
    bf16; verification runs the whole forward in the model's dtype instead."""
    from repedit.editing import Editor as EditorCls

    calls = []
    real = EditorCls._forward

    def spy(self, session, fixed, mixed=True):
        calls.append((mixed, "resume" in fixed))
        return real(self, session, fixed, mixed)

    monkeypatch.setattr(EditorCls, "_forward", spy)
    cfg = EditorConfig(method="baft", layers=[1], positions="last_prompt", lr=5e-2, max_steps=150, stop_prob=0.5,
                       relation_copies=0, mixed_precision="bf16", method_config={"num_corpus_negatives": 0})
    editor = Editor(EditableModel(tiny_model("llama", initializer_range=0.5), tok), tok, cfg)
    editor.split_prefix = False
    editor.edit(EditRequest(prompt="the capital of france is", target_new="rome", subject="france"))
    training = [r for m, r in calls if m]
    assert training and all(training)  # the training forwards resumed at the edited layer
    assert [r for m, r in calls if not m] == [False]  # one verification forward, from the input
