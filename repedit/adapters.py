"""Edit adapters on disk: save, load, fingerprint, format versions.

An adapter directory holds two files (peft's convention):

``adapter_config.json``
    :class:`AdapterConfig` as ``asdict`` with sorted keys: format and repedit versions,
    the interventions (method, layer, component, positions, method config), the compute
    dtype, the base model's name, revision and fingerprint, and the sha256 of the tensors.
``adapter_model.safetensors``
    The intervention tensors only, keyed ``<intervention name>.<parameter>``. No pickle.

The ``default`` adapter sits at the top of the directory; an adapter named ``x`` sits in
the subfolder ``x/``. Files are written to a temporary name and renamed; the config is
written last and records the sha256 of the tensors, so an interrupted save never leaves a
pair that loads.

Example::

    edited.save_pretrained("my-edit")
    edited = EditableModel.from_pretrained(model, "my-edit")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from repedit.hashing import file_sha256 as _file_sha256
from repedit.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from repedit.hooks import Attachment, EditableModel

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterError",
    "AdapterConfig",
    "fingerprint",
    "save_adapter",
    "load_adapter",
    "read_adapter_config",
    "adapter_dir",
]

FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


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
    """Where adapter ``adapter`` lives inside ``directory`` (``default`` at the top)."""
    base = Path(directory)
    return base if adapter in (None, "default") else base / adapter


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with_suppress_unlink(tmp)
        raise


def with_suppress_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def save_adapter(
    edited: "EditableModel",
    directory: str | os.PathLike,
    adapter: str = "default",
    metadata: dict | None = None,
) -> Path:
    """Write one adapter's config and tensors atomically; returns the adapter's directory."""
    atts = edited.attachments(adapter)
    if not atts:
        raise ValueError(f"adapter {adapter!r} has no interventions; adapters: {edited.adapters()}")
    out = adapter_dir(directory, adapter)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    records = []
    for att in atts:
        cfg = att.module.export_config()
        records.append(
            {
                "name": att.name,
                "method": att.method,
                "layer": att.layer,
                "component": att.component,
                "positions": att.positions.value,
                "active": att.active,
                "config": cfg.to_dict(),
            }
        )
        stored = getattr(att.module, "storage_dtypes", {})
        for key, value in att.module.state_dict().items():
            value = value.detach().to("cpu", dtype=stored.get(key, value.dtype))
            tensors[f"{att.name}.{key}"] = value.contiguous().clone()
    model = edited.model
    mcfg = getattr(model, "config", None)
    tmp_fd, tmp_weights = tempfile.mkstemp(prefix=f".{WEIGHTS_NAME}.", suffix=".tmp", dir=out)
    os.close(tmp_fd)
    try:
        save_file(tensors, tmp_weights, metadata={"format": "pt", "repedit_format_version": str(FORMAT_VERSION)})
        sha = _file_sha256(Path(tmp_weights))
        os.replace(tmp_weights, out / WEIGHTS_NAME)
    except BaseException:
        with_suppress_unlink(tmp_weights)
        raise
    config = AdapterConfig(
        adapter_name=adapter,
        base_model_name_or_path=getattr(mcfg, "name_or_path", None) or getattr(mcfg, "_name_or_path", None),
        revision=getattr(mcfg, "_commit_hash", None),
        fingerprint=fingerprint(model),
        compute_dtype=edited.compute_dtype,
        layers_path=edited.layers_path,
        interventions=records,
        tensors_sha256=sha,
        metadata=dict(metadata or {}),
    )
    _atomic_write_bytes(out / CONFIG_NAME, config.to_json().encode())
    logger.info("saved adapter %r (%d interventions) to %s", adapter, len(records), out)
    return out


def read_adapter_config(directory: str | os.PathLike, adapter: str | None = None) -> AdapterConfig:
    """Read and check ``adapter_config.json``; unknown keys are dropped with a warning."""
    where = adapter_dir(directory, adapter)
    if not where.is_dir():
        raise AdapterError(f"adapter directory {where} does not exist")
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (where / n).is_file()]
    if missing:
        raise AdapterError(f"adapter directory {where} is missing {', '.join(missing)}")
    try:
        raw = json.loads((where / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{where / CONFIG_NAME} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{where / CONFIG_NAME} must hold a JSON object")
    version = raw.get("format_version")
    if not isinstance(version, int):
        raise AdapterError(f"{where / CONFIG_NAME} has no integer format_version")
    if version > FORMAT_VERSION:
        raise AdapterError(
            f"{where / CONFIG_NAME} has format version {version}, newer than this repedit "
            f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade repedit"
        )
    known = {f.name for f in dataclasses.fields(AdapterConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        warnings.warn(f"{where / CONFIG_NAME}: unknown keys {unknown} are ignored", stacklevel=2)
    cfg = AdapterConfig(**{k: v for k, v in raw.items() if k in known})
    if not isinstance(cfg.interventions, list) or not all(isinstance(r, dict) for r in cfg.interventions):
        raise AdapterError(f"{where / CONFIG_NAME}: 'interventions' must be a list of objects")
    return cfg


def _check_fingerprint(saved: dict, model: torch.nn.Module, where: Path) -> list[str]:
    current = fingerprint(model)
    return [
        f"{k}: adapter {saved.get(k)!r} vs model {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if k in saved and saved.get(k) != current.get(k)
    ]


def load_adapter(
    edited: "EditableModel",
    directory: str | os.PathLike,
    adapter: str | None = None,
    ignore_fingerprint: bool = False,
    strict_config: bool = False,
) -> list["Attachment"]:
    """Load a saved adapter onto ``edited``, on each layer's device and in the compute dtype.

    Every check runs before anything is attached, so a bad directory leaves the model as it
    was. ``ignore_fingerprint=True`` loads onto a model whose fingerprint differs (with a
    warning).
    """
    from repedit.methods import build, config_from_dict
    from repedit.positions import Positions

    where = adapter_dir(directory, adapter)
    cfg = read_adapter_config(directory, adapter)
    mismatch = _check_fingerprint(cfg.fingerprint, edited.model, where)
    if mismatch:
        msg = f"adapter {where} was made for another base model ({'; '.join(mismatch)})"
        if not ignore_fingerprint:
            raise AdapterError(msg + "; pass ignore_fingerprint=True to load it anyway")
        warnings.warn(msg, stacklevel=2)
    weights = where / WEIGHTS_NAME
    if cfg.tensors_sha256 and _file_sha256(weights) != cfg.tensors_sha256:
        raise AdapterError(f"{weights} does not match the sha256 recorded in {CONFIG_NAME}: corrupted or from another save")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterError(f"{weights} is not a readable safetensors file: {err}") from None

    name = cfg.adapter_name if adapter is None else adapter
    built = []
    used: set[str] = set()
    for i, rec in enumerate(cfg.interventions):
        try:
            iname, method = rec["name"], rec["method"]
            layer, component, positions = int(rec["layer"]), rec["component"], Positions.parse(rec["positions"])
        except (KeyError, TypeError, ValueError) as err:
            raise AdapterError(f"{where / CONFIG_NAME}: intervention {i} is malformed ({err})") from None
        if iname in edited._attachments:
            raise AdapterError(f"an intervention named {iname!r} is already attached; remove it first")
        if not 0 <= layer < edited.num_layers:
            raise AdapterError(f"intervention {iname!r} sits at layer {layer}, but the model has {edited.num_layers}")
        try:
            mcfg = config_from_dict(method, rec.get("config", {}), strict=strict_config)
            module = build(method, mcfg, edited.hidden_size)
        except (TypeError, ValueError) as err:
            raise AdapterError(f"intervention {iname!r}: {err}") from None
        prefix = f"{iname}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        used.update(prefix + k for k in state)
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise AdapterError(f"intervention {iname!r}: tensors missing {missing}, unexpected {extra} in {weights}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise AdapterError(
                    f"intervention {iname!r}: tensor {key!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(expected[key].shape)}"
                )
        stored = getattr(module, "storage_dtypes", {})
        state = {k: v.to(expected[k].dtype) if k in stored else v for k, v in state.items()}
        module.load_state_dict(state, strict=True)
        built.append((iname, module, layer, component, positions, bool(rec.get("active", True))))
    stray = sorted(set(tensors) - used)
    if stray:
        raise AdapterError(f"{weights} holds tensors no intervention claims: {stray[:5]}")

    attached = []
    for iname, module, layer, component, positions, active in built:
        edited.add(iname, module, layer=layer, component=component, positions=positions, adapter=name)
        edited._attachments[iname].active = active
        attached.append(edited._attachments[iname])
    logger.info("loaded adapter %r (%d interventions) from %s", name, len(attached), where)
    return attached
