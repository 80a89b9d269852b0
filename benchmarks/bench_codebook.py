"""Codebook benchmark: GRACE-style fixed radii vs BalancEdit radii, sequential CounterFact edits.

Edits N dev CounterFact records one after another (default model SmolLM2-135M-Instruct),
then scores every request on the final model:

* ``probability/rome``: efficacy, paraphrase and neighbourhood success;
* ``teacher_forced/easyedit``: rewrite_acc, rephrase_acc and locality = agreement of the
  argmax tokens with the unedited model (``neighborhood_acc``);
* ``generation/mirage`` on a subset (greedy decoding, exact/prefix match).

Both radius modes run in the same process on the same requests; a ``radius_scale`` sweep
(no retraining) follows. A latency test attaches a codebook of synthetic keys/values
(10,000 entries by default) and compares the forward time with the unedited model.

Usage::

    .venv/bin/python benchmarks/bench_codebook.py --quick        # minutes
    .venv/bin/python benchmarks/bench_codebook.py                # 1,000 sequential edits
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import environment, latency_ratio, select_requests, set_threads, write_results  # noqa: E402


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def pick(summary: dict) -> dict:
    post = summary.get("post", {})
    keys = {
        "efficacy": "rome.efficacy_success", "paraphrase": "rome.paraphrase_success", "neighborhood": "rome.neighborhood_success",
        "rewrite_acc": "rewrite_acc", "rephrase_acc": "rephrase_acc", "locality": "locality.neighborhood_acc",
    }
    return {k: post.get(v) for k, v in keys.items()}


def evaluate(model, tok, reqs, pre, protocols=("teacher_forced", "probability")):
    from repedit.eval.metrics import build_case_records, evaluate_requests, summarize

    post = evaluate_requests(model, tok, reqs, protocols=protocols, pre=pre)
    return summarize(build_case_records(reqs, pre, post))


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def latency_test(edited, tok, reqs, n_entries: int, layer: int, repeats: int) -> dict:
    """Forward latency with a synthetic codebook of ``n_entries`` random keys/values."""
    from repedit.methods import build
    from repedit.positions import encode

    d = edited.hidden_size
    g = torch.Generator().manual_seed(0)
    cb = build("codebook", {"n_entries": n_entries, "entries": [{} for _ in range(n_entries)]}, d)
    with torch.no_grad():
        k = torch.randn(n_entries, d, generator=g)
        cb.keys.copy_(k / k.norm(dim=-1, keepdim=True))
        cb.values.copy_(torch.randn(n_entries, d, generator=g))
        cb.radii.fill_(0.05)  # synthetic: realistic-size radius; most prompts do not fire
    cb.config.has_stats = True
    saved = [(a.name, a.active) for a in edited.attachments()]
    edited.set_active(active=False)
    edited.add("latency_cb", cb, layer=layer, positions="last_prompt", adapter="latency")
    out = {"entries": n_entries, "synthetic": True}
    try:
        for label, batch_prompts in (("batch16", [r.prompt for r in reqs[:16]]), ("batch1", [reqs[0].prompt])):
            b = encode(tok, batch_prompts)
            inputs = b.model_inputs()

            def run_edited():
                with torch.no_grad(), b.info():
                    edited.model(**inputs)

            def run_base():
                with torch.no_grad(), edited.disabled(), b.info():
                    edited.model(**inputs)

            out[label] = latency_ratio(run_edited, run_base, repeats=repeats, warmup=3)
            log(f"latency {label}: {out[label]}")
        per_entry = sum(t.numel() * t.element_size() for n_, t in cb.state_dict().items() if t.shape[:1] == (n_entries,))
        out["tensor_bytes_per_entry"] = per_entry / n_entries
        with tempfile.TemporaryDirectory() as tmp:
            edited.save_pretrained(tmp, adapter="latency")
            out["adapter_bytes"] = dir_bytes(Path(tmp) / "latency")
        out["adapter_bytes_per_entry"] = out["adapter_bytes"] / n_entries
    finally:
        edited.remove("latency_cb")
        for name, active in saved:
            edited.set_active([name], active=active)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 edits, small sweep (minutes)")
    ap.add_argument("--n", type=int, default=None, help="number of sequential edits (default 1000; quick 50)")
    ap.add_argument("--modes", default="balanced,grace")
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--max-steps", type=int, default=50)
    ap.add_argument("--alpha", type=float, default=None, help="BalancEdit alpha (default: the config default)")
    ap.add_argument("--init-radius", type=float, default=None, help="GRACE-mode initial radius (default: config default)")
    ap.add_argument("--scales", default="0.5,0.75,1.0,1.25,1.5")
    ap.add_argument("--sweep-subset", type=int, default=None, help="requests scored in the radius_scale sweep (default all; full 200)")
    ap.add_argument("--gen-subset", type=int, default=None, help="requests scored by generation (default quick 50, full 100)")
    ap.add_argument("--latency-entries", type=int, default=10000)
    ap.add_argument("--latency-repeats", type=int, default=21)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    n = args.n or (50 if args.quick else 1000)
    sweep_n = args.sweep_subset or (n if args.quick else min(n, 200))
    gen_n = args.gen_subset or (min(n, 50) if args.quick else min(n, 100))
    name = args.name or ("codebook_quick" if args.quick else "codebook_full")
    set_threads(1)

    from repedit import models
    from repedit.editing import Editor, EditorConfig
    from repedit.eval.metrics import evaluate_requests
    from repedit.hooks import EditableModel

    model, tok = models.load("smollm2-135m")
    env = environment(model, "smollm2-135m")
    reqs, data_info = select_requests(n, seed=args.seed)
    log(f"{len(reqs)} requests; pre-edit scoring")
    edited = EditableModel(model, tok)
    pre = evaluate_requests(model, tok, reqs, protocols=("teacher_forced", "probability"))
    pre_gen = evaluate_requests(model, tok, reqs[:gen_n], protocols=("generation",))
    payload = {"n_edits": len(reqs), "layer": args.layer, "lr": args.lr, "max_steps": args.max_steps,
               "environment": env, "data": data_info, "modes": {}}
    from repedit.eval.metrics import summarize

    pre_summ = summarize([{"post": r} for r in pre])
    pre_row = {"mode": "unedited", "radius_scale": None, "n_scored": len(reqs), **pick(pre_summ)}
    pre_row["locality"] = 1.0
    payload["unedited"] = pre_row
    table = [pre_row]
    for mode in args.modes.split(","):
        mc = {"radius_mode": mode}
        if args.alpha is not None:
            mc["alpha"] = args.alpha
        if args.init_radius is not None:
            mc["init_radius"] = args.init_radius
        editor = Editor(edited, tok, EditorConfig(method="codebook", layers=[args.layer], lr=args.lr, max_steps=args.max_steps,
                                                  method_config=mc, adapter=mode, seed=args.seed))
        log(f"[{mode}] editing {len(reqs)} requests sequentially")
        t0 = time.perf_counter()
        res = editor.edit(reqs, sequential=True)
        secs = time.perf_counter() - t0
        cb = editor.attachments()[0].module
        log(f"[{mode}] {secs / len(reqs):.2f} s/edit, train success {res.success_rate:.3f}, entries {cb.n_entries}")
        for other in args.modes.split(","):
            edited.set_active(adapter=other, active=(other == mode))
        flags = [o.flags.get("codebook", {}) for o in res.outcomes]
        actions = collections.Counter(f.get("action") for f in flags)
        m = {"seconds_per_edit": secs / len(reqs), "train_success": res.success_rate,
             "mean_steps": res.summary()["mean_steps"], "entries": cb.n_entries, "actions": dict(actions),
             "inseparable": sum(1 for o in res.outcomes if "codebook_inseparable" in o.flags),
             "conflicts": sum(1 for f in flags if f.get("conflicts")), "config": cb.export_config().to_dict() | {"entries": "..."},
             "radius_median": float(cb.radii.median()) if cb.n_entries else None, "sweep": []}
        with tempfile.TemporaryDirectory() as tmp:
            edited.save_pretrained(tmp, adapter=mode)
            m["adapter_bytes"] = dir_bytes(Path(tmp) / mode)
        for s in [float(x) for x in args.scales.split(",")]:
            cb.radius_scale = s
            sub = reqs if s == 1.0 else reqs[:sweep_n]
            subpre = pre if s == 1.0 else pre[:sweep_n]
            summ = evaluate(model, tok, sub, subpre)
            row = {"mode": mode, "radius_scale": s, "n_scored": len(sub), **pick(summ), "hm_rome": summ["hm"].get("probability/rome")}
            if s == 1.0:
                g = evaluate(model, tok, reqs[:gen_n], pre_gen, protocols=("generation",))
                m["generation"] = {k: v for k, v in g.get("post", {}).items() if k.startswith("generation")}
                m["summary_scale1"] = summ
                row.update({"gen_rewrite_exact": m["generation"].get("generation.rewrite_exact"),
                            "gen_rephrase_exact": m["generation"].get("generation.rephrase_exact")})
            m["sweep"].append(row)
            table.append(row | {"s_per_edit": m["seconds_per_edit"]})
            log(f"[{mode}] scale {s}: {row}")
        cb.radius_scale = 1.0
        payload["modes"][mode] = m
        edited.set_active(adapter=mode, active=False)
        write_results(name, payload, table=table, notes=NOTES)
    if args.latency_entries:
        payload["latency"] = latency_test(edited, tok, reqs, args.latency_entries, args.layer, args.latency_repeats)
    write_results(name, payload, table=table, notes=NOTES + latency_note(payload.get("latency")))
    log("done")
    return 0


NOTES = """Codebook (GRACE-style vs BalancEdit radii), sequential edits on dev CounterFact, scored after the
last edit. efficacy/paraphrase/neighborhood: ROME probability success; rewrite_acc/rephrase_acc:
EasyEdit teacher-forced token accuracy; locality: agreement of argmax tokens with the unedited model.
Rows with radius_scale != 1 are scored on the first `sweep_subset` requests only (n_scored)."""


def latency_note(lat) -> str:
    if not lat:
        return ""
    return (f"\n\nLatency ({lat['entries']} synthetic entries): batch16 ratio {lat['batch16']['ratio']:.3f}, "
            f"batch1 ratio {lat['batch1']['ratio']:.3f}; adapter {lat['adapter_bytes']} bytes "
            f"({lat['adapter_bytes_per_entry']:.0f} B/entry); tensors {lat['tensor_bytes_per_entry']:.0f} B/entry.")


if __name__ == "__main__":
    raise SystemExit(main())
