"""What the hooks at a site know: an :class:`Attachment` (one intervention at one site), the
per-forward :class:`ForwardContext`, the thread-local state, the probe of
``EditableModel.capture``, and reading and writing a decoder module's output.

Nothing here registers a hook: :class:`repedit.hooks.EditableModel` does, and removes
exactly its own handles.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from repedit.methods.base import Intervention
from repedit.positions import Positions, TokenInfo, rule_mask

__all__ = ["Attachment", "ForwardContext"]


class _ThreadState(threading.local):
    """Per-thread forward state: each thread's forwards see their own context."""

    def __init__(self) -> None:
        self.ctx: ForwardContext | None = None
        self.gen_state: dict = {}
        self.prompt_width = 0
        self.disabled = 0
        self.probe: _Probe | None = None

    def __reduce__(self) -> tuple:
        return (_ThreadState, ())  # a copy (deepcopy) starts with no forward in flight


@dataclass
class ForwardContext:
    """What one forward pass of the wrapped model knows about its tokens.

    ``state`` persists over the forwards of one generation (it is reset at each prefill)
    so a method can hold, say, the codebook entry chosen from the prompt while decoding.
    """

    attention_mask: torch.Tensor
    past_len: int
    prompt_width: int
    info: TokenInfo | None
    state: dict
    _masks: dict = field(default_factory=dict)

    @property
    def is_prefill(self) -> bool:
        return self.past_len == 0

    def mask(self, rule: Positions, device: torch.device | None = None) -> torch.Tensor:
        """(B, T_new) boolean mask of the tokens ``rule`` acts on in this forward."""
        key = (rule, device)
        m = self._masks.get(key)
        if m is None:
            base = self._masks.get((rule, None))
            if base is None:
                base = rule_mask(rule, self.attention_mask, self.past_len, self.prompt_width, self.info)
                self._masks[(rule, None)] = base
            m = base if device is None else base.to(device, non_blocking=True)
            self._masks[key] = m
        return m


@dataclass
class Attachment:
    """One intervention attached at one site."""

    name: str
    module: Intervention
    method: str
    layer: int
    component: str
    positions: Positions
    adapter: str = "default"
    active: bool = True
    #: the sweeps' ``scale`` knob: ``h + scale · (Φ(h) − h)`` (1: the edit as trained, bit-exact),
    #: applied by a forward hook the EditableModel registers on the module
    scale: float = 1.0

    @property
    def site(self) -> tuple[int, str]:
        return (self.layer, self.component)


class _CaptureDone(Exception):
    """Raised by a site hook once :meth:`EditableModel.capture` has its states (stop=True)."""


@dataclass
class _Probe:
    """What :meth:`EditableModel.capture` asks of the site hook of one forward."""

    site: tuple[int, str]
    before: str | None
    positions: Positions | None
    stop: bool
    store: dict = field(default_factory=dict)

    def grab(self, h: torch.Tensor, ctx: "ForwardContext | None") -> None:
        self.store["h"] = h.detach()
        rule = self.positions or Positions.ALL
        self.store["mask"] = ctx.mask(rule, h.device).detach() if ctx is not None else None
        self.store["ctx"] = ctx
        if self.stop:
            raise _CaptureDone


def _find_cache(kwargs: dict) -> Any:
    """The KV cache passed to the decoder stack, whatever transformers calls the argument
    (``past_key_values`` up to 5.23, ``cache`` from 5.24), or ``None``."""
    for name in ("past_key_values", "cache"):
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return cache
    for value in kwargs.values():  # a future name: any argument that is a cache
        if hasattr(value, "get_seq_length"):
            return value
    return None


def _split_output(output: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(output, torch.Tensor):
        return output, None
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], output
    if hasattr(output, "__getitem__") and hasattr(output, "keys"):  # ModelOutput-like
        first = next(iter(output.keys()))
        return output[first], output
    raise TypeError(f"cannot find the hidden state in a module output of type {type(output).__name__}")


def _join_output(h: torch.Tensor, rest: Any) -> Any:
    if rest is None:
        return h
    if isinstance(rest, tuple):
        return (h,) + tuple(rest[1:])
    first = next(iter(rest.keys()))
    rest[first] = h
    return rest
