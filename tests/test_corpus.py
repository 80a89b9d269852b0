"""The corpus shipped with repedit, other corpus sources, and what happens when text is missing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA, fact_requests, tiny_model
from repedit import Editor, EditorConfig
from repedit.corpus import Corpus, resolve_corpus

WIKI = SHARED_DATA / "wikitext2" / "wiki.test.raw"


def test_shipped_corpus_is_wikitext2_test_unchanged():
    corpus = Corpus.default()
    assert corpus.source.startswith("repedit:") and len(corpus) == 2891
    assert Corpus.default() is corpus  # read once per process
    if not WIKI.is_file():
        pytest.skip("no ../shared/data to compare with")
    shared = Corpus.from_file(WIKI)
    assert corpus.lines == shared.lines and corpus.sha256 == shared.sha256
    assert corpus.sentences(limit=2000) == shared.sentences(limit=2000)


def test_corpus_views_follow_the_wikitext_rules(tmp_path):
    f = tmp_path / "t.raw"
    f.write_text(" = Title = \n Robert Boulter met Doctor Who in London today . short one\n"
                 " He went to Paris with Anna Smith on Monday morning . and more words here too\n")
    c = Corpus.from_file(f)
    assert c.sentences() == ["Robert Boulter met Doctor Who in London today", "He went to Paris with Anna Smith on Monday morning",
                             "and more words here too"]
    assert c.sentences(max_words=3)[0] == "Robert Boulter met"
    names = c.names(100)
    assert "Boulter" in names and "Doctor Who" in names and "Anna Smith" in names
    assert "Robert" not in names and "He" not in names  # sentence starts are not names
    assert c.name_pairs() == ["Robert Boulter", "Doctor Who", "Anna Smith"]
    assert c.spread_sentences(1) == ["Robert Boulter met Doctor Who in London today"]


def test_resolve_corpus_sources(tmp_path):
    assert resolve_corpus(None) is Corpus.default()
    texts = resolve_corpus(["one two three four", "five six seven eight"])
    assert texts.sentences() == ["one two three four", "five six seven eight"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        resolve_corpus(tmp_path / "nope.txt")
    with pytest.raises(TypeError, match="list of strings"):
        resolve_corpus([1, 2])
    with pytest.raises(ValueError, match="needs the model"):
        resolve_corpus("model")


def test_model_corpus_is_generated_once_and_cached(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path))
    model = tiny_model("llama")
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = Corpus.from_model(model, tok, n_texts=6, max_new_tokens=8, batch_size=4)
    assert calls == [1, 1] and a.source.startswith("model:")
    assert all(len(line.split()) >= 4 for line in a.lines)
    assert list((tmp_path / "corpus").glob("*.txt"))
    b = Corpus.from_model(model, tok, n_texts=6, max_new_tokens=8, batch_size=4)
    assert calls == [1, 1] and b.lines == a.lines  # read from the cache


# ------------------------------------------------------------------ missing resources
CFG = dict(layers=[1], lr=5e-2, max_steps=3, stop_prob=0.5, augment=0)


@pytest.mark.parametrize("config", [
    dict(method="codebook", method_config={"known_facts_path": "/nonexistent/known.json"}),
    dict(method="codebook", method_config={"corpus_path": "/nonexistent/wiki.raw"}),
    dict(method="baft", method_config={"nullspace": "read", "nullspace_corpus": "/nonexistent/ns.txt"}),
    dict(method="baft", augment_corpus="/nonexistent/prefixes.txt"),
    dict(method="baft", corpus="/nonexistent/corpus.txt"),
])
def test_a_named_resource_that_is_missing_is_an_error_before_anything_is_attached(tok, config):
    model = tiny_model("llama")
    before = [p.detach().clone() for p in model.parameters()]
    editor = Editor(model, tok, EditorConfig(**dict(CFG, augment=1), **config))
    with pytest.raises(FileNotFoundError, match="/nonexistent/"):
        editor.edit(fact_requests(1))
    assert editor.edited.attachments() == []  # nothing attached, nothing trained
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("method,method_config,expect", [
    ("baft", {"num_subject_negatives": 10}, "without corpus negatives"),
    ("baft", {"num_subject_negatives": 10}, "no entity names"),
    ("codebook", {"corpus_sentences": 8}, "no sentences of 6\\+ words"),
    ("codebook", {"corpus_sentences": 0}, "no entity names"),
])
def test_a_default_that_falls_back_says_so(tok, caplog, method, method_config, expect):
    model = tiny_model("llama")
    cfg = EditorConfig(method=method, method_config=method_config, corpus=["tiny"], **CFG)
    with caplog.at_level(logging.WARNING):
        Editor(model, tok, cfg).edit(fact_requests(1))
    assert any(__import__("re").search(expect, r.getMessage()) for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_explicit_opt_outs_stay_quiet(tok, caplog):
    model = tiny_model("llama")
    cfg = EditorConfig(method="codebook", method_config={"corpus_sentences": 0, "num_names": 0}, corpus=["tiny"],
                       answer_end="", **CFG)
    with caplog.at_level(logging.WARNING):
        Editor(model, tok, cfg).edit(fact_requests(1))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "repedit" in r.name]


def test_nullspace_with_an_empty_corpus_is_an_error(tok):
    editor = Editor(tiny_model("llama"), tok, EditorConfig(method="baft", method_config={"nullspace": "read"},
                                                           corpus=["tiny"], **CFG))
    with pytest.raises(ValueError, match="null space needs corpus texts"):
        editor.edit(fact_requests(1))


def test_augmentation_uses_the_editor_corpus(tok):
    editor = Editor(tiny_model("llama"), tok, EditorConfig(**dict(CFG, method="loreft", augment=2,
                                                                  corpus=["the cat sat on the mat"])))
    prompts, owners = editor.training_prompts(fact_requests(1), [0])
    assert len(prompts) == 3 and all(p.startswith("the cat") for p in prompts[1:])
    tiny = Editor(tiny_model("llama"), tok, EditorConfig(**dict(CFG, method="loreft", augment=1, corpus=["tiny"])))
    with pytest.raises(ValueError, match="augment > 0 needs a corpus"):
        tiny.edit(fact_requests(1))
    assert tiny.edited.attachments() == []


def test_package_never_reads_the_repository_layout():
    root = Path(__file__).resolve().parents[1] / "repedit"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if any(s in p.read_text(encoding="utf-8") for s in ('"shared"', "'shared'", "../shared", "shared/data"))]
    assert offenders == []


def test_user_entity_names_replace_the_mined_ones(tok, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("Eiffel Tower\nLouvre\n\nNotre Dame\n")
    corpus = Corpus.default().with_names(names)
    assert corpus.names(2) == ["Eiffel Tower", "Louvre"] and corpus.lines == Corpus.default().lines
    assert corpus.sha256 != Corpus.default().sha256  # cached states of other names are not reused
    editor = Editor(tiny_model("llama"), tok, EditorConfig(**CFG, method="baft", entity_names=["london", "madrid"]))
    assert editor.corpus.names(1000) == ["london", "madrid"]
    with pytest.raises(FileNotFoundError, match="entity-names file"):
        Editor(tiny_model("llama"), tok, EditorConfig(**CFG, method="baft", entity_names=str(tmp_path / "no.txt"))).edit(
            fact_requests(1))
