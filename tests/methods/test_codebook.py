"""Codebook (GRACE / BalancEdit) tests on tiny random models."""

from __future__ import annotations

import torch
import pytest

from repedit import edits
from repedit.edits import merge_adapters
from repedit.editing import Editor, EditorConfig
from repedit.hooks import EditableModel
from repedit.methods import available_methods, build
from repedit.methods.codebook import Codebook, CodebookConfig, manage
from repedit.methods.codebook import radius as R
from repedit.methods.codebook import samples as S
from repedit.positions import encode
from repedit.requests import EditRequest

from tests.conftest import tiny_model

NOFILES = dict(corpus_sentences=0, num_names=0)

REQS = [
    EditRequest(prompt="the capital of france is", target_new="rome", subject="france", ground_truth="paris",
                rephrase_prompts=["france has the capital city"], case_id=0,
                locality_prompts=[{"prompt": "the capital of italy is", "ground_truth": "rome"}]),
    EditRequest(prompt="the mother tongue of danielle darrieux is", target_new="english", subject="danielle darrieux",
                ground_truth="french", case_id=1),
    EditRequest(prompt="the eiffel tower is located in", target_new="berlin", subject="eiffel tower",
                ground_truth="paris", case_id=2),
]


def make_editor(tok, seed=0, **mc):
    model = tiny_model("llama", seed=seed, initializer_range=0.5)
    cfg = dict(NOFILES, value_positions="attachment")  # tiny 2-layer models edit fastest at the last token
    cfg.update(mc)
    return Editor(model, tok, EditorConfig(method="codebook", layers=[0], lr=0.1, max_steps=40, method_config=cfg))


def logits(model, tok, prompts, subjects=None, conts=None):
    b = encode(tok, prompts, conts, subjects)
    with torch.no_grad(), b.info():
        return model(**b.model_inputs()).logits, b


def test_registered_and_config_checks():
    assert "codebook" in available_methods()
    assert all(CodebookConfig.help().values())
    with pytest.raises(ValueError):
        CodebookConfig(distance="manhattan")
    with pytest.raises(ValueError):
        CodebookConfig(n_entries=2, entries=[{}])


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("rule", ["subject", "last_prompt", "prompt"])
def test_lookup_matches_brute_force(distance, rule):
    g = torch.Generator().manual_seed(0)
    n, d = 9, 16
    cb = build("codebook", {"n_entries": n, "distance": distance, "key_positions": rule, "normalize": "standardize",
                            "entries": [{} for _ in range(n)]}, d)
    with torch.no_grad():
        cb.stat_mean.copy_(torch.randn(d, generator=g))
        cb.stat_std.copy_(torch.rand(d, generator=g) + 0.5)
        cb.keys.copy_(cb.normalize(torch.randn(n, d, generator=g)))
        cb.radii.copy_(torch.rand(n, generator=g))
    h = torch.randn(4, 6, d, generator=g)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    dmin, idx, has = cb.lookup(h, mask)
    for b in range(4):
        m = mask[b]
        if rule == "subject":
            cands = cb.normalize(h[b][m])
        else:
            cands = cb.normalize(h[b][m].mean(0, keepdim=True))
        if distance == "cosine":
            ref = 1 - cands @ cb.keys.T
        else:
            ref = torch.cdist(cands.double(), cb.keys.double()).float()
        assert torch.isclose(dmin[b], ref.min(), atol=1e-4)
        assert int(idx[b]) == int(ref.min(0).values.argmin())
    # firing follows radius * radius_scale, and 0 disables every entry
    out = cb(h, mask)
    fire = dmin <= cb.radii[idx]
    assert torch.equal((out != h).flatten(1).any(1), fire & (cb.values[idx].abs().sum(-1) > 0))
    cb.radius_scale = 0.0
    assert torch.equal(cb(h, mask), h)



