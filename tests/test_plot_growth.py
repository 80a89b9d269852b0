"""benchmarks/plot_growth.py: sequential rows (final and milestone) become points at their edit
counts; files of several methods need one named; a missing file is an error that names it."""

import json

import pytest

from benchmarks import plot_growth


def _write(d, stem, rows):
    (d / f"{stem}.json").write_text(json.dumps({"rows": rows}))


def test_series_points_orders_final_and_milestone_rows_by_edits(tmp_path):
    _write(tmp_path, "long", [{"method": "unedited", "setting": "–"},
                              {"method": "baft", "setting": "after 1000 of 10000 sequential", "rephrase_acc": 0.5},
                              {"method": "baft", "setting": "10000 sequential", "rephrase_acc": 0.4,
                               "adapter_bytes": 10}])
    _write(tmp_path, "short", [{"method": "baft", "setting": "100 sequential", "rephrase_acc": 0.6},
                               {"method": "baft", "setting": "200 single", "rephrase_acc": 0.9}])
    label, pts = plot_growth.series_points("BaFT=long,short", tmp_path)
    assert label == "BaFT" and [p["edits"] for p in pts] == [100, 1000, 10000]
    assert [p["rephrase_acc"] for p in pts] == [0.6, 0.5, 0.4] and pts[0]["file"] == "short"
    assert plot_growth.edits_of("200 single") is None

    _write(tmp_path, "two", [{"method": "baft", "setting": "100 sequential"}, {"method": "loreft", "setting": "100 sequential"}])
    with pytest.raises(SystemExit, match="name one"):
        plot_growth.series_points("x=two", tmp_path)
    assert [p["method"] for p in plot_growth.series_points("x=two:loreft", tmp_path)[1]] == ["loreft"]
    with pytest.raises(SystemExit, match="missing_file"):
        plot_growth.series_points("x=missing_file", tmp_path)


def test_plot_gives_each_series_one_colour_in_every_panel(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    pts = lambda q, b: [dict(edits=n, rewrite_acc=q, rephrase_acc=q / 2, gen_rephrase=q / 3, locality=q,  # noqa: E731
                             s_per_edit=2.0, latency_ratio=1.01, latency_aa=1.0, adapter_bytes=b * n) for n in (100, 1000)]
    plot_growth.plot([("BaFT", pts(0.9, 30)), ("codebook", pts(0.8, 5))], tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0
    (fig,) = kept
    colours = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label().split(" (")[0], set()).add(line.get_color())
    assert set(colours) == {"BaFT", "codebook"} and all(len(c) == 1 for c in colours.values())
    assert colours["BaFT"] != colours["codebook"]
    (size_panel,) = [ax for ax in fig.axes if ax.get_title() == "adapter bytes per edit"]
    assert sorted(line.get_ydata()[0] for line in size_panel.get_lines()) == [5, 30]
