"""What every intervention method shares: its config base class, its module base class,
and the orthonormal-rows parametrization that LoReFT and BaFT use.

An intervention is an ``nn.Module`` that maps a hidden state ``h`` of shape
``(batch, seq, hidden)`` to an edited one of the same shape, touching only the positions
its ``mask`` selects. Methods know nothing of training loops, files or datasets: the
Editor calls the training hooks of :data:`CONTRACT` with an :class:`EditSession`, which
hands them the data (the requests, the encoded batch, the corpus, cached states).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["MethodConfig", "Intervention", "EditSession", "CONTRACT", "OrthonormalRows", "apply_masked"]

#: The methods the Editor, the sweeps and edit management (``repedit.edits``) call on every
#: intervention (``Intervention`` has a default for each: a no-op for the training hooks, an
#: error naming the method for edit management); docs/extending.md lists the same names.
CONTRACT: tuple[str, ...] = (
    "training_copies", "prepare_edit", "training_start", "edit_parameters", "edit_loss", "finish_edit", "ready_to_stop",
    "knobs", "set_knob",
    "list_edits", "delete_edit", "explain_edits", "merge_edits",
)


@runtime_checkable
class EditSession(Protocol):
    """What a method sees while one edit (or batch) is trained
    (:class:`repedit.editing.EditSession` implements it).

    ``requests`` are the edits of this step, ``prompts``/``owners`` the training rows and the
    request each belongs to, ``all_requests`` every request of the ``edit()`` call, ``batch``
    the encoded training batch and ``step`` the optimisation step.
    """

    requests: list
    prompts: list
    owners: list
    all_requests: list
    indices: list
    batch: Any
    step: int

    @property
    def edited(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def corpus(self) -> Any: ...

    def corpus_from(self, source: Any) -> Any: ...

    def cached(self, kind: str, build: Callable[[], dict[str, torch.Tensor]], **parts: Any) -> dict[str, torch.Tensor]: ...

    def memory(self, kind: str) -> dict: ...

    def encode(self, prompts: Sequence[str], continuations: Sequence[str] | None = None,
               subjects: Sequence[str | None] | None = None) -> Any: ...

    def attachment_of(self, module: nn.Module) -> Any: ...

    def capture(self, attachment: Any, batch: Any, edited: bool = False) -> tuple[torch.Tensor, torch.Tensor]: ...

    def site_states(self, attachment: Any, prompts: Sequence[str], subjects: Sequence[str | None] | None = None,
                    edited: bool = False) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class MethodConfig:
    """Base class of method configs: a dataclass whose fields are the constructor arguments.

    Each field carries ``metadata={"help": ...}``. Subclasses set ``method`` to their
    registry name.
    """

    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help string (what ``repedit inspect`` and the docs show)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    def resource_paths(self) -> dict[str, str]:
        """The files this config names (fields with ``metadata={"resource": True}`` that are
        set to a path): the Editor checks they exist before it attaches anything."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("resource") and isinstance(value, (str, os.PathLike)) and not str(value).startswith("<"):
                out[f.name] = str(value)
        return out

    @classmethod
    def editor_defaults(cls, method_config: dict | None = None) -> dict[str, Any]:
        """The method's tuned :class:`~repedit.editing.EditorConfig` values (``lr``,
        ``max_steps``, ``stop_prob``, ``positions``, ``augment``), used wherever the user
        leaves them at ``None``: the Python API, the CLI and the benchmarks alike.

        Example::

            BaFTConfig.editor_defaults()   # {'lr': 0.02, 'max_steps': 60, ...}
        """
        return {}

    @classmethod
    def default_layers(cls, num_layers: int, model_type: str | None = None) -> list[int] | None:
        """The layers the Editor edits when the user names none (None: a third of the depth);
        ``model_type`` (the HF config's) lets a method keep choices measured per architecture."""
        return None


