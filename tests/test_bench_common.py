"""Benchmark helpers shared by the scripts in benchmarks/ (timed on a fake clock, so the
assertions are exact and independent of the machine's load)."""

import json
import types

import pytest


class FakeClock:
    """Stands in for the ``time`` module: ``perf_counter`` reads ``now``, which the timed
    callables advance."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    from benchmarks import bench_baft, common

    c = FakeClock()
    fake = types.SimpleNamespace(perf_counter=c.perf_counter)
    monkeypatch.setattr(common, "time", fake)
    monkeypatch.setattr(bench_baft, "time", fake)
    return c


def test_latency_ratio_reports_median_and_fastest_run_ratios(clock):
    """Edited over unedited time, interleaved (base first on even pairs, edited first on odd
    ones); the median ratio ignores one disturbed pair, the fastest-run ratio uses the minima."""
    from benchmarks.common import latency_ratio

    calls, base = [], iter([9.0, 3.0, 2.0, 2.0, 2.0, 2.0])  # the first is a warmup; one disturbed pair

    def run_base():
        calls.append("b")
        clock.spend(next(base))

    def run_edited():
        calls.append("e")
        clock.spend(4.0)

    out = latency_ratio(run_edited, run_base, repeats=5, warmup=1)
    assert calls == ["b", "e", "b", "e", "e", "b", "b", "e", "e", "b", "b", "e"]
    assert out["base_s"] == 2.0 and out["edited_s"] == 4.0 and out["ratio"] == 2.0
    assert out["median_pair_ratio"] == 2.0 and out["min_ratio"] == 2.0 and out["repeats"] == 5


def test_latency_ratio_of_one_callable_against_itself_times_both_sides(clock):
    """An A/A measurement (the noise floor) passes one callable as both sides: each call is
    timed on its own (first call of a pair: the base, second: the edited side)."""
    from benchmarks.common import latency_ratio

    durations = iter([2.0, 8.0])
    f = lambda: clock.spend(next(durations))  # noqa: E731
    out = latency_ratio(f, f, repeats=1, warmup=0)
    assert out["base_s"] == 2.0 and out["edited_s"] == 8.0 and out["ratio"] == 4.0


def test_hook_seconds_times_only_the_edit_hooks_and_removes_its_timers(tok, clock):
    """bench_baft's hook share: the time inside the edit's site hooks (an intervention that
    spends 1.5 s of the fake clock per forward; the rest of the forward spends none), nothing
    when no edit is attached, and its timer hooks are gone afterwards."""
    import torch

    from benchmarks.bench_baft import hook_seconds
    from conftest import tiny_model
    from repedit.hooks import EditableModel

    model = tiny_model("llama")
    edited = EditableModel(model, tok)
    ids = tok(["a b c"], return_tensors="pt")

    def run():
        clock.spend(10.0)  # outside the hooks: not counted
        with torch.no_grad():
            edited(**ids)

    assert hook_seconds(model, edited, run, repeats=2) == 0.0
    phi = edited.add("e", "loreft", layer=1, positions="all", config={"seed": 0})
    real = phi.forward
    phi.forward = lambda *a, **k: clock.spend(1.5) or real(*a, **k)
    site = edited.layout.component(model, 1, "block_output")
    before = dict(site._forward_hooks)
    assert hook_seconds(model, edited, run, repeats=3) == 1.5
    assert dict(site._forward_hooks) == before


def test_subject_locality_prompts_are_built_once_per_checkpoint_dir(tmp_path, monkeypatch):
    """A resumed run reads its requests' subject-locality prompts from the checkpoint folder
    instead of generating them again, and gets the same prompts."""
    import argparse

    from benchmarks import bench_baft, common
    from repedit import EditRequest

    calls = []

    def fake(reqs, model, tok, per_request, seed, source, edited):
        calls.append(len(reqs))
        for i, r in enumerate(reqs):
            r.subject_locality_prompts = [{"prompt": f"{r.subject} was born in", "ground_truth": f"city {i}"}]
            r.__post_init__()
        return {"subject_locality_built": len(reqs)}

    monkeypatch.setattr(common, "add_subject_locality", fake)
    args = argparse.Namespace(checkpoint_dir=str(tmp_path), subject_locality=3, seed=0, source="counterfact")
    make = lambda: [EditRequest(prompt=f"{s} speaks", target_new="French", subject=s, case_id=i)  # noqa: E731
                    for i, s in enumerate(["Ada Lovelace", "Alan Turing"])]
    first, second = make(), make()
    assert bench_baft.subject_locality(args, first, None, None, None, {"model": "m"}) == {"subject_locality_built": 2}
    assert bench_baft.subject_locality(args, second, None, None, None, {"model": "m"}) == {"subject_locality_built": 2}
    assert calls == [2]  # the second run read them back
    assert [r.subject_locality_prompts for r in second] == [r.subject_locality_prompts for r in first]
    assert second[1].subject_locality_prompts[0].ground_truth == "city 1"
    other = [EditRequest(prompt="Ada Lovelace speaks", target_new="French", subject="Ada Lovelace", case_id=7)]
    bench_baft.subject_locality(args, other, None, None, None, {"model": "m"})
    assert calls == [2, 1]  # other requests: built for them


def test_benchmarks_run_starts_jobs_side_by_side_and_logs_each(tmp_path):
    """run_jobs keeps ``jobs`` commands running at once (the first waits for a file the second
    writes), logs each one's output to its own file and reports every exit status."""
    import sys

    from benchmarks.run import run_jobs

    marker = tmp_path / "second-started"
    waits = ("import pathlib, sys, time\n"
             f"p = pathlib.Path({str(marker)!r})\n"
             "for _ in range(600):\n"
             "    if p.exists(): print('saw it'); sys.exit(0)\n"
             "    time.sleep(0.05)\n"
             "sys.exit(3)\n")
    cmds = [("first", [sys.executable, "-c", waits]),
            ("second", [sys.executable, "-c", f"import pathlib; pathlib.Path({str(marker)!r}).touch(); print('hello')"]),
            ("broken", [sys.executable, "-c", "import sys; print('oops', file=sys.stderr); sys.exit(5)"])]
    done = run_jobs(cmds, jobs=2, log_dir=tmp_path / "logs", poll_s=0.05)
    assert {k: v["returncode"] for k, v in done.items()} == {"first": 0, "second": 0, "broken": 5}
    assert (tmp_path / "logs" / "first.log").read_text().strip() == "saw it"
    assert (tmp_path / "logs" / "second.log").read_text().strip() == "hello"
    assert "oops" in (tmp_path / "logs" / "broken.log").read_text()
    with pytest.raises(ValueError, match="jobs"):
        run_jobs(cmds, jobs=0, log_dir=tmp_path)


