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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from repedit.adapters import AdapterError, _atomic_write_bytes
from repedit.hooks import EditableModel
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

CONFIG_NAME = "config.json"
#: How pyvene writes the intervention class in ``intervention_types``.
LOREFT_CLASS = "<class 'pyreft.interventions.LoreftIntervention'>"
#: Classes whose saved tensors and forward are LoReFT's (IdentityInit differs only at init).
_LOREFT_CLASSES = {
    LOREFT_CLASS,
    "<class 'pyreft.interventions.LoreftIntervention_IdentityInit'>",
}
#: pyvene 0.1.8's ``RepresentationConfig`` fields, in the order ``config.json`` dumps them
#: (older pyvene has 13: no ``latent_dim``).
REPRESENTATION_FIELDS = (
    "layer",
    "component",
    "unit",
    "max_number_of_units",
    "low_rank_dimension",
    "intervention_type",
    "intervention",
    "subspace_partition",
    "group_key",
    "intervention_link_key",
    "moe_key",
    "source_representation",
    "hidden_source_representation",
    "latent_dim",
)
_STATE_KEYS = ("weight", "bias", "rotate_layer")
#: Extra tensor :func:`write_pyreft` adds so that a repedit → pyreft → repedit round trip is
#: bit-exact: the unconstrained parameter behind repedit's orthonormal R. pyreft's
#: ``load_state_dict`` ignores it (``strict=False``) and its ``save`` drops it.
EXACT_KEY = "repedit_rotate_original"
_ABSTRACT_COMPONENTS = ("block_output", "mlp_output", "attention_output")
_COMPONENT_ORDER = {"attention_output": 0, "mlp_output": 1, "block_output": 2}
#: ``config.model_type``s whose abstract component names pyvene 0.1.8 resolves; for other
#: models :func:`write_pyreft` writes module paths (pyvene raises ``KeyError`` otherwise).
PYVENE_ABSTRACT_MODEL_TYPES = frozenset(
    {"gpt2", "llama", "mistral", "gemma", "gemma2", "gpt_neo", "gpt_neox", "olmo", "qwen2"}
)


@dataclass
class PyreftIntervention:
    """One LoReFT intervention read from a pyreft directory (tensors in pyreft's layout)."""

    index: int
    key: str
    file: Path
    layer: int
    component: str
    unit: str
    intervention_type: str
    weight: torch.Tensor  # (r, d)
    bias: torch.Tensor  # (r,)
    rotate_layer: torch.Tensor  # (d, r), orthonormal columns
    rotate_original: torch.Tensor | None = None  # (r, d), written by repedit only
    name: str | None = None  # recorded by write_pyreft
    positions: str | None = None  # recorded by write_pyreft

    @property
    def rank(self) -> int:
        return int(self.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])


# --------------------------------------------------------------------------- helpers
def pyvene_key(layer: int, component: str, unit: str = "pos", max_number_of_units: int = 1) -> str:
    """pyvene's intervention key without the ``#n`` collision suffix (``_get_representation_key``).

    Example::

        pyvene_key(1, "block_output")   # 'layer_1_comp_block_output_unit_pos_nunit_1'
    """
    u = str(unit).replace(".", "_")
    if "." in component:
        return f"comp_{component.replace('.', '_')}_unit_{u}_nunit_{max_number_of_units}"
    return f"layer_{layer}_comp_{component}_unit_{u}_nunit_{max_number_of_units}"


def _keys_for(reprs: Sequence[Mapping[str, Any]]) -> list[str]:
    counter: dict[str, int] = {}
    keys = []
    for r in reprs:
        proposal = pyvene_key(r["layer"], r["component"], r["unit"], r["max_number_of_units"])
        counter[proposal] = counter.get(proposal, -1) + 1
        keys.append(f"{proposal}#{counter[proposal]}")
    return keys


