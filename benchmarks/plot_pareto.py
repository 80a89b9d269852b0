"""Draw the generality-locality Pareto plot from the JSON files in benchmarks/results/.

Codebook runs contribute one curve per radius mode (their radius-scale sweep), BaFT's
gate-shift sweeps (``bench_gate_shift.py``) one curve each; the runs of ``bench_baft.py``
(every method, single and sequential) one point per method and setting.
Two panels: the whole square and a zoom on the top-right corner.

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
    zoom = (0.85, 1.005, 0.6, 1.02)
    series = []  # (kind, xs, ys, label, point annotations or None, marker)
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
            series.append(("line", [r["locality"] for r in rows], [r["paraphrase"] for r in rows], label,
                           [f"×{r['radius_scale']:g}" for r in rows], "o"))
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
            series.append(("line", [r["locality"] for r in rows], [r["paraphrase"] for r in rows], label,
                           [f"{r['gate_shift']:+g}" for r in rows], "P"))
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
            series.append(("point", [row["locality"]], [row["paraphrase"]],
                           f"{row['method']}, {row['setting']} ({path.stem})", None, marker))
    colors = plt.cm.tab20.colors
    for k, (kind, xs, ys, label, scales, marker) in enumerate(series):
        color = colors[k % len(colors)]
        for i, ax in enumerate(axes):
            lab = label if i == 0 else None
            if kind == "line":
                ax.plot(xs, ys, marker=marker, color=color, label=lab, markersize=4)
                if i == 1:
                    for note, x, y in zip(scales, xs, ys):
                        if zoom[0] <= x <= zoom[1] and zoom[2] <= y <= zoom[3]:
                            ax.annotate(note, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
            else:
                ax.scatter(xs, ys, marker=marker, color=color, label=lab, s=40, edgecolors="black", linewidths=0.4)
    for i, ax in enumerate(axes):
        ax.set_xlabel("Locality: neighbourhood-answer tokens unchanged from the unedited model")
        ax.set_ylabel("Generality: paraphrases with P(new) > P(true) (ROME)")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.set_xlim(0, 1.05)
            ax.set_ylim(0, 1.05)
            ax.set_title("SmolLM2-135M, dev CounterFact")
        else:
            ax.set_xlim(zoom[0], zoom[1])
            ax.set_ylim(zoom[2], zoom[3])
            ax.set_title("zoom (overlapping points: see the result tables)")
    fig.legend(loc="lower center", ncol=3, fontsize=6.5, frameon=False)
    fig.tight_layout(rect=(0, 0.26, 1, 1))
    out = Path(args.out)
    fig.savefig(out, dpi=120)
    print(out)
    return out


if __name__ == "__main__":
    main()
