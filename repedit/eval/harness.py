"""Pre/post evaluation of an edited model, and the sequential-editing protocols.

:func:`evaluate` scores the same requests twice on one :class:`~repedit.hooks.EditableModel`:
"pre" inside ``edited.disabled()`` (the base model) and "post" with the edits on. Locality is
EasyEdit's: the fraction of locality-answer positions whose teacher-forced argmax token is
the same after the edit as before (``locality.neighborhood_acc``); it measures unchanged
output, not correctness.

The result (:class:`EvalReport`) holds EasyEdit per-case records
``{"pre", "post", "case_id", "requested_rewrite"}``, a summary (means over cases plus the
harmonic mean of reliability, generality and locality per protocol) and metadata (protocol
labels, model name and fingerprint, data file and sha256, seed, repedit version, zsRE target
convention). Every metric carries its protocol label (``metric_meta`` in each record and the
summary; ``protocols`` in the metadata).

Records are evaluated in fixed chunks of ``chunk_size`` requests, so the batches (and hence
the numbers) are the same whether one process or several (:mod:`repedit.eval.distributed`)
do the work.

Example::

    from repedit.eval import load_counterfact
    from repedit.eval.harness import evaluate, run_sequential
    ds = load_counterfact(limit=20)
    report = evaluate(result.edited, tok, ds, protocols=("teacher_forced", "probability"))
    report.summary["headline"]["teacher_forced/easyedit"]["hm"]
    report.save("metrics.json")

    editor = Editor(model, tok, EditorConfig(method="loreft", layers=[9]))
    seq = run_sequential(editor, ds, protocol="final")     # score every edit after the last one
    seq.metadata["sequential_protocol"]                    # 'final'
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from repedit.eval import metrics as M
from repedit.eval.report import (DEFAULT_PROTOCOLS, HEADLINE_METRICS, SEQUENTIAL_PROTOCOLS, EvalReport, _add_fluency,
                                 _check_protocols, _chunks, _clean, _pre_list, _score_chunk, _summary, _unwrap,
                                 coerce_requests, format_table, headline, model_metadata, write_json)
from repedit.requests import validate_requests

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROTOCOLS",
    "SEQUENTIAL_PROTOCOLS",
    "HEADLINE_METRICS",
    "EvalReport",
    "evaluate",
    "evaluate_pre",
    "headline",
    "format_table",
    "run_sequential",
    "run_sequential_protocols",
    "coerce_requests",
    "model_metadata",
]

# ============================================================================ evaluate
def evaluate_pre(
    edited: Any,
    tokenizer: Any,
    requests: Any,
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    batch_size: int = 16,
    *,
    extra_tokens: int = 5,
    fluency_tokens: int = 0,
) -> list[dict[str, Any]]:
    """Raw pre-edit results (edits disabled) to reuse as ``pre=`` in several :func:`evaluate` calls.

    Example::

        pre = evaluate_pre(edited, tok, requests, ("teacher_forced",))
        for scale in (0.5, 1.0):
            ...; evaluate(edited, tok, requests, ("teacher_forced",), pre=pre)
    """
    edited = _unwrap(edited)
    tokenizer = tokenizer if tokenizer is not None else edited.tokenizer
    reqs, _ = coerce_requests(requests)
    protocols = _check_protocols(protocols)
    with edited.disabled():
        res = M.evaluate_requests(edited.model, tokenizer, reqs, protocols=protocols, batch_size=batch_size,
                                  extra_tokens=extra_tokens)
        if fluency_tokens:
            _add_fluency(edited.model, tokenizer, reqs, res, batch_size, fluency_tokens)
    return res


def evaluate(
    edited: Any,
    tokenizer: Any,
    requests: Any,
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    pre: Any = None,
    batch_size: int = 16,
    *,
    data: Any = None,
    seed: int | None = None,
    model_name: str | None = None,
    chunk_size: int = 64,
    extra_tokens: int = 5,
    fluency_tokens: int = 0,
    keep_outputs: bool = False,
    distributed: bool | None = None,
    progress: bool = False,
    extra_metadata: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Score ``requests`` before (``edited.disabled()``) and after the edits, with labelled protocols.

    Args:
        edited: an :class:`~repedit.hooks.EditableModel` (or an EditResult / Editor).
        tokenizer: the model's tokenizer (``None``: ``edited.tokenizer``).
        requests: EditRequests, dicts, or a loader Dataset (whose file and sha256 are then
            recorded in the metadata).
        protocols: short names from :data:`repedit.eval.metrics.PROTOCOLS`.
        pre: raw pre-edit results from an earlier run (:attr:`EvalReport.pre_results` or
            :func:`evaluate_pre`); computed here when ``None``.
        batch_size: prompts per forward (sorted by length, padded).
        data: what to record as the data source when ``requests`` is a list (a Dataset or path).
        seed: recorded in the metadata (the editing/selection seed of the run).
        chunk_size: requests per evaluation unit (also the unit of work sharding).
        fluency_tokens: > 0 adds ROME's n-gram entropy of that many generated tokens per edit prompt.
        keep_outputs: keep the argmax token lists (``*_output``) in the records.
        distributed: shard chunks over ``torch.distributed`` ranks and gather the results on
            every rank (``None``: whenever a process group with more than one rank is initialised).
        progress: show a tqdm bar (rank 0 only).

    Example::

        report = evaluate(result.edited, tok, requests, protocols=("teacher_forced",))
        report.summary["headline"]["teacher_forced/easyedit"]["post"]
    """
    from repedit.eval import distributed as D

    t0 = time.perf_counter()
    edited = _unwrap(edited)
    tokenizer = tokenizer if tokenizer is not None else edited.tokenizer
    if tokenizer is None:
        raise ValueError("evaluate() needs the model's tokenizer")
    reqs, ds = coerce_requests(requests)
    data = data if data is not None else ds
    protocols = _check_protocols(protocols)
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be >= 1")
    pre_all = _pre_list(pre, len(reqs))
    rank, world = D.rank_and_world() if distributed is not False else (0, 1)
    if distributed and world == 1:
        logger.info("distributed=True but no process group with several ranks is initialised; running alone")
    chunks = _chunks(len(reqs), chunk_size)
    mine = D.assign(len(chunks), rank, world)
    bar = tqdm(total=sum(len(chunks[c]) for c in mine), desc=f"evaluating (rank {rank}/{world})" if world > 1 else "evaluating",
               unit="case", disable=not progress or rank != 0)
    local: list[tuple[int, Any]] = []
    was_training = edited.model.training
    edited.model.eval()
    try:
        for c in mine:
            idx = chunks[c]
            sub = [reqs[i] for i in idx]
            pre_c = None if pre_all is None else [pre_all[i] for i in idx]
            local.append((c, _score_chunk(edited, tokenizer, sub, protocols, pre_c, batch_size, extra_tokens,
                                          fluency_tokens)))
            bar.update(len(idx))
    finally:
        bar.close()
        edited.model.train(was_training)
    merged = D.gather_indexed(local, len(chunks)) if world > 1 else [v for _, v in sorted(local, key=lambda x: x[0])]
    pre_res = [r for pre_c, _ in merged for r in pre_c]
    post_res = [r for _, post_c in merged for r in post_c]
    records = M.build_case_records(reqs, pre_res, post_res, keep_outputs=keep_outputs)
    for rec in records:
        rec["pre"].setdefault("metric_meta", rec["post"].get("metric_meta", {}))
    summary = _summary(records)
    extra = {
        "evaluation": {
            "pre": "edits disabled (EditableModel.disabled(): the base model)",
            "post": "edits enabled",
            "locality": "EasyEdit: fraction of locality-answer tokens whose teacher-forced argmax is unchanged by the edit",
            "protocol_names": {p: M.PROTOCOLS[p] for p in protocols},
        },
        "n_requests": len(reqs),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "world_size": world,
        "seconds": time.perf_counter() - t0,
    }
    if fluency_tokens:
        extra["fluency_tokens"] = fluency_tokens
        extra["evaluation"]["protocol_names"]["fluency"] = M.FLUENCY
    extra.update(extra_metadata or {})
    labels = [M.PROTOCOLS[p] for p in protocols] + ([M.FLUENCY] if fluency_tokens else [])
    meta = M.results_metadata(labels, model=model_metadata(edited, model_name), data=data, seed=seed, extra=extra)
    return EvalReport(records=records, summary=summary, metadata=meta, pre_results=pre_res, post_results=post_res)


