"""Other phrasings of a request's relation, for training an edit on its relation asked another
way (``EditorConfig.relation_copies``).

A :class:`RelationTable` groups templates (``"{} was born in"``, ``"The birthplace of {} is"``)
into relations. :meth:`RelationTable.others` finds the relation of a request's template, exactly
or, failing that, by the words and word pairs it shares with one relation's templates (so
``"{} was born in the town of"`` finds place of birth), and returns that relation's other templates.
A template that matches no relation, or two equally well, gets none: a copy in the wrong
relation would teach the edit to answer the wrong question.

repedit ships a table of 68 common Wikidata relations (``resources/relations.json``, written for
repedit); :func:`builtin_relations` loads it.

Example::

    table = builtin_relations()
    table.relation_of("{} was born in the town of")   # 'P19'
    table.others("The capital of {} is")[:2]          # ['The capital city of {} is', "{}'s capital is"]
"""

from __future__ import annotations

import json
import logging
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = ["RelationTable", "builtin_relations", "load_relations", "BUILTIN_RELATIONS_FILE"]

#: the shipped table, inside the package
BUILTIN_RELATIONS_FILE = "relations.json"
_FORMAT = "repedit-relations/1"

#: words that carry little of a relation (half weight in the loose match)
_STOP = frozenset("""a an the of in on at to by for from with as and or is are was were be been being has have had
it its their his her they them this that which who whom whose what where when how it's there here one
do does did can could will would shall should may might""".split())
_WORD = re.compile(r"[a-z]+")
#: the least word-and-pair F1 of a loose match (0.6 matched "{} was created in" to "{} was created by")
MIN_SCORE = 0.65


def _normalize(template: str) -> str:
    return " ".join(template.lower().replace("’", "'").split()).rstrip(" ,.:;?")


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _units(template: str) -> dict[str, float]:
    """Weighted words and word pairs of a template: content words 1, function words 0.5, each
    adjacent pair 1 (so "created in" and "created by" differ)."""
    text = _normalize(template).replace("'s", " ")
    words = [_stem(w) for w in _WORD.findall(text)]
    units = {w: (0.5 if w in _STOP else 1.0) for w in words}
    units.update({f"{a} {b}": 1.0 for a, b in zip(words, words[1:])})
    return units


def _f1(a: dict[str, float], b: dict[str, float]) -> float:
    common = sum(w for u, w in a.items() if u in b)
    return 2 * common / (sum(a.values()) + sum(b.values())) if common else 0.0


