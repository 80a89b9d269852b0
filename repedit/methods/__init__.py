"""The method registry (peft's ``register_peft_method`` pattern).

Each method is its own module (or package) in this folder holding a dataclass config,
an :class:`~repedit.methods.base.Intervention` subclass and one registration line::

    register_method("loreft", LoReFTConfig, LoReFT)

Every module in this package is imported on first use of the registry, so adding a
method is adding a file: no other file changes.

Example::

    from repedit.methods import build, get_method
    module = build("loreft", {"rank": 4}, hidden_size=576)
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Mapping

from repedit.methods.base import Intervention, MethodConfig

__all__ = ["MethodSpec", "register_method", "get_method", "available_methods", "build", "config_from_dict"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type[MethodConfig]
    module_cls: type[Intervention]


_REGISTRY: dict[str, MethodSpec] = {}
_DISCOVERED = False


def register_method(name: str, config_cls: type[MethodConfig], module_cls: type[Intervention]) -> None:
    """Register a method under a lower-case, unique name."""
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"method names are lower-case identifiers, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name].module_cls is not module_cls:
        raise ValueError(f"a different method is already registered as {name!r}")
    config_cls.method = name
    module_cls.config_cls = config_cls
    _REGISTRY[name] = MethodSpec(name, config_cls, module_cls)


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def available_methods() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}") from None


def config_from_dict(name: str, values: Mapping[str, Any], strict: bool = False) -> MethodConfig:
    """Build a method's config from a dict; unknown keys are dropped with a warning (peft's
    forward compatibility) unless ``strict``."""
    import warnings

    spec = get_method(name)
    known = spec.config_cls.field_names()
    unknown = sorted(set(values) - known)
    if unknown:
        msg = f"config of method {name!r} has unknown keys {unknown}"
        if strict:
            raise ValueError(msg)
        warnings.warn(msg + "; they are ignored", stacklevel=2)
    return spec.config_cls(**{k: v for k, v in values.items() if k in known})


def build(name: str, config: MethodConfig | Mapping[str, Any] | None, hidden_size: int) -> Intervention:
    """Instantiate a registered method's intervention module."""
    spec = get_method(name)
    if config is None:
        config = spec.config_cls()
    elif not isinstance(config, MethodConfig):
        config = config_from_dict(name, config, strict=True)
    return spec.module_cls(config, hidden_size)
