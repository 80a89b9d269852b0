"""Mixed-precision training forwards (``EditorConfig.mixed_precision``).

:class:`MixedPrecision` is a context manager factory for the forwards an edit trains with:

* ``torch.autocast`` in bfloat16 or float16 on the model's device;
* the frozen ``nn.Linear`` weights swapped for half-precision copies kept between steps, so
  autocast does not cast every weight at every step (numerically the same: autocast would cast
  them to the same dtype); a copy is remade when its weight changes in place (its version
  counter moves);
* on a CPU, the math kernel of scaled-dot-product attention, whose backward in bfloat16 is
  several times faster than the flash kernel's there.

Trainable weights (``requires_grad``) are never swapped: their gradients stay in their own
dtype. Everything is restored on exit, also after an exception.

Example::

    mp = MixedPrecision("bf16")
    with mp(model):
        loss = model(**batch).logits.float().logsumexp(-1).mean()
    loss.backward()
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["MixedPrecision", "PRECISIONS"]

#: the names ``EditorConfig.mixed_precision`` accepts, and their dtypes
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """Autocast with cached half-precision copies of frozen linear weights (see the module doc)."""

    def __init__(self, name: str):
        if name not in PRECISIONS:
            raise ValueError(f"mixed precision must be one of {sorted(PRECISIONS)}, got {name!r}")
        self.name = name
        self.dtype = PRECISIONS[name]
        # id(parameter) -> (a weak reference to it, its version, its data pointer, the half copy);
        # weak, so the copies never keep a model's own weights alive
        self._copies: dict[int, tuple[weakref.ref, int, int, nn.Parameter]] = {}
        # the model's linear modules, listed once per model (a module added later is only cast by
        # autocast); weak references, like the copies' keys
        self._linears: tuple[Any, list[weakref.ref]] | None = None

    def _half(self, weight: torch.Tensor) -> nn.Parameter:
        hit = self._copies.get(id(weight))
        if hit is not None and hit[0]() is weight and hit[1] == weight._version and hit[2] == weight.data_ptr():
            return hit[3]
        half = nn.Parameter(weight.detach().to(self.dtype), requires_grad=False)
        self._copies[id(weight)] = (weakref.ref(weight), weight._version, weight.data_ptr(), half)
        return half

    @contextlib.contextmanager
    def __call__(self, model: nn.Module) -> Iterator[None]:
        device = next(model.parameters()).device
        swapped: list[tuple[nn.Module, torch.Tensor]] = []
        try:
            if self._linears is None or self._linears[0]() is not model:
                self._linears = (weakref.ref(model), [weakref.ref(m) for m in model.modules() if isinstance(m, nn.Linear)])
            for ref in self._linears[1]:
                module = ref()
                w = module._parameters.get("weight") if module is not None else None
                if w is not None and not w.requires_grad and w.dtype == torch.float32:
                    module._parameters["weight"] = self._half(w)
                    swapped.append((module, w))
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.autocast(device_type=device.type, dtype=self.dtype))
                if device.type == "cpu":
                    from torch.nn.attention import SDPBackend, sdpa_kernel

                    stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
                yield
        finally:
            for module, w in swapped:
                module._parameters["weight"] = w

    def clear(self) -> None:
        """Drop the half-precision copies (they are remade on the next use)."""
        self._copies.clear()
