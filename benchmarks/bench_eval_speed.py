"""Evaluation speed: teacher-forced evaluation time vs the bare forward passes it needs.

Requirement (issue 3): on the default model (smollm2-135m), evaluating 1,000 CounterFact
records under the teacher-forced protocol takes at most 2x the time of the bare forward
passes those prompts need.

What is timed, in one process, interleaved (bare, eval, bare, eval, ...), median of repeats:

``bare``
    The exact prompt+target sequences the teacher-forced protocol scores (edit prompt +
    target_new, each rephrase + target_new, each locality prompt + its answer), tokenised
    beforehand, in the same length-sorted, right-padded batches of ``--batch-size``, through
    a second, never-wrapped copy of the base model once: ``model(input_ids=..., attention_mask=...)`` under
    ``torch.no_grad()``. No hooks, no metric work, no tokenisation in the timed region.
``bare_keep``
    The same, but asking for logits only from the first target position on
    (``logits_to_keep``), as ``evaluate()`` does: the stricter baseline.
``eval_full``
    ``repedit.eval.harness.evaluate(edited, tok, requests, ("teacher_forced",))`` on the
    model with a LoReFT edit attached: tokenisation, the pre pass (edits disabled), the post
    pass (edits on), locality, records, summary and metadata. It needs two passes over the
    sequences, so its ratio is ``eval_full / (2 * bare)``.
``eval_post``
    The same with ``pre=`` given (one pass): ratio ``eval_post / bare``.

Usage::

    python benchmarks/bench_eval_speed.py --quick        # 200 records, ~2-4 min on 1 CPU thread
    python benchmarks/bench_eval_speed.py                # 1,000 records (the requirement)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import environment, select_requests, set_threads, write_results  # noqa: E402


def teacher_forced_rows(reqs):
    """(prompt, " " + target) rows the teacher-forced protocol scores, as evaluate_requests builds them."""
    rows = []
    for r in reqs:
        rows.append((r.prompt, " " + r.target_new))
        rows += [(p, " " + r.target_new) for p in r.rephrase_prompts]
        rows += [(lp.prompt, " " + lp.ground_truth) for lp in r.locality_prompts]
        rows += [(pp.prompt, " " + pp.ground_truth) for pp in r.portability]
    return rows


def bare_batches(tok, reqs, batch_size: int, chunk_size: int):
    """Pre-tokenised batches in the order evaluate() runs them (chunks of records, length-sorted)."""
    from repedit.positions import encode

    batches = []
    for start in range(0, len(reqs), chunk_size):
        rows = teacher_forced_rows(reqs[start : start + chunk_size])
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            enc = encode(tok, [rows[i][0] for i in idx], [rows[i][1] for i in idx], padding_side="right")
            width = enc.input_ids.shape[1]
            first = max(int(enc.prompt_mask.sum(1).min()) - 1, 0)
            batches.append((enc.model_inputs(), width - first))
    return batches


def results_name(args: argparse.Namespace) -> str:
    """The results file stem: ``--name``, else ``eval_speed_quick`` for ``--quick`` (a quick run
    never overwrites the full one) and ``eval_speed`` otherwise."""
    return args.name or ("eval_speed_quick" if args.quick and args.records is None else "eval_speed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 records instead of 1,000")
    ap.add_argument("--records", type=int, default=None, help="number of CounterFact records (overrides --quick)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median reported)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--name", default=None, help="results file stem (default eval_speed[_quick])")
    args = ap.parse_args()
    set_threads(args.threads)
    n = args.records or (200 if args.quick else 1000)

    from repedit import models
    from repedit.eval.harness import evaluate, evaluate_pre
    from repedit.hooks import EditableModel

    model, tok = models.load(args.model)
    reqs, info = select_requests(n, seed=0)
    batches = bare_batches(tok, reqs, args.batch_size, args.chunk_size)
    n_rows = len(teacher_forced_rows(reqs))
    n_tokens = sum(int(b["attention_mask"].sum()) for b, _ in batches)
    padded = sum(b["input_ids"].numel() for b, _ in batches)

    bare_model, _ = models.load(args.model)  # a second copy that never gets hooks

    def run_bare() -> None:
        with torch.no_grad():
            for b, _ in batches:
                bare_model(**b)

    def run_bare_keep() -> None:  # stricter: logits only from the first target position on, as evaluate() does
        with torch.no_grad():
            for b, keep in batches:
                bare_model(**b, logits_to_keep=keep)

    edited = EditableModel(model, tok)
    edited.add("bench_edit", "loreft", layer=9, config={"rank": 4, "seed": 0})
    protocols = ("teacher_forced",)
    pre = evaluate_pre(edited, tok, reqs, protocols, args.batch_size)

    def run_eval_full():
        return evaluate(edited, tok, reqs, protocols, batch_size=args.batch_size, chunk_size=args.chunk_size)

    def run_eval_post():
        return evaluate(edited, tok, reqs, protocols, pre=pre, batch_size=args.batch_size, chunk_size=args.chunk_size)

    bare_t, keep_t, full_t, post_t = [], [], [], []
    report = None
    with torch.no_grad():  # warm-up (a few batches)
        for b, _ in batches[:10]:
            bare_model(**b)

    def clock(fn, sink: list) -> object:
        t = time.perf_counter()
        out = fn()
        sink.append(time.perf_counter() - t)
        return out

    results: dict = {}
    steps = [("bare", run_bare, bare_t), ("bare_keep", run_bare_keep, keep_t),
             ("eval_full", run_eval_full, full_t), ("eval_post", run_eval_post, post_t)]
    for i in range(args.repeats):
        # alternate the order (forward on even repeats, reversed on odd) so drifting machine load
        # does not always favour the same measurement
        for name, fn, sink in (steps if i % 2 == 0 else steps[::-1]):
            results[name] = clock(fn, sink)
        report = results["eval_full"]
        print(f"repeat {i}: bare {bare_t[-1]:.1f} s, bare_keep {keep_t[-1]:.1f} s, eval full {full_t[-1]:.1f} s, eval post {post_t[-1]:.1f} s", flush=True)
    bare, full, post = statistics.median(bare_t), statistics.median(full_t), statistics.median(post_t)
    keep = statistics.median(keep_t)
    row = {
        "records": n, "sequences": n_rows, "tokens": n_tokens, "padded_tokens": padded,
        "bare_s": bare, "bare_keep_s": keep, "eval_full_s": full, "eval_post_s": post,
        "ratio_full_vs_2bare": full / (2 * bare), "ratio_post_vs_bare": post / bare,
        "ratio_full_vs_2bare_keep": full / (2 * keep), "ratio_post_vs_bare_keep": post / keep,
        "ratio_full_vs_1bare": full / bare,
    }
    ok = row["ratio_full_vs_2bare"] <= 2.0 and row["ratio_post_vs_bare"] <= 2.0
    head = report.summary["headline"]["teacher_forced/easyedit"]["post"] if report else {}
    notes = (
        f"Teacher-forced evaluation (`teacher_forced/easyedit`) of {n} CounterFact records (seed 0) on {args.model}, "
        f"batch size {args.batch_size}, chunks of {args.chunk_size} records, {args.threads} torch thread(s); one LoReFT "
        "edit (rank 4, layer 9, untrained) attached. `bare` = the same prompt+target sequences, pre-tokenised, in the "
        "same length-sorted right-padded batches, through a second, never-wrapped copy of the model once (plain HF forward, no hooks). "
        "`eval_full` = `evaluate()` with its pre (edits disabled) and post (edits on) passes, tokenisation, locality, "
        "records and summary; it needs two passes, hence `ratio_full_vs_2bare`. `eval_post` = one pass with `pre=` "
        "given. `bare_keep` = the bare pass computing logits only from the first target position on (what "
        "`evaluate()` itself asks the model for), the stricter baseline; `ratio_*_keep` use it. Medians of "
        "interleaved repeats (order bare, bare_keep, eval_full, eval_post, reversed on odd repeats). Requirement (ratio_full_vs_2bare and "
        "ratio_post_vs_bare <= 2): "
        + ("**met**." if ok else "**NOT met**.")
    )
    payload = {
        "result": row, "requirement_met": ok, "repeats": {"bare_s": bare_t, "bare_keep_s": keep_t, "eval_full_s": full_t, "eval_post_s": post_t},
        "mode": "quick" if n < 1000 else "full", "post_edit_headline": head, "data": info, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
        "environment": environment(model, args.model),
    }
    name = results_name(args)
    jp, mp = write_results(name, payload, table=[row], notes=notes)
    print(f"ratio eval_full/(2*bare) = {row['ratio_full_vs_2bare']:.3f}, eval_post/bare = {row['ratio_post_vs_bare']:.3f}")
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
