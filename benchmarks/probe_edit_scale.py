"""Probe: is a BaFT edit's change too small on paraphrases? Each single edit (defaults) is
scored with its change Φ(h) − h scaled by α at inference, α in ``--scales``.

The scaling is applied by wrapping ``BaFT.edit`` in this script only (it is not a library
knob): the question is whether a larger write turns "the new answer beats the old one" into
"the new answer is the argmax" on paraphrases. Per-record results are kept in
``--checkpoint`` (a JSON file; a stopped run resumes).

Example::

    python benchmarks/probe_edit_scale.py --n 30 --scales 1,1.5,2,3 --checkpoint ckpt.json --name edit_scale_30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_baft import PROTOCOLS, flat  # noqa: E402
from benchmarks.common import add_subject_locality, environment, select_requests, set_threads, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30, help="single edits (dev CounterFact, seed 0)")
    p.add_argument("--scales", default="1,1.5,2,3", help="comma list of α")
    p.add_argument("--checkpoint", required=True, help="JSON file of per-record results (resumed)")
    p.add_argument("--name", default="edit_scale_30")
    args = p.parse_args(argv)
    scales = [float(x) for x in args.scales.split(",")]

    import torch

    from repedit import models
    from repedit.editing import Editor, EditorConfig
    from repedit.eval.metrics import build_case_records, evaluate_requests, summarize
    from repedit.hooks import EditableModel
    from repedit.methods.baft import BaFT

    set_threads(1)
    model, tok = models.load("smollm2-135m")
    model.eval()
    edited = EditableModel(model, tok)
    reqs, data = select_requests(args.n, seed=0)
    data.update(add_subject_locality(reqs, model, tok, per_request=3, seed=0, source="counterfact", edited=edited))
    alpha = [1.0]
    plain = BaFT.edit

    def scaled(self, h: torch.Tensor, ctx=None) -> torch.Tensor:
        out = plain(self, h, ctx)
        return out if alpha[0] == 1.0 else h.to(out.dtype) + alpha[0] * (out - h.to(out.dtype))

    BaFT.edit = scaled
    ck = Path(args.checkpoint)
    done = json.loads(ck.read_text()) if ck.exists() else {}
    pre = evaluate_requests(model, tok, reqs, protocols=PROTOCOLS)
    editor = Editor(edited, tok, EditorConfig(method="baft"))
    for i, req in enumerate(reqs):
        if str(i) in done and all(str(a) in done[str(i)]["post"] for a in scales):
            continue
        editor.reset()
        t = time.perf_counter()
        res = editor.edit(req)
        rec = {"seconds": time.perf_counter() - t, "steps": res.outcomes[0].steps, "post": {}}
        for a in scales:
            alpha[0] = a
            rec["post"][str(a)] = evaluate_requests(model, tok, [req], protocols=PROTOCOLS, pre=[pre[i]])[0]
        alpha[0] = 1.0
        done[str(i)] = rec
        ck.with_suffix(".tmp").write_text(json.dumps(done))
        os.replace(ck.with_suffix(".tmp"), ck)
    rows = []
    for a in scales:
        posts = [done[str(i)]["post"][str(a)] for i in range(len(reqs))]
        rows.append({"scale": a, **flat(summarize(build_case_records(reqs, pre, posts)))})
    write_results(args.name, {"rows": rows, "data": data, "environment": environment(model, "smollm2-135m"),
                              "mean_steps": sum(r["steps"] for r in done.values()) / len(done)}, table=rows,
                  columns=["scale", "rewrite_acc", "rephrase_acc", "locality", "subject_loc", "gen_rephrase_prefix",
                           "gen_rephrase", "gen_rewrite", "gen_loc_agree", "gen_subject_agree", "efficacy",
                           "paraphrase"],
                  notes="Single BaFT edits (defaults, SmolLM2, dev CounterFact seed 0), each scored with its change "
                        "scaled by α at inference. Columns as in bench_baft's tables.")


if __name__ == "__main__":
    main()
