"""Score a saved codebook at other radius scales on every edited record, no re-editing.

``bench_codebook.py`` scores radius scales other than 1.0 on the first ``--sweep-subset``
records only. This script loads a codebook saved with ``bench_codebook.py --save-dir``, sets
``radius_scale`` (an inference-time knob) and scores all ``--n`` records of the same seeded
selection, teacher-forced and probability protocols, against the unedited model's scores
(computed here, or read from the ``pre.json`` a ``--jobs 2`` run leaves in its work folder).

Usage::

    python benchmarks/bench_codebook.py --n 1000 --jobs 2 --save-dir /tmp/cb ...     # makes the codebooks
    python benchmarks/bench_codebook_rescore.py --adapter-dir /tmp/cb --adapter balanced --scales 0.8 --n 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_codebook import evaluate, log, pick  # noqa: E402
from benchmarks.common import environment, select_requests, set_threads, write_results  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter-dir", required=True, help="folder bench_codebook.py --save-dir wrote")
    ap.add_argument("--adapter", default="balanced", help="adapter (radius mode) inside it")
    ap.add_argument("--scales", default="0.8", help="comma list of radius scales")
    ap.add_argument("--n", type=int, default=1000, help="records edited into the codebook (all are scored)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pre", default=None, help="pre.json of the bench_codebook.py --jobs 2 run that made the codebook "
                                                "(unedited scores of the same records); computed when omitted")
    ap.add_argument("--name", default="codebook_rescore")
    args = ap.parse_args(argv)
    set_threads(1)
    from repedit import models
    from repedit.eval.metrics import evaluate_requests
    from repedit.hooks import EditableModel

    t0 = time.perf_counter()
    model, tok = models.load(args.model)
    reqs, info = select_requests(args.n)
    if args.pre:
        pre = json.loads(Path(args.pre).read_text())["pre"]
        if len(pre) != len(reqs):
            raise SystemExit(f"{args.pre} holds {len(pre)} unedited records, expected {len(reqs)}")
    else:
        log("scoring the unedited model")
        pre = evaluate_requests(model, tok, reqs, protocols=("teacher_forced", "probability"))
    edited = EditableModel(model, tok)
    edited.load_adapter(args.adapter_dir, adapter=args.adapter)
    cb = edited.attachments()[0].module
    rows = []
    for s in [float(x) for x in args.scales.split(",")]:
        cb.radius_scale = s
        summ = evaluate(model, tok, reqs, pre)
        row = {"mode": args.adapter, "radius_scale": s, "n_scored": len(reqs), **pick(summ),
               "hm_rome": summ["hm"].get("probability/rome")}
        rows.append(row)
        log(f"scale {s}: {row}")
    payload = {"rows": rows, "entries": cb.n_entries, "layer": edited.attachments()[0].layer, "data": info,
               "seconds": time.perf_counter() - t0, "environment": environment(model, args.model)}
    write_results(args.name, payload, rows,
                  notes=f"Codebook `{args.adapter}` ({cb.n_entries} entries, layer {payload['layer']}) re-scored at other "
                        f"radius scales on all {len(reqs)} edited records. No re-editing: only the `radius_scale` knob changes.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
