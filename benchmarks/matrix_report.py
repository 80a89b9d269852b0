"""The benchmark matrix's tables, built from the results its jobs wrote.

Reads ``benchmarks/results/matrix_<cell>_<method>.json`` for every cell and method of
:data:`benchmarks.matrix.CELLS` and writes ``benchmarks/results/matrix.{json,md}``: per cell, a
quality table (EasyEdit's strict metrics first, greedy generation beside them, ROME's probability
scores as a secondary column), a cost table (s/edit, its ratio to one forward+backward, peak
memory, adapter bytes per edit, forward-latency ratio beside its A/A noise floor and the hooks'
own time), the growth rows of runs scored at milestones, the methods not run yet, and the
peers: EasyEdit's figures on SmolLM2 and CounterFact from ``../shared/notes/peers.md`` (other
records, EasyEdit's scripts) and ``bench_peers.py``'s runs on these records, where they exist.

Usage::

    python -m benchmarks.matrix_report                  # -> benchmarks/results/matrix.{json,md}
    python -m benchmarks.matrix_report --results DIR --peers PATH --name NAME
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS_DIR, SHARED_DATA, markdown_table, write_results  # noqa: E402
from benchmarks.matrix import CELLS, Cell  # noqa: E402

#: EasyEdit's figures measured on SmolLM2 with its own scripts (other CounterFact records)
PEERS_NOTE = SHARED_DATA.parent / "notes" / "peers.md"
#: bench_peers.py's runs on bench_baft's records, scored with repedit's scorer (the first file
#: found: the one-run comparison with repedit's methods interleaved, else EasyEdit alone)
SAME_RECORD_PEERS = {"single": ("peers_samerun_single20", "peers_single20"), "seq": ("peers_samerun_seq10", "peers_seq10")}
MODEL_NAMES = {"smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma 3 270M"}
SOURCE_NAMES = {"counterfact": "CounterFact", "zsre": "zsRE", "zsre_all": "zsRE (eval + train)"}

#: (column title, row keys joined by " / ")
QUALITY = (
    ("rewrite_acc", ("rewrite_acc",)),
    ("rephrase_acc", ("rephrase_acc",)),
    ("locality", ("locality",)),
    ("subject locality", ("subject_loc",)),
    ("greedy rewrite exact", ("gen_rewrite",)),
    ("greedy rephrase prefix / exact", ("gen_rephrase_prefix", "gen_rephrase")),
    ("greedy neighbourhood / subject unchanged", ("gen_loc_agree", "gen_subject_agree")),
    ("ROME efficacy / paraphrase / neighbourhood (secondary)", ("efficacy", "paraphrase", "neighborhood")),
    ("verified", ("success_rate",)),
)
COST = (
    ("s/edit", ("s_per_edit",)),
    ("÷ one forward+backward", ("edit_over_fwd_bwd",)),
    ("peak memory (MiB)", ("peak_mib",)),
    ("adapter bytes per edit", ("bytes_per_edit",)),
    ("latency ratio / A/A", ("latency_ratio", "latency_aa")),
    ("hooks / forward", ("hook_share",)),
    ("steps", ("mean_steps",)),
)
GROWTH = (("edits", ("edits",)), ("rewrite_acc", ("rewrite_acc",)), ("rephrase_acc", ("rephrase_acc",)),
          ("locality", ("locality",)), ("greedy rephrase prefix", ("gen_rephrase_prefix",)),
          ("greedy neighbourhood unchanged", ("gen_loc_agree",)), ("s/edit", ("s_per_edit",)),
          ("adapter bytes", ("adapter_bytes",)))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _table(rows: Sequence[Mapping[str, Any]], spec: Sequence[tuple[str, Sequence[str]]], first: str = "method") -> str:
    """Rows under the columns of ``spec``: each column joins its keys' values with " / "."""
    shown = [{first: r[first], **{title: " / ".join(_fmt(r.get(k)) for k in keys) for title, keys in spec}}
             for r in rows]
    return markdown_table(shown, [first, *(t for t, _ in spec)])


def cell_title(cell: Cell) -> str:
    n = "every valid record" if cell.n == "all" else f"{cell.n:,}"
    setting = f"{n} single edits" if cell.setting == "single" else f"{n} sequential edits"
    return f"{MODEL_NAMES.get(cell.model, cell.model)}, {SOURCE_NAMES.get(cell.source, cell.source)}: {setting}"


def result_name(cell: Cell, method: str) -> str:
    return f"matrix_{cell.name}_{method}"


def load_cell(cell: Cell, results: Path) -> dict[str, Any]:
    """The cell's rows from its methods' result files: the unedited model (once), each method's
    final row, its milestone rows, and the methods with no result yet."""
    out: dict[str, Any] = {"cell": cell.name, "title": cell_title(cell), "model": cell.model, "source": cell.source,
                           "setting": cell.setting, "n": cell.n, "unedited": None, "rows": [], "growth": [],
                           "missing": []}
    for method in cell.methods:
        path = results / f"{result_name(cell, method)}.json"
        if not path.is_file():
            out["missing"].append(method)
            continue
        data = json.loads(path.read_text())
        env = data.get("environment") or {}
        prov = {"file": path.stem, "git": str(env.get("git_commit"))[:10], "command": data.get("command")}
        final = [r for r in data.get("rows", []) if r.get("method") == method and not r["setting"].startswith("after")]
        if out["unedited"] is None:
            out["unedited"] = next((dict(r, method="unedited") for r in data.get("rows", [])
                                    if r.get("method") == "unedited"), None)
        if not final:  # a file from an interrupted run: no final row yet
            out["missing"].append(method)
            continue
        out["rows"].append({**final[-1], **prov})
        for r in data.get("rows", []):
            if r.get("method") == method and r["setting"].startswith("after"):
                out["growth"].append({**r, "edits": int(r["setting"].split()[1]), **prov})
        if cell.setting == "seq":
            out["growth"].append({**final[-1], "edits": len_of(final[-1]), **prov})
    out["growth"].sort(key=lambda r: (r["method"], r["edits"]))
    return out


