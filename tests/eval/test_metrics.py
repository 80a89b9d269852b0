"""Metric tests on hand-built cases whose answers are known by construction.

The fake model is a bigram table: the logits at a position depend only on the token there,
``logits[b, t] = log(P[input_ids[b, t]])``, so argmaxes and NLLs follow from the table.
"""

from __future__ import annotations

import hashlib
import math
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from repedit.eval import metrics as M
from repedit.positions import current_token_info
from repedit.requests import EditRequest, LocalityPrompt
from repedit.version import __version__

WORDS = (
    "<pad> <s> </s> <unk> the capital of france is paris rome . new york jersey city big apple called "
    "river thames flows through london town bridge spain madrid has its in a b c d e f"
).split()
VOCAB = {w: i for i, w in enumerate(WORDS)}
V = len(WORDS)


def make_tokenizer() -> PreTrainedTokenizerFast:
    t = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def ids(text: str) -> list[int]:
    return [VOCAB[w] for w in text.split()]


class BigramLM(torch.nn.Module):
    """``logits[b, t] = log P(next | input_ids[b, t])``; rows default to uniform."""

    def __init__(self, rules: dict[str, dict[str, float]]):
        super().__init__()
        table = torch.full((V, V), 1.0 / V)
        for word, dist in rules.items():
            rest = (1.0 - sum(dist.values())) / (V - len(dist))
            row = torch.full((V,), rest)
            for w, p in dist.items():
                row[VOCAB[w]] = p
            table[VOCAB[word]] = row
        self.register_buffer("logp", table.log())
        self.calls: list[dict] = []
        self.eval()

    def forward(self, input_ids, attention_mask=None, **kw):
        info = current_token_info()
        self.calls.append(
            {
                "input_ids": input_ids.clone(),
                "attention_mask": None if attention_mask is None else attention_mask.clone(),
                "prompt_mask": None if info is None or info.prompt_mask is None else info.prompt_mask.clone(),
            }
        )
        return SimpleNamespace(logits=self.logp[input_ids])

    def generate(self, input_ids, attention_mask=None, max_new_tokens=1, do_sample=False, pad_token_id=None, **kw):
        assert attention_mask is not None, "generate() must get the attention mask"
        assert not do_sample
        self.calls.append({"generate": True, "input_ids": input_ids.clone(), "attention_mask": attention_mask.clone()})
        seq = input_ids
        for _ in range(max_new_tokens):
            nxt = self.logp[seq[:, -1]].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
        return seq


# Pre-edit world: France's capital is Paris. Post-edit: Rome.
PRE_RULES = {
    "is": {"paris": 0.5, "rome": 0.25},
    "in": {"paris": 0.6, "rome": 0.2},
    "paris": {".": 0.9},
    "rome": {".": 0.9},
    ".": {"</s>": 0.9},
    "called": {"new": 0.7},
    "new": {"jersey": 0.5, "york": 0.4},
    "jersey": {"city": 0.9},
    "city": {"</s>": 0.9},
    "through": {"london": 0.8},
    "london": {"town": 0.6, "bridge": 0.3},
    "of": {"france": 0.7, "spain": 0.1},
}
POST_RULES = dict(PRE_RULES)
POST_RULES.update(
    {
        "is": {"rome": 0.5, "paris": 0.25},
        "in": {"rome": 0.4, "paris": 0.3},
        "london": {"bridge": 0.6, "town": 0.3},  # the edit leaked into a neighbour
    }
)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


# ---------------------------------------------------------------------------- teacher forcing
def test_token_accuracy_known(tok):
    lm = BigramLM(PRE_RULES)
    prompts = ["the capital of france is", "the capital of france is", "the big apple is called", "the big apple is called"]
    targets = ["paris", "rome", "new york", "new jersey"]
    assert M.token_accuracy(lm, tok, prompts, targets) == [1.0, 0.0, 0.5, 1.0]


