"""benchmarks/matrix.py: the plan covers issue 21's cells with commands bench_baft accepts; the
runner keeps the order jobs need, skips what is done, reruns a changed command, and skips the
dependents of a failed job."""

import json
import sys

import pytest

from benchmarks import bench_baft, matrix


def test_plan_covers_every_cell_with_commands_bench_baft_accepts(tmp_path):
    jobs = matrix.plan(tmp_path)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    by_name = {j.name: j for j in jobs}
    for job in jobs:
        assert all(n in by_name and names.index(n) < names.index(job.name) for n in job.needs)
        args = bench_baft.build_parser().parse_args(job.argv[2:])  # argv: python, script, args
        assert args.mixed_precision == "bf16" and args.checkpoint_dir.startswith(str(tmp_path))
    for cell in matrix.CELLS:
        scored = [n for n in names if n.startswith(cell.name + "_") and not n.endswith(("_pre", "_edit"))]
        assert scored == [f"{cell.name}_{m}" for m in cell.methods]
    long = by_name["smollm2-135m_counterfact_seq10000_baft"]
    assert "--milestones" in long.argv and set(long.needs) == {"smollm2-135m_counterfact_seq10000_pre",
                                                                 "smollm2-135m_counterfact_seq10000_baft_edit"}
    assert not any(n.startswith("smollm2-135m_counterfact_seq10000_loreft") for n in names)
    zsre_all = bench_baft.build_parser().parse_args(by_name["smollm2-135m_zsre_all_seqall_baft_edit"].argv[2:])
    assert zsre_all.sequential == bench_baft.ALL and zsre_all.edit_only and zsre_all.source == "zsre_all"
    single = bench_baft.build_parser().parse_args(by_name["gemma3-270m_zsre_single200_grace"].argv[2:])
    assert (single.single, single.sequential, single.model, single.methods) == (200, 0, "gemma3-270m", "grace")
    picked = [j.name for j in matrix.select(jobs, ["gemma3-270m_zsre_seq1000_baft"])]
    assert picked == ["gemma3-270m_zsre_seq1000_pre", "gemma3-270m_zsre_seq1000_baft_edit", "gemma3-270m_zsre_seq1000_baft"]
    with pytest.raises(SystemExit, match="matches no job"):
        matrix.select(jobs, ["nothing_like_this"])


def _job(name, code, needs=()):
    return matrix.Job(name, [sys.executable, "-c", code], list(needs))


def test_runner_orders_resumes_and_skips_after_a_failure(tmp_path):
    trace = tmp_path / "trace.txt"
    w = lambda tag: f"open({str(trace)!r}, 'a').write({tag!r} + '\\n')"  # noqa: E731
    jobs = [_job("a", w("a")), _job("b", w("b"), ["a"]), _job("c", w("c") + "; raise SystemExit(3)"),
            _job("d", w("d"), ["c"]), _job("e", w("e"), ["b", "a"])]
    status = matrix.run(jobs, tmp_path, n_jobs=2, poll_s=0.05, log=lambda m: None)
    assert status == {"a": "done", "b": "done", "c": "failed", "d": "skipped", "e": "done"}
    order = trace.read_text().split()
    assert sorted(order) == ["a", "b", "c", "e"] and order.index("a") < order.index("b") < order.index("e")
    assert json.loads((tmp_path / "done" / "a.json").read_text())["argv"] == jobs[0].argv[1:]
    assert not (tmp_path / "done" / "c.json").exists() and "SystemExit" in (tmp_path / "logs" / "c.log").read_text()
    trace.write_text("")
    jobs[2] = _job("c", w("c"))  # fixed: only c and what needs it run again
    jobs[4] = _job("e", w("e2"), ["b", "a"])  # a changed command is not done
    status = matrix.run(jobs, tmp_path, n_jobs=1, poll_s=0.05, log=lambda m: None)
    assert status == {"c": "done", "d": "done", "e": "done"}
    assert trace.read_text().split() == ["c", "d", "e2"]
    with pytest.raises(ValueError):
        matrix.run(jobs, tmp_path, n_jobs=0)


def test_list_prints_each_jobs_state(tmp_path, capsys):
    assert matrix.main(["--root", str(tmp_path), "--list", "--only", "smollm2-135m_counterfact_single200_baft"]) == 0
    out = capsys.readouterr().out
    assert "ready  smollm2-135m_counterfact_single200_pre" in out and "waits  smollm2-135m_counterfact_single200_baft" in out


