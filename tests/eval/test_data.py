"""Loaders: the real files in ../shared/data and malformed temporary files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from repedit.eval import data as D
from repedit.requests import EditRequest, LocalityPrompt


def _data_dir() -> Path:
    try:
        return D.default_data_dir()
    except FileNotFoundError:
        pytest.skip("evaluation data not found (../shared/data or $REPEDIT_DATA)")


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return _data_dir()


@pytest.fixture(scope="module")
def cf_raw(data_dir):
    return json.loads((data_dir / "counterfact" / "counterfact.json").read_text())


@pytest.fixture(scope="module")
def zsre_raw(data_dir):
    return json.loads((data_dir / "zsre" / "zsre_eval.json").read_text())


# ---------------------------------------------------------------------------- real files
def test_counterfact_full(data_dir, cf_raw):
    ds = D.load_counterfact()
    assert len(ds) == len(cf_raw) == 19727
    assert ds.column_names == list(EditRequest("a", "b").to_dict())
    r0 = D.to_requests(ds.select([0]))[0]
    assert r0 == EditRequest(
        prompt="The mother tongue of Danielle Darrieux is",
        target_new="English",
        subject="Danielle Darrieux",
        ground_truth="French",
        rephrase_prompts=["Where Danielle Darrieux is from, people speak the language of"],
        locality_prompts=[LocalityPrompt("Michel Rocard is a native speaker of", "French")],
        case_id=0,
    )
    assert r0.relation == "The mother tongue of {} is"
    info = D.data_info(ds)
    path = data_dir / "counterfact" / "counterfact.json"
    assert info["source"] == "counterfact" and info["path"] == str(path)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_counterfact_selection_is_deterministic(cf_raw):
    ds = D.load_counterfact(limit=5, offset=10)
    assert ds["case_id"] == [r["case_id"] for r in cf_raw[10:15]]
    a = D.load_counterfact(limit=20, seed=1)["case_id"]
    b = D.load_counterfact(limit=20, seed=1)["case_id"]
    c = D.load_counterfact(limit=20, seed=2)["case_id"]
    assert a == b and a != c and len(set(a)) == 20
    # offset walks along the same permutation
    assert D.load_counterfact(limit=10, offset=10, seed=1)["case_id"] == a[10:]
    assert D.data_info(D.load_counterfact(limit=3, seed=1))["seed"] == 1


@pytest.mark.parametrize("target", ["alt", "answers"])
def test_zsre_conventions(zsre_raw, target):
    ds = D.load_zsre(target=target, limit=3)
    rec = zsre_raw[0]
    r = D.to_requests(ds)[0]
    assert r.prompt == rec["src"] and r.subject == rec["subject"]
    if target == "alt":
        assert (r.target_new, r.ground_truth) == (rec["alt"], rec["answers"][0])
    else:
        assert (r.target_new, r.ground_truth) == (rec["answers"][0], rec["alt"])
    assert r.rephrase_prompts == [rec["rephrase"]]
    assert r.locality_prompts == [LocalityPrompt(rec["loc"], rec["loc_ans"])]
    assert r.portability == [LocalityPrompt(rec["portability"]["New Question"], rec["portability"]["New Answer"])]
    assert r.case_id == rec["record_id"]
    assert D.data_info(ds)["zsre_target"] == target
    assert f'"zsre_target": "{target}"' in ds.info.description
    assert len(D.load_zsre(target=target)) == len(zsre_raw)


def test_zsre_bad_target():
    with pytest.raises(ValueError, match="alt"):
        D.load_zsre(target="pred")


def test_zsre_train_file_empty_alt(data_dir):
    path = data_dir / "zsre" / "zsre_train_1k.json"
    with pytest.raises(ValueError) as e:
        D.load_zsre(path)
    msg = str(e.value)
    assert str(path) in msg and "index 534" in msg and "'target_new'" in msg and "skip_invalid" in msg
    ds = D.load_zsre(path, skip_invalid=True)
    assert len(ds) == 998 and D.data_info(ds)["skipped_indices"] == [534, 723]
    assert D.to_requests(ds)[0].portability == []  # train records have no portability
    assert len(D.load_zsre(path, target="answers")) == 1000


def test_data_dir_env(monkeypatch, tmp_path, cf_raw):
    (tmp_path / "counterfact").mkdir()
    (tmp_path / "counterfact" / "counterfact.json").write_text(json.dumps(cf_raw[:4]))
    monkeypatch.setenv("REPEDIT_DATA", str(tmp_path))
    assert D.default_data_dir() == tmp_path
    assert len(D.load_counterfact()) == 4
    # a directory as path works too
    monkeypatch.delenv("REPEDIT_DATA")
    assert len(D.load_counterfact(tmp_path)) == 4
    monkeypatch.setenv("REPEDIT_DATA", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="REPEDIT_DATA"):
        D.load_counterfact()


def test_missing_file_says_how_to_pass_a_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="path="):
        D.load_zsre(tmp_path / "none.json")


# ---------------------------------------------------------------------------- malformed files
def _cf_record(**over):
    rec = {
        "case_id": 0,
        "prompt": "The capital of France is",
        "target_new": "Rome",
        "subject": "France",
        "ground_truth": "Paris",
        "rephrase_prompt": "France's capital is",
        "locality_prompt": "The capital of Spain is",
        "locality_ground_truth": "Madrid",
    }
    rec.update(over)
    return rec


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"target_new": None}, "target_new"),
        ({"rephrase_prompt": 3}, "rephrase_prompt"),
        ({"subject": "Germany"}, "subject"),
        ({"target_new": "  "}, "target_new"),
        ({"locality_ground_truth": ["a", "b"]}, "locality_ground_truth"),
    ],
)
def test_counterfact_malformed(tmp_path, bad, field):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([_cf_record(), _cf_record(case_id=1, **bad)]))
    with pytest.raises(ValueError) as e:
        D.load_counterfact(path)
    msg = str(e.value)
    assert str(path) in msg and "1" in msg and f"'{field}'" in msg
    assert ("record 1" in msg) or ("index 1" in msg)


def test_counterfact_missing_field(tmp_path):
    path = tmp_path / "cf.json"
    rec = _cf_record()
    del rec["ground_truth"]
    path.write_text(json.dumps([_cf_record(), _cf_record(), rec]))
    with pytest.raises(ValueError, match=r"cf\.json: record 2: field 'ground_truth' is missing"):
        D.load_counterfact(path)


def test_zsre_malformed(tmp_path, zsre_raw):
    path = tmp_path / "z.json"
    rec = dict(zsre_raw[0], portability={"New Question": "q"})
    path.write_text(json.dumps([zsre_raw[1], rec]))
    with pytest.raises(ValueError, match=r"z\.json: record 1: field 'portability'"):
        D.load_zsre(path)
    path.write_text(json.dumps([dict(zsre_raw[0], answers=[])]))
    with pytest.raises(ValueError, match=r"record 0: field 'answers'"):
        D.load_zsre(path)


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"prompt": "a",\n "target_new": }\n]')
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON at line 3"):
        D.load_requests(path)
    jl = tmp_path / "broken.jsonl"
    jl.write_text('{"prompt": "a", "target_new": "b"}\n\n{"prompt": "c", "target_new": "d"}\n{oops}\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl: invalid JSON on line 4"):
        D.load_requests(jl)
    notlist = tmp_path / "obj.json"
    notlist.write_text('{"prompt": "a"}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        D.load_requests(notlist)


# ---------------------------------------------------------------------------- user files
def _user_requests():
    return [
        EditRequest(
            "The capital of France is",
            "Rome",
            subject="France",
            ground_truth="Paris",
            rephrase_prompts=["France's capital is"],
            locality_prompts=[("The capital of Spain is", "Madrid")],
            portability=[("The capital of France is in", "Italy")],
            case_id=1,
        ),
        EditRequest("Water boils at", "50 degrees", case_id="w"),
        EditRequest("The sky is", "green"),
    ]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".txt"])
def test_load_requests_round_trip(tmp_path, suffix):
    reqs = _user_requests()
    path = tmp_path / f"mine{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"requests": [r.to_dict() for r in reqs]}))
    else:
        path.write_text("\n".join(json.dumps(r.to_dict()) for r in reqs) + "\n")
    ds = D.load_requests(path)
    back = D.to_requests(ds)
    # mixed int/str case ids are stored as strings
    assert [r.case_id for r in back] == ["1", "w", None]
    for a, b in zip(back, reqs):
        b.case_id = None if b.case_id is None else str(b.case_id)
        assert a == b
    assert D.data_info(ds)["source"] == "user"


def test_load_requests_errors_name_file_index_field(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "a", "target_new": "b"}, {"prompt": "The sky is", "target_new": "x", "subject": "sea"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"mine\.jsonl: EditRequest index 1: field 'subject'"):
        D.load_requests(path)
    path.write_text(json.dumps({"prompt": "a", "target_new": "b", "rephrase_prompt": "c"}))
    with pytest.raises(ValueError, match=r"index 0: unknown field 'rephrase_prompt'"):
        D.load_requests(path)
    assert len(D.load_requests(tmp_path / "mine.jsonl", skip_invalid=True)) == 0


def test_requests_to_dataset_empty_and_int_ids():
    ds = D.requests_to_dataset([])
    assert len(ds) == 0 and D.to_requests(ds) == []
    ds = D.requests_to_dataset([EditRequest("a", "b", case_id=3), EditRequest("c", "d")])
    assert ds["case_id"] == [3, None]
    assert D.to_requests(ds)[0].case_id == 3


def test_relation_templates_group_known_facts_by_relation(tmp_path):
    f = tmp_path / "known.json"
    f.write_text(json.dumps([
        {"subject": "A", "template": "{} is a native speaker of", "relation_id": "P103", "prompt": "A is a native speaker of"},
        {"subject": "B", "template": "The native language of {} is", "relation_id": "P103", "prompt": "x"},
        {"subject": "C", "template": "{} is located in", "relation_id": "P131", "prompt": "x"},
        {"subject": "D", "template": "{} is a native speaker of", "relation_id": "P103", "prompt": "x"},
    ]))
    table = D.relation_templates(f)
    assert table == {"{} is a native speaker of": ["The native language of {} is"],
                     "The native language of {} is": ["{} is a native speaker of"], "{} is located in": []}
    with pytest.raises(ValueError, match="relation_id"):
        f.write_text(json.dumps([{"template": "{} is"}]))
        D.relation_templates(f)
