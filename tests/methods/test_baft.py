"""BaFT: math, gradient checks, LoReFT equivalence, editing, sequential editing, save/load."""

import pytest
import torch
from torch.func import functional_call

from repedit import EditRequest, Editor, EditorConfig
from repedit.hooks import EditableModel
from repedit.methods import available_methods, build, get_method
from repedit.methods.baft import BaFT, BaFTConfig, baft_delta

from conftest import tiny_model

REQS = [
    EditRequest(prompt="the capital of france is", target_new="rome", subject="france"),
    EditRequest(prompt="danielle darrieux speaks", target_new="german", subject="danielle darrieux"),
    EditRequest(prompt="the eiffel tower is located in", target_new="madrid", subject="eiffel tower"),
]


def cfg(**kw):
    base = dict(method="baft", layers=[1], positions="last_prompt", lr=5e-2, max_steps=150, stop_prob=0.5, relation_copies=0,
                method_config={"num_corpus_negatives": 0})
    base.update(kw)
    return EditorConfig(**base)


def argmax_next(model, tok, prompt):
    x = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        return model(**x).logits[0, -1].argmax().item()


def test_registered_with_help_and_validation():
    assert "baft" in available_methods()
    assert get_method("baft").module_cls is BaFT
    assert all(BaFTConfig.help().values())
    with pytest.raises(ValueError):
        BaFTConfig(gate="relu")
    with pytest.raises(ValueError):
        BaFTConfig(nullspace="both")
    with pytest.raises(ValueError):
        BaFTConfig(temperature=0)
    import repedit.methods.baft as mod

    assert "reconstruction" in mod.__doc__ and "reconstruction" in BaFT.__doc__


@pytest.mark.parametrize("gate_input", ["raw", "normalized"])
def test_formula_matches_reference(gate_input):
    phi = build("baft", {"rank": 3, "incremental": False, "seed": 0, "temperature": 0.7, "gate_input": gate_input},
                hidden_size=16)
    with torch.no_grad():
        for p in phi.block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    h = torch.randn(2, 5, 16)
    b = phi.block
    R, W, bias, U, c = b.rotate.matrix(), b.source, b.bias, b.gate, b.gate_bias
    if gate_input == "raw":
        w = torch.sigmoid((h @ U.T + c) / 0.7)
    else:  # gates read the centred state rescaled to norm √d
        mu, sd = torch.randn(16), torch.rand(16) + 0.5
        phi.gate_center.copy_(mu)
        phi.gate_scale.copy_(sd)
        y = (h - mu) / sd
        w = torch.sigmoid(((y / y.norm(dim=-1, keepdim=True) * 4.0) @ U.T + c) / 0.7)
        # a normalised gate ignores the scale of h − μ
        assert torch.allclose(phi.weights(mu + 7 * (h - mu)), phi.weights(h), atol=1e-5)
    ref = h + (w * (h @ W.T + bias - h @ R.T)) @ R
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = phi(h, mask)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-5)
    # input-dependent weights: the change is not linear in h
    assert not torch.allclose(phi(2 * h, mask) - 2 * h, 2 * (out - h), atol=1e-3)
    mask[0, 1] = False
    assert torch.equal(phi(h, mask)[0, 1], h[0, 1])


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    d, n = 6, 3
    args = [torch.randn(2, d, generator=g), torch.randn(3 * n, d, generator=g), torch.randn(n, d, generator=g),
            torch.randn(n, generator=g), torch.randn(n, generator=g)]
    args = [a.double().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda x, rd, wr, b, c: baft_delta(x, rd, wr, b, c, 0.8), args)
    mu = torch.randn(d, generator=g).double().requires_grad_()
    sd = (torch.rand(d, generator=g) + 0.5).double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, rd, wr, b, c, m, s: baft_delta(x, rd, wr, b, c, 0.8, gate_center=m, gate_scale=s), args + [mu, sd])
    # through the module, including the orthonormal-rows parametrization
    phi = build("baft", {"rank": 2, "incremental": False, "seed": 1}, hidden_size=5).double()
    with torch.no_grad():
        for p in phi.block.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    # R's QR parametrization (base.OrthonormalRows) computes in float32, so R is held fixed
    # here; every other parameter and the input are checked in float64.
    named = [(k, p) for k, p in phi.named_parameters() if "rotate" not in k]
    names = [k for k, _ in named]
    params = tuple(p.detach().clone().requires_grad_() for _, p in named)
    h = torch.randn(1, 3, 5, dtype=torch.float64, generator=g).requires_grad_()
    mask = torch.ones(1, 3, dtype=torch.bool)

    def f(h, *ps):
        return functional_call(phi, dict(zip(names, ps)), (h, mask), strict=False)

    assert torch.autograd.gradcheck(f, (h, *params))