class RelationTable:
    """Relations as groups of templates, with a tolerant lookup of a template's relation.

    ``relations`` maps a relation name or id to its templates (each with one ``"{}"``). A loose
    match needs a weighted word-and-pair F1 of at least ``min_score`` with one of the relation's
    templates, ``margin`` above every other relation (exact matches, after case and spacing are
    folded, always count).

    Example::

        table = RelationTable({"birth": ["{} was born in", "The birthplace of {} is"]})
        table.others("{} was born in")   # ['The birthplace of {} is']
    """

    def __init__(self, relations: Mapping[str, Sequence[str]], min_score: float = MIN_SCORE, margin: float = 0.1,
                 source: str = "<dict>"):
        if not 0.0 < min_score <= 1.0 or not 0.0 <= margin < 1.0:
            raise ValueError(f"min_score must be in (0, 1] and margin in [0, 1), got {min_score}, {margin}")
        self.min_score, self.margin = float(min_score), float(margin)
        self.source = source
        self.relations: dict[str, list[str]] = {}
        for rid, templates in relations.items():
            if isinstance(templates, str) or not isinstance(templates, Iterable):
                raise ValueError(f"relation {rid!r} in {source}: templates must be a list of strings")
            kept = []
            for t in templates:
                if not isinstance(t, str) or t.count("{}") != 1:
                    raise ValueError(f"relation {rid!r} in {source}: template {t!r} must be a string with exactly one '{{}}'")
                if t not in kept:
                    kept.append(t)
            if kept:
                self.relations[str(rid)] = kept
        self._exact: dict[str, list[str]] = {}
        self._keys: list[tuple[str, dict[str, float]]] = []
        for rid, templates in self.relations.items():
            for t in templates:
                self._exact.setdefault(_normalize(t), [])
                if rid not in self._exact[_normalize(t)]:
                    self._exact[_normalize(t)].append(rid)
                self._keys.append((rid, _units(t)))

    def __len__(self) -> int:
        return len(self.relations)

    def __repr__(self) -> str:
        return f"RelationTable({len(self)} relations from {self.source})"

    def relation_of(self, template: str) -> str | None:
        """The relation of ``template``: an exact match (case and spacing folded), else the
        relation whose templates share the most words and word pairs with it (F1 ≥
        ``min_score``, ``margin`` above the next relation); None when nothing matches or two
        relations match about equally well."""
        exact = self._exact.get(_normalize(template))
        if exact:
            return exact[0] if len(exact) == 1 else None
        units = _units(template)
        best: dict[str, float] = {}
        for rid, key in self._keys:
            best[rid] = max(best.get(rid, 0.0), _f1(units, key))
        ranked = sorted(best.values(), reverse=True) + [0.0]
        top = max(best, key=best.get, default=None)
        if top is None or ranked[0] < self.min_score or ranked[1] > ranked[0] - self.margin:
            return None
        return top

    def others(self, template: str) -> list[str]:
        """The other templates of ``template``'s relation (``[]`` when it has none)."""
        rid = self.relation_of(template)
        if rid is None:
            return []
        own = _normalize(template)
        return [t for t in self.relations[rid] if _normalize(t) != own]

    def get(self, template: str, default: Sequence[str] = ()) -> list[str]:
        """:meth:`others`, or ``default`` when it is empty (the Mapping-style lookup)."""
        return self.others(template) or list(default)


def load_relations(path: str | os.PathLike, min_score: float = MIN_SCORE) -> RelationTable:
    """A :class:`RelationTable` from a JSON file in repedit's format (``{"format":
    "repedit-relations/1", "relations": [{"id": ..., "templates": [...]}, ...]}``).

    Example::

        table = load_relations("my_relations.json")
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"relation table {p} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"relation table {p} is not valid JSON: {e}") from None
    return _from_json(data, str(p), min_score)


def _from_json(data: object, source: str, min_score: float) -> RelationTable:
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("relations"), list):
        raise ValueError(f"{source} is not a relation table: expected a JSON object with \"format\": \"{_FORMAT}\" "
                         "and a \"relations\" list")
    relations: dict[str, list[str]] = {}
    for i, rel in enumerate(data["relations"]):
        if not isinstance(rel, dict) or not isinstance(rel.get("id"), str) or not isinstance(rel.get("templates"), list):
            raise ValueError(f"{source}: relation {i} needs an \"id\" string and a \"templates\" list")
        if rel["id"] in relations:
            raise ValueError(f"{source}: relation id {rel['id']!r} appears twice")
        relations[rel["id"]] = rel["templates"]
    return RelationTable(relations, min_score=min_score, source=source)


@lru_cache(maxsize=1)
def _builtin() -> RelationTable:
    text = resources.files("repedit").joinpath("resources", BUILTIN_RELATIONS_FILE).read_text(encoding="utf-8")
    return _from_json(json.loads(text), f"repedit:{BUILTIN_RELATIONS_FILE}", MIN_SCORE)


def builtin_relations() -> RelationTable:
    """The relation table shipped with repedit: 68 common Wikidata relations (place of birth,
    capital, official language, employer, cause of death, director, ...), about 6 phrasings each,
    statements and questions.

    Example::

        builtin_relations().relation_of("{} is headquartered in")   # 'P159'
    """
    return _builtin()
