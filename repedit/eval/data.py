"""Evaluation data as :class:`datasets.Dataset` objects of edit requests.

Every loader returns one row per request; the columns are the fields of
:meth:`repedit.requests.EditRequest.to_dict`::

    prompt, target_new, subject, ground_truth, rephrase_prompts, locality_prompts,
    portability, case_id, relation, subject_locality_prompts

:func:`to_requests` turns a dataset (or any slice of it) back into ``EditRequest`` objects, and
:func:`data_info` returns what the loader recorded about where the rows came from (file,
sha256, selection, zsRE target convention) for results metadata.

Where the data lives
--------------------
``path=None`` means the data directory named by the ``REPEDIT_DATA`` environment variable
(repedit ships no evaluation data). Data is read in place, never copied.

Your own requests: ``load_requests(path)``
------------------------------------------
A ``.json`` file holds a list of objects (or ``{"requests": [...]}``); a ``.jsonl`` file holds
one object per line (blank lines are skipped). Each object has the EditRequest fields;
only ``prompt`` and ``target_new`` are required::

    {"prompt": "The capital of France is", "target_new": "Rome",
     "subject": "France", "ground_truth": "Paris",
     "rephrase_prompts": ["France's capital city is"],
     "locality_prompts": [{"prompt": "The capital of Spain is", "ground_truth": "Madrid"}],
     "portability": [{"prompt": "The capital of France is in the country of", "ground_truth": "Italy"}],
     "case_id": 7, "relation": "The capital of {} is"}

Targets carry no leading space. ``relation`` defaults to ``prompt.replace(subject, "{}")``.
Unknown fields are an error (a typo would otherwise be silently dropped).

Selection
---------
``offset``/``limit`` pick a contiguous slice in file order; with ``seed`` the slice is taken
from a seeded permutation (``numpy.random.default_rng(seed).permutation``), so the same
arguments always give the same rows.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from repedit.hashing import file_sha256
from repedit.requests import REQUEST_FIELDS, EditRequest, LocalityPrompt

logger = logging.getLogger(__name__)

__all__ = [
    "default_data_dir",
    "load_counterfact",
    "load_zsre",
    "load_requests",
    "relation_templates",
    "requests_to_dataset",
    "to_requests",
    "data_info",
    "ZSRE_TARGETS",
]

#: zsRE edit-target conventions: EasyEdit edits toward ``alt``; ROME/MEMIT toward ``answers[0]``.
ZSRE_TARGETS = ("alt", "answers")

_COUNTERFACT_FILE = ("counterfact", "counterfact.json")
_ZSRE_FILE = ("zsre", "zsre_eval.json")
_KNOWN_FILE = ("known_facts", "known_1000.json")


# ---------------------------------------------------------------------------- paths
def default_data_dir() -> Path:
    """The data directory named by ``$REPEDIT_DATA`` (repedit ships no evaluation data).

    Example::

        os.environ["REPEDIT_DATA"] = "/data/knowedit"
        default_data_dir() / "counterfact" / "counterfact.json"
    """
    env = os.environ.get("REPEDIT_DATA")
    if not env:
        raise FileNotFoundError(
            "no evaluation data directory: set the REPEDIT_DATA environment variable to a folder holding "
            "counterfact/counterfact.json and zsre/zsre_eval.json, or pass the file's path "
            "(path=... in Python, --data PATH on the command line)")
    p = Path(env).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"REPEDIT_DATA={env!r} is not a directory")
    return p


def _resolve(path: str | os.PathLike | None, default: tuple[str, str]) -> Path:
    if path is None:
        p = default_data_dir().joinpath(*default)
    else:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p.joinpath(*default) if p.joinpath(*default).is_file() else p / default[1]
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}; pass path=... (a file or the data directory)")
    return p


# ---------------------------------------------------------------------------- reading
def _read_records(path: Path, jsonl: bool | None = None) -> list[Any]:
    """Read a JSON list (or {"requests": [...]}) or JSONL; bad JSON names the file and line."""
    text = path.read_text(encoding="utf-8")
    if jsonl is None:
        jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    if not jsonl:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if path.suffix.lower() == ".json":
                raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
            return _read_records(path, jsonl=True)  # unknown extension: try JSON Lines
        if isinstance(data, Mapping) and isinstance(data.get("requests"), list):
            data = data["requests"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON on line {lineno}, column {e.colno}: {e.msg}") from None
    return records


def _select(n: int, offset: int, limit: int | None, seed: int | None) -> list[int]:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    end = None if limit is None else offset + limit
    return [int(i) for i in order[offset:end]]


def _field(rec: Any, name: str, path: Path, index: int, kind: type | tuple = str) -> Any:
    if not isinstance(rec, dict):
        raise ValueError(f"{path}: record {index}: expected a JSON object, got {type(rec).__name__}")
    if name not in rec:
        raise ValueError(f"{path}: record {index}: field {name!r} is missing")
    value = rec[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{path}: record {index}: field {name!r} must be {want}, got {type(value).__name__}")
    return value


def _build(
    path: Path,
    records: Sequence[Any],
    make: Callable[[Any, int], EditRequest],
    info: dict[str, Any],
    offset: int,
    limit: int | None,
    seed: int | None,
    skip_invalid: bool,
):
    """Select, convert and validate the records; wrap them in a Dataset with provenance info."""
    chosen = _select(len(records), offset, limit, seed)
    requests: list[EditRequest] = []
    skipped: list[int] = []
    for i in chosen:
        try:
            req = make(records[i], i)
            req._validate_structure(i)
        except ValueError as e:
            msg = str(e)
            if not msg.startswith(str(path)):
                msg = f"{path}: {msg}"
            if skip_invalid:
                logger.warning("skipping invalid record: %s", msg)
                skipped.append(i)
                continue
            raise ValueError(msg + " (pass skip_invalid=True to drop invalid records)") from None
        requests.append(req)
    info = dict(
        info,
        path=str(path),
        sha256=file_sha256(path),
        records_in_file=len(records),
        offset=offset,
        limit=limit,
        seed=seed,
        skipped_indices=skipped,
        rows=len(requests),
    )
    logger.info("loaded %d requests from %s", len(requests), path)
    return requests_to_dataset(requests, info=info)


# ---------------------------------------------------------------------------- public loaders
def load_counterfact(
    path: str | os.PathLike | None = None,
    limit: int | None = None,
    offset: int = 0,
    seed: int | None = None,
    skip_invalid: bool = False,
):
    """Load CounterFact (EasyEdit layout) as a Dataset of edit requests.

    ``rephrase_prompt`` becomes ``rephrase_prompts=[...]``; ``locality_prompt`` /
    ``locality_ground_truth`` become ``locality_prompts=[{"prompt", "ground_truth"}]``.

    Example::

        ds = load_counterfact(limit=100, seed=0)
        reqs = to_requests(ds)
    """
    p = _resolve(path, _COUNTERFACT_FILE)
    records = _read_records(p)

    def make(rec: Any, i: int) -> EditRequest:
        case_id = _field(rec, "case_id", p, i, (int, str))
        rephrase = _field(rec, "rephrase_prompt", p, i, (str, list))
        loc_p = _field(rec, "locality_prompt", p, i, (str, list))
        loc_a = _field(rec, "locality_ground_truth", p, i, (str, list))
        # The original ROME layout has lists here; accept both.
        rephrase = [rephrase] if isinstance(rephrase, str) else rephrase
        loc_p = [loc_p] if isinstance(loc_p, str) else loc_p
        loc_a = [loc_a] * len(loc_p) if isinstance(loc_a, str) else loc_a
        if len(loc_a) != len(loc_p):
            raise ValueError(
                f"{p}: record {i}: field 'locality_ground_truth' has {len(loc_a)} items "
                f"but 'locality_prompt' has {len(loc_p)}"
            )
        return EditRequest(
            prompt=_field(rec, "prompt", p, i),
            target_new=_field(rec, "target_new", p, i),
            subject=_field(rec, "subject", p, i),
            ground_truth=_field(rec, "ground_truth", p, i),
            rephrase_prompts=list(rephrase),
            locality_prompts=[LocalityPrompt(a, b) for a, b in zip(loc_p, loc_a)],
            case_id=case_id,
        )

    return _build(p, records, make, {"source": "counterfact"}, offset, limit, seed, skip_invalid)


def load_zsre(
    path: str | os.PathLike | None = None,
    target: str = "alt",
    limit: int | None = None,
    offset: int = 0,
    seed: int | None = None,
    skip_invalid: bool = False,
):
    """Load zsRE (MEND split, EasyEdit layout) as a Dataset of edit requests.

    ``target="alt"`` (EasyEdit): ``target_new = alt``, ``ground_truth = answers[0]``.
    ``target="answers"`` (ROME/MEMIT): ``target_new = answers[0]``, ``ground_truth = alt``.
    The convention is recorded in ``data_info(ds)["zsre_target"]`` (and ``ds.info.description``).
    ``src`` → prompt, ``rephrase`` → rephrase_prompts, ``loc``/``loc_ans`` → locality_prompts,
    ``portability{"New Question","New Answer"}`` → portability; ``case_id`` = ``record_id``
    when present, else the record's index in the file.

    Example::

        ds = load_zsre(target="answers", limit=10)
        data_info(ds)["zsre_target"]  # 'answers'
    """
    if target not in ZSRE_TARGETS:
        raise ValueError(f"target must be one of {ZSRE_TARGETS} (EasyEdit: 'alt'; ROME/MEMIT: 'answers'), got {target!r}")
    p = _resolve(path, _ZSRE_FILE)
    records = _read_records(p)

    def make(rec: Any, i: int) -> EditRequest:
        answers = _field(rec, "answers", p, i, list)
        if not answers or not isinstance(answers[0], str):
            raise ValueError(f"{p}: record {i}: field 'answers' must be a non-empty list of str")
        alt = _field(rec, "alt", p, i)
        port = rec.get("portability")
        portability: list[LocalityPrompt] = []
        if port is not None:
            if not isinstance(port, Mapping) or not isinstance(port.get("New Question"), str) or not isinstance(
                port.get("New Answer"), str
            ):
                raise ValueError(
                    f"{p}: record {i}: field 'portability' must be an object with string "
                    "'New Question' and 'New Answer'"
                )
            portability = [LocalityPrompt(port["New Question"], port["New Answer"])]
        case_id = rec.get("record_id", i)
        new, true = (alt, answers[0]) if target == "alt" else (answers[0], alt)
        return EditRequest(
            prompt=_field(rec, "src", p, i),
            target_new=new,
            subject=_field(rec, "subject", p, i),
            ground_truth=true if true.strip() else None,
            rephrase_prompts=[_field(rec, "rephrase", p, i)],
            locality_prompts=[LocalityPrompt(_field(rec, "loc", p, i), _field(rec, "loc_ans", p, i))],
            portability=portability,
            case_id=case_id,
        )

    return _build(p, records, make, {"source": "zsre", "zsre_target": target}, offset, limit, seed, skip_invalid)


def load_requests(
    path: str | os.PathLike,
    limit: int | None = None,
    offset: int = 0,
    seed: int | None = None,
    skip_invalid: bool = False,
):
    """Load your own edit requests from JSON or JSONL (format in the module docstring).

    Example::

        ds = load_requests("my_edits.jsonl")
        reqs = to_requests(ds)
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"requests file not found: {p}")
    records = _read_records(p)
    def make(rec: Any, i: int) -> EditRequest:
        return EditRequest.from_dict(rec, index=i)

    return _build(p, records, make, {"source": "user"}, offset, limit, seed, skip_invalid)