@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_projected_index_matches_brute_force(distance):
    """The two-stage index returns the exact nearest key when keys lie near a low-rank
    subspace (as real layer states do), and 'auto' switches to it only from index_min_entries."""
    g = torch.Generator().manual_seed(1)
    n, d, r = 600, 64, 8
    keys = torch.randn(n, r, generator=g) @ torch.randn(r, d, generator=g) + 0.02 * torch.randn(n, d, generator=g)
    if distance == "cosine":
        keys = torch.nn.functional.normalize(keys, dim=-1)
    cfg = {"n_entries": n, "distance": distance, "normalize": "none", "index": "projected", "index_dim": 16,
           "index_candidates": 8, "entries": [{} for _ in range(n)]}
    cb = build("codebook", cfg, d)
    with torch.no_grad():
        cb.keys.copy_(keys)
    q = keys[torch.randint(0, n, (5, 7), generator=g)] + 0.05 * torch.randn(5, 7, d, generator=g)
    if distance == "cosine":
        q = torch.nn.functional.normalize(q, dim=-1)
    assert cb.uses_projected_index()
    d_ref, i_ref = cb._nearest_exact(q)
    d_two, i_two = cb._nearest(q)
    assert torch.equal(i_two, i_ref)
    assert torch.allclose(d_two, d_ref, atol=1e-3, rtol=1e-4)
    # the index follows changes of the keys (a moved key is found at its new place)
    with torch.no_grad():
        cb.keys[3] = q[0, 0]
    assert int(cb._nearest(q[:1, :1])[1]) == 3
    auto = build("codebook", dict(cfg, index="auto", index_min_entries=n + 1), d)
    assert not auto.uses_projected_index()
    auto.config.index_min_entries = n
    assert auto.uses_projected_index()
    assert not build("codebook", dict(cfg, index="exact"), d).uses_projected_index()

def test_lookup_has_no_python_loop_or_host_sync(monkeypatch):
    cb = build("codebook", {"n_entries": 5, "entries": [{}] * 5, "normalize": "none"}, 8)
    with torch.no_grad():
        cb.keys.copy_(torch.nn.functional.normalize(torch.randn(5, 8), dim=-1))
        cb.radii.fill_(2.0)
    calls = []
    for name in ("item", "cpu", "tolist", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _r=real, _n=name, **k: calls.append(_n) or _r(self, *a, **k))
    cb(torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool))
    assert calls == []


def test_radius_placement():
    dec = R.place_radius([0.1, 0.2], [0.8, 0.6, float("inf")], alpha=0.25)
    assert dec.separable and dec.d_pos == pytest.approx(0.2) and dec.d_neg == pytest.approx(0.6)
    assert dec.radius == pytest.approx(0.75 * 0.6 + 0.25 * 0.2)
    assert dec.d_pos < dec.radius < dec.d_neg
    bad = R.place_radius([0.9], [0.5], alpha=0.25)
    assert not bad.separable and bad.radius <= 0.5
    assert R.grace_action(None, None, 1.0, True) == "new"
    assert R.grace_action(3.0, 1.0, 1.0, False) == "new"
    assert R.grace_action(0.5, 1.0, 1.0, False) == "split"
    assert R.grace_action(1.5, 1.0, 1.0, True) == "expand"
    assert R.grace_action(0.5, 1.0, 1.0, True) == "update"


def test_edits_fire_on_own_prompt_and_keep_their_radius(tok):
    ed = make_editor(tok)
    res = ed.edit(REQS[:1], sequential=True)
    cb = ed.attachments()[0].module
    assert res.outcomes[0].success and cb.n_entries == 1
    r0 = float(cb.radii[0])
    assert r0 > 0
    res2 = ed.edit(REQS[1:], sequential=True)
    assert cb.n_entries == 3 and all(o.success for o in res2.outcomes)
    # an earlier entry's radius is not recomputed from later edits' samples (no conflict here)
    if not res2.outcomes[0].flags["codebook"].get("conflicts") and not res2.outcomes[1].flags["codebook"].get("conflicts"):
        assert float(cb.radii[0]) == r0
    for i, req in enumerate(REQS):
        ex = manage.explain(ed.edited, req.prompt)[0]
        assert ex["fired"] and ex["entry"] == i and ex["distance"] <= ex["radius"]
        assert ex["target_new"] == req.target_new
    # the edit is in effect after training (eval mode, real lookup)
    lg, b = logits(ed.edited.model, tok, [REQS[1].prompt], conts=[" english"])
    pos = int(b.prompt_mask.sum()) - 1
    assert int(lg[0, pos].argmax()) == tok.convert_tokens_to_ids("english")