# ============================================================================ sequential editing
def run_sequential_protocols(
    editor: Any,
    requests: Any,
    sequential_protocols: Sequence[str] = SEQUENTIAL_PROTOCOLS,
    protocols: Sequence[str] = ("teacher_forced",),
    batch_size: int = 16,
    *,
    data: Any = None,
    model_name: str | None = None,
    extra_tokens: int = 5,
    keep_outputs: bool = False,
    progress: bool = False,
    on_edit: Callable[[int, list[int]], None] | None = None,
) -> dict[str, EvalReport]:
    """Edit ``requests`` one after another (``editor.config.batch_size`` at a time) and score
    them under several sequential protocols from the *same* editing run.

    ``"immediate"`` scores each chunk's requests right after that chunk is edited;
    ``"final"`` scores every request after the last edit. The edits are trained exactly as
    ``editor.edit(requests, sequential=True)`` trains them (same seed, same order), so the
    protocols differ only in when scoring happens. Pre-edit results come from the base model
    (edits disabled) and are shared.

    Example::

        reports = run_sequential_protocols(editor, requests)
        reports["immediate"].summary["headline"], reports["final"].summary["headline"]
    """
    seqp = tuple(dict.fromkeys(sequential_protocols))
    bad = [p for p in seqp if p not in SEQUENTIAL_PROTOCOLS]
    if bad or not seqp:
        raise ValueError(f"sequential protocol must be one of {SEQUENTIAL_PROTOCOLS}, got {bad[0] if bad else seqp!r}")
    protocols = _check_protocols(protocols)
    t0 = time.perf_counter()
    edited = editor.edited
    tok = editor.tokenizer
    cfg = editor.config
    reqs, ds = coerce_requests(requests)
    data = data if data is not None else ds
    max_len = getattr(getattr(edited.model, "config", None), "max_position_embeddings", None)
    reqs = validate_requests(reqs, tokenizer=tok, max_length=max_len)
    if not reqs:
        raise ValueError("run_sequential() needs at least one request")
    pre = evaluate_pre(edited, tok, reqs, protocols, batch_size, extra_tokens=extra_tokens)
    outcomes, immediate = _edit_and_score(editor, reqs, pre, protocols, "immediate" in seqp, batch_size,
                                          extra_tokens, progress, on_edit)
    edit_seconds = time.perf_counter() - t0
    base_extra = {
        "editor": {"method": cfg.method, "layers": editor.default_layers(), "positions": cfg.positions,
                   "component": cfg.component, "edit_batch_size": cfg.batch_size, "max_steps": cfg.max_steps,
                   "lr": cfg.lr, "method_config": dict(cfg.method_config)},
        "edit_success_rate": sum(o.success for o in outcomes) / max(1, len(outcomes)),
        "n_edits": len(reqs),
    }
    out: dict[str, EvalReport] = {}
    for sp in seqp:
        if sp == "final":
            rep = evaluate(edited, tok, reqs, protocols, pre=pre, batch_size=batch_size, data=data, seed=cfg.seed,
                           model_name=model_name, extra_tokens=extra_tokens, keep_outputs=keep_outputs,
                           distributed=False)
        else:
            rep = _immediate_report(edited, reqs, pre, immediate, protocols, data, cfg.seed, model_name, batch_size,
                                    keep_outputs)
        rep.metadata.update(base_extra)
        rep.metadata["sequential_protocol"] = sp
        rep.metadata["sequential_protocol_definition"] = (
            "each edit scored right after it was made (EasyEdit >= PR #687)" if sp == "immediate"
            else "every edit scored after the last edit (WISE, AlphaEdit; EasyEdit README)")
        rep.metadata["edit_seconds"] = edit_seconds
        rep.summary["sequential_protocol"] = sp
        for rec in rep.records:
            rec["sequential_protocol"] = sp
        out[sp] = rep
    return out


