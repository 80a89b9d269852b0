"""Run benchmark commands side by side: at most ``n_jobs`` at once, each after the jobs it needs,
each one's output in its own log file (used by :mod:`benchmarks.run` and :mod:`benchmarks.matrix`).

Example::

    run_jobs([Job("a", ["python", "-c", "print(1)"]), Job("b", ["python", "-c", "print(2)"], needs=["a"])],
             n_jobs=2, log_dir=Path("/tmp/logs"))
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Job:
    """One command; ``needs``: the names of jobs that must succeed first."""

    name: str
    argv: list[str]
    needs: list[str] = field(default_factory=list)


def run_jobs(jobs: Sequence[Job], n_jobs: int, log_dir: Path, *, poll_s: float = 0.5, log: Callable[[str], None] = print,
             finished: set[str] | frozenset[str] = frozenset(), append: bool = False,
             on_success: Callable[[Job, float], None] | None = None) -> dict[str, dict]:
    """Run ``jobs`` in order, at most ``n_jobs`` at once (one torch thread each), each once every
    job it needs has succeeded here or is in ``finished``; a failed job's dependents are
    skipped. Each job's stdout and stderr go to ``log_dir/<name>.log`` (appended to, after a
    ``$ command`` line, with ``append``). Returns ``{name: {"status": "done" | "failed" |
    "skipped", "returncode", "seconds", "log"}}``. An interrupt terminates the running jobs."""
    if n_jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {n_jobs}")
    log_dir.mkdir(parents=True, exist_ok=True)
    succeeded = set(finished)
    pending, running, out = list(jobs), {}, {}
    try:
        while pending or running:
            for job in list(pending):
                if any(out.get(n, {}).get("status") in ("failed", "skipped") for n in job.needs):
                    out[job.name] = {"status": "skipped", "returncode": None, "seconds": 0.0, "log": None}
                    pending.remove(job)
                    log(f"{job.name}: skipped (a job it needs failed)")
            ready = [j for j in pending if all(n in succeeded for n in j.needs)]
            while ready and len(running) < n_jobs:
                job = ready.pop(0)
                pending.remove(job)
                path = log_dir / f"{job.name}.log"
                fh = path.open("a" if append else "w")
                if append:
                    fh.write(f"\n$ {' '.join(job.argv)}\n")
                    fh.flush()
                log(f"$ {' '.join(job.argv)}  > {path}")
                proc = subprocess.Popen(job.argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, OMP_NUM_THREADS="1"))
                running[job.name] = (proc, time.perf_counter(), fh, path, job)
            if not running:
                break  # nothing runs and nothing can start: the rest waits on jobs that did not succeed
            time.sleep(poll_s)
            for name, (proc, t0, fh, path, job) in list(running.items()):
                if proc.poll() is None:
                    continue
                fh.close()
                del running[name]
                seconds = time.perf_counter() - t0
                ok = proc.returncode == 0
                out[name] = {"status": "done" if ok else "failed", "returncode": proc.returncode,
                             "seconds": round(seconds, 1), "log": str(path)}
                if ok:
                    succeeded.add(name)
                    if on_success is not None:
                        on_success(job, seconds)
                    log(f"{name}: ok in {seconds:.0f} s")
                else:
                    log(f"{name}: FAILED (exit {proc.returncode}) in {seconds:.0f} s; last lines of {path}:")
                    print("".join(path.read_text(errors="replace").splitlines(keepends=True)[-20:]), file=sys.stderr)
        for job in pending:
            out.setdefault(job.name, {"status": "skipped", "returncode": None, "seconds": 0.0, "log": None})
    finally:  # interrupted (Ctrl-C): no benchmark keeps running behind the user's back
        for proc, _, fh, _, _ in running.values():
            proc.terminate()
            proc.wait()
            fh.close()
    return out
