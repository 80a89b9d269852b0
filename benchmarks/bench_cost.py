"""Where one edit's time goes: setup, captures, gate fitting, training steps, verification.

Runs N sequential edits with a method's defaults (BaFT by default) on dev CounterFact in a fresh
process and splits each edit's wall time into phases, by timers wrapped around the Editor's and
the method's steps (this script's own instrumentation; the library is not changed):

* ``setup``: what is built once per model and site and then reused (BaFT's corpus-negative
  states and entity-name bank, the null space, the codebook's corpus bank);
* ``prepare``: the rest of ``prepare_edit``, the per-edit captures (the request's own prompts,
  negative prompts) and gate initialisation;
* ``gate_fit``: BaFT's fit of the new gates on the fixed states;
* ``train``: the optimisation steps (forward, loss, backward, Adam);
* ``verify``: the check of each edit as it runs at inference, and ``finish_edit``;
* ``other``: the rest (encoding, bookkeeping).

It also times one forward+backward pass over an edit's training batch (the prompt and its
augmented copies, with a trainable intervention at the edited site), and reports s/edit
divided by it: a machine-independent cost (the same ratio on a CPU and a GPU means the same
algorithmic cost). Writes ``benchmarks/results/<name>.{json,md}``.

    python benchmarks/bench_cost.py --n 20                  # BaFT, 20 sequential edits
    python benchmarks/bench_cost.py --n 20 --method codebook
    python benchmarks/bench_cost.py --n 20 --resume-ab 6     # + steps with/without the resumed forward
    python benchmarks/bench_cost.py --n 20 --split-ab 6      # + steps and edits with/without the cached prefix
    python benchmarks/bench_cost.py --n 20 --no-split        # the edits without the cached prefix
    python benchmarks/bench_cost.py --n 20 --precision-ab 6  # + steps and edits in fp32 and with mixed_precision='bf16'
    python benchmarks/bench_cost.py --n 20 --config '{"mixed_precision": "bf16"}'   # the edits in bf16
    python benchmarks/bench_cost.py --n 10 --from-checkpoint CKPT/baft_seq10000 --milestone 2000
        # 10 more edits of a saved sequential run (bench_baft --checkpoint-dir CKPT), from its state
        # after 2,000 edits, with the run's own config and requests: where a late edit's time goes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (environment, forward_backward_seconds, select_requests, set_threads,  # noqa: E402
                               write_results)

PHASES = ("setup", "prepare", "gate_fit", "train", "verify", "other")


class PhaseClock:
    """Wall time per phase of the current edit; nested phases are subtracted from their parent."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        self._stack.append([name, 0.0])
        try:
            yield
        finally:
            _, inner = self._stack.pop()
            took = time.perf_counter() - t0
            self.current[name] += took - inner
            if self._stack:
                self._stack[-1][1] += took

    def wrap(self, owner: type, attr: str, name: str) -> None:
        real = getattr(owner, attr)
        clock = self

        def timed(*a, **k):
            with clock.phase(name):
                return real(*a, **k)

        setattr(owner, attr, timed)


def instrument(clock: PhaseClock) -> None:
    from repedit.editing import Editor
    from repedit.methods.baft import BaFT
    from repedit.methods.codebook.module import Codebook

    timed = {
        "setup": [(BaFT, "_corpus_negatives"), (BaFT, "_subject_bank"), (BaFT, "build_nullspace"), (Codebook, "_ensure_bank")],
        "prepare": [(BaFT, "prepare_edit"), (Codebook, "prepare_edit")],
        "gate_fit": [(BaFT, "_fit_gates")],
        "train": [(Editor, "_optimise")],
        "verify": [(BaFT, "finish_edit"), (Codebook, "finish_edit"), (Editor, "_verify")],
        "other": [(Editor, "_train_chunk")],
    }
    for phase, places in timed.items():
        for owner, attr in places:
            clock.wrap(owner, attr, phase)


