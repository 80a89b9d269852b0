"""One set of defaults: the method's tuned values reach the Python API, the CLI and the benchmarks."""

from __future__ import annotations

import pytest

from repedit import EditorConfig
from repedit.editing import Editor
from repedit.editing import resolve_config
from repedit.methods import get_method


@pytest.mark.parametrize("method,lr,steps", [("baft", 2e-2, 60), ("codebook", 0.2, 50), ("loreft", 2e-2, 60)])
def test_each_method_carries_its_training_defaults(method, lr, steps):
    cfg = resolve_config(EditorConfig(method=method), get_method(method).config_cls)
    assert (cfg.lr, cfg.max_steps, cfg.stop_prob) == (lr, steps, 0.9)
    user = resolve_config(EditorConfig(method=method, lr=1e-3, max_steps=7), get_method(method).config_cls)
    assert (user.lr, user.max_steps) == (1e-3, 7)  # what the user sets wins


def test_the_default_method_is_baft_everywhere():
    from repedit.cli import build_parser

    assert EditorConfig().method == "baft"
    args = build_parser().parse_args(["edit", "--prompt", "p", "--target", "t", "--out", "o"])
    assert args.method == "baft" and args.lr is None and args.max_steps is None and args.stop_prob is None
    cfg = resolve_config(EditorConfig(), get_method("baft").config_cls)
    assert cfg.positions == "prompt" and cfg.augment == 2 and cfg.relation_copies == 4
    for method in ("codebook", "loreft"):
        assert resolve_config(EditorConfig(method=method), get_method(method).config_cls).relation_copies == 0
    assert resolve_config(EditorConfig(relation_copies=0), get_method("baft").config_cls).relation_copies == 0


def test_benchmarks_use_the_methods_defaults():
    import argparse

    from benchmarks import bench_baft, bench_codebook

    captured = {}

    def parse(self, argv=None, namespace=None):
        captured["defaults"] = {a.dest: a.default for a in self._actions}
        raise SystemExit(0)

    mp = pytest.MonkeyPatch()
    mp.setattr(argparse.ArgumentParser, "parse_args", parse)
    try:
        for mod in (bench_baft, bench_codebook):
            with pytest.raises(SystemExit):
                mod.main([])
            d = captured["defaults"]
            assert all(d.get(k) is None for k in ("lr", "max_steps", "stop_prob", "cb_lr", "cb_max_steps")), (mod, d)
    finally:
        mp.undo()


def test_a_method_without_defaults_falls_back():
    from repedit.methods.base import MethodConfig

    cfg = resolve_config(EditorConfig(method="x"), MethodConfig)
    assert (cfg.lr, cfg.max_steps, cfg.stop_prob, cfg.positions, cfg.augment) == (5e-3, 100, 0.9, "last_prompt", 0)
    assert cfg.relation_copies == 0


def test_cli_passes_the_generality_options(tmp_path):
    import json

    from repedit.cli import CLIError, _editor_config
    from repedit.cli_parser import build_parser

    known = tmp_path / "known.json"
    known.write_text(json.dumps([{"template": "{} is a native speaker of", "relation_id": "P103"},
                                 {"template": "The native language of {} is", "relation_id": "P103"}]))
    base = ["edit", "--prompt", "p", "--target", "t", "--out", "o"]
    args = build_parser().parse_args(base + ["--answer-end", "none", "--relation-templates", str(known),
                                             "--relation-copies", "2"])
    cfg = _editor_config(args)
    assert cfg.answer_end == "" and cfg.relation_copies == 2
    assert cfg.relation_templates["{} is a native speaker of"] == ["The native language of {} is"]
    assert _editor_config(build_parser().parse_args(base)).answer_end is None  # the method's default
    assert _editor_config(build_parser().parse_args(base)).answer_end_stop == "probability"
    assert _editor_config(build_parser().parse_args(base + ["--answer-end-stop", "argmax"])).answer_end_stop == "argmax"
    shipped = _editor_config(build_parser().parse_args(base + ["--relation-copies", "2"]))
    assert shipped.relation_copies == 2 and shipped.relation_templates is None  # the table shipped with repedit
    assert _editor_config(build_parser().parse_args(base)).relation_copies is None  # the method's default
    table = tmp_path / "rel.json"
    table.write_text(json.dumps({"format": "repedit-relations/1", "relations": [{"id": "x", "templates": ["{} a", "{} b"]}]}))
    assert _editor_config(build_parser().parse_args(base + ["--relation-templates", str(table)])).relation_templates.others("{} a") == ["{} b"]
    table.write_text("{broken")
    with pytest.raises(CLIError, match="--relation-templates: cannot read"):
        _editor_config(build_parser().parse_args(base + ["--relation-templates", str(table)]))
    with pytest.raises(CLIError, match="--relation-copies must be >= 0"):
        _editor_config(build_parser().parse_args(base + ["--relation-copies", "-1"]))


@pytest.mark.parametrize("model_type,layers,expected", [("llama", 30, 9), ("gemma3_text", 18, 3), ("qwen2", 12, 2)])
def test_baft_default_layer_is_measured_per_architecture(tok, model_type, layers, expected):
    """BaFT edits 0.3 of the depth on Llama-type models (layer 9 of SmolLM2) and 1/6 elsewhere
    (layer 3 of Gemma 3 270M); the Editor passes the model's type, and explicit layers win."""
    from tests.conftest import tiny_model

    model = tiny_model(model_type, num_hidden_layers=layers)
    assert Editor(model, tok, EditorConfig(method="baft")).default_layers() == [expected]
    assert Editor(model, tok, EditorConfig(method="baft", layers=[1])).default_layers() == [1]
    assert Editor(model, tok, EditorConfig(method="codebook")).default_layers() == [round(layers / 6)]
