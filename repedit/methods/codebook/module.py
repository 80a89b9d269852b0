"""The codebook intervention: (key, value, radius) entries at one site, looked up per example.

Forward (prefill): every example's query is compared with all keys in one matrix product;
the nearest key wins; if its distance is within ``radius * radius_scale`` the entry's value
changes the representation at the attachment's positions. Decoding steps reuse the entry
chosen at prefill (kept in ``ctx.state``). No Python loop over entries, no host sync.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from repedit.methods.base import Intervention
from repedit.methods.codebook.config import CodebookConfig
from repedit.methods.codebook.training import TrainingMixin
from repedit.positions import Positions, trained_columns

logger = logging.getLogger(__name__)

__all__ = ["Codebook"]

_PER_ENTRY = ("keys", "key_norms", "radii", "values", "pos_dist", "neg_dist")
_LOWRANK = ("value_u", "value_v")


def _first_token(ctx: Any, device) -> torch.Tensor:
    """(B, T_new) mask of each sequence's first attended token. Without a BOS token it is an
    attention sink whose outlier activations look alike whatever the token, so the subject
    scan skips it (keys are never read there either, see ``radius.pool``)."""
    attn = ctx.attention_mask.to(device)
    first = (attn.long().cumsum(-1) == 1) & attn.bool()
    return first[:, ctx.past_len:]


class Codebook(TrainingMixin, Intervention):
    """GRACE / BalancEdit-style codebook as a representation intervention.

    Example::

        editor = Editor(model, tok, EditorConfig(method="codebook", layers=[5], lr=0.05))
        editor.edit(requests, sequential=True)
        cb = editor.attachments()[0].module
        cb.radius_scale = 1.5          # widen every radius at inference, no retraining
    """

    config: CodebookConfig

    def __init__(self, config: CodebookConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        n, d, r = config.n_entries, hidden_size, config.value_rank
        self.register_buffer("keys", torch.zeros(n, d))
        self.register_buffer("key_norms", torch.zeros(n))
        self.register_buffer("radii", torch.zeros(n))
        self.register_buffer("values", torch.zeros(n, d))
        self.register_buffer("pos_dist", torch.zeros(n))
        self.register_buffer("neg_dist", torch.zeros(n))
        if config.value == "lowrank":
            self.register_buffer("value_u", torch.zeros(n, d, r))
            self.register_buffer("value_v", torch.zeros(n, r, d))
        self.register_buffer("stat_mean", torch.zeros(d))
        self.register_buffer("stat_std", torch.ones(d))
        self._session: dict | None = None
        self._record: list | None = None
        self._bank: dict | None = None

    # ------------------------------------------------------------ properties
    @property
    def n_entries(self) -> int:
        return self.keys.shape[0]

    @property
    def radius_scale(self) -> float:
        return self.config.radius_scale

    @radius_scale.setter
    def radius_scale(self, value: float) -> None:
        if value < 0:
            raise ValueError("radius_scale must be >= 0")
        self.config.radius_scale = float(value)

    def knobs(self) -> dict[str, float]:
        """Inference-time knobs: ``radius_scale`` (multiplies every radius)."""
        return {"radius_scale": float(self.config.radius_scale)}

    def set_knob(self, name: str, value: float) -> None:
        if name != "radius_scale":
            super().set_knob(name, value)
        self.radius_scale = value

    def export_config(self) -> CodebookConfig:
        return dataclasses.replace(self.config, n_entries=self.n_entries, entries=[dict(e) for e in self.config.entries])

    # ------------------------------------------------------------ geometry
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw representations (..., d) -> the space keys live in (unit vectors for cosine)."""
        x = x.float()
        if self.config.normalize != "none":
            x = x - self.stat_mean
        if self.config.normalize == "standardize":
            x = x / self.stat_std
        if self.config.distance == "cosine":
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return x

    def distances(self, q: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """(..., d) normalised queries x (N, d) keys -> (..., N) distances (one matmul)."""
        k = self.keys if keys is None else keys
        dots = q @ k.transpose(0, 1)
        if self.config.distance == "cosine":
            return (1.0 - dots).clamp_min(0.0)
        sq = q.pow(2).sum(-1, keepdim=True) + k.pow(2).sum(-1) - 2.0 * dots
        return sq.clamp_min(0.0).sqrt()

    def _nearest(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest key of each query (..., d): (distance (...), index (...)). Dispatches to the
        exact search or, with ``index`` 'projected' (or 'auto' and many entries), the two-stage one."""
        if self.uses_projected_index():
            return self._nearest_projected(q)
        return self._nearest_exact(q)

    def _nearest_exact(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact search, reducing over the keys before any element-wise work so only the matmul
        and one max/min touch (..., N)."""
        k = self.keys
        if self.config.distance == "cosine":
            best, idx = (q @ k.transpose(0, 1)).max(dim=-1)
            return (1.0 - best).clamp_min(0.0), idx
        # |q - k|^2 = |q|^2 + (|k|^2 - 2 q.k): minimise the bracket, add |q|^2 after
        part = torch.addmm(k.pow(2).sum(-1), q.reshape(-1, q.shape[-1]), k.transpose(0, 1), alpha=-2.0)
        best, idx = part.min(dim=-1)
        best = (best.reshape(q.shape[:-1]) + q.pow(2).sum(-1)).clamp_min(0.0).sqrt()
        return best, idx.reshape(q.shape[:-1])

    def uses_projected_index(self) -> bool:
        cfg = self.config
        n = self.n_entries
        if cfg.index == "exact" or n <= cfg.index_candidates:
            return False
        return cfg.index == "projected" or n >= cfg.index_min_entries

    def _index_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(basis V (d, m), projected keys (m, N), squared key norms (N,)): V spans the top principal directions of the
        keys (uncentred SVD), refreshed when the codebook has grown by a quarter since it was
        built (or lost entries); the projected keys follow every change of the keys. Built on
        the host side between forwards, from Python-side tensor versions (no device sync)."""
        k = self.keys
        key = (k._version, k.data_ptr(), k.shape[0], k.device, k.dtype)
        cache = getattr(self, "_index_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1], cache[2], cache[4]
        m = min(self.config.index_dim, k.shape[1], k.shape[0])
        basis = cache[1] if cache is not None else None
        built_n = cache[3] if cache is not None else 0
        if basis is None or basis.shape[1] != m or k.shape[0] > 1.25 * built_n or k.shape[0] < built_n or basis.device != k.device:
            with torch.no_grad():
                vh = torch.linalg.svd(k.float(), full_matrices=False).Vh[:m]
            basis, built_n = vh.transpose(0, 1).contiguous().to(k.dtype), k.shape[0]
        with torch.no_grad():
            kp = (k @ basis).transpose(0, 1).contiguous()
            ksq = k.pow(2).sum(-1)
        self._index_cache = (key, basis, kp, built_n, ksq)
        return basis, kp, ksq

    def _nearest_projected(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-stage search: ``index_candidates`` keys per query from the scores in the keys'
        principal subspace, then exact distances among those. Equal to the exact search when
        the true nearest key is among the candidates (always for keys that lie in the subspace;
        measured recall on real keys is in the codebook benchmark)."""
        basis, kp, ksq = self._index_tensors()
        c = min(self.config.index_candidates, self.n_entries)
        qp = q @ basis
        score = qp @ kp
        if self.config.distance == "euclidean":  # rank by 2 q.k - |k|^2 (|q|^2 is common)
            score = 2.0 * score - ksq
        cand = score.topk(c, dim=-1).indices  # (..., c)
        kc = self.keys[cand]  # (..., c, d)
        dots = (kc @ q.unsqueeze(-1)).squeeze(-1)
        if self.config.distance == "cosine":
            best, j = dots.max(dim=-1)
            dist = (1.0 - best).clamp_min(0.0)
        else:
            sq = (q.pow(2).sum(-1, keepdim=True) + kc.pow(2).sum(-1) - 2.0 * dots).clamp_min(0.0)
            best, j = sq.min(dim=-1)
            dist = best.sqrt()
        return dist, cand.gather(-1, j.unsqueeze(-1)).squeeze(-1)

    # ------------------------------------------------------------ lookup
    def _query_masks(self, mask: torch.Tensor, ctx: Any, device) -> torch.Tensor:
        rule = self.config.key_positions
        if ctx is None:
            return mask
        if rule == "subject":
            return ctx.mask(Positions.PROMPT, device) & ~_first_token(ctx, device)
        if rule == "prompt":
            return ctx.mask(Positions.PROMPT, device)
        if rule == "last_prompt":
            return ctx.mask(Positions.LAST_PROMPT, device)
        try:
            return ctx.mask(Positions.SUBJECT, device)
        except ValueError:  # no subject span in this forward: no row can fire
            return torch.zeros_like(mask)

    def lookup(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any = None, with_where: bool = False):
        """Per example: (nearest distance (B,), nearest entry (B,), whether a query exists (B,));
        with ``with_where`` also the (B, T) mask of the token(s) the query was read from."""
        qmask = self._query_masks(mask, ctx, h.device)
        if self.config.key_positions == "subject":  # scan: every prompt token is a candidate
            dt, it = self._nearest(self.normalize(h))  # (B, T): one matmul, one reduction over N
            dt = dt.masked_fill(~qmask, float("inf"))
            dmin, t = dt.min(dim=-1)
            idx = it.gather(1, t[:, None]).squeeze(1)
            where = torch.zeros_like(qmask).scatter_(1, t[:, None], True) & qmask
        else:
            w = qmask.unsqueeze(-1).float()
            q = (h.float() * w).sum(1) / w.sum(1).clamp_min(1.0)
            dmin, idx = self._nearest(self.normalize(q))
            where = qmask
        if with_where:
            return dmin, idx, qmask.any(dim=-1), where
        return dmin, idx, qmask.any(dim=-1)

    def _forced_where(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any, idx: torch.Tensor) -> torch.Tensor:
        """Training: the token(s) each row's own entry key is read from."""
        qmask = self._query_masks(mask, ctx, h.device)
        if self.config.key_positions != "subject":
            return qmask
        k = self.keys.index_select(0, idx)  # (B, d)
        q = self.normalize(h.detach())
        dots = (q * k[:, None, :]).sum(-1)
        if self.config.distance == "cosine":
            d = 1.0 - dots
        else:
            d = (q - k[:, None, :]).pow(2).sum(-1)
        t = d.masked_fill(~qmask, float("inf")).argmin(dim=-1)
        return torch.zeros_like(qmask).scatter_(1, t[:, None], True) & qmask

    def _select(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any):
        """(fire (B,), entry (B,), distance (B,), value mask (B, T)); the entry is held fixed
        over a generation's decoding steps."""
        key_values = self.config.value_positions == "key"
        sess = self._session
        if self.training and sess is not None and h.shape[0] == sess["rows"].shape[0]:
            idx = sess["rows"].to(h.device)
            ones = torch.ones(h.shape[0], dtype=torch.bool, device=h.device)
            vmask = self._forced_where(h, mask, ctx, idx) if key_values else mask
            return ones, idx, torch.zeros(h.shape[0], device=h.device), vmask
        state = ctx.state if ctx is not None else None
        key = ("codebook", id(self))
        if state is not None and not ctx.is_prefill and key in state:
            fire, idx, dmin = state[key]
            # decoding: key-position values already sit in the cache; attachment rules act as told
            return fire, idx, dmin, (torch.zeros_like(mask) if key_values else mask)
        dmin, idx, has, where = self.lookup(h, mask, ctx, with_where=True)
        fire = has & (dmin <= self.radii[idx] * self.config.radius_scale)
        out = (fire, idx, dmin, where if key_values else mask)
        if state is not None and ctx.is_prefill:
            state[key] = out[:3]
        if self._record is not None:
            self._record.append({"fire": fire.detach(), "entry": idx.detach(), "distance": dmin.detach(),
                                 "radius": (self.radii[idx] * self.config.radius_scale).detach(), "has_query": has.detach()})
        return out

    def _value_tensors(self):
        sess = self._session
        values = self.values
        u = getattr(self, "value_u", None)
        v = getattr(self, "value_v", None)
        if self.training and sess is not None:
            ent = sess["entries"].to(values.device)
            delta = sess["delta"] * self.config.value_scale
            if self.config.null_space:
                delta = self._project(delta)
            values = values.index_copy(0, ent, delta)
            if u is not None:
                u = u.index_copy(0, ent, sess["u"])
                v = v.index_copy(0, ent, sess["v"])
        return values, u, v

    def change(self, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        values, u, v = self._value_tensors()
        hf = h.float()
        out = values[idx].unsqueeze(1).expand_as(hf)
        if u is not None:
            out = out + (hf @ v[idx].transpose(1, 2)) @ u[idx].transpose(1, 2)
        return out

    def forward(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if self.n_entries == 0:
            return h
        fire, idx, _, vmask = self._select(h, mask, ctx)
        if self.training and h.dim() == 3:
            keep = trained_columns(ctx, h.shape[1], h.device)
            if keep is not None:
                vmask = vmask & keep
        sel = (vmask & fire[:, None]).unsqueeze(-1)
        new = (h.float() + self.change(h, idx)).to(h.dtype)
        return torch.where(sel, new, h)

    def firing_score(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        """Margin ``radius * radius_scale - distance`` of the nearest entry (> 0: fires)."""
        if self.n_entries == 0:
            return torch.full((h.shape[0],), -float("inf"), device=h.device)
        dmin, idx, has = self.lookup(h, mask, ctx)
        score = self.radii[idx] * self.config.radius_scale - dmin
        return torch.where(has, score, torch.full_like(score, -float("inf")))

    # ------------------------------------------------------------ entries
    def _resize_append(self, key_n: torch.Tensor, key_norm: float) -> int:
        dev = self.keys.device
        d, r = self.hidden_size, self.config.value_rank
        self.keys = torch.cat([self.keys, key_n.to(dev, self.keys.dtype)[None]])
        self.key_norms = torch.cat([self.key_norms, torch.tensor([key_norm], device=dev, dtype=self.key_norms.dtype)])
        for name in ("radii", "pos_dist", "neg_dist"):
            t = getattr(self, name)
            setattr(self, name, torch.cat([t, t.new_zeros(1)]))
        self.values = torch.cat([self.values, self.values.new_zeros(1, d)])
        if self.config.value == "lowrank":
            self.value_u = torch.cat([self.value_u, self.value_u.new_zeros(1, d, r)])
            self.value_v = torch.cat([self.value_v, self.value_v.new_zeros(1, r, d)])
        self.config.n_entries = self.n_entries
        return self.n_entries - 1

    def delete(self, index: int) -> dict:
        """Remove entry ``index``; returns its metadata."""
        n = self.n_entries
        if not -n <= index < n:
            raise IndexError(f"entry {index} out of range (codebook has {n})")
        index %= n
        keep = torch.tensor([i for i in range(n) if i != index], dtype=torch.long, device=self.keys.device)
        for name in _PER_ENTRY + (_LOWRANK if self.config.value == "lowrank" else ()):
            setattr(self, name, getattr(self, name).index_select(0, keep))
        meta = self.config.entries.pop(index) if index < len(self.config.entries) else {}
        self.config.n_entries = self.n_entries
        return meta

    def entries(self) -> list[dict]:
        """One dict per entry: request text, target, subject, key norm, radius, sample distances."""
        out = []
        radii = self.radii.tolist()
        norms = self.key_norms.tolist()
        dp, dn = self.pos_dist.tolist(), self.neg_dist.tolist()
        for i in range(self.n_entries):
            meta = self.config.entries[i] if i < len(self.config.entries) else {}
            out.append({"index": i, **{k: meta.get(k) for k in ("prompt", "target_new", "subject", "case_id")},
                        "key_norm": norms[i], "radius": radii[i], "effective_radius": radii[i] * self.config.radius_scale,
                        "d_pos": dp[i], "d_neg": dn[i], "flags": meta.get("flags", {})})
        return out

    # ------------------------------------------------------------ edit management (the contract)
    def list_edits(self) -> list[dict]:
        """The entries (:meth:`entries`): one edit each."""
        return self.entries()

    def delete_edit(self, index: int) -> dict:
        info = self.entries()[index] if -self.n_entries <= index < self.n_entries else None
        self.delete(index)  # raises the IndexError
        return info

    @torch.no_grad()
    def explain_edits(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any = None, threshold: float = 0.5) -> list[dict]:
        """The nearest entry for the first example: ``score`` = effective radius − distance
        (``fired`` when ≥ 0 and a query exists; ``threshold`` does not apply), ``token`` = the
        first token the query is read from."""
        if self.n_entries == 0:
            return []
        dmin, idx, has, where = self.lookup(h[:1], mask[:1], ctx, with_where=True)
        j, dist = int(idx[0]), float(dmin[0])
        radius = float(self.radii[j]) * self.config.radius_scale
        meta = self.config.entries[j] if j < len(self.config.entries) else {}
        token = int(where[0].nonzero()[0, 0]) if bool(where[0].any()) else None
        return [{"index": j, **{k: meta.get(k) for k in ("prompt", "subject", "target_new", "case_id")},
                 "score": radius - dist, "token": token, "distance": dist, "effective_radius": radius,
                 "fired": bool(has[0]) and dist <= radius}]

    def merge_edits(self, other: Intervention) -> "Codebook":
        """A new codebook with this one's entries, then ``other``'s (:func:`~repedit.methods.codebook.manage.merge`)."""
        from repedit.methods.codebook.manage import merge

        if not isinstance(other, Codebook):
            raise ValueError(f"cannot merge a codebook with a {type(other).__name__}")
        return merge(self, other)

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        proj = getattr(self, "_null_projector", None)
        if proj is None:  # built by _ensure_bank in prepare_edit, before any value is trained
            raise RuntimeError("codebook null-space projector missing: prepare_edit was not run")
        return delta @ proj.to(delta).T
