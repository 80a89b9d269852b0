"""The codebook's part of the method contract: the corpus bank and statistics, a new entry
per request with its BalancEdit radius (or GRACE's insertion rule), the trained values, and
flags on each outcome.

The radius of an entry is ``eps = (1 − alpha) · d_neg + alpha · d_pos`` from its own positive
and negative samples (:func:`repedit.methods.codebook.radius.place_radius`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repedit.methods.codebook import radius as R
from repedit.methods.codebook import samples as S
from repedit.positions import length_chunks

logger = logging.getLogger(__name__)

__all__ = ["TrainingMixin"]


class TrainingMixin:
    """Training hooks of :class:`~repedit.methods.codebook.Codebook`."""

    def _attachment(self, session):
        return session.attachment_of(self)

    def _hidden(self, session, att, prompts, subjects):
        return list(R.site_hidden(session.edited, att.layer, att.component, session.tokenizer, prompts, subjects))

    def _corpus(self, session) -> Any:
        """``corpus_path`` if set, else the editor's corpus (a :class:`repedit.corpus.Corpus`)."""
        path = self.config.corpus_path
        if path is None:
            return session.corpus
        if getattr(self, "_own_corpus", None) is None or self._own_corpus.source != str(Path(path).expanduser()):
            self._own_corpus = session.corpus_from(path)
        return self._own_corpus

    def _names(self, session) -> tuple[str, ...]:
        """Other-subject names: the known-facts file's subjects if set, else corpus names."""
        cfg = self.config
        names = S.known_subjects(cfg.known_facts_path) if cfg.known_facts_path else tuple(
            session.corpus.names(cfg.num_names) if cfg.num_names > 0 else ())
        if not names and not getattr(self, "_names_warned", False) and (cfg.known_facts_path or cfg.num_names > 0):
            self._names_warned = True
            logger.warning("no entity names for other-subject negatives (from %s): radii rest on the requests' "
                           "own relations and the corpus only", cfg.known_facts_path or session.corpus)
        return names

    def _ensure_bank(self, session, att) -> None:
        """Corpus statistics (first use) and the nearest-neighbour negative bank (cached per
        module, and for one site across modules in ``session.edited.memory``, so single
        edits in a loop, each on a fresh codebook, capture the corpus once)."""
        if self._bank is not None:
            return
        cfg = self.config
        corpus = self._corpus(session)
        key = (id(session.edited.model), att.layer, att.component, str(session.device), corpus.sha256,
               cfg.corpus_sentences, cfg.key_positions, cfg.normalize, cfg.null_space, cfg.null_space_threshold)
        banks = session.edited.memory("codebook_bank")
        hit = banks.get(key)
        if hit is not None and (not cfg.has_stats or (torch.equal(self.stat_mean, hit["stat_mean"].to(self.stat_mean))
                                                      and torch.equal(self.stat_std, hit["stat_std"].to(self.stat_std)))):
            if not cfg.has_stats:
                with torch.no_grad():
                    self.stat_mean.copy_(hit["stat_mean"])
                    self.stat_std.copy_(hit["stat_std"])
                cfg.has_stats = True
            if "projector" in hit:
                self._null_projector = hit["projector"]
            self._bank = hit["bank"]
            return
        sents = corpus.spread_sentences(cfg.corpus_sentences)
        if cfg.corpus_sentences > 0 and not sents:
            logger.warning("the corpus %s has no sentences of 6+ words: the codebook's statistics come from the "
                           "requests' prompts and its radii have no corpus negatives (locality may drop); pass a "
                           "corpus (corpus_path or EditorConfig(corpus=...)), or corpus_sentences=0", corpus)
        bank: dict = {"sentences": sents, "vecs": None, "sent_id": None}
        if not sents:
            sents_for_stats = [r.prompt for r in session.all_requests][:256]
        else:
            sents_for_stats = sents
        states = self._corpus_states(session, att, corpus, sents) if sents else self._states(session, att, sents_for_stats)
        allh = states["h"]
        own_stats = not cfg.has_stats
        if not cfg.has_stats:
            with torch.no_grad():
                self.stat_mean.copy_(allh.mean(0).to(self.stat_mean))
                self.stat_std.copy_(allh.std(0).clamp_min(1e-4).to(self.stat_std))
            cfg.has_stats = True
        if cfg.null_space:  # values will be projected onto the low-energy directions of the corpus states
            from repedit.methods.nullspace import null_space_projector

            moment = (allh.T @ allh) / max(1, allh.shape[0])
            self._null_projector, info = null_space_projector(moment, cfg.null_space_threshold, "energy")
            bank["null_space"] = info
        if sents:
            if cfg.key_positions == "subject":
                bank["vecs"] = self.normalize(allh)
                bank["sent_id"] = states["sent_id"]
            else:
                bank["vecs"] = self.normalize(states["pooled"])
                bank["sent_id"] = torch.arange(len(sents), device=bank["vecs"].device)
        self._bank = bank
        if not own_stats or not sents:  # cache only banks of a corpus, with statistics computed from it
            return
        banks.clear()  # one site at a time
        banks[key] = {"bank": bank, "stat_mean": self.stat_mean.detach().clone(),
                            "stat_std": self.stat_std.detach().clone()}
        if cfg.null_space:
            banks[key]["projector"] = self._null_projector

    def _states(self, session, att, sents: list[str]) -> dict[str, torch.Tensor]:
        """Every token's state at the site for ``sents`` but each first token (``h``), the
        sentence of each row (``sent_id``) and, for pooled keys, one pooled key per sentence."""
        cfg = self.config
        rule = {"subject": None, "subject_mean": "prompt"}.get(cfg.key_positions, cfg.key_positions)
        rows: list[Any] = [None] * len(sents)
        pooled: list[Any] = [None] * len(sents)
        for idx in length_chunks(session.tokenizer, sents, 32):  # similar lengths pad little
            h, pm, sm = self._hidden(session, att, [sents[i] for i in idx], None)[0]
            if rule is not None:
                for i, key in zip(idx, R.pool(h, pm, sm, rule)[0]):
                    pooled[i] = key
            pm = pm.clone()
            pm[:, 0] = False  # the first token is an attention sink with outlier activations
            for j, i in enumerate(idx):
                rows[i] = h[j][pm[j]]
        device = rows[0].device if rows else session.device
        out = {"h": torch.cat(rows) if rows else torch.zeros(0, self.hidden_size, device=device),
               "sent_id": torch.cat([torch.full((len(r),), i, dtype=torch.long, device=device) for i, r in enumerate(rows)])
               if rows else torch.zeros(0, dtype=torch.long, device=device)}
        if rule is not None and rows:
            out["pooled"] = torch.stack(pooled)
        return out

    def _corpus_states(self, session, att, corpus, sents: list[str]) -> dict[str, torch.Tensor]:
        """:meth:`_states` of the corpus sentences, built once per model, site and corpus and
        kept on disk (``EditorConfig.disk_cache``), so a later process's first edit skips it."""
        return session.cached("codebook_corpus_states", lambda: self._states(session, att, sents),
                              layer=att.layer, component=att.component, corpus=corpus.sha256, n=len(sents),
                              sentences=self.config.corpus_sentences, keys=self.config.key_positions)

    def _sample_distances(self, session, att, prompts, subjects, key_n: torch.Tensor) -> torch.Tensor:
        """What the lookup would measure from ``key_n`` for each prompt (inf: no query)."""
        if not prompts:
            return torch.empty(0)
        out = []
        for h, pm, sm in self._hidden(session, att, prompts, subjects):
            rule = self.config.key_positions
            if rule == "subject":
                d = self.distances(self.normalize(h), key_n[None])[..., 0]
                out.append(d.masked_fill(~R.skip_first(pm), float("inf")).min(-1).values)
            else:
                q, has = R.pool(h, pm, sm, rule)
                d = self.distances(self.normalize(q), key_n[None])[..., 0]
                out.append(d.masked_fill(~has, float("inf")))
        return torch.cat(out).cpu()

    def _corpus_distance(self, key_n: torch.Tensor, subject: str | None) -> float:
        bank = self._bank
        if bank is None or bank["vecs"] is None:
            return float("inf")
        d = self.distances(bank["vecs"], key_n[None])[:, 0]
        if subject:
            bad = [i for i, s in enumerate(bank["sentences"]) if subject.lower() in s.lower()]
            if bad:
                d = d.masked_fill(torch.isin(bank["sent_id"], torch.tensor(bad, device=d.device)), float("inf"))
        return float(d.min()) if d.numel() else float("inf")

    def training_copies(self, request) -> list[str]:
        """``train_positives`` of the radius's positives (:func:`samples.positives`)."""
        n = self.config.train_positives
        return S.positives(request, min(n, self.config.num_positives)) if n > 0 else []

    def prepare_edit(self, session) -> None:
        cfg = self.config
        att = self._attachment(session)
        self._ensure_bank(session, att)
        reqs = session.requests
        raw = torch.cat([R.pool(h, pm, sm, cfg.key_positions)[0]
                         for h, pm, sm in self._hidden(session, att, [r.prompt for r in reqs], [r.subject for r in reqs])])
        keys_n = self.normalize(raw)
        raw_norm = self.normalize_raw_norm(raw)
        rows, plans = [], []
        for i, req in enumerate(reqs):
            k = keys_n[i]
            repeat = next((j for j, e in enumerate(cfg.entries)
                           if e.get("prompt") == req.prompt and e.get("subject") == req.subject), None)
            plan = {"request": i, "action": "new", "flags": {}}
            d_near = j_near = None
            if self.n_entries:
                dd = self.distances(k[None])[0]
                if repeat is not None:
                    dd = dd.clone()
                    dd[repeat] = float("inf")
                if self.n_entries > (1 if repeat is not None else 0):
                    d_near, j_near = float(dd.min()), int(dd.argmin())
            if repeat is not None:
                j = repeat
                plan["action"] = "repeat"
                cfg.entries[j].update(target_new=req.target_new, case_id=req.case_id)
            elif cfg.radius_mode == "grace" and d_near is not None:
                same = cfg.entries[j_near].get("target_new") == req.target_new
                act = R.grace_action(d_near, float(self.radii[j_near]), cfg.init_radius, same)
                plan["action"] = act
                if act in ("expand", "update"):
                    j = j_near
                    if act == "expand":
                        self.radii[j] = d_near
                else:
                    j = self._new_entry(k, raw_norm[i], req)
                    if act == "split":
                        self.radii[j_near] = d_near / 2 - 1e-5
                        plan["radius"] = d_near / 2
                        plan["flags"]["split_with"] = j_near
            else:
                j = self._new_entry(k, raw_norm[i], req)
            plan["entry"] = j
            if cfg.radius_mode == "grace":
                plan.setdefault("radius", cfg.init_radius if plan["action"] in ("new",) else None)
            else:
                plan.update(self._balanced_radius(session, att, req, k, j))
            rows.append(j)
            plans.append(plan)
        uniq = list(dict.fromkeys(rows))
        ent = torch.tensor(uniq, dtype=torch.long, device=self.keys.device)
        dev = self.values.device
        delta = nn.Parameter((self.values[ent] / cfg.value_scale).clone())
        owners = torch.tensor(list(session.owners), dtype=torch.long)
        rows_t = torch.tensor(rows, dtype=torch.long)
        sess = {"rows": rows_t[owners].to(dev), "entries": ent, "delta": delta,
                "plans": plans, "params": [delta]}
        if cfg.value == "lowrank":
            gen = torch.Generator().manual_seed(cfg.seed + self.n_entries)
            u = nn.Parameter(self.value_u[ent].clone())
            v0 = self.value_v[ent].clone()
            fresh = v0.abs().sum(dim=(1, 2)) == 0
            init = torch.randn(v0.shape, generator=gen).to(v0) / math.sqrt(self.hidden_size)
            v = nn.Parameter(torch.where(fresh[:, None, None], init, v0))
            sess.update(u=u, v=v)
            sess["params"] += [u, v]
        self._session = sess

    def normalize_raw_norm(self, raw: torch.Tensor) -> list[float]:
        x = raw.float()
        if self.config.normalize != "none":
            x = x - self.stat_mean
        if self.config.normalize == "standardize":
            x = x / self.stat_std
        return x.norm(dim=-1).tolist()

    def _new_entry(self, key_n, key_norm, req) -> int:
        j = self._resize_append(key_n, key_norm)
        self.config.entries.append({"prompt": req.prompt, "target_new": req.target_new, "subject": req.subject,
                                    "case_id": req.case_id, "relation": req.relation, "flags": {}})
        return j

    def _balanced_radius(self, session, att, req, key_n, j) -> dict:
        cfg = self.config
        pos = S.positives(req, cfg.num_positives)
        negs = S.negatives(req, session.all_requests, cfg.num_negatives, cfg.seed, self._names(session))
        neg_prompts = [p for p, _ in negs]
        d_pos = self._sample_distances(session, att, pos, [req.subject] * len(pos), key_n)
        d_neg = self._sample_distances(session, att, neg_prompts, [s for _, s in negs], key_n)
        d_corpus = self._corpus_distance(key_n, req.subject)
        # other entries with another target are negatives too (conflicts)
        others = torch.tensor([i for i, e in enumerate(cfg.entries) if i != j and e.get("target_new") != req.target_new],
                              dtype=torch.long, device=self.keys.device)
        d_entries = self.distances(key_n[None], self.keys.index_select(0, others))[0].cpu() if others.numel() else torch.empty(0)
        all_neg = torch.cat([d_neg, torch.tensor([d_corpus]), d_entries])
        dec = R.place_radius(d_pos, all_neg, cfg.alpha)
        conflicts = []
        if others.numel():
            inside = (d_entries <= self.radii.index_select(0, others).cpu())
            for o, d in zip(others[inside].tolist(), d_entries[inside].tolist()):
                conflicts.append((o, d))
        return {"radius": dec.radius, "d_pos": dec.d_pos, "d_neg": dec.d_neg, "separable": dec.separable,
                "n_pos": len(pos), "n_neg": len(neg_prompts), "d_corpus": d_corpus, "conflicts": conflicts,
                "samples": {"positives": pos, "negatives": neg_prompts}}

    def training_start(self, session) -> torch.Tensor | None:
        """Values at the key token (``value_positions='key'``): in training each row's own
        entry writes only at the token(s) its key is read from (for subject keys the prompt
        token nearest the key), so nothing before the first of them changes."""
        sess = self._session
        if sess is None or self.config.value_positions != "key":
            return None
        att = self._attachment(session)
        h, mask, ctx = session.edited.capture(att.layer, att.component, session.batch, before=att.name,
                                              edited=True, with_context=True)
        where = self._forced_where(h, mask, ctx, sess["rows"].to(h.device))
        return torch.where(where.any(1), where.long().argmax(1), torch.zeros_like(where[:, 0], dtype=torch.long))

    def edit_parameters(self, session) -> list[nn.Parameter]:
        return list(self._session["params"]) if self._session is not None else []

    def finish_edit(self, session, outcomes) -> None:
        sess = self._session
        if sess is None:
            return
        cfg = self.config
        with torch.no_grad():
            ent = sess["entries"]
            delta = sess["delta"].detach() * cfg.value_scale
            if cfg.null_space:
                delta = self._project(delta)
            self.values[ent] = delta.to(self.values)
            if cfg.value == "lowrank":
                self.value_u[ent] = sess["u"].detach().to(self.value_u)
                self.value_v[ent] = sess["v"].detach().to(self.value_v)
            for plan, outcome in zip(sess["plans"], outcomes):
                j = plan["entry"]
                flags = {"entry": j, "action": plan["action"]}
                if plan.get("radius") is not None:
                    self.radii[j] = float(plan["radius"])
                if "d_pos" in plan:
                    self.pos_dist[j], self.neg_dist[j] = plan["d_pos"], min(plan["d_neg"], 1e30)
                    flags.update(d_pos=plan["d_pos"], d_neg=plan["d_neg"], d_corpus=plan["d_corpus"])
                    for o, d in plan["conflicts"]:  # shrink the other entry so the new key stays out
                        newr = (1 - cfg.alpha) * d + cfg.alpha * min(float(self.pos_dist[o]), d)
                        self.radii[o] = min(float(self.radii[o]), newr)
                        cfg.entries[o].setdefault("flags", {})["shrunk_by"] = j
                    if plan["conflicts"]:
                        flags["conflicts"] = [o for o, _ in plan["conflicts"]]
                    if not plan["separable"]:
                        flags["inseparable"] = True
                        outcome.flags["codebook_inseparable"] = {"d_pos": plan["d_pos"], "d_neg": plan["d_neg"]}
                flags.update(plan["flags"])
                flags["radius"] = float(self.radii[j])
                outcome.flags["codebook"] = flags
                cfg.entries[j]["flags"] = {k: v for k, v in flags.items() if k not in ("entry",)}
        self._session = None
