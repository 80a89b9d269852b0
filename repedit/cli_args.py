"""What ``repedit``'s subcommands share: the error type, output helpers, argument parsing
(numbers, JSON options), the model, adapter and data a command reads, and the checks made
before a model loads.

Example::

    spec = _data_spec(args)              # from --data/--limit/... or the adapter's record
    ds, recorded = _load_data(spec)      # a Dataset and what to store in the adapter
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from repedit.cli_parser import DATA_NAMES

logger = logging.getLogger(__name__)


class CLIError(Exception):
    """An error in the user's arguments or files: printed as one line, no traceback."""


# ============================================================================ helpers


def _is_main() -> bool:
    from repedit.eval.distributed import is_main_process

    return is_main_process()


def _say(msg: str = "") -> None:
    if _is_main():
        print(msg, flush=True)


def _note(msg: str) -> None:
    if _is_main():
        print(msg, file=sys.stderr, flush=True)


def _parse_csv_numbers(text: str, kind: type, what: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{what} must be a comma list of {kind.__name__}s, got {text!r}") from None


def _json_arg(text: str | None, what: str) -> dict:
    if text is None:
        return {}
    src = text
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise CLIError(f"{what}: file not found: {path}")
        src = path.read_text(encoding="utf-8")
    try:
        value = json.loads(src)
    except json.JSONDecodeError as e:
        raise CLIError(f"{what} is not valid JSON ({e.msg} at column {e.colno}): {text!r}") from None
    if not isinstance(value, dict):
        raise CLIError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _sniff_format(path: Path) -> str:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        head = f.read(65536)
    if '"rephrase_prompt"' in head and '"locality_prompt"' in head:
        return "counterfact"
    if '"src"' in head and '"alt"' in head and '"loc"' in head:
        return "zsre"
    return "requests"


def _data_spec(args: argparse.Namespace, adapter_cfg: Any = None) -> dict[str, Any]:
    """What to load: from the command line, else from the adapter's recorded training data."""
    spec = {"data": args.data, "format": args.data_format, "limit": args.limit, "offset": args.offset,
            "seed": args.data_seed, "zsre_target": args.zsre_target, "skip_invalid": getattr(args, "skip_invalid", None)}
    if spec["data"] is None and adapter_cfg is not None:
        recorded = (getattr(adapter_cfg, "metadata", None) or {}).get("data")
        if recorded and recorded.get("inline_requests"):
            spec.update(data="<inline>", requests=recorded["inline_requests"])
            _note("data: the adapter's own request(s)")
        elif recorded and recorded.get("data"):
            for k in ("data", "format", "limit", "offset", "seed", "zsre_target", "skip_invalid"):
                if spec.get(k) in (None, "auto") and recorded.get(k) is not None:
                    spec[k] = recorded[k]
            _note("data: the adapter's training requests (" + ", ".join(
                f"{k}={spec[k]}" for k in ("data", "limit", "offset", "seed", "zsre_target") if spec.get(k) is not None) + ")")
            spec["expect_sha256"] = recorded.get("sha256")
    if spec["data"] is None:
        raise CLIError("--data is required (counterfact, zsre or a path to a requests file)")
    return spec


def _load_data(spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(Dataset, what to record in the adapter) for a data spec."""
    from repedit.eval import data as D
    from repedit.eval.data import data_info

    if spec.get("requests") is not None:
        from repedit.requests import EditRequest

        reqs = [EditRequest.from_dict(r, index=i) for i, r in enumerate(spec["requests"])]
        return D.requests_to_dataset(reqs, info={"source": "inline"}), {"inline_requests": [r.to_dict() for r in reqs]}
    name, fmt = spec["data"], spec.get("format") or "auto"
    kw = dict(limit=spec.get("limit"), offset=spec.get("offset") or 0, seed=spec.get("seed"),
              skip_invalid=bool(spec.get("skip_invalid")))
    for key in ("limit", "offset"):
        if kw[key] is not None and kw[key] < 0:
            raise CLIError(f"--{key} must be >= 0, got {kw[key]}")
    target = spec.get("zsre_target") or "alt"
    if name in DATA_NAMES and fmt in ("auto", name):
        path, fmt = None, name
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise CLIError(f"--data {name}: no such file (use counterfact, zsre or a path to a JSON/JSONL file)")
        if path.is_dir() and fmt in ("auto", "requests"):
            raise CLIError(f"--data {name} is a directory; give a requests, CounterFact or zsRE file "
                           "(or a data directory with --format counterfact or zsre)")
        if fmt == "auto":
            fmt = _sniff_format(path) if path.is_file() else "requests"
    if spec.get("zsre_target") and fmt != "zsre":
        raise CLIError("--zsre-target applies to zsRE data only")
    if fmt == "counterfact":
        ds = D.load_counterfact(path, **kw)
    elif fmt == "zsre":
        ds = D.load_zsre(path, target=target, **kw)
    else:
        ds = D.load_requests(path, **kw)
    if len(ds) == 0:
        raise CLIError(f"--data {name}: no records selected (limit/offset?)")
    info = data_info(ds)
    expect = spec.get("expect_sha256")
    if expect and info.get("sha256") and expect != info["sha256"]:
        logger.warning("the data file changed since the adapter was trained (sha256 %s..., now %s...)",
                       expect[:12], info["sha256"][:12])
    recorded = {"data": name if path is None else str(path.resolve()), "format": fmt, "limit": kw["limit"],
                "offset": kw["offset"], "seed": kw["seed"], "zsre_target": target if fmt == "zsre" else None,
                "sha256": info.get("sha256"), "rows": len(ds)}
    if kw["skip_invalid"]:
        recorded["skip_invalid"] = True
    return ds, recorded


def _model_dims(args: argparse.Namespace) -> tuple[int, int] | None:
    """(decoder layers, hidden size) from the config of a known or local model, read without
    its weights; None for a hub id or a config that cannot be read (the load reports it)."""
    from repedit import models

    name = args.model or models.DEFAULT_MODEL
    try:
        path = models.cached_model_dir(name) if name in models.KNOWN_MODELS else Path(name).expanduser()
        if not (Path(path) / "config.json").is_file():
            return None
        from transformers import AutoConfig

        mcfg = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, ImportError, KeyError):
        return None
    text = getattr(mcfg, "text_config", None) or mcfg
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    return (int(layers), int(hidden)) if layers and hidden else None


def _check_against_model_size(args: argparse.Namespace, cfg: Any) -> None:
    """--layers and the method's options (e.g. rank) against the model's size, before it loads."""
    dims = _model_dims(args)
    if dims is None:
        return
    n, hidden = dims
    for layer in cfg.layers or []:
        if not -n <= layer < n:
            raise CLIError(f"--layers: {layer} is not a decoder layer of the model (it has {n}: 0..{n - 1})")
    from repedit.methods import build

    try:
        build(cfg.method, dict(cfg.method_config), hidden)
    except (TypeError, ValueError) as err:
        raise CLIError(f"--method-config: {err} (the model's hidden size is {hidden})") from None


def _check_checkpoint_args(args: argparse.Namespace) -> None:
    if args.checkpoint_every is None and not args.resume:
        return
    if not args.sequential:
        raise CLIError("--checkpoint-every/--resume need --sequential")
    if args.evaluate != "none":
        raise CLIError("--checkpoint-every/--resume do not combine with --evaluate; score the adapter with `repedit eval`")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise CLIError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")


def _device(args: argparse.Namespace) -> Any:
    import torch

    from repedit.eval.distributed import launched, local_device

    if args.device:
        return args.device
    if launched():
        return local_device()
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_model(args: argparse.Namespace, adapter_cfg: Any = None) -> tuple[Any, Any, str]:
    import torch

    from repedit import models

    name = args.model
    if name is None:
        base = getattr(adapter_cfg, "base_model_name_or_path", None)
        if base and (base in models.KNOWN_MODELS or Path(base).exists()):
            name = base
            _note(f"model: {name} (the adapter's base model)")
        else:
            name = models.DEFAULT_MODEL
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).parent.exists()
    if name not in models.KNOWN_MODELS and looks_local and not Path(name).expanduser().exists():
        raise CLIError(f"--model {name}: no such directory (known aliases: {', '.join(sorted(models.KNOWN_MODELS))})")
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model, tok = models.load(name, dtype=dtype, device=_device(args))
    logger.info("loaded %s in %.1f s", name, time.perf_counter() - t0)
    return model, tok, name


def _read_adapter_cfg(directory: str) -> Any:
    from repedit.adapters import read_adapter_config

    return read_adapter_config(directory)


def _load_adapter(model: Any, tok: Any, directory: str, ignore_fingerprint: bool) -> Any:
    import warnings

    from repedit.hooks import EditableModel

    with warnings.catch_warnings():
        if not ignore_fingerprint:
            warnings.simplefilter("default")
        return EditableModel.from_pretrained(model, directory, tokenizer=tok, ignore_fingerprint=ignore_fingerprint)


def _protocols(text: str) -> tuple[str, ...]:
    from repedit.eval.harness import _check_protocols

    return _check_protocols(text)


# ============================================================================ commands
