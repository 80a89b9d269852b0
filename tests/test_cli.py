"""The ``repedit`` command line end to end on a tiny random model saved to disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model, tiny_tokenizer
from repedit.cli import build_parser, main

TF, PROB, GEN = "teacher_forced/easyedit", "probability/rome", "generation/mirage"

REQUESTS = [
    {"prompt": "the capital of france is", "target_new": "rome", "subject": "france", "ground_truth": "paris",
     "rephrase_prompts": ["the city of france is"],
     "locality_prompts": [{"prompt": "the capital of spain is", "ground_truth": "madrid"}], "case_id": 0},
    {"prompt": "the mother tongue of danielle darrieux is", "target_new": "english", "subject": "danielle darrieux",
     "ground_truth": "french", "rephrase_prompts": ["danielle darrieux speak"],
     "locality_prompts": [{"prompt": "people in london speak", "ground_truth": "english"}], "case_id": 1},
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model + tokenizer saved with save_pretrained, a requests file, and an adapter."""
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    reqs = root / "reqs.json"
    reqs.write_text(json.dumps(REQUESTS))
    adapter = root / "adapter"
    rc = main(["edit", "--model", str(model_dir), "--data", str(reqs), "--method", "loreft", "--layers", "1",
               "--method-config", '{"rank": 4, "seed": 0}', "--lr", "0.05", "--max-steps", "60",
               "--out", str(adapter), "--no-progress"])
    assert rc == 0
    return {"root": root, "model": str(model_dir), "reqs": str(reqs), "adapter": str(adapter)}