def test_repeat_updates_entry_and_conflict_shrinks(tok):
    ed = make_editor(tok)
    ed.edit(REQS[0])
    cb = ed.attachments()[0].module
    again = EditRequest(prompt=REQS[0].prompt, target_new="berlin", subject="france", ground_truth="paris")
    res = ed.edit(again)
    assert cb.n_entries == 1 and res.outcomes[0].flags["codebook"]["action"] == "repeat"
    assert cb.config.entries[0]["target_new"] == "berlin"
    lg, b = logits(ed.edited.model, tok, [REQS[0].prompt])
    assert int(lg[0, -1].argmax()) == tok.convert_tokens_to_ids("berlin")
    # a different subject whose key lies inside entry 0's radius with another target shrinks it
    with torch.no_grad():
        cb.radii[0] = 5.0  # wider than any cosine distance
    other = EditRequest(prompt="the capital of italy is", target_new="london", subject="italy", ground_truth="rome")
    res = ed.edit(other)
    f = res.outcomes[0].flags["codebook"]
    assert cb.n_entries == 2 and f.get("conflicts") == [0]
    assert float(cb.radii[0]) < 5.0 and cb.config.entries[0]["flags"].get("shrunk_by") == 1


def test_grace_mode_split_and_expand(tok):
    ed = make_editor(tok, radius_mode="grace", init_radius=3.0)
    ed.edit(REQS[0])
    cb = ed.attachments()[0].module
    assert float(cb.radii[0]) == pytest.approx(3.0)
    res = ed.edit(EditRequest(prompt="the capital of italy is", target_new="london", subject="italy", ground_truth="rome"))
    f = res.outcomes[0].flags["codebook"]
    assert f["action"] == "split" and cb.n_entries == 2
    d = float(cb.distances(cb.keys[1:2], cb.keys[:1])[0, 0])
    assert float(cb.radii[0]) == pytest.approx(d / 2, abs=1e-4) and float(cb.radii[1]) == pytest.approx(d / 2, abs=1e-4)
    # same target, near: no new key (GRACE coverage)
    res = ed.edit(EditRequest(prompt="the capital of spain is", target_new="london", subject="spain", ground_truth="madrid"))
    assert res.outcomes[0].flags["codebook"]["action"] in ("expand", "update") and cb.n_entries == 2


def test_inseparable_is_flagged(tok, monkeypatch):
    monkeypatch.setattr(S, "positives", lambda req, n: ["it was not what he speak"])
    monkeypatch.setattr(S, "negatives", lambda req, reqs, n, seed=0, names=(): [(req.prompt, req.subject)])
    ed = make_editor(tok, key_positions="last_prompt")
    res = ed.edit(REQS[0])
    o = res.outcomes[0]
    assert "codebook_inseparable" in o.flags
    fl = o.flags["codebook_inseparable"]
    assert fl["d_pos"] > fl["d_neg"]
    assert o.success  # the edit is still applied


def test_batch_equals_single(tok):
    ed = make_editor(tok)
    ed.edit(REQS, sequential=True)
    m = ed.edited.model
    prompts = [r.prompt for r in REQS] + ["he was born in london"]
    batched, b = logits(m, tok, prompts)
    for i, p in enumerate(prompts):
        single, bs = logits(m, tok, [p])
        n = int(bs.attention_mask.sum())
        assert torch.allclose(batched[i, :n], single[0, :n], atol=1e-5)
    # the edited rows differ from the unedited model, the unrelated one may not
    with ed.edited.disabled():
        base, _ = logits(m, tok, prompts)
    assert not torch.allclose(base[0], batched[0])


