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
    "add_subject_locality",
    "Timer",
    "median_time",
    "latency_ratio",
    "forward_backward_seconds",
    "peak_memory_mib",
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


#: zsRE's training-split records get case ids from here in ``source="zsre_all"`` (the eval
#: file's record ids run below it), so every request of the joint set has its own id
ZSRE_TRAIN_ID_BASE = 100_000
SOURCES = ("counterfact", "zsre", "zsre_all")


def select_requests(n: int, seed: int = 0, offset: int = 0, path: str | None = None, source: str = "counterfact"):
    """``n`` requests chosen deterministically (a seeded sample after ``offset``) from the dev data.

    ``source``: ``"counterfact"`` (:func:`repedit.eval.data.load_counterfact`), ``"zsre"``
    (:func:`repedit.eval.data.load_zsre`, EasyEdit's convention: edit toward ``alt``; records
    with an empty ``alt`` are skipped) or ``"zsre_all"``: every valid zsRE record, the eval
    file's (seeded order) then the training split's (``zsre_train_1k.json``, seeded order, case
    ids from :data:`ZSRE_TRAIN_ID_BASE`). Returns (requests, data info dict).
    """
    from dataclasses import replace

    from repedit.eval.data import data_info, default_data_dir, load_counterfact, load_zsre, to_requests

    if source == "counterfact":
        ds = load_counterfact(path, limit=n, offset=offset, seed=seed)
    elif source == "zsre":
        ds = load_zsre(path, limit=n, offset=offset, seed=seed, skip_invalid=True)
    elif source == "zsre_all":
        if path is not None:
            raise ValueError("source 'zsre_all' reads both zsRE files from the data folder; it takes no path")
        ev = load_zsre(seed=seed, skip_invalid=True)
        tr = load_zsre(default_data_dir() / "zsre" / "zsre_train_1k.json", seed=seed, skip_invalid=True)
        both = to_requests(ev) + [replace(r, case_id=ZSRE_TRAIN_ID_BASE + int(r.case_id)) for r in to_requests(tr)]
        info = {"source": "zsre_all", "zsre_target": data_info(ev).get("zsre_target"), "offset": offset, "limit": n,
                "seed": seed, "files": [data_info(ev), data_info(tr)], "train_case_id_base": ZSRE_TRAIN_ID_BASE}
        chosen = both[offset: offset + n]
        info["rows"] = len(chosen)
        return chosen, info
    else:
        raise ValueError(f"unknown source {source!r} ({', '.join(SOURCES)})")
    return to_requests(ds), data_info(ds)