def test_score_targets_nll_and_ids(tok):
    lm = BigramLM(PRE_RULES)
    s = M.score_targets(lm, tok, ["the capital of france is", "the big apple is called"], ["rome", "new york"])
    assert s.mean_nll[0] == pytest.approx(math.log(4), rel=1e-5)
    assert s.mean_nll[1] == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2, rel=1e-5)
    assert s.target_ids == [ids("rome"), ids("new york")]
    assert s.pred_ids == [ids("paris"), ids("new jersey")]
    assert s.protocol == M.TEACHER_FORCED


def test_score_targets_batching_and_token_info(tok):
    lm = BigramLM(PRE_RULES)
    prompts = ["a b c d e f the capital of france is", "the big apple is called", "is"]
    targets = ["paris", "new york", "rome"]
    one = M.score_targets(lm, tok, prompts, targets, batch_size=1)
    lm.calls.clear()
    many = M.score_targets(lm, tok, prompts, targets, batch_size=8)
    assert one == many
    (call,) = lm.calls
    # every forward sees the prompt mask: the last prompt token of every row is its last prompt word
    pm, x = call["prompt_mask"], call["input_ids"]
    for row in range(3):
        last = int(pm[row].nonzero().max())
        assert x[row, last].item() in (VOCAB["is"], VOCAB["called"])
        # right padding: the attention mask is a prefix of ones
        am = call["attention_mask"][row]
        assert am[: int(am.sum())].all()


def test_locality_agreement_pre_post(tok):
    pre_lm, post_lm = BigramLM(PRE_RULES), BigramLM(POST_RULES)
    prompts, answers = ["the river thames flows through", "the capital of france is"], ["london town", "paris"]
    pre = M.predict_target_tokens(pre_lm, tok, prompts, answers)
    post = M.predict_target_tokens(post_lm, tok, prompts, answers)
    assert pre == [ids("london town"), ids("paris")]
    assert post == [ids("london bridge"), ids("rome")]
    assert M.locality_agreement(pre, post) == [0.5, 0.0]
    with pytest.raises(ValueError):
        M.locality_agreement([[1, 2]], [[1]])


def test_probability_scores_known(tok):
    lm = BigramLM(PRE_RULES)
    r = M.probability_scores(lm, tok, ["the capital of france is"], ["rome"], ["paris"])
    assert r["nll_new"][0] == pytest.approx(math.log(4), rel=1e-5)
    assert r["nll_true"][0] == pytest.approx(math.log(2), rel=1e-5)
    assert r["new_beats_true"] == [False]
    assert r["diff"][0] == pytest.approx(0.25 - 0.5, abs=1e-6)  # ROME diff: exp(-nll_new) - exp(-nll_true)
    assert r["protocol"] == M.PROBABILITY


# ---------------------------------------------------------------------------- evaluate_requests
def make_request() -> EditRequest:
    return EditRequest(
        prompt="the capital of france is",
        target_new="rome",
        subject="france",
        ground_truth="paris",
        rephrase_prompts=["france has its capital in"],
        locality_prompts=[{"prompt": "the river thames flows through", "ground_truth": "london town"}],
        portability=[("the big apple is called", "new york")],
        case_id=7,
    )


