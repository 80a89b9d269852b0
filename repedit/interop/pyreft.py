"""Read and write LoReFT interventions in pyreft's (pyvene's) save layout.

pyreft's ``ReftModel.save(dir)`` (pyvene ``IntervenableModel.save``) writes:

``config.json``
    pyvene's ``IntervenableConfig`` (a transformers ``PretrainedConfig``)::

        {"intervention_constant_sources": [true], "intervention_dimensions": [576],
         "intervention_types": ["<class 'pyreft.interventions.LoreftIntervention'>"],
         "mode": "parallel",
         "representations": [[9, "block_output", "pos", 1, 4, null, ... null]],
         "sorted_keys": ["layer_9_comp_block_output_unit_pos_nunit_1#0"],
         "transformers_version": "5.23.0"}

    ``representations`` is a positional dump of pyvene's ``RepresentationConfig``
    namedtuple (:data:`REPRESENTATION_FIELDS`).
``intkey_<key>.bin``
    One per intervention, ``torch.save`` of ``LoreftIntervention.state_dict()``, which
    pyreft overrides to hold exactly three tensors::

        weight        (r, d)  W of learned_source = nn.Linear(d, r)
        bias          (r,)    b
        rotate_layer  (d, r)  R with orthonormal *columns* (the parametrized weight)

    and pyreft computes ``Φ(h) = h + (W h + b − h R) Rᵀ`` on row vectors ``h``.

repedit's LoReFT keeps R with orthonormal *rows*, ``rotate.weight`` of shape (r, d), and
computes ``h + (W h + b − h Rᵀ) R``, so ``R_repedit = rotate_layerᵀ``; W and b map
one-to-one.

What pyreft does not store, and how we rebuild it:

* **dtype**: pyreft builds ``learned_source`` in ``kwargs["dtype"]`` (bfloat16 by default)
  and ``rotate_layer`` in float32. The reader loads every tensor into a float32 LoReFT and
  :meth:`EditableModel.add` casts it to the compute dtype (``"float32"``: float32;
  ``"model"``: the model's dtype). bfloat16 weights widen to float32 exactly.
* **hidden size and rank**: from the tensor shapes (checked against the config's
  ``intervention_dimensions`` / ``low_rank_dimension`` and the model's hidden size).
* **act_fn and dropout**: not stored by pyreft; LoReFT here is the linear (default)
  variant and dropout only matters in training.
* **positions**: pyreft takes ``unit_locations`` at call time and stores none. The reader
  takes ``positions``, one :class:`~repedit.positions.Positions` rule for all or one per
  intervention. pyreft's usual LoReFT recipe (``make_last_position_supervised_data_module``,
  ``generate(..., unit_locations={"sources->base": (None, [[[last]]])},
  intervene_on_prompt=True)``) intervenes on the last prompt token during the prompt
  forward only: that is ``"last_prompt"``, the default. Every prompt token
  (``positions="l{n}"`` with n ≥ prompt length) is ``"prompt"``. repedit's ``"all"``
  acts on every prompt token and on each generated token; it is the closest rule to
  pyvene's ``generate(..., intervene_on_prompt=False)``, which intervenes at decoding
  steps. pyreft's mixed ``"f3+l3"`` (first and last n tokens) has no repedit rule. :func:`write_pyreft` records
  each intervention's rule (and name) in an extra ``"repedit"`` block of ``config.json``
  that pyvene carries along and ignores; :func:`read_pyreft` uses it when ``positions`` is
  not given.

Components: pyvene's abstract ``block_output``, ``mlp_output`` and ``attention_output``
(identical module choices to repedit's for every architecture both support), or module
paths such as ``"model.layers[3].output"`` / ``"model.layers[3].mlp.output"``. Every other
component (``block_input``, ``head_*``, ``*_input``...), unit (``h``, ``h.pos``, ``t``)
and intervention class is refused with an :class:`~repedit.adapters.AdapterError`.

Safety: every ``.bin`` is opened with ``torch.load(path, weights_only=True,
map_location="cpu")``, which refuses any pickle that would build objects other than
tensors and plain containers; nothing is attached unless every file checks out.

Example::

    from repedit.interop import read_pyreft, write_pyreft
    edited = read_pyreft("./reft-dir", model, tok)          # pyreft → repedit
    write_pyreft(edited, "./exported")                      # repedit → pyreft
    # in pyreft: reft_model = pyreft.ReftModel.load("./exported", model)
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from repedit.adapters import AdapterError, _atomic_write_bytes
from repedit.hooks import EditableModel
from repedit.interop.pyreft_files import (CONFIG_NAME, EXACT_KEY, LOREFT_CLASS, PYVENE_ABSTRACT_MODEL_TYPES,
                                       PyreftIntervention, REPRESENTATION_FIELDS, inspect_pyreft, pyvene_key,
                                       _ABSTRACT_COMPONENTS, _COMPONENT_ORDER, _keys_for)
from repedit.methods.loreft import LoReFT, LoReFTConfig
from repedit.positions import Positions
from repedit.version import __version__

logger = logging.getLogger(__name__)

__all__ = [
    "LOREFT_CLASS",
    "REPRESENTATION_FIELDS",
    "PyreftIntervention",
    "inspect_pyreft",
    "read_pyreft",
    "write_pyreft",
    "pyvene_key",
]

def _norm_path(path: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", path).strip(".")


def _site(iv: PyreftIntervention, edited: EditableModel) -> tuple[int, str]:
    """pyvene (layer, component) -> repedit (layer, component)."""
    label = f"{iv.file}: intervention {iv.index} ({iv.key})"
    comp = iv.component
    n = edited.num_layers
    if comp in _ABSTRACT_COMPONENTS:
        layer, ours = iv.layer, comp
    elif "." in comp:
        path, _, hook = comp.rpartition(".")
        if hook != "output":
            raise AdapterError(
                f"{label}: component {comp!r} hooks a module's {hook!r}; repedit supports module outputs only"
            )
        layout = edited.layout
        m = re.fullmatch(re.escape(_norm_path(layout.layers)) + r"\.(\d+)(?:\.(.+))?", _norm_path(path))
        sub = m.group(2) if m else None
        mapping = {None: "block_output", layout.mlp: "mlp_output", layout.attention: "attention_output"}
        if m is None or sub not in mapping:
            raise AdapterError(
                f"{label}: module path {comp!r} is not a decoder layer, its MLP or its attention in this model "
                f"(expected '{layout.layers}[i].output', '{layout.layers}[i].{layout.mlp}.output' or "
                f"'{layout.layers}[i].{layout.attention}.output')"
            )
        layer, ours = int(m.group(1)), mapping[sub]
    else:
        raise AdapterError(
            f"{label}: component {comp!r} is not supported; repedit reads {', '.join(_ABSTRACT_COMPONENTS)} "
            "or module paths ending in '.output'"
        )
    if not 0 <= layer < n:
        raise AdapterError(f"{label}: layer {layer} is out of range; the model has {n} decoder layers")
    return layer, ours


def _recorded_compute_dtype(directory: Path) -> str:
    from repedit.hooks import COMPUTE_DTYPES

    try:
        value = json.loads((directory / CONFIG_NAME).read_text()).get("repedit", {}).get("compute_dtype")
    except (OSError, ValueError, AttributeError):
        value = None
    return value if value in COMPUTE_DTYPES else "float32"


def _resolve_positions(positions: Any, items: list[PyreftIntervention]) -> list[Positions]:
    if positions is None:
        return [Positions.parse(iv.positions or Positions.LAST_PROMPT) for iv in items]
    if isinstance(positions, str):
        rule = Positions.parse(positions)
        return [rule] * len(items)
    rules = list(positions)
    if len(rules) != len(items):
        raise ValueError(f"positions lists {len(rules)} rules for {len(items)} interventions")
    return [Positions.parse(p) for p in rules]


def _to_module(iv: PyreftIntervention) -> LoReFT:
    """A float32 repedit LoReFT holding ``iv``'s tensors (R = rotate_layerᵀ)."""
    with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the user's RNG
        module = LoReFT(LoReFTConfig(rank=iv.rank), iv.hidden_size)

    def load(original: torch.Tensor) -> None:
        module.load_state_dict(
            {
                "rotate.parametrizations.weight.original": original.to(torch.float32).contiguous(),
                "learned_source.weight": iv.weight.to(torch.float32),
                "learned_source.bias": iv.bias.to(torch.float32),
            },
            strict=True,
        )

    if iv.rotate_original is not None:
        # repedit's unconstrained parameter, used only if it still yields the stored R (a
        # file whose rotate_layer was changed after export falls back to rotate_layer).
        load(iv.rotate_original)
        with torch.no_grad():
            # compared in the file's dtype: a bf16 export holds R rounded to bf16
            rebuilt = module.rotate.matrix().to(iv.rotate_layer.dtype).double()
            diff = (rebuilt - iv.rotate_layer.T.double()).abs().max().item()
        if diff <= 1e-5:
            return module.eval()
        logger.warning("%s: %s disagrees with rotate_layer (%.2e); using rotate_layer", iv.file, EXACT_KEY, diff)
    load(iv.rotate_layer.T)
    return module.eval()


