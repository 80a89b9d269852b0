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


def test_hook_seconds_times_only_the_edit_hooks_and_removes_its_timers(tok):
    """bench_baft's hook share: the time inside the edit's site hooks (here a deliberately slow
    intervention: ≥ its sleep per forward), nothing when no edit is attached, and its timer
    hooks are gone afterwards."""
    import time

    import torch

    from benchmarks.bench_baft import hook_seconds
    from conftest import tiny_model
    from repedit.hooks import EditableModel

    model = tiny_model("llama")
    edited = EditableModel(model, tok)
    ids = tok(["a b c"], return_tensors="pt")

    def run():
        with torch.no_grad():
            edited(**ids)

    assert hook_seconds(model, edited, run, repeats=2) == 0.0
    phi = edited.add("e", "loreft", layer=1, positions="all", config={"seed": 0})
    slow = phi.forward
    phi.forward = lambda *a, **k: time.sleep(0.01) or slow(*a, **k)
    site = edited.layout.component(model, 1, "block_output")
    before = dict(site._forward_hooks)
    assert hook_seconds(model, edited, run, repeats=3) >= 0.01
    assert dict(site._forward_hooks) == before


def test_latency_ratio_of_one_callable_against_itself_times_both_sides():
    """An A/A measurement (the noise floor) passes one callable as both sides: each call is
    timed on its own (first call: the base, second: the edited side)."""
    import time

    from benchmarks.common import latency_ratio

    sleeps = iter([0.002, 0.008])
    f = lambda: time.sleep(next(sleeps))  # noqa: E731
    out = latency_ratio(f, f, repeats=1, warmup=0)
    assert out["base_s"] < 0.006 < out["edited_s"] and out["ratio"] > 2
