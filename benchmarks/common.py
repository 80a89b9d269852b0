"""Shared benchmark helpers: record selection, timing, environment capture, result writing.

Every benchmark script writes ``<name>.json`` (all numbers plus the exact command, package
versions, machine description and model fingerprint) and ``<name>.md`` (a table and the
command) under ``benchmarks/results/``.

Example::

    from benchmarks.common import select_requests, environment, write_results, Timer
    reqs = select_requests(n=50, seed=0)
    with Timer() as t:
        ...
    write_results("baft_quick", {"rows": rows, "seconds": t.seconds}, table=rows)
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: the benchmarks read CounterFact, zsRE and known facts from ../shared/data (through
#: $REPEDIT_DATA, the only place repedit looks)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if SHARED_DATA.is_dir():
    os.environ.setdefault("REPEDIT_DATA", str(SHARED_DATA))

__all__ = [
    "RESULTS_DIR",
    "select_requests",
    "Timer",
    "median_time",
    "latency_ratio",
    "environment",
    "command_line",
    "markdown_table",
    "write_results",
    "set_threads",
]


def set_threads(n: int = 1) -> None:
    """Pin torch to ``n`` threads (reproducible timings on a shared machine)."""
    import torch

    torch.set_num_threads(n)


def select_requests(n: int, seed: int = 0, offset: int = 0, path: str | None = None, source: str = "counterfact"):
    """``n`` requests chosen deterministically (a seeded sample after ``offset``) from the dev data.

    ``source``: ``"counterfact"`` (:func:`repedit.eval.data.load_counterfact`) or ``"zsre"``
    (:func:`repedit.eval.data.load_zsre`, EasyEdit's convention: edit toward ``alt``; records
    with an empty ``alt`` are skipped). Returns (requests, data info dict).
    """
    from repedit.eval.data import data_info, load_counterfact, load_zsre, to_requests

    if source == "counterfact":
        ds = load_counterfact(path, limit=n, offset=offset, seed=seed)
    elif source == "zsre":
        ds = load_zsre(path, limit=n, offset=offset, seed=seed, skip_invalid=True)
    else:
        raise ValueError(f"unknown source {source!r} (counterfact or zsre)")
    return to_requests(ds), data_info(ds)


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def median_time(fn: Callable[[], Any], repeats: int = 7, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def latency_ratio(run_edited: Callable[[], Any], run_base: Callable[[], Any], repeats: int = 15, warmup: int = 2) -> dict:
    """Median forward time of the edited and the unedited model, interleaved in the same
    process on the same inputs, and their ratio. Also reported: the median of per-pair ratios
    and the ratio of the fastest runs (``min_ratio``: interference from other processes only
    ever adds time, so the minima are the least disturbed estimate on a shared machine)."""
    for _ in range(warmup):
        run_base()
        run_edited()
    base, edited, ratios = [], [], []
    for i in range(repeats):
        t = []
        for fn in ((run_base, run_edited) if i % 2 == 0 else (run_edited, run_base)):
            s = time.perf_counter()
            fn()
            t.append(time.perf_counter() - s)
        tb, te = t if i % 2 == 0 else t[::-1]  # (the same callable on both sides is an A/A test)
        base.append(tb)
        edited.append(te)
        ratios.append(te / tb)
    mb, me = statistics.median(base), statistics.median(edited)
    return {"base_s": mb, "edited_s": me, "ratio": me / mb, "median_pair_ratio": statistics.median(ratios),
            "min_ratio": min(edited) / min(base), "repeats": repeats}


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(model: Any = None, model_name: str | None = None) -> dict:
    """Versions, machine description, git commit and (with ``model``) the model fingerprint."""
    import torch

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        # a run from a copy of the tree without .git names its commit in REPEDIT_GIT_COMMIT
        "git_commit": _git("rev-parse", "HEAD") or os.environ.get("REPEDIT_GIT_COMMIT"),
        "git_dirty": bool(_git("status", "--porcelain")),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        env["cpu_model"] = names[0] if names else None
        with open("/proc/meminfo") as f:
            env["mem_total"] = f.readline().split(":", 1)[1].strip()
        env["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    for pkg in ("transformers", "safetensors", "tokenizers", "numpy"):
        try:
            env[pkg] = __import__(pkg).__version__
        except ImportError:
            pass
    try:
        from repedit.version import __version__

        env["repedit"] = __version__
    except ImportError:
        pass
    if model is not None:
        from repedit.adapters import fingerprint

        env["model"] = {"name": model_name, "fingerprint": fingerprint(model)}
        try:
            env["model"]["device"] = str(next(model.parameters()).device)
        except (StopIteration, AttributeError):
            pass
    return env


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return "–" if v is None else str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out)


def write_results(name: str, payload: Mapping[str, Any], table: Sequence[Mapping[str, Any]] | None = None,
                  columns: Sequence[str] | None = None, notes: str = "", directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` (payload + command) and ``<name>.md`` (notes, table, command)."""
    d = directory or RESULTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    data = dict(payload)
    data.setdefault("command", command_line())
    jp, mp = d / f"{name}.json", d / f"{name}.md"
    tmp = jp.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    os.replace(tmp, jp)
    md = [f"# {name}", ""]
    if notes:
        md += [notes.strip(), ""]
    if table:
        md += [markdown_table(table, columns), ""]
    md += ["Command:", "", "```", data["command"], "```", ""]
    env = data.get("environment")
    if env:
        gpu = f", GPU {env['gpu']}" if env.get("gpu") else ""
        md += [f"Machine: {env.get('cpu_model')} ({env.get('cpu_count')} CPUs, torch threads {env.get('torch_threads')}{gpu}), "
               f"torch {env.get('torch')}, transformers {env.get('transformers')}, repedit {env.get('repedit')}, "
               f"git {str(env.get('git_commit'))[:10]}{' (dirty)' if env.get('git_dirty') else ''}.", ""]
    mp.write_text("\n".join(md))
    return jp, mp
