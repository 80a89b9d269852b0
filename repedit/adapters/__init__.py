"""Edit adapters on disk: save, attach, inspect, fingerprint, format versions.

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

The format and reading live in :mod:`repedit.adapters.format`, attaching (and building the
interventions from the files alone) in :mod:`repedit.adapters.load`, the summary ``repedit
inspect`` prints in :mod:`repedit.adapters.inspect`; this module writes.

Example::

    edited.save_pretrained("my-edit")
    edited = EditableModel.from_pretrained(model, "my-edit")
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from repedit.adapters.format import (COMPUTE_DTYPES, CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, AdapterConfig,
                                     AdapterError, _pending, _recorded_sha, adapter_dir, check_name, find_weights,
                                     fingerprint, read_adapter_config)
from repedit.adapters.inspect import format_inspect, inspect_adapter
from repedit.adapters.load import attach_adapter, read_modules
from repedit.hashing import file_sha256 as _file_sha256

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "COMPUTE_DTYPES",
    "AdapterError",
    "AdapterConfig",
    "check_name",
    "fingerprint",
    "save_adapter",
    "attach_adapter",
    "read_modules",
    "read_adapter_config",
    "adapter_dir",
    "find_weights",
    "inspect_adapter",
    "format_inspect",
]


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
    edited: Any,
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
