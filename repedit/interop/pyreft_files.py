"""Reading pyreft/pyvene save directories: the format's names and keys, the
:class:`PyreftIntervention` records, and the checks every file passes before anything is
built (``torch.load(weights_only=True)`` only; see :mod:`repedit.interop.pyreft`).

Example::

    for iv in inspect_pyreft("exported"):
        print(iv.key, iv.layer, iv.component, iv.rank)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from repedit.adapters import AdapterError
from repedit.positions import Positions

logger = logging.getLogger(__name__)

__all__ = ["LOREFT_CLASS", "REPRESENTATION_FIELDS", "EXACT_KEY", "PyreftIntervention", "inspect_pyreft", "pyvene_key"]


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
