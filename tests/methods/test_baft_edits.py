"""Edit management for BaFT through the method contract: list, delete, explain and merge
individual edits (each edit owns its bases and its rows of the earlier-negatives bank)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from repedit import EditRequest, Editor, EditorConfig, edits
from repedit.hooks import EditableModel
from repedit.methods import build
from repedit.methods.baft import subject_key

from conftest import tiny_model

REQS = [
    EditRequest(prompt="the capital of france is", target_new="rome", subject="france", case_id=7),
    EditRequest(prompt="danielle darrieux speaks", target_new="german", subject="danielle darrieux", case_id=8),
    EditRequest(prompt="the eiffel tower is located in", target_new="madrid", subject="eiffel tower", case_id=9),
]
OTHERS = ["the city of paris", "the capital of spain is", "he was born in london"]
OLD = Path(__file__).resolve().parents[1] / "data" / "baft_adapter_v1"


def model():
    return tiny_model("llama", initializer_range=0.5)


def config(**mc):
    # the toy model's own gates sit near the fit's margin, so the gate shift half-closes them:
    # train the new bases shifted too, so each edit verifies as it trained
    return EditorConfig(method="baft", layers=[1], positions="last_prompt", lr=5e-2, max_steps=150, stop_prob=0.5,
                        relation_copies=0, method_config={"num_corpus_negatives": 0, "train_as_inference": "all", **mc})


def last_logits(m, tok, prompts):
    with torch.no_grad():
        return torch.stack([m(**tok([p], return_tensors="pt")).logits[0, -1] for p in prompts])


def ids(tok, reqs):
    return [tok.convert_tokens_to_ids(r.target_new) for r in reqs]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three sequential BaFT edits on the tiny Llama, saved; the unedited logits."""
    from conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    m = model()
    prompts = [r.prompt for r in REQS] + OTHERS
    base = last_logits(m, tok, prompts)
    res = Editor(m, tok, config()).edit(REQS, sequential=True)
    assert all(o.success for o in res.outcomes)
    path = tmp_path_factory.mktemp("baft") / "three"
    res.save_pretrained(str(path))
    res.edited.unwrap()
    return {"dir": path, "base": base, "prompts": prompts, "tok": tok}


def load(path, tok):
    return EditableModel.from_pretrained(model(), str(path), tokenizer=tok)


def test_list_shows_each_edits_request_and_bases_and_survives_save_load(trained):
    tok = trained["tok"]
    edited = load(trained["dir"], tok)
    rows = edits.list_edits(edited)
    assert [(r["index"], r["prompt"], r["subject"], r["target_new"], r["case_id"]) for r in rows] == [
        (i, r.prompt, r.subject, r.target_new, r.case_id) for i, r in enumerate(REQS)]
    assert [r["bases"] for r in rows] == [[0, 2], [2, 4], [4, 6]]
    assert all(r["name"] == "baft_L1" and r["method"] == "baft" and r["num_earlier"] > 0 for r in rows)
    module = edited.get("baft_L1").module
    assert module.earlier_states.shape[0] == sum(r["num_earlier"] for r in rows)
    # the metadata is in the adapter's JSON config, and the files alone list the same edits
    saved = json.loads((trained["dir"] / "adapter_config.json").read_text())
    assert [e["prompt"] for e in saved["interventions"][0]["config"]["edits"]] == [r.prompt for r in REQS]
    assert edits.list_adapter_edits(trained["dir"]) == rows
    # a second round trip keeps the records and the logits bit for bit
    again = trained["dir"].parent / "again"
    edited.save_pretrained(str(again))
    before = last_logits(edited.model, tok, trained["prompts"])
    edited.unwrap()
    fresh = load(again, tok)
    assert edits.list_edits(fresh) == rows
    assert torch.equal(last_logits(fresh.model, tok, trained["prompts"]), before)


