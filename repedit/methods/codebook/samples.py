"""Positive and negative samples for an entry's radius, from the request's own text and
from other facts; never from the request's evaluation fields.

Positives (should fire): template rewrites of the edit prompt: prefixes, punctuation and
case changes, question forms. In causal models the subject token's representation only
depends on the text before it, so the rewrites change that text.

Negatives (must not fire): the request's relation template filled with other subjects
(other requests of the same relation in the edit call, and entity names: the editor's corpus
names by default, or the subjects of a known-facts file such as ROME's ``known_1000.json``),
plus nearest-neighbour sentences from the corpus, mined in :mod:`repedit.methods.codebook.radius`.

Every sample is checked against :func:`evaluation_texts` (the request's ``rephrase_prompts``,
``locality_prompts`` and ``portability``) and dropped on a match, so evaluation prompts can
never become training signal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from repedit.requests import EditRequest, normalize_text

logger = logging.getLogger(__name__)

__all__ = ["evaluation_texts", "positives", "negatives", "known_subjects"]

_PREFIXES = (
    "Fact: {p}",
    "Here is a fact. {p}",
    "Did you know? {p}",
    "I heard that {l}",
    "In other words, {l}",
    "Tell me: {p}",
    "Question: is it true that {l}",
    "Q: {p}",
    "{l}",
    "\"{p}",
    "Note - {p}",
    "According to the record, {l}",
)


_norm = normalize_text


def evaluation_texts(req: EditRequest) -> set[str]:
    """Normalised texts of a request's evaluation prompts (never used as samples)."""
    return req.evaluation_prompts()


def _lower_first(p: str, subject: str | None) -> str:
    if subject and p.startswith(subject):
        return p
    return p[:1].lower() + p[1:]


def positives(req: EditRequest, n: int) -> list[str]:
    """Up to ``n`` template rewrites of the edit prompt (deterministic order)."""
    p = req.prompt
    forbidden = evaluation_texts(req) | {normalize_text(p)}
    out: list[str] = []
    for tpl in _PREFIXES:
        text = tpl.format(p=p, l=_lower_first(p, req.subject))
        if normalize_text(text) in forbidden or text in out:
            continue
        if req.subject and req.subject not in text:
            continue
        out.append(text)
        if len(out) >= n:
            break
    return out


def _rank(seed: int, anchor: str, items: Sequence[str]) -> list[str]:
    def h(x: str) -> str:
        return hashlib.sha1(f"{seed}\x00{anchor}\x00{x}".encode()).hexdigest()

    return sorted(dict.fromkeys(items), key=h)


@lru_cache(maxsize=4)
def known_subjects(path: str) -> tuple[str, ...]:
    """Subjects of a known-facts JSON list such as ROME's ``known_1000.json`` (deduplicated,
    file order). A missing or unreadable file is an error that names it."""
    f = Path(path).expanduser()
    if not f.is_file():
        raise FileNotFoundError(f"known-facts file {f} not found; pass an existing known_1000.json-style file, "
                                "or known_facts_path=None for the corpus's entity names")
    try:
        rows = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"known-facts file {f} is not a JSON list of records: {err}") from None
    if not isinstance(rows, list):
        raise ValueError(f"known-facts file {f} is not a JSON list of records")
    return tuple(dict.fromkeys(r["subject"] for r in rows if isinstance(r, dict) and isinstance(r.get("subject"), str)
                               and r["subject"]))


def negatives(
    req: EditRequest,
    all_requests: Sequence[EditRequest],
    n: int,
    seed: int = 0,
    names: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """Up to ``n`` ``(prompt, subject)`` pairs of the same relation about other subjects.

    Half (at most) come from other requests of the edit call with the same relation (their
    edit prompts only), the rest from the relation template filled with ``names``.
    """
    if n <= 0:
        return []
    subj = (req.subject or "").strip()
    forbidden = evaluation_texts(req) | {normalize_text(req.prompt)}

    def ok(text: str, other_subject: str) -> bool:
        if not other_subject or (subj and (subj.lower() in other_subject.lower() or other_subject.lower() in subj.lower())):
            return False
        return normalize_text(text) not in forbidden

    same = {r.prompt: r.subject for r in all_requests
            if r is not req and r.relation == req.relation and r.subject and ok(r.prompt, r.subject)}
    known = tuple(names)
    picked = [(t, same[t]) for t in _rank(seed, req.prompt, list(same))[: max(n // 2, n - len(known))]]
    template = req.relation if req.relation and "{}" in req.relation else None
    if template is not None:
        filled = {template.replace("{}", s): s for s in known if ok(template.replace("{}", s), s)}
        have = {t for t, _ in picked}
        picked += [(t, filled[t]) for t in _rank(seed, req.prompt, list(filled)) if t not in have][: n - len(picked)]
    return picked[:n]