def relation_templates(path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Other phrasings of each relation, from a known-facts file such as ROME's
    ``known_1000.json`` (records with ``template`` such as ``"{} is a native speaker of"`` and
    ``relation_id``): a mapping from each template to the other templates of its relation, for
    ``EditorConfig(relation_templates=..., relation_copies=k)``. CounterFact's prompts use the
    same templates. ``path=None``: ``known_facts/known_1000.json`` under ``$REPEDIT_DATA``.

    Example::

        table = relation_templates()
        table["{} is a native speaker of"]   # ['The native language of {} is']
    """
    p = _resolve(path, _KNOWN_FILE)
    groups: dict[str, list[str]] = {}
    for i, rec in enumerate(_read_records(p)):
        t, rid = _field(rec, "template", p, i), _field(rec, "relation_id", p, i)
        if t.count("{}") == 1 and t not in groups.setdefault(rid, []):
            groups[rid].append(t)
    return {t: [u for u in ts if u != t] for ts in groups.values() for t in ts}


# ---------------------------------------------------------------------------- Dataset <-> requests
def _features(case_ids: Sequence[Any]):
    import datasets

    item = {"prompt": datasets.Value("string"), "ground_truth": datasets.Value("string")}
    ints = all(c is None or (isinstance(c, int) and not isinstance(c, bool)) for c in case_ids)
    return datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "target_new": datasets.Value("string"),
            "subject": datasets.Value("string"),
            "ground_truth": datasets.Value("string"),
            "rephrase_prompts": datasets.List(datasets.Value("string")),
            "locality_prompts": datasets.List(item),
            "portability": datasets.List(item),
            "case_id": datasets.Value("int64" if ints else "string"),
            "relation": datasets.Value("string"),
            "subject_locality_prompts": datasets.List(item),
        }
    )


def requests_to_dataset(requests: Sequence[EditRequest], info: Mapping[str, Any] | None = None):
    """Wrap EditRequests in a ``datasets.Dataset`` (``info`` goes to ``ds.info.description`` as JSON).

    Mixed int/str case ids are stored as strings.

    Example::

        ds = requests_to_dataset([EditRequest("The capital of France is", "Rome")])
    """
    import datasets

    rows = [r.to_dict() for r in requests]
    features = _features([r["case_id"] for r in rows])
    if features["case_id"].dtype == "string":
        for r in rows:
            r["case_id"] = None if r["case_id"] is None else str(r["case_id"])
    description = json.dumps(dict(info or {}), sort_keys=True)
    ds_info = datasets.DatasetInfo(description=description, features=features)
    columns = {k: [r[k] for r in rows] for k in REQUEST_FIELDS}
    # Build the Arrow table directly: datasets' per-example encoding is ~5x slower here.
    import pyarrow as pa

    table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
    return datasets.Dataset(table, info=ds_info)


def to_requests(ds: Any) -> list[EditRequest]:
    """Turn a loader's Dataset (or a list of row dicts) into a list of EditRequest.

    Example::

        reqs = to_requests(load_counterfact(limit=5))
    """
    if isinstance(ds, list):
        rows = ds
    elif hasattr(ds, "to_list"):
        rows = ds.to_list()
    else:
        rows = list(ds)
    return [EditRequest.from_dict({k: row.get(k) for k in REQUEST_FIELDS if k in row}, index=i) for i, row in enumerate(rows)]


def data_info(ds: Any) -> dict[str, Any]:
    """What the loader recorded: source, path, sha256, selection, zsRE target convention.

    Example::

        data_info(load_zsre(limit=3))["zsre_target"]  # 'alt'
    """
    desc = getattr(getattr(ds, "info", None), "description", None) or ""
    try:
        out = json.loads(desc)
    except json.JSONDecodeError:
        return {"description": desc}
    return out if isinstance(out, dict) else {"description": desc}
