"""Building BaFT's gate training data: negative prompts, the subject (entity) bank, corpus
negatives, look-alikes of the subject and the subject in other relation templates.

Every method here reads its data from the edit session (requests, corpus, caches) and
returns hidden states at the module's site.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import torch
from torch import nn

from repedit.positions import last_true_index, length_chunks

logger = logging.getLogger(__name__)

__all__ = ["SUBJECT_PREFIXES", "NegativesMixin", "subject_key"]

#: where the subject bank puts each subject (the state at a subject's last token depends only
#: on what precedes it)
SUBJECT_PREFIXES = ("", "I read about ")


def _last_logprobs(session: Any, batch: Any) -> torch.Tensor:
    """Log-probabilities of the next token after each prompt of ``batch`` (B, V)."""
    with batch.info():
        logits = session.edited.model(**batch.model_inputs()).logits
    last = batch.attention_mask.sum(1) - 1
    return torch.log_softmax(logits[torch.arange(len(last)), last].float(), -1)


def _kl_reference(session: Any, prompts: list[str], weight: float) -> tuple[Any, torch.Tensor, float]:
    """(batch, the unedited model's next-token log-probabilities, weight) of a KL term."""
    batch = session.encode(prompts)
    with torch.no_grad(), session.edited.disabled():
        base = _last_logprobs(session, batch)
    return batch, base, weight


def _warn_once(module: nn.Module, what: str, msg: str, *args: Any) -> None:
    """Log a fallback once per module and kind (not at every edit of a sequential run)."""
    warned = module.__dict__.setdefault("_warned", set())
    if what not in warned:
        warned.add(what)
        logger.warning(msg, *args)


def subject_key(subject: str | None) -> int:
    """A stable 63-bit key of a subject (case-folded), stored with the earlier-negatives bank."""
    if not subject:
        return 0
    return int.from_bytes(hashlib.sha256(subject.casefold().encode()).digest()[:8], "little") >> 1



class NegativesMixin:
    """The training-data builders of :class:`~repedit.methods.baft.BaFT`."""

    def _negative_prompts(self, session: Any, rng: random.Random) -> list[str]:
        cfg = self.config
        current = {id(r) for r in session.requests}
        idx0 = min(session.indices) if session.indices else 0
        others = [r for r in session.all_requests if id(r) not in current]
        subjects = sorted({r.subject for r in others if r.subject} - {r.subject for r in session.requests})
        pool_subjects = list(subjects) + session.corpus.name_pairs(200, sentences=400)
        prompts: list[str] = []
        per = max(1, cfg.num_negatives // max(1, len(session.requests)) // 2)
        for req in session.requests:
            if req.relation and "{}" in req.relation and pool_subjects:
                for s in rng.sample(pool_subjects, min(per, len(pool_subjects))):
                    if s != req.subject:
                        prompts.append(req.relation.replace("{}", s, 1))
        earlier = [r.prompt for r in session.all_requests[:idx0] if id(r) not in current]
        if earlier:
            prompts.extend(rng.sample(earlier, min(len(earlier), max(1, cfg.num_negatives - len(prompts)))))
        later = [r.prompt for r in others if r.prompt not in prompts]
        if len(prompts) < cfg.num_negatives and later:
            prompts.extend(rng.sample(later, min(len(later), cfg.num_negatives - len(prompts))))
        return prompts[: max(cfg.num_negatives, 1)]

    def _subject_bank(self, session: Any, att: Any) -> tuple[list[str], torch.Tensor]:
        """Last-token states of other subjects (every request's subject in this edit() call,
        then corpus names, ``num_subject_negatives`` in all), each at a sentence start and
        after a short prefix: ((S,) names, (S, d) states). Each name is captured once per
        (model, site) and cached, so single edits in a loop do not recapture the bank."""
        n = self.config.num_subject_negatives
        req_subjects = sorted({r.subject for r in session.all_requests if r.subject})[:n]
        corpus = session.corpus.names(n) if self.config.num_corpus_negatives > 0 else []
        if self.config.num_corpus_negatives > 0 and not corpus:
            _warn_once(self, "names", "the corpus %s has no entity names: BaFT's gates are fitted without name "
                       "negatives besides the requests' subjects (scope may widen); pass a corpus with names, or "
                       "num_corpus_negatives=0", session.corpus)
        taken = set(req_subjects)
        chosen = set([c for c in corpus if c not in taken][: n - len(req_subjects)])
        req_names, req_states = self._name_states(session, att, req_subjects)
        if not corpus:
            return req_names, req_states
        # the corpus names' states depend only on the model, the site and the corpus: built once
        # and kept on disk (the Editor's cache), then filtered to the names chosen here
        bank = session.cached("baft_name_bank", lambda: self._bank_tensors(session, att, corpus), autocast=True, layer=att.layer,
                              component=att.component, corpus=session.corpus.sha256, names=len(corpus),
                              prefixes=list(SUBJECT_PREFIXES))
        rows = [i for i, o in enumerate(bank["owner"].tolist()) if corpus[o] in chosen]
        names = req_names + [corpus[o] for o in bank["owner"][rows].tolist()]
        return names, torch.cat([req_states, bank["states"][rows].to(req_states)])

    def _bank_tensors(self, session: Any, att: Any, names: list[str]) -> dict[str, torch.Tensor]:
        """{"states": (S, d), "owner": (S,) index into ``names``} of :meth:`_name_states`."""
        out_names, states = self._name_states(session, att, names)
        index = {name: i for i, name in enumerate(names)}
        return {"states": states, "owner": torch.tensor([index[x] for x in out_names], dtype=torch.long)}

    def _name_states(self, session: Any, att: Any, names: list[str]) -> tuple[list[str], torch.Tensor]:
        """Last-token states of ``names``, each at a sentence start and after a short prefix:
        ((S,) names, (S, d) states). Each name is captured once per editor and site."""
        cache: dict = session.memory(f"baft_name_states:{att.layer}:{att.component}")
        missing = list(dict.fromkeys(name for name in names if name not in cache))
        if missing:
            prompts = [(pre + name, name) for name in missing for pre in SUBJECT_PREFIXES]
            state_of: dict[int, torch.Tensor] = {}  # prompt index -> its subject's last-token state
            for order in length_chunks(session.tokenizer, [p for p, _ in prompts], 64):
                batch = session.encode([prompts[i][0] for i in order], subjects=[prompts[i][1] for i in order])
                h, _ = session.capture(att, batch)
                last = last_true_index(batch.subject_mask)
                rows = h[torch.arange(len(order), device=h.device), last].float()
                for i, ok, row in zip(order, batch.subject_mask.any(1).tolist(), rows):
                    if ok:
                        state_of[i] = row
            found: dict[str, list[torch.Tensor]] = {}  # each name's rows in SUBJECT_PREFIXES order
            for i, (_, name) in enumerate(prompts):
                if i in state_of:
                    found.setdefault(name, []).append(state_of[i])
            empty = torch.zeros(0, self.hidden_size, device=session.device)
            for name in missing:
                cache[name] = torch.stack(found[name]) if name in found else empty
        out_names = [name for name in names for _ in range(cache[name].shape[0])]
        states = [cache[name] for name in names if cache[name].shape[0]]
        return out_names, (torch.cat(states) if states else torch.zeros(0, self.hidden_size, device=session.device))

    def _subject_variants(self, session: Any, att: Any, rng: random.Random) -> torch.Tensor:
        """Hard negatives from the requests' own subjects (``subject_variants``): the proper word
        suffixes of each subject and look-alikes whose leading words are corpus names, never one
        of the requests' subjects: (V, d) last-token states."""
        k = self.config.subject_variants
        own = {r.subject.casefold() for r in session.requests if r.subject}
        pool = [c for c in session.corpus.names(max(self.config.num_subject_negatives, 200)) if c.casefold() not in own]
        names: list[str] = []
        for req in session.requests:
            words = (req.subject or "").split()
            if len(words) < 2:
                continue
            names += [" ".join(words[j:]) for j in range(1, len(words))]
            for other in rng.sample(pool, min(k, len(pool))):
                tail = words[-1:] if rng.random() < 0.5 or len(words) < 3 else words[1:]
                names.append(" ".join([other.split()[0], *tail]))
        names = [n for n in dict.fromkeys(names) if n.casefold() not in own]
        return self._name_states(session, att, names)[1]

    def _corpus_negatives(self, session: Any, att: Any) -> torch.Tensor:
        """Every token state of ``num_corpus_negatives`` corpus sentences (their first 16 words;
        sentences 200 on, the first 200 feed names): (N, d), cached per (model, site, corpus)."""
        n = self.config.num_corpus_negatives
        texts = session.corpus.sentences(limit=n + 200)[200:] if n > 0 else []
        if n > 0 and not texts:
            _warn_once(self, "corpus", "the corpus %s has fewer than 201 sentences: BaFT's gates are fitted "
                       "without corpus negatives (locality may drop); pass a larger corpus, or "
                       "num_corpus_negatives=0", session.corpus)
        if not texts:
            return torch.zeros(0, self.hidden_size, device=session.device)
        texts = [" ".join(t.split()[:16]) for t in texts]

        def build() -> dict[str, torch.Tensor]:
            # every token is a 'last prompt token' of its prefix: keep every attended token's
            # state, in the texts' order (captured in chunks of similar length)
            rows: list[torch.Tensor | None] = [None] * len(texts)
            for idx in length_chunks(session.tokenizer, texts, 64):
                batch = session.encode([texts[i] for i in idx])
                h, _ = session.capture(att, batch)
                am = batch.attention_mask.bool()
                for j, i in enumerate(idx):
                    rows[i] = h[j][am[j]].float()
            return {"states": torch.cat(rows)}

        return session.cached("baft_corpus_negatives", build, autocast=True, layer=att.layer, component=att.component, n=n,
                              corpus=session.corpus.sha256, words=16)["states"]

    def _subject_tokens(self, session: Any, att: Any, prompts: list[str], subjects: list[str | None]):
        """States at the subject's last token of each prompt (the last prompt token where the
        subject is missing) and at every other prompt token: ((P, d), (Q, d))."""
        from repedit.positions import last_true_index

        subs = [s if s and s in p else None for p, s in zip(prompts, subjects)]
        batch = session.encode(prompts, subjects=subs)
        h, mask = session.capture(att, batch)
        prompt = batch.prompt_mask & batch.attention_mask.bool()
        idx = torch.where(batch.subject_mask.any(1), last_true_index(batch.subject_mask), last_true_index(prompt))
        rows = torch.arange(len(prompts), device=h.device)
        pos = h[rows, idx].float()
        other = prompt.clone()
        other[rows, idx] = False
        return pos, h[other].float()

    def _template_prompts(self, session: Any, rng: random.Random) -> tuple[list[str], list[int]]:
        """The requests' subjects in other requests' relation templates (gate positives only)."""
        k = self.config.gate_templates
        if k <= 0:
            return [], []
        templates = sorted({r.relation for r in session.all_requests if r.relation and "{}" in r.relation})
        prompts, owners = [], []
        for j, req in enumerate(session.requests):
            if not req.subject:
                continue
            pool = [t for t in templates if t != req.relation]
            for t in rng.sample(pool, min(k, len(pool))):
                prompts.append(t.replace("{}", req.subject, 1))
                owners.append(j)
        return prompts, owners