def read_pyreft(
    directory: str | os.PathLike,
    model_or_edited: nn.Module,
    tokenizer: Any = None,
    positions: str | Positions | Sequence[str | Positions] | None = None,
    adapter: str = "default",
    prefix: str = "pyreft",
    compute_dtype: str | None = None,
    layers_path: str | None = None,
) -> EditableModel:
    """Attach the LoReFT interventions of a pyreft save directory; returns the EditableModel.

    Args:
        directory: what ``ReftModel.save(dir)`` wrote (``config.json`` + ``intkey_*.bin``).
        model_or_edited: a causal LM (wrapped here) or an :class:`EditableModel` to add to.
        tokenizer: passed to the new EditableModel when a bare model is given.
        positions: the position rule(s); pyreft stores none. ``None`` uses the rules
            :func:`write_pyreft` recorded, else ``"last_prompt"`` (pyreft's usual LoReFT
            recipe). A list gives one rule per intervention, in the config's order.
        adapter: the repedit adapter name the interventions join.
        prefix: interventions are named ``f"{prefix}_{i}"`` (unless the file records names).
        compute_dtype, layers_path: for a bare model, see :class:`EditableModel`;
            ``compute_dtype=None`` uses the one :func:`write_pyreft` recorded, else ``"float32"``.

    Nothing is attached if any check fails (:class:`AdapterError` names file and problem).

    Example::

        edited = read_pyreft("./reft-dir", model, tok, positions="last_prompt")
        out = edited.generate(["The capital of France is"], max_new_tokens=5)
    """
    items = inspect_pyreft(directory)
    rules = _resolve_positions(positions, items)
    created = not isinstance(model_or_edited, EditableModel)
    if created and compute_dtype is None:
        compute_dtype = _recorded_compute_dtype(Path(directory))
    edited = (
        EditableModel(model_or_edited, tokenizer, layers_path=layers_path, compute_dtype=compute_dtype)
        if created
        else model_or_edited
    )
    added: list[str] = []
    try:
        planned = []
        taken = set(a.name for a in edited.attachments())
        for i, (iv, rule) in enumerate(zip(items, rules)):
            layer, component = _site(iv, edited)
            if iv.hidden_size != edited.hidden_size:
                raise AdapterError(
                    f"{iv.file}: hidden size {iv.hidden_size} does not match the model's {edited.hidden_size}"
                )
            name = iv.name if iv.name and iv.name not in taken else f"{prefix}_{i}"
            if name in taken:
                raise AdapterError(f"an intervention named {name!r} is already attached; pass another prefix=")
            taken.add(name)
            planned.append((name, _to_module(iv), layer, component, rule))
        for name, module, layer, component, rule in planned:
            edited.add(name, module, layer=layer, component=component, positions=rule, adapter=adapter)
            added.append(name)
    except BaseException:
        for name in added:
            edited.remove(name)
        if created:
            edited.unwrap()
        raise
    logger.info("read %d pyreft LoReFT interventions from %s into adapter %r", len(added), directory, adapter)
    return edited


