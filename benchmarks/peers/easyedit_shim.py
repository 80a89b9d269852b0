"""Make ``import easyeditor`` work without EasyEdit's optional (multimodal, API, steering) packages.

``easyeditor/__init__.py`` imports every editor, trainer and evaluator it has, and those import
timm, torchvision, OpenCV, PyAV, OpenAI and Zhipu clients, bitsandbytes and more at module level.
None of them is on the path that edits a causal LM with GRACE, ROME, MEMIT or AlphaEdit, and
several would pull a different torch. :func:`install` registers an import hook that answers
such imports, when the package is not installed, with a placeholder module whose attributes are
placeholder classes; using one of them fails loudly (``RuntimeError``) rather than silently.

This patches nothing in EasyEdit's files: it only changes what ``import`` returns for packages
that are absent, and only when EasyEdit's own code asks (other libraries probing for an optional
package still find it absent). Which names were stubbed is recorded by :func:`stubbed` (and in the results).

Example::

    >>> from benchmarks.peers import easyedit_shim
    >>> easyedit_shim.install()                          # before ``import easyeditor``
    >>> import importlib; m = importlib.import_module("zhipuai")   # doctest: +SKIP
    >>> easyedit_shim.stubbed()                          # doctest: +SKIP
    ['zhipuai']
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types

logger = logging.getLogger(__name__)

#: Packages (and removed modules) EasyEdit imports at module level but never uses to edit a causal LM.
OPTIONAL = (
    "timm", "torchvision", "cv2", "av", "qwen_vl_utils", "zhipuai", "openai", "fairscale", "iopath",
    "bitsandbytes", "sentence_transformers", "rouge", "evaluate", "diffusers", "knowledge_neurons",
    "slack_sdk", "seaborn", "FOCS",
    # removed from transformers 5.x; imported by UnKE / AnyEdit, which are not run here
    "transformers.modeling_attn_mask_utils",
)

_STUBBED: set[str] = set()


class _StubMeta(type):
    """Metaclass of placeholder classes: any attribute is another placeholder class."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


def _placeholder(name: str) -> type:
    """A class that can be subclassed, decorated with and referenced, but not used."""

    def _fail(self, *args, **kwargs):
        raise RuntimeError(f"{name} comes from a package stubbed by benchmarks/peers/easyedit_shim.py")

    return _StubMeta(name.rsplit(".", 1)[-1], (), {"__init__": _fail, "__call__": _fail,
                                                  "__qualname__": name, "__module__": "easyedit_shim"})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{self.__name__}.{name}")


def _imported_by_easyeditor() -> bool:
    """Whether the code asking for the module (first frame outside importlib) is EasyEdit's.

    Other libraries probe optional packages with ``importlib.util.find_spec`` (transformers
    does for torchvision); they must keep seeing them as absent.
    """
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith("<frozen importlib") or name == __file__ or "importlib" in name):
            return "/easyeditor/" in name.replace("\\", "/")
        frame = frame.f_back
    return False


def _entry(fullname: str) -> str | None:
    """The OPTIONAL entry ``fullname`` is, or is inside of."""
    for entry in OPTIONAL:
        if fullname == entry or fullname.startswith(entry + "."):
            return entry
    return None


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        entry = _entry(fullname)
        if entry is None:
            return None
        if entry not in _STUBBED:
            if fullname != entry or not _imported_by_easyeditor():
                return None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                try:
                    if finder.find_spec(fullname, path, target) is not None:
                        return None  # really installed: use it
                except Exception:  # noqa: BLE001
                    continue
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module):
        entry = _entry(module.__name__)
        if entry not in _STUBBED:
            logger.info("stubbing absent optional module %s", entry)
        _STUBBED.add(entry)


def install() -> None:
    """Put the placeholder finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def stubbed() -> list[str]:
    """Top-level packages answered with placeholders so far."""
    return sorted(_STUBBED)