def test_constant_gate_equals_loreft():
    lo = build("loreft", {"rank": 3, "seed": 0}, hidden_size=16)
    ba = build("baft", {"rank": 3, "incremental": False, "gate": "constant", "seed": 5}, hidden_size=16)
    with torch.no_grad():
        ba.block.rotate.original.copy_(lo.rotate.original)
        ba.block.source.copy_(lo.learned_source.weight)
        ba.block.bias.copy_(lo.learned_source.bias)
    h = torch.randn(3, 4, 16)
    mask = torch.rand(3, 4) > 0.3
    with torch.no_grad():
        a, b = lo(h, mask), ba(h, mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a - h).abs().max() > 1e-2  # the edit is not trivial
    # same parameters, input-dependent gates: different outputs
    sig = build("baft", {"rank": 3, "incremental": False, "gate": "sigmoid", "gate_input": "raw"}, hidden_size=16)
    sig.load_state_dict(ba.state_dict())
    with torch.no_grad():
        sig.block.gate.normal_()
        assert not torch.allclose(sig(h, mask), a, atol=1e-3)


def test_inference_is_cached_and_vectorised(monkeypatch):
    phi = build("baft", {"rank": 2, "incremental": False, "seed": 0}, hidden_size=8)
    h, mask = torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        first = phi(h, mask)
    calls = []
    real = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        assert torch.equal(phi(h, mask), first)
    assert not calls


def test_edit_flips_target_on_tiny_model(tok):
    model = tiny_model("llama", initializer_range=0.5)
    rome = tok.convert_tokens_to_ids("rome")
    before = argmax_next(model, tok, REQS[0].prompt)
    assert before != rome
    res = Editor(model, tok, cfg()).edit(REQS[0])
    out = res.outcomes[0]
    assert out.success and out.target_prob >= 0.5 and out.steps < 150
    assert argmax_next(model, tok, REQS[0].prompt) == rome
    module = res.edited.attachments()[0].module
    assert module.num_bases == 2 and module.export_config().num_bases == 2 and module.block is None
    with res.edited.disabled():
        assert argmax_next(model, tok, REQS[0].prompt) == before


def test_sequential_edits_keep_earlier_ones(tok):
    model = tiny_model("llama", initializer_range=0.5)
    targets = [tok.convert_tokens_to_ids(r.target_new) for r in REQS]
    assert all(argmax_next(model, tok, r.prompt) != t for r, t in zip(REQS, targets))
    editor = Editor(model, tok, cfg(method_config={"num_corpus_negatives": 0, "rank": 1}))
    editor.edit(REQS[:1])
    module = editor.attachments()[0].module
    frozen = {k: v.clone() for k, v in module.state_dict().items()}
    res = editor.edit(REQS[1:], sequential=True)
    assert all(o.success for o in res.outcomes)
    assert module.num_bases == 3
    # the first edit's bases are untouched, bit for bit
    for k in ("write_frozen", "bias_frozen", "gate_bias_frozen"):
        assert torch.equal(module.state_dict()[k][:1], frozen[k])
    assert [argmax_next(model, tok, r.prompt) for r in REQS] == targets


def test_gates_stay_off_on_negatives(tok):
    model = tiny_model("llama", initializer_range=0.5)
    editor = Editor(model, tok, cfg())
    editor.edit(REQS, sequential=True)
    att = editor.attachments()[0]
    module = att.module
    from repedit.positions import encode

    def gates(prompts):
        b = encode(tok, prompts)
        h, m = editor.capture(att, b)
        return module.weights(h[m])  # (prompts, bases)

    w = gates([r.prompt for r in REQS])
    own = torch.block_diag(*[torch.ones(1, 2)] * 3).bool()
    assert (w[own] > 0.5).all()  # each request's bases fire on it...
    assert (w[~own] < 0.5).all()  # ...and not on the other requests


def test_load_balancing_term_pushes_off_used_bases(tok):
    model = tiny_model("llama", initializer_range=0.5)
    editor = Editor(model, tok, cfg(max_steps=5, method_config={"incremental": False, "rank": 4, "num_corpus_negatives": 0,
                                                   "balance_weight": 1.0, "locality_weight": 0.0}))
    editor.edit(REQS[0])
    module = editor.attachments()[0].module
    assert module.usage.shape == (4,) and abs(float(module.usage.sum()) - 1) < 1e-5
    module.usage.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    from repedit.editing import EditSession

    prompts = [REQS[1].prompt]
    session = EditSession(editor, REQS[1:2], [1], editor.tokenizer and __import__("repedit").positions.encode(tok, prompts))
    module.prepare_edit(session)
    with torch.no_grad():  # open every gate half-way: only the usage history differs
        module.block.gate.zero_()
        module.block.gate_bias.zero_()
    loss = module.edit_loss(session, None)
    loss.backward()
    g = module.block.gate_bias.grad
    assert g[0] > 0 and (g[1:] < 0).all()  # descent lowers the heavily used basis' gate, raises the others


def test_save_load_bit_identical(tmp_path, tok):
    model = tiny_model("llama", initializer_range=0.5)
    res = Editor(model, tok, cfg()).edit(REQS[:2], sequential=True)
    x = tok([REQS[0].prompt, "the city of paris"], return_tensors="pt", padding=True)
    before = model(**x).logits
    res.save_pretrained(tmp_path)
    res.edited.unwrap()
    fresh = EditableModel.from_pretrained(model, tmp_path)
    after = model(**x).logits
    assert torch.equal(before, after)
    assert fresh.attachments()[0].module.num_bases == 4


