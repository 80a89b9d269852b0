"""What the single-edit probes share (``probe_edit_scale``, ``probe_gate_open``): the model,
the dev records with their subject-locality prompts and unedited scores, a loop that edits each
record alone and scores it under several variants, checkpointed per record, and the summary rows.

Example::

    setup = probe_setup(30)
    done = edit_each(setup, Editor(setup.edited, setup.tok, EditorConfig(method="baft")), ["1", "2"],
                     Path("ckpt.json"), score=lambda editor, req, i, key, rec: ...)
    rows = summary_rows(setup, done, ["1", "2"], "scale")
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.bench_baft import PROTOCOLS, flat
from benchmarks.common import add_subject_locality, select_requests, set_threads


@dataclass
class ProbeSetup:
    model: Any
    tok: Any
    edited: Any
    reqs: list
    data: dict
    pre: list


def probe_setup(n: int, model_name: str = "smollm2-135m") -> ProbeSetup:
    """The model (one torch thread), ``n`` dev CounterFact records (seed 0) with 3
    subject-locality prompts each, and their unedited scores."""
    from repedit import models
    from repedit.eval.metrics import evaluate_requests
    from repedit.hooks import EditableModel

    set_threads(1)
    model, tok = models.load(model_name)
    model.eval()
    edited = EditableModel(model, tok)
    reqs, data = select_requests(n, seed=0)
    data.update(add_subject_locality(reqs, model, tok, per_request=3, seed=0, source="counterfact", edited=edited))
    pre = evaluate_requests(model, tok, reqs, protocols=PROTOCOLS)
    return ProbeSetup(model, tok, edited, reqs, data, pre)


def score_request(setup: ProbeSetup, i: int) -> dict:
    """Request ``i`` scored on the model as it is now (every protocol)."""
    from repedit.eval.metrics import evaluate_requests

    return evaluate_requests(setup.model, setup.tok, [setup.reqs[i]], protocols=PROTOCOLS, pre=[setup.pre[i]])[0]


def edit_each(setup: ProbeSetup, editor: Any, keys: list[str], checkpoint: Path,
              score: Callable[[Any, Any, int, str, dict], None]) -> dict:
    """Edit each record alone (``editor.reset()`` before each) and call ``score(editor, req, i,
    key, rec)`` for every variant key, which fills ``rec["post"][key]``. Records are kept in
    ``checkpoint`` (JSON, written atomically after each); records with every key are skipped."""
    done = json.loads(checkpoint.read_text()) if checkpoint.exists() else {}
    for i, req in enumerate(setup.reqs):
        if str(i) in done and all(k in done[str(i)]["post"] for k in keys):
            continue
        editor.reset()
        t = time.perf_counter()
        res = editor.edit(req)
        rec: dict = {"seconds": time.perf_counter() - t, "steps": res.outcomes[0].steps, "post": {}}
        for key in keys:
            score(editor, req, i, key, rec)
        done[str(i)] = rec
        tmp = checkpoint.with_suffix(".tmp")
        tmp.write_text(json.dumps(done))
        os.replace(tmp, checkpoint)
    return done


def summary_rows(setup: ProbeSetup, done: dict, keys: list[str], label: str) -> list[dict]:
    """One row per variant key: ``{label: float(key), **bench_baft's summary columns}``."""
    from repedit.eval.metrics import build_case_records, summarize

    rows = []
    for key in keys:
        posts = [done[str(i)]["post"][key] for i in range(len(setup.reqs))]
        rows.append({label: float(key), **flat(summarize(build_case_records(setup.reqs, setup.pre, posts)))})
    return rows


def mean_steps(done: dict) -> float:
    return sum(r["steps"] for r in done.values()) / max(1, len(done))
