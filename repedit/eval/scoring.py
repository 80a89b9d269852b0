"""Teacher-forced scoring (protocols ``teacher_forced/easyedit`` and ``probability/rome``, see
:mod:`repedit.eval.metrics`): one batched pass over ``prompt + " " + target`` gives the token
accuracy, the mean NLL and the argmax ids at the target positions.

Example::

    s = score_targets(model, tok, ["The capital of France is"], ["Paris"])
    s.token_acc[0], s.mean_nll[0]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from repedit.eval.model_utils import (PROBABILITY, TEACHER_FORCED, _accepts, _length_order, _logits, _model_device,
                                      _warn_if_training)
from repedit.positions import encode

logger = logging.getLogger(__name__)

__all__ = ["TargetScores", "score_targets", "token_accuracy", "predict_target_tokens", "probability_scores"]


@dataclass
class TargetScores:
    """Per-prompt results of one teacher-forced pass over ``prompt + " " + target``.

    ``token_acc``: mean of argmax == target over target tokens (EasyEdit).
    ``mean_nll``: length-normalised NLL of the target tokens (ROME), natural log.
    ``pred_ids`` / ``target_ids``: argmax and true token ids at the target positions.
    """

    token_acc: list[float] = field(default_factory=list)
    mean_nll: list[float] = field(default_factory=list)
    pred_ids: list[list[int]] = field(default_factory=list)
    target_ids: list[list[int]] = field(default_factory=list)
    protocol: str = TEACHER_FORCED


def score_targets(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    subjects: Sequence[str | None] | None = None,
    batch_size: int = 16,
    add_space: bool = True,
    max_length: int | None = None,
) -> TargetScores:
    """Teacher-forced forwards over ``prompt + " " + target``: token accuracy, mean NLL, argmax ids.

    Batched (sorted by length, right padding) under ``torch.no_grad()`` and inside
    ``batch.info()``. Only the logits at target positions go through ``log_softmax``, in float32.

    Example::

        s = score_targets(model, tok, ["The capital of France is"], ["Paris"])
        s.token_acc[0], s.mean_nll[0]
    """
    if isinstance(prompts, str) or isinstance(targets, str):
        raise TypeError("score_targets() takes lists of prompts and targets, not single strings")
    n = len(prompts)
    if len(targets) != n:
        raise ValueError(f"{n} prompts but {len(targets)} targets")
    if subjects is not None and len(subjects) != n:
        raise ValueError(f"{n} prompts but {len(subjects)} subjects")
    _warn_if_training(model)
    conts = [(" " + t) if add_space else t for t in targets]
    device = _model_device(model)
    keep_ok = _accepts(model, "logits_to_keep")
    acc: list[float] = [0.0] * n
    nll: list[float] = [float("nan")] * n
    preds: list[list[int]] = [[] for _ in range(n)]
    tids: list[list[int]] = [[] for _ in range(n)]
    order = _length_order(prompts, conts)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = encode(
            tokenizer,
            [prompts[i] for i in idx],
            [conts[i] for i in idx],
            subjects=None if subjects is None else [subjects[i] for i in idx],
            padding_side="right",
            max_length=max_length,
        )
        width = batch.input_ids.shape[1]
        # logits[:, t] predicts token t + 1; the first target token of row i sits at
        # prompt_len_i, so logits from min(prompt_len) - 1 on are all that is needed.
        first = max(int(batch.prompt_mask.sum(1).min()) - 1, 0)
        mask = batch.target_mask[:, 1:]  # (B, T-1): targets predicted by logits[:, :-1]
        target = batch.input_ids[:, 1:][mask]
        counts = mask.sum(1).tolist()
        batch = batch.to(device)
        kwargs = batch.model_inputs()
        if keep_ok and first > 0:
            kwargs["logits_to_keep"] = width - first
        with torch.no_grad(), batch.info():
            logits = _logits(model(**kwargs))
        offset = width - logits.shape[1]  # > 0 when logits_to_keep cut the front
        sel = logits[:, : width - 1 - offset]
        m = batch.target_mask[:, 1 + offset :]
        lg = sel[m].float()  # (N_target_tokens, V)
        tgt = target.to(lg.device)
        logp = torch.log_softmax(lg, dim=-1).gather(1, tgt[:, None])[:, 0]
        pred = lg.argmax(-1)
        hits = (pred == tgt).float()
        pred_l, tgt_l = pred.tolist(), tgt.tolist()
        logp_l, hits_l = logp.tolist(), hits.tolist()
        pos = 0
        for i, c in zip(idx, counts):
            if c == 0:
                logger.warning("target %r of prompt %r has no tokens to score", targets[i], prompts[i])
                continue
            preds[i] = pred_l[pos : pos + c]
            tids[i] = tgt_l[pos : pos + c]
            acc[i] = sum(hits_l[pos : pos + c]) / c
            nll[i] = -sum(logp_l[pos : pos + c]) / c
            pos += c
    return TargetScores(token_acc=acc, mean_nll=nll, pred_ids=preds, target_ids=tids)


def token_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    subjects: Sequence[str | None] | None = None,
    batch_size: int = 16,
) -> list[float]:
    """EasyEdit teacher-forced token accuracy per prompt (``teacher_forced/easyedit``).

    Example::

        token_accuracy(model, tok, ["The capital of France is"], ["Paris"])  # [1.0]
    """
    return score_targets(model, tokenizer, prompts, targets, subjects=subjects, batch_size=batch_size).token_acc


def predict_target_tokens(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 16,
) -> list[list[int]]:
    """Argmax token ids at the answer positions of ``prompt + " " + answer`` (for locality).

    Run once before and once after editing, then compare with :func:`locality_agreement`.

    Example::

        pre = predict_target_tokens(model, tok, ["The capital of Spain is"], ["Madrid"])
    """
    return score_targets(model, tokenizer, prompts, answers, batch_size=batch_size).pred_ids


def probability_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    target_new: Sequence[str],
    target_true: Sequence[str],
    *,
    subjects: Sequence[str | None] | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """ROME probability comparison per prompt (``probability/rome``).

    Returns lists ``nll_new``, ``nll_true`` (mean NLL per target token), ``new_beats_true``
    (NLL(true) > NLL(new)) and ``diff`` = exp(-NLL(new)) - exp(-NLL(true)).

    Example::

        r = probability_scores(model, tok, ["The capital of France is"], ["Rome"], ["Paris"])
        r["new_beats_true"]  # [False] before the edit
    """
    n = len(prompts)
    if len(target_new) != n or len(target_true) != n:
        raise ValueError(f"{n} prompts but {len(target_new)} new and {len(target_true)} true targets")
    subj = None if subjects is None else list(subjects) * 2
    s = score_targets(
        model, tokenizer, list(prompts) * 2, list(target_new) + list(target_true), subjects=subj, batch_size=batch_size
    )
    new, true = s.mean_nll[:n], s.mean_nll[n:]
    return {
        "nll_new": new,
        "nll_true": true,
        "new_beats_true": [t > w for w, t in zip(new, true)],
        "diff": [math.exp(-w) - math.exp(-t) for w, t in zip(new, true)],
        "protocol": PROBABILITY,
    }
