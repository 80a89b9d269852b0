"""Edit adapters on disk: save, load, fingerprint, format versions.

An adapter directory holds two files (peft's convention):

``adapter_config.json``
    :class:`AdapterConfig` as ``asdict`` with sorted keys: format and repedit versions,
    the interventions (method, layer, component, positions, method config), the compute
    dtype, the base model's name, revision and fingerprint, and the sha256 of the tensors.
``adapter_model.safetensors``
    The intervention tensors only, keyed ``<intervention name>.<parameter>``. No pickle.

The ``default`` adapter sits at the top of the directory; an adapter named ``x`` sits in
the subfolder ``x/`` (adapter names hold no '.', '/' or '\\', so they never leave it).

A save writes the new tensors beside the old ones (``.adapter_model.safetensors.<sha256>.pending``),
then switches over in one rename: the new config, which records that sha256, replaces the old
one; the pending tensors are then renamed into place. A loader takes the tensors whose sha256
the config records (the pending file while a save is between its two renames), so a crash at
any point leaves the old or the new adapter loadable. The next save finishes or removes
whatever an interrupted one left.

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
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from repedit.arch import COMPONENTS
from repedit.hashing import file_sha256 as _file_sha256
from repedit.hooks import COMPUTE_DTYPES, EditableModel, check_name
from repedit.positions import Positions
from repedit.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from repedit.hooks import Attachment

logger = logging.getLogger(__name__)

__all__ = [
    "merge_adapters",
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
    "find_weights",
]

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


def _fsync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    _fsync_dir(path.parent)


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


def _finish_interrupted_save(where: Path) -> None:
    """Finish a save stopped after its switch (its tensors still pending), then remove the
    temporaries of interrupted saves."""
    sha = _recorded_sha(where)
    if sha is not None and find_weights(where, sha) == _pending(where, sha):
        os.replace(_pending(where, sha), where / WEIGHTS_NAME)
        logger.info("finished an interrupted save in %s", where)
    for path in where.iterdir():
        name = path.name
        if name.startswith((f".{WEIGHTS_NAME}.", f".{CONFIG_NAME}.")) and name.endswith((".tmp", ".pending")):
            logger.info("removing %s, left by an interrupted save", path)
            with_suppress_unlink(str(path))


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
    """Write one adapter's config and tensors atomically; returns the adapter's directory.

    The new tensors go beside the old ones and one rename of the config switches over, so a
    crash at any point leaves the old or the new adapter loadable (see the module docstring).
    """
    atts = edited.attachments(adapter)
    if not atts:
        raise ValueError(f"adapter {adapter!r} has no interventions; adapters: {edited.adapters()}")
    out = adapter_dir(directory, adapter)
    out.mkdir(parents=True, exist_ok=True)
    _finish_interrupted_save(out)
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
    config = AdapterConfig(
        adapter_name=adapter,
        base_model_name_or_path=getattr(mcfg, "name_or_path", None) or getattr(mcfg, "_name_or_path", None),
        revision=getattr(mcfg, "_commit_hash", None),
        fingerprint=fingerprint(model),
        compute_dtype=edited.compute_dtype,
        layers_path=edited.layers_path,
        interventions=records,
        metadata=dict(metadata or {}),
    )
    tmp_fd, tmp_weights = tempfile.mkstemp(prefix=f".{WEIGHTS_NAME}.", suffix=".tmp", dir=out)
    os.close(tmp_fd)
    pending = None
    try:
        save_file(tensors, tmp_weights, metadata={"format": "pt", "repedit_format_version": str(FORMAT_VERSION)})
        fd = os.open(tmp_weights, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        config.tensors_sha256 = _file_sha256(Path(tmp_weights))
        pending = _pending(out, config.tensors_sha256)
        os.replace(tmp_weights, pending)  # the new tensors, complete, beside the old ones
        _fsync_dir(out)
        _atomic_write_bytes(out / CONFIG_NAME, config.to_json().encode())  # the switch: one rename
        os.replace(pending, out / WEIGHTS_NAME)
        _fsync_dir(out)
    except BaseException:
        with_suppress_unlink(tmp_weights)
        if pending is not None and _recorded_sha(out) != config.tensors_sha256:
            with_suppress_unlink(str(pending))  # not switched over: the old adapter stays as it was
        raise
    logger.info("saved adapter %r (%d interventions) to %s", adapter, len(records), out)
    return out


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


def load_adapter(
    edited: "EditableModel",
    directory: str | os.PathLike,
    adapter: str | None = None,
    ignore_fingerprint: bool = False,
    strict_config: bool = False,
) -> list["Attachment"]:
    """Load a saved adapter onto ``edited``, on each layer's device and in the compute dtype.

    Every check runs before anything is attached, so a bad directory raises
    :class:`AdapterError` and leaves the model as it was. ``ignore_fingerprint=True`` loads
    onto a model whose fingerprint differs (with a warning).

    Example::

        attachments = load_adapter(edited, "my-edit")
    """
    from repedit.methods import build, config_from_dict

    where = adapter_dir(directory, adapter)
    cfg = read_adapter_config(directory, adapter)
    mismatch = _check_fingerprint(cfg.fingerprint, edited.model, where)
    if mismatch:
        msg = f"adapter {where} was made for another base model ({'; '.join(mismatch)})"
        if not ignore_fingerprint:
            raise AdapterError(msg + "; pass ignore_fingerprint=True to load it anyway")
        warnings.warn(msg, stacklevel=2)
    weights = find_weights(where, cfg.tensors_sha256)
    if weights is None:
        raise AdapterError(
            f"{where / WEIGHTS_NAME} does not match the sha256 recorded in {CONFIG_NAME}: corrupted or from another save"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterError(f"{weights} is not a readable safetensors file: {err}") from None

    name = cfg.adapter_name if adapter is None else adapter
    built = []
    used: set[str] = set()
    for rec in cfg.interventions:
        iname, layer = rec["name"], rec["layer"]
        if iname in edited:
            raise AdapterError(f"an intervention named {iname!r} is already attached; remove it first")
        if layer >= edited.num_layers:
            raise AdapterError(f"intervention {iname!r} sits at layer {layer}, but the model has {edited.num_layers}")
        try:
            mcfg = config_from_dict(rec["method"], rec["config"], strict=strict_config)
            module = build(rec["method"], mcfg, edited.hidden_size)
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
            _check_tensor(iname, key, value, expected[key])
        stored = getattr(module, "storage_dtypes", {})
        state = {k: v.to(expected[k].dtype) if k in stored else v for k, v in state.items()}
        module.load_state_dict(state, strict=True)
        built.append((iname, module, layer, rec["component"], Positions.parse(rec["positions"]), rec["active"]))
    stray = sorted(set(tensors) - used)
    if stray:
        raise AdapterError(f"{weights} holds tensors no intervention claims: {stray[:5]}")

    attached = []
    try:
        for iname, module, layer, component, positions, active in built:
            edited.add(iname, module, layer=layer, component=component, positions=positions, adapter=name)
            edited.get(iname).active = active
            attached.append(edited.get(iname))
    except BaseException:
        for att in attached:  # all or nothing
            edited.remove(att.name)
        raise
    logger.info("loaded adapter %r (%d interventions) from %s", name, len(attached), where)
    return attached


def merge_adapters(model: Any, dir_a: str, dir_b: str, out_dir: str, tokenizer: Any = None) -> Path:
    """Merge two saved codebook adapters (same base model) into a new adapter directory.

    Example::

        merge_adapters(model, "edits-a", "edits-b", "edits-ab")


    Codebooks with the same intervention name (same layer) are merged entry-wise; other
    interventions are copied from ``dir_a`` then ``dir_b``.
    """
    from repedit.methods.codebook.manage import merge
    from repedit.methods.codebook.module import Codebook

    ea, eb = EditableModel(model, tokenizer), EditableModel(model, tokenizer)
    try:
        ea.load_adapter(dir_a)
        eb.load_adapter(dir_b)
        merged = EditableModel(model, tokenizer)
        try:
            for att in ea.attachments():
                other = eb.get(att.name) if att.name in eb else None
                module = att.module
                if other is not None and isinstance(module, Codebook) and isinstance(other.module, Codebook):
                    if (other.layer, other.component) != (att.layer, att.component):
                        raise ValueError(f"{att.name}: codebooks sit at different sites")
                    module = merge(module, other.module)
                merged.add(att.name, module, layer=att.layer, component=att.component, positions=att.positions)
            for att in eb.attachments():
                if att.name not in merged:
                    merged.add(att.name, att.module, layer=att.layer, component=att.component, positions=att.positions)
            merged.save_pretrained(out_dir)
        finally:
            merged.unwrap()
    finally:
        ea.unwrap()
        eb.unwrap()
    return Path(out_dir)
