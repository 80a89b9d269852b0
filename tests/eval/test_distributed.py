"""Sharded evaluation: two CPU processes under torchrun (gloo) give the single-process result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import fact_requests, tiny_model, tiny_tokenizer
from repedit import Editor, EditorConfig
from repedit.cli import main
from repedit.eval import distributed as D

REQS = fact_requests(3)


def test_assign_and_gather_without_a_process_group():
    assert D.assign(5, 0, 2) == [0, 2, 4] and D.assign(5, 1, 2) == [1, 3]
    assert sorted(D.assign(7, 0, 3) + D.assign(7, 1, 3) + D.assign(7, 2, 3)) == list(range(7))
    assert D.rank_and_world() == (0, 1) and D.is_main_process()
    assert D.gather_indexed([(1, "b"), (0, "a")], 2) == ["a", "b"]
    with pytest.raises(RuntimeError, match="no rank"):
        D.gather_indexed([(0, "a")], 2)
    with pytest.raises(ValueError):
        D.assign(3, 2, 2)
    assert D.init_from_env() is False  # not launched: nothing happens


def _close(a, b, path="") -> None:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a == b, path
        else:
            assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.distributed
def test_two_process_eval_equals_single_process(tmp_path):
    model_dir = tmp_path / "tiny"
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([r.to_dict() for r in REQS]))
    cfg = EditorConfig(method="loreft", layers=[1], lr=0.05, max_steps=20, method_config={"rank": 4, "seed": 0})
    Editor(model, tok, cfg).edit(REQS).save_pretrained(str(tmp_path / "adapter"))
    args = ["eval", "--model", str(model_dir), "--adapter", str(tmp_path / "adapter"), "--data", str(reqs),
            "--protocols", "teacher_forced,probability", "--chunk-size", "1", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "repedit.cli", *args, "--out", str(tmp_path / "two.json")],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(args + ["--out", str(tmp_path / "one.json")]) == 0
    two = json.loads((tmp_path / "two.json").read_text())
    one = json.loads((tmp_path / "one.json").read_text())
    assert two["metadata"]["world_size"] == 2 and one["metadata"]["world_size"] == 1
    assert [r["case_id"] for r in two["records"]] == [0, 1, 2]
    _close(two["records"], one["records"], "records")
    _close(two["summary"], one["summary"], "summary")
    assert two["metadata"]["protocols"] == one["metadata"]["protocols"] == ["teacher_forced/easyedit", "probability/rome"]
