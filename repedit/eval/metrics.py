"""Edit-quality metrics on any Hugging Face causal LM, each labelled with its protocol.

The functions take the model and tokenizer as arguments; they never enable or disable
edits. To get pre/post numbers, run :func:`evaluate_requests` once with the edits disabled
(``pre``) and once with them on (``post``), then combine with :func:`build_case_records`
and :func:`summarize`::

    pre = evaluate_requests(model, tok, requests)            # edits disabled by the caller
    post = evaluate_requests(model, tok, requests, pre=pre)  # edits enabled
    records = build_case_records(requests, pre, post)        # EasyEdit per-case layout
    summary = summarize(records)

Protocols (the labels appear in every result under ``metric_meta``):

``teacher_forced/easyedit`` (:data:`TEACHER_FORCED`)
    EasyEdit ``test_prediction_acc``: input ``prompt + " " + target``; token accuracy is the
    mean over target tokens of ``argmax(logits) == target token`` (partial credit possible).
    ``rewrite_acc``, ``rephrase_acc``, ``portability_acc``. Locality
    (``neighborhood_acc``) is ``mean(pre_tokens == post_tokens)`` over the argmax tokens at the
    target positions of ``loc_prompt + " " + loc_answer``; it measures unchanged output, not
    correctness. ``neighborhood_gold_acc`` is the absolute token accuracy against the
    locality answer (ROME/MEMIT's zsRE "Specificity"). **Subject locality**
    (``locality.subject_acc``) is the same agreement on ``subject_locality_prompts``: the
    edited subject asked about other relations (KnowEdit's "Relation_Specificity"), which a
    subject-keyed edit must leave alone. Prompt and target are tokenised
    separately and concatenated (:func:`repedit.positions.encode`), so the target boundary
    is exact; EasyEdit tokenises the joined string, which can differ for SentencePiece
    tokenizers that merge across the space.
``probability/rome`` (:data:`PROBABILITY`)
    ROME/MEMIT CounterFact: per prompt the length-normalised mean NLL of ``" " + target_new``
    and ``" " + ground_truth``. ``efficacy_success`` = mean[NLL(true) > NLL(new)] over the edit
    prompt, ``paraphrase_success`` the same over rephrases, ``neighborhood_success`` =
    mean[NLL(new) > NLL(true)] over locality prompts, where "true" is the locality prompt's
    own answer (equal to ``ground_truth`` on CounterFact). Magnitudes follow ROME's
    ``summarize.py`` ``*_diff`` convention: ``exp(-NLL(new)) - exp(-NLL(true))`` (a difference
    of per-token geometric-mean probabilities; sign flipped for the neighbourhood). Values
    are fractions in [0, 1], not ×100.
``generation/mirage`` (:data:`GENERATION`)
    "The Mirage of Model Editing" (Yang et al. 2025): greedy decoding (left padding,
    ``max_new_tokens`` = target tokens + ``extra_tokens``), cut at the first newline, EOS or
    sentence-ending period, then exact match and prefix match of the stripped answer
    against the target; ``neighborhood_text_agreement`` and ``subject_text_agreement``: 1.0
    where the greedy text of a locality prompt is unchanged from the unedited model.
``fluency/rome`` (:data:`FLUENCY`)
    ROME's ``n_gram_entropy``: weighted (2/3 bigram, 4/3 trigram) entropies in bits, averaged.

Teacher-forced forwards run inside ``with batch.info():`` so interventions acting on the
last prompt token or the subject know where the prompt ends. All forwards run under
``torch.no_grad()`` in batches sorted by length; one forward over ``prompt + target_new``
gives both the token accuracy and NLL(new). The teacher-forced scoring itself is
:mod:`repedit.eval.scoring`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

from repedit.eval.generation import (compute_n_gram_entropy, fluency, generate_text, generation_match,
                                     n_gram_entropy, truncate_answer)
from repedit.eval.model_utils import FLUENCY, GENERATION, PROBABILITY, PROTOCOLS, TEACHER_FORCED, _mean, _subject_in
from repedit.eval.records import (_add_agreement, build_case_records, case_record, harmonic_mean, locality_agreement,
                                  results_metadata, summarize)
from repedit.eval.scoring import TargetScores, predict_target_tokens, probability_scores, score_targets, token_accuracy
from repedit.hashing import file_sha256
from repedit.requests import EditRequest

logger = logging.getLogger(__name__)

__all__ = [
    "TEACHER_FORCED",
    "PROBABILITY",
    "GENERATION",
    "FLUENCY",
    "PROTOCOLS",
    "TargetScores",
    "score_targets",
    "token_accuracy",
    "predict_target_tokens",
    "locality_agreement",
    "probability_scores",
    "generate_text",
    "truncate_answer",
    "generation_match",
    "compute_n_gram_entropy",
    "n_gram_entropy",
    "fluency",
    "evaluate_requests",
    "case_record",
    "build_case_records",
    "harmonic_mean",
    "summarize",
    "results_metadata",
    "file_sha256",
]


# ============================================================================ per-request evaluation
def _metric_meta(protocols: Sequence[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    if "teacher_forced" in protocols:
        for k in (
            "rewrite_acc",
            "rephrase_acc",
            "locality.neighborhood_acc",
            "locality.neighborhood_gold_acc",
            "locality.subject_acc",
            "portability.portability_acc",
        ):
            meta[k] = TEACHER_FORCED
    if "probability" in protocols:
        for k in ("efficacy", "paraphrase", "neighborhood"):
            meta[f"rome.{k}_success"] = PROBABILITY
            meta[f"rome.{k}_diff"] = PROBABILITY
    if "generation" in protocols:
        for part in ("rewrite", "rephrase", "portability", "neighborhood"):
            meta[f"generation.{part}_exact"] = GENERATION
            meta[f"generation.{part}_prefix"] = GENERATION
        meta["generation.neighborhood_text_agreement"] = GENERATION
        meta["generation.subject_text_agreement"] = GENERATION
    return meta


def evaluate_requests(
    model: Any,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    *,
    protocols: Sequence[str] = ("teacher_forced", "probability"),
    pre: Sequence[Mapping[str, Any]] | None = None,
    batch_size: int = 16,
    extra_tokens: int = 5,
    max_length: int | None = None,
) -> list[dict[str, Any]]:
    """Score every request with the chosen protocols; one EasyEdit-style dict per request.

    The model is used as it is: run once with edits disabled for ``pre`` and once enabled for
    ``post``. With ``pre`` (the earlier result), ``locality.neighborhood_acc`` is filled in at
    once; otherwise :func:`build_case_records` does it.

    Per-request keys: ``rewrite_acc``, ``rephrase_acc`` (lists, one per prompt),
    ``locality`` {``neighborhood_output``, ``neighborhood_gold_acc``},
    ``portability`` {``portability_acc``}, ``rome`` {``rewrite_prompts_probs``,
    ``paraphrase_prompts_probs``, ``neighborhood_prompts_probs`` (NLL pairs),
    ``efficacy_success``, ``paraphrase_success``, ``neighborhood_success``, ``*_diff``},
    ``generation`` {``<part>_exact``, ``<part>_prefix``, ``<part>_text``}, ``metric_meta``.

    All teacher-forced rows (edit, rephrase, locality, portability prompts, with both targets)
    go through one batched :func:`score_targets` call.

    Example::

        post = evaluate_requests(model, tok, requests, protocols=("teacher_forced",), pre=pre)
        post[0]["rewrite_acc"]  # [1.0]
    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol {unknown[0]!r}; choose from {sorted(PROTOCOLS)}")
    if pre is not None and len(pre) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(pre)} pre-edit results")
    tf, prob, gen = ("teacher_forced" in protocols), ("probability" in protocols), ("generation" in protocols)

    rows = _score_rows(requests, tf, prob)
    scores = score_targets(
        model,
        tokenizer,
        [x[3] for x in rows],
        [x[4] for x in rows],
        subjects=[x[5] for x in rows],
        batch_size=batch_size,
        max_length=max_length,
    ) if rows else TargetScores()
    by: dict[tuple[int, str, int], int] = {(x[0], x[1], x[2]): k for k, x in enumerate(rows)}

    meta = _metric_meta(protocols)
    results: list[dict[str, Any]] = []
    for r, req in enumerate(requests):
        res: dict[str, Any] = {}
        if tf:
            res.update(_teacher_forced_result(req, r, scores, by, pre[r] if pre is not None else None))
        if prob:
            res["rome"] = _probability_result(req, r, scores, by)
        res["metric_meta"] = meta
        results.append(res)

    if gen:
        _add_generation(model, tokenizer, requests, results, pre, batch_size, extra_tokens)
    return results


