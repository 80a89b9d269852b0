"""The adapter format: names, the config dataclass, the model fingerprint, and reading and
checking a saved adapter directory (no model, no hooks).

Example::

    cfg = read_adapter_config("my-edit")
    cfg.interventions[0]["method"]      # 'baft'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from repedit.arch import COMPONENTS
from repedit.hashing import file_sha256 as _file_sha256
from repedit.positions import Positions
from repedit.version import __version__

__all__ = ["FORMAT_VERSION", "CONFIG_NAME", "WEIGHTS_NAME", "COMPUTE_DTYPES", "AdapterError", "AdapterConfig",
           "check_name", "fingerprint", "adapter_dir", "find_weights", "read_adapter_config"]

#: How interventions compute: ``"float32"`` (default) casts the hidden state to float32,
#: computes the edit, and casts the result back to the model's dtype; ``"model"`` keeps the
#: intervention parameters and the computation in the model's dtype.
COMPUTE_DTYPES = ("float32", "model")


def check_name(name: Any, what: str = "intervention") -> str:
    """Check an intervention or adapter name: a non-empty string without '.', '/' or '\\'
    (names become tensor-key prefixes and folder names, so they must not hold a path).

    Example::

        check_name("fact")                 # "fact"
        check_name("../x", "adapter")      # ValueError
    """
    if not isinstance(name, str) or not name or any(c in name for c in "./\\"):
        raise ValueError(f"{what} names are non-empty strings without '.', '/' or '\\', got {name!r}")
    return name


FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class AdapterError(ValueError):
    """An adapter directory that cannot be loaded onto this model; nothing was changed."""


@dataclass
class AdapterConfig:
    """Everything needed to rebuild an adapter's interventions on a base model."""

    format_version: int = FORMAT_VERSION
    repedit_version: str = __version__
    adapter_name: str = "default"
    base_model_name_or_path: str | None = None
    revision: str | None = None
    fingerprint: dict = field(default_factory=dict)
    compute_dtype: str = "float32"
    layers_path: str | None = None
    interventions: list = field(default_factory=list)
    tensors_sha256: str = ""
    metadata: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, indent=2)


def _param_digest(t: torch.Tensor, n: int = 65536) -> bytes:
    # Hash through bfloat16 so an fp32 model and its bf16 copy share a fingerprint.
    flat = t.detach().reshape(-1)[:n].to(torch.bfloat16).to(torch.float32).cpu()
    return flat.numpy().tobytes()


def fingerprint(model: torch.nn.Module) -> dict:
    """Architecture, hidden size, layer count, vocab size and a hash of a few weight tensors.

    Example::

        fp = fingerprint(model)   # {"architecture": "LlamaForCausalLM", ..., "weights_sha256": "..."}
    """
    from repedit.arch import resolve_layout

    cfg = getattr(model, "config", None)
    text = getattr(cfg, "text_config", None) or cfg
    archs = getattr(cfg, "architectures", None) or [type(model).__name__]
    layout = resolve_layout(model)
    layers = layout.layer_list(model)
    h = hashlib.sha256()
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        h.update(_param_digest(emb.weight))
    for layer in (layers[0], layers[-1]):
        p = next(layer.parameters(), None)
        if p is not None:
            h.update(_param_digest(p))
    return {
        "architecture": archs[0],
        "model_type": getattr(cfg, "model_type", None),
        "hidden_size": getattr(text, "hidden_size", None) or getattr(text, "n_embd", None),
        "num_layers": len(layers),
        "vocab_size": getattr(text, "vocab_size", None),
        "weights_sha256": h.hexdigest(),
    }


def adapter_dir(directory: str | os.PathLike, adapter: str | None) -> Path:
    """Where adapter ``adapter`` lives inside ``directory`` (``default`` at the top).

    Adapter names are checked like intervention names, so no name reaches outside
    ``directory``; a bad one raises :class:`AdapterError`.

    Example::

        adapter_dir("out", "second")   # Path("out/second")
    """
    base = Path(directory)
    if adapter in (None, "default"):
        return base
    try:
        check_name(adapter, "adapter")
    except ValueError as err:
        raise AdapterError(str(err)) from None
    return base / adapter


def _pending(where: Path, sha: str) -> Path:
    """The new tensors of a save, beside the old ones until the save finishes."""
    return where / f".{WEIGHTS_NAME}.{sha}.pending"


def _recorded_sha(where: Path) -> str | None:
    try:
        sha = json.loads((where / CONFIG_NAME).read_text()).get("tensors_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return sha if isinstance(sha, str) and _SHA256.fullmatch(sha) else None


def find_weights(where: str | os.PathLike, sha: str) -> Path | None:
    """The tensor file in adapter directory ``where`` whose sha256 is ``sha``: the weights
    file, or the pending one a save left between its two renames; None if neither matches.

    Example::

        find_weights("my-edit", read_adapter_config("my-edit").tensors_sha256)
    """
    where = Path(where)
    for path in (where / WEIGHTS_NAME, _pending(where, sha)):
        if path.is_file() and _file_sha256(path) == sha:
            return path
    return None


#: top-level config keys: (accepted types, required by the current format version)
_CONFIG_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "format_version": ((int,), True),
    "repedit_version": ((str,), False),
    "adapter_name": ((str,), False),
    "base_model_name_or_path": ((str, type(None)), False),
    "revision": ((str, type(None)), False),
    "fingerprint": ((dict,), True),
    "compute_dtype": ((str,), False),
    "layers_path": ((str, type(None)), False),
    "interventions": ((list,), True),
    "tensors_sha256": ((str,), True),
    "metadata": ((dict,), False),
}
#: keys of one intervention record: (accepted types, required)
_RECORD_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "method": ((str,), True),
    "layer": ((int,), True),
    "component": ((str,), True),
    "positions": ((str,), True),
    "active": ((bool,), False),
    "config": ((dict,), False),
}