def test_benchmarks_run_commands_and_arguments(capsys):
    import argparse

    from benchmarks.run import build_commands, main

    args = argparse.Namespace(quick=True, only="baft,growth", matrix=True, models="smollm2-135m,gemma3-270m",
                              sources="counterfact", pyreft_python=None)
    cmds = dict(build_commands(args))
    assert list(cmds) == ["baft_quick", "growth_quick", "baft_quick_gemma3-270m_counterfact",
                          "codebook_quick_gemma3-270m_counterfact"]
    assert cmds["baft_quick"][-2:] == [cmds["baft_quick"][-2], "--quick"] and cmds["baft_quick"][-2].endswith("bench_baft.py")
    assert "--latency-entries" in cmds["codebook_quick_gemma3-270m_counterfact"]
    with pytest.raises(SystemExit):
        main(["--quick", "--only", "baft,nonsense"])
    assert "unknown benchmarks ['nonsense']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--jobs", "0"])


def test_quick_runs_never_overwrite_the_full_results():
    """``--quick`` writes its own results files: the docs quote the full ones."""
    import argparse

    from benchmarks import bench_eval_speed, bench_growth

    ns = lambda **kw: argparse.Namespace(**{"name": None, "records": None, **kw})  # noqa: E731
    assert bench_growth.results_name(ns(quick=True)) == "growth_quick"
    assert bench_growth.results_name(ns(quick=False)) == "growth"
    assert bench_eval_speed.results_name(ns(quick=True)) == "eval_speed_quick"
    assert bench_eval_speed.results_name(ns(quick=False)) == "eval_speed"
    assert bench_eval_speed.results_name(ns(quick=True, name="mine")) == "mine"


