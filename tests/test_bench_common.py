"""Benchmark helpers shared by the scripts in benchmarks/."""


def test_latency_ratio_reports_median_and_fastest_run_ratios():
    """The benchmarks' latency ratio: edited over unedited time, interleaved; a run that is
    twice as slow reads ≈ 2 by the median, per-pair median and fastest-run estimates."""
    import time

    from benchmarks.common import latency_ratio

    calls = []
    out = latency_ratio(lambda: calls.append("e") or time.sleep(0.004), lambda: calls.append("b") or time.sleep(0.002),
                        repeats=5, warmup=1)
    assert calls.count("e") == calls.count("b") == 6 and calls[2:4] == ["b", "e"] and calls[4:6] == ["e", "b"]
    assert out["repeats"] == 5
    for k in ("ratio", "median_pair_ratio", "min_ratio"):
        assert 1.5 < out[k] < 2.5, (k, out)
