"""Plot how quality and cost grow with the number of sequential edits, from bench_baft results.

Each ``--series LABEL=FILE[:METHOD],FILE...`` is one curve: every sequential row of those
``benchmarks/results/FILE.json`` files (``"N sequential"``, and ``"after k of N sequential"``
from ``--milestones``) of METHOD (default: the file's only edited method) becomes a point at
its number of edits. Six panels, each series in one colour throughout: rewrite_acc,
rephrase_acc (greedy rephrase exact match dashed), locality, s/edit, the forward-latency ratio
with every edit attached (its A/A noise floor dotted), and saved adapter bytes per edit. Writes
``results/<name>.{json,md,png}``.

    python benchmarks/plot_growth.py --series "BaFT fp32=baft_seq100_rel4,baft_seq1000_rel4" \\
        --series "BaFT bf16=baft_seq10000_bf16" --name growth_baft
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, write_results  # noqa: E402

SETTING = re.compile(r"^(?:after (\d+) of )?(\d+) sequential$")
QUALITY = ("rewrite_acc", "rephrase_acc", "locality")


def edits_of(setting: str) -> int | None:
    """Number of edits behind a row's setting, or None for a row that is not sequential."""
    m = SETTING.match(str(setting))
    if not m:
        return None
    return int(m.group(1) or m.group(2))


def series_points(spec: str, results: Path = RESULTS_DIR) -> tuple[str, list[dict]]:
    """``LABEL=FILE[:METHOD],...`` -> (label, rows sorted by edits, each with ``edits`` and ``file``)."""
    if "=" not in spec:
        raise SystemExit(f"--series {spec!r}: expected LABEL=FILE[:METHOD],FILE...")
    label, files = spec.split("=", 1)
    points = []
    for item in filter(None, (f.strip() for f in files.split(","))):
        stem, _, method = item.partition(":")
        path = results / f"{stem}.json"
        if not path.is_file():
            raise SystemExit(f"--series {label!r}: no results file {path}")
        rows = [r for r in json.loads(path.read_text())["rows"] if edits_of(r.get("setting", "")) is not None]
        methods = {r["method"] for r in rows}
        if not method:
            if len(methods) != 1:
                raise SystemExit(f"{path.name} has sequential rows of {sorted(methods)}: name one as {stem}:METHOD")
            method = methods.pop()
        for r in rows:
            if r["method"] == method:
                points.append(dict(r, edits=edits_of(r["setting"]), file=stem))
    if not points:
        raise SystemExit(f"--series {label!r}: no sequential rows")
    return label, sorted(points, key=lambda p: p["edits"])


#: the panels: (title, y label, [(row key, line style, legend suffix)], y range)
PANELS = (
    ("rewrite_acc (teacher-forced)", "score", [("rewrite_acc", "-", "")], (0, 1.02)),
    ("rephrase: rephrase_acc, greedy exact (dashed)", "score",
     [("rephrase_acc", "-", ""), ("gen_rephrase", "--", " (greedy exact)")], (0, 1.02)),
    ("locality (agreement with the unedited model)", "score", [("locality", "-", "")], (0, 1.02)),
    ("seconds per edit", "s/edit", [("s_per_edit", "-", "")], (0, None)),
    ("forward latency, all edits attached (A/A floor dotted)", "edited / unedited forward time",
     [("latency_ratio", "-", ""), ("latency_aa", ":", " (A/A floor)")], (None, None)),
    ("adapter bytes per edit", "bytes", [("bytes_per_edit", "-", "")], (0, None)),
)


def plot(series: list[tuple[str, list[dict]]], out: Path) -> None:
    """One panel per measure (:data:`PANELS`), one colour per series in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, pts) in enumerate(series):
        color = colors[i % len(colors)]
        for p in pts:
            p.setdefault("bytes_per_edit", p["adapter_bytes"] / p["edits"] if p.get("adapter_bytes") else None)
        for ax, (_, _, lines, _) in zip(axes.flat, PANELS):
            for key, style, suffix in lines:
                xy = [(p["edits"], p[key]) for p in pts if p.get(key) is not None]
                if xy:
                    ax.plot([a for a, _ in xy], [b for _, b in xy], style, marker="o" if style == "-" else ".",
                            color=color, label=label + suffix)
    for ax, (title, ylabel, _, (lo, hi)) in zip(axes.flat, PANELS):
        ax.set_xscale("log")
        ax.set_xlabel("sequential edits")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if lo is not None or hi is not None:
            ax.set_ylim(bottom=lo, top=hi)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", action="append", required=True, help="LABEL=FILE[:METHOD],FILE... (repeatable)")
    p.add_argument("--name", default="growth_quality")
    args = p.parse_args(argv)
    series = [series_points(s) for s in args.series]
    cols = ["series", "edits", "file", "setting", *QUALITY, "gen_rephrase", "s_per_edit", "latency_ratio",
            "latency_aa", "adapter_bytes"]
    rows = [{"series": label, **{c: pt.get(c) for c in cols if c != "series"}} for label, pts in series for pt in pts]
    plot(series, RESULTS_DIR / f"{args.name}.png")
    write_results(args.name, {"rows": rows, "series": [label for label, _ in series]}, table=rows, columns=cols,
                  notes=f"Growth with the number of sequential edits (plot: `{args.name}.png`). 'after k of N': the "
                        "state of an N-edit run after its first k edits, scored on those k requests.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