def test_subject_trigger_gates_fire_on_subject_token_only(tok):
    """positions='prompt' + trigger='subject': after an edit the new gates are open on the
    subject's last token (also in a new context) and shut on every other prompt token."""
    from repedit.positions import encode

    model = tiny_model("llama", initializer_range=0.5, num_hidden_layers=3)  # later layers carry the subject edit
    req = REQS[2]  # subject "eiffel tower"
    editor = Editor(model, tok, EditorConfig(method="baft", layers=[0], lr=1e-1, max_steps=250, stop_prob=0.5, relation_copies=0,
                                             augment_corpus=["the cat sat on the mat today", "rome is a city in italy"],
                                             # the fit itself, without the inference shift (a
                                             # 2-layer toy's positives sit nearer the boundary)
                                             method_config={"num_corpus_negatives": 0, "seed": 0, "gate_shift": 0.0}))
    assert editor.config.positions == "prompt" and editor.config.augment == 2
    res = editor.edit(REQS[:1] + [req], sequential=True)
    assert all(o.success for o in res.outcomes)
    att = editor.attachments()[0]
    module = att.module
    for prompt in (req.prompt, "the cat sat on the mat . " + req.prompt):
        batch = encode(tok, [prompt], subjects=[req.subject])
        h, mask = editor.capture(att, batch)
        w = module.weights(h[0])[:, 2:4]  # the second edit's bases
        last_subject = int(torch.nonzero(batch.subject_mask[0]).max())
        assert bool((w[last_subject] > 0.5).all())
        others = [t for t in range(h.shape[1]) if t != last_subject]
        assert bool((w[others] < 0.5).all())


def test_trained_gates_veto_early_stop_until_separated(tok):
    model = tiny_model("llama", initializer_range=0.5)
    editor = Editor(model, tok, EditorConfig(method="baft", layers=[0], lr=5e-2, max_steps=150, stop_prob=0.05, relation_copies=0,
                                             augment=0, method_config={"num_corpus_negatives": 0, "seed": 0,
                                                                       "train_gates": True, "gate_fit_steps": 0}))
    module = editor.attachments()[0].module
    answers = []
    orig = module.ready_to_stop

    def spy(session):
        answers.append((orig(session), module.gate_separation()))
        return answers[-1][0]

    module.ready_to_stop = spy
    editor.edit(REQS[0])
    assert answers and answers[-1][0]  # stopped once the gates separated ...
    sep = answers[-1][1]
    assert sep["pos_min"] > 0 and sep["neg_max"] < 0
    assert all(not a for a, _ in answers[:-1])  # ... and not before


