"""``repedit edits list|delete|explain|merge`` end to end on a tiny model (the model loader is
monkeypatched, as in the other CLI tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_model, tiny_tokenizer
from repedit import EditRequest, Editor, EditorConfig
from repedit.cli import main
from repedit.hooks import EditableModel

REQS = [
    EditRequest(prompt="the capital of france is", target_new="rome", subject="france"),
    EditRequest(prompt="danielle darrieux speaks", target_new="german", subject="danielle darrieux"),
    EditRequest(prompt="the eiffel tower is located in", target_new="madrid", subject="eiffel tower"),
]


def model():
    return tiny_model("llama", initializer_range=0.5)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_edits")
    cfg = EditorConfig(method="baft", layers=[1], positions="last_prompt", lr=5e-2, max_steps=150, stop_prob=0.5,
                       relation_copies=0, method_config={"num_corpus_negatives": 0})
    res = Editor(model(), tiny_tokenizer(), cfg).edit(REQS, sequential=True)
    res.save_pretrained(str(root / "three"))
    hot = EditableModel.from_pretrained(model(), str(root / "three"))
    hot.get("baft_L1").module.set_knob("temperature", 2.0)
    hot.save_pretrained(str(root / "hot"))
    lo = EditableModel(model(), tiny_tokenizer())
    lo.add("shared", "loreft", layer=1, config={"rank": 2, "seed": 0})
    lo.save_pretrained(str(root / "loreft"))
    return root


@pytest.fixture
def tiny_loader(monkeypatch):
    import repedit.cli as cli

    monkeypatch.setattr(cli, "_load_model", lambda args, cfg=None: (model(), tiny_tokenizer(), "tiny"))


@pytest.fixture
def no_model(monkeypatch):
    import repedit.cli as cli

    def refuse(*a, **k):
        raise AssertionError("edits list loaded a model")

    monkeypatch.setattr(cli, "_load_model", refuse)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def listed(directory, capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["edits", "list", str(directory), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_reads_the_files_without_a_model(adapter, capsys, no_model):
    assert main(["edits", "list", str(adapter / "three")]) == 0
    out = capsys.readouterr().out
    assert "baft_L1 #1: 'danielle darrieux speaks' -> 'german' [subject 'danielle darrieux']" in out
    assert "bases 2..3" in out and "3 edit(s)" in out
    rows = listed(adapter / "three", capsys)
    assert [r["prompt"] for r in rows] == [r.prompt for r in REQS] and rows[2]["bases"] == [4, 6]
    assert main(["inspect", str(adapter / "three")]) == 0
    assert "6 frozen bases, 3 recorded edits" in capsys.readouterr().out


def test_explain_names_the_edit_for_its_prompt(adapter, capsys, tiny_loader):
    assert main(["edits", "explain", str(adapter / "three"), "--prompt", REQS[2].prompt]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("fires ") and "baft_L1 #2: 'the eiffel tower is located in' -> 'madrid'" in out[0]
    assert "at token 5 'in'" in out[0] and len(out) == 1
    assert main(["edits", "explain", str(adapter / "three"), "--prompt", "the city of paris", "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["index"] for r in rows) == [0, 1, 2] and not any(r["fired"] for r in rows)
    assert main(["edits", "explain", str(adapter / "three"), "--prompt", "the city of paris"]) == 0
    assert "no edit fires on this prompt" in capsys.readouterr().out


def test_delete_to_a_new_directory_and_in_place(adapter, tmp_path, capsys, tiny_loader):
    src = adapter / "three"
    before = files(src)
    assert main(["edits", "delete", str(src), "1", "--out", str(tmp_path / "two")]) == 0
    assert "deleted baft_L1 #1: 'danielle darrieux speaks'" in capsys.readouterr().out
    assert files(src) == before  # --out leaves the source alone
    rows = listed(tmp_path / "two", capsys)
    assert [r["prompt"] for r in rows] == [REQS[0].prompt, REQS[2].prompt]
    meta = json.loads((tmp_path / "two" / "adapter_config.json").read_text())["metadata"]
    assert meta["deleted_edits"][0]["prompt"] == REQS[1].prompt
    # in place: the adapter is rewritten, and the deleted edit no longer fires
    assert main(["edits", "delete", str(tmp_path / "two"), "0", "--name", "baft_L1"]) == 0
    assert [r["prompt"] for r in listed(tmp_path / "two", capsys)] == [REQS[2].prompt]
    assert main(["edits", "explain", str(tmp_path / "two"), "--prompt", REQS[0].prompt, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("argv, message", [
    (["delete", "{three}", "3"], "edit 3 out of range: this BaFT holds 3 edit(s) (0..2)"),
    (["delete", "{three}", "0", "--name", "nope"], "no intervention named 'nope'; attached: ['baft_L1']"),
    (["delete", "{three}", "0", "--out", "{three}"], "exists and is not empty; give a new directory"),
    (["list", "{loreft}"], "keeps per-edit structure (baft, codebook); it holds: shared (loreft)"),
    (["list", "{loreft}", "--name", "shared"], "LoReFT (loreft) keeps no per-edit structure, so it cannot list its edits"),
    (["list", "{three}", "--name", "nope"], "no intervention named 'nope'"),
    (["delete", "{loreft}", "0"], "no attached intervention keeps per-edit structure (baft, codebook); attached: shared (loreft)"),
    (["delete", "{loreft}", "0", "--name", "shared"], "LoReFT (loreft) keeps no per-edit structure, so it cannot delete"),
    (["merge", "{three}", "{hot}", "{out}"], "cannot merge 'baft_L1': cannot merge BaFTs with different temperature: 1.0 vs 2.0"),
    (["explain", "{three}", "--prompt", "the city", "--subject", "paris"], "--subject 'paris' does not occur in the prompt"),
])
def test_bad_input_is_one_line_and_leaves_files_untouched(adapter, tmp_path, capsys, tiny_loader, argv, message):
    paths = {k: str(adapter / k) for k in ("three", "loreft", "hot")}
    paths["out"] = str(tmp_path / "out")
    before = {k: files(adapter / k) for k in ("three", "loreft", "hot")}
    assert main(["edits", *[a.format(**paths) for a in argv]]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert {k: files(adapter / k) for k in ("three", "loreft", "hot")} == before
    assert not (tmp_path / "out").exists()


def test_merge_puts_split_edits_back_together(adapter, tmp_path, capsys, tiny_loader):
    src = str(adapter / "three")
    assert main(["edits", "delete", src, "2", "--out", str(tmp_path / "a")]) == 0
    assert main(["edits", "delete", src, "0", "--out", str(tmp_path / "b0")]) == 0
    assert main(["edits", "delete", str(tmp_path / "b0"), "0", "--out", str(tmp_path / "b")]) == 0
    assert main(["edits", "merge", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "ab")]) == 0
    assert "merged" in capsys.readouterr().out
    assert [r["prompt"] for r in listed(tmp_path / "ab", capsys)] == [r.prompt for r in REQS]
    for i, r in enumerate(REQS):
        assert main(["edits", "explain", str(tmp_path / "ab"), "--prompt", r.prompt, "--json"]) == 0
        assert [e["index"] for e in json.loads(capsys.readouterr().out)] == [i]
    # merging into an existing directory is refused
    assert main(["edits", "merge", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "ab")]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