def switch_ab(model, tok, reqs, method: str, switch: str) -> dict:
    """Seconds per training step and per edit with ``switch`` off and on, interleaved per request
    in one process (fresh edits on the unedited model, the same requests); also each arm's steps
    and final losses. ``switch`` is an Editor class switch (``resume_forward``, ``split_prefix``) or
    ``mixed_precision`` (off: the model's dtype; on: ``"bf16"``)."""
    from repedit import Editor, EditorConfig
    from repedit.hooks import EditableModel

    per: dict[bool, list[float]] = {True: [], False: []}
    edit_s: dict[bool, list[float]] = {True: [], False: []}
    runs: dict[bool, list[tuple]] = {True: [], False: []}
    real = Editor._optimise
    current = {"flag": False}

    def timed(self, session, atts, fixed):
        t0 = time.perf_counter()
        out = real(self, session, atts, fixed)
        per[current["flag"]].append((time.perf_counter() - t0) / max(1, out[0][0].steps + 1))
        return out

    def set_flag(editor, flag: bool) -> None:
        current["flag"] = flag
        if switch == "mixed_precision":
            editor.config.mixed_precision = "bf16" if flag else None
        else:
            setattr(Editor, switch, flag)

    edited = EditableModel(model, tok)
    editor = Editor(edited, tok, EditorConfig(method=method))
    Editor._optimise = timed
    try:
        for r in reqs:
            for flag in (False, True):
                set_flag(editor, flag)
                t0 = time.perf_counter()
                o = editor.edit([r]).outcomes[0]
                edit_s[flag].append(time.perf_counter() - t0)
                runs[flag].append((o.steps, o.loss))
                editor.reset()
    finally:
        Editor._optimise = real
        if switch != "mixed_precision":
            setattr(Editor, switch, True)
        edited.unwrap()
    off, on = statistics.median(per[False]), statistics.median(per[True])
    return {"switch": switch, "step_s_off": off, "step_s_on": on, "ratio": on / off,
            "edit_s_off": statistics.median(edit_s[False]), "edit_s_on": statistics.median(edit_s[True]),
            "same_steps": [r[0] for r in runs[False]] == [r[0] for r in runs[True]],
            "max_loss_diff": max(abs(a[1] - b[1]) for a, b in zip(runs[False], runs[True])),
            "steps_off": [r[0] for r in runs[False]], "steps_on": [r[0] for r in runs[True]],
            "loss_off": [r[1] for r in runs[False]], "loss_on": [r[1] for r in runs[True]], "requests": len(reqs)}


class _Enough(Exception):
    """Raised by the edit callback once the edits to time are done."""