def test_deleting_the_middle_edit_restores_its_outputs(trained):
    tok, base, prompts = trained["tok"], trained["base"], trained["prompts"]
    edited = load(trained["dir"], tok)
    module = edited.get("baft_L1").module
    before = last_logits(edited.model, tok, prompts)
    assert before[:3].argmax(-1).tolist() == ids(tok, REQS)
    # the same module with edit 1's gates shut: what deleting it must give
    with torch.no_grad():
        shut = module.gate_bias_frozen.clone()
        module.gate_bias_frozen[2:4] = -1e4
        module._cache = None
    reference = last_logits(edited.model, tok, prompts)
    with torch.no_grad():
        module.gate_bias_frozen.copy_(shut)
    bank = module.earlier_states.shape[0]
    n1 = edits.list_edits(edited)[1]["num_earlier"]
    info = edits.delete_edit(edited, 1)
    assert info["prompt"] == REQS[1].prompt and info["earlier_rows_removed"] == n1
    after = last_logits(edited.model, tok, prompts)
    assert torch.allclose(after, reference, atol=1e-5)  # exactly that edit's bases left
    # the deleted edit's outputs are the unedited model's again; the others still edit
    assert torch.allclose(after[1], base[1], atol=1e-3) and after[1].argmax() == base[1].argmax()
    assert after[[0, 2]].argmax(-1).tolist() == ids(tok, [REQS[0], REQS[2]])
    assert torch.allclose(after[[0, 2]], before[[0, 2]], atol=1e-3)
    # every frozen tensor lost that edit's rows, the bank its subject's rows; the records follow
    assert module.num_frozen == 4 and module.read_frozen.shape[0] == 12 and module.usage.shape[0] == 4
    assert module.earlier_states.shape[0] == bank - n1
    assert subject_key(REQS[1].subject) not in module.earlier_subject.tolist()
    rows = edits.list_edits(edited)
    assert [r["prompt"] for r in rows] == [REQS[0].prompt, REQS[2].prompt] and rows[1]["bases"] == [2, 4]
    # saved and loaded, the deletion stays
    out = trained["dir"].parent / "deleted"
    edited.save_pretrained(str(out))
    edited.unwrap()
    fresh = load(out, tok)
    assert torch.equal(last_logits(fresh.model, tok, prompts), after)
    assert fresh.get("baft_L1").module.export_config().num_bases == 4


def test_bad_index_and_unknown_name_change_nothing(trained):
    edited = load(trained["dir"], trained["tok"])
    module = edited.get("baft_L1").module
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(IndexError, match=r"edit 3 out of range: this BaFT holds 3 edit\(s\) \(0..2\)"):
        edits.delete_edit(edited, 3)
    with pytest.raises(KeyError, match="no intervention named 'nope'"):
        edits.delete_edit(edited, 0, name="nope")
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
    assert len(edits.list_edits(edited)) == 3


def test_explain_names_the_edit_that_fires(trained):
    tok = trained["tok"]
    edited = load(trained["dir"], tok)
    for i, r in enumerate(REQS):
        top = edits.explain(edited, r.prompt)
        assert top and top[0]["index"] == i and top[0]["fired"] and top[0]["target_new"] == r.target_new
        assert top[0]["score"] > 0.5 and top[0]["token"] == len(r.prompt.split()) - 1  # the last prompt token
        assert all(e["index"] == i for e in top)  # no other edit fires on it
    everything = edits.explain(edited, "the city of paris", all_edits=True)
    assert sorted(e["index"] for e in everything) == [0, 1, 2]
    assert not any(e["fired"] for e in everything) and edits.explain(edited, "the city of paris") == []


def test_merge_of_two_adapters_equals_both_edits_applied(trained, tmp_path):
    tok, prompts = trained["tok"], trained["prompts"]
    whole = load(trained["dir"], tok)
    expected = last_logits(whole.model, tok, prompts)
    rows = edits.list_edits(whole)
    whole.unwrap()
    # split the three edits into two adapters ([0, 1] and [2]), then merge them back
    for keep, name in (([0, 1], "a"), ([2], "b")):
        part = load(trained["dir"], tok)
        for i in sorted(set(range(3)) - set(keep), reverse=True):
            edits.delete_edit(part, i)
        part.save_pretrained(str(tmp_path / name))
        part.unwrap()
    m = model()
    edits.merge_adapters(m, str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "ab"), tokenizer=tok)
    merged = EditableModel.from_pretrained(m, str(tmp_path / "ab"), tokenizer=tok)
    got = edits.list_edits(merged)
    assert [(r["prompt"], r["bases"]) for r in got] == [(r["prompt"], r["bases"]) for r in rows]
    assert torch.allclose(last_logits(m, tok, prompts), expected, atol=1e-6)
    assert last_logits(m, tok, prompts)[:3].argmax(-1).tolist() == ids(tok, REQS)
    module = merged.get("baft_L1").module
    assert module.earlier_states.shape[0] == sum(r["num_earlier"] for r in rows)


