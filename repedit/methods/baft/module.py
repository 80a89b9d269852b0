"""BaFT's maths and forward: the gated low-rank change of every basis, vectorised.

    Φ(h) = h + Σ_i w_i(h) · r_i · (⟨W_i, h⟩ + b_i − ⟨r_i, h⟩),   w_i(h) = σ((⟨u_i, h⟩ + c_i) / τ)

One ``(3N × d)`` read matmul gives the gate logits, ``W h`` and ``R h``; one ``(N × d)`` write
matmul applies the weighted change. At inference the concatenated matrices are cached (no
per-forward QR, no loop over edits, no host sync).

Example::

    phi = BaFT(BaFTConfig(rank=2, incremental=False), hidden_size=64)
    out = phi(h, mask)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from repedit.methods.base import Intervention, OrthonormalRows
from repedit.methods.baft.config import BaFTConfig
from repedit.methods.baft.edits import EditsMixin
from repedit.methods.baft.gates import GatesMixin
from repedit.methods.baft.negatives import NegativesMixin
from repedit.methods.baft.routing import sparse_delta
from repedit.methods.baft.training import TrainingMixin
from repedit.positions import trained_columns

logger = logging.getLogger(__name__)

__all__ = ["BaFT", "baft_delta", "normalize_gate_input"]


def normalize_gate_input(x: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``y·√d/‖y‖`` with ``y = (x − μ)/σ``: what normalised gates read."""
    y = (x - center) / scale
    return y * (y.shape[-1] ** 0.5 / y.norm(dim=-1, keepdim=True).clamp_min(1e-6))