def test_evaluate_requests_pre_post(tok):
    req = make_request()
    pre_lm, post_lm = BigramLM(PRE_RULES), BigramLM(POST_RULES)
    pre = M.evaluate_requests(pre_lm, tok, [req])
    n_forwards_pre = len(pre_lm.calls)
    post = M.evaluate_requests(post_lm, tok, [req], pre=pre)
    assert n_forwards_pre == 1  # every teacher-forced row in one batch

    a, b = pre[0], post[0]
    assert a["rewrite_acc"] == [0.0] and b["rewrite_acc"] == [1.0]
    assert a["rephrase_acc"] == [0.0] and b["rephrase_acc"] == [1.0]
    assert a["portability"]["portability_acc"] == [0.5]
    assert a["locality"]["neighborhood_gold_acc"] == [1.0]
    assert b["locality"]["neighborhood_gold_acc"] == [0.5]
    assert b["locality"]["neighborhood_acc"] == [0.5]  # pre/post agreement

    # ROME: pre P(is->paris)=.5 > P(rome)=.25; post the reverse. Rephrase: "in" .6/.2 -> .4/.3
    assert a["rome"]["efficacy_success"] == 0.0 and b["rome"]["efficacy_success"] == 1.0
    assert a["rome"]["paraphrase_success"] == 0.0 and b["rome"]["paraphrase_success"] == 1.0
    assert b["rome"]["efficacy_diff"] == pytest.approx(0.25, abs=1e-6)
    assert b["rome"]["paraphrase_diff"] == pytest.approx(0.1, abs=1e-6)
    assert a["rome"]["rewrite_prompts_probs"][0]["target_true"] == pytest.approx(math.log(2), rel=1e-5)
    # neighbourhood: P(london town) vs P(rome) on "through": rome is improbable -> success 1
    assert b["rome"]["neighborhood_success"] == 1.0
    p_true = math.sqrt(0.8 * 0.3)  # post: through->london .8, london->town .3
    p_new = (1 - sum(POST_RULES["through"].values())) / (V - 1)
    assert b["rome"]["neighborhood_diff"] == pytest.approx(p_true - p_new, rel=1e-4)
    assert b["metric_meta"]["rewrite_acc"] == M.TEACHER_FORCED
    assert b["metric_meta"]["rome.efficacy_success"] == M.PROBABILITY

    records = M.build_case_records([req], pre, post)
    rec = records[0]
    assert set(rec) == {"pre", "post", "case_id", "requested_rewrite"}
    assert rec["case_id"] == 7 and rec["requested_rewrite"]["target_new"] == "rome"
    assert rec["post"]["locality"]["neighborhood_acc"] == [0.5]
    assert "neighborhood_output" not in rec["post"]["locality"]

    s = M.summarize(records)
    assert s["pre"]["rewrite_acc"] == 0.0 and s["post"]["rewrite_acc"] == 1.0
    assert s["post"]["locality.neighborhood_acc"] == 0.5
    assert s["hm"][M.TEACHER_FORCED] == pytest.approx(3 / (1 + 1 + 2))
    assert s["hm"][M.PROBABILITY] == pytest.approx(1.0)
    assert s["metric_meta"]["locality.neighborhood_acc"] == M.TEACHER_FORCED


def test_case_records_compute_locality_without_pre_arg(tok):
    req = make_request()
    pre = M.evaluate_requests(BigramLM(PRE_RULES), tok, [req], protocols=("teacher_forced",))
    post = M.evaluate_requests(BigramLM(POST_RULES), tok, [req], protocols=("teacher_forced",))
    assert "neighborhood_acc" not in post[0]["locality"]
    rec = M.case_record(req, pre[0], post[0], keep_outputs=True)
    assert rec["post"]["locality"]["neighborhood_acc"] == [0.5]
    assert rec["post"]["locality"]["neighborhood_output"] == [ids("london bridge")]
    assert "rome" not in post[0]


def test_evaluate_requests_without_ground_truth(tok):
    req = EditRequest("the capital of france is", "rome", locality_prompts=[("the river thames flows through", "london town")])
    out = M.evaluate_requests(BigramLM(PRE_RULES), tok, [req])
    assert "efficacy_success" not in out[0]["rome"]
    assert out[0]["rome"]["neighborhood_success"] == 1.0


def test_evaluate_requests_rejects_unknown_protocol(tok):
    with pytest.raises(ValueError, match="protocol"):
        M.evaluate_requests(BigramLM(PRE_RULES), tok, [make_request()], protocols=("exact",))


# ---------------------------------------------------------------------------- generation
def test_generation_match_known(tok):
    lm = BigramLM(PRE_RULES)
    prompts = ["the capital of france is", "the big apple is called", "the big apple is called", "a b c d the capital of france is"]
    targets = ["paris", "new", "new york", "rome"]
    g = M.generation_match(lm, tok, prompts, targets, batch_size=8)
    assert g["text"] == ["paris", "new jersey city", "new jersey city", "paris"]
    assert g["exact"] == [True, False, False, False]
    assert g["prefix"] == [True, True, False, False]
    assert g["protocol"] == M.GENERATION
    (call,) = [c for c in lm.calls if c.get("generate")]
    am = call["attention_mask"]
    assert am[:, -1].all() and not am[:, 0].all()  # left padding with the mask passed


