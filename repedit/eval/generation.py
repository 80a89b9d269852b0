"""The generation and fluency protocols: greedy decoding cut at the answer's end, exact and
prefix match against the target ("The Mirage of Model Editing", Yang et al. 2025), and ROME's
n-gram entropy (2/3 bigram + 4/3 trigram entropies, in bits).

Example::

    texts = generate_text(model, tok, ["The Eiffel Tower is in"], max_new_tokens=8)
    generation_match(model, tok, ["The Eiffel Tower is in"], ["Rome"])
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from typing import Any, Sequence

import torch

from repedit.eval.model_utils import FLUENCY, GENERATION, _eos_ids, _length_order, _mean, _model_device, _pad_id, _warn_if_training
from repedit.positions import encode

logger = logging.getLogger(__name__)

__all__ = ["generate_text", "truncate_answer", "generation_match", "compute_n_gram_entropy", "n_gram_entropy", "fluency"]


def generate_text(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int | Sequence[int],
    *,
    subjects: Sequence[str | None] | None = None,
    batch_size: int = 16,
    do_sample: bool = False,
    top_k: int | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    include_prompt: bool = False,
) -> list[str]:
    """Generate from each prompt (greedy by default, left padding, with the attention mask).

    ``max_new_tokens`` may be one int or one per prompt (rows are cut to their own limit,
    so a row's text does not depend on its batch). Generation stops at EOS when
    ``stop_at_eos``. With ``seed`` and ``do_sample`` the global torch RNG is seeded first.
    Subject/prompt masks are passed through ``token_info`` during generation so that
    subject-position interventions work too.

    Example::

        generate_text(model, tok, ["The capital of France is"], 5)  # [' Paris. It is']
    """
    if isinstance(prompts, str):
        raise TypeError("generate_text() takes a list of prompts, not a single string")
    n = len(prompts)
    limits = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
    if len(limits) != n:
        raise ValueError(f"{n} prompts but {len(limits)} max_new_tokens")
    _warn_if_training(model)
    if seed is not None:
        torch.manual_seed(seed)
    device = _model_device(model)
    eos = _eos_ids(model, tokenizer) if stop_at_eos else set()
    pad = _pad_id(tokenizer)
    texts = [""] * n
    order = _length_order(prompts)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = encode(
            tokenizer,
            [prompts[i] for i in idx],
            subjects=None if subjects is None else [subjects[i] for i in idx],
            padding_side="left",
        ).to(device)
        gen_kwargs: dict[str, Any] = dict(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=max(limits[i] for i in idx),
            do_sample=do_sample,
            pad_token_id=pad,
        )
        if do_sample and top_k is not None:
            gen_kwargs["top_k"] = top_k
        with torch.no_grad(), batch.info():
            out = model.generate(**gen_kwargs)
        seqs = out.sequences if hasattr(out, "sequences") else out
        width = batch.input_ids.shape[1]
        new_rows = seqs[:, width:].tolist()
        for row, i in enumerate(idx):
            toks = new_rows[row][: limits[i]]
            for j, t in enumerate(toks):
                if t in eos:
                    toks = toks[:j]
                    break
            text = tokenizer.decode(toks, skip_special_tokens=True)
            texts[i] = prompts[i] + text if include_prompt else text
    return texts


_PERIOD = re.compile(r"\.(?=\s|$)")


def truncate_answer(text: str, target: str | None = None) -> str:
    """Cut a generation at the first newline or sentence-ending period, then strip.

    A period ends the answer only when followed by whitespace or the end of the text (so
    "1.5" survives), and not while the text so far is still a prefix of ``target`` (so
    "St. Louis" survives when it is the target).

    Example::

        truncate_answer(" Paris. It is big.\\n")  # 'Paris'
    """
    text = text.split("\n", 1)[0]
    lead = len(text) - len(text.lstrip())
    body = text[lead:]
    tgt = target.strip() if target else None
    for m in _PERIOD.finditer(body):
        if tgt and tgt.startswith(body[: m.start() + 1]) and len(tgt) > m.start() + 1:
            continue
        body = body[: m.start()]
        break
    return body.strip()


def _prefix_match(answer: str, target: str) -> bool:
    """``answer`` starts with ``target`` at a word boundary ("Paris, France" yes; "Parisian" no)."""
    if not target or not answer.startswith(target):
        return False
    rest = answer[len(target) :]
    return not rest or not (rest[0].isalnum() or rest[0] == "_")


def generation_match(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    subjects: Sequence[str | None] | None = None,
    extra_tokens: int = 5,
    batch_size: int = 16,
    ignore_case: bool = False,
) -> dict[str, Any]:
    """Greedy-generate answers and compare with the targets (``generation/mirage``).

    ``max_new_tokens`` per prompt = tokens of ``" " + target`` + ``extra_tokens``. Returns
    lists ``exact``, ``prefix`` (booleans) and ``text`` (the truncated answers).

    Example::

        generation_match(model, tok, ["The capital of France is"], ["Paris"])["exact"]  # [True]
    """
    if len(targets) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    if not prompts:
        return {"exact": [], "prefix": [], "text": [], "protocol": GENERATION}
    lens = [len(x) for x in tokenizer([" " + t for t in targets], add_special_tokens=False)["input_ids"]]
    raw = generate_text(
        model, tokenizer, prompts, [n + extra_tokens for n in lens], subjects=subjects, batch_size=batch_size
    )
    answers = [truncate_answer(r, t) for r, t in zip(raw, targets)]
    exact, prefix = [], []
    for a, t in zip(answers, targets):
        a2, t2 = (a.lower(), t.strip().lower()) if ignore_case else (a, t.strip())
        exact.append(a2 == t2)
        prefix.append(_prefix_match(a2, t2))
    return {"exact": exact, "prefix": prefix, "text": answers, "protocol": GENERATION}


# ============================================================================ fluency
_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def _words(text: str) -> list[str]:
    # Approximates nltk.word_tokenize (used by ROME) without the nltk dependency:
    # words and single punctuation marks.
    return _WORD.findall(text)


def compute_n_gram_entropy(
    text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3), agg: str = "arith"
) -> float:
    """ROME's ``compute_n_gram_entropy``: mean of weighted n-gram entropies (bits) of one text.

    Example::

        compute_n_gram_entropy("a b a b a b")  # low: repetitive
    """
    if agg not in ("arith", "geom"):
        raise ValueError("agg must be 'arith' or 'geom'")
    toks = _words(text)
    vals = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
        total = sum(grams.values())
        h = -sum((c / total) * math.log2(c / total) for c in grams.values()) if total else 0.0
        vals.append(h * w)
    if agg == "geom":
        return math.exp(sum(math.log(v) for v in vals) / len(vals)) if all(v > 0 for v in vals) else 0.0
    return sum(vals) / len(vals)


def n_gram_entropy(texts: Sequence[str], agg: str = "arith") -> float:
    """ROME's ``n_gram_entropy``: the mean of :func:`compute_n_gram_entropy` over texts.

    Example::

        n_gram_entropy(["The cat sat on the mat.", "the the the the"])
    """
    vals = [compute_n_gram_entropy(t) for t in texts]
    if not vals:
        return float("nan")
    if agg == "geom":
        return math.exp(sum(math.log(v) for v in vals) / len(vals)) if all(v > 0 for v in vals) else 0.0
    return sum(vals) / len(vals)


def fluency(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 100,
    *,
    batch_size: int = 16,
    do_sample: bool = False,
    top_k: int | None = None,
    seed: int | None = None,
    include_prompt: bool = True,
) -> dict[str, Any]:
    """Generate ``max_new_tokens`` from each prompt and score n-gram entropy (``fluency/rome``).

    ROME scores the prompt plus its generation (``include_prompt=True``) sampled with
    ``top_k=5``; the default here is greedy for determinism (pass ``do_sample=True, top_k=5,
    seed=...`` to follow ROME).

    Example::

        fluency(model, tok, ["The Eiffel Tower is in"], 50)["ngram_entropy"]
    """
    texts = generate_text(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        top_k=top_k,
        seed=seed,
        stop_at_eos=True,
        include_prompt=include_prompt,
    )
    per = [compute_n_gram_entropy(t) for t in texts]
    return {"ngram_entropy": _mean(per), "per_prompt": per, "texts": texts, "protocol": FLUENCY}
