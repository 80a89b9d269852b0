"""BaFT's gates: the data-driven init, the logistic fit on fixed states, the gate loss
terms and the separation diagnostics.

Each new gate is a classifier of the unedited states at the site: positives are the
subject's last token, negatives everything in the edit's negative set; the fit minimises
softplus/hinge terms with margin ``gate_margin`` (docs/methods.md#baft).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["GatesMixin"]


class GatesMixin:
    """Gate init, fit and diagnostics of :class:`~repedit.methods.baft.BaFT`."""

    def _set_gate_center(self, corpus: torch.Tensor, fallback: torch.Tensor) -> None:
        """Fix μ and σ once, at the first edit: the coordinate-wise median and standard deviation
        of the corpus token states (else of the edit's negatives). Dividing by σ keeps the few
        'massive activation' coordinates of attention-sink tokens from dominating the gates."""
        bank = corpus if corpus.shape[0] else fallback
        if bank.shape[0]:
            with torch.no_grad():
                mu = bank.median(dim=0).values
                self.gate_center.copy_(mu.to(self.gate_center))
                if bank.shape[0] > 1:
                    sd = (bank - mu).pow(2).mean(0).sqrt()
                    if float(sd.mean()) > 0:
                        self.gate_scale.copy_(sd.clamp_min(1e-3 * float(sd.mean())).to(self.gate_scale))

    def _init_gates(self, pos: torch.Tensor, pos_owner: torch.Tensor, neg: torch.Tensor, reqs: list) -> None:
        cfg = self.config
        if cfg.gate == "constant":
            return
        k = cfg.gate_init_sharpness
        b = self.block
        with torch.no_grad():
            xneg = self._gate_input(neg) if neg.numel() else neg
            mu = xneg.mean(0) if xneg.shape[0] else torch.zeros(self.hidden_size, device=pos.device)
            for j in range(len(reqs)):
                xs = self._gate_input(pos[pos_owner == j])
                if xs.shape[0] == 0:
                    continue
                xp = xs.mean(0)
                v = xp - mu
                v = v / v.norm().clamp_min(1e-8)
                sp = float((xs @ v).min())
                sn = float((xneg @ v).max()) if xneg.shape[0] else float(mu @ v)
                if sn >= sp:  # not separable along v: put the boundary half-way to the mean
                    sn = float(mu @ v)
                thr = 0.5 * (sp + sn)
                # the margin is bounded below by a tenth of the mean gap, so a nearly
                # inseparable request cannot get a huge gate scale (logits ~1e9 that the fit
                # cannot move and that fire on every high-norm token)
                gap = float(xs.mean(0) @ v - mu @ v)
                scale = k / max(sp - thr, 0.1 * abs(gap), 1e-6)
                rows = slice(j * cfg.rank, (j + 1) * cfg.rank)
                b.gate[rows] = (scale * cfg.temperature) * v
                b.gate_bias[rows] = -scale * thr * cfg.temperature

    def _gate_logits(self, x: torch.Tensor, gate: torch.Tensor, gate_bias: torch.Tensor) -> torch.Tensor:
        return (self._gate_input(x) @ gate.T + gate_bias) / self.config.temperature

    def _fixed_gate_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate inputs of the edit's fixed negative and positive states, computed once per
        edit (the normalisation or projection is not redone at every fit step)."""
        st = self._train_state
        if "gate_in" not in st:
            with torch.no_grad():
                st["gate_in"] = tuple(self._gate_input(t) if t.shape[0] else t for t in (st["neg"], st["pos"]))
                if "hard" in st:
                    st["hard_in"] = self._gate_input(st["hard"])
        return st["gate_in"]

    def _gate_loss(self, gate: torch.Tensor, gate_bias: torch.Tensor, neg: torch.Tensor | None = None,
                   neg_weight: torch.Tensor | None = None, own: torch.Tensor | None = None) -> torch.Tensor | None:
        """Gate terms of the new bases on the fixed states: locality (softplus on negatives and
        on other requests' positives), keep-on (softplus(−z) on own positives) and the margin
        hinge (z ≥ +m on own positives, z ≤ −m on negatives).

        ``neg``/``neg_weight`` replace the negatives' mean by a weighted sum over a subset (the
        active-set fit); ``own`` replaces the (positive × basis) ownership mask."""
        cfg = self.config
        st = self._train_state
        terms = []
        all_neg, pos = self._fixed_gate_inputs()
        if neg is None:
            neg = all_neg
        m = cfg.gate_margin

        def off(x: torch.Tensor, weight: float = 1.0, row_w: torch.Tensor | None = None) -> None:
            z = (x @ gate.T + gate_bias) / cfg.temperature  # a group of negatives: gates off, below −m
            mean = (lambda t: t.mean()) if row_w is None else (lambda t: (t * row_w[:, None]).sum() / t.shape[1])
            if cfg.locality_weight > 0:
                terms.append(weight * cfg.locality_weight * mean(F.softplus(z)))
            if cfg.gate_margin_weight > 0:
                terms.append(weight * cfg.gate_margin_weight * mean(F.relu(z + m)))

        if neg.shape[0]:
            off(neg, row_w=neg_weight)
        if "hard_in" in st and cfg.variant_weight > 0:  # a group of its own: not drowned by easy negatives
            off(st["hard_in"], cfg.variant_weight)
        own = st.get("own") if own is None else own
        if pos.shape[0] and own is not None:
            z = (pos @ gate.T + gate_bias) / cfg.temperature
            own = own.to(z.dtype)
            other = 1 - own
            n_own = own.sum().clamp_min(1)
            if cfg.gate_positive_weight > 0:
                terms.append(cfg.gate_positive_weight * (F.softplus(-z) * own).sum() / n_own)
            if cfg.gate_margin_weight > 0:
                terms.append(cfg.gate_margin_weight * (F.relu(m - z) * own).sum() / n_own)
            if bool(other.any()):
                if cfg.locality_weight > 0:
                    terms.append(cfg.locality_weight * (F.softplus(z) * other).sum() / other.sum())
                if cfg.gate_margin_weight > 0:
                    terms.append(cfg.gate_margin_weight * (F.relu(z + m) * other).sum() / other.sum())
        return sum(terms) if terms else None

    def _fit_gates(self) -> None:
        """Fit the new gates as a classifier of the fixed states (positives vs negatives).

        The rows of one request start equal and get equal gradients, so one row per request is
        fitted and copied. With ``gate_fit="active"`` each Adam step sees only the negatives
        near the boundary (logit above −(margin + ``gate_fit_slack``) at the start) plus a
        reweighted random sample of the rest, an unbiased estimate of the full objective; after
        the fit every negative is checked and the violators join the active set for another
        round (at most ``gate_fit_rounds``). ``"full"`` uses every negative at every step."""
        cfg = self.config
        b = self.block
        r = cfg.rank
        uniq = slice(None, None, r)
        gate = b.gate.detach()[uniq].clone().requires_grad_(True)
        gbias = b.gate_bias.detach()[uniq].clone().requires_grad_(True)
        st = self._train_state
        own = st["own"][:, uniq] if "own" in st else None
        neg_all, _ = self._fixed_gate_inputs()
        # the gate fit is balanced: positives are few, so their terms weigh as much as all negatives
        saved = cfg.gate_positive_weight
        cfg.gate_positive_weight = max(saved, 1.0)
        try:
            if cfg.gate_fit != "active" or neg_all.shape[0] <= cfg.gate_fit_sample:
                self._adam_gate_fit(gate, gbias, None, None, own)
            else:
                def top_logit() -> torch.Tensor:  # each negative's highest gate logit
                    with torch.no_grad():
                        return (neg_all @ gate.T + gbias).max(1).values / cfg.temperature

                active = top_logit() > -(cfg.gate_margin + cfg.gate_fit_slack)
                gen = torch.Generator(device="cpu").manual_seed(int(neg_all.shape[0]))
                for _ in range(cfg.gate_fit_rounds):
                    neg, weight = self._active_subset(neg_all, active, gen)
                    self._adam_gate_fit(gate, gbias, neg, weight, own)
                    missed = (top_logit() > -cfg.gate_margin) & ~active
                    if not bool(missed.any()):  # one host sync per round, in training only
                        break
                    active |= missed
        finally:
            cfg.gate_positive_weight = saved
        with torch.no_grad():
            b.gate.copy_(gate.detach().repeat_interleave(r, 0))
            b.gate_bias.copy_(gbias.detach().repeat_interleave(r, 0))

    def _active_subset(self, neg_all: torch.Tensor, active: torch.Tensor,
                       gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The active negatives (weight 1/N each) and ``gate_fit_sample`` of the others drawn at
        random (weight N_rest/(sample·N) each): the weighted sum estimates the mean over all N."""
        n = neg_all.shape[0]
        hard = torch.nonzero(active).flatten()
        rest = torch.nonzero(~active).flatten()
        k = min(self.config.gate_fit_sample, rest.numel())
        pick = rest[torch.randperm(rest.numel(), generator=gen)[:k].to(rest.device)] if k else rest
        w_hard = torch.full((hard.numel(),), 1.0 / n, device=neg_all.device, dtype=neg_all.dtype)
        w_rest = torch.full((pick.numel(),), rest.numel() / max(k, 1) / n, device=neg_all.device, dtype=neg_all.dtype)
        return neg_all[torch.cat([hard, pick])], torch.cat([w_hard, w_rest])

    def _adam_gate_fit(self, gate: torch.Tensor, gbias: torch.Tensor, neg: torch.Tensor | None,
                       weight: torch.Tensor | None, own: torch.Tensor | None) -> None:
        """``gate_fit_steps`` Adam steps on :meth:`_gate_loss` (in place on ``gate``, ``gbias``)."""
        opt = torch.optim.Adam([gate, gbias], lr=self.config.gate_fit_lr)
        with torch.enable_grad():
            for _ in range(self.config.gate_fit_steps):
                loss = self._gate_loss(gate, gbias, neg, weight, own)
                if loss is None:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def gate_separation(self) -> dict:
        """(min own-positive logit, max negative logit) of the bases being trained."""
        st = self._train_state
        if self.block is None or not st:
            return {}
        with torch.no_grad():
            b = self.block
            neg, pos = self._fixed_gate_inputs()
            out = {}
            if pos.shape[0] and "own" in st:
                z = (pos @ b.gate.T + b.gate_bias) / self.config.temperature
                own = st["own"]
                out["pos_min"] = float(z[own].min()) if bool(own.any()) else float("inf")
                if bool((~own).any()):
                    out["other_max"] = float(z[~own].max())
            if neg.shape[0] or "hard_in" in st:
                hard = st.get("hard_in", neg[:0])
                out["neg_max"] = float(((torch.cat([neg, hard]) @ b.gate.T + b.gate_bias) / self.config.temperature).max())
        return out