def test_gate_shift_knob_moves_scope_without_retraining(tok, tmp_path):
    """gate_shift (a sweep knob) adds to every gate logit at inference: a large negative shift
    switches a trained edit off (the base prediction returns), the default restores it exactly."""
    from repedit.eval.sweep import get_knob, knobs, set_knob

    model = tiny_model("llama", initializer_range=0.5)
    base_pred = argmax_next(model, tok, REQS[0].prompt)
    editor = Editor(model, tok, cfg())
    assert editor.edit(REQS[0]).outcomes[0].success
    target = tok.convert_tokens_to_ids("rome")
    assert argmax_next(model, tok, REQS[0].prompt) == target
    att = editor.attachments()[0]
    x = tok([REQS[0].prompt], return_tensors="pt")
    with torch.no_grad():
        edited_logits = model(**x).logits
    assert knobs(editor.edited)[att.name]["gate_shift"] == BaFTConfig().gate_shift == -4.0  # the default
    set_knob(att, "gate_shift", -60.0)
    assert get_knob(att, "gate_shift") == -60.0
    with torch.no_grad(), editor.edited.disabled():
        base_logits = model(**x).logits
    with torch.no_grad():
        assert torch.allclose(model(**x).logits, base_logits, atol=1e-5)
    assert argmax_next(model, tok, REQS[0].prompt) == base_pred
    set_knob(att, "gate_shift", -4.0)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, edited_logits)
    # the knob works on a loaded adapter too (its module was once left in training mode,
    # where the shift is ignored)
    editor.edited.save_pretrained(str(tmp_path / "a"))
    other = EditableModel(tiny_model("llama", initializer_range=0.5), tok)
    other.load_adapter(str(tmp_path / "a"))
    att2 = other.attachments()[0]
    assert not att2.module.training
    with torch.no_grad():
        assert torch.allclose(other.model(**x).logits, edited_logits, atol=1e-5)
        set_knob(att2, "gate_shift", -60.0)
        assert torch.allclose(other.model(**x).logits, base_logits, atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        set_knob(att, "temperature", 0.0)
    with pytest.raises(ValueError, match="finite"):
        BaFTConfig(gate_shift=float("nan"))


def test_success_is_checked_as_the_edit_runs_at_inference(tok):
    """The Editor re-checks each finished edit in eval mode: an edit that reached its target in
    training but is switched off at inference (a huge negative gate shift) is reported as not
    taken, with the training verdict kept in flags; verify=False reports the training verdict."""
    mc = {"num_corpus_negatives": 0, "gate_shift": -60.0}
    out = Editor(tiny_model("llama", initializer_range=0.5), tok, cfg(method_config=mc)).edit(REQS[0]).outcomes[0]
    assert out.flags["trained"] and out.flags["trained_target_prob"] >= 0.5
    assert not out.success and out.target_prob < 0.5
    out = Editor(tiny_model("llama", initializer_range=0.5), tok,
                 cfg(method_config=mc, verify=False)).edit(REQS[0]).outcomes[0]
    assert out.success and "trained" not in out.flags
    out = Editor(tiny_model("llama", initializer_range=0.5), tok, cfg()).edit(REQS[0]).outcomes[0]
    assert out.success and out.flags["trained"] and out.target_prob >= 0.5
    # the check changes nothing: a sequential run trains the same tensors with and without it
    states = []
    for verify in (True, False):
        ed = Editor(tiny_model("llama", initializer_range=0.5), tok, cfg(verify=verify))
        ed.edit(REQS[:2], sequential=True)
        states.append(ed.attachments()[0].module.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_gate_init_scale_is_bounded_for_inseparable_requests():
    """A request whose positives barely clear the negatives along the init direction must not
    get a huge gate scale (it once gave logits ~1e9 that fired on every high-norm token)."""
    torch.manual_seed(0)
    phi = build("baft", {"rank": 2, "seed": 0}, hidden_size=16)
    from repedit.methods.baft import _Block

    phi.block = _Block(16, 2, None)
    x = torch.randn(100, 16)
    neg = torch.cat([x, -x])  # mean exactly 0: the init direction is the positives' mean, e0
    top = float(neg[:, 0].max())
    # positives on e0 whose lowest projection sits 1e-6 above the highest negative one
    pos = torch.zeros(3, 16)
    pos[:, 0] = top + 1e-6 + torch.tensor([0.0, 1.0, 2.0])
    phi._init_gates(pos, torch.zeros(3, dtype=torch.long), neg, [object()])
    with torch.no_grad():
        z = phi._gate_logits(torch.cat([neg, pos]), phi.block.gate, phi.block.gate_bias)
        assert torch.isfinite(z).all()
        assert float(z.abs().max()) < 1e3
        big = 50 * torch.randn(5, 16)  # attention-sink-like states of large norm
        assert float(phi._gate_logits(big, phi.block.gate, phi.block.gate_bias).abs().max()) < 1e4


def test_earlier_edits_positives_are_negatives_of_later_gates(tok, monkeypatch):
    """Sequential editing: each new gate is fitted with every earlier edit's gate positives as
    negatives (other subjects), so it stays shut on earlier subjects."""
    model = tiny_model("llama", initializer_range=0.5)
    seen = []
    orig = BaFT._fit_gates

    def record(self):
        seen.append((self._train_state["pos"].clone(), self._train_state["neg"].clone()))
        return orig(self)

    monkeypatch.setattr(BaFT, "_fit_gates", record)
    editor = Editor(model, tok, cfg(method_config={"num_corpus_negatives": 0, "num_negatives": 0}))
    editor.edit(REQS, sequential=True)
    module = editor.attachments()[0].module
    from repedit.methods.baft import subject_key

    # the bank holds every edit's positives (float16) under its subject's key, in order
    keys = torch.unique_consecutive(module.earlier_subject).tolist()
    assert keys == [subject_key(r.subject) for r in REQS]
    assert module.earlier_states.shape[0] == sum(p.shape[0] for p, _ in seen)
    for k in (1, 2):
        neg = seen[k][1]
        for j in range(k):
            pos_j = seen[j][0].half().float()
            # every earlier positive is a row of this edit's negatives
            dist = torch.cdist(pos_j, neg, compute_mode="donot_use_mm_for_euclid_dist")
            assert bool((dist.min(1).values < 1e-5).all())
    # and with the option off they are not
    seen.clear()
    editor = Editor(tiny_model("llama", initializer_range=0.5), tok,
                    cfg(method_config={"num_corpus_negatives": 0, "num_negatives": 0, "earlier_negatives": False}))
    editor.edit(REQS, sequential=True)
    assert not bool((torch.cdist(seen[0][0], seen[2][1]).min(1).values < 1e-5).any())


def test_other_subjects_are_gate_negatives(tok, monkeypatch):
    """Subject trigger: the last-token states of the other requests' subjects (the entity
    bank) are negatives of each new gate; the request's own subject never is."""
    import repedit.methods.baft as baft_mod

    model = tiny_model("llama", initializer_range=0.5)
    seen = []
    orig = BaFT._fit_gates

    def record(self):
        seen.append(self._train_state["neg"].clone())
        return orig(self)

    monkeypatch.setattr(BaFT, "_fit_gates", record)
    editor = Editor(model, tok, EditorConfig(method="baft", layers=[1], max_steps=5, augment=0, relation_copies=0,
                                             method_config={"num_corpus_negatives": 0, "num_negatives": 0,
                                                            "earlier_negatives": False, "gate_templates": 0}))
    editor.edit(REQS, sequential=True)
    att = editor.attachments()[0]
    import types

    fake = types.SimpleNamespace(all_requests=REQS, edited=editor.edited, device=torch.device("cpu"), editor=editor,
                                 encode=lambda *a, **k: None, memory=editor.memory)
    calls = []
    fake.encode = lambda *a, **k: calls.append(1)  # every name is cached: nothing is captured again
    names, states = att.module._subject_bank(fake, att)
    assert calls == []
    assert sorted(set(names)) == sorted(r.subject for r in REQS)
    assert states.shape[0] == len(names) == len(REQS) * len(baft_mod.SUBJECT_PREFIXES)
    for k, req in enumerate(REQS):
        hit = torch.cdist(states, seen[k]).min(1).values < 1e-5
        for name, h in zip(names, hit.tolist()):
            assert h == (name != req.subject), (req.subject, name)


@pytest.mark.parametrize("method_config", [{}, {"nullspace": "read", "nullspace_corpus": ["the cat sat on the mat",
                                                                                       "a dog ran in the park today"]}])
def test_sequential_run_resumed_from_checkpoint_equals_uninterrupted(tmp_path, tok, method_config):
    """A sequential run checkpointed after each edit (callback) and resumed in a fresh model
    from the saved adapter (start=k) ends with the same tensors as one uninterrupted run: the
    earlier-negatives bank is saved, and each edit's initial bases depend on the seed and the
    number of bases, not on one generator's history."""
    reqs = REQS + [EditRequest(prompt="the mona lisa hangs in", target_new="london", subject="mona lisa")]
    mc = {"num_corpus_negatives": 0, "seed": 0, **method_config}
    config = cfg(positions="prompt", augment=1, augment_corpus=["the cat sat on the mat today"], max_steps=40,
                 method_config=mc)

    model = tiny_model("llama", initializer_range=0.5)
    editor = Editor(model, tok, config)
    seen = []

    def checkpoint(done, outcomes):
        seen.append((done, len(outcomes)))
        if done == 2:
            editor.edited.save_pretrained(str(tmp_path / "ckpt2"))

    full = editor.edit(reqs, sequential=True, callback=checkpoint)
    assert seen == [(1, 1), (2, 2), (3, 3), (4, 4)]
    want = {k: v.clone() for k, v in editor.attachments()[0].module.state_dict().items()}
    assert want["earlier_states"].shape[0] > 0
    assert want["earlier_states"].dtype == torch.float16  # kept float16 though the module runs in float32

    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "ckpt2" / "adapter_model.safetensors"))
    bank = [k for k in saved if k.endswith(".earlier_states")]
    assert bank and all(saved[k].dtype == torch.float16 and saved[k].shape[0] > 0 for k in bank)  # stored as float16
    model2 = tiny_model("llama", initializer_range=0.5)  # the same random base, fresh wrapper
    edited2 = EditableModel(model2, tok)
    edited2.load_adapter(str(tmp_path / "ckpt2"))
    editor2 = Editor(edited2, tok, config)
    rest = editor2.edit(reqs, sequential=True, start=2)
    assert [o.index for o in rest.outcomes] == [2, 3]
    assert [(o.steps, o.loss) for o in rest.outcomes] == [(o.steps, o.loss) for o in full.outcomes[2:]]
    got = editor2.attachments()[0].module.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_edit_start_is_validated(tok):
    model = tiny_model("llama", initializer_range=0.5)
    editor = Editor(model, tok, cfg())
    for bad in (-1, 3, 1.5, True):
        with pytest.raises(ValueError, match="start"):
            editor.edit(REQS, sequential=True, start=bad)
    with pytest.raises(ValueError, match="sequential"):
        editor.edit(REQS, start=1)
    assert editor.edited.attachments() == []


