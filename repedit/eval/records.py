"""EasyEdit-style per-case records from pre/post results, their summary (headline metrics
first, then the harmonic mean of reliability, generality and locality), and the metadata
saved with them (protocol labels, versions, data provenance).

Example::

    records = build_case_records(requests, pre, post)
    summarize(records)["headline"]
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from repedit.eval.model_utils import PROBABILITY, PROTOCOLS, TEACHER_FORCED, _mean
from repedit.hashing import file_sha256
from repedit.requests import EditRequest

__all__ = ["locality_agreement", "case_record", "build_case_records", "harmonic_mean", "summarize", "results_metadata"]


def locality_agreement(pre: Sequence[Sequence[int]], post: Sequence[Sequence[int]]) -> list[float]:
    """Per prompt, the fraction of positions whose argmax token is unchanged (EasyEdit locality).

    Example::

        locality_agreement([[1, 2, 3]], [[1, 5, 3]])  # [0.666...]
    """
    if len(pre) != len(post):
        raise ValueError(f"{len(pre)} pre-edit outputs but {len(post)} post-edit outputs")
    out = []
    for k, (a, b) in enumerate(zip(pre, post)):
        if len(a) != len(b):
            raise ValueError(f"locality output {k}: {len(a)} pre-edit tokens but {len(b)} post-edit tokens")
        out.append(sum(int(x == y) for x, y in zip(a, b)) / len(a) if len(a) else float("nan"))
    return out


_AGREEMENTS = (("neighborhood_output", "neighborhood_acc"), ("subject_output", "subject_acc"),
               ("neighborhood_text", "neighborhood_text_agreement"), ("subject_text", "subject_text_agreement"))


def _add_agreement(pre: Mapping[str, Any], post: dict[str, Any]) -> None:
    """Fill ``post``'s agreement with the unedited outputs in ``pre``: argmax tokens
    (:func:`locality_agreement`: neighbourhood and subject locality) and greedy text (1.0 where
    the text is unchanged)."""
    for key, out in _AGREEMENTS:
        if key in pre and key in post:
            if key.endswith("_text"):
                post[out] = [float(a == b) for a, b in zip(pre[key], post[key])]
            else:
                post[out] = locality_agreement(pre[key], post[key])


# ============================================================================ records and summaries
def case_record(
    request: EditRequest,
    pre: Mapping[str, Any],
    post: Mapping[str, Any],
    *,
    keep_outputs: bool = False,
) -> dict[str, Any]:
    """EasyEdit's per-case record ``{"pre", "post", "case_id", "requested_rewrite"}``.

    Fills ``post.locality.neighborhood_acc`` (pre/post argmax agreement) and, with the
    generation protocol, ``post.generation.neighborhood_text_agreement``. Token outputs
    (``*_output``) are dropped unless ``keep_outputs``.

    Example::

        rec = case_record(req, pre[0], post[0])
        rec["post"]["locality"]["neighborhood_acc"]
    """
    import copy

    pre_d = copy.deepcopy(dict(pre))
    post_d = copy.deepcopy(dict(post))
    pre_loc = pre_d.get("locality", {})
    post_loc = post_d.get("locality", {})
    _add_agreement(pre_loc, post_loc)
    _add_agreement(pre_d.get("generation", {}), post_d.get("generation", {}))
    if not keep_outputs:
        for d in (pre_loc, post_loc):
            for k in [k for k in d if k.endswith("_output")]:
                del d[k]
    return {
        "pre": pre_d,
        "post": post_d,
        "case_id": request.case_id,
        "requested_rewrite": request.to_dict(),
    }


def build_case_records(
    requests: Sequence[EditRequest],
    pre: Sequence[Mapping[str, Any]],
    post: Sequence[Mapping[str, Any]],
    *,
    keep_outputs: bool = False,
) -> list[dict[str, Any]]:
    """:func:`case_record` for every request.

    Example::

        records = build_case_records(requests, pre, post)
    """
    if not (len(requests) == len(pre) == len(post)):
        raise ValueError(f"{len(requests)} requests, {len(pre)} pre results, {len(post)} post results")
    return [case_record(q, a, b, keep_outputs=keep_outputs) for q, a, b in zip(requests, pre, post)]


def harmonic_mean(*values: float) -> float:
    """Harmonic mean; 0 when any value is 0, NaN when any is NaN or none given.

    Example::

        harmonic_mean(1.0, 0.5, 1.0)  # 0.75
    """
    vals = [float(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        return float("nan")
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def _flat_means(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per-record mean of each list metric, then the mean over records that have it."""
    acc: dict[str, list[float]] = {}

    def add(key: str, value: Any) -> None:
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            if not math.isnan(float(value)):
                acc.setdefault(key, []).append(float(value))
        elif isinstance(value, list) and value and all(isinstance(v, (int, float, bool)) for v in value):
            m = _mean(value)
            if not math.isnan(m):
                acc.setdefault(key, []).append(m)

    for res in results:
        for key in ("rewrite_acc", "rephrase_acc"):
            if key in res:
                add(key, res[key])
        for group in ("locality", "portability", "generation"):
            for k, v in res.get(group, {}).items():
                if not k.endswith(("_output", "_text")):
                    add(f"{group}.{k}", v)
        for k, v in res.get("rome", {}).items():
            if k.endswith(("_success", "_diff")):
                add(f"rome.{k}", v)
    return {k: _mean(v) for k, v in sorted(acc.items())}


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over cases for ``pre`` and ``post``, plus harmonic-mean scores and protocol labels.

    ``hm["teacher_forced/easyedit"]`` = HM(post rewrite_acc, rephrase_acc, neighborhood_acc)
    (reliability, generality, locality); ``hm["probability/rome"]`` = ROME's ``score``,
    HM(efficacy, paraphrase, neighbourhood success). Also accepts plain result dicts
    (from :func:`evaluate_requests`), which are summarised as ``post``.

    Example::

        summarize(build_case_records(requests, pre, post))["hm"]
    """
    if records and "post" not in records[0]:
        records = [{"post": r} for r in records]
    out: dict[str, Any] = {"n_cases": len(records)}
    meta: dict[str, str] = {}
    for r in records:
        meta.update(r.get("post", {}).get("metric_meta", {}))
    for side in ("pre", "post"):
        rs = [r[side] for r in records if side in r]
        if rs:
            out[side] = _flat_means(rs)
    post = out.get("post", {})
    nan = float("nan")
    out["hm"] = {}
    if "rewrite_acc" in post:
        out["hm"][TEACHER_FORCED] = harmonic_mean(
            post.get("rewrite_acc", nan), post.get("rephrase_acc", nan), post.get("locality.neighborhood_acc", nan)
        )
    if "rome.efficacy_success" in post:
        out["hm"][PROBABILITY] = harmonic_mean(
            post.get("rome.efficacy_success", nan),
            post.get("rome.paraphrase_success", nan),
            post.get("rome.neighborhood_success", nan),
        )
    out["metric_meta"] = meta
    return out


# ============================================================================ metadata
def results_metadata(
    protocols: Sequence[str] | str,
    *,
    model: Mapping[str, Any] | str | None = None,
    data: Any = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Metadata to store next to results: protocols, model, data file + sha256, seed, version.

    ``model`` is a dict (e.g. ``{"name": ..., "fingerprint": ...}``) or a name. ``data`` is a
    loader Dataset (its recorded info is used, including the zsRE target convention) or a
    file path (hashed here).

    Example::

        results_metadata(["teacher_forced"], model={"name": "smollm2-135m", "fingerprint": "ab12"},
                         data=ds, seed=0)
    """
    from repedit.version import __version__

    if isinstance(protocols, str):
        protocols = [protocols]
    labels = [PROTOCOLS.get(p, p) for p in protocols]
    meta: dict[str, Any] = {"protocols": labels, "repedit_version": __version__, "seed": seed}
    if isinstance(model, str):
        meta["model"] = {"name": model}
    elif model is not None:
        meta["model"] = dict(model)
    if data is not None:
        if isinstance(data, (str, os.PathLike)):
            p = Path(data)
            meta["data"] = {"path": str(p.resolve()), "sha256": file_sha256(p)}
        else:
            from repedit.eval.data import data_info

            meta["data"] = data_info(data)
    meta["torch_version"] = torch.__version__
    try:
        import transformers

        meta["transformers_version"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if extra:
        meta.update(extra)
    return meta
