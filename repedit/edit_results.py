"""What an edit reports: per-request outcomes, the :class:`EditResult` of ``Editor.edit``,
and the target statistics (mean NLL, argmax match, probability) that decide them.

A request is reached when every target token is the argmax and ``exp(−mean NLL)`` is at
least ``stop_prob``; with ``EditorConfig.answer_end_stop="argmax"`` the probability of a
trained answer end is left out (:func:`without_last_token`), and the end need only be the argmax.

Example::

    nll, correct, prob = target_nll(logits, batch.labels)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from repedit.hooks import EditableModel

__all__ = ["RequestOutcome", "EditResult", "target_nll", "target_positions"]


@dataclass
class RequestOutcome:
    """Whether one request's edit took. ``flags``: ``relation_copies`` (other phrasings of the
    request's relation it was trained on), and with ``verify`` the training-time verdict
    (``trained``, ``trained_target_prob``)."""

    index: int
    case_id: Any
    success: bool
    loss: float
    steps: int
    target_prob: float
    flags: dict = field(default_factory=dict)


@dataclass
class EditResult:
    """What :meth:`Editor.edit` returns: per-request outcomes, the edited model, timing."""

    outcomes: list[RequestOutcome]
    edited: EditableModel
    seconds: float

    @property
    def success_rate(self) -> float:
        return sum(o.success for o in self.outcomes) / max(1, len(self.outcomes))

    @property
    def seconds_per_edit(self) -> float:
        return self.seconds / max(1, len(self.outcomes))

    @property
    def model(self) -> nn.Module:
        return self.edited.model

    def save_pretrained(self, directory: str, **kwargs: Any) -> None:
        self.edited.save_pretrained(directory, **kwargs)

    def summary(self) -> dict:
        return {
            "edits": len(self.outcomes),
            "success_rate": self.success_rate,
            "seconds_per_edit": self.seconds_per_edit,
            "mean_steps": sum(o.steps for o in self.outcomes) / max(1, len(self.outcomes)),
        }


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example mean NLL over target tokens, whether every target token is the argmax,
    and exp(-mean NLL). ``labels`` follows :class:`~repedit.positions.EncodedBatch`."""
    positions, target, mask = target_positions(labels)
    return _target_stats(target_logits(logits, positions), target, mask)


def target_logits(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The full-sequence ``logits`` (B, T, V) at :func:`target_positions`' ``positions``: (B, K, V)."""
    return logits[:, :-1].gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))


def target_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions whose logits predict target tokens, per row: ``(positions (B, K), target
    ids (B, K), valid (B, K))`` with ``K`` the longest target. Short rows repeat position 0,
    marked invalid. Passing ``positions`` as ``logits_to_keep`` skips the vocabulary projection
    (a fifth of SmolLM2's forward) everywhere else.

    Example::

        pos, tgt, ok = target_positions(batch.labels)
        logits = model(**batch.model_inputs(), logits_to_keep=pos).logits   # (B, K, V)
    """
    shifted = labels[:, 1:]
    tmask = shifted != -100
    k = max(1, int(tmask.sum(1).max()))
    order = torch.sort((~tmask).to(torch.int8), dim=1, stable=True).indices[:, :k]
    valid = tmask.gather(1, order)
    positions = torch.where(valid, order, torch.zeros_like(order))
    return positions, shifted.gather(1, positions).clamp_min(0), valid


def _target_stats(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                  prob_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean NLL over ``mask``, every masked token the argmax, exp(−mean NLL) over ``prob_mask``
    (default ``mask``)) per row of gathered ``logits`` (B, K, V)."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    tok = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    nll = -(tok * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    correct = ((logits.argmax(-1) == target) | ~mask).all(-1)
    if prob_mask is None:
        return nll, correct, torch.exp(-nll)
    return nll, correct, torch.exp((tok * prob_mask).sum(-1) / prob_mask.sum(-1).clamp_min(1))


def without_last_token(valid: torch.Tensor) -> torch.Tensor:
    """``valid`` (B, K, as :func:`target_positions` lays it out) without each row's last target
    token, where a row has more than one: the answer without its trained end.

    Example::

        without_last_token(torch.tensor([[True, True, False], [True, False, False]]))
        # tensor([[ True, False, False], [ True, False, False]])
    """
    n = valid.sum(1, keepdim=True)
    last = torch.arange(valid.shape[1], device=valid.device).unsqueeze(0) == (n - 1)
    return valid & ~(last & (n > 1))


def _mark_verified(outcomes: list[RequestOutcome], ok: torch.Tensor, probs: torch.Tensor) -> None:
    """Report the inference-mode verdict; the training verdict moves to ``flags``."""
    for i, o in enumerate(outcomes):
        o.flags["trained"] = o.success
        o.flags["trained_target_prob"] = o.target_prob
        o.success = bool(ok[i])
        o.target_prob = float(probs[i])