def add_subject_locality(reqs, model, tok, per_request: int = 3, seed: int = 0, source: str = "counterfact",
                         edited=None) -> dict:
    """Give each request ``subject_locality_prompts``: its subject asked about other relations.

    Sources, never the request's own evaluation fields: other dev records with the same subject
    and another relation (their prompt and true answer), then ROME's ``known_1000.json``
    templates of other relations filled with the subject (answered by the unedited model's
    greedy first words, since only agreement with it is scored; ``edited``: the EditableModel
    wrapping ``model``, whose edits are switched off for that). Up to ``per_request`` per
    request, chosen deterministically. CounterFact only (zsRE has no relation templates).
    Returns what was built (counts per source).
    """
    import hashlib
    import json

    from repedit.eval.data import default_data_dir
    from repedit.eval.metrics import generate_text, truncate_answer
    from repedit.requests import LocalityPrompt, normalize_text

    if source != "counterfact":
        return {"subject_locality": "not built (no relation templates)"}
    data = default_data_dir()
    records = json.loads((data / "counterfact" / "counterfact.json").read_text(encoding="utf-8"))
    by_subject: dict[str, list[dict]] = {}
    for rec in records:
        by_subject.setdefault(rec["subject"], []).append(rec)
    known = json.loads((data / "known_facts" / "known_1000.json").read_text(encoding="utf-8"))
    rel_of: dict[str, str] = {}  # template -> Wikidata relation id
    templates: dict[str, list[str]] = {}  # relation id -> its templates
    for k in known:
        t = k["template"]
        rel_of.setdefault(t, k["relation_id"])
        if t not in templates.setdefault(k["relation_id"], []):
            templates[k["relation_id"]].append(t)

    def rank(key: str, items: list) -> list:
        return sorted(items, key=lambda x: hashlib.sha1(f"{seed}|{key}|{x}".encode()).hexdigest())

    counts = {"sibling_records": 0, "known_templates": 0}
    pending: list[tuple[int, str]] = []
    for i, req in enumerate(reqs):
        own = rel_of.get(req.relation or "")
        banned = req.evaluation_prompts() | {normalize_text(req.prompt)}

        words = _content_words(req.relation or "")

        def other_relation(template: str) -> bool:
            """Another relation: not the same relation id where both are known, and no shared
            content word ("language" in "The language used by {} is"), which could make it a
            paraphrase of the edited fact rather than a locality probe."""
            theirs = rel_of.get(template)
            if own is not None and theirs is not None and theirs == own:
                return False
            return template != req.relation and not (words & _content_words(template))

        siblings = {r["prompt"]: r["ground_truth"] for r in by_subject.get(req.subject or "", [])
                    if other_relation(r["prompt"].replace(req.subject, "{}")) and normalize_text(r["prompt"]) not in banned
                    and r["ground_truth"] != req.ground_truth}
        out = [LocalityPrompt(p, siblings[p]) for p in rank(req.prompt, list(siblings))[:per_request]]
        counts["sibling_records"] += len(out)
        others = [ts[0] for rid, ts in sorted(templates.items()) if rid != own and other_relation(ts[0])]
        for t in rank(req.prompt, others)[: per_request - len(out)]:
            prompt = t.replace("{}", req.subject, 1)
            if normalize_text(prompt) not in banned:
                pending.append((i, prompt))
        req.subject_locality_prompts = out
    if pending:
        with torch_no_edits(edited):
            texts = generate_text(model, tok, [p for _, p in pending], 4)
        for (i, prompt), text in zip(pending, texts):
            answer = truncate_answer(text)
            if answer:
                reqs[i].subject_locality_prompts.append(LocalityPrompt(prompt, answer))
                counts["known_templates"] += 1
    return {"subject_locality": counts, "subject_locality_per_request": per_request}


_STOP = {"that", "this", "with", "from", "which", "what", "where", "their", "there", "been", "have", "were", "into",
         "also", "about", "than", "then", "they", "them", "does", "work", "works"}


def _content_words(template: str) -> set[str]:
    import re

    return {w.lower() for w in re.findall(r"[A-Za-z]+", template) if len(w) > 3 and w.lower() not in _STOP}


def torch_no_edits(edited):
    """The unedited model: ``edited.disabled()`` for an EditableModel, else nothing."""
    import contextlib

    return edited.disabled() if edited is not None else contextlib.nullcontext()


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


def forward_backward_seconds(editor, request, repeats: int = 5) -> float:
    """Median time of one forward+backward over ``request``'s training batch, with a trainable
    LoReFT at the editor's site (the gradient flows from the logits down to the site)."""
    import torch

    from repedit.editing import target_positions
    from repedit.positions import encode

    edited, cfg = editor.edited, editor.config
    prompts, _ = editor.training_prompts([request], [0])
    batch = encode(editor.tokenizer, prompts, [" " + request.target_new] * len(prompts),
                   [request.subject] * len(prompts)).to(editor.device)
    layer = editor.default_layers()[0]
    probe = edited.add("cost_probe", "loreft", layer=layer, positions=cfg.positions, config={"rank": 2})
    probe.train()
    positions, target, valid = target_positions(batch.labels)
    times = []
    try:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with batch.info():
                out = edited.model(**batch.model_inputs(), logits_to_keep=positions)
            loss = torch.nn.functional.cross_entropy(out.logits[valid].float(), target[valid])
            loss.backward()
            times.append(time.perf_counter() - t0)
    finally:
        edited.remove("cost_probe")
    return statistics.median(times[1:])


def peak_memory_mib(device: str = "cpu") -> float:
    """The process's peak memory so far in MiB: the CUDA allocator's peak on ``"cuda"``, else the
    peak resident set size (Linux ``ru_maxrss``; the model, the edits and the scoring together)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


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