def test_subject_variants_are_hard_gate_negatives(tok, monkeypatch):
    """subject_variants: the subject's word suffixes and look-alikes with other leading words
    ('london tower' for 'eiffel tower') are negatives of the edit's gates, in a group of their
    own, so the gates key on the whole name rather than its last word."""
    from repedit.corpus import Corpus

    monkeypatch.setattr(Corpus, "names", lambda self, limit, sentences=4000: ["london", "paris", "berlin city", "madrid"])
    req = EditRequest(prompt="the eiffel tower is located in", target_new="madrid", subject="eiffel tower")
    probe = "london tower is located in"

    def run(variants):
        seen = {}
        orig = BaFT._fit_gates

        def record(self):
            seen["hard"] = self._train_state.get("hard")
            return orig(self)

        monkeypatch.setattr(BaFT, "_fit_gates", record)
        editor = Editor(tiny_model("llama", initializer_range=0.5), tok,
                        cfg(layers=[0], positions="prompt", augment=0, max_steps=20,
                            method_config={"num_corpus_negatives": 0, "subject_variants": variants, "seed": 0,
                                           "gate_templates": 0}))
        editor.edit(req)
        mod = editor.attachments()[0].module
        tower = tok.convert_tokens_to_ids("tower")

        def gate_at_tower(text):
            x = tok([text], return_tensors="pt")
            with torch.no_grad(), editor.edited.disabled():
                h = editor.edited.model(**x, output_hidden_states=True).hidden_states[1][0]  # layer 0's output
            at = x["input_ids"][0].tolist().index(tower)
            return mod.weights(h[at]).max().item()

        return seen["hard"], gate_at_tower(probe), gate_at_tower(req.prompt)

    hard, w_probe, w_own = run(4)
    # suffix 'tower' and look-alikes 'london tower', 'paris tower', 'berlin tower', 'madrid tower'
    # (in any order; each at a sentence start and after a prefix)
    assert hard is not None and hard.shape[0] >= 2 * 2
    assert w_own > 0.5 and w_probe < 0.05
    none, w_probe0, _ = run(0)
    assert none is None
    assert w_probe0 > 5 * w_probe  # without them the look-alike half-opens the gate (0.37 against 0.002)


