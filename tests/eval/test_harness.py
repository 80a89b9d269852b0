"""The evaluation harness: pre/post with edits disabled/enabled, EasyEdit records, labels,
metadata, and the immediate/final sequential protocols (on a tiny random Llama)."""

from __future__ import annotations

import json

import pytest

from conftest import fact_requests, tiny_model, tiny_tokenizer
from repedit import EditRequest, Editor, EditorConfig
from repedit.eval import metrics as M
from repedit.eval.data import load_requests, load_zsre
from repedit.eval.harness import (
    EvalReport,
    evaluate,
    evaluate_pre,
    format_table,
    run_sequential,
    run_sequential_protocols,
)
from repedit.hooks import EditableModel

ALL = ("teacher_forced", "probability", "generation")


def requests() -> list[EditRequest]:
    return fact_requests(2)


def config(**kw) -> EditorConfig:
    base = dict(method="loreft", layers=[1], lr=0.05, max_steps=80, method_config={"rank": 4, "seed": 0})
    base.update(kw)
    return EditorConfig(**base)


@pytest.fixture(scope="module")
def edited_pair():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    result = Editor(model, tok, config()).edit(requests())
    return result.edited, tok


def test_pre_is_the_base_model_and_post_has_the_edit(edited_pair):
    edited, tok = edited_pair
    reqs = requests()
    report = evaluate(edited, tok, reqs, protocols=ALL, keep_outputs=True)
    # "pre" equals scoring the model with the edit switched off by hand
    edited.set_active(active=False)
    try:
        base = M.evaluate_requests(edited.model, tok, reqs, protocols=("teacher_forced",))
    finally:
        edited.set_active(active=True)
    for rec, b in zip(report.records, base):
        assert rec["pre"]["rewrite_acc"] == b["rewrite_acc"]
        assert rec["pre"]["locality"]["neighborhood_output"] == b["locality"]["neighborhood_output"]
    # the edit took: post reliability is perfect, pre was not
    s = report.summary
    assert s["post"]["rewrite_acc"] == 1.0 and s["pre"]["rewrite_acc"] < 1.0
    # locality = agreement of post argmax tokens with pre argmax tokens (EasyEdit)
    for rec in report.records:
        pre_out = rec["pre"]["locality"]["neighborhood_output"]
        post_out = rec["post"]["locality"]["neighborhood_output"]
        assert rec["post"]["locality"]["neighborhood_acc"] == M.locality_agreement(pre_out, post_out)


def test_records_summary_and_metadata_are_labelled(edited_pair, tmp_path):
    edited, tok = edited_pair
    report = evaluate(edited, tok, requests(), protocols=ALL, seed=7)
    assert isinstance(report, EvalReport)
    for rec, req in zip(report.records, requests()):
        assert set(rec) >= {"pre", "post", "case_id", "requested_rewrite"}
        assert rec["case_id"] == req.case_id and rec["requested_rewrite"]["target_new"] == req.target_new
        assert "neighborhood_output" not in rec["post"]["locality"]  # token lists dropped by default
        for side in ("pre", "post"):
            meta = rec[side]["metric_meta"]
            assert meta["rewrite_acc"] == M.TEACHER_FORCED
            assert meta["rome.efficacy_success"] == M.PROBABILITY
            assert meta["generation.rewrite_exact"] == M.GENERATION
    head = report.summary["headline"]
    assert set(head) == {M.TEACHER_FORCED, M.PROBABILITY, M.GENERATION}
    tf = head[M.TEACHER_FORCED]["post"]
    assert tf["hm"] == pytest.approx(M.harmonic_mean(tf["reliability"], tf["generality"], tf["locality"]))
    assert report.summary["hm"][M.TEACHER_FORCED] == pytest.approx(tf["hm"])
    meta = report.metadata
    assert meta["protocols"] == [M.TEACHER_FORCED, M.PROBABILITY, M.GENERATION]
    assert meta["seed"] == 7 and meta["repedit_version"]
    assert meta["model"]["fingerprint"]["num_layers"] == 2
    assert meta["model"]["edits"][0]["method"] == "loreft"
    table = format_table(report.summary)
    for label in (M.TEACHER_FORCED, M.PROBABILITY, M.GENERATION):
        assert label in table
    # the strict protocols lead; ROME's probability comparison comes last, labelled secondary
    lines = table.splitlines()
    first = {label: next(i for i, line in enumerate(lines) if line.startswith(label))
             for label in (M.TEACHER_FORCED, M.GENERATION, M.PROBABILITY)}
    assert first[M.TEACHER_FORCED] < first[M.GENERATION] < first[M.PROBABILITY]
    assert lines[first[M.PROBABILITY]].startswith(M.PROBABILITY + " (secondary)")
    path = report.save(tmp_path / "m.json")
    saved = json.loads(path.read_text())
    assert saved["metadata"]["protocols"] == meta["protocols"] and len(saved["records"]) == 2


