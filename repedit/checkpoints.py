"""Checkpoints of long sequential editing runs.

A long sequential run (1,000 BaFT edits take hours on a CPU) saves its adapter, outcomes and
edit time every ``every`` edits under ``root/<key>/``; a later process with the same requests
and config loads the last checkpoint and continues with ``Editor.edit(start=k)``, which gives
the same result as an uninterrupted run. Used by ``repedit edit --checkpoint-every/--resume``
and by ``benchmarks/bench_baft.py --checkpoint-dir``.

Milestones (``keep=(1000, 5000)``) are copies of the checkpoint at those edit counts, kept in
``root/<key>/keep_<done>/`` and loaded with ``restore(..., milestone=1000)``: one 10,000-edit
run yields the states after 1,000 and 5,000 of its edits for a growth curve. (They are not the
result of a separate 1,000-edit run: BaFT and the codebook take negatives from every request of
the ``edit()`` call, later ones included.)

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

    def __init__(self, root: str | os.PathLike, key: str, every: int, identity: dict[str, Any],
                 keep: tuple[int, ...] = ()):
        if every < 1:
            raise ValueError("every must be >= 1")
        if any(int(k) < 1 for k in keep):
            raise ValueError(f"milestones must be >= 1, got {tuple(keep)}")
        self.dir = Path(root) / key
        self.every = every
        self.keep = tuple(sorted({int(k) for k in keep}))
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

    def folder(self, milestone: int | None = None) -> Path:
        """Where the last checkpoint (or the milestone after ``milestone`` edits) lives."""
        return self.dir if milestone is None else self.dir / f"keep_{int(milestone):06d}"

    def state(self, milestone: int | None = None) -> dict | None:
        """The saved ``state.json`` (``done``, ``seconds``, ``step_dir``, ``outcomes``,
        ``saved_at``) of the last checkpoint, or of the milestone after ``milestone`` edits; None
        when there is no checkpoint (a missing milestone raises FileNotFoundError). Raises
        :class:`CheckpointMismatch` when it was written for other requests or another config."""
        path = self.folder(milestone) / STATE
        if not path.is_file():
            if milestone is not None:
                raise FileNotFoundError(f"{path.parent} holds no milestone (kept: {self.milestones()})")
            return None
        state = json.loads(path.read_text())
        if state.get("identity") != self.identity:
            raise CheckpointMismatch(
                f"{path} was written for other requests or another config; use another directory or delete it")
        return state

    def restore(self, edited: Any, adapter: str, milestone: int | None = None) -> tuple[int, list, float]:
        """Load the last checkpoint's adapter (or the kept one after ``milestone`` edits) onto
        ``edited``; returns (edits done, their outcomes, edit seconds so far), or (0, [], 0.0)
        when there is none. A missing milestone raises FileNotFoundError. Only restoring the
        last checkpoint sets where :meth:`callback` continues from."""
        from repedit.adapters import attach_adapter
        from repedit.editing import RequestOutcome

        state = self.state(milestone)
        if state is None:
            return 0, [], 0.0
        attach_adapter(edited, self.folder(milestone) / state["step_dir"], adapter=adapter)
        outcomes = [RequestOutcome(**o) for o in state["outcomes"]]
        if milestone is None:
            self._outcomes = list(outcomes)
            self._seconds0 = float(state["seconds"])
        return int(state["done"]), outcomes, float(state["seconds"])

    def save(self, edited: Any, adapter: str, done: int, outcomes: list, seconds: float) -> None:
        """Write the adapter to a new step folder, then point ``state.json`` at it (atomic
        rename), then drop older step folders: a crash leaves the previous checkpoint valid.
        At a milestone (``done in keep``) the step is also copied to ``keep_<done>/``."""
        from repedit.adapters import save_adapter

        self.dir.mkdir(parents=True, exist_ok=True)
        step = f"step_{done:06d}"
        if (self.dir / step).exists():
            shutil.rmtree(self.dir / step)
        save_adapter(edited, self.dir / step, adapter=adapter)
        state = {"identity": self.identity, "done": done, "seconds": seconds, "step_dir": step,
                 "outcomes": [asdict(o) for o in outcomes], "saved_at": time.time()}
        _write_json(self.dir / STATE, state)
        for old in self.dir.glob("step_*"):
            if old.name != step:
                shutil.rmtree(old, ignore_errors=True)
        if done in self.keep:
            self._copy_step(self.dir, state, self.folder(done))

    def milestones(self) -> list[int]:
        """Edit counts with a kept copy in ``keep_<done>/``."""
        return sorted(int(p.name[5:]) for p in self.dir.glob("keep_*") if (p / STATE).is_file())

    @staticmethod
    def _copy_step(src_dir: Path, state: dict, dest: Path) -> None:
        """Copy ``state``'s step folder from ``src_dir`` into ``dest`` with its ``state.json``;
        ``dest`` appears whole or not at all (built beside, then renamed)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            shutil.copytree(src_dir / state["step_dir"], tmp / state["step_dir"])
            _write_json(tmp / STATE, state)
            if dest.exists():  # a milestone written again by a rerun, or a leftover without state
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def callback(self, edited: Any, adapter: str, total: int) -> Callable[[int, list], None]:
        """An ``Editor.edit`` callback saving every ``every`` edits, at each milestone and after the last one;
        edit time is counted from this call on, on top of the restored seconds."""
        t0 = time.perf_counter()
        prior = list(self._outcomes)

        def cb(done: int, outcomes: list) -> None:
            if done % self.every == 0 or done == total or done in self.keep:
                self.save(edited, adapter, done, prior + list(outcomes), self._seconds0 + time.perf_counter() - t0)

        return cb


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