def test_generate_text_per_row_limits_and_eos(tok):
    lm = BigramLM(PRE_RULES)
    out = M.generate_text(lm, tok, ["the big apple is called", "the capital of france is"], [2, 10])
    assert out == ["new jersey", "paris ."]  # row 2 stops at </s>
    out = M.generate_text(lm, tok, ["the capital of france is"], 10, include_prompt=True)
    assert out == ["the capital of france is" + "paris ."]


def test_evaluate_requests_generation(tok):
    req = make_request()
    pre = M.evaluate_requests(BigramLM(PRE_RULES), tok, [req], protocols=("generation",))
    post = M.evaluate_requests(BigramLM(POST_RULES), tok, [req], protocols=("generation",), pre=pre)
    g0, g1 = pre[0]["generation"], post[0]["generation"]
    assert g0["rewrite_exact"] == [False] and g1["rewrite_exact"] == [True]
    assert g1["rephrase_exact"] == [True]
    assert g0["neighborhood_text"] == ["london town"] and g1["neighborhood_text"] == ["london bridge"]
    assert g1["neighborhood_text_agreement"] == [0.0]
    assert g0["portability_prefix"] == [False]  # "new jersey city" vs "new york"
    s = M.summarize(M.build_case_records([req], pre, post))
    assert s["post"]["generation.rewrite_exact"] == 1.0 and s["pre"]["generation.rewrite_exact"] == 0.0


@pytest.mark.parametrize(
    "text,target,expected",
    [
        (" Paris. It is big.", "Paris", "Paris"),
        ("Paris\nMore", "Paris", "Paris"),
        (" St. Louis is nice.", "St. Louis", "St. Louis is nice"),
        (" St. Louis.", "Paris", "St"),
        (" 1.5 metres.", "1.5 metres", "1.5 metres"),
        ("  ", "x", ""),
    ],
)
def test_truncate_answer(text, target, expected):
    assert M.truncate_answer(text, target) == expected