def _edit_and_score(editor: Any, reqs: list, pre: list, protocols: tuple, immediate: bool, batch_size: int,
                    extra_tokens: int, progress: bool, on_edit: Callable[[int, list[int]], None] | None,
                    ) -> tuple[list[Any], list[dict[str, Any] | None]]:
    """Train ``reqs`` sequentially as ``Editor.edit(sequential=True)`` does (one RNG fork and
    seed for the whole run, base frozen), scoring each chunk right after its edit when
    ``immediate``: (outcomes, per-request post results or None)."""
    edited, tok, cfg = editor.edited, editor.tokenizer, editor.config
    scored: list[dict[str, Any] | None] = [None] * len(reqs)
    outcomes: list[Any] = []
    bar = tqdm(total=len(reqs), desc=f"sequential editing ({cfg.method})", unit="edit", disable=not progress)
    with torch.random.fork_rng(devices=[]), editor._frozen_base():
        torch.manual_seed(cfg.seed)
        editor.attachments()
        for k, chunk in enumerate(_chunks(len(reqs), cfg.batch_size)):
            outcomes.extend(editor._train_chunk([reqs[i] for i in chunk], chunk, reqs))
            if immediate:
                sub = [reqs[i] for i in chunk]
                with torch.no_grad():
                    post = M.evaluate_requests(edited.model, tok, sub, protocols=protocols, pre=[pre[i] for i in chunk],
                                               batch_size=batch_size, extra_tokens=extra_tokens)
                for i, r in zip(chunk, post):
                    scored[i] = r
            if on_edit is not None:
                on_edit(k, chunk)
            bar.update(len(chunk))
    bar.close()
    return outcomes, scored