def test_incompatible_merge_is_refused_and_writes_nothing(trained, tmp_path):
    tok = trained["tok"]
    other = load(trained["dir"], tok)
    other.get("baft_L1").module.set_knob("temperature", 2.0)
    other.save_pretrained(str(tmp_path / "hot"))
    other.unwrap()
    with pytest.raises(ValueError, match=r"cannot merge 'baft_L1': cannot merge BaFTs with different temperature: 1.0 vs 2.0"):
        edits.merge_adapters(model(), str(trained["dir"]), str(tmp_path / "hot"), str(tmp_path / "out"), tokenizer=tok)
    assert not (tmp_path / "out").exists()


def test_old_adapter_without_records_lists_by_base_ranges_and_deletes(tok, tmp_path):
    """An adapter saved before edits were recorded: edits of `rank` bases with unknown text."""
    edited = EditableModel.from_pretrained(model(), str(OLD), tokenizer=tok)
    module = edited.attachments()[0].module
    rank, n = module.config.rank, module.num_frozen
    rows = edits.list_edits(edited)
    assert [r["bases"] for r in rows] == [[i, i + rank] for i in range(0, n, rank)]
    assert all(r["prompt"] is None and r["target_new"] is None and r["num_earlier"] is None for r in rows)
    bank = module.earlier_states.shape[0] if hasattr(module, "earlier_states") else 0
    edits.delete_edit(edited, 0)
    assert module.num_frozen == n - rank and len(edits.list_edits(edited)) == len(rows) - 1
    if bank:
        assert module.earlier_states.shape[0] == bank  # rows it cannot attribute are kept
    edited.save_pretrained(str(tmp_path / "x"))
    saved = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert "edits" not in saved["interventions"][0]["config"]  # still the old config layout


def test_continuing_an_old_adapter_records_the_new_edits_after_the_old(tok, tmp_path):
    shutil.copytree(OLD, tmp_path / "old")
    m = model()
    edited = EditableModel.from_pretrained(m, str(tmp_path / "old"), tokenizer=tok)
    module = edited.attachments()[0].module
    old = len(edits.list_edits(edited))
    cfg = config()
    cfg.layers = [edited.attachments()[0].layer]
    Editor(edited, tok, cfg).edit(REQS[0])
    rows = edits.list_edits(edited)
    assert len(rows) == old + 1 and rows[-1]["prompt"] == REQS[0].prompt and rows[0]["prompt"] is None
    assert rows[-1]["bases"] == [module.num_frozen - module.config.rank, module.num_frozen]


def test_methods_without_edits_say_so():
    lo = build("loreft", {"rank": 2}, hidden_size=8)
    with pytest.raises(NotImplementedError, match=r"LoReFT \(loreft\) keeps no per-edit structure"):
        lo.list_edits()
    pool = build("baft", {"rank": 2, "incremental": False}, hidden_size=8)
    with pytest.raises(NotImplementedError, match="incremental=False trains one shared pool"):
        pool.delete_edit(0)
    assert not edits.holds_edits(lo) and edits.holds_edits(build("baft", {"rank": 2}, hidden_size=8))


def test_edits_trained_together_own_their_bases_and_bank_rows(tok):
    """One batch of two requests: two records of one group; deleting one removes its bases and
    exactly its subject's rows of the bank, whose rows interleave."""
    m = model()
    res = Editor(m, tok, config()).edit(REQS[:2])  # not sequential: one step, two requests
    module = res.edited.attachments()[0].module
    rows = edits.list_edits(res.edited)
    assert [r["bases"] for r in rows] == [[0, 2], [2, 4]]
    assert module.config.edits[0]["group"] == module.config.edits[1]["group"]
    keys = module.earlier_subject.tolist()
    assert sorted(set(keys)) == sorted({subject_key(r.subject) for r in REQS[:2]})
    info = edits.delete_edit(res.edited, 0)
    assert info["earlier_rows_removed"] == keys.count(subject_key(REQS[0].subject)) == rows[0]["num_earlier"]
    assert set(module.earlier_subject.tolist()) == {subject_key(REQS[1].subject)}
    assert [r["prompt"] for r in edits.list_edits(res.edited)] == [REQS[1].prompt]
    prompt = REQS[1].prompt
    assert last_logits(m, tok, [prompt]).argmax(-1).tolist() == ids(tok, REQS[1:2])