# ---------------------------------------------------------------------------- fluency
def test_n_gram_entropy_known():
    # "a b c d": 3 distinct bigrams (log2 3 bits), 2 distinct trigrams (1 bit)
    expected = (2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2
    assert M.compute_n_gram_entropy("a b c d") == pytest.approx(expected)
    assert M.compute_n_gram_entropy("a a a a a") == 0.0
    assert M.n_gram_entropy(["a b c d", "a a a a a"]) == pytest.approx(expected / 2)
    # punctuation is its own token, as with nltk.word_tokenize
    assert M.compute_n_gram_entropy("a, b") == M.compute_n_gram_entropy("a x b")


def test_fluency_helper(tok):
    lm = BigramLM(PRE_RULES)
    r = M.fluency(lm, tok, ["the big apple is called"], max_new_tokens=3, include_prompt=False)
    assert r["texts"] == ["new jersey city"]
    assert r["ngram_entropy"] == pytest.approx((2 / 3 * 1.0 + 4 / 3 * 0.0) / 2)
    assert r["protocol"] == M.FLUENCY


# ---------------------------------------------------------------------------- summary and metadata
def test_harmonic_mean():
    assert M.harmonic_mean(1.0, 0.5, 1.0) == pytest.approx(0.75)
    assert M.harmonic_mean(1.0, 0.0) == 0.0
    assert math.isnan(M.harmonic_mean(1.0, float("nan")))


def test_results_metadata(tmp_path):
    f = tmp_path / "d.json"
    f.write_text("[]")
    meta = M.results_metadata(["teacher_forced", "probability"], model={"name": "m", "fingerprint": "abc"}, data=f, seed=3)
    assert meta["protocols"] == [M.TEACHER_FORCED, M.PROBABILITY]
    assert meta["model"] == {"name": "m", "fingerprint": "abc"}
    assert meta["data"]["sha256"] == hashlib.sha256(b"[]").hexdigest()
    assert meta["seed"] == 3 and meta["repedit_version"] == __version__
    assert M.results_metadata("generation", model="x")["model"] == {"name": "x"}


# ---------------------------------------------------------------------------- a real (tiny) transformer
def _tiny(kind: str):
    import transformers

    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(
            vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2
        )
        model = transformers.GPT2LMHeadModel(cfg)
    return model.eval()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_real_model_padding_is_exact(tok, kind):
    """Batched (padded) scores and generations equal unpadded one-at-a-time computations."""
    model = _tiny(kind)
    prompts = ["a b c d e f the capital of france is", "the big apple is called", "is", "london town bridge spain madrid has its"]
    targets = ["paris", "new york city", "rome rome", "a b"]
    batched = M.score_targets(model, tok, prompts, targets, batch_size=8)
    # without the one-token prompt the front of the batch needs no logits: logits_to_keep cuts it
    widths = []
    head = model.get_output_embeddings().register_forward_hook(lambda mod, a, out: widths.append(out.shape[1]))
    cut = M.score_targets(model, tok, prompts[:2] + prompts[3:], targets[:2] + targets[3:], batch_size=8)
    head.remove()
    assert widths == [len(ids(prompts[0] + " " + targets[0])) - (len(ids("the big apple is called")) - 1)]
    for k, i in enumerate([0, 1, 3]):
        assert cut.mean_nll[k] == pytest.approx(batched.mean_nll[i], abs=1e-5)
        assert cut.pred_ids[k] == batched.pred_ids[i]
    for i, (p, t) in enumerate(zip(prompts, targets)):
        full = torch.tensor([ids(p) + ids(t)])
        with torch.no_grad():
            logp = torch.log_softmax(model(full).logits[0].float(), -1)
        n_p = len(ids(p))
        tgt = full[0, n_p:]
        lp = logp[n_p - 1 : -1].gather(1, tgt[:, None])[:, 0]
        assert batched.mean_nll[i] == pytest.approx(-lp.mean().item(), abs=1e-4)
        assert batched.pred_ids[i] == logp[n_p - 1 : -1].argmax(-1).tolist()

    gen = M.generate_text(model, tok, prompts, 4, batch_size=8, stop_at_eos=False)
    for i, p in enumerate(prompts):
        seq = torch.tensor([ids(p)])
        with torch.no_grad():
            for _ in range(4):
                nxt = model(seq).logits[0, -1].argmax()
                seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
        assert gen[i] == tok.decode(seq[0, len(ids(p)) :].tolist(), skip_special_tokens=True)


def test_subject_locality_is_agreement_with_the_unedited_model(tok):
    """subject_locality_prompts (the same subject, other relations) are scored like locality:
    argmax agreement teacher-forced, and unchanged greedy text."""
    req = make_request()
    req.subject_locality_prompts = [LocalityPrompt("the river thames flows through", "london town"),
                                    LocalityPrompt("the big apple is called", "new york")]
    protocols = ("teacher_forced", "generation")
    pre = M.evaluate_requests(BigramLM(PRE_RULES), tok, [req], protocols=protocols)
    post = M.evaluate_requests(BigramLM(POST_RULES), tok, [req], protocols=protocols, pre=pre)
    assert post[0]["locality"]["subject_acc"] == [0.5, 1.0]  # london -> bridge changed one token
    assert post[0]["generation"]["subject_text_agreement"] == [0.0, 1.0]
    rec = M.build_case_records([req], pre, post)[0]
    assert rec["post"]["locality"]["subject_acc"] == [0.5, 1.0] and "subject_output" not in rec["post"]["locality"]
    s = M.summarize([rec])
    assert s["post"]["locality.subject_acc"] == 0.75 and s["post"]["generation.subject_text_agreement"] == 0.5
    assert s["metric_meta"]["locality.subject_acc"] == M.TEACHER_FORCED
    # a request without them has no subject-locality keys (nothing averaged as 0 or 1)
    plain = M.evaluate_requests(BigramLM(PRE_RULES), tok, [make_request()], protocols=protocols)
    assert "subject_output" not in plain[0]["locality"] and "subject_text" not in plain[0]["generation"]
