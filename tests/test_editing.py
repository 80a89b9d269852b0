import pytest
import torch

import repedit
from repedit import EditRequest, Editor, EditorConfig

from conftest import tiny_model

REQ = EditRequest(prompt="the capital of france is", target_new="rome", subject="france")


def cfg(**kw):
    base = dict(method="loreft", layers=[1], lr=5e-2, max_steps=150, stop_prob=0.5)
    base.update(kw)
    return EditorConfig(**base)


def test_edit_flips_target_on_tiny_model(tok):
    model = tiny_model("llama", initializer_range=0.5)
    x = tok(["the capital of france is"], return_tensors="pt")
    before = model(**x).logits[0, -1].argmax().item()
    rome = tok.convert_tokens_to_ids("rome")
    assert before != rome
    res = Editor(model, tok, cfg()).edit(REQ)
    out = res.outcomes[0]
    assert out.success and out.target_prob >= 0.5 and 0 < out.steps < 150
    assert model(**x).logits[0, -1].argmax().item() == rome
    assert res.edited.generate(["the capital of france is"], max_new_tokens=1) == ["rome"]
    with res.edited.disabled():
        assert model(**x).logits[0, -1].argmax().item() == before


def test_early_stopping_uses_few_steps_for_easy_edit(tok):
    model = tiny_model("llama", initializer_range=0.5)
    res = Editor(model, tok, cfg(stop_prob=0.05)).edit(REQ)
    assert res.outcomes[0].success and res.outcomes[0].steps < 40


def test_deterministic_for_a_seed(tok):
    def run(seed):
        model = tiny_model("llama", initializer_range=0.5)
        res = Editor(model, tok, cfg(seed=seed, max_steps=10)).edit(REQ)
        return {k: v.clone() for k, v in res.edited.interventions.state_dict().items()}

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_batch_edit(tok):
    model = tiny_model("llama", initializer_range=0.5)
    reqs = [REQ, EditRequest(prompt="danielle darrieux speaks", target_new="german", subject="danielle darrieux")]
    res = Editor(model, tok, cfg(max_steps=300)).edit(reqs)
    assert [o.index for o in res.outcomes] == [0, 1]
    assert all(o.success for o in res.outcomes)


def test_invalid_requests_rejected_before_anything_changes(tok):
    model = tiny_model("llama", initializer_range=0.5)
    editor = Editor(model, tok, cfg())
    bad = [REQ, EditRequest(prompt="he was born in", target_new="   ")]
    with pytest.raises(ValueError, match="target_new"):
        editor.edit(bad)
    with pytest.raises(ValueError, match="subject"):
        editor.edit([EditRequest(prompt="he was born in", target_new="paris", subject="france")])
    for nothing in (None, "the capital of france is", 3):
        with pytest.raises(TypeError, match="edit\\(\\) takes an EditRequest, a dict or a list of them, got"):
            editor.edit(nothing)
    assert not editor.edited.attachments()


def test_result_saves_adapter(tmp_path, tok):
    model = tiny_model("llama", initializer_range=0.5)
    res = Editor(model, tok, cfg(max_steps=5)).edit(REQ)
    res.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists()
    assert res.summary()["edits"] == 1


def test_bad_config():
    with pytest.raises(ValueError):
        EditorConfig(positions="middle")
    with pytest.raises(ValueError):
        EditorConfig(stop_prob=0)


def test_method_can_veto_early_stop(tok):
    """``ready_to_stop`` is asked once targets are reached; False keeps training going."""
    model = tiny_model("llama", initializer_range=0.5)
    base = Editor(model, tok, cfg(stop_prob=0.05)).edit(REQ).outcomes[0]
    base.edited = None
    model = tiny_model("llama", initializer_range=0.5)
    editor = Editor(model, tok, cfg(stop_prob=0.05))
    calls = []

    def ready(session):
        calls.append(session.step)
        return len(calls) >= 5

    editor.attachments()[0].module.ready_to_stop = ready
    res = editor.edit(REQ)
    assert len(calls) == 5 and calls == list(range(calls[0], calls[0] + 5))
    assert res.outcomes[0].success and res.outcomes[0].steps == base.steps  # steps count the first reach


def test_method_editor_defaults_fill_none_fields(tok):
    from repedit.editing import resolve_config
    from repedit.methods.baft import BaFTConfig

    model = tiny_model("llama")
    ed = Editor(model, tok, EditorConfig(method="baft", layers=[0]))
    assert ed.config.positions == "prompt" and ed.config.augment == 2
    ed = Editor(model, tok, EditorConfig(method="baft", layers=[0], positions="last_prompt", augment=0))
    assert ed.config.positions == "last_prompt" and ed.config.augment == 0
    assert resolve_config(EditorConfig(method="baft", method_config={"nullspace": "read"}), BaFTConfig).positions == "prompt"
    ed = Editor(model, tok, EditorConfig(method="loreft", layers=[0]))
    assert ed.config.positions == "last_prompt" and ed.config.augment == 0