def test_generation_holds_key_fixed(tok, monkeypatch):
    model = tiny_model("llama", initializer_range=0.5)
    edited = EditableModel(model, tok)
    d = edited.hidden_size
    cb = build("codebook", {"n_entries": 1, "entries": [{}], "normalize": "none", "key_positions": "prompt"}, d)
    edited.add("cb", cb, layer=0, positions="all")
    b = encode(tok, [REQS[0].prompt])
    with torch.no_grad(), b.info():
        captured = {}
        hk = model.model.layers[0].register_forward_hook(lambda mod, a, o: captured.setdefault("h", (o[0] if isinstance(o, tuple) else o).clone()))
        with edited.disabled():
            model(**b.model_inputs())
        hk.remove()
    with torch.no_grad():
        cb.keys.copy_(cb.normalize(captured["h"][0].mean(0, keepdim=True)))
        cb.radii.fill_(1e-3)
        cb.values.copy_(torch.randn(1, d) * 5)
    calls = []
    real = Codebook.lookup
    monkeypatch.setattr(Codebook, "lookup", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    out = edited.generate([REQS[0].prompt], max_new_tokens=4, decode=False)
    assert len(calls) == 1  # prefill only: decoding steps reuse the prefill's entry
    with edited.disabled():
        base = edited.generate([REQS[0].prompt], max_new_tokens=4, decode=False)
    assert not torch.equal(out, base)
    # the entry chosen at prefill keeps acting on generated tokens (positions="all")
    with torch.no_grad():
        cb.radii.fill_(-1.0)  # never fires
    off = edited.generate([REQS[0].prompt], max_new_tokens=4, decode=False)
    assert torch.equal(off, base)


def test_delete_merge_explain_and_save_load(tok, tmp_path):
    ed = make_editor(tok)
    ed.edit(REQS[:2], sequential=True)
    edited = ed.edited
    entries = manage.list_entries(edited)
    assert [e["prompt"] for e in entries] == [r.prompt for r in REQS[:2]]
    assert all(e["key_norm"] > 0 and e["radius"] > 0 for e in entries)
    # save / load round trip: bit-identical logits
    edited.save_pretrained(str(tmp_path / "a"))
    before, _ = logits(edited.model, tok, [r.prompt for r in REQS], conts=[" rome"] * 3)
    fresh = EditableModel.from_pretrained(tiny_model("llama", initializer_range=0.5), str(tmp_path / "a"), tokenizer=tok)
    after, _ = logits(fresh.model, tok, [r.prompt for r in REQS], conts=[" rome"] * 3)
    assert torch.equal(before, after)
    assert manage.list_entries(fresh) == entries
    # a second codebook on the same model, merged with the first
    ed2 = Editor(fresh, tok, ed.config)
    ed2.edit(REQS[2])
    fresh.save_pretrained(str(tmp_path / "b"))
    merge_adapters(tiny_model("llama", initializer_range=0.5), str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "ab"), tokenizer=tok)
    merged = EditableModel.from_pretrained(tiny_model("llama", initializer_range=0.5), str(tmp_path / "ab"), tokenizer=tok)
    assert [e["prompt"] for e in manage.list_entries(merged)] == [r.prompt for r in REQS]  # repeats of a replaced by b
    ex = manage.explain(merged, REQS[2].prompt)[0]
    assert ex["fired"] and ex["prompt"] == REQS[2].prompt
    # the same through the method contract (repedit.edits)
    assert [{k: v for k, v in e.items() if k not in ("name", "method")} for e in edits.list_edits(merged)] == \
        manage.list_entries(merged)
    (top,) = edits.explain(merged, REQS[2].prompt)
    assert top["index"] == 2 and top["fired"] and top["score"] >= 0 and top["target_new"] == REQS[2].target_new
    # delete: the entry stops firing, the others keep working
    manage.delete_entry(merged, 2)
    assert len(manage.list_entries(merged)) == 2
    ex = manage.explain(merged, REQS[2].prompt)[0]
    assert not ex["fired"] or ex["prompt"] != REQS[2].prompt
    assert manage.explain(merged, REQS[0].prompt)[0]["fired"]


def test_empty_codebook_is_a_no_op(tok):
    model = tiny_model("llama", initializer_range=0.5)
    base, _ = logits(model, tok, [r.prompt for r in REQS], conts=[" rome"] * 3)
    edited = EditableModel(model, tok)
    edited.add("cb", "codebook", layer=0, config=NOFILES)
    out, _ = logits(model, tok, [r.prompt for r in REQS], conts=[" rome"] * 3)
    assert torch.equal(base, out)
    assert manage.explain(edited, REQS[0].prompt)[0]["fired"] is False


