"""benchmarks/bench_peers.py's pure parts: the repedit request -> EasyEdit ``edit()`` arguments
conversion, the layer scaling of the hyper-parameters and the WikiText-2 reader. Needs neither
EasyEdit nor a model."""

from pathlib import Path

import pytest
import yaml

from repedit import EditRequest, LocalityPrompt

ROOT = Path(__file__).resolve().parents[1]


def _request(**kw):
    base = dict(prompt="The mother tongue of Danielle Darrieux is", target_new="English", subject="Danielle Darrieux",
                ground_truth="French", rephrase_prompts=["Where Danielle Darrieux is from, people speak", "x"],
                locality_prompts=[LocalityPrompt("Michel Rocard is a native speaker of", "French")], case_id=0)
    base.update(kw)
    return EditRequest(**base)


def test_easyedit_arguments_one_edit_per_call():
    from benchmarks.bench_peers import easyedit_arguments

    args = easyedit_arguments(_request())
    assert args == {
        "prompts": ["The mother tongue of Danielle Darrieux is"],
        "target_new": ["English"],
        "ground_truth": ["French"],
        "subject": ["Danielle Darrieux"],
        "rephrase_prompts": ["Where Danielle Darrieux is from, people speak"],
        "locality_inputs": {"neighborhood": {"prompt": ["Michel Rocard is a native speaker of"],
                                             "ground_truth": ["French"]}},
    }


def test_easyedit_arguments_optional_fields_and_subject_check():
    from benchmarks.bench_peers import easyedit_arguments

    args = easyedit_arguments(_request(rephrase_prompts=[], locality_prompts=[], ground_truth=None))
    assert set(args) == {"prompts", "target_new", "ground_truth", "subject"}
    assert args["ground_truth"] == [None]  # as EasyEdit's normalize_ground_truths leaves it
    with pytest.raises(ValueError, match="subject"):
        easyedit_arguments(_request(subject="Someone Else"))


def test_scaled_layers_match_the_shipped_hparams():
    from benchmarks.bench_peers import METHODS, scaled_layer

    assert scaled_layer(27) == 25 and scaled_layer(31) == 29 and scaled_layer(0) == 0
    hp = {m: yaml.safe_load((ROOT / "benchmarks" / "peers" / "hparams" / f"{m}.yaml").read_text()) for m in METHODS}
    assert hp["grace"]["inner_params"] == ["model.layers[25].mlp.down_proj.weight"]
    assert hp["rome"]["layers"] == [scaled_layer(5)]
    for m in ("memit", "alphaedit"):
        assert hp[m]["layers"] == [scaled_layer(x) for x in (4, 5, 6, 7, 8)]
    for m in ("rome", "memit", "alphaedit"):
        assert hp[m]["v_loss_layer"] == 29 and hp[m]["device"] == "cpu"


def test_wikitext_texts_drops_headings_and_blank_lines(tmp_path):
    from benchmarks.bench_peers import wikitext_texts

    f = tmp_path / "wiki.test.raw"
    f.write_text(" \n = Robert Boulter = \n \n Robert Boulter is an actor . \n = = Career = = \n He was born .\n")
    assert wikitext_texts(f) == ["Robert Boulter is an actor .", "He was born ."]
    assert wikitext_texts(f, limit=1) == ["Robert Boulter is an actor ."]


def test_interleaved_single_runs_every_method_per_record_and_resumes(tmp_path):
    """Single edits run record by record, every method in turn (so their s/edit share one run's
    load); kept records are reused on a rerun and marked as timed by an earlier run."""
    from benchmarks.bench_peers import interleaved_single, speed_ratios

    order = []

    def runner(m, s):
        return lambda i: order.append((i, m)) or {"post": {"i": i}, "seconds": s * (i + 1), "restore_max_abs_diff": 0.0}

    runners = {"rome": runner("rome", 20.0), "repedit baft": runner("repedit baft", 2.0)}
    idents = {"rome": {"m": "rome"}, "repedit baft": {"m": "baft"}}
    recs = interleaved_single(runners, [7, 8, 9], lambda m: None, tmp_path, idents)
    assert order == [(0, "rome"), (0, "repedit baft"), (1, "rome"), (1, "repedit baft"), (2, "rome"), (2, "repedit baft")]
    assert [r["seconds"] for r in recs["rome"]] == [20.0, 40.0, 60.0] and all(r["fresh"] for r in recs["rome"])
    (ratio,) = speed_ratios(recs, ["rome"], ["repedit baft"])
    assert ratio["ratio"] == pytest.approx(10.0) and ratio["records"] == 3
    order.clear()
    again = interleaved_single(runners, [7, 8, 9], lambda m: None, tmp_path, idents)
    assert order == [] and not any(r["fresh"] for r in again["rome"])  # all kept: nothing edited
    assert speed_ratios(again, ["rome"], ["repedit baft"]) == []  # no record timed in this run
    other = interleaved_single(runners, [7, 8, 5], lambda m: None, tmp_path, idents)  # another case at record 2
    assert [r["fresh"] for r in other["rome"]] == [False, False, True]