def len_of(row: Mapping[str, Any]) -> int:
    """The number of edits of a final row ("1000 sequential" -> 1000)."""
    return int(str(row["setting"]).split()[0])


def peer_rows(path: Path) -> list[dict[str, str]]:
    """The first table of ``peers.md`` as rows keyed by its header (empty when there is no file)."""
    if not path.is_file():
        return []
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("|")), None)
    if start is None:
        return []
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))))
    return rows


def peers_for(cell: Cell, rows: Iterable[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """peers.md's rows for a SmolLM2 CounterFact cell's setting (single, or any sequential run)."""
    if cell.model != "smollm2-135m" or cell.source != "counterfact":
        return []
    want = "single" if cell.setting == "single" else "sequential"
    return [r for r in rows if want in r.get("mode", "") or r.get("method") == "unedited"]


def same_record_peers(cell: Cell, results: Path) -> tuple[str, list[dict]]:
    """bench_peers.py's rows on the first records of this cell (SmolLM2 CounterFact only)."""
    if cell.model != "smollm2-135m" or cell.source != "counterfact":
        return "", []
    name = next((n for n in SAME_RECORD_PEERS[cell.setting] if (results / f"{n}.json").is_file()), "")
    if not name:
        return "", []
    rows = [r for r in json.loads((results / f"{name}.json").read_text()).get("rows", []) if r.get("method") != "unedited"]
    return name, [dict(r, method=(r["method"] if r["method"].startswith("repedit ") else f"EasyEdit {r['method']}")
                       + f" ({r.get('setting', '')})") for r in rows]


def render(cells: Sequence[dict], peers: list[dict[str, str]], peers_path: Path, results: Path) -> str:
    done = sum(len(c["rows"]) for c in cells)
    planned = done + sum(len(c["missing"]) for c in cells)
    md = [f"{done} of the {planned} (cell, method) runs have results. Quality: EasyEdit's teacher-forced "
          "token accuracy (rewrite_acc, rephrase_acc) and locality as argmax agreement with the unedited model "
          "are the headline; greedy generation beside them; ROME's probability scores are secondary. Each "
          "run's command is in its own file (`file`).", ""]
    for cell, c in zip(CELLS, cells):
        md += [f"## {c['title']}", ""]
        if c["rows"]:
            rows = ([c["unedited"]] if c["unedited"] else []) + c["rows"]
            md += [_table(rows, QUALITY), "", "Cost:", "", _table(c["rows"], COST), "",
                   "Files: " + ", ".join(f"`{r['file']}` (git {r['git']})" for r in c["rows"]), ""]
        if len(c["growth"]) > len(c["rows"]):
            md += ["Growth (each row the run's state after that many edits, scored on those edits):", "",
                   _table(c["growth"], GROWTH), ""]
        if c["missing"]:
            md += ["Not run yet: " + ", ".join(c["missing"]) + f" (`python -m benchmarks.matrix --root RUNS "
                   f"--only {cell.name}`).", ""]
        same_name, same = same_record_peers(cell, results)
        if same:
            md += [f"EasyEdit on the first records of this cell, scored with repedit's scorer (`{same_name}`, "
                   "bench_peers.py; `repedit` rows: the same process):", "", _table(same, QUALITY[:3] + COST[:1]), ""]
        theirs = peers_for(cell, peers)
        if theirs:
            cols = [k for k in theirs[0] if k]
            md += [f"EasyEdit's own scripts and metrics on other CounterFact records (`{peers_path.name}`):", "",
                   markdown_table(theirs, cols), ""]
    return "\n".join(md)


def build(results: Path = RESULTS_DIR, peers_path: Path = PEERS_NOTE) -> tuple[dict, str]:
    """The report's JSON payload and Markdown body for the results in ``results``.

    Example::

        payload, body = build()
        payload["cells"][0]["missing"]  # methods of the first cell with no result yet
    """
    cells = [load_cell(cell, results) for cell in CELLS]
    peers = peer_rows(peers_path)
    return {"cells": cells, "peers": peers, "peers_source": str(peers_path)}, render(cells, peers, peers_path, results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the matrix_*.json files")
    p.add_argument("--peers", type=Path, default=PEERS_NOTE, help="EasyEdit's figures (a Markdown table)")
    p.add_argument("--name", default="matrix", help="output name under --results (default: matrix)")
    args = p.parse_args(argv)
    payload, body = build(args.results, args.peers)
    write_results(args.name, payload, notes=body, directory=args.results)
    done = sum(len(c["rows"]) for c in payload["cells"])
    print(f"{done} runs in {args.results / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