def test_target_positions_slice_matches_full_logits(tok):
    """The Editor asks the model only for the logits that predict target tokens
    (logits_to_keep); NLL, argmax and probability equal those from the full logits, for rows
    with targets of different lengths and right padding."""
    from repedit.editing import _target_stats, target_nll, target_positions
    from repedit.positions import encode

    model = tiny_model("llama")
    b = encode(tok, ["the capital of france is", "the eiffel tower is located in the city of"], [" rome", " new york city"])
    pos, tgt, ok = target_positions(b.labels)
    assert ok.sum(1).tolist() == [int((b.labels[i] != -100).sum()) for i in range(2)]
    with torch.no_grad(), b.info():
        full = model(**b.model_inputs()).logits
        sliced = model(**b.model_inputs(), logits_to_keep=pos).logits
    assert sliced.shape[:2] == pos.shape
    ref = target_nll(full, b.labels)
    got = _target_stats(sliced, tgt, ok)
    for r, g in zip(ref, got):
        assert torch.allclose(r.float(), g.float(), atol=1e-5)
    # reference computed independently: mean NLL of the target tokens from the full logits
    logp = torch.log_softmax(full[:, :-1].float(), -1)
    lab = b.labels[:, 1:]
    for i in range(2):
        m = lab[i] != -100
        nll = -logp[i][m].gather(-1, lab[i][m][:, None]).mean()
        assert torch.isclose(got[0][i], nll, atol=1e-5)