# ---------------------------------------------------------------------------- writing
def _pyvene_component(edited: EditableModel, layer: int, component: str, style: str) -> str:
    model_type = getattr(getattr(edited.model, "config", None), "model_type", None)
    abstract = style == "abstract" or (style == "auto" and model_type in PYVENE_ABSTRACT_MODEL_TYPES)
    if abstract:
        return component
    base = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", edited.layout.layers)
    sub = {"block_output": "", "mlp_output": f".{edited.layout.mlp}", "attention_output": f".{edited.layout.attention}"}
    return f"{base}[{layer}]{sub[component]}.output"


def write_pyreft(
    edited: EditableModel,
    directory: str | os.PathLike,
    adapter: str = "default",
    exact: bool = True,
    component_style: str = "auto",
) -> Path:
    """Export one adapter's LoReFT interventions in pyreft's save layout; returns the directory.

    Writes ``intkey_<key>.bin`` (``torch.save`` of a plain dict: ``weight``, ``bias``,
    ``rotate_layer``) per intervention, then ``config.json`` (pyvene's
    ``IntervenableConfig`` fields plus a ``"repedit"`` block with names and positions);
    each file goes to a temporary name first and is renamed into place.

    Args:
        exact: also store repedit's unconstrained rotation parameter (``repedit_rotate_original``,
            ignored by pyreft) so :func:`read_pyreft` rebuilds bit-identical outputs.
            With ``False`` the tensors are exactly pyreft's three; reading back gives
            outputs equal to ~1e-7 (the orthonormalisation is recomputed).
        component_style: ``"abstract"`` (``block_output``...), ``"path"``
            (``model.layers[3].output``) or ``"auto"``: abstract where pyvene 0.1.8 knows
            the architecture.

    Inactive interventions are skipped (pyreft has no off switch). Loading the result in
    pyreft: ``ReftModel.load(dir, model)`` rebuilds ``learned_source`` in bfloat16 (pyreft
    does not store the dtype); for an fp32 model cast each intervention back, or build the
    ReftConfig with ``dtype=torch.float32`` and call ``load_state_dict`` yourself.

    Example::

        write_pyreft(edited, "./exported")
        # pyreft: reft_model = pyreft.ReftModel.load("./exported", model)
    """
    if component_style not in ("auto", "abstract", "path"):
        raise ValueError(f"component_style must be 'auto', 'abstract' or 'path', got {component_style!r}")
    atts = edited.attachments(adapter)
    if not atts:
        raise ValueError(f"adapter {adapter!r} has no interventions; adapters: {edited.adapters()}")
    wrong = [f"{a.name} ({a.method})" for a in atts if a.method != "loreft" or not isinstance(a.module, LoReFT)]
    if wrong:
        raise ValueError(
            f"pyreft export supports LoReFT only (pyreft's LoreftIntervention); adapter {adapter!r} also holds {wrong}"
        )
    skipped = [a.name for a in atts if not a.active]
    if skipped:
        logger.warning("write_pyreft: skipping inactive interventions %s (pyreft cannot switch them off)", skipped)
    atts = [a for a in atts if a.active]
    if not atts:
        raise ValueError(f"adapter {adapter!r} has no active interventions to export")
    for a in atts:
        if a.module.config.dropout:
            logger.info("%s: dropout %.3g is not stored (pyreft does not store it either)", a.name, a.module.config.dropout)
    # pyvene expects representations in the model's topological order; keep same-site order.
    atts = sorted(atts, key=lambda a: (a.layer, _COMPONENT_ORDER[a.component]))

    reps, files = [], []
    for a in atts:
        comp = _pyvene_component(edited, a.layer, a.component, component_style)
        rec = [a.layer, comp, "pos", 1, a.module.config.rank] + [None] * (len(REPRESENTATION_FIELDS) - 5)
        reps.append(rec)
    keys = _keys_for([dict(zip(REPRESENTATION_FIELDS, r)) for r in reps])
    for a, key in zip(atts, keys):
        mod: LoReFT = a.module
        with torch.no_grad():
            R = mod.rotate.matrix().detach()
            state = {
                "weight": mod.learned_source.weight.detach().cpu().contiguous().clone(),
                "bias": mod.learned_source.bias.detach().cpu().contiguous().clone(),
                "rotate_layer": R.T.cpu().contiguous().clone(),
            }
            if exact:
                state[EXACT_KEY] = mod.rotate.original.detach().cpu().contiguous().clone()
        buf = io.BytesIO()
        torch.save(state, buf)
        files.append((f"intkey_{key}.bin", buf.getvalue()))

    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = None
    config = {
        "intervention_constant_sources": [True] * len(atts),
        "intervention_dimensions": [int(a.module.hidden_size) for a in atts],
        "intervention_types": [LOREFT_CLASS] * len(atts),
        "mode": "parallel",
        "representations": reps,
        "sorted_keys": keys,
        "transformers_version": tf_version,
        "repedit": {
            "repedit_version": __version__,
            "adapter": adapter,
            "names": [a.name for a in atts],
            "positions": [a.positions.value for a in atts],
            "compute_dtype": edited.compute_dtype,
            "exact": bool(exact),
        },
    }
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in out.glob("intkey_*.bin") if p.name not in {f for f, _ in files})
    if stale:
        logger.warning("%s: leaving intervention files this export does not use: %s", out, stale)
    for fname, data in files:  # tensors first, config last: an interrupted write never has a new config
        _atomic_write_bytes(out / fname, data)
    _atomic_write_bytes(out / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    logger.info("wrote %d LoReFT interventions in pyreft's layout to %s", len(atts), out)
    return out