def test_samples_never_leak_evaluation_fields(tok, monkeypatch):
    req = EditRequest(
        prompt="the capital of france is", target_new="rome", subject="france", ground_truth="paris",
        rephrase_prompts=["Fact: the capital of france is", "Here is a fact. the capital of france is"],
        locality_prompts=[{"prompt": "the capital of italy is", "ground_truth": "rome"}],
        portability=[{"prompt": "Did you know? the capital of france is", "ground_truth": "rome"}], case_id=7,
        subject_locality_prompts=[{"prompt": "Tell me: the capital of france is", "ground_truth": "paris"}])
    other = EditRequest(prompt="the capital of italy is", target_new="london", subject="italy", ground_truth="rome")
    other2 = EditRequest(prompt="the capital of spain is", target_new="london", subject="spain", ground_truth="madrid")
    pos = S.positives(req, 50)
    neg = [p for p, _ in S.negatives(req, [req, other, other2], 50)]
    banned = S.evaluation_texts(req)
    assert pos and neg and banned and "tell me: the capital of france is" in banned
    assert not ({S._norm(p) for p in pos} & banned) and not ({S._norm(p) for p in neg} & banned)
    assert "the capital of spain is" in neg and "the capital of italy is" not in neg
    # and through the Editor: no prompt the codebook runs while editing is an evaluation prompt
    seen = []
    real = R.site_hidden

    def spy(edited, layer, component, tokenizer, prompts, subjects=None, batch_size=32):
        seen.extend(prompts)
        return real(edited, layer, component, tokenizer, prompts, subjects, batch_size)

    monkeypatch.setattr(R, "site_hidden", spy)
    ed = make_editor(tok)
    ed.edit([req, other2], sequential=True)
    assert seen and not ({S._norm(p) for p in seen} & banned)


def test_key_position_values_act_on_the_matched_token():
    g = torch.Generator().manual_seed(1)
    d = 16
    cb = build("codebook", {"n_entries": 2, "entries": [{}, {}], "normalize": "none", "value_positions": "key"}, d)
    h = torch.randn(2, 5, d, generator=g)
    with torch.no_grad():
        cb.keys.copy_(cb.normalize(torch.stack([h[0, 2], h[1, 3]])))
        cb.radii.fill_(1e-3)
        cb.values.copy_(torch.randn(2, d, generator=g))
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = cb(h, mask)
    changed = (out != h).any(-1)
    expect = torch.zeros(2, 5, dtype=torch.bool)
    expect[0, 2] = expect[1, 3] = True
    assert torch.equal(changed, expect)
    assert torch.allclose(out[1, 3], h[1, 3] + cb.values[1])


def test_key_position_training_edits(tok):
    ed = make_editor(tok, value_positions="key")
    ed.config.max_steps = 60
    res = ed.edit(REQS[1])
    cb = ed.attachments()[0].module
    ex = manage.explain(ed.edited, REQS[1].prompt)[0]
    assert ex["fired"] and cb.values.abs().sum() > 0
    # the value sits on the subject's last token: the prompt prefix before it is unchanged
    with torch.no_grad():
        lg, b = logits(ed.edited.model, tok, [REQS[1].prompt], subjects=[REQS[1].subject])
        with ed.edited.disabled():
            base, _ = logits(ed.edited.model, tok, [REQS[1].prompt])
    subj_last = int(b.subject_mask[0].nonzero().max())
    assert torch.equal(lg[0, :subj_last], base[0, :subj_last])
    assert not torch.allclose(lg[0, subj_last:], base[0, subj_last:])
    eng = tok.convert_tokens_to_ids("english")
    assert lg[0, -1].log_softmax(-1)[eng] > base[0, -1].log_softmax(-1)[eng] + 1.0  # trained toward the target


def test_first_token_is_never_a_key(tok):
    # a one-token subject at the start of the prompt is keyed on the next token, and the scan skips token 0
    b = encode(tok, ["france is the capital of", "the capital of france is"], subjects=["france", "france"])
    h = torch.randn(2, b.input_ids.shape[1], 8)
    pm = b.prompt_mask & b.attention_mask.bool()
    key, has = R.pool(h, pm, b.subject_mask, "subject")
    assert has.all()
    assert torch.equal(key[0], h[0, 1]) and torch.equal(key[1], h[1, 3])
    assert not R.skip_first(pm)[:, 0].any() and R.skip_first(pm)[:, 1].all()


