"""The benchmark matrix (issue 21) as one resumable entry point.

Every cell (model × data × setting) and method becomes ``bench_baft.py`` jobs over one
checkpoint folder per model and data (``ROOT/<model>_<source>/``): the unedited model's
scores once per cell, each sequential run edited (``--edit-only``, checkpointed every 50 edits)
then scored, each single-edit run edited and scored edit by edit. A job that finishes leaves
``ROOT/done/<job>.json``; a job that stops (the session ends, Ctrl-C) starts again where its
checkpoint stopped the next time the same command runs. Jobs run ``--jobs`` at a time (one
torch thread each), a job only once those it needs are done. Results:
``benchmarks/results/matrix_<model>_<source>_<setting><N>_<method>.{json,md}``.

Usage::

    python -m benchmarks.matrix --root RUNS --list              # the plan and what is done
    python -m benchmarks.matrix --root RUNS --jobs 2            # run (or resume) all of it
    python -m benchmarks.matrix --root RUNS --only smollm2-135m_counterfact_seq1000 --jobs 2
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.jobs import Job, run_jobs  # noqa: E402

#: the methods of every cell (the reference without scope, both mechanisms, their combination)
METHODS = ("loreft", "baft", "baft_ns", "grace", "balancedit")
#: the two best methods, the only ones run to 10,000 edits (generality: BaFT; locality and
#: reliability: the BalancEdit codebook; docs/results.md#which-method-for-my-case)
LONG_METHODS = ("baft", "balancedit")


@dataclass(frozen=True)
class Cell:
    """One row of the matrix: ``n`` edits (``"all"``: every record) of ``source`` on ``model``."""

    model: str
    source: str
    setting: str  # "single" or "seq"
    n: int | str
    methods: tuple[str, ...] = METHODS

    @property
    def name(self) -> str:
        return f"{self.model}_{self.source}_{self.setting}{self.n}"


#: in the order they start: the long runs first, so the other core works through the rest beside them
CELLS = (
    Cell("smollm2-135m", "counterfact", "seq", 10000, LONG_METHODS),
    Cell("smollm2-135m", "counterfact", "seq", 1000),
    Cell("smollm2-135m", "counterfact", "single", 200),
    Cell("smollm2-135m", "zsre", "single", 200),
    Cell("smollm2-135m", "zsre_all", "seq", "all"),
    Cell("gemma3-270m", "counterfact", "single", 200),
    Cell("gemma3-270m", "counterfact", "seq", 1000),
    Cell("gemma3-270m", "zsre", "single", 200),
    Cell("gemma3-270m", "zsre", "seq", 1000),
)
#: what every job passes to bench_baft.py: the final cost (bf16 training), three latency repeats
COMMON = ("--mixed-precision", "bf16", "--latency-repeats", "3")
#: kept states of a 10,000-edit run, scored with it (the growth plot's points)
MILESTONES = {10000: "100,1000,2000,5000"}


def plan(root: Path, cells=CELLS, python: str = sys.executable) -> list[Job]:
    """The jobs of every cell, in the order they may start.

    Example::

        [j.name for j in plan(Path("runs"), cells=CELLS[:1])][:2]
        # ['smollm2-135m_counterfact_seq10000_pre', 'smollm2-135m_counterfact_seq10000_baft_edit']
    """
    jobs: list[Job] = []
    for cell in cells:
        ck = root / f"{cell.model}_{cell.source}"
        # the script relative to the repository root (where jobs run), so a moved clone keeps its done markers
        base = [python, "benchmarks/bench_baft.py", "--model", cell.model, "--source", cell.source,
                "--checkpoint-dir", str(ck), *COMMON]
        counts = (["--single", str(cell.n), "--sequential", "0"] if cell.setting == "single"
                  else ["--single", "0", "--sequential", str(cell.n)])
        pre = f"{cell.name}_pre"  # the unedited model scored once, in parts, for every method
        jobs.append(Job(pre, [*base, *counts, "--methods", "none"]))
        for method in cell.methods:
            result = ["--methods", method, "--name", f"matrix_{cell.name}_{method}"]
            if cell.setting == "single":
                jobs.append(Job(f"{cell.name}_{method}", [*base, *counts, *result], [pre]))
                continue
            keep = ["--milestones", MILESTONES[cell.n]] if cell.n in MILESTONES else []
            edit = f"{cell.name}_{method}_edit"
            jobs.append(Job(edit, [*base, *counts, *result, *keep, "--checkpoint-every", "50", "--edit-only"]))
            jobs.append(Job(f"{cell.name}_{method}", [*base, *counts, *result, *keep, "--checkpoint-every", "50"],
                            [pre, edit]))
    return jobs


def select(jobs: list[Job], patterns: list[str]) -> list[Job]:
    """The jobs matching any of ``patterns`` (a job's name, a cell's name for all its jobs, or an
    fnmatch glob), with the jobs they need."""
    if not patterns:
        return jobs
    by_name = {j.name: j for j in jobs}
    keep: set[str] = set()

    def add(name: str) -> None:
        if name not in keep:
            keep.add(name)
            for need in by_name[name].needs:
                add(need)

    for pat in patterns:
        if any(c in pat for c in "*?["):
            hits = [j.name for j in jobs if fnmatch.fnmatch(j.name, pat)]
        else:  # a job's name, else a cell's name (all its jobs)
            hits = [pat] if pat in by_name else [j.name for j in jobs if j.name.startswith(pat + "_")]
        if not hits:
            raise SystemExit(f"--only {pat!r} matches no job; --list shows them")
        for name in hits:
            add(name)
    return [j for j in jobs if j.name in keep]


def done_path(root: Path, job: Job) -> Path:
    return root / "done" / f"{job.name}.json"


def is_done(root: Path, job: Job) -> bool:
    """A job is done when its marker holds the same command (a changed plan runs it again)."""
    path = done_path(root, job)
    return path.is_file() and json.loads(path.read_text()).get("argv") == job.argv[1:]


def last_progress(log: Path, width: int = 150, tail: int = 4096) -> str:
    """The last status line of a job's log (a progress bar's last refresh, or the last printed
    line), cut to ``width`` characters; ``""`` without a log."""
    if not log.is_file():
        return ""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - tail))
        text = f.read().decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    return lines[-1][:width] if lines else ""


def run(jobs: list[Job], root: Path, n_jobs: int, poll_s: float = 1.0, log=print) -> dict[str, str]:
    """Run the jobs not yet done, ``n_jobs`` at a time, each once every job it needs is done
    (:func:`benchmarks.jobs.run_jobs`; logs appended to ``root/logs/<job>.log``), and mark each
    one that succeeds in ``root/done/``. Returns ``{job: "done" | "failed" | "skipped"}`` for
    the jobs this call ran or skipped."""
    (root / "done").mkdir(parents=True, exist_ok=True)
    finished = {j.name for j in jobs if is_done(root, j)}

    def mark(job: Job, seconds: float) -> None:
        marker = {"argv": job.argv[1:], "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = done_path(root, job).with_suffix(".tmp")
        tmp.write_text(json.dumps(marker, indent=1))
        os.replace(tmp, done_path(root, job))

    out = run_jobs([j for j in jobs if j.name not in finished], n_jobs, root / "logs", poll_s=poll_s, log=log,
                   finished=finished, append=True, on_success=mark)
    return {name: r["status"] for name, r in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder of the checkpoints, logs and done markers (kept across sessions)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="jobs at once (default: the cores, at most 2)")
    p.add_argument("--only", action="append", default=[], help="a job's or a cell's name, or a glob (repeatable)")
    p.add_argument("--list", action="store_true", help="print the jobs, their state and commands, and exit")
    args = p.parse_args(argv)
    root = Path(args.root).resolve()
    jobs = select(plan(root), args.only)
    if args.list:
        for job in jobs:
            state = "done" if is_done(root, job) else ("ready" if all(is_done(root, j) for j in jobs if j.name in job.needs)
                                                       else "waits")
            print(f"{state:5}  {job.name}\n       {' '.join(job.argv[1:])}")
            last = last_progress(root / "logs" / f"{job.name}.log") if state != "done" else ""
            if last:
                print(f"       last: {last}")
        return 0
    root.mkdir(parents=True, exist_ok=True)
    lock = (root / "matrix.lock").open("a")
    try:  # one runner per root: two would run the same checkpoints at once
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another benchmarks.matrix is running on {root}") from None
    status = run(jobs, root, args.jobs, log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    failed = sorted(n for n, s in status.items() if s != "done")
    print(f"{sum(s == 'done' for s in status.values())} jobs done, {len(failed)} not: {', '.join(failed) or '-'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