_Row = tuple[int, str, int, str, str, "str | None"]


def _score_rows(requests: Sequence[EditRequest], tf: bool, prob: bool) -> list[_Row]:
    """One flat list of teacher-forced rows, (request, kind, j, prompt, target, subject), so all
    of them go through one batched :func:`score_targets` call."""
    rows: list[_Row] = []
    for r, req in enumerate(requests):
        subj = req.subject
        if tf or prob:
            rows.append((r, "rewrite", 0, req.prompt, req.target_new, _subject_in(req.prompt, subj)))
            for j, p in enumerate(req.rephrase_prompts):
                rows.append((r, "rephrase", j, p, req.target_new, _subject_in(p, subj)))
            for j, lp in enumerate(req.locality_prompts):
                rows.append((r, "loc", j, lp.prompt, lp.ground_truth, None))
        if tf:
            for j, sp in enumerate(req.subject_locality_prompts):
                rows.append((r, "subj", j, sp.prompt, sp.ground_truth, _subject_in(sp.prompt, subj)))
            for j, pp in enumerate(req.portability):
                rows.append((r, "port", j, pp.prompt, pp.ground_truth, _subject_in(pp.prompt, subj)))
        if prob:
            if req.ground_truth is not None:
                rows.append((r, "rewrite_true", 0, req.prompt, req.ground_truth, _subject_in(req.prompt, subj)))
                for j, p in enumerate(req.rephrase_prompts):
                    rows.append((r, "rephrase_true", j, p, req.ground_truth, _subject_in(p, subj)))
            for j, lp in enumerate(req.locality_prompts):
                rows.append((r, "loc_new", j, lp.prompt, req.target_new, None))
    return rows