def test_null_space_values_avoid_preserved_directions(tok):
    """null_space=True: every value lies in the null space of the corpus states' second moment
    (here the requests' prompts stand in for the corpus), so it is orthogonal to the preserved
    directions, and the edits still succeed."""
    ed = make_editor(tok, null_space=True, null_space_threshold=1e-6)
    ed.config.max_steps, ed.config.stop_prob = 150, 0.5  # a smaller space: slower to reach p >= 0.9
    res = ed.edit(REQS, sequential=True)
    assert all(o.success for o in res.outcomes)
    cb = ed.attachments()[0].module
    P = cb._null_projector
    d = P.shape[0]
    assert 0 < float(torch.trace(P)) < d  # a proper, non-empty null space
    values = cb.values
    assert values.norm(dim=-1).min() > 1e-3
    assert ((torch.eye(d) - P) @ values.T).abs().max() <= 1e-4 * values.abs().max()
    plain = make_editor(tok)
    plain.edit(REQS, sequential=True)
    v2 = plain.attachments()[0].module.values
    assert ((torch.eye(d) - P) @ v2.T).abs().max() > 1e-2 * v2.abs().max()


def test_lowrank_values_edit_save_load_delete_and_merge(tok, tmp_path):
    """value='lowrank' (the combination 'codebook whose values are LoReFT/BaFT-form updates'):
    edits take, the low-rank maps are trained and saved, and delete/merge keep them aligned."""
    ed = make_editor(tok, value="lowrank", value_rank=2)
    res = ed.edit(REQS[:2], sequential=True)
    assert all(o.success for o in res.outcomes)
    cb = ed.attachments()[0].module
    assert cb.value_u.shape == (2, cb.hidden_size, 2) and cb.value_v.shape == (2, 2, cb.hidden_size)
    assert float(cb.value_u.abs().sum()) > 0 and float(cb.value_v.abs().sum()) > 0  # trained, not left at init
    # the low-rank term changes the output: zeroing it changes the edited logits
    lg, b = logits(ed.edited.model, tok, [REQS[0].prompt], conts=[" rome"])
    saved_u = cb.value_u.clone()
    with torch.no_grad():
        cb.value_u.zero_()
    lg0, _ = logits(ed.edited.model, tok, [REQS[0].prompt], conts=[" rome"])
    with torch.no_grad():
        cb.value_u.copy_(saved_u)
    assert not torch.allclose(lg, lg0)
    ed.edited.save_pretrained(str(tmp_path / "a"))
    fresh = EditableModel.from_pretrained(tiny_model("llama", initializer_range=0.5), str(tmp_path / "a"), tokenizer=tok)
    after, _ = logits(fresh.model, tok, [REQS[0].prompt], conts=[" rome"])
    assert torch.equal(lg, after)
    other = fresh.attachments()[0].module
    manage.delete_entry(fresh, 0)
    assert torch.equal(other.value_u[0], saved_u[1]) and other.value_v.shape[0] == 1
    merged = manage.merge(cb, other)
    assert merged.n_entries == 2 and torch.equal(merged.value_v[1], cb.value_v[1])


@pytest.fixture
def counted_corpus(tmp_path, monkeypatch):
    """(a 6-sentence corpus file, the list of prompt counts each ``Codebook._hidden`` call got)."""
    corpus = tmp_path / "wiki.raw"
    corpus.write_text("\n".join(f" the {w} sat on the mat near the river today ." for w in
                                ("cat", "dog", "bird", "horse", "king", "queen")) + "\n")
    calls: list[int] = []
    orig = Codebook._hidden

    def counting(self, session, att, prompts, subjects):
        calls.append(len(prompts))
        return orig(self, session, att, prompts, subjects)

    monkeypatch.setattr(Codebook, "_hidden", counting)
    return corpus, calls


def test_corpus_bank_is_captured_once_per_site(tok, counted_corpus):
    """Single edits in a loop (a fresh codebook each) capture the corpus bank once; the
    statistics and bank are the same as a fresh computation's."""
    corpus, calls = counted_corpus
    edited = EditableModel(tiny_model("llama", initializer_range=0.5), tok)
    cfg = EditorConfig(method="codebook", layers=[0], lr=0.1, max_steps=5,
                       method_config=dict(corpus_sentences=6, corpus_path=str(corpus), num_names=0))
    stats = []
    for req in REQS[:2]:
        ed = Editor(edited, tok, cfg)
        ed.edit(req)
        cb = ed.attachments()[0].module
        stats.append((cb.stat_mean.clone(), cb.stat_std.clone(), cb._bank["vecs"]))
        ed.reset()
    assert calls.count(6) == 1  # the 6 corpus sentences: captured by the first codebook only
    assert torch.equal(stats[0][0], stats[1][0]) and torch.equal(stats[0][1], stats[1][1])
    assert stats[1][2] is stats[0][2]


