"""Null-space projection: projector math, caching, the read/write guarantees, folding, save/load."""

import hashlib
import json
import logging
import random
import shutil

import pytest
import torch

from repedit import EditRequest, Editor, EditorConfig
from repedit.hooks import EditableModel
from repedit.methods import build
from repedit.methods import nullspace as ns
from repedit.positions import encode

from conftest import tiny_model

REQ = EditRequest(prompt="the capital of france is", target_new="rome", subject="france")
REQ2 = EditRequest(prompt="danielle darrieux speaks", target_new="german", subject="danielle darrieux")
# the preserved corpus uses words the edit prompts do not need
# the preserved corpus uses 5 words the edit prompts do not contain: layer-0 attention outputs of
# such text span at most 4 heads x 5 value vectors = 20 of the 32 dimensions, so held-out
# sentences lie in the preserved span.
CORPUS_WORDS = "city language people he she".split()


def corpus(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(4, 9))) for _ in range(n)]


def low_rank(n, d=12, k=5, noise=1e-4, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, k, generator=g))[0]
    return torch.randn(n, k, generator=g) @ basis.T + noise * torch.randn(n, d, generator=g), basis


def test_second_moment_streams_exactly():
    K = torch.randn(100, 7)
    m = ns.SecondMoment(7)
    for chunk in K.split(13):
        m.add(chunk)
    assert m.count == 100 and torch.allclose(m.matrix(), K.T @ K / 100, atol=1e-5)


@pytest.mark.parametrize("mode,thr", [("energy", 1e-4), ("max", 1e-3)])
def test_projector_annihilates_preserved_span(mode, thr):
    K, basis = low_rank(400)
    P, info = ns.null_space_projector(K.T @ K / 400, thr, mode)
    assert info["dim"] == 12 - 5
    assert torch.allclose(P, P.T, atol=1e-6) and torch.allclose(P @ P, P, atol=1e-5)
    held, _ = low_rank(50, seed=0)  # same span, other samples
    held = held[torch.randperm(50)]
    assert ((held @ P).norm(dim=1) / held.norm(dim=1)).max() < 1e-3
    # relative threshold: rescaling the data leaves P unchanged (AlphaEdit's absolute one would not)
    P2, _ = ns.null_space_projector(1e6 * K.T @ K / 400, thr, mode)
    assert torch.allclose(P, P2, atol=1e-5)


def test_deflate_removes_key_exactly():
    P = torch.eye(6)
    P[:2, :2] = 0
    keys = torch.randn(2, 6)
    P2, removed = ns.deflate(P, keys)
    assert removed == 2 and abs(float(torch.trace(P2)) - 2) < 1e-5
    assert (keys @ P2).abs().max() < 1e-5


def test_corpus_sentences_rules(tmp_path):
    from repedit.corpus import Corpus

    f = tmp_path / "wiki.raw"
    f.write_text(" = Title = \n one two three four . five six seven eight . x y\n = = Sub = = \n")
    assert Corpus.from_file(f).sentences() == ["one two three four", "five six seven eight"]


def test_moment_cache_roundtrip(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path))
    model = tiny_model("llama", initializer_range=0.5)
    ed = Editor(model, tok, EditorConfig(method="baft", layers=[0], component="attention_output"))
    att = ed.attachments()[0]
    texts = corpus(20, 0)
    m1, i1 = ns.cached_second_moment(ed, att, texts)
    files = list((tmp_path / "nullspace").glob("*.safetensors"))
    assert len(files) == 1 and not i1["cached"]
    m2, i2 = ns.cached_second_moment(ed, att, texts)
    assert i2["cached"] and torch.equal(m1, m2)
    _, i3 = ns.cached_second_moment(ed, att, texts[:-1])  # another corpus, another key
    assert i3["cache_key"] != i1["cache_key"]


def ns_editor(model, tok, nullspace="read", gate="sigmoid", **kw):
    mc = {"nullspace": nullspace, "gate": gate, "nullspace_corpus": corpus(150, 0), "nullspace_threshold": 1e-6,
          "num_corpus_negatives": 0, "rank": 2}
    mc.update(kw)
    return Editor(model, tok, EditorConfig(method="baft", layers=[0], component="attention_output", lr=5e-2,
                                           max_steps=200, stop_prob=0.5, method_config=mc,
                                           positions="last_prompt", augment=0, relation_copies=0))


def held_out_change(editor, tok):
    """max ‖Φ(h) − h‖ / ‖h‖ over every token of held-out corpus sentences (not used for P)."""
    att = editor.attachments()[0]
    b = encode(tok, corpus(40, 1))
    h, _ = editor.capture(att, b)
    h = h[b.attention_mask.bool()]
    with torch.no_grad():
        out = att.module(h[None], torch.ones(1, h.shape[0], dtype=torch.bool))[0]
    return float(((out - h).norm(dim=-1) / h.norm(dim=-1)).max())


def test_read_mode_keeps_preserved_inputs_and_edits_succeed(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path))
    model = tiny_model("llama", initializer_range=0.5)
    rome = tok.convert_tokens_to_ids("rome")
    editor = ns_editor(model, tok)
    res = editor.edit(REQ)
    assert res.outcomes[0].success
    x = tok([REQ.prompt], return_tensors="pt")
    assert model(**x).logits[0, -1].argmax().item() == rome
    module = editor.attachments()[0].module
    assert module.config.nullspace_built and 0 < float(torch.trace(module.projector)) < 32
    assert held_out_change(editor, tok) <= 1e-3
    # the same edit without the projection moves the held-out states clearly
    editor.reset()
    plain = ns_editor(model, tok, nullspace="none", gate="constant")
    assert plain.edit(REQ).outcomes[0].success
    assert held_out_change(plain, tok) > 1e-2


