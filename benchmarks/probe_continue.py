"""Probe: continue a sequential bench_baft run from one of its kept milestones for ``--n`` more
edits under each of several BaFT settings, and compare how the new edits verify (as inference
runs them) against how they trained. This is how the gap between training and inference in
long sequential runs was found: with earlier edits run unshifted and dense while a new one
trains (``train_as_inference="none"``), edits after 2,000 others train to p ≈ 0.96 but verify
at 0.77 (docs/results.md, "What's new in session 17").

``--run-args`` are the bench_baft arguments of the run (they rebuild its config and identity);
``--variants`` is a JSON list of BaFT method-config overrides applied to the restored module
before each continuation (every variant starts from the same milestone).

Example::

    python benchmarks/probe_continue.py --checkpoint-dir /work/runs/ckpt_seq10000_bf16 \\
        --run-args "--single 0 --sequential 10000 --methods baft --mixed-precision bf16" \\
        --milestone 2000 --n 30 --variants '[{"train_as_inference": "none"}, {"train_as_inference": "earlier"}]' \\
        --name continue_2000
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_baft  # noqa: E402
from benchmarks.common import environment, select_requests, set_threads, write_results  # noqa: E402


def summarize_outcomes(outcomes: list) -> dict:
    """Verified success and target probability, the training-time ones, steps (means)."""
    n = max(1, len(outcomes))
    return {"edits": len(outcomes), "success_rate": sum(o.success for o in outcomes) / n,
            "target_prob": sum(o.target_prob for o in outcomes) / n,
            "trained_success": sum(bool(o.flags.get("trained", o.success)) for o in outcomes) / n,
            "trained_target_prob": sum(o.flags.get("trained_target_prob", o.target_prob) for o in outcomes) / n,
            "mean_steps": sum(o.steps for o in outcomes) / n}


def continue_once(args, edited, tok, method: str, cfg_kwargs: dict, reqs: list, stop: int, variant: dict) -> dict:
    """Restore ``args.milestone`` of the run, apply ``variant`` to its module, edit
    ``reqs[milestone:stop]`` and summarise the new edits (one row)."""
    from repedit import Editor, EditorConfig
    from repedit.checkpoints import CheckpointMismatch, SequentialCheckpoint

    editor = Editor(edited, tok, EditorConfig(**copy.deepcopy(cfg_kwargs), progress=False))
    key = f"{method}_seq{len(reqs)}"
    try:
        ck = SequentialCheckpoint(args.checkpoint_dir, key, 50,
                                  bench_baft.sequential_checkpoint_identity(editor, cfg_kwargs, reqs))
        done, _, _ = ck.restore(edited, editor.config.adapter, milestone=args.milestone)
    except CheckpointMismatch:  # a run from before session 17: no train_as_inference in its identity
        ck = SequentialCheckpoint(args.checkpoint_dir, key, 50,
                                  bench_baft.sequential_checkpoint_identity(editor, cfg_kwargs, reqs, True))
        done, _, _ = ck.restore(edited, editor.config.adapter, milestone=args.milestone)
        print("restored a checkpoint from before train_as_inference", flush=True)
    if done != args.milestone:
        raise SystemExit(f"milestone {args.milestone} restored {done} edits")
    bench_baft.set_inference_knobs(edited, cfg_kwargs)
    module = edited.attachments()[0].module
    for k, v in variant.items():
        setattr(module.config, k, v)
    t = time.perf_counter()
    res = editor.edit(reqs[:stop], sequential=True, start=done)
    row = {"variant": json.dumps(variant, sort_keys=True), **summarize_outcomes(res.outcomes),
           "s_per_edit": (time.perf_counter() - t) / max(1, len(res.outcomes))}
    print(row, flush=True)
    editor.reset()
    return row

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", required=True, help="the run's --checkpoint-dir")
    p.add_argument("--run-args", required=True, help="the run's bench_baft arguments (one method), quoted")
    p.add_argument("--milestone", type=int, required=True, help="a kept milestone (--milestones of the run)")
    p.add_argument("--n", type=int, default=30, help="edits to continue with, the run's next requests")
    p.add_argument("--variants", required=True, help="JSON list of method-config overrides, one continuation each")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", required=True, help="results file stem")
    args = p.parse_args(argv)
    run = bench_baft.build_parser().parse_args(shlex.split(args.run_args))
    variants = json.loads(args.variants)
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        p.error("--variants takes a JSON list of objects")
    configs = bench_baft.method_configs(run)
    if len(configs) != 1:
        p.error("--run-args must name one method (--methods)")
    (method, cfg_kwargs), = configs.items()

    set_threads(args.threads)
    from repedit import models
    from repedit.hooks import EditableModel

    model, tok = models.load(run.model, device="cpu")
    model.eval()
    edited = EditableModel(model, tok)
    n_all = run.sequential if run.sequential is not None else 1000
    reqs, _ = select_requests(n_all, seed=run.seed, offset=run.offset, source=run.source)
    stop = min(len(reqs), args.milestone + args.n)
    rows = []
    for variant in variants:
        try:
            rows.append(continue_once(args, edited, tok, method, cfg_kwargs, reqs, stop, variant))
        except FileNotFoundError as e:  # no such milestone kept
            raise SystemExit(str(e)) from e
    notes = (f"Continuing `{method}` from milestone {args.milestone} of `{args.checkpoint_dir}` with its next "
             f"{stop - args.milestone} requests, once per variant. success_rate/target_prob: verified as inference runs "
             "the edit; trained_*: the training-time verdict (the last step's forward).")
    write_results(args.name, {"rows": rows, "args": vars(args), "environment": environment(model, run.model)},
                  rows, notes=notes)


if __name__ == "__main__":
    main()
