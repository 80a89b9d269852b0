"""repedit: edit what a language model knows through representation interventions.

Example::

    import repedit
    model, tok = repedit.models.load("smollm2-135m")
    editor = repedit.Editor(model, tok, repedit.EditorConfig(method="loreft"))
    result = editor.edit(repedit.EditRequest(prompt="The Eiffel Tower is in", target_new="Rome",
                                             subject="Eiffel Tower"))
    result.save_pretrained("eiffel-rome")
    edited = repedit.load_adapter(model, "eiffel-rome", tokenizer=tok)
"""

from __future__ import annotations

from typing import Any

from repedit.adapters import AdapterError, fingerprint
from repedit.editing import EditResult, Editor, EditorConfig
from repedit.hooks import EditableModel, wrap
from repedit.methods import available_methods, register_method
from repedit.positions import Positions, token_info
from repedit.requests import EditRequest, LocalityPrompt
from repedit.version import __version__

__all__ = [
    "__version__",
    "models",
    "wrap",
    "EditableModel",
    "Editor",
    "EditorConfig",
    "EditResult",
    "EditRequest",
    "LocalityPrompt",
    "Positions",
    "token_info",
    "load_adapter",
    "evaluate",
    "fingerprint",
    "AdapterError",
    "available_methods",
    "register_method",
]


def load_adapter(model: Any, directory: str, tokenizer: Any = None, **kwargs: Any) -> EditableModel:
    """Wrap ``model`` and load the adapter saved in ``directory`` (peft's ``from_pretrained``).

    Example::

        edited = repedit.load_adapter(model, "eiffel-rome", tokenizer=tok)
    """
    return EditableModel.from_pretrained(model, directory, tokenizer=tokenizer, **kwargs)


def evaluate(edited: EditableModel, requests: Any, protocols: Any = None, **kwargs: Any) -> Any:
    """Score ``edited``'s edits on ``requests`` before and after (the edits switched off, then on):
    an :class:`~repedit.eval.harness.EvalReport` with EasyEdit-style records and a summary whose
    headline is the strict metrics (``repedit.eval.harness.evaluate`` takes the same options).

    Example::

        report = repedit.evaluate(edited, requests, protocols=("teacher_forced", "generation"))
        print(report.table())
    """
    from repedit.eval.harness import DEFAULT_PROTOCOLS
    from repedit.eval.harness import evaluate as _evaluate

    return _evaluate(edited, None, requests, DEFAULT_PROTOCOLS if protocols is None else protocols, **kwargs)


def __getattr__(name: str) -> Any:
    # ``repedit.models`` imports lazily: loading GGUF support is not needed to edit.
    if name == "models":
        import importlib

        return importlib.import_module("repedit.models")
    raise AttributeError(f"module 'repedit' has no attribute {name!r}")
