"""Where the decoder layers and their components live, per architecture.

A small table keyed by ``config.model_type`` (TransformerLens's approach), with a fallback
that auto-detects the decoder ``ModuleList`` and an explicit dotted path for anything else.

Example::

    layout = resolve_layout(model)            # known type, or auto-detected
    layout = resolve_layout(model, layers_path="backbone.blocks")
    layer = layout.layer(model, 3)
    mlp = layout.component(model, 3, "mlp_output")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ArchLayout",
    "ARCHITECTURES",
    "COMPONENTS",
    "register_architecture",
    "resolve_layout",
    "get_submodule",
]

#: Components an intervention can sit on, and what they mean.
COMPONENTS = {
    "block_output": "the decoder layer's output: the residual stream after the layer",
    "mlp_output": "the MLP sub-layer's output, before it is added to the residual stream",
    "attention_output": "the attention sub-layer's output, before it is added to the residual stream",
}


@dataclass(frozen=True)
class ArchLayout:
    """Dotted paths to the decoder layers and, within a layer, to its attention and MLP."""

    layers: str
    attention: str = "self_attn"
    mlp: str = "mlp"

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        mod = get_submodule(model, self.layers)
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)):
            raise TypeError(f"{self.layers!r} is a {type(mod).__name__}, not a ModuleList of layers")
        return mod

    def num_layers(self, model: nn.Module) -> int:
        return len(self.layer_list(model))

    def layer(self, model: nn.Module, index: int) -> nn.Module:
        layers = self.layer_list(model)
        n = len(layers)
        if not -n <= index < n:
            raise IndexError(f"layer {index} is out of range: the model has {n} decoder layers")
        return layers[index]

    def component(self, model: nn.Module, index: int, component: str) -> nn.Module:
        layer = self.layer(model, index)
        if component == "block_output":
            return layer
        if component == "mlp_output":
            return get_submodule(layer, self.mlp)
        if component == "attention_output":
            return get_submodule(layer, self.attention)
        raise ValueError(f"unknown component {component!r}; choose one of: {', '.join(COMPONENTS)}")


_LLAMA_LIKE = ArchLayout("model.layers", "self_attn", "mlp")

#: model_type -> layout. Extend with :func:`register_architecture`.
ARCHITECTURES: dict[str, ArchLayout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": ArchLayout("model.layers", "self_attn", "block_sparse_moe"),
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gemma3": ArchLayout("model.language_model.layers", "self_attn", "mlp"),
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "gpt2": ArchLayout("transformer.h", "attn", "mlp"),
    "gptj": ArchLayout("transformer.h", "attn", "mlp"),
    "gpt_neo": ArchLayout("transformer.h", "attn", "mlp"),
    "gpt_neox": ArchLayout("gpt_neox.layers", "attention", "mlp"),
}


def register_architecture(model_type: str, layout: ArchLayout) -> None:
    """Add or replace the layout for a ``config.model_type``.

    Example::

        register_architecture("my_arch", ArchLayout("backbone.blocks", "attn", "ffn"))
    """
    ARCHITECTURES[model_type] = layout


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b[3].c`` from ``"a.b.3.c"`` or ``"a.b[3].c"``."""
    mod = root
    for part in path.replace("[", ".").replace("]", "").split("."):
        if not part:
            continue
        if part.isdigit() and isinstance(mod, (nn.ModuleList, nn.Sequential)):
            mod = mod[int(part)]
        elif hasattr(mod, part):
            mod = getattr(mod, part)
        else:
            raise AttributeError(f"{type(mod).__name__} has no submodule {part!r} (path {path!r})")
    return mod


def _auto_detect(model: nn.Module) -> ArchLayout | None:
    """The ModuleList whose length equals the config's layer count (the longest one if unsure)."""
    cfg = getattr(model, "config", None)
    want = None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        want = want or getattr(cfg, key, None)
    best: tuple[int, str] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            if want is not None and len(mod) == want:
                return _with_subparts(ArchLayout(name), mod[0])
            if best is None or len(mod) > best[0]:
                best = (len(mod), name)
    if best is not None and want is None:
        return _with_subparts(ArchLayout(best[1]), get_submodule(model, best[1])[0])
    return None


def _with_subparts(layout: ArchLayout, layer: nn.Module) -> ArchLayout:
    attn = next((n for n in ("self_attn", "attn", "attention", "self_attention") if hasattr(layer, n)), "self_attn")
    mlp = next((n for n in ("mlp", "feed_forward", "ffn", "block_sparse_moe") if hasattr(layer, n)), "mlp")
    return ArchLayout(layout.layers, attn, mlp)


def resolve_layout(model: nn.Module, layers_path: str | None = None) -> ArchLayout:
    """The layout of ``model``: explicit path, else the table, else auto-detection.

    Raises ``ValueError`` naming the supported types and how to pass a path if nothing fits.
    """
    if layers_path is not None:
        layout = ArchLayout(layers_path)
        layers = layout.layer_list(model)
        return _with_subparts(layout, layers[0])
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type in ARCHITECTURES:
        layout = ARCHITECTURES[model_type]
        try:
            layout.layer_list(model)
            return layout
        except (AttributeError, TypeError):
            logger.debug("table layout for %s did not match %s; auto-detecting", model_type, type(model).__name__)
    layout = _auto_detect(model)
    if layout is not None:
        logger.info("auto-detected decoder layers of %s at %r", model_type or type(model).__name__, layout.layers)
        return layout
    supported = ", ".join(sorted(ARCHITECTURES))
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__} (model_type={model_type!r}). "
        f"Supported model types: {supported}. Pass layers_path='dotted.path.to.layers' to wrap(), "
        f"or call repedit.arch.register_architecture()."
    )
