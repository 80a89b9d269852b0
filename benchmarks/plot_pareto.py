"""Draw the generality-locality Pareto plot from the JSON files in benchmarks/results/.

Generality is what a user sees: left, EasyEdit's teacher-forced rephrase_acc against locality
(argmax agreement with the unedited model on neighbourhood prompts); right, greedy generation:
the paraphrase's answer (prefix match where recorded, else exact match) against neighbourhood
answers left unchanged. Curves are an inference knob swept on one saved adapter
(``bench_gate_shift.py``: BaFT's gate shift, a codebook's radius scale; older codebook files
hold their own radius-scale sweep), each point one method in one ``bench_baft.py`` run.

By default only the runs at the current defaults (:data:`CURRENT_SWEEPS`,
:data:`CURRENT_POINTS`); ``--all`` draws every SmolLM2 + CounterFact result file, earlier
defaults included, to ``pareto_all.png``.

    python benchmarks/plot_pareto.py          # benchmarks/results/pareto.png
    python benchmarks/plot_pareto.py --all    # benchmarks/results/pareto_all.png
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

#: knob sweeps on adapters trained at the current defaults
CURRENT_SWEEPS = ("gate_shift_seq10000_s17_at2000_gen", "radius_scale_seq10000_cb_at2000")
#: (file, method) of bench_baft rows at the current defaults (docs/results.md's side-by-side
#: table and the 10,000-edit runs' milestones)
CURRENT_POINTS = (
    ("baft_single200_rel4_builtin", "baft"),
    ("baft_ns_single200_rel4", "baft_ns"),
    ("cb_single200_lr02", "balancedit"),
    ("tmp_sbs_part1", "loreft"),
    ("baft_seq10000_bf16_s17_at2000", "baft"),
    ("balancedit_seq10000_bf16_at2000", "balancedit"),
)
#: bench_baft files drawn with --all
ALL_POINT_FILES = ("baft_quick", "baft_single200", "baft_seq100", "baft_seq1000", "baft_seq1000_baft",
                   "baft_seq1000_baft_ns", "baft_full")
#: one colour per method in every plot (others take tab10's colours in order)
METHOD_COLORS = {"baft": "tab:blue", "baft_ns": "tab:orange", "balancedit": "tab:green", "grace": "tab:red",
                 "loreft": "tab:purple"}
NAMES = {"baft": "BaFT", "baft_ns": "BaFT + null space", "balancedit": "BalancEdit codebook", "grace": "GRACE-style codebook",
         "loreft": "LoReFT", "radius_scale": "radius scale", "gate_shift": "gate shift"}


@dataclass
class Series:
    """One curve (``notes``: the knob value at each point) or one point, in both panels where
    greedy-generation scores exist (``greedy``: x and y lists, or None)."""

    label: str
    xs: list
    ys: list
    notes: list | None = None
    greedy: tuple[list, list] | None = None
    marker: str = "o"
    method: str = ""


def _default_setting(data: dict) -> bool:
    """Only SmolLM2 + CounterFact runs belong on this plot (not Gemma/zsRE probes)."""
    args = data.get("args", {})
    model = data.get("model", args.get("model", "smollm2-135m"))
    source = data.get("source", args.get("source", "counterfact"))
    return model == "smollm2-135m" and source == "counterfact"


def _greedy(rows: list[dict]) -> tuple[list, list] | None:
    pts = [(r.get("gen_loc_agree"), r.get("gen_rephrase_prefix", r.get("gen_rephrase"))) for r in rows]
    if not pts or any(None in p for p in pts):
        return None
    return [x for x, _ in pts], [y for _, y in pts]


def sweep_series(path: Path) -> list[Series]:
    """The curves of one sweep file: a knob sweep of ``bench_gate_shift.py`` (any knob), or an
    older ``bench_codebook.py`` file's radius-scale sweeps (one per radius mode)."""
    data = json.loads(path.read_text())
    if not _default_setting(data):
        return []
    out = []
    if "modes" in data:  # bench_codebook: {"modes": {mode: {"sweep": [rows]}}}
        for mode, res in data["modes"].items():
            rows = sorted(res.get("sweep", []), key=lambda r: r["radius_scale"])
            if rows:
                kind = "BalancEdit" if mode.startswith("balanced") else "GRACE-style"
                out.append(Series(f"codebook ({kind} radii), {data.get('n_edits')} seq., radius-scale sweep ({path.stem})",
                                  [r["locality"] for r in rows], [r["rephrase_acc"] for r in rows],
                                  [f"×{r['radius_scale']:g}" for r in rows],
                                  method="balancedit" if mode.startswith("balanced") else "grace"))
        return out
    knob = data.get("knob", "gate_shift")
    rows = [r for r in data.get("rows", []) if r.get(knob) is not None]
    if not rows:
        return []
    rows.sort(key=lambda r: r[knob] if knob == "radius_scale" else -r[knob])
    key = data.get("checkpoint", {}).get("key", "baft")
    method = key.rsplit("_seq", 1)[0]
    fmt = (lambda v: f"×{v:g}") if knob == "radius_scale" else (lambda v: f"{v:+g}")
    return [Series(f"{NAMES.get(method, method)}, {rows[0]['edits']} seq., {NAMES.get(knob, knob)} sweep ({path.stem})",
                   [r["locality"] for r in rows], [r["rephrase_acc"] for r in rows], [fmt(r[knob]) for r in rows],
                   _greedy(rows), marker="P" if knob == "gate_shift" else "o", method=method)]


