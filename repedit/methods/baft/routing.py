"""Sparse routing of BaFT's gates at inference: with many edits, only the ``k`` edits whose
gates are most open at a token are evaluated there; every other edit contributes exactly zero.

An edit's ``rank`` bases share one gate row (the gate fit copies it), so one ``(E × d)``
matmul over the edits' gate rows (the routing keys) gives every edit's gate logit ``z_e``; a
top-``k`` over ``z_e`` picks the edits, and their bases are gathered and applied as in
:func:`~repedit.methods.baft.module.baft_delta`::

    Φ(h) = h + Σ_{e ∈ top-k(z)} σ((z_e + shift)/τ) · Σ_{i ∈ e} r_i (⟨W_i, h⟩ + b_i − ⟨r_i, h⟩)

Wherever at most ``k`` edits have a gate weight above ε, the result equals the dense sum up
to the other edits' weights (< ε each). Fixed shapes throughout: no host sync.

Example::

    delta = sparse_delta(x, gate_x, read, write, bias, gbias, rank=2, k=8, temperature=1.0)
"""

from __future__ import annotations

import torch

__all__ = ["sparse_delta"]


def sparse_delta(x: torch.Tensor, gate_x: torch.Tensor, read: torch.Tensor, write: torch.Tensor,
                 bias: torch.Tensor, gate_bias: torch.Tensor, rank: int, k: int, temperature: float) -> torch.Tensor:
    """The change for ``x`` (…, d) from the ``k`` most open edits.

    ``gate_x`` is what the gates read (``x`` or its normalised form); ``read`` = [U; W; R]
    (3N, d), ``write`` (N, d), ``bias`` b (N,), ``gate_bias`` c (N,) with any inference shift
    already added; the N bases come in groups of ``rank`` per edit, sharing their gate row.
    """
    n = write.shape[0]
    keys, key_bias = read[:n:rank], gate_bias[::rank]  # one gate row per edit
    z = gate_x @ keys.transpose(0, 1) + key_bias  # (…, E)
    top_z, top_e = z.topk(min(k, keys.shape[0]), dim=-1)  # (…, k)
    idx = (top_e.unsqueeze(-1) * rank + torch.arange(rank, device=x.device)).flatten(-2)  # (…, k·rank)
    w = torch.sigmoid(top_z / temperature).repeat_interleave(rank, dim=-1)
    xs = x.unsqueeze(-1)  # (…, d, 1)
    s = (read[n : 2 * n][idx] @ xs).squeeze(-1)  # ⟨W_i, x⟩ for the chosen bases
    r = (read[2 * n :][idx] @ xs).squeeze(-1)  # ⟨r_i, x⟩
    diff = w * (s + bias[idx] - r)
    return (diff.unsqueeze(-2) @ write[idx]).squeeze(-2)