def _representation(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        unknown = sorted(set(raw) - set(REPRESENTATION_FIELDS))
        if unknown:
            raise AdapterError(f"{where}: unknown RepresentationConfig fields {unknown}")
        rec = dict(raw)
    elif isinstance(raw, (list, tuple)):
        if len(raw) > len(REPRESENTATION_FIELDS):
            raise AdapterError(
                f"{where}: has {len(raw)} fields, more than pyvene's RepresentationConfig "
                f"({len(REPRESENTATION_FIELDS)}: {', '.join(REPRESENTATION_FIELDS)})"
            )
        rec = dict(zip(REPRESENTATION_FIELDS, raw))
    else:
        raise AdapterError(f"{where}: must be a list (pyvene's RepresentationConfig dump) or an object, got {raw!r}")
    defaults = {"layer": 0, "component": "block_output", "unit": "pos", "max_number_of_units": 1}
    for k, v in defaults.items():
        if rec.get(k) is None:
            rec[k] = v
    if isinstance(rec["layer"], bool) or not isinstance(rec["layer"], int):
        raise AdapterError(f"{where}: 'layer' must be an integer, got {rec['layer']!r}")
    if not isinstance(rec["component"], str) or not rec["component"]:
        raise AdapterError(f"{where}: 'component' must be a non-empty string, got {rec['component']!r}")
    if not isinstance(rec["unit"], str):
        raise AdapterError(f"{where}: 'unit' must be a string, got {rec['unit']!r}")
    lrd = rec.get("low_rank_dimension")
    if lrd is not None and (isinstance(lrd, bool) or not isinstance(lrd, int) or lrd <= 0):
        raise AdapterError(f"{where}: 'low_rank_dimension' must be a positive integer, got {lrd!r}")
    return rec


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a dict of tensors, or an AdapterError naming the file."""
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # weights_only raises UnpicklingError; torn files raise others
        # Keep torch's diagnosis (e.g. "unsupported GLOBAL posix.system"), not its advice to
        # retry with weights_only=False.
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next(
            (ln for ln in lines if ln.startswith(("Trying to load", "Unsupported", "Unsupported operand"))),
            lines[-1] if len(lines) == 1 else type(err).__name__,
        )
        raise AdapterError(
            f"{path}: refused to load: not a plain tensor file that torch.load(weights_only=True) "
            f"accepts ({type(err).__name__}: {detail}). Never open such a file with weights_only=False "
            "unless you trust its source."
        ) from None
    if not isinstance(obj, Mapping):
        raise AdapterError(f"{path}: expected a dict of tensors (LoreftIntervention.state_dict()), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise AdapterError(f"{path}: expected a dict of str -> tensor; bad entries: {bad[:5]}")
    return dict(obj)


def _check_tensors(state: dict[str, torch.Tensor], path: Path, rank: int | None, dim: int | None) -> None:
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise AdapterError(
            f"{path}: missing {missing}; a LoreftIntervention state dict holds {list(_STATE_KEYS)} "
            f"(found {sorted(state)})"
        )
    extra = sorted(set(state) - set(_STATE_KEYS) - {EXACT_KEY})
    if extra:
        logger.warning("%s: ignoring tensors pyreft's LoreftIntervention does not use: %s", path, extra)
    w, b, rot = state["weight"], state["bias"], state["rotate_layer"]
    for k in (*_STATE_KEYS, EXACT_KEY):
        t = state.get(k)
        if t is not None and not t.is_floating_point():
            raise AdapterError(f"{path}: tensor {k!r} has dtype {t.dtype}, expected a floating-point tensor")
    if w.dim() != 2:
        raise AdapterError(f"{path}: 'weight' must be (rank, hidden), got shape {tuple(w.shape)}")
    r, d = w.shape
    if tuple(b.shape) != (r,):
        raise AdapterError(f"{path}: 'bias' has shape {tuple(b.shape)}, expected ({r},) to match 'weight' {tuple(w.shape)}")
    if tuple(rot.shape) != (d, r):
        raise AdapterError(
            f"{path}: 'rotate_layer' has shape {tuple(rot.shape)}, expected (hidden, rank) = ({d}, {r}) "
            f"to match 'weight' {tuple(w.shape)}"
        )
    if not 0 < r <= d:
        raise AdapterError(f"{path}: rank {r} must be in 1..hidden size {d}")
    if rank is not None and rank != r:
        raise AdapterError(f"{path}: config says low_rank_dimension={rank}, but the tensors have rank {r}")
    if dim is not None and dim != d:
        raise AdapterError(f"{path}: config says intervention_dimensions={dim}, but the tensors have hidden size {d}")
    for k in (*_STATE_KEYS, EXACT_KEY):
        t = state.get(k)
        if t is not None and not torch.isfinite(t).all():
            raise AdapterError(f"{path}: tensor {k!r} has NaN or infinite values")
    rf = rot.double()
    err = (rf.T @ rf - torch.eye(r, dtype=torch.float64)).abs().max().item()
    tol = 1e-4 if rot.dtype in (torch.float32, torch.float64) else 5e-2
    if err > tol:
        raise AdapterError(
            f"{path}: 'rotate_layer' columns are not orthonormal (max |RᵀR − I| = {err:.2e} > {tol:g}); "
            "pyreft saves the orthogonally parametrized weight, so this file is corrupt or not LoReFT"
        )
    orig = state.get(EXACT_KEY)
    if orig is not None and tuple(orig.shape) != (r, d):
        raise AdapterError(f"{path}: {EXACT_KEY!r} has shape {tuple(orig.shape)}, expected ({r}, {d})")


def _repedit_block(raw: Mapping[str, Any], n: int, where: Path) -> tuple[list[str | None], list[str | None]]:
    block = raw.get("repedit")
    if block is None:
        return [None] * n, [None] * n
    try:
        names = list(block.get("names") or [None] * n)
        positions = list(block.get("positions") or [None] * n)
        if len(names) != n or len(positions) != n:
            raise ValueError(f"lists of length {len(names)}/{len(positions)} for {n} interventions")
        for p in positions:
            if p is not None:
                Positions.parse(p)
        for name in names:
            if name is not None and (not isinstance(name, str) or not name or "." in name or "/" in name):
                raise ValueError(f"invalid intervention name {name!r}")
        return names, positions
    except (AttributeError, TypeError, ValueError) as err:
        logger.warning("%s: ignoring a malformed 'repedit' block (%s)", where, err)
        return [None] * n, [None] * n


# ---------------------------------------------------------------------------- reading
def inspect_pyreft(directory: str | os.PathLike) -> list[PyreftIntervention]:
    """Parse and check a pyreft directory without a model: its interventions and tensors.

    Raises :class:`AdapterError` naming the file and the problem for anything that is not a
    LoReFT save repedit can read.

    Example::

        for iv in inspect_pyreft("./reft-dir"):
            print(iv.key, iv.layer, iv.component, iv.rank, iv.hidden_size)
    """
    where = Path(directory)
    cfg_path = where / CONFIG_NAME
    if not where.is_dir():
        raise AdapterError(f"pyreft directory {where} does not exist")
    if not cfg_path.is_file():
        bins = sorted(p.name for p in where.glob("intkey_*.bin"))
        hint = (
            f" It holds {bins[:3]} without a config: pyreft's ReftTrainer checkpoints "
            "(save_intervention) store no config; rebuild it with ReftModel.save() or write "
            "config.json as pyvene's IntervenableConfig."
            if bins
            else ""
        )
        raise AdapterError(f"{cfg_path} does not exist: not a pyreft/pyvene save.{hint}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{cfg_path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{cfg_path} must hold a JSON object")
    reps_raw = raw.get("representations")
    if isinstance(reps_raw, (dict,)) or (isinstance(reps_raw, list) and reps_raw and not isinstance(reps_raw[0], (list, dict))):
        reps_raw = [reps_raw]  # a single representation
    if not isinstance(reps_raw, list) or not reps_raw:
        raise AdapterError(f"{cfg_path}: 'representations' must be a non-empty list, got {reps_raw!r}")
    reps = [_representation(r, f"{cfg_path}: representations[{i}]") for i, r in enumerate(reps_raw)]
    n = len(reps)

    types = raw.get("intervention_types")
    if isinstance(types, str):
        types = [types] * n
    if not isinstance(types, list) or len(types) != n:
        raise AdapterError(
            f"{cfg_path}: 'intervention_types' must list one class per representation ({n}), got {types!r}"
        )
    for i, t in enumerate(types):
        if t not in _LOREFT_CLASSES:
            raise AdapterError(
                f"{cfg_path}: intervention {i} is {t!r}; repedit reads only LoReFT "
                f"({LOREFT_CLASS}). NoReFT, DiReFT, ConsReFT and other pyvene interventions are not supported."
            )
    dims = raw.get("intervention_dimensions")
    if dims is None:
        dims = [None] * n
    if not isinstance(dims, list) or len(dims) != n:
        raise AdapterError(f"{cfg_path}: 'intervention_dimensions' must list one size per representation ({n}), got {dims!r}")
    for i, dm in enumerate(dims):
        if dm is not None and (isinstance(dm, bool) or not isinstance(dm, int)):
            raise AdapterError(f"{cfg_path}: intervention_dimensions[{i}] must be an integer, got {dm!r}")

    keys = _keys_for(reps)
    sorted_keys = raw.get("sorted_keys")
    if sorted_keys is not None and (not isinstance(sorted_keys, list) or sorted(map(str, sorted_keys)) != sorted(keys)):
        # pyvene recomputes the keys from the representations when loading, as we do.
        logger.warning("%s: sorted_keys %s differ from the keys of its representations %s; using the latter", cfg_path, sorted_keys, keys)
    if raw.get("mode", "parallel") not in ("parallel", "serial"):
        raise AdapterError(f"{cfg_path}: unknown mode {raw.get('mode')!r}")
    names, positions = _repedit_block(raw, n, cfg_path)

    out = []
    for i, (rec, key) in enumerate(zip(reps, keys)):
        label = f"{cfg_path}: intervention {i} ({key})"
        if rec["unit"] != "pos":
            raise AdapterError(f"{label}: unit {rec['unit']!r} is not supported; repedit reads unit 'pos' only")
        if rec.get("moe_key") is not None:
            raise AdapterError(f"{label}: moe_key interventions are not supported")
        if rec.get("intervention_link_key") is not None:
            logger.warning("%s: shares weights (intervention_link_key); repedit loads an independent copy", label)
        fname = f"intkey_{key}.bin"
        if "/" in fname or "\\" in fname or ".." in fname or "\x00" in fname:
            raise AdapterError(f"{label}: refusing intervention file name {fname!r} (path characters)")
        path = where / fname
        if not path.is_file():
            raise AdapterError(f"{label}: tensor file {path} is missing")
        state = _load_bin(path)
        _check_tensors(state, path, rec.get("low_rank_dimension"), dims[i])
        out.append(
            PyreftIntervention(
                index=i,
                key=key,
                file=path,
                layer=rec["layer"],
                component=rec["component"],
                unit=rec["unit"],
                intervention_type=types[i],
                weight=state["weight"],
                bias=state["bias"],
                rotate_layer=state["rotate_layer"],
                rotate_original=state.get(EXACT_KEY),
                name=names[i],
                positions=positions[i],
            )
        )
    return out


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
