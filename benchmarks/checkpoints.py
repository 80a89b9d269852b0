"""Benchmark-side helpers for resumable runs (the checkpoints themselves: :mod:`repedit.checkpoints`)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from repedit.checkpoints import CheckpointMismatch, SequentialCheckpoint

__all__ = ["CheckpointMismatch", "SequentialCheckpoint", "cached", "lookup"]


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
    value = compute()
    path = Path(root) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"identity": _normal(identity), "value": value}, f)
    os.replace(tmp, path)
    return value


def _normal(identity: dict[str, Any]) -> Any:
    """The identity as it reads back from JSON (tuples become lists, keys sorted)."""
    return json.loads(json.dumps(identity, sort_keys=True, default=str))