def _immediate_report(edited: Any, reqs: list, pre: list, immediate: list, protocols: tuple, data: Any, seed: int,
                      model_name: str | None, batch_size: int, keep_outputs: bool) -> EvalReport:
    """The report of the ``immediate`` protocol from the results scored right after each edit."""
    post = [r for r in immediate if r is not None]
    records = M.build_case_records(reqs, pre, post, keep_outputs=keep_outputs)
    for rec in records:
        rec["pre"].setdefault("metric_meta", rec["post"].get("metric_meta", {}))
    meta = M.results_metadata([M.PROTOCOLS[p] for p in protocols], model=model_metadata(edited, model_name),
                              data=data, seed=seed, extra={
                                  "evaluation": {
                                      "pre": "edits disabled (the base model), before any edit",
                                      "post": "edits enabled, right after the request's own edit",
                                      "locality": "EasyEdit: fraction of locality-answer tokens whose "
                                                  "teacher-forced argmax is unchanged by the edits",
                                      "protocol_names": {p: M.PROTOCOLS[p] for p in protocols}},
                                  "n_requests": len(reqs), "batch_size": batch_size, "world_size": 1})
    return EvalReport(records=records, summary=_summary(records), metadata=meta, pre_results=pre, post_results=post)


def run_sequential(
    editor: Any,
    requests: Any,
    protocol: str = "final",
    protocols: Sequence[str] = ("teacher_forced",),
    batch_size: int = 16,
    **kwargs: Any,
) -> EvalReport:
    """Sequential editing scored under one protocol: ``"final"`` (default) or ``"immediate"``.

    The report's metadata and summary record ``sequential_protocol``. To compare both on the
    same editing run, use :func:`run_sequential_protocols`.

    Example::

        editor = Editor(model, tok, EditorConfig(method="loreft", layers=[9]))
        report = run_sequential(editor, requests, protocol="immediate")
    """
    if protocol not in SEQUENTIAL_PROTOCOLS:
        raise ValueError(f"protocol must be one of {SEQUENTIAL_PROTOCOLS}, got {protocol!r}")
    return run_sequential_protocols(editor, requests, (protocol,), protocols, batch_size, **kwargs)[protocol]
