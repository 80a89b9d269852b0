"""The method contract: docs/extending.md lists exactly the hooks Intervention declares,
and methods import only what the contract allows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from repedit.methods.base import CONTRACT, Intervention, MethodConfig

ROOT = Path(__file__).resolve().parents[1]


def doc_contract() -> list[str]:
    text = (ROOT / "docs" / "extending.md").read_text()
    section = text.split("<!-- contract:", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `(\w+)\(", section, re.M)


def test_doc_lists_the_contract():
    assert doc_contract() == list(CONTRACT)
    for name in CONTRACT:
        assert name in Intervention.__dict__, name


class _Plain(Intervention):
    def edit(self, h, ctx=None):
        return h


def test_contract_defaults():
    mod = _Plain(MethodConfig(), 4)
    mod.bias = torch.nn.Parameter(torch.zeros(4))
    assert mod.prepare_edit(None) is None
    assert mod.edit_parameters(None) == [mod.bias]
    assert mod.edit_loss(None, None) is None
    assert mod.finish_edit(None, []) is None
    assert mod.ready_to_stop(None) is True
    assert mod.knobs() == {}
    with pytest.raises(ValueError, match="no knob 'x'; its knobs: none"):
        mod.set_knob("x", 1.0)
    # edit management: a clear error naming the method, for a method without per-edit structure
    for call in (mod.list_edits, lambda: mod.delete_edit(0), lambda: mod.explain_edits(None, None), lambda: mod.merge_edits(mod)):
        with pytest.raises(NotImplementedError, match=r"_Plain \(_Plain\) keeps no per-edit structure"):
            call()


def test_editor_session_satisfies_the_protocol():
    from repedit.editing import EditSession as Session

    for name in ("edited", "tokenizer", "device", "corpus", "corpus_from", "cached", "memory", "encode", "site_states"):
        assert hasattr(Session, name), name


ALLOWED = ("torch", "repedit.methods", "repedit.positions", "repedit.requests", "__future__")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")


@pytest.mark.parametrize("path", sorted((ROOT / "repedit" / "methods").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_methods_import_only_methods_positions_requests_torch(path):
    """A method gets its data from the session: it imports no cache, corpus, hooks or adapters."""
    import sys

    bad = [name for name in _imports(path)
           if not (name.split(".")[0] in sys.stdlib_module_names
                   or any(name == a or name.startswith(a + ".") for a in ALLOWED))]
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "repedit" / "adapters").rglob("*.py")), ids=lambda p: p.name)
def test_adapters_do_not_import_hooks(path):
    """The dependency is one-way: hooks (EditableModel) uses the adapter files, never the reverse."""
    assert not [n for n in _imports(path) if n.startswith(("repedit.hooks", "repedit.editing"))]
