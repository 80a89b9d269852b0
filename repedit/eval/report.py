"""What an evaluation returns and how it is shown: :class:`EvalReport`, the headline metrics
(strict protocols first), the table, JSON output, and the helpers the harness and the
sweeps share (request coercion, model metadata, protocol checks).

Example::

    report = evaluate(edited, tok, requests)
    print(format_table(report.summary))
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from repedit.eval import metrics as M
from repedit.requests import EditRequest, validate_requests

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PROTOCOLS", "SEQUENTIAL_PROTOCOLS", "HEADLINE_METRICS", "EvalReport", "headline", "format_table",
           "coerce_requests", "model_metadata", "write_json"]


DEFAULT_PROTOCOLS: tuple[str, ...] = ("teacher_forced", "probability", "generation")

#: ``"immediate"``: each edit is scored right after it is made (EasyEdit after PR #687, the WISE
#: "current checkpoint" reading); ``"final"``: every edit is scored after the last one
#: (WISE/AlphaEdit papers, EasyEdit's README).
SEQUENTIAL_PROTOCOLS: tuple[str, ...] = ("immediate", "final")

#: protocol label -> (reliability, generality, locality) summary keys of the post-edit means.
HEADLINE_METRICS: dict[str, tuple[str, str, str]] = {
    M.TEACHER_FORCED: ("rewrite_acc", "rephrase_acc", "locality.neighborhood_acc"),
    M.GENERATION: ("generation.rewrite_exact", "generation.rephrase_exact", "generation.neighborhood_text_agreement"),
    M.PROBABILITY: ("rome.efficacy_success", "rome.paraphrase_success", "rome.neighborhood_success"),
}
#: shown in tables, labelled secondary: ROME's probability comparison only asks that the new
#: answer beats the old one, not that the model gives it
SECONDARY = (M.PROBABILITY,)
#: further rows of the printed table when present: subject locality, greedy prefix match, ...
EXTRA_METRICS = ("locality.subject_acc", "generation.subject_text_agreement", "generation.rephrase_prefix",
                 "locality.neighborhood_gold_acc", "portability.portability_acc", "fluency.ngram_entropy")

#: locality metrics defined as agreement with the pre-edit model (so 1.0 before editing);
#: ROME's neighborhood_success is an absolute comparison and has a measured pre value.
_AGREEMENT_KEYS = ("locality.neighborhood_acc", "generation.neighborhood_text_agreement")

_HEADLINE_HELP = {
    M.TEACHER_FORCED: "token accuracy of prompt + target (EasyEdit); locality = argmax agreement with the unedited model",
    M.PROBABILITY: "P(target_new) > P(ground_truth) by mean NLL (ROME); locality = the neighbourhood keeps P(true) > P(new)",
    M.GENERATION: "greedy answer exactly equals the target (Mirage); locality = generated neighbourhood answer unchanged",
}


# ============================================================================ report
@dataclass
class EvalReport:
    """Records, summary and metadata of one evaluation run.

    ``pre_results`` keeps the raw pre-edit results (with the argmax token outputs locality
    needs) so they can be passed as ``pre=`` to a later :func:`evaluate`; it is not saved.

    Example::

        report = evaluate(edited, tok, requests)
        print(report.table())
        report.save("metrics.json")
    """

    records: list[dict[str, Any]]
    summary: dict[str, Any]
    metadata: dict[str, Any]
    pre_results: list[dict[str, Any]] = field(default_factory=list, repr=False)
    post_results: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def protocols(self) -> list[str]:
        return list(self.metadata.get("protocols", []))

    def to_dict(self, records: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"metadata": self.metadata, "summary": self.summary}
        if records:
            out["records"] = self.records
        return out

    def save(self, path: str | os.PathLike, records: bool = True) -> Path:
        """Write JSON atomically (NaN becomes ``null``)."""
        return write_json(path, self.to_dict(records=records))

    def table(self) -> str:
        return format_table(self.summary)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, tensors -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _clean(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON via a temporary file and a rename."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


# ============================================================================ helpers
def coerce_requests(requests: Any) -> tuple[list[EditRequest], Any]:
    """(requests as EditRequests, what to record as the data source) from a loader Dataset,
    a list of EditRequests or dicts, or one request.

    Example::

        reqs, data = coerce_requests(load_counterfact(limit=3))
    """
    data = None
    if isinstance(requests, (EditRequest, Mapping)):
        requests = [requests]
    if hasattr(requests, "to_list") and hasattr(requests, "info"):  # a datasets.Dataset
        from repedit.eval.data import to_requests

        data = requests
        requests = to_requests(requests)
    return validate_requests(list(requests)), data


def _unwrap(edited: Any) -> Any:
    from repedit.hooks import EditableModel

    if isinstance(edited, EditableModel):
        return edited
    inner = getattr(edited, "edited", None)  # EditResult or Editor
    if isinstance(inner, EditableModel):
        return inner
    raise TypeError(
        f"evaluate() needs an EditableModel (or an EditResult/Editor), got {type(edited).__name__}; "
        "wrap a plain model with repedit.wrap(model, tokenizer)"
    )


def model_metadata(edited: Any, name: str | None = None) -> dict[str, Any]:
    """``{"name", "fingerprint", "dtype", "device", "edits": [...]}`` of an EditableModel.

    Example::

        model_metadata(edited)["fingerprint"]["weights_sha256"]
    """
    from repedit.adapters import fingerprint

    model = edited.model
    cfg = getattr(model, "config", None)
    if name is None:
        name = getattr(cfg, "name_or_path", None) or getattr(cfg, "_name_or_path", None) or type(model).__name__
    p = next(model.parameters(), None)
    return {
        "name": name,
        "fingerprint": fingerprint(model),
        "dtype": str(p.dtype).replace("torch.", "") if p is not None else None,
        "device": str(p.device) if p is not None else None,
        "edits": [
            {"name": a.name, "method": a.method, "layer": a.layer, "component": a.component,
             "positions": a.positions.value, "adapter": a.adapter, "active": a.active}
            for a in edited.attachments()
        ],
    }


def _chunks(n: int, chunk_size: int) -> list[list[int]]:
    return [list(range(i, min(i + chunk_size, n))) for i in range(0, n, chunk_size)]


def _check_protocols(protocols: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(protocols, str):
        protocols = [p.strip() for p in protocols.split(",") if p.strip()]
    protocols = tuple(dict.fromkeys(protocols))
    if not protocols:
        raise ValueError(f"choose at least one protocol from {sorted(M.PROTOCOLS)}")
    unknown = [p for p in protocols if p not in M.PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol {unknown[0]!r}; choose from {', '.join(sorted(M.PROTOCOLS))}")
    return protocols


def _pre_list(pre: Any, n: int) -> list[dict[str, Any]] | None:
    if pre is None:
        return None
    if isinstance(pre, EvalReport):
        pre = pre.pre_results
    pre = list(pre)
    if len(pre) != n:
        raise ValueError(f"{n} requests but {len(pre)} pre-edit results")
    if pre and "pre" in pre[0] and "post" in pre[0]:
        raise ValueError("pre= takes the raw pre-edit results (EvalReport.pre_results), not case records")
    return pre


def _score_chunk(
    edited: Any,
    tokenizer: Any,
    reqs: Sequence[EditRequest],
    protocols: tuple[str, ...],
    pre: list[dict[str, Any]] | None,
    batch_size: int,
    extra_tokens: int,
    fluency_tokens: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pre, post) raw results for some requests; pre is computed with edits disabled unless given."""
    model = edited.model  # the HF model (its forward takes logits_to_keep); hooks sit on it
    if pre is None:
        with edited.disabled():
            pre = M.evaluate_requests(model, tokenizer, reqs, protocols=protocols, batch_size=batch_size,
                                      extra_tokens=extra_tokens)
            if fluency_tokens:
                _add_fluency(model, tokenizer, reqs, pre, batch_size, fluency_tokens)
    post = M.evaluate_requests(model, tokenizer, reqs, protocols=protocols, pre=pre, batch_size=batch_size,
                               extra_tokens=extra_tokens)
    if fluency_tokens:
        _add_fluency(model, tokenizer, reqs, post, batch_size, fluency_tokens)
    return pre, post


