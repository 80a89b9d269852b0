import contextlib

import pytest
import torch

import repedit
from repedit.positions import encode, token_info

from conftest import all_hooks, ours, param_hashes, tiny_model


def _strong(edited, name="e"):
    with torch.no_grad():
        edited.interventions[name].learned_source.bias.fill_(4.0)


def test_hidden_states_include_edit_and_foreign_hooks_survive(tok):
    model = tiny_model("llama")
    x = torch.randint(3, 40, (1, 5))
    model(input_ids=x)  # a forward before wrapping (transformers 5 installs its hooks lazily)
    seen = []
    foreign = model.lm_head.register_forward_hook(lambda m, a, o: seen.append(1))
    before = all_hooks(model)
    edited = repedit.wrap(model, tok)
    edited.add("e", "loreft", layer=0, positions="all", config={"seed": 0})
    _strong(edited)
    out = model(input_ids=x, output_hidden_states=True)
    with edited.disabled():
        base = model(input_ids=x, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    assert (out.hidden_states[1] - base.hidden_states[1]).abs().max() > 1e-3
    assert seen, "foreign hook must still fire"
    assert ours(all_hooks(model))
    edited.unwrap()
    after = all_hooks(model)
    assert not ours(after)
    assert set(before) <= set(after)  # nothing we did not register was removed
    model(input_ids=x)
    assert len(seen) == 3
    foreign.remove()


def test_disabled_runs_base_and_nests(llama, tok):
    x = torch.randint(3, 40, (2, 5))
    base = llama(input_ids=x).logits
    edited = repedit.wrap(llama, tok)
    edited.add("e", "loreft", layer=1, positions="all", config={"seed": 0})
    _strong(edited)
    with edited.disabled():
        with edited.disabled():
            assert torch.equal(llama(input_ids=x).logits, base)
        assert torch.equal(llama(input_ids=x).logits, base)
    assert not torch.equal(llama(input_ids=x).logits, base)


def test_exception_inside_forward_leaves_no_stale_state(llama, tok):
    edited = repedit.wrap(llama, tok)
    phi = edited.add("e", "loreft", layer=1, positions="all", config={"seed": 0})
    _strong(edited)
    x = torch.randint(3, 40, (1, 5))
    good = llama(input_ids=x).logits

    def boom(*a, **k):
        raise RuntimeError("boom")

    handle = phi.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        llama(input_ids=x)
    handle.remove()
    assert edited._ctx is None
    assert torch.equal(llama(input_ids=x).logits, good)


def _run_in_lockstep(model, jobs, rounds):
    """Run ``jobs`` (callables returning a tensor) in one thread each, ``rounds`` times, while a
    foreign hook holds every thread at layer 0 until all arrive, so the forwards overlap: each
    thread's pre-forward has run before any thread reaches the edited layer."""
    import threading

    barrier = threading.Barrier(len(jobs))

    def hold(module, args, output):
        barrier.wait(timeout=60)

    handle = model.model.layers[0].register_forward_hook(hold)
    results, errors = [[] for _ in jobs], []

    def worker(i):
        try:
            for _ in range(rounds):
                results[i].append(jobs[i]())
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handle.remove()
    assert not errors, errors
    return results


def test_threads_sharing_one_editable_model_get_serial_logits(llama, tok):
    edited = repedit.wrap(llama, tok)
    edited.add("e", "loreft", layer=1, positions="last_prompt", config={"seed": 0})
    edited.add("f", "loreft", layer=1, positions="prompt", config={"seed": 1})
    _strong(edited)
    _strong(edited, "f")
    a = encode(tok, ["the capital of france is"], padding_side="left").model_inputs()
    b = encode(tok, ["he was born in", "the eiffel tower is located in the city of"], padding_side="left").model_inputs()

    def run(x, disabled=False):
        with torch.no_grad(), (edited.disabled() if disabled else contextlib.nullcontext()):
            return llama(**x).logits

    jobs = [lambda: run(a), lambda: run(b), lambda: run(b, disabled=True)]
    want = [job() for job in jobs]  # serial
    assert not torch.equal(want[1], want[2])  # the edit matters; disabled() holds in its thread only
    for got, ref in zip(_run_in_lockstep(llama, jobs, rounds=10), want):
        assert all(torch.equal(g, ref) for g in got)
    import copy

    assert copy.deepcopy(edited)._ctx is None  # the per-thread state copies as a fresh one


def test_threads_generating_at_once_get_serial_text(llama, tok):
    edited = repedit.wrap(llama, tok)
    edited.add("e", "loreft", layer=1, positions="prompt", config={"seed": 3})
    _strong(edited)
    prompts = [["the capital of france is"], ["he was born in", "the eiffel tower is located in the city of"]]

    def gen(p):
        with torch.no_grad():
            return edited.generate(p, max_new_tokens=4, min_new_tokens=4, decode=False)

    jobs = [lambda: gen(prompts[0]), lambda: gen(prompts[1])]
    want = [job() for job in jobs]
    for got, ref in zip(_run_in_lockstep(llama, jobs, rounds=3), want):
        assert all(torch.equal(g, ref) for g in got)


def test_generate_refuses_a_subject_rule_without_subjects(llama, tok):
    edited = repedit.wrap(llama, tok)
    edited.add("e", "loreft", layer=1, positions="subject", config={"seed": 0})
    with pytest.raises(ValueError, match=r"positions='subject'.*pass subjects="):
        edited.generate(["the capital of france is"], max_new_tokens=2)
    with edited.disabled():  # the base model needs no subject
        assert len(edited.generate(["the capital of france is"], max_new_tokens=2)) == 1
    edited.set_active(["e"], active=False)
    assert len(edited.generate(["the capital of france is"], max_new_tokens=2)) == 1


def test_generate_refuses_an_empty_prompt(llama, tok):
    edited = repedit.wrap(llama, tok)
    with pytest.raises(ValueError, match=r"prompts \[1\] are empty"):
        edited.generate(["the capital of france is", ""], max_new_tokens=2)


def _greedy_reference(model, batch_ids, attn, n_new, prompt_width, subject_mask=None):
    ids, mask = batch_ids, attn
    finished = torch.zeros(ids.shape[0], 1, dtype=torch.bool)
    for _ in range(n_new):
        pm = torch.zeros_like(mask, dtype=torch.bool)
        pm[:, :prompt_width] = mask[:, :prompt_width].bool()
        with torch.no_grad(), token_info(prompt_mask=pm, subject_mask=subject_mask):
            logits = model(input_ids=ids, attention_mask=mask).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        nxt = torch.where(finished, torch.zeros_like(nxt), nxt)  # generate pads rows after EOS
        finished |= nxt == 1
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


@pytest.mark.parametrize("rule", ["last_prompt", "subject", "prompt", "all"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_generate_with_cache_equals_full_sequence_argmax(tok, rule, arch):
    model = tiny_model(arch)
    edited = repedit.wrap(model, tok)
    edited.add("e", "loreft", layer=0, positions=rule, config={"seed": 5})
    _strong(edited)
    prompts = ["the capital of france is", "danielle darrieux speaks"]
    subjects = ["france", "danielle darrieux"]
    batch = encode(tok, prompts, subjects=subjects, padding_side="left")
    with torch.no_grad(), batch.info():
        out = model.generate(**batch.model_inputs(), max_new_tokens=5, do_sample=False, pad_token_id=0, use_cache=True)
    ref = _greedy_reference(model, batch.input_ids, batch.attention_mask, 5, batch.input_ids.shape[1], batch.subject_mask)
    assert torch.equal(out, ref)
    # and the edit matters: it changes the next-token logits
    with torch.no_grad(), batch.info():
        edited_logits = model(**batch.model_inputs()).logits[:, -1]
        with edited.disabled():
            plain_logits = model(**batch.model_inputs()).logits[:, -1]
    assert (edited_logits - plain_logits).abs().max() > 1e-3


def test_text_generate_helper(llama, tok):
    edited = repedit.wrap(llama, tok)
    edited.add("e", "loreft", layer=0, positions="subject", config={"seed": 5})
    texts = edited.generate(["the capital of france is"], subjects=["france"], max_new_tokens=3)
    assert isinstance(texts, list) and len(texts) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("compute", ["float32", "model"])
def test_dtype_policy(tok, dtype, compute):
    model = tiny_model("llama", dtype=dtype)
    edited = repedit.wrap(model, tok, compute_dtype=compute)
    phi = edited.add("e", "loreft", layer=0, positions="all", config={"seed": 0})
    want = torch.float32 if compute == "float32" else dtype
    assert all(p.dtype == want for p in phi.parameters())
    x = torch.randint(3, 40, (2, 5))
    out = model(input_ids=x, output_hidden_states=True)
    assert out.hidden_states[1].dtype == dtype
    assert torch.isfinite(out.logits.float()).all()


def test_intervention_follows_layer_device(tok):
    model = tiny_model("llama")
    edited = repedit.wrap(model, tok)
    phi = edited.add("e", "loreft", layer=1)
    dev = next(model.model.layers[1].parameters()).device
    assert all(p.device == dev for p in phi.parameters())


def test_base_weights_bit_identical_through_wrap_train_save_load(tmp_path, tok):
    from repedit import EditRequest, Editor, EditorConfig

    model = tiny_model("llama")
    before = param_hashes(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    editor = Editor(model, tok, EditorConfig(method="loreft", layers=[1], max_steps=20, lr=5e-2))
    res = editor.edit(EditRequest(prompt="the capital of france is", target_new="rome", subject="france"))
    res.save_pretrained(tmp_path / "a")
    res.edited.unwrap()
    repedit.load_adapter(model, str(tmp_path / "a"), tokenizer=tok)
    assert param_hashes(model) == before
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


@pytest.mark.parametrize("rule", ["last_prompt", "subject", "prompt", "all"])
@pytest.mark.parametrize("method,cfg", [("loreft", {"seed": 0}), ("baft", {"seed": 0}), ("codebook", {})])
def test_hook_path_never_syncs_with_host(tok, monkeypatch, rule, method, cfg):
    """Our pre-hook, masks and site hook run with every host-sync entry point disabled."""
    model = tiny_model("llama")
    edited = repedit.wrap(model, tok)
    edited.add("e", method, layer=1, positions=rule, config=cfg)
    batch = encode(tok, ["the capital of france is", "he was born in"], subjects=["france", "he"], padding_side="left")
    h = torch.randn(2, batch.input_ids.shape[1], 32)
    site_hook = edited._make_site_hook((1, "block_output"))

    def forbidden(*a, **k):
        raise AssertionError("host synchronisation in the hook path")

    with batch.info():
        for name in ("item", "cpu", "tolist", "numpy", "__bool__"):
            monkeypatch.setattr(torch.Tensor, name, forbidden)
        edited._pre_forward(model.model, (), {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        out = site_hook(model.model.layers[1], (h,), (h,))
        monkeypatch.undo()
    assert out is not None and out[0].shape == h.shape


def test_the_cache_is_found_whatever_transformers_calls_it():
    """transformers 5.24 passes the KV cache to the decoder stack as ``cache`` (earlier
    ``past_key_values``); decoding steps must not look like prefills under either name."""
    from transformers import DynamicCache

    from repedit.hooks import _find_cache

    cache = DynamicCache()
    assert _find_cache({"past_key_values": cache}) is cache
    assert _find_cache({"cache": cache, "use_cache": True}) is cache
    assert _find_cache({"kv": cache}) is cache
    assert _find_cache({"attention_mask": None}) is None


def test_capture_stops_at_the_site_and_removes_its_hooks(tok):
    """EditableModel.capture: the states at a site (unedited, or entering a named intervention
    with the edits before it), the forward stopped there, and no hook of its own left behind."""
    model = tiny_model("llama")
    model(input_ids=torch.randint(3, 40, (1, 4)))
    edited = repedit.wrap(model, tok)
    batch = encode(tok, ["the capital of france is", "danielle darrieux speaks"])
    with torch.no_grad():
        ref = model(**batch.model_inputs(), output_hidden_states=True).hidden_states
    before = all_hooks(model)
    late = []
    handle = model.model.layers[1].register_forward_hook(lambda *a: late.append(1))
    h, mask = edited.capture(0, "block_output", batch)
    handle.remove()
    assert not late  # stopped after layer 0
    assert torch.equal(h, ref[1]) and mask.shape == h.shape[:2]
    assert all_hooks(model) == before  # the temporary site hook is gone
    handle = model.model.layers[1].register_forward_hook(lambda *a: late.append(1))
    h_full, _ = edited.capture(0, "block_output", batch, stop=False)
    handle.remove()
    assert late and torch.equal(h_full, ref[1])  # stop=False: the forward ran on
    edited.add("e", "loreft", layer=0, positions="last_prompt", config={"seed": 0})
    _strong(edited)
    edited.add("f", "loreft", layer=1, positions="last_prompt", config={"seed": 1})
    unedited, _ = edited.capture(1, "block_output", batch, before="f")
    entering, m, ctx = edited.capture(1, "block_output", batch, before="f", edited=True, with_context=True)
    assert not torch.allclose(entering, unedited)  # the edit at layer 0 runs before
    assert torch.equal(m, ctx.mask(edited.get("f").positions, m.device))
    assert not edited._local.disabled and edited._local.probe is None