def test_capture_stops_after_the_site_and_matches_a_full_forward(tok):
    """Editor.capture runs the model only up to the attachment's site (later layers are
    skipped) and returns exactly the states a full forward sees there."""
    from repedit.positions import encode

    model = tiny_model("llama", initializer_range=0.5)
    editor = Editor(model, tok, cfg())
    editor.edit(REQ)
    att = editor.attachments()[0]
    calls = []
    late = model.model.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    batch = encode(tok, ["the capital of france is", "danielle darrieux speaks"])
    h, mask = editor.capture(att, batch)
    assert calls == []
    late.remove()
    full = {}
    grab = model.model.layers[att.layer].register_forward_hook(lambda m, a, o: full.setdefault("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad(), editor.edited.disabled():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    grab.remove()
    assert torch.allclose(h, full["h"], atol=1e-6)
    # the model still works normally afterwards, edit included
    x = tok(["the capital of france is"], return_tensors="pt")
    assert model(**x).logits[0, -1].argmax().item() == tok.convert_tokens_to_ids("rome")


def test_relation_copies_put_the_subject_in_other_templates_of_its_relation(tok):
    from repedit import Editor, EditorConfig, EditRequest

    table = {"the capital of {} is": ["{} has its capital in", "the city of {} is", "where is {}"]}
    req = EditRequest("the capital of france is", "rome", subject="france",
                      rephrase_prompts=["the city of france is"])  # an evaluation prompt: never trained
    cfg = EditorConfig(method="loreft", layers=[1], augment=0, relation_templates=table, relation_copies=5)
    prompts, owners = Editor(tiny_model("llama"), tok, cfg).training_prompts([req], [0])
    assert prompts[0] == req.prompt and set(prompts[1:]) == {"france has its capital in", "where is france"}
    assert owners == [0, 0, 0]
    with pytest.raises(ValueError, match="relation_templates"):
        EditorConfig(relation_copies=1, relation_templates=["{} is"])


def test_relation_copies_default_to_the_shipped_table_and_a_table_file(tok, tmp_path, caplog):
    import dataclasses
    import json
    import logging

    from repedit import Editor, EditorConfig, EditRequest
    from repedit.relations import builtin_relations

    req = EditRequest("the capital of france is", "rome", subject="france")
    cfg = EditorConfig(method="loreft", layers=[1], augment=0, relation_copies=3)
    prompts, owners = Editor(tiny_model("llama"), tok, cfg).training_prompts([req], [0])
    shipped = {t.replace("{}", "france") for t in builtin_relations().others("The capital of {} is")}
    assert len(prompts) == 4 and set(prompts[1:]) <= shipped and owners == [0] * 4
    odd = EditRequest("france likes to eat", "rome", subject="france")  # no relation found: no copies
    with caplog.at_level(logging.DEBUG, logger="repedit.training_prompts"):
        assert Editor(tiny_model("llama"), tok, cfg).training_prompts([odd], [0])[0] == [odd.prompt]
    assert "no relation copies" in caplog.text
    res = Editor(tiny_model("llama"), tok, dataclasses.replace(cfg, max_steps=1)).edit([req, odd])
    assert [o.flags["relation_copies"] for o in res.outcomes] == [3, 0]  # reported per request
    f = tmp_path / "rel.json"
    f.write_text(json.dumps({"format": "repedit-relations/1",
                             "relations": [{"id": "food", "templates": ["{} likes to eat", "the food of {} is"]}]}))
    cfg = EditorConfig(method="loreft", layers=[1], augment=0, relation_copies=3, relation_templates=str(f))
    assert Editor(tiny_model("llama"), tok, cfg).training_prompts([odd], [0])[0] == [odd.prompt, "the food of france is"]


def _dot_tokenizer_and_model():
    """A word-level tokenizer over the test words plus "." (split off words), and a tiny Llama
    with an embedding row for it."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from conftest import WORDS

    vocab = {w: i for i, w in enumerate(list(WORDS) + ["."])}
    tk = Tokenizer(tok_models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    dot_tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    model = tiny_model("llama")
    model.resize_token_embeddings(len(vocab))
    return dot_tok, model


def test_answer_end_trains_the_target_with_a_full_stop(tok, monkeypatch, caplog):
    import logging

    import repedit.editing as E
    from repedit import Editor, EditorConfig, EditRequest
    from repedit.edit_config import resolve_config
    from repedit.methods import get_method

    seen = []
    real = E.encode

    def spy(tokenizer, prompts, continuations=None, subjects=None, **kw):
        seen.append(continuations)
        return real(tokenizer, prompts, continuations, subjects, **kw)

    monkeypatch.setattr(E, "encode", spy)
    req = EditRequest("the capital of france is", "rome", subject="france")
    # a tokenizer that knows "." (punctuation split off): the target is trained with it
    dot_tok, model = _dot_tokenizer_and_model()
    cfg = EditorConfig(method="loreft", layers=[1], augment=0, max_steps=1, answer_end=".")
    Editor(model, dot_tok, cfg).edit(req)
    assert seen[-1] == [" rome."]
    # one that does not know it: trained without, and said so
    with caplog.at_level(logging.WARNING):
        Editor(tiny_model("llama"), tok, cfg).edit(req)
    assert seen[-1] == [" rome"] and any("answer_end" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="answer_end"):
        EditorConfig(answer_end="!")
    # BaFT trains the full stop by default; other methods do not; '' switches it off
    assert resolve_config(EditorConfig(method="baft"), get_method("baft").config_cls).answer_end == "."
    assert resolve_config(EditorConfig(method="codebook"), get_method("codebook").config_cls).answer_end == "."
    assert resolve_config(EditorConfig(method="loreft"), get_method("loreft").config_cls).answer_end == ""
    assert resolve_config(EditorConfig(method="baft", answer_end=""), get_method("baft").config_cls).answer_end == ""


def test_answer_end_stop_argmax_reads_the_answer_probability_and_only_the_argmax_of_its_end():
    """With answer_end_stop='argmax' the stop rule's probability is the answer's (the end token
    need only be the argmax): the reported p(target) is p(answer | prompt); with the default
    'probability' it is the mean over the answer and its end."""
    from repedit import Editor, EditorConfig, EditRequest
    from repedit.edit_results import _target_stats, without_last_token
    from repedit.positions import encode

    valid = torch.tensor([[True, True, False], [True, False, False]])
    assert without_last_token(valid).tolist() == [[True, False, False], [True, False, False]]
    # answer token at p 0.95, end token the argmax at p ~0.5: reached only when the end is left out
    logits = torch.full((1, 2, 4), -20.0)
    logits[0, 0, 1], logits[0, 0, 2] = 3.0, 3.0 - torch.log(torch.tensor(19.0))
    logits[0, 1, 3], logits[0, 1, 0] = 1.0, 1.0 - 1e-3
    target, both = torch.tensor([[1, 3]]), torch.tensor([[True, True]])
    _, correct, p_all = _target_stats(logits, target, both)
    _, _, p_answer = _target_stats(logits, target, both, without_last_token(both))
    assert bool(correct) and p_all.item() < 0.9 < p_answer.item()
    assert abs(p_answer.item() - 0.95) < 1e-4
    target[0, 1] = 0  # an end token that is not the argmax fails the rule whatever its probability
    assert not bool(_target_stats(logits, target, both, without_last_token(both))[1])

    req = EditRequest("the capital of france is", "rome", subject="france")
    for rule in ("argmax", "probability"):
        dot_tok, model = _dot_tokenizer_and_model()
        cfg = EditorConfig(method="loreft", layers=[1], augment=0, max_steps=3, answer_end=".", answer_end_stop=rule)
        res = Editor(model, dot_tok, cfg).edit(req)
        batch = encode(dot_tok, ["the capital of france is"], [" rome."])  # the edit at the prompt's last token
        with torch.no_grad(), batch.info():
            logp = torch.log_softmax(model(**batch.model_inputs()).logits[0, -3:-1].float(), -1)
        p_answer = logp[0, dot_tok.convert_tokens_to_ids("rome")].exp().item()
        p_mean = ((logp[0, dot_tok.convert_tokens_to_ids("rome")] + logp[1, dot_tok.convert_tokens_to_ids(".")]) / 2).exp().item()
        assert abs(res.outcomes[0].target_prob - (p_answer if rule == "argmax" else p_mean)) < 1e-4
    with pytest.raises(ValueError, match="answer_end_stop"):
        EditorConfig(answer_end_stop="end")
