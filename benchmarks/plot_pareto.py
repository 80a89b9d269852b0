"""Draw the generality-locality Pareto plot from the JSON files in benchmarks/results/.

Codebook runs contribute one curve per radius mode (their radius-scale sweep); BaFT/LoReFT
runs contribute one point per method and setting.

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
    fig, ax = plt.subplots(figsize=(7, 5))
    for path in sorted(RESULTS.glob("codebook_*.json")):
        data = json.loads(path.read_text())
        if not _default_setting(path, data):
            continue
        n = data.get("n_edits")
        for mode, res in data.get("modes", {}).items():
            rows = sorted(res.get("sweep", []), key=lambda r: r["radius_scale"])
            if not rows:
                continue
            xs = [r["locality"] for r in rows]
            ys = [r["paraphrase"] for r in rows]
            label = f"codebook ({'BalancEdit' if mode.startswith('balanced') else 'GRACE-style'} radii), {n} seq. ({path.stem})"
            ax.plot(xs, ys, marker="o", label=label)
            for r, x, y in zip(rows, xs, ys):
                ax.annotate(f"×{r['radius_scale']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    # BaFT/LoReFT: the benchmark runs, not the default-selection sweeps and probes
    for path in [RESULTS / f"baft_{n}.json" for n in ("quick", "single200", "full")]:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        if not _default_setting(path, data):
            continue
        for row in data.get("rows", []):
            if row.get("method") == "unedited" or row.get("locality") is None:
                continue
            ax.scatter([row["locality"]], [row["paraphrase"]], marker="s")
            ax.annotate(f"{row['method']} {row['setting']} ({path.stem})", (row["locality"], row["paraphrase"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("Locality: share of neighbourhood-answer tokens unchanged from the unedited model")
    ax.set_ylabel("Generality: paraphrases where P(new) > P(true) (ROME)")
    ax.set_title("SmolLM2-135M, dev CounterFact: generality vs locality")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    out = Path(args.out)
    fig.savefig(out, dpi=120)
    print(out)
    return out


if __name__ == "__main__":
    main()
