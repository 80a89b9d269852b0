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
