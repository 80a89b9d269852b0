"""Benchmark-side helpers for resumable runs (the checkpoints themselves: :mod:`repedit.checkpoints`)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from repedit.checkpoints import CheckpointMismatch, SequentialCheckpoint

__all__ = ["CheckpointMismatch", "SequentialCheckpoint", "cached"]


def cached(root: str | os.PathLike, name: str, identity: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON-serialisable result, stored as ``root/<name>.json`` with its
    ``identity`` and reused while the identity matches (``name`` may hold a subfolder, ``a/b``) (e.g. the unedited model's scores of a
    resumed run's requests, which every invocation would otherwise recompute)."""
    path = Path(root) / f"{name}.json"
    ident = json.loads(json.dumps(identity, sort_keys=True, default=str))
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("identity") == ident:
            return saved["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"identity": ident, "value": value}, f)
    os.replace(tmp, path)
    return value