def _teacher_forced_result(req: EditRequest, r: int, scores: "TargetScores", by: dict, pre: Mapping[str, Any] | None) -> dict[str, Any]:
    """The teacher-forced keys of request ``r``: rewrite, rephrase, locality (agreement with
    ``pre`` when given) and portability accuracies."""
    nr, nl, npt = len(req.rephrase_prompts), len(req.locality_prompts), len(req.portability)
    ns = len(req.subject_locality_prompts)
    acc = scores.token_acc
    res: dict[str, Any] = {
        "rewrite_acc": [acc[by[(r, "rewrite", 0)]]],
        "rephrase_acc": [acc[by[(r, "rephrase", j)]] for j in range(nr)],
        "locality": {
            "neighborhood_output": [scores.pred_ids[by[(r, "loc", j)]] for j in range(nl)],
            "neighborhood_gold_acc": [acc[by[(r, "loc", j)]] for j in range(nl)],
        },
    }
    if ns:
        res["locality"]["subject_output"] = [scores.pred_ids[by[(r, "subj", j)]] for j in range(ns)]
    res["portability"] = {"portability_acc": [acc[by[(r, "port", j)]] for j in range(npt)]}
    if pre is not None:
        pre_loc = pre.get("locality", {})
        if "neighborhood_output" not in pre_loc:
            raise ValueError(f"pre-edit result {r} has no locality.neighborhood_output (run it with teacher_forced)")
        _add_agreement(pre_loc, res["locality"])
    return res


