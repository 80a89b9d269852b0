"""Training forwards over a cached prefix (repedit.prefix): rows aligned at the first column the
trained edit writes, the columns before it computed once; the same logits, gradients and
edits as the full forward under the same rule."""

import pytest
import torch

from repedit import EditRequest, Editor, EditorConfig
from repedit.edit_results import target_logits, target_positions
from repedit.hooks import EditableModel
from repedit.positions import encode
from repedit.prefix import split_batch
from repedit.resume import resumed_at, site_input

from conftest import tiny_model

PROMPTS = ["the capital of france is", "he was born in the city of paris and the capital of", "danielle darrieux speaks"]
TARGETS = [" rome", " berlin city", " english"]
SUBJECTS = ["france", "paris", "danielle darrieux"]


def _baft_mid_edit(arch: str):
    """A tiny model with one finished BaFT edit and a second one in training whose new bases
    have moved from zero (so they would write before the trigger if nothing stopped them)."""
    model = tiny_model(arch, initializer_range=0.5, num_hidden_layers=3)
    for p in model.parameters():
        p.requires_grad_(False)
    from conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = EditorConfig(method="baft", layers=[1], lr=5e-2, max_steps=3, stop_prob=0.99, augment=0, relation_copies=0,
                       answer_end="", method_config={"num_corpus_negatives": 0, "num_subject_negatives": 0, "seed": 0})
    editor = Editor(model, tok, cfg)
    editor.edit(EditRequest(prompt="the eiffel tower is located in", target_new="rome", subject="eiffel tower"))
    req = EditRequest(prompt=PROMPTS[0], target_new="rome", subject="france")
    session = editor._start_session([req], [1], None)
    session.batch = encode(tok, PROMPTS, TARGETS, SUBJECTS)
    att = editor.attachments()[0]
    att.module.prepare_edit(session)
    with torch.no_grad():
        for p in att.module.edit_parameters(session):
            p.add_(0.3 * torch.randn_like(p))
    att.module.train()
    return editor, session, att


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_split_forward_equals_full_forward(arch):
    torch.manual_seed(0)
    editor, session, att = _baft_mid_edit(arch)
    edited, model, batch = editor.edited, editor.edited.model, session.batch
    start = att.module.training_start(session)
    assert start.tolist() == [3, 7, 1]  # each row's subject's last token
    params = [p for p in att.module.edit_parameters(session) if p.requires_grad]

    def grads(logits, positions, valid):
        for p in params:
            p.grad = None
        target_logits(logits, positions)[valid].float().pow(2).mean().backward()
        return [p.grad.clone() for p in params]

    positions, _, valid = target_positions(batch.labels)
    with batch.info(trained_from=start):
        full = model(**batch.model_inputs()).logits
    g_full = grads(full, positions, valid)
    full = target_logits(full.detach(), positions)[valid]

    split = split_batch(edited, batch, start)
    assert split is not None and split.first == 7
    assert split.batch.input_ids.shape[1] - split.first < batch.input_ids.shape[1]  # fewer columns per step
    states = site_input(edited, 1, split.batch)
    s_pos, _, s_valid = target_positions(split.labels)
    assert torch.equal(s_valid, valid)
    for _ in range(2):  # the prefix cache is reused, never extended
        with split.batch.info(trained_from=split.trained_from), resumed_at(edited, 1, states[:, split.first:]):
            out = model(**split.suffix_inputs(), **split.cache_inputs()).logits
        g_split = grads(out, s_pos, valid)
        assert torch.allclose(target_logits(out.detach(), s_pos)[valid], full, atol=1e-5)
        assert len(g_full) == len(g_split) > 0
        for a, b in zip(g_full, g_split):
            assert torch.allclose(a, b, atol=1e-5)
    # without the rule the new bases write before the trigger, and the full forward differs
    with batch.info():
        unruled = target_logits(model(**batch.model_inputs()).logits.detach(), positions)[valid]
    assert not torch.allclose(unruled, full, atol=1e-4)


def test_aligned_batch_keeps_positions(tok):
    batch = encode(tok, PROMPTS, TARGETS, SUBJECTS)
    aligned, first = batch.aligned_at(torch.tensor([3, 7, 1]))
    assert first == 7
    lengths = batch.attention_mask.sum(1).tolist()
    assert aligned.input_ids.shape[1] == max(n + s for n, s in zip(lengths, [4, 0, 6]))  # no padding carried along
    for i, shift in enumerate([4, 0, 6]):
        n = int(batch.attention_mask[i].sum())
        assert aligned.input_ids[i, shift:shift + n].tolist() == batch.input_ids[i, :n].tolist()
        assert aligned.position_ids[i, shift:shift + n].tolist() == list(range(n))
        assert aligned.attention_mask[i, :shift].sum() == 0
        assert torch.equal(aligned.labels[i, shift:shift + n], batch.labels[i, :n])
    model = tiny_model("llama", initializer_range=0.5)
    with torch.no_grad():
        a = model(**batch.model_inputs()).logits
        b = model(**aligned.model_inputs()).logits
    for i, shift in enumerate([4, 0, 6]):
        n = int(batch.attention_mask[i].sum())
        assert torch.allclose(a[i, :n], b[i, shift:shift + n], atol=1e-5)


def test_no_split_when_the_edit_writes_from_the_first_column(tok):
    model = tiny_model("llama")
    edited = EditableModel(model, tok)
    batch = encode(tok, PROMPTS, TARGETS, SUBJECTS)
    assert split_batch(edited, batch, torch.zeros(3, dtype=torch.long)) is None


METHODS = {
    "baft": EditorConfig(method="baft", layers=[1], lr=5e-2, max_steps=20, stop_prob=0.9, augment=1,
                         method_config={"num_corpus_negatives": 0, "seed": 0}),
    "codebook": EditorConfig(method="codebook", layers=[1], lr=0.1, max_steps=20, augment=1,
                             method_config={"corpus_sentences": 0, "num_names": 0}),
}


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_edit_with_split_prefix_equals_without(tok, monkeypatch, arch, method):
    reqs = [EditRequest(prompt="he was born in the city of paris and the capital of", target_new="rome", subject="paris"),
            EditRequest(prompt="the eiffel tower is located in", target_new="berlin", subject="eiffel tower")]
    cfg = METHODS[method]
    out, splits = {}, {False: 0, True: 0}
    for flag in (False, True):
        model = tiny_model(arch, initializer_range=0.5, num_hidden_layers=3)
        monkeypatch.setattr(Editor, "split_prefix", flag)
        calls = []
        real = split_batch

        def counted(*a, **k):
            calls.append(1)
            split = real(*a, **k)
            splits[flag] += split is not None
            return split

        monkeypatch.setattr("repedit.training_forward.split_batch", counted)
        res = Editor(model, tok, cfg).edit(reqs, sequential=True)
        x = tok(["he was born in paris and the capital of", "the eiffel tower is located in"], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**x).logits
        out[flag] = (res.outcomes, logits, len(calls))
    (o0, l0, c0), (o1, l1, c1) = out[False], out[True]
    assert c0 == 0 and c1 == 2  # one split per edit, only when enabled
    assert splits[True] == 2  # the columns before the first written one were cached
    for a, b in zip(o0, o1):
        assert a.steps == b.steps and a.success == b.success and a.flags["trained"] == b.flags["trained"]
        assert abs(a.target_prob - b.target_prob) < 1e-4
        assert abs(a.loss - b.loss) < 1e-4
    assert torch.allclose(l0, l1, atol=1e-4)
