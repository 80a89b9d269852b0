"""Checkpoints of long sequential editing runs.

A long sequential run (1,000 BaFT edits take hours on a CPU) saves its adapter, outcomes and
edit time every ``every`` edits under ``root/<key>/``; a later process with the same requests
and config loads the last checkpoint and continues with ``Editor.edit(start=k)``, which gives
the same result as an uninterrupted run. Used by ``repedit edit --checkpoint-every/--resume``
and by ``benchmarks/bench_baft.py --checkpoint-dir``.

Example::

    ck = SequentialCheckpoint("ckpt", "baft", every=25, identity={"config": cfg_dict, "cases": ids})
    done, outcomes, seconds = ck.restore(editor.edited, adapter="default")
    res = editor.edit(reqs, sequential=True, start=done, callback=ck.callback(editor.edited, "default", len(reqs)))
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

STATE = "state.json"


class CheckpointMismatch(ValueError):
    """The checkpoint was written for other requests or another config."""


class SequentialCheckpoint:
    """The last checkpoint of one sequential run: ``root/<key>/state.json`` (edits done, their
    outcomes, edit seconds, and an ``identity`` that must match to resume) pointing at the
    adapter saved in ``root/<key>/step_<done>/``."""

    def __init__(self, root: str | os.PathLike, key: str, every: int, identity: dict[str, Any]):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.dir = Path(root) / key
        self.every = every
        # JSON round trip, so tuples and lists compare equal after a reload
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self._outcomes: list = []
        self._seconds0 = 0.0

    # ---------------------------------------------------------------- state
    def exists(self) -> bool:
        return (self.dir / STATE).is_file()

    def clear(self) -> None:
        """Remove the checkpoint (after the run's final adapter is saved)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def state(self) -> dict | None:
        """The saved ``state.json`` (``done``, ``seconds``, ``step_dir``, ``outcomes``,
        ``saved_at``), or None when there is no checkpoint; raises :class:`CheckpointMismatch`
        when it was written for other requests or another config."""
        path = self.dir / STATE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if state.get("identity") != self.identity:
            raise CheckpointMismatch(
                f"{path} was written for other requests or another config; use another directory or delete it")
        return state

    def restore(self, edited: Any, adapter: str) -> tuple[int, list, float]:
        """Load the last checkpoint's adapter onto ``edited``; returns (edits done, their
        outcomes, edit seconds so far), or (0, [], 0.0) when there is none."""
        from repedit.adapters import attach_adapter
        from repedit.editing import RequestOutcome

        state = self.state()
        if state is None:
            return 0, [], 0.0
        attach_adapter(edited, self.dir / state["step_dir"], adapter=adapter)
        outcomes = [RequestOutcome(**o) for o in state["outcomes"]]
        self._outcomes = list(outcomes)
        self._seconds0 = float(state["seconds"])
        return int(state["done"]), outcomes, float(state["seconds"])

    def save(self, edited: Any, adapter: str, done: int, outcomes: list, seconds: float) -> None:
        """Write the adapter to a new step folder, then point ``state.json`` at it (atomic
        rename), then drop older step folders: a crash leaves the previous checkpoint valid."""
        from repedit.adapters import save_adapter

        self.dir.mkdir(parents=True, exist_ok=True)
        step = f"step_{done:06d}"
        if (self.dir / step).exists():
            shutil.rmtree(self.dir / step)
        save_adapter(edited, self.dir / step, adapter=adapter)
        state = {"identity": self.identity, "done": done, "seconds": seconds, "step_dir": step,
                 "outcomes": [asdict(o) for o in outcomes], "saved_at": time.time()}
        fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=self.dir)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.dir / STATE)
        for old in self.dir.glob("step_*"):
            if old.name != step:
                shutil.rmtree(old, ignore_errors=True)

    def callback(self, edited: Any, adapter: str, total: int) -> Callable[[int, list], None]:
        """An ``Editor.edit`` callback saving every ``every`` edits and after the last one;
        edit time is counted from this call on, on top of the restored seconds."""
        t0 = time.perf_counter()
        prior = list(self._outcomes)

        def cb(done: int, outcomes: list) -> None:
            if done % self.every == 0 or done == total:
                self.save(edited, adapter, done, prior + list(outcomes), self._seconds0 + time.perf_counter() - t0)

        return cb