def test_subject_variant_names(monkeypatch):
    """Which names are built: proper word suffixes and look-alikes, never a request's own subject."""
    import random
    import types

    from repedit.corpus import Corpus

    corpus = Corpus.from_texts([])
    monkeypatch.setattr(corpus, "names", lambda limit, sentences=4000: ["George", "Romanian Club", "Chilean Football Federation"])
    mod = BaFT(BaFTConfig(subject_variants=3), 8)
    got = {}
    monkeypatch.setattr(BaFT, "_name_states", lambda self, s, a, names: (got.setdefault("names", names), torch.zeros(0, 8)))
    session = types.SimpleNamespace(requests=[EditRequest(prompt="Chilean Football Federation is a member of",
                                                          target_new="FIFA", subject="Chilean Football Federation"),
                                              EditRequest(prompt="Norway is in", target_new="Asia", subject="Norway")],
                                    corpus=corpus)
    mod._subject_variants(session, None, random.Random(0))
    names = got["names"]
    assert {"Football Federation", "Federation"} <= set(names)
    assert "Chilean Football Federation" not in names and "Norway" not in names
    rest = [n for n in names if n not in ("Football Federation", "Federation")]
    assert len(rest) == 2 and all(n.split()[0] in ("George", "Romanian") and n.endswith("Federation") for n in rest)


def test_essence_term_keeps_the_subjects_other_predictions(tok, monkeypatch):
    """essence_weight: KL(unedited ‖ edited) after the subject in essence_templates joins the
    loss, so the edit changes those predictions less than without it."""
    req = EditRequest(prompt="the capital of france is", target_new="rome", subject="france",
                      rephrase_prompts=["france is a"])  # an evaluation prompt: never an essence prompt

    def run(weight):
        editor = Editor(tiny_model("llama", initializer_range=0.5), tok,
                        cfg(layers=[0], positions="prompt", augment=0, max_steps=25, stop_prob=0.99,
                            method_config={"num_corpus_negatives": 0, "seed": 0, "gate_templates": 0,
                                           "essence_weight": weight, "essence_templates": ["{} is a", "{} was"]}))
        editor.edit(req)
        mod = editor.attachments()[0].module
        x = tok(["france was"], return_tensors="pt")
        with torch.no_grad():
            after = torch.log_softmax(editor.edited.model(**x).logits[0, -1], -1)
            with editor.edited.disabled():
                before = torch.log_softmax(editor.edited.model(**x).logits[0, -1], -1)
        return float(torch.nn.functional.kl_div(after, before, log_target=True, reduction="sum")), mod

    import repedit.methods.baft.negatives as B

    seen = []
    real = B._kl_reference
    monkeypatch.setattr(B, "_kl_reference", lambda session, prompts, w: seen.extend(prompts) or real(session, prompts, w))
    kl_off, _ = run(0.0)
    kl_on, mod = run(5.0)
    assert kl_on < 0.5 * kl_off, (kl_on, kl_off)
    assert seen == ["france was"]  # "france is a" is the request's rephrase prompt: never trained on


def test_setup_is_built_once_and_reused_from_disk(tok, monkeypatch, tmp_path):
    """BaFT's corpus-negative states and name bank depend only on the model, the site and the
    corpus: the first editor captures them and writes them to the cache; a later editor (a new
    process) loads them, captures no corpus text, and trains the same edit."""
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path))
    from repedit.corpus import Corpus
    from repedit.editing import Editor as E

    corpus = Corpus.from_texts(["the capital of spain is madrid and london is a city in england"] * 230
                               + ["paris Rome Berlin Madrid London England are spoken of in the city"] * 5)
    req = EditRequest(prompt="the capital of france is", target_new="rome", subject="france")
    captured = []
    real = E.capture
    monkeypatch.setattr(E, "capture", lambda self, att, batch, edited=False: captured.append(batch.input_ids.shape[0])
                        or real(self, att, batch, edited))

    def run():
        captured.clear()
        model = tiny_model("llama", initializer_range=0.5)
        editor = Editor(model, tok, cfg(layers=[0], positions="prompt", augment=0, max_steps=10, corpus=corpus,
                                        method_config={"seed": 0, "num_corpus_negatives": 30, "num_subject_negatives": 5}))
        editor.edit(req)
        return sum(captured), editor.attachments()[0].module.state_dict()

    first, state1 = run()
    files = sorted(p.parent.name for p in tmp_path.rglob("*.safetensors"))
    assert files == ["baft_corpus_negatives", "baft_name_bank"]
    second, state2 = run()
    assert second < first - 30  # the 30 corpus sentences (and the names) were not run again
    assert all(torch.equal(state1[k], state2[k]) for k in state1)
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path / "off"))
    editor = Editor(tiny_model("llama", initializer_range=0.5), tok,
                    cfg(layers=[0], positions="prompt", augment=0, max_steps=2, corpus=corpus, disk_cache=False,
                        method_config={"seed": 0, "num_corpus_negatives": 30}))
    editor.edit(req)
    assert not (tmp_path / "off").exists()  # disk_cache=False writes nothing


