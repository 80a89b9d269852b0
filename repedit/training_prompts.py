"""What an edit trains on: the request's prompt, copies behind corpus prefixes, copies in other
templates of its relation, and the target followed by its natural end.

A mixin of :class:`~repedit.editing.Editor` (it reads ``self.config``, ``self.corpus``,
``self.tokenizer`` and ``self._memo``).

Example::

    prompts, owners = editor.training_prompts(requests, indices=[0, 1])
"""

from __future__ import annotations

import logging
import os
import random

from repedit.corpus import Corpus
from repedit.relations import builtin_relations, load_relations
from repedit.requests import EditRequest, normalize_text

logger = logging.getLogger(__name__)

__all__ = ["TrainingPromptsMixin", "relation_copy_templates"]


def relation_copy_templates(table, request: EditRequest) -> list[str]:
    """The templates a relation copy of ``request`` may use: the other phrasings of its
    relation in ``table`` (anything with ``.get(template, ())``, e.g. a
    :class:`~repedit.relations.RelationTable`) whose filled-in prompt is none of the request's
    evaluation prompts; ``[]`` without a subject or relation.

    Example::

        relation_copy_templates(builtin_relations(), request)   # ['The native language of {} is', ...]
    """
    if not request.subject or not request.relation:
        return []
    banned = request.evaluation_prompts() | {normalize_text(request.prompt)}
    return sorted({t for t in table.get(request.relation, ()) if isinstance(t, str) and t.count("{}") == 1
                   and t != request.relation and normalize_text(t.replace("{}", request.subject)) not in banned})


class TrainingPromptsMixin:
    """Training prompts and answer end of the :class:`~repedit.editing.Editor`."""

    def _prefixes(self) -> list[str]:
        if getattr(self, "_prefix_pool", None) is None:
            cfg = self.config
            if isinstance(cfg.augment_corpus, (list, tuple)):
                texts = list(cfg.augment_corpus)
            elif cfg.augment_corpus is not None:
                texts = Corpus.from_file(cfg.augment_corpus).sentences(limit=3000)
            else:
                texts = self.corpus.sentences(limit=3000)
            pool = []
            for t in texts:
                words = t.split()
                if len(words) >= 3:
                    pool.append(" ".join(words[: cfg.augment_words]))
            if not pool:
                raise ValueError("augment > 0 needs a corpus with sentences of at least 3 words; pass "
                                 "EditorConfig(augment_corpus=...) or corpus=..., or augment=0")
            self._prefix_pool = pool
        return self._prefix_pool

    def training_prompts(self, reqs: list[EditRequest], indices: list[int]) -> tuple[list[str], list[int]]:
        """The prompts trained for ``reqs``: each prompt, then ``augment`` copies with a random
        corpus prefix, then ``relation_copies`` copies with the subject in other templates of
        its relation (deterministic for the seed and the request's index; never one of the
        request's evaluation prompts). Returns (prompts, owner index into ``reqs`` per prompt)."""
        prompts, owners, _ = self._training_prompts(reqs, indices)
        return prompts, owners

    def _training_prompts(self, reqs: list[EditRequest], indices: list[int]) -> tuple[list[str], list[int], list[int]]:
        """:meth:`training_prompts` and the number of relation copies each request got."""
        prompts = [r.prompt for r in reqs]
        owners = list(range(len(reqs)))
        self._add_prefix_copies(reqs, indices, prompts, owners)
        relation_copies = self._add_relation_copies(reqs, indices, prompts, owners)
        self._add_method_copies(reqs, prompts, owners)
        return prompts, owners, relation_copies

    def _add_method_copies(self, reqs: list[EditRequest], prompts: list[str], owners: list[int]) -> None:
        """Each attached method's :meth:`~repedit.methods.base.Intervention.training_copies`."""
        for att in self.attachments():
            for j, r in enumerate(reqs):
                banned = r.evaluation_prompts() | {normalize_text(p) for p, o in zip(prompts, owners) if o == j}
                for text in att.module.training_copies(r):
                    if normalize_text(text) not in banned:
                        banned.add(normalize_text(text))
                        prompts.append(text)
                        owners.append(j)

    def _add_relation_copies(self, reqs: list[EditRequest], indices: list[int], prompts: list[str],
                             owners: list[int]) -> list[int]:
        """Append the relation copies; returns how many each request got."""
        counts = [0] * len(reqs)
        k = self.config.relation_copies
        if not k:
            return counts
        table = self._relation_table()
        for j, (r, idx) in enumerate(zip(reqs, indices)):
            if not r.subject or not r.relation:
                continue
            pool = relation_copy_templates(table, r)
            if not pool:
                logger.debug("no other phrasing of %r in the relation table: no relation copies for this request",
                             r.relation)
            rng = random.Random(self.config.seed * 1000003 + idx + 7)
            for t in rng.sample(pool, min(k, len(pool))):
                prompts.append(t.replace("{}", r.subject))
                owners.append(j)
                counts[j] += 1
        return counts

    def _relation_table(self):
        """``EditorConfig.relation_templates`` as something with ``.get(template, ())``: the
        shipped table for None, a loaded table for a path, else the table or mapping given."""
        given = self.config.relation_templates
        key = ("relation_table", id(given))
        if key not in self._memo:
            if given is None:
                table = builtin_relations()
            elif isinstance(given, (str, os.PathLike)):
                table = load_relations(given)
            else:
                table = given
            self._memo[key] = table
        return self._memo[key]

    def _add_prefix_copies(self, reqs: list[EditRequest], indices: list[int], prompts: list[str], owners: list[int]) -> None:
        k = self.config.augment
        if k:
            pool = self._prefixes()
            for j, (r, idx) in enumerate(zip(reqs, indices)):
                rng = random.Random(self.config.seed * 1000003 + idx)
                for _ in range(k):
                    words = rng.choice(pool).split()
                    n = rng.randint(min(3, len(words)), len(words))
                    prompts.append(" ".join(words[:n]).rstrip(" ,.;:") + ". " + r.prompt)
                    owners.append(j)

    def _answer_end(self) -> str:
        """``EditorConfig.answer_end`` when the tokenizer knows it (it decodes back), else ''."""
        end = self.config.answer_end or ""
        if end and "answer_end_ok" not in self._memo:
            ids = self.tokenizer(end, add_special_tokens=False)["input_ids"]
            back = self.tokenizer.decode(ids, skip_special_tokens=True).strip() if ids else ""
            self._memo["answer_end_ok"] = back == end.strip()  # an unknown or special token does not decode back
            if not self._memo["answer_end_ok"]:
                logger.warning("the tokenizer has no token for answer_end %r: targets are trained without it", end)
        return end if end and self._memo["answer_end_ok"] else ""
