"""BaFT's part of the method contract: prepare an edit (null space, gate data, new bases,
gate fit), the trained parameters, the extra loss terms, the early-stop veto and folding
the finished bases into the frozen buffers.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from repedit.methods.baft import negatives
from repedit.methods.baft.negatives import _last_logprobs, subject_key
from repedit.requests import normalize_text

logger = logging.getLogger(__name__)

__all__ = ["TrainingMixin"]


class TrainingMixin:
    """Training hooks of :class:`~repedit.methods.baft.BaFT` (see
    :class:`~repedit.methods.base.Intervention`)."""

    # ----------------------------------------------------------------- null space
    def build_nullspace(self, editor: Any, attachment: Any, texts: list[str] | None = None) -> dict:
        """Build ``P`` from ``texts`` (default: the configured corpus) at this module's site.
        ``editor`` is an :class:`~repedit.methods.base.EditSession` or the Editor (what it
        uses: ``corpus_from``, ``cached``, ``capture``, ``tokenizer``, ``device``)."""
        from repedit.methods import nullspace as ns

        cfg = self.config
        if texts is None:
            corpus = cfg.nullspace_corpus
            if isinstance(corpus, (list, tuple)):
                texts = list(corpus)
            else:
                texts = editor.corpus_from(corpus).sentences(limit=cfg.nullspace_texts)
            if not texts:
                raise ValueError("the null space needs corpus texts, and the corpus gave none; pass "
                                 "nullspace_corpus=[...] or a path, or EditorConfig(corpus=...)")
        moment, info = ns.cached_second_moment(editor, attachment, texts)
        P, pinfo = ns.null_space_projector(moment, cfg.nullspace_threshold, cfg.nullspace_threshold_mode)
        with torch.no_grad():
            self.projector.copy_(P.to(self.projector))
            if cfg.nullspace == "read" and cfg.incremental:  # a fresh P: the fold history starts here
                cfg.num_fold = 0
                self.register_buffer("projector_base", self.projector.detach().clone())
                self.register_buffer("fold_keys", self.projector.new_zeros(0, self.projector.shape[0]))
        cfg.nullspace_built = True
        info.update(pinfo)
        self.nullspace_info = info
        logger.info("null space at layer %s: dim %d, energy %.2e", attachment.layer, pinfo["dim"], pinfo["energy_fraction"])
        return info

    # ----------------------------------------------------------------- editing hooks
    def _attachment(self, session: Any):
        return session.attachment_of(self)

    def prepare_edit(self, session: Any) -> None:
        cfg = self.config
        att = self._attachment(session)
        if cfg.nullspace != "none" and not cfg.nullspace_built:
            self.build_nullspace(session, att)
        rng = random.Random(1000003 * (session.indices[0] if session.indices else 0) + (cfg.seed or 0))
        reqs = session.requests
        prompts = list(getattr(session, "prompts", [r.prompt for r in reqs]))
        owners = list(getattr(session, "owners", range(len(reqs))))
        multi = att.positions.value in ("prompt", "all")
        subject_mode = cfg.trigger == "subject" and multi
        negs = []
        if subject_mode:
            # positives: the subject's last token of every training prompt and of the subject in
            # other relation templates; negatives: every other token of those prompts
            tp, to = self._template_prompts(session, rng)
            all_prompts, all_owners = prompts + tp, owners + to
            pos, in_neg = self._subject_tokens(session, att, all_prompts, [reqs[o].subject for o in all_owners])
            pos_owner = torch.tensor(all_owners, device=pos.device)
            negs.append(in_neg)
        else:
            pos_h, pos_mask = session.site_states(att, prompts, [reqs[o].subject for o in owners])
            pos = pos_h[pos_mask].float()
            pos_owner = torch.tensor(owners, device=pos_h.device)[:, None].expand_as(pos_mask)[pos_mask]
        subjects = {r.subject for r in reqs if r.subject}
        neg_prompts = [p for p in self._negative_prompts(session, rng) if not any(s in p for s in subjects)]
        if neg_prompts:
            nh, nmask = session.site_states(att, neg_prompts)
            if att.positions.value in ("subject",) or subject_mode:
                nmask = session.encode(neg_prompts).attention_mask.bool()
            negs.append(nh[nmask].float())
        corpus_neg = self._corpus_negatives(session, att)
        negs.append(corpus_neg)
        own = {s.casefold() for s in subjects}  # the requests' own subjects are never negatives
        if subject_mode and cfg.num_subject_negatives > 0:
            names, states = self._subject_bank(session, att)
            keep = torch.tensor([n.casefold() not in own for n in names], dtype=torch.bool, device=states.device)
            negs.append(states[keep])
        hard = None
        if subject_mode and cfg.subject_variants > 0 and cfg.variant_weight > 0:
            hard = self._subject_variants(session, att, rng)
        if cfg.incremental and cfg.earlier_negatives and self.earlier_states.shape[0]:
            mine = torch.tensor([subject_key(s) for s in own], dtype=torch.long, device=self.earlier_subject.device)
            keep = ~torch.isin(self.earlier_subject, mine)
            negs.append(self.earlier_states[keep].to(device=pos.device, dtype=pos.dtype))
        neg = torch.cat(negs, 0) if negs else torch.zeros(0, self.hidden_size)
        if self._normalized and not bool(self.gate_center.any()):
            self._set_gate_center(corpus_neg, neg)
        st = {"pos": pos, "pos_owner": pos_owner, "neg": neg, "neg_prompts": neg_prompts}
        if hard is not None and hard.shape[0]:
            st["hard"] = hard.to(device=pos.device, dtype=pos.dtype)
        if cfg.incremental:
            m = cfg.rank * len(reqs)
            # each edit's initial bases depend on the seed and on how many bases exist, not on
            # the history of one generator, so a run resumed from a saved adapter is identical
            gen = torch.Generator().manual_seed(cfg.seed * 1000003 + self.num_frozen) if cfg.seed is not None else None
            self.block = self._new_block(self.hidden_size, m, gen).to(device=self.read_frozen.device, dtype=self.read_frozen.dtype)
            # own[t, i]: positive token t belongs to the request that basis i serves
            basis_owner = torch.arange(m, device=pos.device) // cfg.rank
            st["own"] = pos_owner[:, None] == basis_owner[None, :]
            self._train_state = st
            self._init_gates(pos, pos_owner, neg, reqs)
            if cfg.gate == "sigmoid" and cfg.gate_fit_steps > 0:
                self._fit_gates()
        if cfg.kl_weight > 0 and neg_prompts:
            st["kl"] = negatives._kl_reference(session, neg_prompts[:8], cfg.kl_weight)
        if cfg.essence_weight > 0:
            essence = []
            for r in reqs:
                banned = r.evaluation_prompts() | {normalize_text(r.prompt)}
                essence += [t.replace("{}", r.subject, 1) for t in cfg.essence_templates
                            if r.subject and normalize_text(t.replace("{}", r.subject, 1)) not in banned]
            if essence:
                st["essence"] = negatives._kl_reference(session, essence, cfg.essence_weight)
        self._train_state = st

    def training_start(self, session: Any) -> torch.Tensor | None:
        """Subject trigger, incremental: the edit's gates are fitted to fire at the subject's
        last token (the last prompt token where the subject is missing) and nowhere before
        it, so in training its new bases write only from that token on; the Editor then
        computes the tokens before it once per edit."""
        from repedit.positions import last_true_index

        cfg = self.config
        att = self._attachment(session)
        if self.block is None or not cfg.incremental or cfg.trigger != "subject" or att.positions.value not in ("prompt", "all"):
            return None
        b = session.batch
        prompt = b.prompt_mask & b.attention_mask.bool()
        return torch.where(b.subject_mask.any(1), last_true_index(b.subject_mask), last_true_index(prompt))

    def ready_to_stop(self, session: Any) -> bool:
        """Editor hook: veto the early stop while the trained gates do not yet separate their
        own positives (logit > 0) from every negative (logit < 0). Host-side, between steps."""
        cfg = self.config
        if not (cfg.stop_on_gates and cfg.train_gates and cfg.gate == "sigmoid" and cfg.incremental):
            return True
        sep = self.gate_separation()
        return sep.get("pos_min", 1.0) > 0 and max(sep.get("neg_max", -1.0), sep.get("other_max", -1.0)) < 0

    def edit_parameters(self, session: Any) -> list[nn.Parameter]:
        if self.block is None:
            return []
        b = self.block
        if self.config.incremental and not self.config.train_gates:
            b.gate.requires_grad_(False)
            b.gate_bias.requires_grad_(False)
            return [p for n, p in b.named_parameters() if n not in ("gate", "gate_bias")]
        return list(b.parameters())

    def edit_loss(self, session: Any, outputs: Any) -> torch.Tensor | None:
        cfg = self.config
        st = self._train_state
        if self.block is None or not st:
            return None
        terms = []
        if cfg.gate == "sigmoid":
            read, write, bias, gbias = self._block_mats()
            m = write.shape[0]
            if cfg.incremental:
                if cfg.train_gates:
                    term = self._gate_loss(self.block.gate, self.block.gate_bias)
                    if term is not None:
                        terms.append(term)
            else:
                neg, pos = self._fixed_gate_inputs()
                if cfg.locality_weight > 0 and neg.shape[0]:
                    logits = (neg @ read[:m].T + gbias) / cfg.temperature
                    terms.append(cfg.locality_weight * F.softplus(logits).mean())
                if pos.shape[0] and cfg.balance_weight > 0:
                    plog = (pos @ read[:m].T + gbias) / cfg.temperature
                    # Switch-style m·Σ p̂_i q_i with p̂ the current share of gate mass per basis
                    # (scale-free: it moves mass between bases, it does not shut gates) and q
                    # the cumulative share including earlier edits' usage.
                    p = torch.sigmoid(plog).mean(0)
                    p_hat = p / p.sum().clamp_min(1e-8)
                    past = self.usage if self.usage.shape[0] == m else torch.zeros_like(p)
                    q = (past + p_hat.detach()) / (past.sum() + 1.0)
                    terms.append(cfg.balance_weight * m * (p_hat * q).sum())
        for key in ("kl", "essence"):
            if key in st:
                batch, base, weight = st[key]
                terms.append(weight * F.kl_div(_last_logprobs(session, batch), base, log_target=True, reduction="batchmean"))
        return sum(terms) if terms else None

    def finish_edit(self, session: Any, outcomes: list) -> None:
        cfg = self.config
        st = self._train_state
        self._train_state = {}
        if self.block is None:
            return
        if not cfg.incremental:
            if cfg.gate == "sigmoid" and st and st["pos"].numel():
                with torch.no_grad():
                    w = self.weights(st["pos"]).mean(0)
                    if self.usage.shape[0] != w.shape[0]:
                        self.usage = torch.zeros_like(w)
                    self.usage += w / w.sum().clamp_min(1e-8)
            return
        with torch.no_grad():
            read, write, bias, gbias = (t.detach().clone() for t in self._block_mats())
            m = write.shape[0]
            n = self.num_frozen
            rf = self.read_frozen
            self.read_frozen = torch.cat([rf[:n], read[:m], rf[n : 2 * n], read[m : 2 * m], rf[2 * n :], read[2 * m :]], 0)
            self.write_frozen = torch.cat([self.write_frozen, write], 0)
            self.bias_frozen = torch.cat([self.bias_frozen, bias], 0)
            self.gate_bias_frozen = torch.cat([self.gate_bias_frozen, gbias], 0)
            self.usage = torch.cat([self.usage, torch.ones(m, device=self.usage.device)], 0)
            banked = cfg.earlier_negatives and st and st["pos"].numel()
            self._record_edits(session.requests, m, st["pos_owner"] if banked else None)
            if banked:
                keys = torch.tensor([subject_key(r.subject) for r in session.requests], dtype=torch.long,
                                    device=st["pos_owner"].device)
                rows = st["pos"].detach().to(self.earlier_states)  # float16
                self.earlier_states = torch.cat([self.earlier_states, rows], 0)
                self.earlier_subject = torch.cat([self.earlier_subject, keys[st["pos_owner"]].to(self.earlier_subject.device)], 0)
            if cfg.nullspace == "read" and cfg.nullspace_fold_edits and st:
                from repedit.methods.nullspace import deflate

                keys = st["pos"]
                dim = int(torch.trace(self.projector).round())
                if dim - keys.shape[0] >= cfg.nullspace_min_dim:
                    P, _ = deflate(self.projector.cpu(), keys.cpu())
                    self.projector.copy_(P.to(self.projector))
                    self._keep_fold(keys, st["pos_owner"], len(session.requests))
                elif not self._fold_warned:
                    self._fold_warned = True
                    logger.warning("null space down to %d dims: later edits' keys are no longer folded in", dim)
        self.block = None
        self._cache = None
        self.config.num_bases = self.num_frozen

