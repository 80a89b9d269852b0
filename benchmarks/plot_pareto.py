"""Draw the generality-locality Pareto plot from the JSON files in benchmarks/results/.

Generality is what a user sees: left, EasyEdit's teacher-forced rephrase_acc against locality
(argmax agreement with the unedited model on neighbourhood prompts); right, greedy generation:
the paraphrase's answer (prefix match where recorded, else exact match) against neighbourhood
answers left unchanged. Codebook runs contribute one curve per radius mode (their radius-scale
sweep), BaFT's gate-shift sweeps (``bench_gate_shift.py``) one curve each (left panel only: the
sweeps score teacher-forced); the runs of ``bench_baft.py`` (every method, single and
sequential) one point per method and setting in both panels.

    python benchmarks/plot_pareto.py [--out benchmarks/results/pareto.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _default_setting(path: Path, data: dict) -> bool:
    """Only SmolLM2 + CounterFact runs belong on this plot (not Gemma/zsRE probes, not re-scorings)."""
    args = data.get("args", {})
    model = data.get("model", args.get("model", "smollm2-135m"))
    source = data.get("source", args.get("source", "counterfact"))
    return model == "smollm2-135m" and source == "counterfact"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(RESULTS / "pareto.png"))
    args = parser.parse_args(argv)
    # two panels: the whole square, and a zoom on the corner where most methods land; one
    # legend below them (no in-plot labels, which overlap there)
    fig, axes = plt.subplots(1, 2, figsize=(13, 7.5))
    series = []  # (kind, xs, ys, label, point annotations or None, marker, greedy (xs, ys) or None)
    for path in sorted(RESULTS.glob("codebook_*.json")):
        data = json.loads(path.read_text())
        if not _default_setting(path, data):
            continue
        n = data.get("n_edits")
        for mode, res in data.get("modes", {}).items():
            rows = sorted(res.get("sweep", []), key=lambda r: r["radius_scale"])
            if not rows:
                continue
            label = f"codebook ({'BalancEdit' if mode.startswith('balanced') else 'GRACE-style'} radii), {n} seq., radius-scale sweep ({path.stem})"
            series.append(("line", [r["locality"] for r in rows], [r["rephrase_acc"] for r in rows], label,
                           [f"×{r['radius_scale']:g}" for r in rows], "o", None))
    # BaFT's inference gate shift swept on one sequential checkpoint (bench_gate_shift.py)
    for path in sorted(RESULTS.glob("gate_shift_*.json")):
        data = json.loads(path.read_text())
        if not _default_setting(path, data):
            continue
        rows = sorted((r for r in data.get("rows", []) if r.get("gate_shift") is not None), key=lambda r: -r["gate_shift"])
        if rows:
            key = data.get("checkpoint", {}).get("key", "baft")
            method = "BaFT + null space" if key.startswith("baft_ns") else "BaFT"
            label = f"{method}, {rows[0]['edits']} seq., gate-shift sweep ({path.stem})"
            series.append(("line", [r["locality"] for r in rows], [r["rephrase_acc"] for r in rows], label,
                           [f"{r['gate_shift']:+g}" for r in rows], "P", None))
    # single runs of every method: the benchmark runs, not the sweeps and probes
    plotted: set[tuple[str, str]] = set()
    for path, marker in ((RESULTS / "baft_quick.json", "s"), (RESULTS / "baft_single200.json", "D"),
                         (RESULTS / "baft_seq100.json", "^"),
                         (RESULTS / "baft_seq1000.json", "v"), (RESULTS / "baft_seq1000_baft.json", "v"),
                         (RESULTS / "baft_seq1000_baft_ns.json", "v"), (RESULTS / "baft_full.json", "X")):
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        if not _default_setting(path, data):
            continue
        for row in data.get("rows", []):
            if row.get("method") == "unedited" or row.get("locality") is None:
                continue
            if (row["method"], row["setting"]) in plotted:  # a joint table and a per-method run of one checkpoint
                continue
            plotted.add((row["method"], row["setting"]))
            greedy_y = row.get("gen_rephrase_prefix", row.get("gen_rephrase"))
            greedy = ([row["gen_loc_agree"]], [greedy_y]) if None not in (greedy_y, row.get("gen_loc_agree")) else None
            series.append(("point", [row["locality"]], [row["rephrase_acc"]],
                           f"{row['method']}, {row['setting']} ({path.stem})", None, marker, greedy))
    colors = plt.cm.tab20.colors
    for k, (kind, xs, ys, label, scales, marker, greedy) in enumerate(series):
        color = colors[k % len(colors)]
        if kind == "line":
            axes[0].plot(xs, ys, marker=marker, color=color, label=label, markersize=4)
            for note, x, y in zip(scales, xs, ys):
                axes[0].annotate(note, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
        else:
            axes[0].scatter(xs, ys, marker=marker, color=color, label=label, s=40, edgecolors="black", linewidths=0.4)
            if greedy is not None:
                axes[1].scatter(*greedy, marker=marker, color=color, s=40, edgecolors="black", linewidths=0.4)
    axes[0].set_xlabel("Locality: neighbourhood argmax tokens unchanged (teacher-forced)")
    axes[0].set_ylabel("Generality: rephrase_acc (EasyEdit, teacher-forced)")
    axes[0].set_title("SmolLM2-135M, dev CounterFact: teacher-forced")
    axes[1].set_xlabel("Locality: greedy neighbourhood answers unchanged")
    axes[1].set_ylabel("Generality: greedy paraphrase answer = new target")
    axes[1].set_title("greedy generation (bench_baft runs)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, 1.05)
    fig.legend(loc="lower center", ncol=3, fontsize=6.5, frameon=False)
    fig.tight_layout(rect=(0, 0.26, 1, 1))
    out = Path(args.out)
    fig.savefig(out, dpi=120)
    print(out)
    return out


if __name__ == "__main__":
    main()
