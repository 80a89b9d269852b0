"""Benchmark LoReFT, BaFT, BaFT + null-space projection, codebooks and their combinations.

Methods (``--methods``, ``all`` for every one), on the same requests with the same protocols
in one run: ``loreft``, ``baft``, ``baft_ns`` (BaFT with a read-mode null space), ``grace``
(codebook, GRACE-style fixed radii), ``balancedit`` (codebook, BalancEdit radii) and two
combinations: ``balancedit_lowrank`` (a BalancEdit codebook whose values are LoReFT/BaFT-form
low-rank updates of h, gated by the codebook's lookup) and ``balancedit_ns`` (a BalancEdit
codebook whose values lie in the null space of preserved corpus states). Dev data:
CounterFact (default), zsRE, or every valid zsRE record (``--source zsre_all``); model: ``--model``.

Settings (the targets of issue 4):

* ``single``: N edits, each applied alone to the unedited model (reset between edits) and
  scored right after;
* ``sequential``: N edits applied one after another to one model, all scored after the last.

Scores: ROME's probability-based efficacy / paraphrase / neighbourhood success
(``probability/rome``), EasyEdit's teacher-forced rewrite / rephrase accuracy and locality
(argmax agreement with the unedited model on the neighbourhood prompts,
``teacher_forced/easyedit``), and greedy-generation exact match (``generation/mirage``).
"locality" in the table is EasyEdit's agreement; the absolute neighbourhood success is shown
beside the unedited model's. Also: seconds per edit and the forward-latency ratio of the
edited model to the unedited one (same process, same prompts, median of repeats).

Usage::

    python benchmarks/bench_baft.py --quick            # 4 single + 8 sequential, 5 methods (minutes)
    python benchmarks/bench_baft.py                    # full: 200 single, 1000 sequential (days on a CPU)

    # a long sequential run, resumable and split over processes (same command to resume):
    python benchmarks/bench_baft.py --single 0 --sequential 1000 --methods baft --checkpoint-dir ckpt --edit-only
    python benchmarks/bench_baft.py --single 0 --sequential 1000 --methods loreft,baft,baft_ns --checkpoint-dir ckpt
    # (the unedited scores and each finished run's scores are kept in ckpt/ and reused; while a
    # scoring pass runs, each 250 records' scores are kept in ckpt/<name>.parts/, so an
    # interrupted pass over 10,000 records resumes at its first missing part)

    # a growth curve from one long run: keep its state after 1,000 and 5,000 edits; the scored
    # run adds a row "after k of 10000 sequential" for each, scored on the first k requests
    python benchmarks/bench_baft.py --single 0 --sequential 10000 --methods baft --checkpoint-dir ckpt --milestones 1000,5000

    # every valid zsRE record (eval then training split, about 1,930) edited in sequence:
    python benchmarks/bench_baft.py --single 0 --sequential all --source zsre_all --methods baft --checkpoint-dir ckpt

    # the whole benchmark matrix (models x data x settings x methods), resumable: benchmarks/matrix.py

    # single edits with --checkpoint-dir keep each edit's outcome and scores (ckpt/single_<method>_<config hash>/),
    # so an interrupted run, or a joint table of methods run in separate processes, reuses them:
    python benchmarks/bench_baft.py --single 200 --sequential 0 --methods baft --checkpoint-dir ckpt
    # ... or split over processes (each keeps its share; the plain command then writes the table):
    python benchmarks/bench_baft.py --single 200 --sequential 0 --methods baft --checkpoint-dir ckpt --shard 0/2
    python benchmarks/bench_baft.py --single 200 --sequential 0 --methods baft --checkpoint-dir ckpt --shard 1/2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (SOURCES, environment, forward_backward_seconds, latency_ratio,  # noqa: E402
                               peak_memory_mib, select_requests, set_threads, write_results)

PROTOCOLS = ["teacher_forced", "probability", "generation"]
#: ``--sequential all``: every record of the source
ALL = sys.maxsize
METHODS = ["loreft", "baft", "baft_ns", "grace", "balancedit", "balancedit_lowrank", "balancedit_ns"]
#: what ``--quick`` runs: the reference without scope, the two mechanisms and their combination
QUICK_METHODS = ["loreft", "baft", "baft_ns", "grace", "balancedit"]
LATENCY_REPEATS = 31  # interleaved pairs of forwards (--quick: 11); on the shared 2-core machine 11
# scattered by ±4%, and 31 still by ±2% (the unedited model timed against itself: 0.98–1.02)


def method_configs(args) -> dict:
    common = dict(layers=[int(x) for x in str(args.layer).split(",")] if args.layer is not None else None, positions=args.positions, lr=args.lr, max_steps=args.max_steps,
                  stop_prob=args.stop_prob, augment=args.augment, seed=args.seed)
    if args.batch_size != 1:  # only when given, so default runs keep their checkpoints' identity
        common["batch_size"] = args.batch_size
    if args.corpus is not None:  # only when given, so default runs keep their checkpoints' identity
        common["corpus"] = args.corpus
    if args.relation_copies is not None:  # only when given, so default runs keep their checkpoints' identity
        common["relation_copies"] = args.relation_copies
    if args.relation_table == "known":  # known_1000.json's templates, looked up exactly (the earlier runs')
        from repedit.eval.data import relation_templates

        common["relation_templates"] = relation_templates()
    if args.answer_end is not None:
        common["answer_end"] = args.answer_end
    if args.answer_end_stop != "probability":  # only when given, so default runs keep their checkpoints' identity
        common["answer_end_stop"] = args.answer_end_stop
    if args.mixed_precision is not None:  # only when given, so default runs keep their checkpoints' identity
        common["mixed_precision"] = args.mixed_precision
    baft = dict(rank=args.rank, locality_weight=args.locality_weight, gate_positive_weight=args.gate_positive_weight,
                temperature=args.temperature, trigger=args.trigger, gate_margin=args.gate_margin,
                gate_margin_weight=args.gate_margin_weight, gate_fit_steps=args.gate_fit_steps,
                train_gates=args.train_gates, gate_templates=args.gate_templates)
    if args.gate_shift is not None:
        baft["gate_shift"] = args.gate_shift
    if args.essence_weight is not None:  # only when given, so default runs keep their checkpoints' identity
        baft["essence_weight"] = args.essence_weight
    if args.baft_config:  # any other BaFTConfig fields, as JSON
        baft.update(json.loads(args.baft_config))
    out = {
        # LoReFT keeps pyreft's usual setting (one layer, last prompt token: with no gate it
        # would edit every token of every prompt at "prompt" positions); BaFT and BaFT + null
        # space use BaFT's defaults unless flags say otherwise
        "loreft": dict(common, method="loreft", method_config={"rank": args.rank}, layers=[args.loreft_layer],
                       positions=args.positions or "last_prompt", augment=2 if args.augment is None else args.augment),
        "baft": dict(common, method="baft", method_config=dict(baft)),
        "baft_ns": dict(common, method="baft", adapter="ns",
                        method_config=dict(baft, nullspace="read", nullspace_threshold=args.ns_threshold,
                                           nullspace_texts=args.ns_texts)),
    }
    if args.ns_fold is not None:  # only when given, so runs without the flag keep their checkpoints' identity
        out["baft_ns"]["method_config"]["nullspace_fold_edits"] = args.ns_fold == "on"
    # codebooks (GRACE-style fixed radii, BalancEdit radii) and the combinations a user would
    # try: a codebook whose values are LoReFT/BaFT-form low-rank updates (the codebook's
    # key/radius match gates an affine rank-r map of h, where BaFT gates with a sigmoid), and
    # a codebook whose values are projected into the null space of preserved states
    codebook = dict(common, method="codebook", lr=args.cb_lr, max_steps=args.cb_max_steps)
    for key, mc in (("grace", {"radius_mode": "grace"}), ("balancedit", {"radius_mode": "balanced"}),
                    ("balancedit_lowrank", {"radius_mode": "balanced", "value": "lowrank"}),
                    ("balancedit_ns", {"radius_mode": "balanced", "null_space": True})):
        out[key] = dict(codebook, method_config=dict(mc, **json.loads(args.cb_config)) if args.cb_config else mc, adapter=key)

    return {k: out[k] for k in args.methods.split(",") if k != "none"}


#: BaFT settings used only at inference (``_shift()`` is 0 for the bases in training): a
#: single edit made with one value is the same edit under any other, so they stay out of its
#: identity. A sequential run's earlier edits act shifted while later ones train (BaFTConfig's
#: train_as_inference), so its identity has the shift again (:func:`sequential_identity`)
INFERENCE_KNOBS = ("gate_shift",)


def training_config(cfg_kwargs: dict) -> dict:
    """``cfg_kwargs`` without the inference-only knobs (a checkpoint's identity)."""
    mc = {k: v for k, v in (cfg_kwargs.get("method_config") or {}).items() if k not in INFERENCE_KNOBS}
    return dict(cfg_kwargs, method_config=mc)


def set_inference_knobs(edited, cfg_kwargs: dict) -> None:
    """Give restored BaFT modules this run's inference knobs (the method's default where the
    run sets none): an adapter keeps the knob it was saved with."""
    from repedit.methods.baft import BaFT, BaFTConfig

    mc = cfg_kwargs.get("method_config") or {}
    for att in edited.attachments():
        if isinstance(att.module, BaFT):
            for k in INFERENCE_KNOBS:
                att.module.set_knob(k, float(mc.get(k, getattr(BaFTConfig(), k))))


def resolved_identity(editor, cfg_kwargs: dict | None = None) -> dict:
    """The method defaults a run resolved to, when they differ from those before they moved into
    ``editor_defaults`` or changed (so checkpoints made with other defaults are not reused);
    ``cfg_kwargs``: what the run set explicitly (already part of its identity)."""
    cfg = editor.config
    out = {"answer_end": cfg.answer_end} if cfg.answer_end else {}
    if cfg.method == "codebook" and cfg.lr != 0.1 and (cfg_kwargs or {}).get("lr") is None:
        out["lr"] = cfg.lr  # the codebook's default lr was 0.1 until session 16
    if cfg.relation_copies and cfg.relation_templates is None:  # the shipped table
        from repedit.relations import builtin_relations

        out.update(relation_copies=cfg.relation_copies, relation_table=repr(builtin_relations()))
    return out


def sequential_identity(cfg_kwargs: dict) -> dict:
    """What a sequential BaFT run adds to its identity: how earlier edits run while a new one
    trains and, where they run as at inference, the gate shift they run with (the runs before
    session 17 trained against unshifted earlier edits and have neither)."""
    if cfg_kwargs.get("method") != "baft":
        return {}
    from repedit.methods.baft import BaFTConfig

    mc = cfg_kwargs.get("method_config") or {}
    mode = mc.get("train_as_inference", BaFTConfig.train_as_inference)
    if mode == "none":
        return {}
    return {"train_as_inference": mode, "gate_shift": float(mc.get("gate_shift", BaFTConfig.gate_shift))}


def sequential_checkpoint_identity(editor, cfg_kwargs: dict, reqs: list, before_session17: bool = False) -> dict:
    """The identity of a sequential run's checkpoint: its training config, requests, resolved
    defaults and (unless ``before_session17``, for runs made before it) :func:`sequential_identity`."""
    identity = {"config": training_config(cfg_kwargs), "cases": [r.case_id for r in reqs],
                **resolved_identity(editor, cfg_kwargs)}
    return identity if before_session17 else {**identity, **sequential_identity(cfg_kwargs)}


def subject_locality(args, reqs: list, model, tok, edited, env: dict) -> dict:
    """Give ``reqs`` their subject-locality prompts (:func:`benchmarks.common.add_subject_locality`);
    with ``--checkpoint-dir`` they are built once and kept there, so a resumed long run does not
    regenerate them (about 3 minutes per 1,000 requests on one CPU thread)."""
    from benchmarks.common import add_subject_locality
    from repedit.requests import LocalityPrompt

    def build() -> dict:
        info = add_subject_locality(reqs, model, tok, per_request=args.subject_locality, seed=args.seed,
                                    source=args.source, edited=edited)
        return {"info": info, "prompts": [[p.to_dict() for p in r.subject_locality_prompts] for r in reqs]}

    if not args.checkpoint_dir:
        return build()["info"]
    from benchmarks.checkpoints import cached

    ident = {"model": env.get("model"), "source": args.source, "cases": [r.case_id for r in reqs],
             "per_request": args.subject_locality, "seed": args.seed}
    value = cached(args.checkpoint_dir, f"subject_locality_{args.source}_{len(reqs)}", ident, build)
    for r, prompts in zip(reqs, value["prompts"]):
        r.subject_locality_prompts = [LocalityPrompt.from_dict(p) for p in prompts]
    return value["info"]


def unedited_cache(env: dict, source: str, protocols: list[str], reqs: list, device: str) -> tuple[str, dict]:
    """Name and identity of the unedited model's scores kept in a checkpoint folder (shared by
    bench_baft's runs and bench_gate_shift). The device is part of it: locality compares
    argmax ids, and CPU and GPU kernels can break near-ties differently."""
    ident = {"model": env.get("model"), "source": source, "protocols": list(protocols),
             "cases": [r.case_id for r in reqs], "device": device}
    if any(r.subject_locality_prompts for r in reqs):  # absent otherwise: earlier caches keep their identity
        ident["subject_locality"] = hashlib.sha256(json.dumps(
            [[p.to_dict() for p in r.subject_locality_prompts] for r in reqs]).encode()).hexdigest()
    return f"pre_{source}_{len(reqs)}", ident


def flat(summary: dict, side: str = "post") -> dict:
    s = summary.get(side, {})
    g = lambda k: s.get(k)  # noqa: E731
    return {
        "efficacy": g("rome.efficacy_success"),
        "paraphrase": g("rome.paraphrase_success"),
        "locality": g("locality.neighborhood_acc"),
        "neighborhood": g("rome.neighborhood_success"),
        "rewrite_acc": g("rewrite_acc"),
        "rephrase_acc": g("rephrase_acc"),
        "gen_rewrite": g("generation.rewrite_exact"),
        "gen_rephrase": g("generation.rephrase_exact"),
        "gen_rephrase_prefix": g("generation.rephrase_prefix"),
        "gen_loc_agree": g("generation.neighborhood_text_agreement"),
        "subject_loc": g("locality.subject_acc"),
        "gen_subject_agree": g("generation.subject_text_agreement"),
    }


def measure_latency(model, tok, prompts, edited, repeats: int = LATENCY_REPEATS) -> dict:
    from repedit.positions import encode

    batch = encode(tok, prompts, padding_side="right")

    def run():
        with torch.no_grad(), batch.info():
            model(**batch.model_inputs())

    def base():
        with edited.disabled():
            run()

    lat = latency_ratio(run, base, repeats=repeats)
    lat["hook_share"] = hook_seconds(model, edited, run, repeats=5) / lat["base_s"]
    # the noise floor: the same measurement with the unedited model on both sides
    lat["aa_ratio"] = latency_ratio(base, base, repeats=repeats)["ratio"]
    return lat


def hook_seconds(model, edited, run, repeats: int = 5) -> float:
    """Seconds per ``run()`` spent inside the edit's site hooks: a timer starts in a forward
    hook put before them and stops in one put after them. Over the unedited forward time this
    is the edit's own share of the forward, which wall-clock ratios on a shared machine cannot
    resolve below a few percent. On a GPU the timers synchronise (a measurement, not the edit's
    forward path), so the hooks' kernels are counted and not only their launch."""
    spent, started, handles = [0.0], {}, []
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)

    def tic(mod, args, out):
        sync()
        started[mod] = time.perf_counter()

    def toc(mod, args, out):
        sync()
        spent[0] += time.perf_counter() - started.pop(mod)

    try:
        for site in {a.site for a in edited.attachments()}:
            mod = edited.layout.component(model, *site)
            handles += [mod.register_forward_hook(tic, prepend=True), mod.register_forward_hook(toc)]
        for _ in range(repeats):
            run()
    finally:
        for h in handles:
            h.remove()
    return spent[0] / repeats


