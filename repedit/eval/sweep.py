"""Knob sweeps without retraining, scope AUC, and the generality/locality Pareto plot.

Knobs (inference-time settings changed without retraining) are in :mod:`repedit.eval.knobs`.

Scope AUC
---------
How well an edit's *firing* separates the prompts it should act on from those it should
leave alone: the ROC AUC (:func:`rank_auc`, the Mann–Whitney statistic) of each method's
``Intervention.firing_score(h, mask, ctx)``, taken on the hidden states entering the
intervention during a normal (edited) forward of each prompt, with label 1 for in-scope
prompts (edit prompts and their paraphrases) and 0 for out-of-scope prompts (locality
prompts). 1.0: fires more on every in-scope prompt than on any out-of-scope one; 0.5: no
separation. A method with several attachments scores a prompt by the largest of them.

Example::

    from repedit.eval.sweep import sweep, pareto_plot
    res = sweep(edited, tok, requests, knob="scale", values=[0, 0.5, 1, 1.5])
    res.rows[2]["generality"], res.rows[2]["locality"], res.rows[2]["scope_auc"]
    pareto_plot([res], "pareto.png")
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from repedit.eval import metrics as M
from repedit.eval.harness import _check_protocols, _clean, _unwrap, coerce_requests, evaluate, evaluate_pre, write_json
from repedit.eval.knobs import GENERIC_KNOBS, _select, get_knob, knob_setting, knobs, set_knob

logger = logging.getLogger(__name__)

__all__ = [
    "GENERIC_KNOBS",
    "DEFAULT_VALUES",
    "AXIS_LABELS",
    "knobs",
    "get_knob",
    "set_knob",
    "knob_setting",
    "scope_scores",
    "scope_auc",
    "SweepResult",
    "sweep",
    "pareto_plot",
]

DEFAULT_VALUES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)

#: protocol label -> (x axis: locality, y axis: generality) labels a reader understands without the code.
AXIS_LABELS: dict[str, tuple[str, str]] = {
    M.TEACHER_FORCED: (
        "Locality: agreement with unedited model\n(teacher-forced argmax tokens on unrelated prompts)",
        "Generality: paraphrase success\n(teacher-forced token accuracy of the new target)",
    ),
    M.PROBABILITY: (
        "Locality: unrelated prompts still preferring their true answer\n(P(true) > P(new), ROME)",
        "Generality: paraphrases preferring the new target\n(P(new) > P(true), ROME)",
    ),
    M.GENERATION: (
        "Locality: unchanged greedy answers on unrelated prompts",
        "Generality: paraphrases answered with the new target\n(greedy generation, exact match)",
    ),
}


# ============================================================================ scope
def _scope_prompts(reqs: Sequence[Any]) -> tuple[list[str], list[str | None], list[int]]:
    prompts, subjects, labels = [], [], []
    for r in reqs:
        for p in [r.prompt] + list(r.rephrase_prompts):
            prompts.append(p)
            subjects.append(r.subject if r.subject and r.subject in p else None)
            labels.append(1)
        for lp in r.locality_prompts:
            prompts.append(lp.prompt)
            subjects.append(None)
            labels.append(0)
    return prompts, subjects, labels


def scope_scores(
    edited: Any,
    tokenizer: Any,
    requests: Any,
    attachments: Sequence[Any] | None = None,
    batch_size: int = 16,
) -> dict[str, dict[str, list]]:
    """Per method: ``{"labels": [1 in-scope / 0 out-of-scope], "scores": [firing score]}``.

    In-scope prompts are each request's prompt and rephrases, out-of-scope its locality
    prompts. Scores are ``module.firing_score(h, mask, ctx)`` on the hidden states entering
    each intervention during an edited forward of the prompt (max over a method's attachments).

    Example::

        s = scope_scores(edited, tok, requests)["loreft"]
        scope_auc(s["labels"], s["scores"])
    """
    from repedit.positions import encode

    edited = _unwrap(edited)
    tokenizer = tokenizer if tokenizer is not None else edited.tokenizer
    reqs, _ = coerce_requests(requests)
    atts = [a for a in _select(edited, attachments) if a.active]
    prompts, subjects, labels = _scope_prompts(reqs)
    n = len(prompts)
    per_att: dict[str, list[float]] = {a.name: [float("nan")] * n for a in atts}
    model = edited.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(n), key=lambda i: len(prompts[i]))
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = encode(tokenizer, [prompts[i] for i in idx], subjects=[subjects[i] for i in idx]).to(device)
            for a in atts:  # the states entering each intervention in an edited forward
                h, mask, ctx = edited.capture(a.layer, a.component, batch, before=a.name, edited=True, with_context=True)
                with torch.no_grad():
                    score = a.module.firing_score(h, mask, ctx).float().cpu().tolist()
                for row, i in enumerate(idx):
                    per_att[a.name][i] = score[row]
    finally:
        model.train(was_training)
    out: dict[str, dict[str, list]] = {}
    for a in atts:
        entry = out.setdefault(a.method, {"labels": list(labels), "scores": [-math.inf] * n, "attachments": []})
        entry["attachments"].append(a.name)
        entry["scores"] = [max(x, y) if not math.isnan(y) else x for x, y in zip(entry["scores"], per_att[a.name])]
    return out


def scope_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC of firing scores for in-scope (1) vs out-of-scope (0) prompts; NaN with one class.

    Infinite scores (e.g. "no query position" = -inf) are mapped just beyond the finite range.

    Example::

        scope_auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2])   # 1.0
    """
    labels = [int(x) for x in labels]
    if len(set(labels)) < 2:
        return float("nan")
    scores = [float(s) for s in scores]
    if len(scores) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    finite = [s for s in scores if math.isfinite(s)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    span = (hi - lo) or 1.0
    # +inf ranks above every finite score; -inf and NaN (the edit never ran) below.
    fixed = [s if math.isfinite(s) else (hi + span if s == math.inf else lo - span) for s in scores]
    return rank_auc(labels, fixed)


def rank_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC as the Mann–Whitney statistic: the chance that a positive outscores a negative,
    ties counting one half (what ``sklearn.metrics.roc_auc_score`` computes), from average ranks.

    Example::

        rank_auc([1, 0, 1, 0], [0.9, 0.9, 0.5, 0.1])   # 0.625
    """
    import numpy as np

    y = np.asarray(labels, dtype=bool)
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties share their average rank
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ============================================================================ sweep
@dataclass
class SweepResult:
    """One curve: a knob's values and, at each, the headline metrics and scope AUC.

    ``rows[i]`` = ``{"knob", "value", "protocol", "reliability", "generality", "locality", "hm",
    "scope_auc": {method: auc}, "headline": {protocol label: {...}}}``; the flat
    reliability/generality/locality/hm are those of ``protocol`` (the plotted one).

    Example::

        res = sweep(edited, tok, requests, "scale", [0, 1])
        res.save("sweep.json")
    """

    label: str
    knob: str
    protocol: str
    rows: list[dict[str, Any]]
    baseline: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "knob": self.knob, "protocol": self.protocol, "baseline": self.baseline,
                "rows": self.rows, "metadata": self.metadata}

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_dict())


def sweep(
    edited: Any,
    tokenizer: Any,
    requests: Any,
    knob: str = "scale",
    values: Sequence[float] = DEFAULT_VALUES,
    *,
    attachments: Sequence[Any] | None = None,
    setter: Callable[[float], None] | None = None,
    original: float | None = None,
    protocols: Sequence[str] = ("teacher_forced",),
    plot_protocol: str | None = None,
    pre: Any = None,
    batch_size: int = 16,
    scope: bool = True,
    label: str | None = None,
    data: Any = None,
    seed: int | None = None,
    progress: bool = False,
) -> SweepResult:
    """Evaluate the edits at each value of a knob, without retraining.

    Pre-edit results are computed once (edits disabled) and reused; at each value the
    post-edit metrics (reliability, generality, locality, HM per protocol) and the scope AUC
    of each method are recorded. The knob is restored afterwards.

    Args:
        knob: a knob name (``"scale"`` works for every method; see :func:`knobs`), or a
            label when ``setter`` is given.
        attachments: which interventions the knob applies to (names or objects; default all).
        setter: ``setter(value)`` to call instead of the knob protocol; ``original`` is
            restored at the end when given.
        plot_protocol: the protocol whose numbers fill the flat row fields (default: the first).

    Example::

        res = sweep(edited, tok, requests, knob="radius_scale", values=[0.5, 1, 2])
    """
    edited = _unwrap(edited)
    tokenizer = tokenizer if tokenizer is not None else edited.tokenizer
    reqs, ds = coerce_requests(requests)
    data = data if data is not None else ds
    protocols = _check_protocols(protocols)
    main = M.PROTOCOLS[plot_protocol or protocols[0]]
    if main not in [M.PROTOCOLS[p] for p in protocols]:
        raise ValueError(f"plot_protocol {plot_protocol!r} is not among the evaluated protocols {protocols}")
    values = [float(v) for v in values]
    if not values:
        raise ValueError("give at least one knob value")
    atts = _select(edited, attachments)
    if setter is None:
        if not atts:
            raise ValueError("no interventions are attached: nothing to sweep")
        for a in atts:  # fail before any work when a knob is missing
            get_knob(a, knob)
    methods = sorted({a.method for a in atts})
    label = label or "+".join(methods) or knob
    t0 = time.perf_counter()
    if pre is None:
        pre = evaluate_pre(edited, tokenizer, reqs, protocols, batch_size)
    rows: list[dict[str, Any]] = []
    baseline: dict[str, Any] = {}
    for v in tqdm(values, desc=f"sweeping {knob} ({label})", unit="value", disable=not progress):
        with knob_setting(edited, knob, v, attachments=atts, setter=setter, original=original):
            rep = evaluate(edited, tokenizer, reqs, protocols, pre=pre, batch_size=batch_size, data=data, seed=seed)
            auc: dict[str, float] = {}
            if scope:
                for method, s in scope_scores(edited, tokenizer, reqs, attachments=atts, batch_size=batch_size).items():
                    auc[method] = scope_auc(s["labels"], s["scores"])
        head = rep.summary["headline"]
        if not baseline:
            baseline = {lab: dict(e["pre"]) for lab, e in head.items()}
        flat = head.get(main, {}).get("post", {})
        rows.append({
            "knob": knob, "value": v, "protocol": main,
            "reliability": flat.get("reliability"), "generality": flat.get("generality"),
            "locality": flat.get("locality"), "hm": flat.get("hm"),
            "scope_auc": auc,
            "headline": {lab: e["post"] for lab, e in head.items()},
        })
    meta = dict(rep.metadata)
    meta.update({"knob": knob, "values": values, "attachments": [a.name for a in atts], "methods": methods,
                 "sweep_seconds": time.perf_counter() - t0,
                 "scope_auc_definition": "ROC AUC of Intervention.firing_score: in-scope = edit prompts + paraphrases, "
                                         "out-of-scope = locality prompts"})
    meta.pop("seconds", None)
    return SweepResult(label=label, knob=knob, protocol=main, rows=_clean(rows), baseline=_clean(baseline), metadata=meta)


# ============================================================================ plot
def pareto_plot(
    results: Sequence[SweepResult] | SweepResult,
    path: str | os.PathLike,
    protocol: str | None = None,
    title: str | None = None,
    annotate: bool = True,
) -> Path:
    """Generality against locality, one curve per sweep (method), saved as a PNG (Agg backend).

    Points are labelled with their knob value; the unedited model is drawn as a star.

    Example::

        pareto_plot([loreft_sweep, codebook_sweep], "pareto.png")
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if isinstance(results, SweepResult):
        results = [results]
    if not results:
        raise ValueError("nothing to plot")
    label = M.PROTOCOLS.get(protocol, protocol) if protocol else results[0].protocol
    xlab, ylab = AXIS_LABELS.get(label, ("Locality", "Generality"))
    fig, ax = plt.subplots(figsize=(7.5, 6), dpi=110)
    base_done = False
    for res in results:
        pts = []
        for r in res.rows:
            post = r.get("headline", {}).get(label, {})
            x, y = post.get("locality"), post.get("generality")
            if x is not None and y is not None:
                pts.append((x, y, r["value"]))
        if not pts:
            logger.warning("sweep %r has no %s numbers to plot", res.label, label)
            continue
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{res.label} ({res.knob})")
        if annotate:  # one label per distinct point ("0.5, 1, 2" where settings coincide)
            groups: dict[tuple[float, float], list[str]] = {}
            for x, y, v in pts:
                groups.setdefault((round(x, 6), round(y, 6)), []).append(f"{v:g}")
            for (x, y), vs in groups.items():
                ax.annotate(", ".join(vs), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                            color=line.get_color())
        base = res.baseline.get(label)
        if base and not base_done and base.get("generality") is not None:
            ax.plot([1.0], [base["generality"]], marker="*", markersize=14, color="black", linestyle="none",
                    label="unedited model")
            base_done = True
    ax.set_xlabel(xlab)
    ax.set_ylabel(ylab)
    ax.set_xlim(-0.02, 1.05)
    ax.set_ylim(-0.02, 1.05)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"Generality vs locality as the knob varies\nprotocol: {label} (labels: knob values)", fontsize=10)
    ax.legend(loc="lower left", fontsize=9)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png")
    plt.close(fig)
    return p
