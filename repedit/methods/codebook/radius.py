"""Radius placement, GRACE's insertion rules, and reading hidden states at a site.

``place_radius`` is BalancEdit's rule, computed per entry from that entry's own samples
(the released code recomputes every entry from the latest edit's samples; we do not)::

    eps = (1 - alpha) * d_neg + alpha * d_pos

with ``d_pos`` the farthest positive and ``d_neg`` the nearest negative. When the positives
lie farther than the nearest negative no radius separates them: the radius then stays on
the negative side (``d_pos`` is clipped to ``d_neg``) and the case is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from repedit.positions import encode

__all__ = ["RadiusDecision", "place_radius", "grace_action", "site_hidden", "pool"]


@dataclass
class RadiusDecision:
    radius: float
    d_pos: float
    d_neg: float
    separable: bool


def place_radius(d_pos: Sequence[float] | torch.Tensor, d_neg: Sequence[float] | torch.Tensor, alpha: float) -> RadiusDecision:
    """BalancEdit radius from an entry's positive and negative distances.

    No positives: ``d_pos = 0``. No negatives: ``d_neg = inf`` is not usable, so the radius
    becomes ``2 * d_pos`` (a fixed margin over the farthest positive) and is flagged inseparable
    only if there are no positives either (radius 0 then; only the prompt itself fires).
    """
    pos = torch.as_tensor(d_pos, dtype=torch.float64).reshape(-1)
    neg = torch.as_tensor(d_neg, dtype=torch.float64).reshape(-1)
    neg = neg[torch.isfinite(neg)]
    dp = float(pos.max()) if pos.numel() else 0.0
    if not neg.numel():
        return RadiusDecision(2.0 * dp, dp, float("inf"), bool(pos.numel()))
    dn = float(neg.min())
    separable = dp < dn
    radius = (1.0 - alpha) * dn + alpha * min(dp, dn)
    return RadiusDecision(radius, dp, dn, separable)


def grace_action(d_near: float | None, r_near: float | None, init_radius: float, same_target: bool) -> str:
    """GRACE's insertion rule for a new key at distance ``d_near`` from the nearest key.

    ``"new"``: add an entry with ``init_radius``; ``"split"``: add an entry and set both
    radii to ``d_near / 2``; ``"expand"``: no new key, the nearest radius grows to
    ``d_near`` (coverage) and its value is retrained; ``"update"``: inside the nearest
    radius with the same target, retrain its value.
    """
    if d_near is None or d_near > init_radius + r_near:
        return "new"
    if not same_target:
        return "split"
    return "expand" if d_near > r_near else "update"


@torch.no_grad()
def site_hidden(edited, layer: int, component: str, tokenizer, prompts: Sequence[str],
                subjects: Sequence[str | None] | None = None, batch_size: int = 32):
    """Unedited hidden states at a site: yields ``(h (B,T,d) float32, prompt_mask, subject_mask)``
    per batch, through :meth:`repedit.hooks.EditableModel.capture` (the forward stops at the site)."""
    device = next(edited.model.parameters()).device
    for s in range(0, len(prompts), batch_size):
        ps = list(prompts[s : s + batch_size])
        ss = list(subjects[s : s + batch_size]) if subjects is not None else None
        if ss is not None:
            ss = [x if x and x in p else None for x, p in zip(ss, ps)]
        batch = encode(tokenizer, ps, subjects=ss).to(device)
        h, _ = edited.capture(layer, component, batch)
        yield h.float(), batch.prompt_mask & batch.attention_mask.bool(), batch.subject_mask


def pool(h: torch.Tensor, prompt_mask: torch.Tensor, subject_mask: torch.Tensor, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Key of each row under a key rule: ((B, d), (B,) whether the row has one)."""
    from repedit.positions import last_true_index

    if rule in ("subject", "last_prompt"):
        m = subject_mask if rule == "subject" else prompt_mask
        has = m.any(-1)
        if rule == "subject":  # fall back to the last prompt token when there is no subject
            m = torch.where(has[:, None], m, prompt_mask)
            has = m.any(-1)
        idx = last_true_index(m)
        if rule == "subject":
            # never key on the first token (an attention sink, skipped by the scan): a subject
            # that is one token at the start is keyed on the token after it
            first = _first_index(prompt_mask)
            last = last_true_index(prompt_mask)
            idx = torch.where(idx == first, torch.minimum(idx + 1, last), idx)
        return h[torch.arange(h.shape[0], device=h.device), idx], has
    m = subject_mask if rule == "subject_mean" else prompt_mask
    w = m.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0), m.any(-1)


def _first_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first True per row of a (B, T) mask."""
    t = mask.shape[-1]
    ar = torch.arange(t, 0, -1, device=mask.device)
    return (mask.long() * ar).argmax(dim=-1)


def skip_first(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` without each row's first True (the sequence's first token)."""
    first = _first_index(mask)
    out = mask.clone()
    out[torch.arange(mask.shape[0], device=mask.device), first] = False
    return out