def point_series(path: Path, methods: set[str] | None = None, marker: str = "D") -> list[Series]:
    """One point per (method, setting) row of a ``bench_baft.py`` file (``methods``: only those)."""
    data = json.loads(path.read_text())
    if not _default_setting(data):
        return []
    out = []
    for row in data.get("rows", []):
        if row.get("method") == "unedited" or row.get("locality") is None:
            continue
        if methods is not None and row["method"] not in methods:
            continue
        seq = re.match(r"(?:after (\d+) of )?(\d+) sequential", row["setting"])
        note = [f"{int(seq.group(1) or seq.group(2)):,}"] if seq else None
        out.append(Series(f"{NAMES.get(row['method'], row['method'])}, {row['setting']} ({path.stem})",
                          [row["locality"]], [row["rephrase_acc"]], note, _greedy([row]), "v" if seq else marker,
                          row["method"]))
    return out


def collect(everything: bool, results: Path = RESULTS) -> list[Series]:
    """The series to draw: the current defaults' files, or with ``everything`` every file."""
    series: list[Series] = []
    if everything:
        for path in sorted(results.glob("codebook_*.json")) + sorted(results.glob("gate_shift_*.json")) + \
                sorted(results.glob("radius_scale_*.json")):
            series += sweep_series(path)
        seen: set[str] = set()
        for stem in ALL_POINT_FILES:
            path = results / f"{stem}.json"
            if path.exists():
                for s in point_series(path, marker="s" if "quick" in stem else "D"):
                    key = s.label.rsplit(" (", 1)[0]
                    if key not in seen:  # a joint table and a per-method run of one checkpoint
                        seen.add(key)
                        series.append(s)
        return series
    for stem in CURRENT_SWEEPS:
        path = results / f"{stem}.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: rerun its sweep (command in docs/results.md)")
        series += sweep_series(path)
    for stem, method in CURRENT_POINTS:
        path = results / f"{stem}.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: rerun its benchmark (command in docs/results.md)")
        series += point_series(path, {method})
    return series


def draw(series: list[Series], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 7.5))
    palette = plt.cm.tab10.colors
    methods = list(dict.fromkeys(s.method for s in series))  # one colour per method
    for s in series:
        color = METHOD_COLORS.get(s.method, palette[methods.index(s.method) % len(palette)])
        panels = [(axes[0], s.xs, s.ys)] + ([(axes[1], *s.greedy)] if s.greedy else [])
        for ax, xs, ys in panels:
            if s.notes is not None and len(xs) > 1:
                ax.plot(xs, ys, marker=s.marker, color=color, label=s.label if ax is axes[0] else None, markersize=4)
                for note, x, y in zip(s.notes, xs, ys):
                    ax.annotate(note, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
            else:
                ax.scatter(xs, ys, marker=s.marker, color=color, label=s.label if ax is axes[0] else None, s=40,
                           edgecolors="black", linewidths=0.4)
                for note, x, y in zip(s.notes or [], xs, ys):  # a sequential point's number of edits
                    ax.annotate(note, (x, y), textcoords="offset points", xytext=(-4, -10), fontsize=6, color=color)
    axes[0].set_xlabel("Locality: neighbourhood argmax tokens unchanged (teacher-forced)")
    axes[0].set_ylabel("Generality: rephrase_acc (EasyEdit, teacher-forced)")
    axes[0].set_title(f"{title}: teacher-forced")
    axes[1].set_xlabel("Locality: greedy neighbourhood answers unchanged")
    axes[1].set_ylabel("Generality: greedy paraphrase answer = new target (prefix)")
    axes[1].set_title("greedy generation")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, 1.05)
    fig.legend(loc="lower center", ncol=2 if len(series) < 12 else 3, fontsize=6.5, frameon=False)
    fig.tight_layout(rect=(0, 0.2 if len(series) < 12 else 0.26, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every result file, earlier defaults included")
    parser.add_argument("--out", default=None, help="PNG path (default results/pareto.png, or pareto_all.png with --all)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS / ("pareto_all.png" if args.all else "pareto.png")
    title = "SmolLM2-135M, dev CounterFact" + (", every run (earlier defaults too)" if args.all else ", current defaults")
    path = draw(collect(args.all), out, title)
    print(path)
    return path


if __name__ == "__main__":
    main()