def _probability_result(req: EditRequest, r: int, scores: "TargetScores", by: dict) -> dict[str, Any]:
    """ROME's probability block of request ``r``: P(new) against P(true) on the edit,
    paraphrase and neighbourhood prompts (NLL pairs, success rates, differences)."""
    nll = scores.mean_nll
    nr, nl = len(req.rephrase_prompts), len(req.locality_prompts)
    rome: dict[str, Any] = {}
    if req.ground_truth is not None:
        rw = [(nll[by[(r, "rewrite", 0)]], nll[by[(r, "rewrite_true", 0)]])]
        pa = [(nll[by[(r, "rephrase", j)]], nll[by[(r, "rephrase_true", j)]]) for j in range(nr)]
        rome["rewrite_prompts_probs"] = [{"target_new": a, "target_true": b} for a, b in rw]
        rome["paraphrase_prompts_probs"] = [{"target_new": a, "target_true": b} for a, b in pa]
        rome["efficacy_success"] = _mean(b > a for a, b in rw)
        rome["efficacy_diff"] = _mean(math.exp(-a) - math.exp(-b) for a, b in rw)
        if pa:
            rome["paraphrase_success"] = _mean(b > a for a, b in pa)
            rome["paraphrase_diff"] = _mean(math.exp(-a) - math.exp(-b) for a, b in pa)
    nb = [(nll[by[(r, "loc_new", j)]], nll[by[(r, "loc", j)]]) for j in range(nl)]
    rome["neighborhood_prompts_probs"] = [{"target_new": a, "target_true": b} for a, b in nb]
    if nb:
        rome["neighborhood_success"] = _mean(a > b for a, b in nb)
        rome["neighborhood_diff"] = _mean(math.exp(-b) - math.exp(-a) for a, b in nb)
    return rome


def _add_generation(
    model: Any,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    results: list[dict[str, Any]],
    pre: Sequence[Mapping[str, Any]] | None,
    batch_size: int,
    extra_tokens: int,
) -> None:
    items: list[tuple[int, str, str, str, str | None]] = []
    for r, req in enumerate(requests):
        items.append((r, "rewrite", req.prompt, req.target_new, _subject_in(req.prompt, req.subject)))
        items += [(r, "rephrase", p, req.target_new, _subject_in(p, req.subject)) for p in req.rephrase_prompts]
        items += [(r, "portability", p.prompt, p.ground_truth, _subject_in(p.prompt, req.subject)) for p in req.portability]
        items += [(r, "neighborhood", p.prompt, p.ground_truth, None) for p in req.locality_prompts]
        items += [(r, "subject", p.prompt, p.ground_truth, _subject_in(p.prompt, req.subject))
                  for p in req.subject_locality_prompts]
    g = generation_match(
        model,
        tokenizer,
        [x[2] for x in items],
        [x[3] for x in items],
        subjects=[x[4] for x in items],
        extra_tokens=extra_tokens,
        batch_size=batch_size,
    )
    for r, res in enumerate(results):
        parts = ("rewrite", "rephrase", "portability", "neighborhood") + (("subject",) if requests[r].subject_locality_prompts else ())
        res["generation"] = {f"{part}_{k}": [] for part in parts for k in ("exact", "prefix", "text")}
    for k, (r, part, *_rest) in enumerate(items):
        d = results[r]["generation"]
        d[f"{part}_exact"].append(g["exact"][k])
        d[f"{part}_prefix"].append(g["prefix"][k])
        d[f"{part}_text"].append(g["text"][k])
    if pre is not None:
        for r, res in enumerate(results):
            _add_agreement(pre[r].get("generation", {}), res["generation"])