def test_write_mode_projects_the_change(tmp_path, monkeypatch):
    phi = build("baft", {"rank": 3, "incremental": False, "nullspace": "write", "seed": 0}, hidden_size=10)
    P = torch.diag(torch.tensor([1.0] * 4 + [0.0] * 6))
    with torch.no_grad():
        phi.projector.copy_(P)
        for p in phi.block.parameters():
            p.add_(0.5 * torch.randn_like(p))
    h = torch.randn(2, 3, 10)
    delta = phi(h, torch.ones(2, 3, dtype=torch.bool)) - h
    assert delta.abs().max() > 1e-2
    assert ((torch.eye(10) - P) @ delta.reshape(-1, 10).T).abs().max() < 1e-6


def test_sequential_folds_earlier_keys(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path))
    model = tiny_model("llama", initializer_range=0.5)
    editor = ns_editor(model, tok)
    editor.edit(REQ)
    module = editor.attachments()[0].module
    dim1 = float(torch.trace(module.projector))
    att = editor.attachments()[0]
    h, m = editor.capture(att, encode(tok, [REQ.prompt]))
    key1 = h[m]
    assert (key1 @ module.projector).norm() < 1e-4 * key1.norm()  # folded in
    res = editor.edit(REQ2)
    assert res.outcomes[0].success
    assert abs(float(torch.trace(module.projector)) - (dim1 - 1)) < 1e-3
    # the second edit's W and R rows read nothing from the first edit's key (its gates read the
    # normalised state and may open there, but what they weight, (W − R)·P·h, is then zero)
    new_rows = torch.cat([module.read_frozen[k * 4 + 2 : k * 4 + 4] for k in (1, 2)])
    assert (key1 @ new_rows.T).abs().max() < 1e-4 * key1.norm()
    for r, t in ((REQ, "rome"), (REQ2, "german")):
        x = tok([r.prompt], return_tensors="pt")
        assert model(**x).logits[0, -1].argmax().item() == tok.convert_tokens_to_ids(t)


def test_save_load_nullspace_adapter_bit_identical(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama", initializer_range=0.5)
    res = ns_editor(model, tok).edit(REQ)
    x = tok([REQ.prompt, "he was born in a city"], return_tensors="pt", padding=True)
    before = model(**x).logits
    res.save_pretrained(tmp_path / "ad")
    res.edited.unwrap()
    fresh = EditableModel.from_pretrained(model, tmp_path / "ad")
    module = fresh.attachments()[0].module
    assert module.config.nullspace_built and "projector" in module.state_dict()
    assert torch.equal(before, model(**x).logits)


def test_deleting_an_edit_folds_its_keys_back_into_the_null_space(tmp_path, monkeypatch, tok, caplog):
    """The fold history (P as built, each edit's folded keys) is saved with the adapter; deleting
    an edit rebuilds P from it without that edit's keys, so the null space is what it would be
    had only the other edits been folded, and a new edit can read along the deleted key again.
    An adapter without the history keeps the fold and says so."""
    from repedit import edits
    from repedit.methods.nullspace import deflate

    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama", initializer_range=0.5)
    editor = ns_editor(model, tok)
    res = editor.edit([REQ, REQ2], sequential=True)
    module = editor.attachments()[0].module
    base = module.projector_base.clone()
    recs = module.config.edits
    assert [r["num_fold"] for r in recs] == [1, 1] and module.fold_keys.shape[0] == 2
    att = editor.attachments()[0]
    h, m = editor.capture(att, encode(tok, [REQ.prompt]))
    key1 = h[m]
    assert (key1 @ module.projector).norm() < 1e-4 * key1.norm()
    res.save_pretrained(tmp_path / "ad")
    res.edited.unwrap()

    fresh = EditableModel.from_pretrained(model, tmp_path / "ad")
    mod = fresh.attachments()[0].module
    assert torch.equal(mod.fold_keys, module.fold_keys) and torch.equal(mod.projector_base, base)
    info = edits.delete_edit(fresh, 0)
    assert info["fold_rows_removed"] == 1 and mod.fold_keys.shape[0] == 1
    want, _ = deflate(base, module.fold_keys[1:])
    assert torch.allclose(mod.projector, want, atol=1e-6)
    assert (key1 @ mod.projector).norm() > 0.1 * key1.norm()  # readable again
    assert abs(float(torch.trace(mod.projector)) - (float(torch.trace(base)) - 1)) < 1e-3
    fresh.save_pretrained(tmp_path / "deleted")
    fresh.unwrap()
    again = EditableModel.from_pretrained(model, tmp_path / "deleted").attachments()[0].module
    assert again.export_config().num_fold == 1 and torch.equal(again.projector, mod.projector)

    # an adapter from before the history (no num_fold, no history tensors): the fold stays, with a warning
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(tmp_path / "ad", old)
    st_path = next(old.glob("*.safetensors"))
    tensors = {k: v for k, v in load_file(st_path).items() if "projector_base" not in k and "fold_keys" not in k}
    save_file(tensors, st_path)
    cfg_path = old / "adapter_config.json"
    text = cfg_path.read_text()
    assert '"num_fold": 2' in text
    sha = json.loads(text)["tensors_sha256"]
    cfg_path.write_text(text.replace('"num_fold": 2', '"num_fold": -1').replace(sha, hashlib.sha256(st_path.read_bytes()).hexdigest()))
    legacy = EditableModel.from_pretrained(model, old)
    lmod = legacy.attachments()[0].module
    before = lmod.projector.clone()
    with caplog.at_level(logging.WARNING, logger="repedit.methods.baft.edits"):
        edits.delete_edit(legacy, 0)
    assert torch.equal(lmod.projector, before) and "no fold history" in caplog.text
