"""Attaching a saved adapter to an :class:`~repedit.hooks.EditableModel` (all or nothing).

``EditableModel.load_adapter(dir)`` and ``EditableModel.from_pretrained(model, dir)`` call
:func:`attach_adapter`.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from repedit.adapters.format import (CONFIG_NAME, WEIGHTS_NAME, AdapterError, _check_fingerprint, _check_tensor,
                                     adapter_dir, find_weights, read_adapter_config)
from repedit.positions import Positions

logger = logging.getLogger(__name__)

__all__ = ["attach_adapter", "read_modules"]


def read_modules(
    directory: str | os.PathLike,
    adapter: str | None = None,
    hidden_size: int | None = None,
    strict_config: bool = False,
) -> tuple[Any, list[tuple[dict, Any]]]:
    """Build a saved adapter's interventions from its files alone, no model: ``(config,
    [(record, module), ...])`` with each module's tensors loaded (on the CPU, in float32).
    ``hidden_size`` defaults to the one in the adapter's fingerprint.

    Example::

        cfg, mods = read_modules("my-edit")
        mods[0][1].list_edits()
    """
    from repedit.methods import build, config_from_dict

    where = adapter_dir(directory, adapter)
    cfg = read_adapter_config(directory, adapter)
    hidden = hidden_size or (cfg.fingerprint or {}).get("hidden_size")
    if not hidden:
        raise AdapterError(f"{where / CONFIG_NAME} records no hidden size; load it onto its model instead")
    weights = find_weights(where, cfg.tensors_sha256)
    if weights is None:
        raise AdapterError(
            f"{where / WEIGHTS_NAME} does not match the sha256 recorded in {CONFIG_NAME}: corrupted or from another save"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterError(f"{weights} is not a readable safetensors file: {err}") from None
    built = []
    used: set[str] = set()
    for rec in cfg.interventions:
        iname = rec["name"]
        try:
            mcfg = config_from_dict(rec["method"], rec["config"], strict=strict_config)
            module = build(rec["method"], mcfg, int(hidden))
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
        built.append((rec, module))
    stray = sorted(set(tensors) - used)
    if stray:
        raise AdapterError(f"{weights} holds tensors no intervention claims: {stray[:5]}")
    return cfg, built


def attach_adapter(
    edited: Any,
    directory: str | os.PathLike,
    adapter: str | None = None,
    ignore_fingerprint: bool = False,
    strict_config: bool = False,
) -> list[Any]:
    """Load a saved adapter onto ``edited``, on each layer's device and in the compute dtype.

    Every check runs before anything is attached, so a bad directory raises
    :class:`AdapterError` and leaves the model as it was. ``ignore_fingerprint=True`` loads
    onto a model whose fingerprint differs (with a warning).

    Example::

        attachments = attach_adapter(edited, "my-edit")
    """
    where = adapter_dir(directory, adapter)
    cfg = read_adapter_config(directory, adapter)
    mismatch = _check_fingerprint(cfg.fingerprint, edited.model, where)
    if mismatch:
        msg = f"adapter {where} was made for another base model ({'; '.join(mismatch)})"
        if not ignore_fingerprint:
            raise AdapterError(msg + "; pass ignore_fingerprint=True to load it anyway")
        warnings.warn(msg, stacklevel=2)
    for rec in cfg.interventions:
        iname, layer = rec["name"], rec["layer"]
        if iname in edited:
            raise AdapterError(f"an intervention named {iname!r} is already attached; remove it first")
        if layer >= edited.num_layers:
            raise AdapterError(f"intervention {iname!r} sits at layer {layer}, but the model has {edited.num_layers}")
    cfg, modules = read_modules(directory, adapter, hidden_size=edited.hidden_size, strict_config=strict_config)

    name = cfg.adapter_name if adapter is None else adapter
    attached = []
    try:
        for rec, module in modules:
            iname = rec["name"]
            edited.add(iname, module, layer=rec["layer"], component=rec["component"],
                       positions=Positions.parse(rec["positions"]), adapter=name)
            edited.get(iname).active = rec["active"]
            attached.append(edited.get(iname))
    except BaseException:
        for att in attached:  # all or nothing
            edited.remove(att.name)
        raise
    logger.info("loaded adapter %r (%d interventions) from %s", name, len(attached), where)
    return attached