def _gate_problem(fit: str, n_neg: int = 6000, d: int = 16):
    """Two requests' positives (own clusters) and many negatives, gates initialised."""
    from repedit.methods.baft import _Block

    g = torch.Generator().manual_seed(0)
    phi = build("baft", {"rank": 2, "seed": 0, "gate_input": "raw", "gate_fit": fit, "gate_fit_sample": 512},
                hidden_size=d)
    phi.block = _Block(d, 4, None)
    neg = torch.randn(n_neg, d, generator=g)
    centres = torch.zeros(2, d)
    centres[0, 0], centres[1, 1] = 7.0, 7.0
    pos = torch.cat([c + 0.3 * torch.randn(4, d, generator=g) for c in centres])
    owner = torch.tensor([0] * 4 + [1] * 4)
    phi._train_state = {"pos": pos, "pos_owner": owner, "neg": neg,
                        "own": owner[:, None] == (torch.arange(4) // 2)[None, :]}
    phi._init_gates(pos, owner, neg, [object(), object()])
    return phi, pos, neg


def test_active_gate_fit_separates_like_the_full_fit(monkeypatch):
    seen = []
    real = BaFT._gate_loss

    def spy(self, gate, gbias, neg=None, *a, **k):
        seen.append(None if neg is None else neg.shape[0])
        return real(self, gate, gbias, neg, *a, **k)

    monkeypatch.setattr(BaFT, "_gate_loss", spy)
    fitted = {}
    for fit in ("full", "active"):
        seen.clear()
        phi, pos, neg = _gate_problem(fit)
        phi._fit_gates()
        b = phi.block
        assert torch.equal(b.gate[0], b.gate[1]) and torch.equal(b.gate[2], b.gate[3])  # one row per request, copied
        with torch.no_grad():
            zp = phi._gate_logits(pos, b.gate, b.gate_bias)
            zn = phi._gate_logits(neg, b.gate, b.gate_bias)
        own = phi._train_state["own"]
        assert float(zp[own].min()) > 0 and float(zp[~own].max()) < 0 and float(zn.max()) < 0
        fitted[fit] = (b.gate.detach().clone(), seen[:])
    (g_full, n_full), (g_act, n_act) = fitted["full"], fitted["active"]
    assert set(n_full) == {None}  # every negative at every step
    assert n_act and max(n_act) < 6000  # a subset of the negatives per step
    cos = torch.nn.functional.cosine_similarity(g_full[::2], g_act[::2], dim=1)
    assert bool((cos > 0.95).all())


def test_active_subset_weights_estimate_the_mean():
    phi, _, neg = _gate_problem("active")
    active = torch.zeros(neg.shape[0], dtype=torch.bool)
    active[:100] = True
    sub, w = phi._active_subset(neg, active, torch.Generator().manual_seed(0))
    assert sub.shape[0] == 100 + 512 and torch.equal(sub[:100], neg[:100])
    assert abs(float(w.sum()) - 1.0) < 1e-5
    assert float(w[0]) == pytest.approx(1 / neg.shape[0])


def _many_edits(n_edits: int, d: int = 24, rank: int = 2, open_edits=(), **cfg):
    """A frozen BaFT with ``n_edits`` synthetic edits (one gate row per edit, as fitted);
    gates closed (bias −30) except ``open_edits`` (bias +5)."""
    g = torch.Generator().manual_seed(0)
    nb = n_edits * rank
    phi = build("baft", {"rank": rank, "num_bases": nb, "gate_input": "raw", "gate_shift": 0.0, **cfg}, d)
    with torch.no_grad():
        gates = (torch.randn(n_edits, d, generator=g) / d ** 0.5).repeat_interleave(rank, 0)
        phi.read_frozen.copy_(torch.cat([gates, torch.randn(2 * nb, d, generator=g) / d ** 0.5]))
        phi.write_frozen.copy_(torch.nn.functional.normalize(torch.randn(nb, d, generator=g), dim=-1))
        phi.bias_frozen.copy_(torch.randn(nb, generator=g))
        c = torch.full((n_edits,), -30.0)
        c[list(open_edits)] = 5.0
        phi.gate_bias_frozen.copy_(c.repeat_interleave(rank))
    return phi.eval()


def test_sparse_routing_equals_dense_where_few_gates_open():
    x = torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 7, dtype=torch.bool)
    dense = _many_edits(300, open_edits=(3, 70, 299), routing="dense")
    sparse = _many_edits(300, open_edits=(3, 70, 299), routing="sparse", routing_top_k=4)
    assert sparse.sparse_routing and not dense.sparse_routing
    out_d, out_s = dense(x, mask), sparse(x, mask)
    assert not torch.allclose(out_d, x, atol=1e-3)  # the open edits change the states
    assert torch.allclose(out_s, out_d, atol=1e-5)
    # with more open edits than top-k, only the k most open ones act (the rest contribute 0)
    many = _many_edits(300, open_edits=range(10), routing="sparse", routing_top_k=4)
    many_dense = _many_edits(300, open_edits=range(10), routing="dense")
    assert not torch.allclose(many(x, mask), many_dense(x, mask), atol=1e-3)


def test_sparse_routing_with_k_covering_every_edit_is_the_dense_path():
    x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 5, dtype=torch.bool)
    dense = _many_edits(12, open_edits=(1, 2, 5), routing="dense")
    with torch.no_grad():  # gates of every strength, not only clearly open or closed
        dense.gate_bias_frozen.copy_(torch.linspace(-3, 3, 12).repeat_interleave(2))
    sparse = _many_edits(12, routing="sparse", routing_top_k=12)
    sparse.load_state_dict(dense.state_dict())
    assert torch.allclose(sparse(x, mask), dense(x, mask), atol=1e-5)