def test_edit_writes_an_adapter_that_inspect_summarises(files, capsys):
    adapter = Path(files["adapter"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["metadata"]["data"]["rows"] == 2 and cfg["metadata"]["editor"]["layers"] == [1]
    capsys.readouterr()
    assert main(["inspect", files["adapter"]]) == 0
    out = capsys.readouterr().out
    assert "loreft_L1: loreft @ layer 1 block_output [last_prompt]" in out
    assert "260 parameters" in out and "sha256 ok" in out and "reqs.json" in out
    assert main(["inspect", files["adapter"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (ad,) = info["adapters"]
    assert ad["interventions"][0]["parameters"] == 4 * 32 + 4 * 32 + 4  # R, W, b of rank-4 LoReFT
    assert ad["tensors_sha256_ok"] is True


def test_eval_prints_a_labelled_table_and_writes_records(files, capsys, tmp_path):
    out = tmp_path / "metrics.json"
    capsys.readouterr()
    assert main(["eval", "--adapter", files["adapter"], "--out", str(out), "--no-progress"]) == 0  # data + model from the adapter
    text = capsys.readouterr().out
    for label in (TF, PROB, GEN):
        assert label in text
    data = json.loads(out.read_text())
    assert data["metadata"]["protocols"] == [TF, PROB, GEN]
    assert data["metadata"]["data"]["sha256"] and data["metadata"]["adapter"]["path"].endswith("adapter")
    assert data["metadata"]["seed"] == 0
    assert len(data["records"]) == 2
    for rec in data["records"]:
        assert rec["post"]["metric_meta"]["rewrite_acc"] == TF and rec["pre"]["metric_meta"]["rewrite_acc"] == TF
    assert data["summary"]["post"]["rewrite_acc"] == 1.0  # the edit works after a save/load round trip
    assert data["summary"]["headline"][TF]["protocol"] == TF
    # explicit data options and a single protocol
    assert main(["eval", "--model", files["model"], "--adapter", files["adapter"], "--data", files["reqs"],
                 "--limit", "1", "--offset", "1", "--protocols", "teacher_forced", "--out", str(out),
                 "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["metadata"]["protocols"] == [TF] and [r["case_id"] for r in data["records"]] == [1]


def test_generate_shows_both_sides(files, capsys):
    capsys.readouterr()
    assert main(["generate", "--adapter", files["adapter"], "--prompt", "the capital of france is",
                 "--max-new-tokens", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "without adapter:" in out and "with adapter:" in out and "the capital of france is" in out
    assert main(["generate", "--adapter", files["adapter"], "--prompt", "the capital of france is",
                 "--max-new-tokens", "2", "--json", "--no-progress"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["with_adapter"].split()[0] == "rome" and row["without_adapter"].split()[0] != "rome"


def test_sweep_writes_json_and_png(files, capsys, tmp_path):
    out = tmp_path / "sweep.json"
    capsys.readouterr()
    assert main(["sweep", "--adapter", files["adapter"], "--values", "0,1", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert TF in text and "scope AUC" in text
    data = json.loads(out.read_text())
    (curve,) = data["curves"]
    assert data["protocol"] == TF and curve["protocol"] == TF and curve["knob"] == "scale"
    assert [r["value"] for r in curve["rows"]] == [0.0, 1.0]
    assert curve["rows"][0]["locality"] == 1.0 and curve["rows"][1]["reliability"] == 1.0
    png = out.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


def test_sequential_edit_with_immediate_evaluation(files, tmp_path, capsys):
    out = tmp_path / "seq"
    assert main(["edit", "--model", files["model"], "--data", files["reqs"], "--layers", "1", "--lr", "0.05",
                 "--max-steps", "30", "--sequential", "--evaluate", "immediate", "--out", str(out),
                 "--no-progress"]) == 0
    data = json.loads((out / "metrics_immediate.json").read_text())
    assert data["metadata"]["sequential_protocol"] == "immediate" and data["summary"]["sequential_protocol"] == "immediate"
    assert data["metadata"]["protocols"] == [TF]
    assert "sequential protocol: immediate" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["eval", "--adapter", "/nonexistent/adapter"], "does not exist"),
    (["inspect", "/nonexistent/adapter"], "does not exist"),
    (["edit", "--data", "counterfact", "--method-config", "{rank: 4}", "--out", "X"], "not valid JSON"),
    (["edit", "--data", "counterfact", "--method", "nosuch", "--out", "X"], "unknown method 'nosuch'"),
    (["edit", "--data", "counterfact", "--method-config", '{"bogus": 1}', "--out", "X"], "unknown keys ['bogus']"),
    (["edit", "--data", "/no/such/file.json", "--out", "X"], "no such file"),
    (["edit", "--prompt", "the capital of france is", "--out", "X"], "needs both --prompt and --target"),
    (["edit", "--data", "counterfact", "--evaluate", "final", "--out", "X"], "needs --sequential"),
    (["sweep", "--adapter", "A", "--values", "0,x", "--out", "s.json"], "comma list of floats"),
    (["generate", "--adapter", "A"], "at least one --prompt"),
])
def test_bad_arguments_give_one_line_and_exit_1(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "error:" in err and "Traceback" not in err


def test_bad_files_and_data_options(files, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "the capital of france is"}]')
    assert main(["edit", "--model", files["model"], "--data", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "field 'target_new' is missing" in capsys.readouterr().err
    assert main(["eval", "--adapter", files["adapter"], "--limit", "-1"]) == 1
    assert "--limit must be >= 0" in capsys.readouterr().err
    assert main(["eval", "--adapter", files["adapter"], "--zsre-target", "answers"]) == 1
    assert "zsRE data only" in capsys.readouterr().err
    assert main(["edit", "--model", files["model"], "--data", files["reqs"], "--out", files["adapter"]]) == 1
    assert "--overwrite" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    (broken / "adapter_model.safetensors").write_bytes(b"")
    assert main(["inspect", str(broken)]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_named_dataset_recorded_in_an_adapter_is_reloaded(capsys):
    from types import SimpleNamespace

    from repedit.cli import _data_spec, _load_data

    pytest.importorskip("datasets")
    try:
        from repedit.eval.data import default_data_dir

        default_data_dir()
    except FileNotFoundError:
        pytest.skip("no shared data directory")
    args = SimpleNamespace(data=None, data_format="auto", limit=None, offset=None, data_seed=None, zsre_target=None)
    recorded = {"data": "counterfact", "format": "counterfact", "limit": 2, "offset": 1, "seed": None,
                "zsre_target": None}
    cfg = SimpleNamespace(metadata={"data": recorded})
    ds, again = _load_data(_data_spec(args, cfg))
    assert len(ds) == 2 and again["data"] == "counterfact" and again["offset"] == 1
    args.limit = 1  # the command line overrides the recorded selection
    ds, _ = _load_data(_data_spec(args, cfg))
    assert len(ds) == 1


def test_help_and_usage_errors(capsys):
    for cmd in ("edit", "eval", "sweep", "inspect", "generate", "edits"):
        assert main([cmd, "--help"]) == 0
        assert f"usage: repedit {cmd}" in capsys.readouterr().out
    assert main(["eval", "--batch-size", "many"]) == 2  # argparse syntax error
    assert "invalid int value" in capsys.readouterr().err
    assert main([]) == 2
    assert set(build_parser()._subparsers._group_actions[0].choices) == {"edit", "eval", "sweep", "inspect", "generate", "edits"}


def test_console_script_exit_code_in_a_subprocess(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "repedit.cli", "inspect", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "repedit inspect: error:" in proc.stderr and "Traceback" not in proc.stderr


def test_interrupted_sequential_edit_resumes_to_the_same_adapter(files, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from repedit.checkpoints import SequentialCheckpoint

    base = ["edit", "--model", files["model"], "--data", files["reqs"], "--method", "baft", "--layers", "1",
            "--method-config", '{"seed": 0, "num_corpus_negatives": 0}', "--lr", "0.05", "--max-steps", "20",
            "--sequential", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "run"
    orig = SequentialCheckpoint.save

    def save_then_die(self, *a, **kw):
        orig(self, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(SequentialCheckpoint, "save", save_then_die)
    assert main(base + ["--checkpoint-every", "1", "--out", str(out)]) == 130  # killed after the first edit
    monkeypatch.setattr(SequentialCheckpoint, "save", orig)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["done"] == 1 and not (out / "adapter_config.json").exists()
    capsys.readouterr()
    assert main(base + ["--checkpoint-every", "1", "--out", str(out)]) == 1  # refuses to start over silently
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--checkpoint-every", "1", "--resume", "--out", str(out)]) == 0
    assert "resuming after 1/2 edits" in capsys.readouterr().err
    assert not (out / "checkpoint").exists()
    want = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter_model.safetensors"))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    meta = json.loads((out / "adapter_config.json").read_text())["metadata"]
    assert meta["outcome"]["edits"] == 2  # the outcomes before and after the interruption
    # other options than the checkpoint's are refused
    monkeypatch.setattr(SequentialCheckpoint, "save", save_then_die)
    assert main(base + ["--checkpoint-every", "1", "--out", str(tmp_path / "r2")]) == 130
    monkeypatch.setattr(SequentialCheckpoint, "save", orig)
    capsys.readouterr()
    assert main(base[:-2] + ["--max-steps", "21", "--sequential", "--no-progress", "--resume", "--out", str(tmp_path / "r2")]) == 1
    assert "other requests or another config" in capsys.readouterr().err


def test_edit_reports_success_as_the_edit_runs_at_inference(files, tmp_path, capsys):
    """`repedit edit` records the Editor's inference-mode check (a BaFT edit switched off by a
    huge gate shift did not take); --no-verify records the training verdict instead."""
    model_dir = tmp_path / "tiny05"  # larger weights than the fixture's model: BaFT edits it in a few steps
    tiny_model("llama", initializer_range=0.5).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    rates = {}
    for flag in ([], ["--no-verify"]):
        out = tmp_path / f"baft{len(flag)}"
        rc = main(["edit", "--model", str(model_dir), "--data", files["reqs"], "--limit", "1", "--method", "baft",
                   "--layers", "1", "--positions", "last_prompt", "--augment", "0", "--lr", "0.05", "--max-steps", "150",
                   "--stop-prob", "0.5", "--method-config", '{"num_corpus_negatives": 0, "gate_shift": -60}',
                   "--out", str(out), "--no-progress", *flag])
        assert rc == 0
        meta = json.loads((out / "adapter_config.json").read_text())["metadata"]
        assert meta["editor"]["verify"] is not bool(flag)
        rates[bool(flag)] = meta["outcome"]["success_rate"]
    assert rates == {False: 0.0, True: 1.0}


def test_console_main_under_a_launcher_exits_without_interpreter_teardown(monkeypatch):
    """Under torchrun a rank leaves by os._exit with main's status (gloo's teardown at
    finalization can abort); alone it exits normally through SystemExit."""
    import repedit.cli as cli

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Exited) as hard:
        cli.console_main()
    assert hard.value.args == (3,)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as soft:
        cli.console_main()
    assert soft.value.code == 3


def test_threads_must_be_positive(capsys):
    assert main(["inspect", "--methods", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command loads the model (its arguments should be refused before)."""
    import repedit.cli as cli

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load_model", refuse)


@pytest.mark.parametrize("extra, message", [
    (["--method-config", '{"rank": "two"}'], "option 'rank' of method 'loreft' must be int, got str 'two'"),
    (["--method-config", '{"rank": 0}'], "rank must be in 1..32"),
    (["--method-config", '{"rank": 33}'], "rank must be in 1..32"),
    (["--layers", "2"], "--layers: 2 is not a decoder layer of the model (it has 2: 0..1)"),
    (["--layers", "-3"], "--layers: -3 is not a decoder layer"),
    (["--sequential", "--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
])
def test_edit_checks_sizes_and_options_before_loading_the_model(files, tmp_path, capsys, no_model_load, extra, message):
    assert main(["edit", "--model", files["model"], "--data", files["reqs"], "--method", "loreft", "--out",
                 str(tmp_path / "o"), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_data_directory_skip_invalid_and_cli_hints(files, tmp_path, capsys, monkeypatch, no_model_load):
    assert main(["edit", "--model", files["model"], "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"--data {tmp_path} is a directory" in err and "requests file not found" not in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([REQUESTS[0], {"prompt": "the capital of france is"}]))
    assert main(["edit", "--model", files["model"], "--data", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "pass --skip-invalid" in err and "skip_invalid=True" not in err
    from repedit.cli import _load_data

    ds, recorded = _load_data({"data": str(bad), "format": "auto", "skip_invalid": True})
    assert len(ds) == 1 and recorded["skip_invalid"] is True
    monkeypatch.setenv("REPEDIT_DATA", str(tmp_path))  # a data directory without CounterFact
    assert main(["edit", "--model", files["model"], "--data", "counterfact", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "pass --data PATH" in err and "path=..." not in err


def test_fingerprint_hint_names_the_flag(files, tmp_path, capsys):
    other = tmp_path / "other"
    tiny_model("llama", seed=123).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    assert main(["generate", "--model", str(other), "--adapter", files["adapter"], "--prompt", "he was born in"]) == 1
    err = capsys.readouterr().err
    assert "pass --ignore-fingerprint" in err and "ignore_fingerprint=True" not in err


def test_eval_and_generate_refuse_bad_counts_and_empty_prompts(files, capsys, no_model_load):
    assert main(["eval", "--adapter", files["adapter"], "--fluency-tokens", "-5"]) == 1
    err = capsys.readouterr().err
    assert "--fluency-tokens must be >= 0, got -5" in err and "max_new_tokens" not in err
    assert main(["generate", "--adapter", files["adapter"], "--prompt", ""]) == 1
    assert "--prompt must not be empty" in capsys.readouterr().err


def test_generate_finds_the_subject_of_a_subject_rule_edit(files, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["edit", "--model", files["model"], "--prompt", "the capital of france is", "--target", "rome",
                 "--subject", "france", "--positions", "subject", "--layers", "1", "--lr", "0.05", "--max-steps", "5",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    prompt = ["--prompt", "where is the capital of france"]
    assert main(["generate", "--adapter", str(out), *prompt, "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "subjects: ['france'] (from the adapter's requests)" in captured.err
    assert main(["generate", "--adapter", str(out), *prompt, "--subject", "france", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(captured.out)
    assert main(["generate", "--adapter", str(out), "--prompt", "he was born in", "--no-progress"]) == 1
    assert "pass --subject once per prompt" in capsys.readouterr().err


def test_edit_mixed_precision_reaches_the_editor_config():
    from repedit.cli import _editor_config

    base = ["edit", "--model", "m", "--requests", "r.json", "--out", "o"]
    args = build_parser().parse_args(base + ["--mixed-precision", "bf16"])
    assert _editor_config(args).mixed_precision == "bf16"
    assert _editor_config(build_parser().parse_args(base)).mixed_precision is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--mixed-precision", "int8"])
