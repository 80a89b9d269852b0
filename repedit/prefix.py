"""Training forwards that compute the tokens before an edit's first write once.

An edit that writes only from column ``s_i`` of each training row on (BaFT's subject trigger:
the subject's last token; :meth:`~repedit.methods.base.Intervention.training_start`) leaves
every earlier token's states, at every layer, as they were before training. :func:`split_batch`
shifts the rows so that every ``s_i`` lands at one column ``P`` (padding on both sides,
positions kept), runs columns ``0..P-1`` once without gradient and keeps their keys and values;
each training step then runs only columns ``P..`` over that cache. The tokens a step computes
fall from the padded batch to the longest suffix per row (about 2.4x fewer on CounterFact's
training batches), and the logits and gradients equal the full forward's under the same rule
(tested to 1e-5).

Example::

    split = split_batch(edited, batch, start=torch.tensor([3, 5]))
    with split.batch.info(trained_from=split.trained_from):
        logits = edited.model(**split.suffix_inputs(), **split.cache_inputs()).logits   # (B, T - P, V)
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from repedit.positions import EncodedBatch

__all__ = ["PrefixSplit", "split_batch"]


@dataclass
class PrefixSplit:
    """An edit's training batch aligned at its first written column ``first``, with the
    key/value cache of the columns before it (computed once, never extended)."""

    batch: EncodedBatch
    first: int
    cache: Any
    trained_from: torch.Tensor
    #: what the model's forward calls its cache argument (``past_key_values`` up to
    #: transformers 5.23, ``cache`` from 5.24)
    cache_arg: str = "cache"

    @property
    def labels(self) -> torch.Tensor:
        """The suffix's labels (B, T - first): every target token lies in the suffix."""
        return self.batch.labels[:, self.first :]

    def suffix_inputs(self) -> dict:
        """Model inputs of one training step but the cache: the columns from ``first`` on."""
        b, p = self.batch, self.first
        return {"input_ids": b.input_ids[:, p:], "attention_mask": b.attention_mask,
                "position_ids": b.position_ids[:, p:], "use_cache": True}

    def cache_inputs(self) -> dict:
        """``{cache_arg: cache_view()}``: the cache argument of one training step."""
        return {self.cache_arg: self.cache_view()}

    def cache_view(self) -> Any:
        """A cache that shares the prefix's tensors but grows on its own: a forward appends
        to the copy's layers (by concatenation, which makes new tensors), never to the
        prefix's. One per forward."""
        out = copy.copy(self.cache)
        out.layers = [copy.copy(layer) for layer in self.cache.layers]
        return out


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _cache_arg(model: Any) -> str | None:
    for name in ("cache", "past_key_values"):
        if _accepts(model, name):
            return name
    return None


def split_batch(edited: Any, batch: EncodedBatch, start: torch.Tensor) -> PrefixSplit | None:
    """Align ``batch`` at ``start`` (B,), the first column each row's trained edit writes,
    and cache the columns before it: None when there is nothing before it (every ``start``
    is 0) or the model keeps no per-layer key/value cache. The prefix forward runs with the
    trained edit shut below ``start`` (``TokenInfo.trained_from``) and every other
    intervention as usual."""
    model = edited.model
    cache_arg = _cache_arg(model)
    if int(start.max()) <= 0 or cache_arg is None or not _accepts(model, "position_ids"):
        return None
    aligned, first = batch.aligned_at(start)
    trained_from = torch.full((aligned.input_ids.shape[0],), first, dtype=torch.long, device=aligned.input_ids.device)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    with torch.no_grad(), aligned.info(trained_from=trained_from):
        out = model(input_ids=aligned.input_ids[:, :first], attention_mask=aligned.attention_mask[:, :first],
                    position_ids=aligned.position_ids[:, :first], use_cache=True, **extra)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None or not isinstance(getattr(cache, "layers", None), list):
        return None
    return PrefixSplit(aligned, first, cache, trained_from, cache_arg)
