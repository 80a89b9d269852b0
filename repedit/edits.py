"""Managing edits across adapters: merging two saved adapters into one.

Example::

    from repedit.edits import merge_adapters
    merge_adapters(model, "edits-a", "edits-b", "edits-ab")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repedit.hooks import EditableModel
from repedit.methods.codebook import Codebook
from repedit.methods.codebook.manage import merge

__all__ = ["merge_adapters"]


def merge_adapters(model: Any, dir_a: str, dir_b: str, out_dir: str, tokenizer: Any = None) -> Path:
    """Merge two saved codebook adapters (same base model) into a new adapter directory.

    Example::

        merge_adapters(model, "edits-a", "edits-b", "edits-ab")


    Codebooks with the same intervention name (same layer) are merged entry-wise; other
    interventions are copied from ``dir_a`` then ``dir_b``.
    """
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