def test_benchmarks_run_stops_its_jobs_when_interrupted(tmp_path, monkeypatch):
    import subprocess
    import sys

    from benchmarks import run

    started = []
    real_popen = subprocess.Popen

    def popen(*a, **kw):
        started.append(real_popen(*a, **kw))
        return started[-1]

    def interrupt(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(run.subprocess, "Popen", popen)
    monkeypatch.setattr(run.time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run.run_jobs([("slow", [sys.executable, "-c", "import time; time.sleep(600)"])], jobs=1, log_dir=tmp_path)
    assert len(started) == 1 and started[0].poll() is not None  # terminated, not left running


def test_zsre_all_is_every_valid_record_of_both_files_with_distinct_ids():
    """source="zsre_all": the eval file's valid records, then the training split's, each with
    its own case id (the training split's from ZSRE_TRAIN_ID_BASE); 'all' sequential edits take
    them all."""
    from benchmarks import bench_baft
    from benchmarks.common import ZSRE_TRAIN_ID_BASE, select_requests
    from repedit.eval.data import load_zsre, to_requests

    reqs, info = select_requests(bench_baft.ALL, source="zsre_all")
    n_eval = len(to_requests(load_zsre(skip_invalid=True)))
    assert info["rows"] == len(reqs) > n_eval and len({r.case_id for r in reqs}) == len(reqs)
    assert all(r.case_id < ZSRE_TRAIN_ID_BASE for r in reqs[:n_eval])
    assert all(r.case_id >= ZSRE_TRAIN_ID_BASE for r in reqs[n_eval:])
    assert [r.case_id for r in select_requests(3, source="zsre_all", offset=n_eval - 1)[0]] == \
        [r.case_id for r in reqs[n_eval - 1:n_eval + 2]]
    with pytest.raises(ValueError, match="zsre_all"):
        select_requests(3, source="zsre_all", path="elsewhere.json")
    args = bench_baft.build_parser().parse_args(["--sequential", "all", "--source", "zsre_all"])
    assert args.sequential == bench_baft.ALL
    with pytest.raises(SystemExit):
        bench_baft.build_parser().parse_args(["--sequential", "many"])


def test_bench_cost_resume_point_reads_a_saved_sequential_run(tmp_path):
    """bench_cost --from-checkpoint takes the run's requests, config (its gate shift back in the
    method config) and progress from the checkpoint's state.json, and refuses another run's."""
    from benchmarks import bench_cost
    from benchmarks.common import select_requests

    reqs, _ = select_requests(3)
    ident = {"cases": [r.case_id for r in reqs], "gate_shift": -4.0,
             "config": {"method": "baft", "method_config": {"rank": 2}, "mixed_precision": "bf16"}}
    keep = tmp_path / "baft_seq3" / "keep_000002"
    keep.mkdir(parents=True)
    (keep / "state.json").write_text(json.dumps({"identity": ident, "done": 2, "step_dir": "step_000002"}))
    got, _, cfg, done, adapter, back = bench_cost.resume_point(tmp_path / "baft_seq3", 2)
    assert [r.case_id for r in got] == ident["cases"] and done == 2 and back == ident
    assert cfg == {"method": "baft", "method_config": {"rank": 2, "gate_shift": -4.0}, "mixed_precision": "bf16"}
    assert adapter == keep / "step_000002"
    with pytest.raises(SystemExit, match="not a bench_baft sequential checkpoint"):
        bench_cost.resume_point(tmp_path / "baft_seq3", None)  # only the milestone was kept
    (keep / "state.json").write_text(json.dumps({"identity": dict(ident, cases=[1, 2, 3]), "done": 2, "step_dir": "s"}))
    with pytest.raises(SystemExit, match="other requests"):
        bench_cost.resume_point(tmp_path / "baft_seq3", 2)
    with pytest.raises(SystemExit):
        bench_cost.main(["--milestone", "2"])  # without --from-checkpoint
