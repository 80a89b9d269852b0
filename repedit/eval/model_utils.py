"""Helpers the metric modules share: the protocol labels, the model's device, padding and end-of-sequence ids,
batch order by length, means, and whether a subject occurs in a prompt."""

from __future__ import annotations

import inspect
import logging
from typing import Any, Iterable, Sequence

import torch

logger = logging.getLogger(__name__)

#: protocol labels (repedit.eval.metrics describes each)
TEACHER_FORCED = "teacher_forced/easyedit"
PROBABILITY = "probability/rome"
GENERATION = "generation/mirage"
FLUENCY = "fluency/rome"

#: Short names accepted by ``evaluate_requests(protocols=...)`` and their labels.
PROTOCOLS: dict[str, str] = {
    "teacher_forced": TEACHER_FORCED,
    "probability": PROBABILITY,
    "generation": GENERATION,
}


def _model_device(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _warn_if_training(model: Any) -> None:
    if getattr(model, "training", False):
        logger.warning("model is in training mode (dropout on): metrics will be noisy; call model.eval()")


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return ids


def _length_order(prompts: Sequence[str], conts: Sequence[str] | None = None) -> list[int]:
    """Indices sorted by character length (a cheap proxy for token length) to cut padding."""
    if conts is None:
        return sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(conts[i]))


def _mean(xs: Iterable[float]) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else float("nan")


def _subject_in(prompt: str, subject: str | None) -> str | None:
    return subject if subject and subject in prompt else None
