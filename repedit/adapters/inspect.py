"""A summary of a saved adapter directory without loading a model (``repedit inspect``).

Example::

    info = inspect_adapter("cf10")
    print(format_inspect(info))
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

from repedit.adapters.format import CONFIG_NAME, WEIGHTS_NAME, AdapterError, find_weights, read_adapter_config

__all__ = ["inspect_adapter", "format_inspect"]


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def inspect_adapter(directory: str | os.PathLike, max_entries: int = 10) -> dict[str, Any]:
    """A JSON-friendly summary of an adapter directory (and its named sub-adapters); no model.

    Example::

        inspect_adapter("cf10")["interventions"][0]["parameters"]
    """
    base = Path(directory)
    if not base.is_dir():
        raise AdapterError(f"adapter directory {base} does not exist")
    subs = sorted(p.name for p in base.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())
    has_default = (base / CONFIG_NAME).is_file()
    if not has_default and not subs:
        raise AdapterError(f"{base} holds no adapter ({CONFIG_NAME} not found)")
    out: dict[str, Any] = {"directory": str(base.resolve()), "adapters": []}
    for name in (["default"] if has_default else []) + subs:
        cfg = read_adapter_config(base, None if name == "default" else name)
        where = base if name == "default" else base / name
        found = find_weights(where, cfg.tensors_sha256)  # the pending file if a save was interrupted
        weights = found or where / WEIGHTS_NAME
        shapes: dict[str, tuple[list[int], str]] = {}
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="numpy") as f:
                for k in f.keys():
                    sl = f.get_slice(k)
                    shapes[k] = (list(sl.get_shape()), str(sl.get_dtype()))
        except Exception as err:  # an unreadable file is reported, not fatal
            raise AdapterError(f"{weights} is not a readable safetensors file: {err}") from None
        sha_ok = found is not None
        ints = []
        for rec in cfg.interventions:
            iname = rec.get("name")
            own = {k[len(iname) + 1 :]: v for k, v in shapes.items() if k.startswith(f"{iname}.")}
            numel = sum(_prod(s) for s, _ in own.values())
            nbytes = sum(_prod(s) * _DTYPE_BYTES.get(d, 4) for s, d in own.values())
            mcfg = dict(rec.get("config") or {})
            entries = mcfg.pop("entries", None)
            edits = mcfg.pop("edits", None)  # BaFT's per-edit records (`repedit edits list` shows them)
            info: dict[str, Any] = {
                "name": iname, "method": rec.get("method"), "layer": rec.get("layer"),
                "component": rec.get("component"), "positions": rec.get("positions"), "active": rec.get("active", True),
                "parameters": numel, "bytes": nbytes,
                "tensors": {k: {"shape": s, "dtype": d} for k, (s, d) in sorted(own.items())},
                "config": {k: v for k, v in mcfg.items() if not (isinstance(v, (list, dict)) and len(json.dumps(v)) > 200)},
            }
            if isinstance(entries, list):
                info["n_entries"] = len(entries)
                info["entries"] = [_entry_summary(e) for e in entries[:max_entries]]
            if isinstance(edits, list):
                info["n_edits"] = len(edits)
            for key in ("n_entries", "num_bases"):
                if key in mcfg and key not in info:
                    info[key] = mcfg[key]
            ints.append(info)
        out["adapters"].append({
            "adapter": name, "format_version": cfg.format_version, "repedit_version": cfg.repedit_version,
            "base_model": cfg.base_model_name_or_path, "revision": cfg.revision, "fingerprint": cfg.fingerprint,
            "compute_dtype": cfg.compute_dtype, "weights_file": str(weights), "weights_bytes": weights.stat().st_size,
            "tensors_sha256_ok": sha_ok, "interventions": ints, "metadata": cfg.metadata,
        })
    return out


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _entry_summary(e: Any) -> Any:
    if not isinstance(e, dict):
        return e
    keep = ("prompt", "target_new", "target", "subject", "case_id", "radius")
    short = {k: e[k] for k in keep if k in e}
    return short or {k: v for k, v in list(e.items())[:5]}


def format_inspect(info: dict[str, Any]) -> str:
    """The text ``repedit inspect`` prints for :func:`inspect_adapter`'s summary."""
    lines = [f"adapter directory: {info['directory']}"]
    for ad in info["adapters"]:
        fp = ad.get("fingerprint") or {}
        lines.append("")
        lines.append(f"[{ad['adapter']}] format {ad['format_version']}, made by repedit {ad['repedit_version']}")
        lines.append(f"  base model: {ad['base_model']} ({fp.get('architecture')}, {fp.get('num_layers')} layers, "
                     f"hidden {fp.get('hidden_size')}, weights sha256 {str(fp.get('weights_sha256'))[:12]}...)")
        ok = "sha256 ok" if ad["tensors_sha256_ok"] else "SHA256 MISMATCH"
        total = sum(i["parameters"] for i in ad["interventions"])
        lines.append(f"  weights: {_human_bytes(ad['weights_bytes'])} ({total:,} parameters, {ok}); "
                     f"compute dtype {ad['compute_dtype']}")
        lines.append(f"  interventions: {len(ad['interventions'])}")
        for i in ad["interventions"]:
            extra = ""
            if "n_entries" in i:
                extra += f", {i['n_entries']} entries"
            if "num_bases" in i:
                extra += f", {i['num_bases']} frozen bases"
            if "n_edits" in i:
                extra += f", {i['n_edits']} recorded edits"
            lines.append(f"    {i['name']}: {i['method']} @ layer {i['layer']} {i['component']} [{i['positions']}]"
                         f"{'' if i['active'] else ' (inactive)'}, {i['parameters']:,} parameters "
                         f"({_human_bytes(i['bytes'])}){extra}")
            cfg = ", ".join(f"{k}={v}" for k, v in sorted(i["config"].items()))
            lines.append("      config: " + textwrap.shorten(cfg, 160, placeholder=" ..."))
            for k, e in enumerate(i.get("entries", [])):
                if isinstance(e, dict) and "prompt" in e:
                    tgt = e.get("target_new", e.get("target", "?"))
                    lines.append(f"      entry {k}: {e['prompt']!r} -> {tgt!r}")
                else:
                    lines.append(f"      entry {k}: {e}")
            if "entries" in i and i.get("n_entries", 0) > len(i["entries"]):
                lines.append(f"      ... {i['n_entries'] - len(i['entries'])} more")
        meta = ad.get("metadata") or {}
        if meta:
            d, e, o = meta.get("data") or {}, meta.get("editor") or {}, meta.get("outcome") or {}
            if d.get("inline_requests"):
                src = f"{len(d['inline_requests'])} inline request(s)"
            else:
                src = ", ".join(f"{k}={d[k]}" for k in ("data", "limit", "offset", "seed", "zsre_target") if d.get(k) is not None)
            lines.append(f"  trained on: {src or '?'}")
            if e:
                lines.append(f"  editor: method={e.get('method')} layers={e.get('layers')} positions={e.get('positions')} "
                             f"lr={e.get('lr')} max_steps={e.get('max_steps')} seed={e.get('seed')} "
                             f"sequential={meta.get('sequential')}")
            if o:
                lines.append("  outcome: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.items()))
    return "\n".join(lines)
