"""Benchmark-side helpers for resumable runs (the checkpoints themselves: :mod:`repedit.checkpoints`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from repedit.checkpoints import CheckpointMismatch, SequentialCheckpoint

__all__ = ["CheckpointMismatch", "SequentialCheckpoint", "cached", "cached_in_chunks", "lookup"]

#: records per stored part of a long scoring pass (minutes of CPU each)
SCORE_CHUNK = 250


def lookup(root: str | os.PathLike, name: str, identity: dict[str, Any]) -> tuple[bool, Any]:
    """(True, value) if ``root/<name>.json`` holds a value stored by :func:`cached` under this
    ``identity``, else (False, None). Reads only: a reader that would compute the value
    differently (e.g. a subset) need not replace another script's cache."""
    path = Path(root) / f"{name}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("identity") == _normal(identity):
            return True, saved["value"]
    return False, None


def cached(root: str | os.PathLike, name: str, identity: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON-serialisable result, stored as ``root/<name>.json`` with its
    ``identity`` and reused while the identity matches, e.g. the unedited model's scores of a
    resumed run's requests, which every invocation would otherwise recompute. ``name`` may
    hold a subfolder (``a/b``)."""
    found, value = lookup(root, name, identity)
    if found:
        return value
    return _store(root, name, identity, compute())


def _store(root: str | os.PathLike, name: str, identity: dict[str, Any], value: Any) -> Any:
    """Write ``value`` with its ``identity`` to ``root/<name>.json`` atomically; return it."""
    path = Path(root) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"identity": _normal(identity), "value": value}, f)
    os.replace(tmp, path)
    return value


def cached_in_chunks(root: str | os.PathLike, name: str, identity: dict[str, Any], n: int,
                     compute: Callable[[int, int], list], chunk: int | None = None,
                     progress: Callable[[str], None] | None = None) -> list:
    """Like :func:`cached` for a list of ``n`` per-record values, computed ``chunk`` records at a
    time (default :data:`SCORE_CHUNK`) by ``compute(lo, hi)`` (the values of records ``lo``..``hi - 1``). Each part is kept in
    ``root/<name>.parts/`` as it is done, so an interrupted scoring pass of thousands of records
    resumes at its first missing part. When all parts are there, they are joined into
    ``root/<name>.json`` (what :func:`cached` reads) and the parts are removed.

    Example::

        pre = cached_in_chunks(ck_dir, "pre_counterfact_10000", ident, len(reqs),
                               lambda lo, hi: evaluate_requests(model, tok, reqs[lo:hi]))
    """
    found, value = lookup(root, name, identity)
    if found:
        return value
    chunk = SCORE_CHUNK if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    parts = Path(root) / f"{name}.parts"
    values: list = []
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        key, ident = f"{lo:07d}", dict(identity, part=[lo, hi])
        found, part = lookup(parts, key, ident)
        if not found:
            if progress is not None:
                progress(f"{name}: scoring records {lo}..{hi - 1} of {n}")
            part = list(compute(lo, hi))
            if len(part) != hi - lo:
                raise ValueError(f"{name}: part {lo}..{hi - 1} holds {len(part)} values, not {hi - lo}")
            _store(parts, key, ident, part)
        values.extend(part)
    _store(root, name, identity, values)
    shutil.rmtree(parts, ignore_errors=True)  # joined: the parts are no longer needed
    return values


def _normal(identity: dict[str, Any]) -> Any:
    """The identity as it reads back from JSON (tuples become lists, keys sorted)."""
    return json.loads(json.dumps(identity, sort_keys=True, default=str))
