"""BaFT's edit management: each incremental edit owns ``num_bases`` consecutive bases (rows of
every frozen tensor) and its rows of the earlier-negatives bank, so it can be listed, deleted,
explained and merged on its own.

``config.edits`` holds one dict per edit, in base order (saved with the adapter). Bases of an
adapter saved before edits were recorded come first and count as edits of ``rank`` bases with
unknown text.

Example::

    module.list_edits()          # [{'index': 0, 'prompt': ..., 'bases': [0, 2], ...}, ...]
    module.delete_edit(1)        # its bases leave every frozen tensor (and its keys the null-space folds)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from repedit.methods.baft.negatives import subject_key

logger = logging.getLogger(__name__)

__all__ = ["EditsMixin", "MERGE_COMPATIBLE"]

#: config fields two BaFT modules must share to be merged
MERGE_COMPATIBLE = ("incremental", "rank", "temperature", "gate", "gate_input", "gate_shift", "nullspace",
                    "earlier_negatives")
_META = ("prompt", "subject", "target_new", "case_id")


class EditsMixin:
    """``list_edits``, ``delete_edit``, ``explain_edits`` and ``merge_edits`` of
    :class:`~repedit.methods.baft.BaFT` (see :class:`~repedit.methods.base.Intervention`)."""

    # ----------------------------------------------------------------- records
    def _check_incremental(self, what: str) -> None:
        if not self.config.incremental:
            raise NotImplementedError(f"BaFT with incremental=False trains one shared pool of bases, so it cannot {what}")
        if self.block is not None:
            raise RuntimeError(f"cannot {what} while an edit is being trained")

    def _edit_records(self) -> list[dict]:
        """One dict per frozen edit: the recorded ones, after a placeholder of ``rank`` bases
        for each edit saved before edits were recorded."""
        cfg = self.config
        recs = [dict(e) for e in cfg.edits]
        unknown = self.num_frozen - sum(int(e["num_bases"]) for e in recs)
        if unknown < 0 or unknown % cfg.rank:
            raise RuntimeError(f"BaFT holds {self.num_frozen} bases but its edit records cover "
                               f"{self.num_frozen - unknown}: the adapter's config and tensors disagree")
        return [{"num_bases": cfg.rank, "num_earlier": None} for _ in range(unknown // cfg.rank)] + recs

    def _record_edits(self, requests: list, num_new: int, owners: torch.Tensor | None) -> None:
        """Called by ``finish_edit`` once the ``num_new`` bases of ``requests`` are frozen;
        ``owners`` gives, per row added to the earlier-negatives bank, its request."""
        rank = self.config.rank
        recs = [dict(e) for e in self.config.edits]
        unknown = self.num_frozen - num_new - sum(int(e["num_bases"]) for e in recs)
        recs = [{"num_bases": rank, "num_earlier": None} for _ in range(max(unknown, 0) // rank)] + recs
        rows = [0] * len(requests)
        if owners is not None:
            rows = torch.bincount(owners.reshape(-1).cpu(), minlength=len(requests)).tolist()
        group = 1 + max((int(e["group"]) for e in recs if e.get("group") is not None), default=-1)
        for req, n in zip(requests, rows):
            recs.append({**{k: getattr(req, k, None) for k in _META}, "num_bases": num_new // len(requests),
                         "num_earlier": int(n), "group": group})
        self.config.edits = recs

    def _spans(self, recs: list[dict]) -> list[tuple[int, int]]:
        out, start = [], 0
        for e in recs:
            out.append((start, start + int(e["num_bases"])))
            start += int(e["num_bases"])
        return out

    def _check_index(self, index: int, n: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"an edit index is an int, got {index!r}")
        if not -n <= index < n:
            raise IndexError(f"edit {index} out of range: this BaFT holds {n} edit(s)" + (f" (0..{n - 1})" if n else ""))
        return index % n

    # ----------------------------------------------------------------- the contract
    def list_edits(self) -> list[dict]:
        self._check_incremental("list its edits")
        recs = self._edit_records()
        gb = self.gate_bias_frozen.tolist()
        out = []
        for i, (e, (s, t)) in enumerate(zip(recs, self._spans(recs))):
            gate = self.read_frozen[s:t].norm(dim=-1) if self.num_frozen else torch.zeros(0)
            out.append({"index": i, **{k: e.get(k) for k in _META}, "bases": [s, t], "num_earlier": e.get("num_earlier"),
                        "gate_norm": float(gate.max()) if gate.numel() else 0.0,
                        "gate_bias": max(gb[s:t]) if t > s else 0.0})
        return out

    def _earlier_rows(self, recs: list[dict], index: int) -> torch.Tensor | None:
        """The bank rows of edit ``index`` (a bool mask), or None where they cannot be told apart."""
        if not hasattr(self, "earlier_states"):
            return None
        counts = [e.get("num_earlier") for e in recs]
        lead = 0
        while lead < len(counts) and counts[lead] is None:  # edits saved before records: their rows come first
            lead += 1
        if index < lead or any(c is None for c in counts[lead:]):
            return None
        start = self.earlier_states.shape[0] - sum(counts[lead:])
        if start < 0:
            return None
        group = recs[index].get("group")
        lo = index
        while lo > lead and group is not None and recs[lo - 1].get("group") == group:
            lo -= 1
        hi = index + 1
        while hi < len(recs) and group is not None and recs[hi].get("group") == group:
            hi += 1
        g0 = start + sum(counts[lead:lo])
        g1 = g0 + sum(counts[lo:hi])
        keep = torch.zeros(self.earlier_states.shape[0], dtype=torch.bool)
        if hi - lo == 1:
            keep[g0:g1] = True
            return keep
        # edits trained together interleave their rows: tell them apart by subject
        key = subject_key(recs[index].get("subject"))
        mine = self.earlier_subject[g0:g1].cpu() == key
        if int(mine.sum()) != counts[index]:
            return None
        keep[g0:g1] = mine
        return keep

    def _keep_fold(self, keys: torch.Tensor, owners: torch.Tensor, n: int) -> None:
        """Called by ``finish_edit`` after the last ``n`` recorded edits folded ``keys`` (rows
        owned by ``owners``) out of the null space: keep them, grouped by edit, in the history."""
        if not hasattr(self, "fold_keys"):
            return
        own = owners.reshape(-1).cpu()
        order = torch.argsort(own, stable=True).to(keys.device)
        self.fold_keys = torch.cat([self.fold_keys, keys.detach()[order].to(self.fold_keys)], 0)
        recs = self.config.edits
        for rec, c in zip(recs[len(recs) - n :], torch.bincount(own, minlength=n).tolist()):
            rec["num_fold"] = int(c)

    def _unfold(self, recs: list[dict], index: int) -> int:
        """Drop edit ``index``'s folded keys and rebuild the null space from P as built, folding
        the other edits' keys out again; returns the rows dropped."""
        from repedit.methods.nullspace import deflate

        counts = [int(e.get("num_fold") or 0) for e in recs]
        start, n = sum(counts[:index]), counts[index]
        if n == 0:
            return 0
        keep = torch.cat([self.fold_keys[:start], self.fold_keys[start + n :]], 0)
        self.fold_keys = keep
        P, _ = deflate(self.projector_base.cpu(), keep.cpu()) if keep.shape[0] else (self.projector_base.cpu(), 0)
        self.projector.copy_(P.to(self.projector))
        return n

    def delete_edit(self, index: int) -> dict:
        self._check_incremental("delete an edit")
        recs = self._edit_records()
        index = self._check_index(index, len(recs))
        info = self.list_edits()[index]
        s, t = self._spans(recs)[index]
        n = self.num_frozen
        dev = self.write_frozen.device
        keep = torch.tensor([i for i in range(n) if not s <= i < t], dtype=torch.long, device=dev)
        rows = torch.cat([keep, keep + n, keep + 2 * n])
        with torch.no_grad():
            self.read_frozen = self.read_frozen.index_select(0, rows)
            for name in ("write_frozen", "bias_frozen", "gate_bias_frozen", "usage"):
                setattr(self, name, getattr(self, name).index_select(0, keep.to(getattr(self, name).device)))
            bank = self._earlier_rows(recs, index)
            info["earlier_rows_removed"] = 0 if bank is None else int(bank.sum())
            if bank is not None:
                left = (~bank).nonzero().squeeze(1)
                self.earlier_states = self.earlier_states.index_select(0, left.to(self.earlier_states.device))
                self.earlier_subject = self.earlier_subject.index_select(0, left.to(self.earlier_subject.device))
            elif hasattr(self, "earlier_states") and self.earlier_states.shape[0]:
                logger.warning("edit %d: its rows of the earlier-negatives bank cannot be told apart; the bank is kept", index)
        if hasattr(self, "fold_keys"):
            info["fold_rows_removed"] = self._unfold(recs, index)
        elif self.config.nullspace == "read" and self.config.nullspace_fold_edits:
            logger.warning("edit %d deleted; this adapter has no fold history, so its keys stay folded out of the "
                           "null space (later edits cannot read along them; the remaining edits are unchanged)", index)
        del recs[index]
        self.config.edits = recs if self.config.edits else []  # an adapter without records keeps none
        self.config.num_bases = self.num_frozen
        if hasattr(self, "earlier_states"):
            self.config.num_earlier = self.earlier_states.shape[0]
        self._cache = None
        self._cache_key = None
        logger.info("deleted BaFT edit %d (bases %d..%d)", index, s, t)
        return info

    @torch.no_grad()
    def explain_edits(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any = None, threshold: float = 0.5) -> list[dict]:
        """Per edit: ``score`` = the largest gate weight of its bases over the masked tokens of
        the first example (with the inference ``gate_shift``), at ``token``; ``fired`` when
        ``score >= threshold``."""
        self._check_incremental("explain its edits")
        recs = self._edit_records()
        if not recs:
            return []
        w = self.weights(h[:1])[0].float()  # (T, N)
        sizes = torch.tensor([int(e["num_bases"]) for e in recs], device=w.device)
        owner = torch.repeat_interleave(torch.arange(len(recs), device=w.device), sizes)
        w = w.masked_fill(~mask[0, :, None].to(w.device), -1.0)
        per = torch.full((w.shape[0], len(recs)), -1.0, device=w.device)
        per = per.scatter_reduce(1, owner.expand(w.shape[0], -1), w, reduce="amax")  # (T, edits)
        best, where = per.max(dim=0)
        out = []
        for i, (e, b, t) in enumerate(zip(recs, best.tolist(), where.tolist())):
            score = b if b >= 0 else None
            out.append({"index": i, **{k: e.get(k) for k in _META}, "score": score, "token": t if score is not None else None,
                        "fired": score is not None and score >= threshold})
        return out

    def merge_edits(self, other: Any) -> Any:
        """A new BaFT with this module's edits, then ``other``'s (the bases, the bank and the
        records concatenated). Both must share :data:`MERGE_COMPATIBLE`, the gate
        normalisation (centre, scale) and the null-space projector."""
        if type(other) is not type(self):
            raise ValueError(f"cannot merge a BaFT with a {type(other).__name__}")
        self._check_incremental("merge edits")
        other._check_incremental("merge edits")
        if self.hidden_size != other.hidden_size:
            raise ValueError(f"cannot merge BaFTs of hidden sizes {self.hidden_size} and {other.hidden_size}")
        for f in MERGE_COMPATIBLE:
            a, b = getattr(self.config, f), getattr(other.config, f)
            if a != b:
                raise ValueError(f"cannot merge BaFTs with different {f}: {a!r} vs {b!r}")
        both = self.num_frozen and other.num_frozen
        for buf, what in (("gate_center", "gate normalisation centre"), ("gate_scale", "gate normalisation scale"),
                          ("projector", "null-space projector")):
            if hasattr(self, buf) and (both or buf == "projector"):
                a, b = getattr(self, buf), getattr(other, buf).to(getattr(self, buf))
                if not torch.allclose(a, b, atol=1e-5, rtol=1e-5):
                    raise ValueError(f"cannot merge BaFTs with different {what}s (another model, layer or corpus)")
        recs_a, recs_b = self._edit_records(), other._edit_records()
        shift = 1 + max((int(e["group"]) for e in recs_a if e.get("group") is not None), default=-1)
        recs_b = [{**e, "group": e["group"] + shift} if e.get("group") is not None else e for e in recs_b]
        na, nb = self.num_frozen, other.num_frozen
        history = hasattr(self, "fold_keys") and hasattr(other, "fold_keys")
        if history and not torch.allclose(self.projector_base, other.projector_base.to(self.projector_base),
                                          atol=1e-5, rtol=1e-5):
            raise ValueError("cannot merge BaFTs whose null spaces were built differently (another model, layer or corpus)")
        cfg = dataclasses.replace(self.config, num_bases=0, edits=recs_a + recs_b, num_earlier=0,
                                  num_fold=0 if history else -1)
        out = type(self)(cfg, self.hidden_size).to(device=self.write_frozen.device, dtype=self.write_frozen.dtype)
        ra, rb = self.read_frozen, other.read_frozen.to(self.read_frozen)
        with torch.no_grad():
            out.read_frozen = torch.cat([ra[:na], rb[:nb], ra[na : 2 * na], rb[nb : 2 * nb], ra[2 * na :], rb[2 * nb :]])
            for name in ("write_frozen", "bias_frozen", "gate_bias_frozen", "usage", "earlier_states", "earlier_subject"):
                if hasattr(self, name):
                    a = getattr(self, name)
                    setattr(out, name, torch.cat([a, getattr(other, name).to(a)]))
            src = self if na or not nb else other
            for name in ("gate_center", "gate_scale", "projector"):
                if hasattr(self, name):
                    getattr(out, name).copy_(getattr(src, name))
            if history:
                out.projector_base.copy_(self.projector_base)
                out.fold_keys = torch.cat([self.fold_keys, other.fold_keys.to(self.fold_keys)])
        out.config.num_bases = out.num_frozen
        out.config.num_earlier = out.earlier_states.shape[0] if hasattr(out, "earlier_states") else 0
        out.config.nullspace_built = self.config.nullspace_built or other.config.nullspace_built
        return out