def resume_point(folder: Path, milestone: int | None, seed: int = 0):
    """A saved sequential run's requests, EditorConfig kwargs, edits done and adapter folder, from
    its ``state.json`` (the last checkpoint, or the kept one after ``milestone`` edits)."""
    base = folder if milestone is None else folder / f"keep_{int(milestone):06d}"
    path = base / "state.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: not a bench_baft sequential checkpoint (or that milestone was not kept)")
    state = json.loads(path.read_text())
    ident = state["identity"]
    reqs, data = select_requests(len(ident["cases"]), seed=seed)
    if [r.case_id for r in reqs] != ident["cases"]:
        raise SystemExit(f"{folder} was run on other requests than select_requests({len(ident['cases'])}, seed={seed})")
    cfg = dict(ident["config"])
    if "gate_shift" in ident:  # an inference knob, kept apart from the training config
        cfg["method_config"] = dict(cfg.get("method_config") or {}, gate_shift=ident["gate_shift"])
    return reqs, data, cfg, state["done"], base / state["step_dir"], ident


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="sequential edits (default 20)")
    ap.add_argument("--method", default="baft")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None)
    ap.add_argument("--config", default=None, help="EditorConfig fields over the method's defaults, as JSON (e.g. "
                    "'{\"relation_copies\": 0}')")
    ap.add_argument("--resume-ab", type=int, default=0, help="also time training steps with and without the resumed "
                    "forward on this many requests, interleaved in this process")
    ap.add_argument("--split-ab", type=int, default=0, help="also time training steps and edits with and without the "
                    "cached prefix (repedit.prefix) on this many requests, interleaved in this process")
    ap.add_argument("--precision-ab", type=int, default=0, help="also time training steps and edits in the model's "
                    "dtype and with mixed_precision='bf16' on this many requests, interleaved in this process")
    ap.add_argument("--no-split", action="store_true", help="run the edits without the cached prefix (Editor.split_prefix "
                    "= False): the cost before it, for a run beside the default one")
    ap.add_argument("--from-checkpoint", type=Path, default=None,
                    help="a sequential run's checkpoint folder (bench_baft.py --checkpoint-dir CKPT: CKPT/<method>_seq<N>): "
                    "time --n more edits from its saved state, with the run's own config and requests (--method and "
                    "--config are not used)")
    ap.add_argument("--milestone", type=int, default=None,
                    help="with --from-checkpoint: start from the state kept after this many edits (default: the last)")
    args = ap.parse_args(argv)
    if args.milestone is not None and args.from_checkpoint is None:
        ap.error("--milestone needs --from-checkpoint")
    set_threads(args.threads)
    from repedit import Editor, EditorConfig, models
    from repedit.hooks import EditableModel

    if args.no_split:
        Editor.split_prefix = False
    t_start = time.perf_counter()
    model, tok = models.load(args.model)
    t_model = time.perf_counter() - t_start
    clock = PhaseClock()
    instrument(clock)
    edited = EditableModel(model, tok)
    start, resumed = 0, None
    if args.from_checkpoint is not None:
        from benchmarks.bench_baft import sequential_checkpoint_identity
        from repedit.adapters import attach_adapter

        reqs, data, overrides, start, adapter_dir, ident = resume_point(args.from_checkpoint, args.milestone, args.seed)
        args.method = overrides.pop("method")
        editor = Editor(edited, tok, EditorConfig(method=args.method, **overrides))
        mine = json.loads(json.dumps(sequential_checkpoint_identity(editor, dict(overrides, method=args.method), reqs),
                                     sort_keys=True, default=str))
        if mine != ident:
            raise SystemExit(f"{args.from_checkpoint} was made with other settings than this repedit resolves: "
                             f"{sorted(k for k in set(mine) | set(ident) if mine.get(k) != ident.get(k))}")
        attach_adapter(edited, adapter_dir, adapter=editor.config.adapter)
        if start + args.n > len(reqs):
            raise SystemExit(f"the run has {len(reqs) - start} edits left after {start}; ask for at most that many (--n)")
        resumed = {"checkpoint": str(args.from_checkpoint), "after_edits": start, "run_size": len(reqs)}
    else:
        reqs, data = select_requests(args.n, seed=args.seed)
        overrides = json.loads(args.config) if args.config else {}
        editor = Editor(edited, tok, EditorConfig(method=args.method, **overrides))
    per_edit = []

    def done(k, outcomes):
        phases = {p: clock.current.get(p, 0.0) for p in PHASES}
        phases["total"] = sum(phases.values())
        phases["steps"] = outcomes[-1].steps
        per_edit.append(phases)
        clock.current.clear()
        if resumed and len(per_edit) >= args.n:  # a resumed run stops here; the others edit all their requests
            raise _Enough

    try:
        editor.edit(reqs, sequential=True, start=start, callback=done)
    except _Enough:
        pass
    fb = forward_backward_seconds(editor, reqs[start])
    editor.reset()  # the A/B runs below edit the unedited model (these edits would already hold their requests)
    ab = switch_ab(model, tok, reqs[: args.resume_ab], args.method, "resume_forward") if args.resume_ab else None
    split_ab = switch_ab(model, tok, reqs[: args.split_ab], args.method, "split_prefix") if args.split_ab else None
    precision_ab = switch_ab(model, tok, reqs[: args.precision_ab], args.method, "mixed_precision") if args.precision_ab else None
    Editor.split_prefix = not args.no_split
    steady = per_edit[1:] or per_edit
    median = {p: statistics.median(e[p] for e in steady) for p in (*PHASES, "total", "steps")}
    first = per_edit[0]
    rows = [{"edits": "first (cold process)", **{p: first[p] for p in (*PHASES, "total")}, "steps": first["steps"],
             "ratio_to_fwd_bwd": first["total"] / fb},
            {"edits": f"median of edits 2..{len(per_edit)}", **{p: median[p] for p in (*PHASES, "total")},
             "steps": median["steps"], "ratio_to_fwd_bwd": median["total"] / fb}]
    name = args.name or f"cost_{args.method}_n{args.n}"
    payload = {"rows": rows, "per_edit": per_edit, "forward_backward_s": fb, "model_load_s": t_model, "resumed": resumed,
               "resume_ab": ab, "split_ab": split_ab, "precision_ab": precision_ab, "split_prefix": not args.no_split, "method": args.method, "config": {k: v for k, v in vars(editor.config).items() if k != "relation_templates"},
               "data": data, "environment": environment(model, args.model)}
    shares = {p: median[p] / median["total"] for p in PHASES}
    write_results(name, payload, table=rows, columns=["edits", *PHASES, "total", "steps", "ratio_to_fwd_bwd"],
                  notes=(f"Seconds per phase of one {args.method} edit (defaults"
                         + (f" with {json.dumps(overrides)}" if overrides else "") + ", sequential, dev CounterFact, "
                         f"seed {args.seed}); one forward+backward over an edit's training batch takes "
                         f"{fb * 1000:.0f} ms here, so ratio_to_fwd_bwd = s/edit ÷ that. Steady-state shares: "
                         + ", ".join(f"{p} {100 * v:.0f}%" for p, v in shares.items()) + "."
                         + (" Without the cached prefix (--no-split)." if args.no_split else "")
                         + (f" Edits {start + 1} to {start + len(per_edit)} of a {len(reqs)}-edit sequential run, "
                            f"resumed from {args.from_checkpoint.name} (the first row: the first edit of the process, "
                            "with the run's banks on disk)." if resumed else "")
                         + (f" A training step resumed at the edited layer took {ab['ratio']:.2f}x a full-forward step "
                            f"({ab['step_s_on']:.3f} vs {ab['step_s_off']:.3f} s, median over {ab['requests']} "
                            "requests, interleaved)." if ab else "")
                         + (f" A training step over the cached prefix took {split_ab['ratio']:.2f}x one over the whole "
                            f"batch ({split_ab['step_s_on']:.3f} vs {split_ab['step_s_off']:.3f} s; a whole edit "
                            f"{split_ab['edit_s_on']:.2f} vs {split_ab['edit_s_off']:.2f} s; median over "
                            f"{split_ab['requests']} requests, interleaved; same steps: {split_ab['same_steps']}, final "
                            f"losses within {split_ab['max_loss_diff']:.1e})." if split_ab else "")
                         + (f" A training step with mixed_precision='bf16' took {precision_ab['ratio']:.2f}x one in "
                            f"the model's dtype ({precision_ab['step_s_on']:.3f} vs {precision_ab['step_s_off']:.3f} s; "
                            f"a whole edit {precision_ab['edit_s_on']:.2f} vs {precision_ab['edit_s_off']:.2f} s; median "
                            f"over {precision_ab['requests']} requests, interleaved; steps {precision_ab['steps_on']} vs "
                            f"{precision_ab['steps_off']})." if precision_ab else "")))
    print({"forward_backward_s": fb, **rows[1]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
