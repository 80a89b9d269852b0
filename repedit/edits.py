"""Managing individual edits, for any method whose edits own their parameters (BaFT, codebook),
through the method contract (``list_edits``, ``delete_edit``, ``explain_edits``,
``merge_edits`` of :class:`~repedit.methods.base.Intervention`).

Example::

    from repedit import edits
    edits.list_edits(edited)                         # one dict per edit, with "name" and "method"
    edits.explain(edited, "The Eiffel Tower is in")  # which edits fire, how strongly, on which token
    edits.delete_edit(edited, 1)                     # its outputs go back to the unedited model's
    edits.merge_adapters(model, "edits-a", "edits-b", "edits-ab")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from repedit.adapters import AdapterError, read_adapter_config
from repedit.adapters.format import _check_fingerprint
from repedit.adapters.load import read_modules
from repedit.hooks import EditableModel
from repedit.methods.base import Intervention

logger = logging.getLogger(__name__)

__all__ = ["list_edits", "delete_edit", "explain", "merge_adapters", "list_adapter_edits", "holds_edits"]


def holds_edits(module: Intervention) -> bool:
    """Whether ``module`` keeps per-edit structure (its ``list_edits`` works)."""
    try:
        module.list_edits()
    except NotImplementedError:
        return False
    return True


def _managed(edited: EditableModel, name: str | None) -> list[Any]:
    """The attachment named ``name``, else every attachment whose module holds edits."""
    if name is not None:
        return [edited.get(name)]  # a KeyError lists the attached names
    atts = [a for a in edited.attachments() if holds_edits(a.module)]
    if not atts:
        have = ", ".join(f"{a.name} ({a.method})" for a in edited.attachments()) or "none"
        raise ValueError(f"no attached intervention keeps per-edit structure (baft, codebook); attached: {have}")
    return atts


def _tagged(att: Any, rows: list[dict]) -> list[dict]:
    return [{"name": att.name, "method": att.method, **r} for r in rows]


def list_edits(edited: EditableModel | Intervention, name: str | None = None) -> list[dict]:
    """One dict per edit of the intervention ``name`` (default: of every intervention that
    holds edits), each with ``name``, ``method``, ``index`` and the method's statistics.

    Example::

        [(e["index"], e["prompt"]) for e in list_edits(edited)]
    """
    if isinstance(edited, Intervention):
        return edited.list_edits()
    return [row for att in _managed(edited, name) for row in _tagged(att, att.module.list_edits())]


def delete_edit(edited: EditableModel | Intervention, index: int, name: str | None = None) -> dict:
    """Remove edit ``index`` of the intervention ``name`` (which may be left out when one
    intervention holds edits); returns its :func:`list_edits` dict.

    Example::

        delete_edit(edited, 1, name="baft_L9")
    """
    if isinstance(edited, Intervention):
        return edited.delete_edit(index)
    atts = _managed(edited, name)
    if len(atts) > 1:
        raise ValueError(f"several interventions hold edits ({', '.join(a.name for a in atts)}): name one")
    (att,) = atts
    return _tagged(att, [att.module.delete_edit(index)])[0]


@torch.no_grad()
def explain(edited: EditableModel, prompt: str, subject: str | None = None, threshold: float = 0.5,
            name: str | None = None, all_edits: bool = False) -> list[dict]:
    """Which edits act on ``prompt``, strongest first: per edit its ``score`` (BaFT: the
    largest gate weight over the prompt's tokens; codebook: effective radius − distance of
    the nearest entry), the ``token`` (position and text) and its metadata. Only the edits
    that fire (BaFT: score ≥ ``threshold``) unless ``all_edits``.

    Example::

        explain(edited, "The mother tongue of Danielle Darrieux is")[0]["target_new"]   # 'English'
    """
    from repedit.positions import encode

    if edited.tokenizer is None:
        raise ValueError("explain needs a tokenizer: wrap(model, tokenizer)")
    batch = encode(edited.tokenizer, [prompt], subjects=[subject] if subject else None)
    batch = batch.to(next(edited.model.parameters()).device)
    tokens = edited.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())
    out = []
    for att in _managed(edited, name):
        h, mask, ctx = edited.capture(att.layer, att.component, batch, before=att.name, edited=True, with_context=True)
        for row in _tagged(att, att.module.explain_edits(h, mask, ctx, threshold)):
            row["token_text"] = tokens[row["token"]] if row.get("token") is not None else None
            if all_edits or row["fired"]:
                out.append(row)
    return sorted(out, key=lambda r: (not r["fired"], -(r["score"] if r["score"] is not None else -float("inf"))))


def list_adapter_edits(directory: str | os.PathLike, name: str | None = None) -> list[dict]:
    """:func:`list_edits` of a saved adapter, read from its files (no model).

    Example::

        list_adapter_edits("my-edit")[0]["prompt"]
    """
    _, modules = read_modules(directory)
    names = [rec["name"] for rec, _ in modules]
    if name is not None and name not in names:
        raise KeyError(f"no intervention named {name!r} in {directory}; it holds: {names}")
    rows = [[{"name": rec["name"], "method": rec["method"], **r} for r in m.list_edits()]
            for rec, m in modules if (rec["name"] == name if name else holds_edits(m))]
    if not rows and name is None:
        have = ", ".join(f"{rec['name']} ({rec['method']})" for rec, _ in modules)
        raise ValueError(f"no intervention of {directory} keeps per-edit structure (baft, codebook); it holds: {have}")
    return [r for part in rows for r in part]


def _merge_module(name: str, a: Any, b: Any) -> Intervention:
    site_a = (a[0]["layer"], a[0]["component"], a[0]["positions"])
    site_b = (b[0]["layer"], b[0]["component"], b[0]["positions"])
    if site_a != site_b:
        raise ValueError(f"cannot merge {name!r}: it sits at {site_a} in one adapter and at {site_b} in the other")
    if a[0]["method"] != b[0]["method"]:
        raise ValueError(f"cannot merge {name!r}: a {a[0]['method']} and a {b[0]['method']}")
    try:
        return a[1].merge_edits(b[1])
    except NotImplementedError as err:
        raise ValueError(f"cannot merge {name!r}: {err}") from None
    except ValueError as err:
        raise ValueError(f"cannot merge {name!r}: {err}") from None


def merge_adapters(model: Any, dir_a: str, dir_b: str, out_dir: str, tokenizer: Any = None) -> Path:
    """Merge two saved adapters of the same base model into a new adapter directory.

    Interventions with the same name (same site and method) are merged edit-wise through
    ``merge_edits`` (BaFT: bases concatenated; codebook: entries, repeats replaced by ``dir_b``'s);
    the others are copied, ``dir_a``'s first. Everything is checked before ``out_dir`` is
    written (atomically); an incompatible pair is a ValueError naming the setting.

    Example::

        merge_adapters(model, "edits-a", "edits-b", "edits-ab")
    """
    cfg_a, cfg_b = read_adapter_config(dir_a), read_adapter_config(dir_b)
    if (cfg_a.fingerprint or {}).get("weights_sha256") != (cfg_b.fingerprint or {}).get("weights_sha256"):
        raise ValueError(f"cannot merge adapters made for different base models ({dir_a}: "
                         f"{cfg_a.base_model_name_or_path}, {dir_b}: {cfg_b.base_model_name_or_path})")
    mismatch = _check_fingerprint(cfg_a.fingerprint, model, Path(dir_a))
    if mismatch:
        raise AdapterError(f"the adapters were made for another base model than the one given ({'; '.join(mismatch)})")
    _, mods_a = read_modules(dir_a)
    _, mods_b = read_modules(dir_b)
    by_b = {rec["name"]: (rec, m) for rec, m in mods_b}
    out = []
    for rec, module in mods_a:
        if rec["name"] in by_b:
            module = _merge_module(rec["name"], (rec, module), by_b[rec["name"]])
        out.append((rec, module))
    names_a = {rec["name"] for rec, _ in mods_a}
    out += [(rec, m) for rec, m in mods_b if rec["name"] not in names_a]
    merged = EditableModel(model, tokenizer, layers_path=cfg_a.layers_path, compute_dtype=cfg_a.compute_dtype)
    try:
        for rec, module in out:
            merged.add(rec["name"], module, layer=rec["layer"], component=rec["component"], positions=rec["positions"])
            merged.get(rec["name"]).active = rec["active"]
        merged.save_pretrained(str(out_dir), metadata={"merged_from": [str(Path(dir_a).resolve()),
                                                                      str(Path(dir_b).resolve())]})
    finally:
        merged.unwrap()
    logger.info("merged %s and %s into %s", dir_a, dir_b, out_dir)
    return Path(out_dir)
