"""Sweep an inference knob (BaFT's gate shift by default) on a finished or partial sequential checkpoint.

``gate_shift`` is added to every gate logit at inference only, so one trained sequential run
can be scored at several shifts without retraining. This is how the default (−4) was chosen:
with hundreds of edits, the sigmoid tails of gates fitted to a logit of about −2 on negatives
(w ≈ 0.12 each) add up on unrelated prompts; a negative shift shuts them, while an edit's own
gates sit near +13 on its prompts and paraphrases.

Usage (the checkpoint folder of ``bench_baft.py --checkpoint-dir``; the unedited scores it
cached there are reused)::

    python benchmarks/bench_gate_shift.py --checkpoint-dir CKPT --key baft_seq1000 \
        --shifts 0,-2,-4,-7 --stride 2 --name gate_shift_seq1000
    # a long run's kept milestone (bench_baft --milestones 1000):
    python benchmarks/bench_gate_shift.py --checkpoint-dir CKPT --key baft_seq10000 --milestone 1000 ...

    # any other knob of the checkpoint's interventions (repedit.eval.knobs): a codebook's radius
    # scale, or every method's "scale"; --protocols adds greedy generation for the Pareto plot
    python benchmarks/bench_gate_shift.py --checkpoint-dir CKPT --key balancedit_seq10000 --milestone 2000 \
        --knob radius_scale --values 0.5,1,1.5 --protocols teacher_forced,probability,generation

Writes ``benchmarks/results/<name>.{json,md}``: efficacy / paraphrase / locality (and the
teacher-forced accuracies, and greedy-generation match with ``generation``) at each value, on
every ``--stride``-th edited request, all edits applied. ``--values ''`` scores a checkpoint
as saved: an interim score of any method's unfinished sequential run (copy its step folder and
``state.json`` first while it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_baft import flat, unedited_cache  # noqa: E402
from benchmarks.checkpoints import lookup  # noqa: E402
from benchmarks.common import environment, select_requests, set_threads, write_results  # noqa: E402

PROTOCOLS = ["teacher_forced", "probability"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", required=True, help="folder of bench_baft.py --checkpoint-dir")
    p.add_argument("--key", default="baft_seq1000", help="the run's subfolder (<method>_seq<N>)")
    p.add_argument("--adapter", default=None, help="adapter name in the checkpoint (default: the one the run "
                   "recorded, e.g. 'ns' for bench_baft's baft_ns)")
    p.add_argument("--knob", default="gate_shift",
                   help="the inference knob to sweep (repedit.eval.knobs): gate_shift (BaFT), radius_scale "
                        "(codebooks), scale (every method)")
    p.add_argument("--values", "--shifts", dest="values", default="0,-2,-4,-7",
                   help="comma list of knob values (write --values=-4,0 when it starts with a minus); '' scores the "
                        "checkpoint as saved, which also works for other methods (an interim score of a LoReFT run)")
    p.add_argument("--protocols", default=",".join(PROTOCOLS),
                   help="scoring protocols; add 'generation' for greedy-generation match (the Pareto plot's right "
                        "panel)")
    p.add_argument("--milestone", type=int, default=None, help="score the run's kept milestone after this many edits "
                   "(bench_baft --milestones) instead of its last checkpoint")
    p.add_argument("--stride", type=int, default=2, help="score every k-th edited request")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--source", default="counterfact")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default=None, help="results file stem (default <knob>_<key>)")
    args = p.parse_args(argv)
    set_threads(args.threads)

    from repedit import models
    from repedit.adapters import attach_adapter
    from repedit.eval.metrics import build_case_records, evaluate_requests, summarize
    from repedit.hooks import EditableModel
    from repedit.eval.knobs import get_knob, knob_setting

    from repedit.checkpoints import SequentialCheckpoint

    run = SequentialCheckpoint(args.checkpoint_dir, args.key, every=1, identity={}).folder(args.milestone)
    if not (run / "state.json").is_file():
        raise SystemExit(f"{run} holds no checkpoint" + (" (--milestone not kept)" if args.milestone else ""))
    state = json.loads((run / "state.json").read_text())
    n_total = len(state["identity"]["cases"])
    done = int(state["done"])
    model, tok = models.load(args.model)
    model.eval()
    edited = EditableModel(model, tok)
    # the run's adapter name is part of its identity (bench_baft's baft_ns saves 'ns')
    adapter = args.adapter or state["identity"].get("config", {}).get("adapter")
    attach_adapter(edited, run / state["step_dir"], adapter=adapter)
    protocols = [x for x in args.protocols.split(",") if x]
    values = [float(v) for v in args.values.split(",") if v.strip()] or [None]
    if values != [None]:
        try:
            for a in edited.attachments():
                get_knob(a, args.knob)
        except ValueError as err:  # names the intervention and the knobs it has
            raise SystemExit(f"{run}: {err}; pass --values '' to score it as saved") from None
    reqs, data = select_requests(n_total, seed=args.seed, offset=args.offset, source=args.source)
    if [r.case_id for r in reqs] != state["identity"]["cases"]:
        raise SystemExit("the checkpoint was made on other records (--source/--seed/--offset)")
    env = environment(model, args.model)
    # the unedited scores bench_baft kept there, if made the same way (read only: this script
    # scores a subset, and must not replace the cache of a full run)
    found, pre = lookup(args.checkpoint_dir, *unedited_cache(env, args.source, protocols, reqs,
                                                              next(model.parameters()).device.type))
    idx = list(range(0, done, args.stride))
    reqs = [reqs[i] for i in idx]
    if found:
        pre = [pre[i] for i in idx]
    else:  # the unedited model: the loaded adapter switched off
        with edited.disabled():
            pre = evaluate_requests(model, tok, reqs, protocols=protocols)
    rows = []
    sweep = values != [None]
    for value in values:  # None: as saved
        t = time.perf_counter()
        with knob_setting(edited, args.knob, value) if sweep else contextlib.nullcontext():
            posts = evaluate_requests(model, tok, reqs, protocols=protocols, pre=pre)
        row = {"knob": args.knob, args.knob: value, "edits": done, "scored": len(reqs),
               **{k: v for k, v in flat(summarize(build_case_records(reqs, pre, posts))).items() if v is not None},
               "seconds": time.perf_counter() - t}
        rows.append(row)
        print(json.dumps(row), flush=True)
        gen = ["gen_rewrite", "gen_rephrase_prefix", "gen_rephrase", "gen_loc_agree"] if "generation" in protocols else []
        write_results(args.name or f"{args.knob}_{args.key}",
                      {"rows": rows, "args": vars(args), "data": data, "environment": env, "knob": args.knob,
                       "checkpoint": {"key": args.key, "done": done, "of": n_total}},
                      table=rows, columns=[args.knob, "edits", "scored", "efficacy", "paraphrase", "locality",
                                           "neighborhood", "rewrite_acc", "rephrase_acc", *gen],
                      notes=((f"The inference knob {args.knob} swept on" if sweep else "Scored as saved:")
                             + f" one sequential run ({args.key}, {done} of "
                             f"{n_total} edits applied; every {args.stride}th edited request scored). "
                             "efficacy/paraphrase/neighborhood: ROME probability success; locality: EasyEdit "
                             "argmax agreement with the unedited model on neighbourhood prompts; rewrite_acc/"
                             "rephrase_acc: EasyEdit teacher-forced token accuracy"
                             + ("; gen_*: greedy generation: rewrite exact, rephrase prefix / exact, neighbourhood "
                                "answers unchanged." if gen else ".")))


if __name__ == "__main__":
    main()
