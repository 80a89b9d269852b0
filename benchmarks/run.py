"""One entry point for the benchmarks: ``python -m benchmarks.run --quick`` (what ``make bench`` runs).

Runs the benchmark scripts (quick or full mode), ``--jobs`` at a time, one torch thread each
(default: one job per core, at most 2), each one's output in ``benchmarks/results/logs/``;
then redraws the Pareto plot and writes how long each took to ``bench_run_<mode>.json/.md``.
``--matrix`` also runs the BaFT and codebook benchmarks on every (model, data) pair of
``--models`` × ``--sources`` (results named ``<bench>_<mode>_<model>_<source>``). Every
script writes JSON and Markdown (with its command, versions, model fingerprint and machine)
into ``benchmarks/results/``. The pyreft cross-check needs pyreft in a separate environment
and runs only when ``--pyreft-python`` names that environment's interpreter.

Usage::

    python -m benchmarks.run --quick            # minutes on 2 cores
    python -m benchmarks.run --quick --jobs 1   # one after another
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS_DIR, environment, set_threads, write_results  # noqa: E402
from benchmarks.jobs import Job  # noqa: E402
from benchmarks.jobs import run_jobs as _run  # noqa: E402

#: longest first, so that with several jobs the short ones fill in beside it
BENCHMARKS = ("baft", "codebook", "eval_speed", "growth")


def run_jobs(commands: list[tuple[str, list[str]]], jobs: int, log_dir: Path, poll_s: float = 0.5) -> dict[str, dict]:
    """Run ``(name, argv)`` commands, at most ``jobs`` at once, each one's stdout and stderr
    into ``log_dir/<name>.log``; return ``{name: {"returncode", "seconds", "log", "status"}}``
    (:func:`benchmarks.jobs.run_jobs`).

    Example::

        run_jobs([("a", ["python", "-c", "print(1)"])], jobs=2, log_dir=Path("/tmp"))
    """
    return _run([Job(name, cmd) for name, cmd in commands], jobs, log_dir, poll_s=poll_s,
                log=lambda msg: print(msg, flush=True))


def build_commands(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The ``(name, argv)`` of every benchmark a run of ``benchmarks.run`` starts."""
    mode = ["--quick"] if args.quick else []
    tag = "quick" if args.quick else "full"
    out = [(f"{name}_{tag}", [sys.executable, str(HERE / f"bench_{name}.py"), *mode])
           for name in (n.strip() for n in args.only.split(",")) if name]
    if args.matrix:
        for model in args.models.split(","):
            for source in args.sources.split(","):
                if model == "smollm2-135m" and source == "counterfact":
                    continue  # the main runs above
                for bench in ("baft", "codebook"):
                    name = f"{bench}_{tag}_{model}_{source}"
                    cmd = [sys.executable, str(HERE / f"bench_{bench}.py"), *mode, "--model", model, "--source", source,
                           "--name", name]
                    if bench == "codebook":
                        cmd += ["--latency-entries", "0"]
                    out.append((name, cmd))
    if args.pyreft_python:
        out.append(("pyreft", [args.pyreft_python, str(HERE / "bench_pyreft.py")]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="minutes on 2 cores instead of hours")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma list of benchmarks to run")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="benchmarks run at once, one torch thread each (default: the cores, at most 2)")
    parser.add_argument("--matrix", action="store_true", help="also run baft and codebook on every --models x --sources pair")
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m", help="models of the matrix")
    parser.add_argument("--sources", default="counterfact,zsre", help="dev data of the matrix")
    parser.add_argument("--pyreft-python", default=None, help="python of an environment with pyreft installed")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    unknown = sorted({n.strip() for n in args.only.split(",") if n.strip()} - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}")
    start = time.perf_counter()
    done = run_jobs(build_commands(args), args.jobs, RESULTS_DIR / "logs")
    subprocess.run([sys.executable, str(HERE / "plot_pareto.py")], cwd=HERE.parent)
    wall = time.perf_counter() - start
    tag = "quick" if args.quick else "full"
    rows = [{"benchmark": name, "seconds": r["seconds"], "exit": r["returncode"]} for name, r in done.items()]
    rows.append({"benchmark": "all (wall)", "seconds": round(wall, 1), "exit": int(any(r["returncode"] for r in done.values()))})
    set_threads(1)  # the machine line reads the benchmarks' setting, not this parent's
    write_results(f"bench_run_{tag}", {"jobs": args.jobs, "wall_seconds": round(wall, 1), "runs": done,
                                       "environment": environment()},
                  table=rows, columns=["benchmark", "seconds", "exit"],
                  notes=f"Wall time of `benchmarks.run` ({tag}), {args.jobs} job(s) at once, one torch thread each.")
    print(f"all done in {wall / 60:.1f} min", flush=True)
    failed = [name for name, r in done.items() if r["returncode"] != 0]
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
