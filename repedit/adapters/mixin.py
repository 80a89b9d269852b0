"""Saving and loading adapters as methods of the wrapped model (peft's ``PeftAdapterMixin``):
``save_pretrained``, ``load_adapter`` and ``from_pretrained``. :class:`repedit.hooks.EditableModel`
inherits them; this module imports nothing of hooks.
"""

from __future__ import annotations

from typing import Any

from repedit.adapters import AdapterError, attach_adapter, read_adapter_config, save_adapter
from repedit.adapters.format import check_name

__all__ = ["AdapterMixin"]


class AdapterMixin:
    """Adapter files for a class with ``adapters()``, ``unwrap()`` and a
    ``(model, tokenizer, layers_path=, compute_dtype=)`` constructor."""

    def save_pretrained(self, directory: str, adapter: str | None = None, **kwargs: Any) -> None:
        """Save adapters: ``default`` at the top of ``directory``, others in subfolders."""
        if adapter is not None:
            check_name(adapter, "adapter")
        names = [adapter] if adapter is not None else self.adapters()
        if not names:
            raise ValueError("nothing to save: no interventions are attached")
        for name in names:
            save_adapter(self, directory, adapter=name, **kwargs)

    def load_adapter(self, directory: str, adapter: str | None = None, **kwargs: Any) -> list[Any]:
        """Load a saved adapter onto this model, named ``adapter`` (peft's ``load_adapter``;
        see :func:`repedit.adapters.attach_adapter`).

        Example::

            edited.load_adapter("eiffel-rome")
        """
        return attach_adapter(self, directory, adapter=adapter, **kwargs)

    @classmethod
    def from_pretrained(cls, model: Any, directory: str, tokenizer: Any = None, **kwargs: Any) -> Any:
        """Wrap ``model`` and load the adapter saved in ``directory`` onto it (peft's
        ``from_pretrained``; ``repedit.load_adapter`` is the same call).

        Example::

            edited = EditableModel.from_pretrained(model, "eiffel-rome", tokenizer=tok)
        """
        cfg = read_adapter_config(directory, adapter=kwargs.get("adapter"))
        try:
            edited = cls(model, tokenizer, layers_path=cfg.layers_path, compute_dtype=cfg.compute_dtype)
        except (AttributeError, IndexError, TypeError) as err:
            raise AdapterError(f"adapter {directory}: its layers_path {cfg.layers_path!r} does not fit the model ({err})") from None
        try:
            edited.load_adapter(directory, **kwargs)
        except BaseException:
            edited.unwrap()  # a failed load leaves no hook of ours on the model
            raise
        return edited