def apply_masked(h: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``new`` where ``mask`` (B, T) is set, ``h`` elsewhere, bit-exactly, in ``h``'s dtype."""
    return torch.where(mask.unsqueeze(-1), new.to(h.dtype), h)


class Intervention(nn.Module):
    """Base class of intervention modules.

    Subclasses implement ``edit(h, ctx)``, which returns the edited hidden state for every
    position (the base class keeps the unmasked positions bit-identical), or override
    :meth:`forward` when they need the mask themselves (a codebook pools keys over it).

    ``ctx`` is the :class:`repedit.hooks.ForwardContext` of the current forward: it knows
    whether this is a prefill or a decoding step and keeps per-generation state.
    """

    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    #: buffers held and saved in a fixed dtype whatever the compute dtype (e.g. a large bank
    #: whose values are float16-rounded when made): ``.to(dtype)`` leaves them as they are
    storage_dtypes: ClassVar[dict[str, torch.dtype]] = {}

    def _apply(self, fn: Any, recurse: bool = True) -> "Intervention":
        super()._apply(fn, recurse)
        for name, dtype in self.storage_dtypes.items():
            buf = self._buffers.get(name)
            if buf is not None and buf.dtype != dtype:
                self._buffers[name] = buf.to(dtype)
        return self

    def __init__(self, config: MethodConfig, hidden_size: int):
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config
        self.hidden_size = int(hidden_size)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A method defines edit() (the base forward masks it) or its own forward(); catch a
        # class with neither when it is defined, not at the first forward.
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "edit") and cls.forward is Intervention.forward:
            raise TypeError(f"{cls.__name__} must define edit(h, ctx) or forward(h, mask, ctx)")

    def forward(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        return apply_masked(h, self.edit(h, ctx), mask)

    def firing_score(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        """How strongly the edit acts on each example, shape (B,): by default the largest
        relative change ``‖Φ(h) − h‖ / ‖h‖`` over the masked positions. Used for scope AUC."""
        new = self.forward(h, mask, ctx)
        rel = (new.float() - h.float()).norm(dim=-1) / h.float().norm(dim=-1).clamp_min(1e-6)
        return torch.where(mask, rel, torch.zeros_like(rel)).amax(dim=-1)

    # ------------------------------------------------------------ training hooks
    def training_copies(self, request: Any) -> list[str]:
        """Extra training prompts for ``request`` that this method generates (trained with the
        request's target, after the Editor's own copies; never the request's evaluation
        prompts). Default: none."""
        return []

    def prepare_edit(self, session: EditSession) -> None:
        """Before an edit is trained (a codebook adds an entry, BaFT allocates bases)."""

    def training_start(self, session: EditSession) -> torch.Tensor | None:
        """The first column of each row of ``session.batch`` where the edit being trained
        writes, (B,) long, or None (anywhere; the default). Called after ``prepare_edit``. A
        method that returns it must leave earlier columns as they were before training
        whenever ``TokenInfo.trained_from`` is set (the Editor sets it in training forwards);
        the Editor then computes those columns once per edit (:mod:`repedit.prefix`)."""
        return None

    def edit_parameters(self, session: EditSession) -> list[nn.Parameter]:
        """What the optimiser trains for this edit (default: every parameter)."""
        return list(self.parameters())

    def edit_loss(self, session: EditSession, outputs: Any) -> torch.Tensor | None:
        """Extra loss terms added to the target NLL (default: none)."""
        return None

    def finish_edit(self, session: EditSession, outcomes: list) -> None:
        """After training (a codebook sets its radius, null-space statistics are folded in)."""

    def ready_to_stop(self, session: EditSession) -> bool:
        """Asked (host-side, between steps) once every target is reached; ``False`` vetoes
        the early stop (default: ``True``)."""
        return True

    # ------------------------------------------------------------ inference knobs
    def knobs(self) -> dict[str, float]:
        """Inference-time settings that change without retraining: name -> current value
        (``repedit.eval.sweep``). Default: none."""
        return {}

    def set_knob(self, name: str, value: float) -> None:
        """Set one of :meth:`knobs`; an unknown name is a ValueError naming the knobs there are."""
        avail = ", ".join(sorted(self.knobs())) or "none"
        raise ValueError(f"{type(self).__name__} has no knob {name!r}; its knobs: {avail}")

    # ------------------------------------------------------------ edit management
    def _no_edits(self, what: str) -> NotImplementedError:
        method = self.config_cls.method or type(self).__name__
        return NotImplementedError(f"{type(self).__name__} ({method}) keeps no per-edit structure, so it cannot {what}; "
                                   "edit management needs a method whose edits own their parameters (baft, codebook)")

    def list_edits(self) -> list[dict]:
        """One dict per edit held: ``index``, the request's ``prompt``/``subject``/``target_new``/
        ``case_id`` where known, and method-specific statistics.

        Example::

            [e["target_new"] for e in module.list_edits()]   # ['Rome', 'English']
        """
        raise self._no_edits("list its edits")

    def delete_edit(self, index: int) -> dict:
        """Remove edit ``index`` (its parameters only) and return its :meth:`list_edits` dict;
        an IndexError names the range."""
        raise self._no_edits("delete an edit")

    def explain_edits(self, h: torch.Tensor, mask: torch.Tensor, ctx: Any = None, threshold: float = 0.5) -> list[dict]:
        """How strongly each edit acts on the first example of ``h`` (B, T, d) at the ``mask``
        positions: dicts with ``index``, ``score``, ``token`` (position), ``fired`` and the
        edit's metadata (``repedit.edits.explain`` captures ``h`` for a prompt)."""
        raise self._no_edits("explain its edits")

    def merge_edits(self, other: "Intervention") -> "Intervention":
        """A new module holding this module's edits, then ``other``'s; a ValueError names the
        setting that makes the two incompatible."""
        raise self._no_edits("merge edits")

    def export_config(self) -> MethodConfig:
        """The config to save; methods whose shapes grow (codebooks) update it here."""
        return self.config

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, config={self.config}"


class _Orthonormalize(nn.Module):
    """Parametrization: any (r, d) matrix -> the (r, d) matrix with orthonormal rows that
    QR gives (signs fixed so the map is deterministic and ``right_inverse`` is exact for
    matrices that already have orthonormal rows)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        work = x if x.dtype == torch.float64 else x.float()  # QR in >= float32
        q, r = torch.linalg.qr(work.transpose(0, 1))  # (d, r)
        sign = torch.sign(torch.diagonal(r))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        return (q * sign).transpose(0, 1).to(x.dtype)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value


class OrthonormalRows(nn.Module):
    """A trainable (rank, hidden) matrix R with orthonormal rows, kept by a torch parametrization.

    ``matrix()`` returns R. When no gradient is wanted (inference) it returns a cached copy,
    recomputed only when the underlying parameter changes, so no QR runs per forward.

    Example::

        rot = OrthonormalRows(hidden_size=64, rank=4)
        R = rot.matrix()          # (4, 64), R @ R.T == I
    """

    def __init__(self, hidden_size: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        if not 0 < rank <= hidden_size:
            raise ValueError(f"rank must be in 1..{hidden_size}, got {rank}")
        w = torch.empty(hidden_size, rank)
        nn.init.orthogonal_(w, generator=generator)
        self.weight = nn.Parameter(w.transpose(0, 1).contiguous())
        parametrize.register_parametrization(self, "weight", _Orthonormalize())
        self._cache: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    @property
    def original(self) -> torch.Tensor:
        return self.parametrizations.weight.original

    def matrix(self) -> torch.Tensor:
        orig = self.original
        if torch.is_grad_enabled() and orig.requires_grad:
            return self.weight
        key = (orig._version, orig.data_ptr(), orig.device, orig.dtype)
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                self._cache = self.weight.detach()
            self._cache_key = key
        return self._cache