def test_corpus_states_are_kept_on_disk_for_a_later_process(tok, tmp_path, monkeypatch, counted_corpus):
    """The corpus states behind the codebook's statistics and negative bank are written to the
    cache by the first editor; an editor on a fresh copy of the model (a new process) reads them
    instead of running the corpus, and gets the same statistics and bank."""
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path / "cache"))
    corpus, calls = counted_corpus

    def run(**extra):
        cfg = EditorConfig(method="codebook", layers=[0], lr=0.1, max_steps=5, method_config=dict(
            corpus_sentences=6, corpus_path=str(corpus), num_names=0, **extra))
        ed = Editor(tiny_model("llama", initializer_range=0.5), tok, cfg)
        ed.edit(REQS[0])
        cb = ed.attachments()[0].module
        return cb.stat_mean.clone(), cb.stat_std.clone(), cb._bank["vecs"].clone()

    first = run()
    assert calls.count(6) == 1
    assert [p.parent.name for p in (tmp_path / "cache").rglob("*.safetensors")] == ["codebook_corpus_states"]
    second = run()
    assert calls.count(6) == 1  # read from disk, not captured again
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    run(key_positions="last_prompt")  # other keys are other states: captured and cached apart
    assert calls.count(6) == 2 and len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2


def test_train_positives_become_training_copies_that_reach_the_stop_rule(tok):
    """train_positives adds the radius's positives as training copies (never an evaluation
    prompt of the request), and the edit is trained until each copy predicts the target."""
    req = EditRequest(prompt="the capital of france is", target_new="rome", subject="france", case_id=0,
                      rephrase_prompts=["Here is a fact. the capital of france is"])
    ed = make_editor(tok, train_positives=3)
    ed.attachments()
    prompts, owners = ed.training_prompts([req], [0])
    assert prompts[0] == req.prompt and owners == [0] * len(prompts)
    assert prompts[1:] == ["Fact: the capital of france is", "Did you know? the capital of france is",
                           "I heard that the capital of france is"]  # "Here is a fact. …" is evaluation text
    outcome = ed.edit(req).outcomes[0]
    assert outcome.success
    lg, b = logits(ed.edited.model, tok, prompts, [req.subject] * len(prompts), [" rome"] * len(prompts))
    pos = b.target_mask.float().argmax(1) - 1
    probs = lg.softmax(-1)[torch.arange(len(prompts)), pos, tok.convert_tokens_to_ids("rome")]
    assert bool((probs > 0.5).all()), probs
    assert make_editor(tok).attachments()[0].module.training_copies(req) == []  # off by default


def test_corpus_states_keep_sentence_order_and_match_per_sentence_capture(tok):
    """The codebook's corpus states, captured in chunks of similar length, keep each sentence's
    rows together in the sentences' order, with the right sentence id and pooled key."""
    import random

    from tests.conftest import WORDS

    rng = random.Random(0)
    sents = [" ".join(rng.choice(WORDS[3:]) for _ in range(rng.randint(4, 15))) for _ in range(70)]
    edited = EditableModel(tiny_model("llama"), tok)
    editor = Editor(edited, tok, EditorConfig(method="codebook", layers=[1], disk_cache=False,
                                              method_config={"key_positions": "last_prompt"}))
    att = editor.attachments()[0]
    session = editor._start_session(REQS[:1], [0], REQS[:1])
    out = att.module._states(session, att, sents)
    h_rows, ids, pooled = [], [], []
    for i, s in enumerate(sents):
        h, pm, sm = next(R.site_hidden(edited, 1, att.component, tok, [s]))
        pooled.append(R.pool(h, pm, sm, "last_prompt")[0][0])
        pm = pm.clone()
        pm[:, 0] = False
        h_rows.append(h[pm])
        ids += [i] * int(pm.sum())
    torch.testing.assert_close(out["h"], torch.cat(h_rows), atol=1e-5, rtol=1e-5)
    assert out["sent_id"].tolist() == ids
    torch.testing.assert_close(out["pooled"], torch.stack(pooled), atol=1e-5, rtol=1e-5)
