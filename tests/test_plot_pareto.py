"""benchmarks/plot_pareto.py: knob sweeps of any knob become curves in both panels when they
carry greedy scores; bench_baft rows become points; the current-defaults plot names a
missing file; other models' and datasets' files are left out."""

import json

import pytest

from benchmarks import plot_pareto


def _write(d, stem, data):
    (d / f"{stem}.json").write_text(json.dumps(data))


def _sweep(knob, values, key):
    return {"knob": knob, "checkpoint": {"key": key},
            "rows": [{knob: v, "edits": 2000, "locality": 0.9 + i / 100, "rephrase_acc": 0.5 - i / 10,
                      "gen_loc_agree": 0.8 + i / 100, "gen_rephrase_prefix": 0.4 - i / 10} for i, v in enumerate(values)]}


def test_knob_sweeps_are_curves_in_both_panels_in_knob_order(tmp_path):
    _write(tmp_path, "rs", _sweep("radius_scale", [1.5, 0.5, 1.0], "balancedit_seq10000"))
    (s,) = plot_pareto.sweep_series(tmp_path / "rs.json")
    assert s.notes == ["×0.5", "×1", "×1.5"] and s.label.startswith("BalancEdit codebook, 2000 seq., radius scale sweep")
    assert s.ys == [0.4, 0.3, 0.5] and s.greedy[1] == pytest.approx([0.3, 0.2, 0.4])
    old = _sweep("gate_shift", [-4, 0], "baft_ns_seq550")
    del old["knob"]  # files written before --knob: gate shift
    for r in old["rows"]:
        del r["gen_loc_agree"]
    _write(tmp_path, "gs", old)
    (g,) = plot_pareto.sweep_series(tmp_path / "gs.json")
    assert g.notes == ["+0", "-4"] and g.label.startswith("BaFT + null space") and g.greedy is None
    _write(tmp_path, "gemma", dict(_sweep("gate_shift", [0], "baft_seq10"), args={"model": "gemma3-270m"}))
    assert plot_pareto.sweep_series(tmp_path / "gemma.json") == []


def test_current_plot_draws_the_named_points_and_names_a_missing_file(tmp_path, monkeypatch):
    rows = [{"method": "unedited", "setting": "–", "locality": None, "rephrase_acc": 0.03},
            {"method": "baft", "setting": "200 single", "locality": 0.995, "rephrase_acc": 0.52,
             "gen_loc_agree": 0.995, "gen_rephrase_prefix": 0.48},
            {"method": "loreft", "setting": "200 single", "locality": 0.39, "rephrase_acc": 0.19}]
    _write(tmp_path, "single", {"rows": rows})
    _write(tmp_path, "sw", _sweep("gate_shift", [0, -4], "baft_seq10000"))
    monkeypatch.setattr(plot_pareto, "CURRENT_SWEEPS", ("sw",))
    monkeypatch.setattr(plot_pareto, "CURRENT_POINTS", (("single", "baft"),))
    series = plot_pareto.collect(False, tmp_path)
    assert [s.label for s in series] == ["BaFT, 2000 seq., gate shift sweep (sw)", "BaFT, 200 single (single)"]
    assert series[1].greedy == ([0.995], [0.48])
    out = plot_pareto.draw(series, tmp_path / "p.png", "test")
    assert out.stat().st_size > 0
    monkeypatch.setattr(plot_pareto, "CURRENT_POINTS", (("absent_file", "baft"),))
    with pytest.raises(SystemExit, match="absent_file"):
        plot_pareto.collect(False, tmp_path)
