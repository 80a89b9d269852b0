"""Attaching interventions to a Hugging Face causal LM with forward hooks.

:class:`EditableModel` owns every handle it registers and removes exactly those (baukit's
rule): it never clears hooks it did not add, so transformers' own hooks (which gather
``output_hidden_states`` in transformers 5) keep working. Edit hooks are registered with
``prepend=True`` so the hidden states HF returns include the edit.

Per forward, a pre-hook on the decoder stack reads the attention mask and the number of
cached tokens (from shapes, never from tensor values) into a :class:`ForwardContext`; each
site hook asks it for the position mask of its rule. Nothing in the hook path calls
``.item()``, ``.cpu()`` or branches on tensor values.

The forward context, the generation state and :meth:`EditableModel.disabled` are
thread-local, so threads may run forwards (and ``generate``) on one ``EditableModel`` at the
same time and get the logits a serial run gives. Attaching, removing or switching
interventions while another thread runs a forward is not supported. ``forward``, ``generate``
and ``capture`` are in :mod:`repedit.running`.

Example::

    edited = repedit.wrap(model, tokenizer)
    edited.add("fact", build("loreft", {"rank": 4}, 576), layer=9, positions="last_prompt")
    with edited.disabled():
        base_logits = model(**inputs).logits
    model = edited.unwrap()
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from repedit.adapters.mixin import AdapterMixin
from repedit.adapters.format import COMPUTE_DTYPES, check_name
from repedit.arch import COMPONENTS, ArchLayout, get_submodule, resolve_layout
from repedit.methods.base import Intervention
from repedit.positions import Positions, current_token_info
from repedit.running import RunMixin
from repedit.sites import Attachment, ForwardContext, _find_cache, _join_output, _split_output, _ThreadState

logger = logging.getLogger(__name__)

__all__ = ["ForwardContext", "Attachment", "EditableModel", "wrap", "check_name", "COMPUTE_DTYPES"]


class EditableModel(AdapterMixin, RunMixin, nn.Module):
    """A causal LM with representation interventions attached by forward hooks.

    The base model's weights are never changed. Calling the object, or the base model
    directly, runs the model with every active intervention.

    Args:
        model: a Hugging Face causal LM (any ``nn.Module`` with a decoder ModuleList).
        tokenizer: optional; needed by :meth:`generate` with text prompts.
        layers_path: dotted path to the decoder layers, for architectures not in
            :data:`repedit.arch.ARCHITECTURES`.
        compute_dtype: ``"float32"`` or ``"model"`` (see :data:`COMPUTE_DTYPES`).

    Example::

        edited = EditableModel(model, tokenizer)
        phi = edited.add("fact", "loreft", layer=9, config={"rank": 4})
        out = edited.generate(["The capital of France is"], max_new_tokens=5)
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        layers_path: str | None = None,
        compute_dtype: str = "float32",
    ):
        super().__init__()
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
        # Keep the base model out of this module's children so state_dict/parameters()
        # of the EditableModel are the interventions only.
        object.__setattr__(self, "model", model)
        self.tokenizer = tokenizer
        self.compute_dtype = compute_dtype
        self.layout: ArchLayout = resolve_layout(model, layers_path)
        self.layers_path = layers_path
        self.interventions = nn.ModuleDict()
        self._attachments: dict[str, Attachment] = {}
        self._site_handles: dict[tuple[int, str], Any] = {}
        self._scale_handles: dict[str, Any] = {}
        self._stack_handles: list[Any] = []
        self._local = _ThreadState()
        self._memory: dict[str, dict] = {}
        self._attached = True
        self._install_stack_hooks()

    # ------------------------------------------------------------------ hooks
    @property
    def _ctx(self) -> ForwardContext | None:
        """The calling thread's current forward context (None outside a forward)."""
        return self._local.ctx

    def _stack_module(self) -> nn.Module:
        path = self.layout.layers.rsplit(".", 1)
        return get_submodule(self.model, path[0]) if len(path) == 2 else self.model

    def _install_stack_hooks(self) -> None:
        stack = self._stack_module()
        self._stack_handles.append(stack.register_forward_pre_hook(self._pre_forward, with_kwargs=True, prepend=True))
        self._stack_handles.append(stack.register_forward_hook(self._post_forward, always_call=True))

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = input_ids if input_ids is not None else embeds
        local = self._local
        if ref is None:
            local.ctx = None
            return
        batch, new = ref.shape[0], ref.shape[1]
        attn = kwargs.get("attention_mask")
        if isinstance(attn, torch.Tensor) and attn.dim() == 2:
            past = attn.shape[1] - new
        else:
            cache = _find_cache(kwargs)
            past = int(cache.get_seq_length()) if cache is not None else 0
            attn = torch.ones(batch, past + new, dtype=torch.long, device=ref.device)
        if past == 0:
            local.gen_state = {}
            local.prompt_width = attn.shape[1]
        local.ctx = ForwardContext(attn, past, local.prompt_width, current_token_info(), local.gen_state)

    def _post_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._local.ctx = None

    def abort_forward(self) -> None:
        """Forget the calling thread's forward context (a forward stopped early by an exception)."""
        self._local.ctx = None

    def _make_site_hook(self, site: tuple[int, str]):
        def hook(module: nn.Module, args: tuple, output: Any):
            local = self._local
            ctx = local.ctx
            probe = local.probe if local.probe is not None and local.probe.site == site else None
            if probe is None and (local.disabled or ctx is None):
                return None
            h, rest = _split_output(output)
            changed = False
            for att in tuple(self._attachments.values()):
                if att.site != site:
                    continue
                if probe is not None and probe.before == att.name:
                    probe.grab(h, ctx)  # the states entering this intervention
                    probe = None
                if not att.active or local.disabled or ctx is None:
                    continue
                h = att.module(h, ctx.mask(att.positions, h.device), ctx)
                changed = True
            if probe is not None:
                probe.grab(h, ctx)  # the site's output after its interventions
            return _join_output(h, rest) if changed else None

        return hook

    @staticmethod
    def _scale_hook(att: Attachment):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if att.scale == 1.0 or not isinstance(output, torch.Tensor):
                return None
            h = args[0].to(output.dtype)
            return h + (output - h) * att.scale

        return hook

    def _ensure_site(self, site: tuple[int, str]) -> None:
        if site in self._site_handles:
            return
        target = self.layout.component(self.model, site[0], site[1])
        self._site_handles[site] = target.register_forward_hook(self._make_site_hook(site), prepend=True)

    def _drop_site_if_unused(self, site: tuple[int, str]) -> None:
        if any(a.site == site for a in self._attachments.values()):
            return
        handle = self._site_handles.pop(site, None)
        if handle is not None:
            handle.remove()

    # ---------------------------------------------------------- interventions
    @property
    def hidden_size(self) -> int:
        cfg = getattr(self.model, "config", None)
        cfg = getattr(cfg, "text_config", None) or cfg
        for key in ("hidden_size", "n_embd", "d_model"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return int(self.layout.layer(self.model, 0).parameters().__next__().shape[-1])

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers(self.model)

    def _site_device_dtype(self, layer: int, component: str) -> tuple[torch.device, torch.dtype]:
        mod = self.layout.component(self.model, layer, component)
        p = next(mod.parameters(), None)
        if p is None:
            p = next(self.model.parameters())
        return p.device, p.dtype

    def add(
        self,
        name: str,
        intervention: Intervention | str,
        layer: int,
        component: str = "block_output",
        positions: str | Positions = Positions.LAST_PROMPT,
        config: Any = None,
        adapter: str = "default",
    ) -> Intervention:
        """Attach an intervention (a module, or a registered method name plus config).

        The module is moved to its layer's device and to the compute dtype, and put in eval
        mode (inference knobs such as BaFT's ``gate_shift`` apply; the Editor switches it to
        training mode only while it trains); several interventions may share a site, and run
        in the order they were added.
        """
        from repedit.methods import build, get_method

        check_name(name)
        check_name(adapter, "adapter")
        if name in self._attachments:
            raise ValueError(f"an intervention named {name!r} is already attached")
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; choose one of: {', '.join(COMPONENTS)}")
        n = self.num_layers
        if not isinstance(layer, int) or isinstance(layer, bool) or not -n <= layer < n:
            raise ValueError(f"layer must be an int in [0, {n}), got {layer!r}")
        layer = layer % n
        if isinstance(intervention, str):
            intervention = build(intervention, config, self.hidden_size)
        if not isinstance(intervention, Intervention):
            raise TypeError(f"expected an Intervention or a method name, got {type(intervention).__name__}")
        method = type(intervention).config_cls.method or get_method_name(intervention)
        device, dtype = self._site_device_dtype(layer, component)
        intervention.to(device=device, dtype=torch.float32 if self.compute_dtype == "float32" else dtype)
        intervention.eval()
        att = Attachment(name, intervention, method, layer, component, Positions.parse(positions), adapter)
        self.interventions[name] = intervention
        self._attachments[name] = att
        if self._attached:
            self._ensure_site(att.site)
            self._scale_handles[name] = intervention.register_forward_hook(self._scale_hook(att))
        return intervention

    def remove(self, name: str) -> Intervention:
        """Detach one intervention and return its module."""
        att = self._attachments.pop(name, None)
        if att is None:
            raise KeyError(f"no intervention named {name!r}; attached: {sorted(self._attachments)}")
        del self.interventions[name]
        handle = self._scale_handles.pop(name, None)
        if handle is not None:
            handle.remove()
        self._drop_site_if_unused(att.site)
        return att.module

    def delete_adapter(self, adapter: str) -> list[str]:
        """Detach every intervention of one adapter (peft's ``delete_adapter``); returns their names.

        Example::

            edited.delete_adapter("second")   # ["b"]
        """
        names = [a.name for a in self.attachments(adapter)]
        if not names:
            raise KeyError(f"no adapter named {adapter!r}; adapters: {self.adapters()}")
        for name in names:
            self.remove(name)
        return names

    def attachments(self, adapter: str | None = None) -> list[Attachment]:
        """The attached interventions (of one adapter, if named), in order."""
        return [a for a in self._attachments.values() if adapter is None or a.adapter == adapter]

    def get(self, name: str) -> Attachment:
        """The attachment named ``name``; a KeyError lists the attached names.

        Example::

            edited.get("baft_L9").module.knobs()
        """
        att = self._attachments.get(name)
        if att is None:
            raise KeyError(f"no intervention named {name!r}; attached: {sorted(self._attachments)}")
        return att

    def names(self) -> list[str]:
        """The names of the attached interventions, in order."""
        return list(self._attachments)

    def __contains__(self, name: object) -> bool:
        return name in self._attachments

    def memory(self, kind: str) -> dict:
        """A dict kept as long as this object, under ``kind``: state that depends only on the
        model and outlives one Editor (a codebook's corpus bank, shared by the fresh codebooks
        of single edits in a loop)."""
        return self._memory.setdefault(kind, {})

    def adapters(self) -> list[str]:
        return sorted({a.adapter for a in self._attachments.values()})

    def set_active(self, names: Sequence[str] | None = None, adapter: str | None = None, active: bool = True) -> None:
        """Switch interventions (by name, or all of an adapter) on or off."""
        for att in self._attachments.values():
            if (names is None or att.name in names) and (adapter is None or att.adapter == adapter):
                att.active = active

    @contextlib.contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """Run the base model: ``with edited.disabled(): model(**inputs)``.

        Applies to the forwards of the calling thread only (other threads keep the edits)."""
        local = self._local
        local.disabled += 1
        try:
            yield self.model
        finally:
            local.disabled -= 1

    def unwrap(self) -> nn.Module:
        """Remove every hook this object registered and return the base model."""
        for handle in list(self._site_handles.values()) + self._stack_handles + list(self._scale_handles.values()):
            handle.remove()
        self._site_handles.clear()
        self._scale_handles.clear()
        self._stack_handles.clear()
        self._local.ctx = None
        self._attached = False
        return self.model

    def intervention_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.interventions.parameters()]

    def __repr__(self) -> str:
        rows = [
            f"  {a.name}: {a.method} @ layer {a.layer} {a.component} [{a.positions.value}] adapter={a.adapter}"
            + ("" if a.active else " (inactive)")
            for a in self._attachments.values()
        ]
        return f"EditableModel({type(self.model).__name__}, {len(rows)} interventions)" + (
            "\n" + "\n".join(rows) if rows else ""
        )


def get_method_name(module: Intervention) -> str:
    raise ValueError(f"{type(module).__name__} is not a registered method; call repedit.methods.register_method first")


def wrap(
    model: nn.Module,
    tokenizer: Any = None,
    layers_path: str | None = None,
    compute_dtype: str = "float32",
) -> EditableModel:
    """Wrap a causal LM so interventions can be attached at its decoder layers.

    Example::

        edited = repedit.wrap(model, tokenizer)
    """
    return EditableModel(model, tokenizer, layers_path=layers_path, compute_dtype=compute_dtype)