def folder_bytes(path) -> int:
    """Bytes of the files in a saved adapter's folder."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def post_identity(ck, state: dict, model, edited) -> dict:
    """What the scores of a checkpoint (``state``: the last one or a milestone) depend on: the
    run, how far it got, the protocols, the device and the inference knobs it is scored with."""
    return {"checkpoint": ck.identity, "done": state["done"], "saved_at": state["saved_at"], "protocols": PROTOCOLS,
            "device": str(next(model.parameters()).device.type),
            "knobs": {a.name: {k: getattr(a.module.config, k, None) for k in INFERENCE_KNOBS}
                      for a in edited.attachments()}}


def score_milestones(name, ck, cfg, cfg_kwargs, reqs, pre, model, tok, edited, checkpoint_dir, log) -> list[dict]:
    """Rows for the run's kept milestones (``--milestones``): the state after its first k edits,
    scored on those k requests (cached in ``checkpoint_dir`` like the final scores); milestones
    beyond ``pre`` (the unedited scores at hand) are left out."""
    from benchmarks.checkpoints import cached_in_chunks
    from repedit.eval.metrics import build_case_records, evaluate_requests, summarize

    rows = []
    for k in (m for m in ck.milestones() if m < len(reqs) and m <= len(pre)):
        ck.restore(edited, cfg.adapter, milestone=k)
        set_inference_knobs(edited, cfg_kwargs)
        state = ck.state(milestone=k)
        posts = cached_in_chunks(
            checkpoint_dir, f"post_{name}_seq{len(reqs)}_at{k}", post_identity(ck, state, model, edited), k,
            lambda lo, hi: evaluate_requests(model, tok, reqs[lo:hi], protocols=PROTOCOLS, pre=pre[lo:hi]), progress=log)
        outs = state["outcomes"]
        row = {"method": name, "setting": f"after {k} of {len(reqs)} sequential",
               **flat(summarize(build_case_records(reqs[:k], pre[:k], posts)))}
        row.update(success_rate=sum(o["success"] for o in outs) / k, mean_steps=sum(o["steps"] for o in outs) / k,
                   s_per_edit=state["seconds"] / k, latency_ratio=None, latency_min=None, hook_share=None,
                   latency_aa=None, adapter_bytes=folder_bytes(ck.folder(k) / state["step_dir"]))
        rows.append(row)
        log(f"  -> {row}")
        edited.delete_adapter(cfg.adapter)
    return rows


def run_setting(name, cfg_kwargs, reqs, pre, model, tok, edited, sequential, log, checkpoint_dir=None, every=25,
                shard=None, latency_repeats=LATENCY_REPEATS, milestones=(), milestones_only=False):
    """One method in one setting: ``(row, details)``, or ``(None, None)`` when the run only
    checkpoints (``--edit-only``, or a ``shard=(k, n)`` of single edits: those with index ≡ k mod n),
    or ``(None, {"milestone_rows": [...]})`` with ``milestones_only`` (a sequential run's kept
    milestones scored, nothing edited; ``pre`` may cover only the first requests)."""
    from repedit import Editor, EditorConfig
    from repedit.editing import RequestOutcome
    from repedit.eval.metrics import build_case_records, evaluate_requests, summarize

    # progress bars on (benchmarks are interactive): the Editor's over a sequential run, one
    # over the requests in single mode
    cfg = EditorConfig(**copy.deepcopy(cfg_kwargs), progress=sequential)
    editor = Editor(edited, tok, cfg)
    outcomes, posts, seconds = [], [], 0.0
    lat = None
    latency_prompts = [r.locality_prompts[0].prompt for r in reqs[:16]]  # timed with the edits attached
    if sequential:
        done, ck = 0, None
        if checkpoint_dir:
            from repedit.checkpoints import SequentialCheckpoint

            ck = SequentialCheckpoint(checkpoint_dir, f"{name}_seq{len(reqs)}", every,
                                      sequential_checkpoint_identity(editor, cfg_kwargs, reqs), keep=milestones)
            if milestones_only:
                rows = score_milestones(name, ck, cfg, cfg_kwargs, reqs, pre, model, tok, edited, checkpoint_dir, log)
                editor.reset()
                return None, {"milestone_rows": rows}
            done, outcomes, seconds = ck.restore(edited, cfg.adapter)
            if done:  # inference knobs are not part of a checkpoint: use this run's
                set_inference_knobs(edited, cfg_kwargs)
                log(f"  {name}: resumed after {done}/{len(reqs)} edits ({seconds:.0f} s of editing so far)")
        if done < len(reqs):
            t = time.perf_counter()
            res = editor.edit(reqs, sequential=True, start=done,
                              callback=ck.callback(edited, cfg.adapter, len(reqs)) if ck else None)
            seconds += time.perf_counter() - t
            outcomes = list(outcomes) + res.outcomes
        else:
            editor.attachments()  # the loaded adapter's interventions
        if pre is None:  # --edit-only: the checkpoint is the result; a later invocation scores it
            editor.reset()
            return None, None
        score = lambda lo, hi: evaluate_requests(model, tok, reqs[lo:hi], protocols=PROTOCOLS, pre=pre[lo:hi])  # noqa: E731
        if ck is not None:  # scores of a finished checkpoint are kept (in parts while they are computed),
            from benchmarks.checkpoints import cached_in_chunks  # so a joint table can reuse them

            posts = cached_in_chunks(checkpoint_dir, f"post_{name}_seq{len(reqs)}",
                                     post_identity(ck, ck.state(), model, edited), len(reqs), score, progress=log)
        else:
            posts = score(0, len(reqs))
        lat = measure_latency(model, tok, latency_prompts, edited, latency_repeats)
        module = editor.attachments()[0].module
        extra = {"num_bases": getattr(module, "num_bases", None),
                 "gate_shift": getattr(getattr(module, "config", None), "gate_shift", None)}
        if hasattr(module, "projector"):
            extra["nullspace_dim_final"] = float(torch.trace(module.projector))
        editor.reset()
        if ck is not None:
            extra["adapter_bytes"] = folder_bytes(ck.folder() / ck.state()["step_dir"])
            extra["milestone_rows"] = score_milestones(name, ck, cfg, cfg_kwargs, reqs, pre, model, tok, edited,
                                                       checkpoint_dir, log)
    else:
        extra = {}
        from tqdm.auto import tqdm

        def apply(req):  # one request edited alone on the unedited model
            editor.reset()
            t = time.perf_counter()
            res = editor.edit(req)
            return res.outcomes[0], time.perf_counter() - t

        def one(i, req):  # ... and scored
            outcome, took = apply(req)
            post = evaluate_requests(model, tok, [req], protocols=PROTOCOLS, pre=[pre[i]])[0]
            return {"outcome": dataclasses.asdict(outcome), "post": post, "seconds": took}

        ident = None
        if checkpoint_dir:  # each single edit's result is kept, so a long run resumes where it stopped
            from benchmarks.checkpoints import cached

            from repedit.adapters import fingerprint

            ident = {"config": copy.deepcopy(cfg_kwargs), **resolved_identity(editor, cfg_kwargs), "protocols": PROTOCOLS,
                     "model": fingerprint(model),
                     "device": str(next(model.parameters()).device.type)}
            key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for i, req in enumerate(tqdm(reqs, desc=f"{name} single", unit="edit", mininterval=10)):
            if shard is not None and i % shard[1] != shard[0]:
                continue  # another process's share
            fresh = []
            compute = lambda: fresh.append(1) or one(i, req)  # noqa: E731
            rec = compute() if ident is None else cached(
                checkpoint_dir, f"single_{name}_{key}/{i:05d}", dict(ident, case=req.case_id), compute)
            seconds += rec["seconds"]
            outcomes.append(RequestOutcome(**dict(rec["outcome"], index=i)))
            posts.append(rec["post"])
            if i == len(reqs) - 1 and shard is None:
                if not fresh:  # the last edit came from the cache: apply it again for the latency measurement
                    apply(req)
                lat = measure_latency(model, tok, latency_prompts, edited, latency_repeats)
                module = editor.attachments()[0].module
                if hasattr(getattr(module, "config", None), "gate_shift"):
                    extra["gate_shift"] = module.config.gate_shift
                if hasattr(module, "nullspace_info"):
                    extra["nullspace"] = {k: v for k, v in module.nullspace_info.items() if k != "path"}
            if len(posts) % 10 == 0:
                log(f"  {name} single {i + 1}/{len(reqs)} ({seconds / len(posts):.2f} s/edit)")
        editor.reset()
        if shard is not None:  # a share of the edits is kept in checkpoint_dir; the plain run scores them all
            return None, None
    # the cost columns: one forward+backward over an edit's training batch (the machine-independent
    # unit of bench_cost.py), the process's peak memory, the saved adapter per edit
    fwd_bwd = forward_backward_seconds(editor, reqs[0], repeats=3)
    editor.reset()  # the timing built the editor's (empty) attachment again
    summary = summarize(build_case_records(reqs, pre, posts))
    row = {"method": name, "setting": f"{len(reqs)} {'sequential' if sequential else 'single'}", **flat(summary)}
    row["success_rate"] = sum(o.success for o in outcomes) / len(outcomes)
    row["mean_steps"] = sum(o.steps for o in outcomes) / len(outcomes)
    row["s_per_edit"] = seconds / len(reqs)
    row["latency_ratio"] = lat["ratio"] if lat else None
    row["latency_min"] = lat["min_ratio"] if lat else None
    row["hook_share"] = lat["hook_share"] if lat else None
    row["latency_aa"] = lat["aa_ratio"] if lat else None
    row["fwd_bwd_s"] = fwd_bwd
    row["edit_over_fwd_bwd"] = row["s_per_edit"] / fwd_bwd
    row["peak_mib"] = peak_memory_mib(str(editor.device))
    if "adapter_bytes" in extra:  # a sequential run's saved checkpoint
        row["adapter_bytes"] = extra["adapter_bytes"]
        row["bytes_per_edit"] = extra["adapter_bytes"] / len(reqs)
    return row, {"summary": summary, "latency": lat, "config": cfg_kwargs, **extra}


def edit_count(value: str) -> int:
    """An argparse type: a number of edits, or ``all`` (every record the source has)."""
    if value == "all":
        return ALL
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of edits or 'all', got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a number of edits must be >= 0, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    """bench_baft's command line (also read by probes that rebuild a run's config)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"4 single + 8 sequential edits per method, methods {','.join(QUICK_METHODS)} "
                   "unless --methods names others (minutes)")
    p.add_argument("--single", type=int, default=None, help="number of single edits (default 200; quick 4)")
    p.add_argument("--sequential", type=edit_count, default=None,
                   help="number of sequential edits, or 'all': every record of --source (default 1000; quick 8)")
    p.add_argument("--methods", default="all", help=f"comma list of {','.join(METHODS)} (default all: every one, with --quick "
                   f"{','.join(QUICK_METHODS)}; none: only score the "
                        "unedited model into --checkpoint-dir, e.g. while long runs still edit)")
    p.add_argument("--cb-lr", type=float, default=None, help="learning rate of the codebook methods' values (default: "
                   "the codebook's editor_defaults)")
    p.add_argument("--cb-max-steps", type=int, default=None, help="max steps of the codebook methods (default: the "
                   "codebook's editor_defaults)")
    p.add_argument("--layer", type=str, default=None,
                   help="edited layer, or layers as a comma list (default: the method's default_layers)")
    p.add_argument("--loreft-layer", type=int, default=9, help="layer of LoReFT")
    p.add_argument("--counts", default="", help="per-method single-edit counts overriding --single, e.g. loreft=50,baft_ns=50")
    p.add_argument("--positions", default=None, help="positions rule (default: the method's editor_defaults)")
    p.add_argument("--rank", type=int, default=2)
    p.add_argument("--lr", type=float, default=None, help="default: each method's editor_defaults (as the API and CLI)")
    p.add_argument("--max-steps", type=int, default=None, help="default: each method's editor_defaults")
    p.add_argument("--stop-prob", type=float, default=None, help="default: each method's editor_defaults")
    p.add_argument("--augment", type=int, default=None, help="augmented copies (default: the method's editor_defaults, else 0)")
    p.add_argument("--locality-weight", type=float, default=1.0)
    p.add_argument("--gate-positive-weight", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--gate-shift", type=float, default=None,
                   help="BaFT's inference gate shift (default: BaFTConfig's); part of a sequential run's checkpoint identity "
                        "(earlier edits run shifted while a new one trains), not of a single edit's")
    p.add_argument("--trigger", default="subject", help="BaFT gate trigger: subject or positions")
    p.add_argument("--gate-margin", type=float, default=2.0)
    p.add_argument("--gate-margin-weight", type=float, default=1.0)
    p.add_argument("--gate-fit-steps", type=int, default=150)
    p.add_argument("--gate-templates", type=int, default=4)
    p.add_argument("--train-gates", action="store_true", help="keep training BaFT gates during the edit (early-stop veto on)")
    p.add_argument("--protocols", default="teacher_forced,probability,generation", help="evaluation protocols (sweeps drop generation)")
    p.add_argument("--ns-threshold", type=float, default=1e-3)
    p.add_argument("--ns-texts", type=int, default=1000, help="WikiText-2 sentences used to build P")
    p.add_argument("--ns-fold", choices=["on", "off"], default=None,
                   help="baft_ns: fold each finished edit's keys into the null space (default: BaFT's, on)")
    p.add_argument("--corpus", default=None, help="EditorConfig.corpus: a text file or 'model' (default: the corpus "
                   "shipped with repedit)")
    p.add_argument("--relation-copies", type=int, default=None, help="EditorConfig.relation_copies: train the subject "
                   "in this many other templates of its relation (default: the method's)")
    p.add_argument("--relation-table", choices=("builtin", "known"), default="builtin", help="where relation copies "
                   "come from: the table shipped with repedit (tolerant matching) or known_1000.json's templates "
                   "(exact lookup; the runs before the shipped table)")
    p.add_argument("--essence-weight", type=float, default=None, help="BaFT's essence term (KL on the subject in "
                   "essence_templates; default: BaFTConfig's)")
    p.add_argument("--answer-end", default=None, help="EditorConfig.answer_end: '.' trains the target and a full stop, "
                   "'' the target alone (default: the method's: '.' for BaFT and the codebook)")
    p.add_argument("--answer-end-stop", default="probability", choices=("probability", "argmax"),
                   help="EditorConfig.answer_end_stop: 'argmax' leaves the answer end's probability out of the stop rule")
    p.add_argument("--mixed-precision", default=None, choices=("bf16", "fp16"), help="EditorConfig.mixed_precision: "
                   "training forwards under autocast with half-precision weight copies (default: the model's dtype)")
    p.add_argument("--subject-locality", type=int, default=3, help="subject-locality prompts per request (the subject "
                   "with other relations; 0: none)")
    p.add_argument("--batch-size", type=int, default=1, help="EditorConfig.batch_size: requests trained together in "
                   "each step of a sequential run")
    p.add_argument("--cb-config", default=None, help="other CodebookConfig fields for the codebook methods, as JSON")
    p.add_argument("--baft-config", default=None, help="other BaFTConfig fields as JSON, e.g. '{\"value\": \"vector\"}' "
                   "(BaFT and BaFT + null space)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=int, default=0, help="records start at this offset of the seeded order")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default auto: cuda when available)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="save each sequential run's adapter and outcomes here every --checkpoint-every edits and "
                        "resume from them (a finished run is only scored), and each single edit's outcome and "
                        "scores (reused by a later run of the same config); methods can edit in separate processes "
                        "with one --methods each, then one invocation with all of them writes the joint table")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--score-milestones", action="store_true", help="score the kept --milestones of a sequential run "
                   "now, unfinished or not, without editing (the unedited model is scored on the first max(milestones) "
                   "requests only)")
    p.add_argument("--milestones", default="", help="comma list of edit counts at which a sequential run keeps a copy "
                   "of its checkpoint (e.g. 1000,5000); the scored run adds a row for each: the state after the "
                   "first k edits, scored on those k requests")
    p.add_argument("--edit-only", action="store_true",
                   help="with --checkpoint-dir: only edit (and checkpoint), score nothing; run again without it to score")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="with --checkpoint-dir and --sequential 0: edit (and keep) only the single edits whose index "
                        "is K mod N, e.g. 0/2 and 1/2 in two processes; run again without it for the table")
    p.add_argument("--latency-repeats", type=int, default=None,
                   help=f"interleaved pairs of forwards per latency ratio (default {LATENCY_REPEATS}; 11 with --quick)")
    p.add_argument("--name", default=None, help="results file stem (default baft_quick / baft_full)")
    p.add_argument("--model", default="smollm2-135m", help="model alias, HF id or path (repedit.models.load)")
    p.add_argument("--source", default="counterfact", choices=SOURCES,
                   help="dev data: counterfact, zsre, or zsre_all (every valid zsRE record, eval then training split)")
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if args.methods == "all":
        args.methods = ",".join(QUICK_METHODS if args.quick else METHODS)
    if args.methods == "none" and not args.checkpoint_dir:
        p.error("--methods none (score the unedited model only) needs --checkpoint-dir to keep the scores")
    unknown = sorted(set(args.methods.split(",")) - set(METHODS) - {"none"})
    if unknown:
        p.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    n_single = args.single if args.single is not None else (4 if args.quick else 200)
    n_seq = args.sequential if args.sequential is not None else (8 if args.quick else 1000)
    shard = None
    if args.shard is not None:
        try:
            shard = tuple(int(x) for x in args.shard.split("/"))
            if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
                raise ValueError
        except ValueError:
            p.error(f"--shard takes K/N with 0 <= K < N, got {args.shard!r}")
        if not args.checkpoint_dir or n_seq or args.edit_only:
            p.error("--shard needs --checkpoint-dir and --sequential 0 (single edits only), without --edit-only")
    name = args.name or ("baft_quick" if args.quick else "baft_full")
    latency_repeats = args.latency_repeats or (11 if args.quick else LATENCY_REPEATS)
    PROTOCOLS[:] = args.protocols.split(",")

    set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)  # noqa: E731

    from repedit import models
    from repedit.eval.metrics import build_case_records, evaluate_requests, summarize
    from repedit.hooks import EditableModel

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = models.load(args.model, device=device)
    model.eval()
    edited = EditableModel(model, tok)
    env = environment(model, args.model)
    n_all = max(n_single, n_seq)
    reqs, data = select_requests(n_all, seed=args.seed, offset=args.offset, source=args.source)
    n_single, n_seq = min(n_single, len(reqs)), min(n_seq, len(reqs))  # 'all': as many as the source has
    if args.subject_locality > 0:
        data.update(subject_locality(args, reqs, model, tok, edited, env))
    log(f"loaded model and {len(reqs)} requests")
    milestones = tuple(int(x) for x in args.milestones.split(",") if x)
    if milestones and not args.checkpoint_dir:
        raise SystemExit("--milestones needs --checkpoint-dir")
    scored = reqs
    if args.score_milestones:
        if not args.checkpoint_dir or n_single or args.edit_only or not milestones:
            raise SystemExit("--score-milestones needs --checkpoint-dir, --milestones, --single 0 and no --edit-only")
        scored = reqs[: max(milestones)]  # the unedited model scored on what the milestones cover
    if args.edit_only:
        if not args.checkpoint_dir or n_single:
            raise SystemExit("--edit-only needs --checkpoint-dir and --single 0")
        pre = [None] * len(reqs)
    elif args.checkpoint_dir:  # resumed or split runs score the unedited model once, kept in parts as it goes
        from benchmarks.checkpoints import cached_in_chunks

        pre = cached_in_chunks(
            args.checkpoint_dir, *unedited_cache(env, args.source, PROTOCOLS, scored, torch.device(device).type),
            len(scored), lambda lo, hi: evaluate_requests(model, tok, scored[lo:hi], protocols=PROTOCOLS), progress=log)
    else:
        pre = evaluate_requests(model, tok, reqs, protocols=PROTOCOLS)
    if not args.edit_only:
        unedited = {"method": "unedited", "setting": "–", **flat(summarize(build_case_records(scored, pre, pre)))}
        unedited["locality"] = None
        log("scored the unedited model")

    rows, details = ([] if args.edit_only else [unedited]), {}
    for mname, ck in method_configs(args).items():
        counts = dict(kv.split("=") for kv in args.counts.split(",") if kv)
        for sequential, n in ((False, int(counts.get(mname, n_single))), (True, n_seq)):
            if n <= 0:
                continue
            log(f"{mname}: {n} {'sequential' if sequential else 'single'}")
            row, det = run_setting(mname, ck, reqs[:n], None if args.edit_only else pre[:n], model, tok, edited,
                                   sequential, log, checkpoint_dir=args.checkpoint_dir, every=args.checkpoint_every,
                                   shard=shard, latency_repeats=latency_repeats, milestones=milestones,
                                   milestones_only=args.score_milestones and sequential)
            if row is None and det is None:
                why = f"shard {args.shard}: no table" if shard else "--edit-only: not scored"
                log(f"  {mname}: {n} edits checkpointed in {args.checkpoint_dir} ({why})")
                continue
            rows.extend(det.pop("milestone_rows", []))
            if row is not None:
                rows.append(row)
                details[f"{mname}/{row['setting']}"] = det
                log(f"  -> {row}")
            payload = {"rows": rows, "details": details, "args": vars(args), "data": data, "environment": env,
                       "targets": {"single": {"efficacy": 0.99, "paraphrase": 0.85, "locality": 0.95},
                                   "sequential_1000": {"efficacy": 0.95, "paraphrase": 0.75, "locality": 0.90}},
                       "wall_seconds": time.perf_counter() - start}
            write_results(name, payload, table=rows, columns=[
                "method", "setting", "rewrite_acc", "rephrase_acc", "locality", "subject_loc", "gen_rephrase_prefix",
                "gen_rephrase", "gen_rewrite", "gen_loc_agree", "gen_subject_agree", "efficacy", "paraphrase",
                "neighborhood", "success_rate", "mean_steps",
                "s_per_edit", "edit_over_fwd_bwd", "peak_mib", "latency_ratio", "latency_min", "latency_aa", "hook_share"]
                + (["adapter_bytes", "bytes_per_edit"] if any("adapter_bytes" in r for r in rows) else []),
                notes=("rewrite_acc/rephrase_acc: EasyEdit teacher-forced token accuracy (the headline); "
                       "locality: EasyEdit argmax agreement with the unedited model on neighbourhood prompts; "
                       "subject_loc: the same agreement on the edited subject asked about other relations; "
                       "gen_*: greedy generation: rephrase prefix / exact match, rewrite exact match, unchanged "
                       "neighbourhood and subject-locality text (`generation/mirage`); secondary: "
                       "efficacy/paraphrase/neighborhood, ROME probability success (`probability/rome`). Model "
                       f"{args.model}, dev {args.source}, seed {args.seed}, offset {args.offset}. "
                       f"Latency ratio: edited/unedited forward, 16 prompts, median of {latency_repeats} interleaved repeats "
                       "(latency_min: ratio of the fastest runs; latency_aa: the same measurement of the unedited model "
                       "against itself, the run's noise floor; hook_share: time inside the edit's hooks over the "
                       "unedited forward time); edit_over_fwd_bwd: s_per_edit over one forward+backward of the model over an "
                       "edit's training batch (fwd_bwd_s; the machine-independent cost of bench_cost.py); peak_mib: the "
                       "process's peak resident memory (CUDA: the allocator's peak) over the whole run, scoring included; "
                       "adapter_bytes: the saved adapter of a checkpointed sequential run (bytes_per_edit: over its edits); "
                       "'after k of N sequential': the run's state after its first k edits, scored on those k "
                       "requests (--milestones)."))
    log("done")


if __name__ == "__main__":
    main()
