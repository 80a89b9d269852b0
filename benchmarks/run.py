"""One entry point for the benchmarks: ``python -m benchmarks.run --quick`` (what ``make bench`` runs).

Runs each benchmark script in turn (quick or full mode), then redraws the Pareto plot.
``--matrix`` also runs the BaFT and codebook benchmarks on every (model, data) pair of
``--models`` × ``--sources`` (results named ``<bench>_<mode>_<model>_<source>``). Every
script writes JSON and Markdown (with its command, versions, model fingerprint and machine)
into ``benchmarks/results/``. The pyreft cross-check needs pyreft in a separate environment
and runs only when ``--pyreft-python`` names that environment's interpreter.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="minutes on 2 cores instead of hours")
    parser.add_argument("--only", default="baft,codebook,eval_speed,growth", help="comma list of benchmarks to run")
    parser.add_argument("--matrix", action="store_true", help="also run baft and codebook on every --models x --sources pair")
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m", help="models of the matrix")
    parser.add_argument("--sources", default="counterfact,zsre", help="dev data of the matrix")
    parser.add_argument("--pyreft-python", default=None, help="python of an environment with pyreft installed")
    args = parser.parse_args(argv)
    mode = ["--quick"] if args.quick else []
    failed = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *mode]
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd, cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if args.matrix:
        tag = "quick" if args.quick else "full"
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
                    print("$", " ".join(cmd), flush=True)
                    if subprocess.run(cmd, cwd=HERE.parent).returncode != 0:
                        failed.append(name)
    if args.pyreft_python:
        cmd = [args.pyreft_python, str(HERE / "bench_pyreft.py")]
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd, cwd=HERE.parent).returncode != 0:
            failed.append("pyreft")
    subprocess.run([sys.executable, str(HERE / "plot_pareto.py")], cwd=HERE.parent)
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