def _check_types(values: dict, spec: dict, what: str) -> None:
    for key, (types, required) in spec.items():
        if key not in values:
            if required:
                raise AdapterError(f"{what} lacks the required key {key!r}")
            continue
        value = values[key]
        # bool is an int to isinstance; neither 1.7 nor true is a layer or a format version
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise AdapterError(f"{what}: {key!r} must be {names}, got {type(value).__name__} {value!r}")


def _check_config(raw: dict, path: Path) -> AdapterConfig:
    """Check every key's type and value (the rules in docs/adapter-format.md)."""
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise AdapterError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise AdapterError(
            f"{path} has format version {version}, newer than this repedit "
            f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade repedit"
        )
    known = {f.name for f in dataclasses.fields(AdapterConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        warnings.warn(f"{path}: unknown keys {unknown} are ignored", stacklevel=3)
    _check_types(raw, _CONFIG_KEYS, str(path))
    if not _SHA256.fullmatch(raw["tensors_sha256"]):
        raise AdapterError(
            f"{path}: tensors_sha256 must be the 64 lower-case hex digits of {WEIGHTS_NAME}'s sha256 "
            f"(required by format version {version}), got {raw['tensors_sha256']!r}; re-save the adapter"
        )
    if raw.get("compute_dtype", "float32") not in COMPUTE_DTYPES:
        raise AdapterError(f"{path}: compute_dtype must be one of {COMPUTE_DTYPES}, got {raw['compute_dtype']!r}")
    try:
        check_name(raw.get("adapter_name", "default"), "adapter")
    except ValueError as err:
        raise AdapterError(f"{path}: {err}") from None
    records, names = [], set()
    for i, rec in enumerate(raw["interventions"]):
        what = f"{path}: intervention {i}"
        if not isinstance(rec, dict):
            raise AdapterError(f"{what} must be a JSON object, got {type(rec).__name__}")
        _check_types(rec, _RECORD_KEYS, what)
        try:
            check_name(rec["name"])
            Positions.parse(rec["positions"])
        except ValueError as err:
            raise AdapterError(f"{what}: {err}") from None
        if rec["name"] in names:
            raise AdapterError(f"{what}: the name {rec['name']!r} is used twice; intervention names are unique")
        names.add(rec["name"])
        if rec["layer"] < 0:
            raise AdapterError(f"{what}: layer must be >= 0, got {rec['layer']}")
        if rec["component"] not in COMPONENTS:
            raise AdapterError(f"{what}: unknown component {rec['component']!r}; choose one of: {', '.join(COMPONENTS)}")
        records.append({"active": True, "config": {}, **rec})
    cfg = AdapterConfig(**{k: v for k, v in raw.items() if k in known})
    cfg.interventions = records
    return cfg


def read_adapter_config(directory: str | os.PathLike, adapter: str | None = None) -> AdapterConfig:
    """Read and check ``adapter_config.json``: every key's type and value (a bad one raises
    :class:`AdapterError`); unknown keys are dropped with a warning.

    Example::

        read_adapter_config("my-edit").interventions[0]["layer"]
    """
    where = adapter_dir(directory, adapter)
    if not where.is_dir():
        raise AdapterError(f"adapter directory {where} does not exist")
    if not (where / CONFIG_NAME).is_file():
        raise AdapterError(f"adapter directory {where} is missing {CONFIG_NAME}")
    try:
        raw = json.loads((where / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{where / CONFIG_NAME} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{where / CONFIG_NAME} must hold a JSON object")
    cfg = _check_config(raw, where / CONFIG_NAME)
    if not ((where / WEIGHTS_NAME).is_file() or _pending(where, cfg.tensors_sha256).is_file()):
        raise AdapterError(f"adapter directory {where} is missing {WEIGHTS_NAME}")
    return cfg


def _check_fingerprint(saved: dict, model: torch.nn.Module, where: Path) -> list[str]:
    current = fingerprint(model)
    return [
        f"{k}: adapter {saved.get(k)!r} vs model {current.get(k)!r}" if k in saved else f"{k}: missing from the adapter"
        for k in sorted(current)
        if saved.get(k) != current.get(k) or k not in saved
    ]


def _check_tensor(iname: str, key: str, value: torch.Tensor, expected: torch.Tensor) -> None:
    """Shape, dtype (a float where the module holds a float, else the very dtype) and finite values."""
    if tuple(value.shape) != tuple(expected.shape):
        raise AdapterError(
            f"intervention {iname!r}: tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(expected.shape)}"
        )
    floating = expected.is_floating_point()
    if value.is_floating_point() != floating or (not floating and value.dtype != expected.dtype):
        want = "a floating-point dtype" if floating else str(expected.dtype)
        raise AdapterError(f"intervention {iname!r}: tensor {key!r} has dtype {value.dtype}, expected {want}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise AdapterError(f"intervention {iname!r}: tensor {key!r} holds NaN or infinite values")