def test_routing_auto_switches_by_edit_count_and_not_in_training():
    assert not _many_edits(10, routing_min_edits=256).sparse_routing
    phi = _many_edits(300, routing_min_edits=256)
    assert phi.sparse_routing
    phi.train()
    assert not phi.sparse_routing  # training always runs the dense path
    assert not _many_edits(300, train_gates=True).sparse_routing  # trained gates: rows may differ


@pytest.mark.parametrize("n_edits", [10, 300])  # dense and sparsely routed at inference
def test_training_forward_runs_earlier_edits_as_inference_does(n_edits):
    """While a new edit trains, the frozen edits act as at inference (gate shift, sparse routing
    where inference routes), so a fresh block (no change yet) leaves the training forward equal
    to the inference forward; 'none' (the behaviour before) runs them unshifted and dense; 'all'
    shifts the new bases' gates too."""
    from repedit.methods.baft.module import _Block

    x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 5, dtype=torch.bool)
    phi = _many_edits(n_edits, open_edits=(1, 7), gate_shift=-4.0, routing_min_edits=256)
    with torch.no_grad():  # gates of every strength: the shift matters for each
        phi.gate_bias_frozen.copy_(torch.linspace(-3, 6, n_edits).repeat_interleave(2))
    assert phi.sparse_routing == (n_edits >= 256)
    inference = phi(x, mask)
    phi.block = _Block(24, 2, torch.Generator().manual_seed(0))  # W = R, b = 0: adds nothing yet
    phi.train()
    assert torch.allclose(phi(x, mask), inference, atol=1e-5)
    phi.config.train_as_inference = "none"
    assert not torch.allclose(phi(x, mask), inference, atol=1e-3)
    phi.config.train_as_inference = "earlier"
    with torch.no_grad():  # the new bases act in training, unshifted, on top of the frozen ones
        phi.block.bias.fill_(1.0)
        phi.block.gate_bias.fill_(2.0)
    read, write, bias, gbias = phi._block_mats()
    new = baft_delta(x, read, write, bias, gbias, 1.0, gate_center=None)
    assert torch.allclose(phi(x, mask), inference + new, atol=1e-5)
    phi.config.train_as_inference = "all"  # ... or shifted like them, as inference will run them
    shifted = baft_delta(x, read, write, bias, gbias - 4.0, 1.0, gate_center=None)
    assert torch.allclose(phi(x, mask), inference + shifted, atol=1e-5)
    assert not torch.allclose(new, shifted, atol=1e-3)
    with pytest.raises(ValueError, match="train_as_inference"):
        BaFTConfig(train_as_inference="never")


def _varied_texts(n: int, seed: int = 0) -> list[str]:
    import random

    from conftest import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[3:]) for _ in range(rng.randint(4, 15))) for _ in range(n)]


def test_corpus_negatives_equal_one_padded_capture(tok):
    """The corpus-negative states, captured in chunks of similar length, are every attended
    token's state of each sentence in the sentences' order, as one padded batch gives them."""
    texts = _varied_texts(260)
    model = EditableModel(tiny_model("llama"), tok)
    editor = Editor(model, tok, cfg(corpus=texts, disk_cache=False, method_config={"num_corpus_negatives": 40}))
    att = editor.attachments()[0]
    session = editor._start_session(REQS[:1], [0], REQS[:1])
    got = att.module._corpus_negatives(session, att)
    sents = [" ".join(t.split()[:16]) for t in session.corpus.sentences(limit=240)[200:]]
    batch = session.encode(sents)
    h, _ = session.capture(att, batch)
    want = h[batch.attention_mask.bool()].float()
    assert got.shape == want.shape and got.shape[0] == sum(len(s.split()) for s in sents)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_name_states_keep_each_names_rows_in_prefix_order(tok):
    """The name bank is captured in chunks of similar length, yet each name's rows come back in
    SUBJECT_PREFIXES order, each equal to the capture of that prompt alone."""
    from repedit.methods.baft.negatives import SUBJECT_PREFIXES

    model = EditableModel(tiny_model("llama"), tok)
    editor = Editor(model, tok, cfg(disk_cache=False))
    att = editor.attachments()[0]
    session = editor._start_session(REQS[:1], [0], REQS[:1])
    names = ["paris", "danielle darrieux", "the eiffel tower", "rome"]
    out_names, states = att.module._name_states(session, att, names)
    assert out_names == [n for n in names for _ in SUBJECT_PREFIXES]
    for k, (name, state) in enumerate(zip(out_names, states)):
        batch = session.encode([SUBJECT_PREFIXES[k % len(SUBJECT_PREFIXES)] + name], subjects=[name])
        h, _ = session.capture(att, batch)
        last = int(batch.subject_mask[0].nonzero().max())
        torch.testing.assert_close(state, h[0, last].float(), atol=1e-5, rtol=1e-5)