def test_pre_results_can_be_reused(edited_pair):
    edited, tok = edited_pair
    first = evaluate(edited, tok, requests(), protocols=("teacher_forced",))
    pre = evaluate_pre(edited, tok, requests(), ("teacher_forced",))
    again = evaluate(edited, tok, requests(), protocols=("teacher_forced",), pre=pre)
    also = evaluate(edited, tok, requests(), protocols=("teacher_forced",), pre=first)
    assert again.records == first.records == also.records
    with pytest.raises(ValueError, match="pre-edit results"):
        evaluate(edited, tok, requests(), protocols=("teacher_forced",), pre=pre[:1])
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(edited, tok, requests(), protocols=("teacher_forcing",))


def test_data_file_sha256_and_zsre_convention_in_metadata(edited_pair, tmp_path):
    edited, tok = edited_pair
    path = tmp_path / "reqs.json"
    path.write_text(json.dumps([r.to_dict() for r in requests()]))
    report = evaluate(edited, tok, load_requests(path), protocols=("teacher_forced",))
    assert report.metadata["data"]["sha256"] == M.file_sha256(path)
    assert report.metadata["data"]["path"] == str(path)
    zsre = tmp_path / "zsre.json"
    zsre.write_text(json.dumps([{"subject": "france", "src": "the capital of france is", "answers": ["paris"],
                                 "alt": "rome", "rephrase": "the city of france is",
                                 "loc": "the capital of spain is", "loc_ans": "madrid"}]))
    rep = evaluate(edited, tok, load_zsre(zsre, target="answers"), protocols=("teacher_forced",))
    assert rep.metadata["data"]["zsre_target"] == "answers"
    assert rep.records[0]["requested_rewrite"]["target_new"] == "paris"


def test_sequential_immediate_and_final_differ_when_a_later_edit_overwrites():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    prompt = "the capital of france is"
    reqs = [EditRequest(prompt, "rome", subject="france", case_id="first"),
            EditRequest(prompt, "berlin", subject="france", case_id="second")]
    editor = Editor(model, tok, config(max_steps=100))
    reports = run_sequential_protocols(editor, reqs, ("immediate", "final"))
    imm, fin = reports["immediate"], reports["final"]
    assert imm.metadata["sequential_protocol"] == "immediate" and fin.metadata["sequential_protocol"] == "final"
    assert imm.summary["sequential_protocol"] == "immediate"
    assert all(r["sequential_protocol"] == "final" for r in fin.records)
    # right after its own edit the first fact holds; after the second edit (same prompt) it is gone
    assert imm.records[0]["post"]["rewrite_acc"] == [1.0]
    assert fin.records[0]["post"]["rewrite_acc"] == [0.0]
    assert imm.records[1]["post"]["rewrite_acc"] == fin.records[1]["post"]["rewrite_acc"] == [1.0]
    assert imm.metadata["protocols"] == fin.metadata["protocols"] == [M.TEACHER_FORCED]


def test_final_protocol_matches_editor_sequential_edit():
    reqs = requests()
    tok = tiny_tokenizer()
    rep = run_sequential(Editor(tiny_model("llama"), tok, config(max_steps=30)), reqs, protocol="final")
    result = Editor(tiny_model("llama"), tok, config(max_steps=30)).edit(reqs, sequential=True)
    ref = evaluate(result.edited, tok, reqs, protocols=("teacher_forced",))
    assert [r["post"] for r in rep.records] == [r["post"] for r in ref.records]
    with pytest.raises(ValueError, match="immediate"):
        run_sequential(Editor(tiny_model("llama"), tok, config()), reqs, protocol="later")


def test_plain_model_is_rejected_with_a_hint():
    with pytest.raises(TypeError, match="repedit.wrap"):
        evaluate(tiny_model("llama"), tiny_tokenizer(), requests())
    edited = EditableModel(tiny_model("llama"), tiny_tokenizer())
    rep = evaluate(edited, None, requests(), protocols=("teacher_forced",))  # no edits: post == pre
    assert rep.summary["post"]["locality.neighborhood_acc"] == 1.0


def test_top_level_evaluate_and_attachment_lookup(edited_pair):
    import repedit

    edited, tok = edited_pair
    report = repedit.evaluate(edited, requests(), protocols=("teacher_forced",))
    assert report.summary["post"]["rewrite_acc"] == 1.0
    name = edited.names()[0]
    assert name in edited and edited.get(name).name == name
    with pytest.raises(KeyError, match="attached"):
        edited.get("nope")