def baft_delta(x_read: torch.Tensor, read: torch.Tensor, write: torch.Tensor, bias: torch.Tensor,
               gate_bias: torch.Tensor, temperature: float, constant_gate: bool = False,
               gate_center: torch.Tensor | None = None, gate_scale: torch.Tensor | None = None,
               basis_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The BaFT change for inputs ``x_read`` (…, d): ``Σ_i w_i r_i (⟨W_i,x⟩ + b_i − ⟨r_i,x⟩)``.

    ``read`` is ``[U; W; R]`` stacked (3N, d), ``write`` is ``R`` (N, d). With ``gate_center``
    μ (and ``gate_scale`` σ) the gates read ``y·√d/‖y‖``, ``y = (x−μ)/σ``, instead of ``x``.
    ``basis_mask`` (…, N), if given, multiplies each basis's term. Pure function, used by the
    module and by the gradient check.
    """
    n = write.shape[0]
    if gate_center is None or constant_gate:
        g, s, r = (x_read @ read.transpose(0, 1)).split(n, dim=-1)
    else:
        scale = gate_scale if gate_scale is not None else torch.ones_like(gate_center)
        g = normalize_gate_input(x_read, gate_center, scale) @ read[:n].transpose(0, 1)
        s, r = (x_read @ read[n:].transpose(0, 1)).split(n, dim=-1)
    diff = s + bias - r
    if not constant_gate:
        diff = torch.sigmoid((g + gate_bias) / temperature) * diff
    if basis_mask is not None:
        diff = diff * basis_mask
    return diff @ write


class _Block(nn.Module):
    """The trainable bases of the current edit (or the fixed pool)."""

    def __init__(self, hidden: int, m: int, generator: torch.Generator | None):
        super().__init__()
        self.rotate = OrthonormalRows(hidden, m, generator=generator)
        R = self.rotate.matrix().detach().clone()
        self.source = nn.Parameter(R.clone())  # W = R: the edit starts at zero
        self.bias = nn.Parameter(torch.zeros(m))
        self.gate = nn.Parameter(torch.zeros(m, hidden))
        self.gate_bias = nn.Parameter(torch.zeros(m))


class BaFT(TrainingMixin, GatesMixin, NegativesMixin, EditsMixin, Intervention):
    """Basis-level gated low-rank subspace intervention (a reconstruction of Liu et al., ICLR
    2025; docs/methods.md#baft). ``gate="constant"`` is exactly LoReFT."""
    """Basis-level gated low-rank subspace intervention (reconstruction; see the module doc)."""

    storage_dtypes = {"earlier_states": torch.float16}  # the bank stays float16 in memory and on disk

    def __init__(self, config: BaFTConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        d, n = hidden_size, config.num_bases
        self.register_buffer("read_frozen", torch.zeros(3 * n, d))
        self.register_buffer("write_frozen", torch.zeros(n, d))
        self.register_buffer("bias_frozen", torch.zeros(n))
        self.register_buffer("gate_bias_frozen", torch.zeros(n))
        self.register_buffer("usage", torch.zeros(n))
        if config.nullspace != "none":
            self.register_buffer("projector", torch.eye(d))
        if self._fold_history_kept(config):
            # P as built and the keys each recorded edit folded out of it (edit_records' num_fold)
            self.register_buffer("projector_base", torch.eye(d))
            self.register_buffer("fold_keys", torch.zeros(config.num_fold, d))
        if self._normalized:
            self.register_buffer("gate_center", torch.zeros(d))
            self.register_buffer("gate_scale", torch.ones(d))
        if config.incremental and config.earlier_negatives:
            # gate positives of every finished edit (float16) and a hash of each one's subject
            self.register_buffer("earlier_states", torch.zeros(config.num_earlier, d, dtype=torch.float16))
            self.register_buffer("earlier_subject", torch.zeros(config.num_earlier, dtype=torch.long))
        self._gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        self.block: _Block | None = None
        if not config.incremental:
            self.usage = torch.zeros(config.rank)
            self.block = _Block(d, config.rank, self._gen)
            if config.gate == "sigmoid":
                with torch.no_grad():  # gates start half-open everywhere
                    self.block.gate_bias.zero_()
        self._cache: tuple | None = None
        self._cache_key: tuple | None = None
        self._train_state: dict = {}
        self._fold_warned = False

    @staticmethod
    def _fold_history_kept(config: BaFTConfig) -> bool:
        return config.nullspace == "read" and config.incremental and config.num_fold >= 0

    def _new_block(self, hidden: int, m: int, generator: torch.Generator | None) -> _Block:
        return _Block(hidden, m, generator)

    # ----------------------------------------------------------------- shapes
    @property
    def _normalized(self) -> bool:
        return self.config.gate == "sigmoid" and self.config.gate_input == "normalized"

    @property
    def num_frozen(self) -> int:
        return self.write_frozen.shape[0]

    @property
    def num_bases(self) -> int:
        return self.num_frozen + (self.block.bias.shape[0] if self.block is not None else 0)

    def export_config(self) -> BaFTConfig:
        import dataclasses

        corpus = self.config.nullspace_corpus
        if isinstance(corpus, (list, tuple)):  # do not store a user corpus in the adapter
            corpus = f"<{len(corpus)} texts>"
        num_earlier = self.earlier_states.shape[0] if hasattr(self, "earlier_states") else 0
        return dataclasses.replace(self.config, num_bases=self.num_frozen, nullspace_corpus=corpus,
                                   nullspace_built=self.config.nullspace_built, num_earlier=num_earlier,
                                   num_fold=self.fold_keys.shape[0] if hasattr(self, "fold_keys") else -1,
                                   edits=[dict(e) for e in self.config.edits])

    # ----------------------------------------------------------------- math
    def _block_mats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b = self.block
        R = b.rotate.matrix()
        source = R if self.config.value == "vector" else b.source  # 'vector': W = R, the change is R^T b
        read = torch.cat([b.gate, source, R], 0)
        write = R
        bias = b.bias
        if self.config.nullspace == "read":
            if self._normalized:  # normalised gates read h itself; W and R read P·h
                read = torch.cat([b.gate, torch.cat([source, R], 0) @ self.projector], 0)
            else:
                read = read @ self.projector
            bias = torch.zeros_like(bias)
        elif self.config.nullspace == "write":
            write = write @ self.projector
        return read, write, bias, b.gate_bias

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(read [U;W;R] (3N, d), write R (N, d), b (N,), c (N,)) over every basis."""
        if self.block is None:
            return self.read_frozen, self.write_frozen, self.bias_frozen, self.gate_bias_frozen
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.block.parameters())
        key = None
        if not grad:
            key = tuple((p._version, p.data_ptr()) for p in self.block.parameters()) + tuple(
                (t._version, t.data_ptr()) for t in self.buffers())
            if self._cache is not None and self._cache_key == key:
                return self._cache
        read, write, bias, gbias = self._block_mats()
        n, m = self.num_frozen, bias.shape[0]
        rf = self.read_frozen
        read = torch.cat([rf[:n], read[:m], rf[n : 2 * n], read[m : 2 * m], rf[2 * n :], read[2 * m :]], 0)
        out = (read, torch.cat([self.write_frozen, write], 0), torch.cat([self.bias_frozen, bias], 0),
               torch.cat([self.gate_bias_frozen, gbias], 0))
        if key is not None:
            self._cache = tuple(t.detach() for t in out)
            self._cache_key = key
        return out

    def weights(self, h: torch.Tensor) -> torch.Tensor:
        """Per-basis weights w_i(h), shape (..., N)."""
        read, write, bias, gbias = self.matrices()
        n = write.shape[0]
        x = h.to(read.dtype)
        if self.config.gate == "constant":
            return torch.ones(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
        if self._normalized:
            x = self._gate_input(x)
        return torch.sigmoid((x @ read[:n].T + gbias + self._shift()) / self.config.temperature)

    @property
    def sparse_routing(self) -> bool:
        """Whether inference evaluates only the most open edits per token
        (:mod:`~repedit.methods.baft.routing`): frozen incremental edits whose bases share their
        edit's gate row (gates fitted, not trained), in eval mode, per ``routing``."""
        return not self.training and self.block is None and self._frozen_routable()

    def _frozen_routable(self) -> bool:
        """Whether the frozen edits, as they run at inference, are sparsely routed."""
        cfg = self.config
        if cfg.routing == "dense" or cfg.gate != "sigmoid" or not cfg.incremental or cfg.train_gates:
            return False
        return cfg.routing == "sparse" or self.num_frozen // cfg.rank >= cfg.routing_min_edits

    def _shift(self) -> float:
        return 0.0 if self.training else float(self.config.gate_shift)

    @property
    def _as_inference(self) -> str:
        """What of this forward runs as inference would (``train_as_inference``): 'none' outside
        training an incremental sigmoid-gated edit."""
        cfg = self.config
        if not (self.training and self.block is not None and cfg.incremental and cfg.gate == "sigmoid"):
            return "none"
        return cfg.train_as_inference

    def _delta(self, x: torch.Tensor, read, write, bias, gbias, shift: float, sparse: bool,
               mask: torch.Tensor | None) -> torch.Tensor:
        if shift:
            gbias = gbias + shift
        if sparse:
            gate_x = self._gate_input(x) if self._normalized else x
            return sparse_delta(x, gate_x, read, write, bias, gbias, self.config.rank, self.config.routing_top_k,
                                self.config.temperature)
        center, scale = (self.gate_center, self.gate_scale) if self._normalized else (None, None)
        return baft_delta(x, read, write, bias, gbias, self.config.temperature, self.config.gate == "constant",
                          center, scale, mask)

    def edit(self, h: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        mode = self._as_inference
        if mode != "none":  # earlier edits as at inference, plus the new bases as trained
            x = h.to(self.read_frozen.dtype)
            read, write, bias, gbias = self._block_mats()
            shift = float(self.config.gate_shift)
            out = x + self._delta(x, read, write, bias, gbias, shift if mode == "all" else 0.0, False,
                                  self._trained_mask(x, ctx, write.shape[0], frozen=0))
            if self.num_frozen:
                out = out + self._delta(x, self.read_frozen, self.write_frozen, self.bias_frozen,
                                        self.gate_bias_frozen, shift, self._frozen_routable(), None)
            return out
        read, write, bias, gbias = self.matrices()
        x = h.to(read.dtype)
        if write.shape[0] == 0:
            return x
        return x + self._delta(x, read, write, bias, gbias, self._shift(), self.sparse_routing,
                               self._trained_mask(x, ctx, write.shape[0]))

    def _trained_mask(self, x: torch.Tensor, ctx: Any, n: int, frozen: int | None = None) -> torch.Tensor | None:
        """In training forwards that set ``TokenInfo.trained_from``: 1 for the ``frozen`` bases
        first (default: all but the new ones), and for the new bases 1 only from each row's
        ``trained_from`` column on (B, T, N)."""
        if not self.training or self.block is None or x.dim() != 3:
            return None
        keep = trained_columns(ctx, x.shape[1], x.device)
        if keep is None:
            return None
        m = self.block.bias.shape[0]
        frozen = n - m if frozen is None else frozen
        return torch.cat([torch.ones(*keep.shape, frozen, dtype=x.dtype, device=x.device),
                          keep[..., None].expand(*keep.shape, m).to(x.dtype)], -1)

    # ----------------------------------------------------------------- sweep knobs
    def knobs(self) -> dict[str, float]:
        """Inference-time knobs (``repedit.eval.sweep``): ``gate_shift`` (added to every gate
        logit; > 0 widens scope, < 0 narrows it) and ``temperature``.

        Example::

            from repedit.eval.sweep import sweep
            sweep(edited, tok, requests, knob="gate_shift", values=[-2, -1, 0, 1, 2])
        """
        if self.config.gate == "constant":
            return {"temperature": float(self.config.temperature)}
        return {"temperature": float(self.config.temperature), "gate_shift": float(self.config.gate_shift)}

    def set_knob(self, name: str, value: float) -> None:
        if name == "gate_shift" and "gate_shift" in self.knobs():
            if not math.isfinite(value):
                raise ValueError("gate_shift must be finite")
            self.config.gate_shift = float(value)
        elif name == "temperature":
            if not value > 0:  # a constant gate has temperature too (unused, kept settable)
                raise ValueError("temperature must be > 0")
            self.config.temperature = float(value)
        else:
            super().set_knob(name, value)

    def _read_input(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.projector if self.config.nullspace == "read" else h

    def _gate_input(self, h: torch.Tensor) -> torch.Tensor:
        """What the gates read: ``(h−μ)·√d/‖h−μ‖`` (normalised) or the basis input."""
        if not self._normalized:
            return self._read_input(h)
        return normalize_gate_input(h, self.gate_center.to(h), self.gate_scale.to(h))

