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
