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
import types
import typing
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


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a config field's type hint (JSON's view: an int is a float, a
    bool is no number; generic containers are checked by their origin only)."""
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(hint) or hint
    return not isinstance(origin, type) or isinstance(value, origin)


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("NoneType", "None")


def config_from_dict(name: str, values: Mapping[str, Any], strict: bool = False) -> MethodConfig:
    """Build a method's config from a dict; unknown keys are dropped with a warning (peft's
    forward compatibility) unless ``strict``. Each value must fit its field's type, or a
    ValueError names the field, the expected and the given type.

    Example::

        config_from_dict("loreft", {"rank": 8})     # LoReFTConfig(rank=8, ...)
        config_from_dict("loreft", {"rank": "two"}) # ValueError: ... 'rank' must be int, got str 'two'
    """
    import warnings

    spec = get_method(name)
    if not isinstance(values, Mapping):
        raise ValueError(f"the config of method {name!r} must be a mapping of option names to values, got {type(values).__name__}")
    known = spec.config_cls.field_names()
    unknown = sorted(set(values) - known)
    if unknown:
        msg = f"config of method {name!r} has unknown keys {unknown}"
        if strict:
            raise ValueError(msg)
        warnings.warn(msg + "; they are ignored", stacklevel=2)
    hints = typing.get_type_hints(spec.config_cls)
    for key, value in values.items():
        if key in known and not _type_ok(value, hints.get(key, Any)):
            raise ValueError(
                f"option {key!r} of method {name!r} must be {_hint_name(hints[key])}, "
                f"got {type(value).__name__} {value!r}"
            )
    return spec.config_cls(**{k: v for k, v in values.items() if k in known})


def build(name: str, config: MethodConfig | Mapping[str, Any] | None, hidden_size: int) -> Intervention:
    """Instantiate a registered method's intervention module."""
    spec = get_method(name)
    if config is None:
        config = spec.config_cls()
    elif not isinstance(config, MethodConfig):
        config = config_from_dict(name, config, strict=True)
    return spec.module_cls(config, hidden_size)