def _add_fluency(model: Any, tokenizer: Any, reqs: Sequence[EditRequest], results: list[dict], batch_size: int,
                 tokens: int) -> None:
    f = M.fluency(model, tokenizer, [r.prompt for r in reqs], tokens, batch_size=batch_size)
    for res, v in zip(results, f["per_prompt"]):
        res["fluency"] = {"ngram_entropy": v}
        res.setdefault("metric_meta", {})["fluency.ngram_entropy"] = M.FLUENCY


def headline(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per protocol label: pre/post reliability, generality, locality and their harmonic mean.

    Example::

        headline(report.summary)["teacher_forced/easyedit"]["post"]["hm"]
    """
    out: dict[str, dict[str, Any]] = {}
    post, pre = summary.get("post", {}), summary.get("pre", {})
    nan = float("nan")
    for label, keys in HEADLINE_METRICS.items():
        if keys[0] not in post:
            continue
        entry: dict[str, Any] = {"protocol": label, "definition": _HEADLINE_HELP[label],
                                 "metrics": dict(zip(("reliability", "generality", "locality"), keys))}
        for side, means in (("pre", pre), ("post", post)):
            vals = {role: means.get(key, nan) for role, key in zip(("reliability", "generality", "locality"), keys)}
            if side == "pre" and keys[2] in _AGREEMENT_KEYS:
                # agreement with the unedited model: 1 by definition before the edit
                vals["locality"] = 1.0 if keys[2] in post else nan
            vals["hm"] = M.harmonic_mean(*vals.values())
            entry[side] = vals
        out[label] = entry
    return out


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table of the headline metrics (one block per protocol).

    Example::

        print(format_table(report.summary))
    """
    head = summary.get("headline") or headline(summary)
    rows = [("protocol", "metric", "key", "pre", "post")]
    order = [label for label in head if label not in SECONDARY] + [label for label in head if label in SECONDARY]
    meta = summary.get("metric_meta", {})
    extras = [k for k in EXTRA_METRICS if k in summary.get("post", {})]
    for label in order:
        entry = head[label]
        shown = label + (" (secondary)" if label in SECONDARY else "")
        for role in ("reliability", "generality", "locality", "hm"):
            key = entry["metrics"].get(role, "harmonic mean")
            rows.append((shown, role, key, _fmt(entry["pre"].get(role)), _fmt(entry["post"].get(role))))
        if label not in SECONDARY:  # the strict protocols' extra rows follow their block
            for k in [k for k in extras if meta.get(k) == label]:
                rows.append((shown, "extra", k, _fmt(summary.get("pre", {}).get(k)), _fmt(summary["post"][k])))
    for k in [k for k in extras if meta.get(k) not in order or meta.get(k) in SECONDARY]:
        rows.append((meta.get(k, "?"), "extra", k, _fmt(summary.get("pre", {}).get(k)), _fmt(summary["post"][k])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n = summary.get("n_cases")
    return (f"{n} cases\n" if n is not None else "") + "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):.3f}"


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    s = M.summarize(records)
    s["headline"] = headline(s)
    return s