def test_one_runner_per_root(tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setattr(matrix, "run", lambda *a, **k: pytest.fail("a second runner must not run jobs"))
    with open(tmp_path / "matrix.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running matrix holds it
        with pytest.raises(SystemExit, match="another benchmarks.matrix"):
            matrix.main(["--root", str(tmp_path), "--only", "gemma3-270m_zsre_seq1000_pre", "--jobs", "1"])
        assert matrix.main(["--root", str(tmp_path), "--list"]) == 0  # listing needs no lock


def _result(path, rows, commit="abc1234567890"):
    path.write_text(json.dumps({"rows": rows, "command": "python benchmarks/bench_baft.py ...",
                                "environment": {"git_commit": commit}}))


def test_report_gathers_each_cells_rows_growth_missing_methods_and_peers(tmp_path):
    """matrix_report puts each method's final row under its cell (the unedited row once), the
    milestone rows and the final one in the growth table, lists what has no result (an
    interrupted file too), and sets the peers beside the SmolLM2 CounterFact cells only, by mode."""
    from benchmarks import matrix_report

    unedited = {"method": "unedited", "setting": "–", "rewrite_acc": 0.05}
    row = lambda m, s, acc, **k: {"method": m, "setting": s, "rewrite_acc": acc, "rephrase_acc": 0.4,  # noqa: E731
                                  "locality": 0.9, "s_per_edit": 3.0, **k}
    _result(tmp_path / "matrix_smollm2-135m_counterfact_seq10000_baft.json",
            [unedited, row("baft", "after 100 of 10000 sequential", 1.0, adapter_bytes=100),
             row("baft", "after 1000 of 10000 sequential", 0.99, adapter_bytes=1000),
             row("baft", "10000 sequential", 0.9123, adapter_bytes=10000, bytes_per_edit=1.0)])
    _result(tmp_path / "matrix_smollm2-135m_counterfact_single200_grace.json",
            [unedited, row("grace", "200 single", 0.75)])
    _result(tmp_path / "matrix_smollm2-135m_zsre_single200_baft.json", [unedited])  # interrupted: no final row
    _result(tmp_path / "peers_single20.json", [unedited, row("rome", "20 single", 0.95)])
    _result(tmp_path / "peers_samerun_single20.json", [unedited, row("rome", "20 single", 0.95),
                                                       row("repedit baft", "20 single", 1.0)])
    peers = tmp_path / "peers.md"
    peers.write_text("# peers\n\ntext\n\n| method | mode | reliability |\n|---|---|---|\n| unedited | – | 0.085 |\n"
                     "| ROME | single | 1.00 |\n| ROME | 50 sequential | 0.80 |\n\nafter\n")
    payload, body = matrix_report.build(tmp_path, peers)
    cells = {c["cell"]: c for c in payload["cells"]}
    long = cells["smollm2-135m_counterfact_seq10000"]
    assert [r["method"] for r in long["rows"]] == ["baft"] and long["missing"] == ["balancedit"]
    assert [g["edits"] for g in long["growth"]] == [100, 1000, 10000]
    assert long["unedited"]["rewrite_acc"] == 0.05 and long["rows"][0]["git"] == "abc1234567"
    assert cells["smollm2-135m_zsre_single200"]["missing"] == list(matrix.METHODS)
    assert "| 0.912 |" in body and "| 0.750 |" in body
    sections = body.split("## ")
    single = next(s for s in sections if s.startswith("SmolLM2-135M, CounterFact: 200 single"))
    assert "| ROME | single | 1.00 |" in single and "50 sequential" not in single
    assert "EasyEdit rome (20 single)" in single and "Not run yet: loreft, baft, baft_ns, balancedit" in single
    assert "`peers_samerun_single20`" in single and "| repedit baft (20 single) |" in single  # the one-run file first
    seq = next(s for s in sections if s.startswith("SmolLM2-135M, CounterFact: 10,000 sequential"))
    assert "| ROME | 50 sequential | 0.80 |" in seq and "Growth" in seq and "| 10,000 |" in seq
    gemma = next(s for s in sections if s.startswith("Gemma 3 270M, zsRE: 1,000 sequential"))
    assert "EasyEdit" not in gemma and "Not run yet" in gemma
    assert matrix_report.main(["--results", str(tmp_path), "--peers", str(peers), "--name", "report"]) == 0
    assert (tmp_path / "report.md").read_text().count("## ") == len(matrix.CELLS)
    assert json.loads((tmp_path / "report.json").read_text())["cells"][0]["cell"] == "smollm2-135m_counterfact_seq10000"


def test_list_shows_the_last_progress_line_of_an_unfinished_job(tmp_path, capsys):
    """--list adds each unfinished job's last status line (a progress bar's last refresh)."""
    jobs = matrix.plan(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / f"{jobs[1].name}.log").write_text("$ cmd\n[ 4.0s] loaded\nediting:  1%| 1/100\rediting:  2%| 2/100\r")
    assert matrix.last_progress(tmp_path / "logs" / "none.log") == ""
    matrix.main(["--root", str(tmp_path), "--list"])
    out = capsys.readouterr().out
    assert out.count("last: ") == 1 and "last: editing:  2%| 2/100\n" in out
