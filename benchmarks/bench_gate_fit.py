"""BaFT's gate fit: time per edit and the gate-firing diagnostic, per fit mode.

Applies N sequential BaFT edits with training switched off (``max_steps=0``: every edit's gates
are initialised and fitted, its change stays zero), once per ``gate_fit`` mode, and then asks of
every edit's prompt, paraphrases and neighbourhood prompts:

* ``own``: does the edit's own gate open (sigmoid > 0.5 with the inference gate shift) at some
  token of its own prompt / paraphrase?
* ``other``: does the gate of some *other* edit open at some token?

(the diagnostic of docs/results.md, "100 sequential edits"). It also reports the fit's seconds
per edit and the fitted objective. Writes ``benchmarks/results/<name>.{json,md}``.

    python benchmarks/bench_gate_fit.py --n 100 --fits full,active
    python benchmarks/bench_gate_fit.py --n 100 --variants '{"corpus300": {"num_corpus_negatives": 300}}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import environment, select_requests, set_threads, write_results  # noqa: E402


def _opens(module, states: torch.Tensor, mask: torch.Tensor, rank: int) -> torch.Tensor:
    """(prompts, edits) bool: the edit's gate opens at some position of the prompt."""
    w = module.weights(states)  # (B, T, N) with the inference shift
    w = w.masked_fill(~mask[..., None], 0.0)
    per_edit = w.view(*w.shape[:2], -1, rank).amax(-1)  # (B, T, edits)
    return (per_edit > 0.5).any(1)


def diagnose(edited, tok, att, reqs) -> dict:
    """Share of prompts where the own gate opens / some other edit's gate opens, per group."""
    from repedit.positions import encode

    groups = {"edit prompts": lambda r: [r.prompt], "paraphrases": lambda r: list(r.rephrase_prompts),
              "neighbourhood": lambda r: [lp.prompt for lp in r.locality_prompts]}
    rank = att.module.config.rank
    out = {}
    for group, get in groups.items():
        own_hits, other_hits, total = 0, 0, 0
        for j, r in enumerate(reqs):
            prompts = get(r)
            if not prompts:
                continue
            batch = encode(tok, prompts)
            with torch.no_grad():
                h, mask = edited.capture(att.layer, att.component, batch, before=att.name)
                opens = _opens(att.module, h.float(), mask, rank)
            other = opens.clone()
            other[:, j] = False
            total += len(prompts)
            other_hits += int(other.any(1).sum())
            own_hits += int(opens[:, j].sum())
        out[group] = {"own": own_hits / max(total, 1), "other": other_hits / max(total, 1), "prompts": total}
    return out


def run_mode(model, tok, reqs, mode: str, extra: dict, layer: int | None = None) -> dict:
    from repedit import Editor, EditorConfig
    from repedit.hooks import EditableModel
    from repedit.methods.baft import BaFT

    fit_times: list[float] = []
    real = BaFT._fit_gates

    def timed(self):
        t0 = time.perf_counter()
        real(self)
        fit_times.append(time.perf_counter() - t0)

    BaFT._fit_gates = timed
    edited = EditableModel(model, tok)
    try:
        cfg = EditorConfig(method="baft", max_steps=0, verify=False, layers=[layer] if layer is not None else None,
                           method_config={"gate_fit": mode, **extra})
        editor = Editor(edited, tok, cfg)
        t0 = time.perf_counter()
        editor.edit(reqs, sequential=True)
        wall = time.perf_counter() - t0
        att = editor.attachments()[0]
        diag = diagnose(edited, tok, att, reqs)
    finally:
        BaFT._fit_gates = real
        edited.unwrap()
    steady = fit_times[1:] or fit_times
    return {"fit": mode, "fit_s_median": statistics.median(steady), "fit_s_first": fit_times[0],
            "edit_s_mean": wall / len(reqs), "diagnostic": diag}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--fits", default="full,active")
    ap.add_argument("--variants", default=None, help="instead of --fits: JSON {label: {BaFTConfig fields}}, e.g. "
                    "'{\"corpus300\": {\"num_corpus_negatives\": 300}}'")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=None, help="edited layer (default: BaFT's default_layers)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    from repedit import models

    model, tok = models.load(args.model)
    reqs, data = select_requests(args.n)
    if args.variants:
        variants = json.loads(args.variants)
        results = [dict(run_mode(model, tok, reqs, cfg.pop("gate_fit", "active"), cfg, args.layer), fit=label)
                   for label, cfg in variants.items()]
    else:
        results = [run_mode(model, tok, reqs, mode, {}, args.layer) for mode in args.fits.split(",")]
    rows = []
    for res in results:
        row = {"gate fit": res["fit"], "fit s/edit (median)": res["fit_s_median"], "edit s (mean, no training)": res["edit_s_mean"]}
        for group, d in res["diagnostic"].items():
            row[f"{group}: own"] = d["own"]
            row[f"{group}: other"] = d["other"]
        rows.append(row)
    name = args.name or f"gate_fit_n{args.n}"
    write_results(name, {"rows": rows, "results": results, "data": data, "environment": environment(model, args.model)},
                  table=rows, notes=(f"{args.n} sequential BaFT edits (defaults, dev CounterFact), gates fitted and "
                                     "no training; 'own': the edit's own gate opens at some token of the prompt; "
                                     "'other': some other edit's gate does (lower is better)."))
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
