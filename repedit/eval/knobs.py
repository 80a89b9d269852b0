"""Knobs: inference-time settings of trained edits that change without retraining.

A *knob* is an inference-time setting of a trained edit that can change without
retraining. Resolution order for a knob name on one attachment:

1. **The method's own knobs**, from the method contract
   (:meth:`~repedit.methods.base.Intervention.knobs` / ``set_knob``), e.g. a codebook's
   ``radius_scale``, BaFT's ``gate_shift`` and ``temperature``.
2. **``"scale"``, for every method.** The attachment's ``scale`` (EditableModel state, applied
   by a hook the EditableModel registers) rescales the change: ``Φ_s(h) = h + s · (Φ(h) − h)``. ``s = 1`` is the
   trained edit (the output untouched, bit-exact), ``s = 0`` switches it off. Works for
   LoReFT, BaFT, codebooks and any method, with no change to the method's file.

Or pass ``setter=`` (a callable taking the value) to sweep anything else.

Example::

    with knob_setting(edited, "scale", 0.5):
        ...   # every edit at half strength
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterator, Sequence

from repedit.eval.harness import _unwrap

logger = logging.getLogger(__name__)

__all__ = ["GENERIC_KNOBS", "knobs", "get_knob", "set_knob", "knob_setting"]

#: knobs every method has (implemented by the EditableModel, not by the method).
GENERIC_KNOBS: tuple[str, ...] = ("scale",)


def _method_knobs(module: Any) -> dict[str, float]:
    try:
        return dict(module.knobs())
    except Exception as err:  # a method's knobs() should not break the listing
        logger.warning("%s.knobs() failed: %s", type(module).__name__, err)
    return {}


def knobs(edited: Any, attachments: Sequence[Any] | None = None) -> dict[str, dict[str, float]]:
    """Per attachment name: the knobs it has and their current values.

    Example::

        knobs(edited)   # {'loreft_L9': {'scale': 1.0}, 'codebook_L10': {'scale': 1.0, 'radius_scale': 1.0}}
    """
    edited = _unwrap(edited)
    out: dict[str, dict[str, float]] = {}
    for att in _select(edited, attachments):
        ks = {name: get_knob(att, name) for name in GENERIC_KNOBS}
        ks.update(_method_knobs(att.module))
        out[att.name] = ks
    return out


def get_knob(attachment: Any, name: str) -> float:
    """Current value of knob ``name`` on one attachment (see the module docstring for the order).

    Example::

        get_knob(edited.attachments()[0], "scale")   # 1.0
    """
    module = attachment.module
    own = _method_knobs(module)
    if name in own:
        return float(own[name])
    if name == "scale":
        return float(attachment.scale)
    raise ValueError(_unknown(attachment, name))


def _unknown(attachment: Any, name: str) -> str:
    avail = sorted(set(GENERIC_KNOBS) | set(_method_knobs(attachment.module)))
    return f"intervention {attachment.name!r} ({attachment.method}) has no knob {name!r}; its knobs: {', '.join(avail)}"


def set_knob(attachment: Any, name: str, value: float) -> None:
    """Set knob ``name`` of one attachment to ``value`` (no retraining).

    Example::

        set_knob(edited.attachments()[0], "scale", 0.5)   # half the edit
    """
    module = attachment.module
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"knob values must be finite, got {value}")
    if name in _method_knobs(module):
        module.set_knob(name, value)
        return
    if name == "scale":
        attachment.scale = value
        return
    raise ValueError(_unknown(attachment, name))


def _select(edited: Any, attachments: Sequence[Any] | None) -> list[Any]:
    """Attachments by object, by name, or all of ``edited``."""
    all_atts = edited.attachments()
    if attachments is None:
        return all_atts
    by_name = {a.name: a for a in all_atts}
    out = []
    for a in attachments:
        if isinstance(a, str):
            if a not in by_name:
                raise ValueError(f"no intervention named {a!r}; attached: {sorted(by_name)}")
            out.append(by_name[a])
        else:
            out.append(a)
    return out


@contextlib.contextmanager
def knob_setting(
    edited: Any,
    name: str,
    value: float,
    attachments: Sequence[Any] | None = None,
    setter: Callable[[float], None] | None = None,
    original: float | None = None,
) -> Iterator[None]:
    """Temporarily set a knob on the attachments (all by default); restores the old values.

    With ``setter``, ``setter(value)`` is called instead (and ``setter(original)`` on exit
    when ``original`` is given).

    Example::

        with knob_setting(edited, "scale", 0.0):
            ...   # the edits are off
    """
    if setter is not None:
        setter(float(value))
        try:
            yield
        finally:
            if original is not None:
                setter(float(original))
        return
    atts = _select(_unwrap(edited), attachments)
    if not atts:
        raise ValueError("no interventions are attached: nothing to sweep")
    old = [(a, get_knob(a, name)) for a in atts]
    try:
        for a in atts:
            set_knob(a, name, value)
        yield
    finally:
        for a, v in old:
            set_knob(a, name, v)
