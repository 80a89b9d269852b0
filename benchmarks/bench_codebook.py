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

    .venv/bin/python benchmarks/bench_codebook.py --quick        # 24 edits (minutes)
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
    from benchmarks.bench_growth import synthetic
    from repedit.positions import encode

    cb = synthetic("codebook", n_entries, edited.hidden_size)  # random unit keys, radius 0.05: most prompts do not fire
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


def run_mode(mode, args, model, tok, edited, reqs, get_pre, sweep_n, gen_n):
    """Edit ``reqs`` sequentially with one radius mode, then score (``get_pre()`` gives the
    unedited model's scores; it may wait for another process to write them)."""
    from repedit.editing import Editor, EditorConfig

    # "<radii>[+lowrank]": the radius mode, optionally with per-entry low-rank values
    # (vector + rank-r map of h: the LoReFT/BaFT update form, gated by the codebook's lookup)
    radii, _, value = mode.partition("+")
    mc = {"radius_mode": radii}
    if value:
        mc["value"] = value
    if args.alpha is not None:
        mc["alpha"] = args.alpha
    if args.init_radius is not None:
        mc["init_radius"] = args.init_radius
    editor = Editor(edited, tok, EditorConfig(method="codebook", layers=[args.layer] if args.layer is not None else None, lr=args.lr, max_steps=args.max_steps,
                                              method_config=mc, adapter=mode, seed=args.seed, progress=True))
    log(f"[{mode}] editing {len(reqs)} requests sequentially")
    t0 = time.perf_counter()
    res = editor.edit(reqs, sequential=True)
    secs = time.perf_counter() - t0
    cb = editor.attachments()[0].module
    log(f"[{mode}] {secs / len(reqs):.2f} s/edit, train success {res.success_rate:.3f}, entries {cb.n_entries}")
    for name in edited.adapters():
        edited.set_active(adapter=name, active=(name == mode))
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
    if args.save_dir:  # keep the trained codebook (re-scoring at other scales needs no re-editing)
        edited.save_pretrained(args.save_dir, adapter=mode)
    m["layer"] = editor.attachments()[0].layer
    m["index_recall"] = index_recall(cb, edited, tok, reqs)
    pre, pre_gen = get_pre()
    rows = []
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
        rows.append(row | {"s_per_edit": m["seconds_per_edit"]})
        log(f"[{mode}] scale {s}: {row}")
    cb.radius_scale = 1.0
    edited.set_active(adapter=mode, active=False)
    return m, rows


def index_recall(cb, edited, tok, reqs, n_prompts: int = 200) -> dict:
    """How often the projected two-stage index finds the exact nearest key (and the same firing
    decision) on real queries: every prompt token of paraphrase and neighbourhood prompts."""
    from repedit.methods.codebook.radius import site_hidden

    if cb.n_entries <= cb.config.index_candidates:
        return {}
    prompts = []
    for r in reqs:
        prompts += list(r.rephrase_prompts[:1]) + [lp.prompt for lp in r.locality_prompts[:1]]
    prompts = prompts[:n_prompts]
    att = [a for a in edited.attachments() if a.module is cb][0]
    same = fire_same = total = 0
    saved = cb.config.index
    try:
        for h, pmask, _ in site_hidden(edited, att.layer, att.component, tok, prompts, [None] * len(prompts)):
            q = cb.normalize(h[pmask.bool()])
            cb.config.index = "exact"
            d1, i1 = cb._nearest(q)
            cb.config.index = "projected"
            d2, i2 = cb._nearest(q)
            same += int((i1 == i2).sum())
            fire_same += int(((d1 <= cb.radii[i1]) == (d2 <= cb.radii[i2])).sum())
            total += q.shape[0]
    finally:
        cb.config.index = saved
    return {"tokens": total, "nearest_recall": same / max(total, 1), "firing_agreement": fire_same / max(total, 1),
            "index_dim": cb.config.index_dim, "candidates": cb.config.index_candidates}


def score_pre(model, tok, reqs, gen_n):
    from repedit.eval.metrics import evaluate_requests

    pre = evaluate_requests(model, tok, reqs, protocols=("teacher_forced", "probability"))
    pre_gen = evaluate_requests(model, tok, reqs[:gen_n], protocols=("generation",))
    return pre, pre_gen


def wait_for(path: Path, poll: float = 5.0):
    while not path.exists():
        time.sleep(poll)
    with open(path) as f:
        data = json.load(f)
    return data["pre"], data["pre_gen"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="24 edits, radius scales 0.75,1.0,1.5 (minutes)")
    ap.add_argument("--n", type=int, default=None, help="number of sequential edits (default 1000; quick 24)")
    ap.add_argument("--modes", default="balanced,grace", help="comma list of <radii>[+lowrank]: balanced, grace, "
                    "balanced+lowrank (low-rank LoReFT/BaFT-form values instead of a vector)")
    ap.add_argument("--layer", type=int, default=None, help="edited layer (default: the codebook's default, 1/6 of the depth)")
    ap.add_argument("--model", default="smollm2-135m", help="model alias, HF id or path (repedit.models.load)")
    ap.add_argument("--source", default="counterfact", help="dev data: counterfact or zsre")
    ap.add_argument("--lr", type=float, default=None, help="default: the codebook's editor_defaults (as the API and CLI)")
    ap.add_argument("--max-steps", type=int, default=None, help="default: the codebook's editor_defaults")
    ap.add_argument("--alpha", type=float, default=None, help="BalancEdit alpha (default: the config default)")
    ap.add_argument("--init-radius", type=float, default=None, help="GRACE-mode initial radius (default: config default)")
    ap.add_argument("--scales", default=None, help="radius scales swept on the saved codebook (default "
                    "0.5,0.75,1.0,1.25,1.5; quick 0.75,1.0,1.5)")
    ap.add_argument("--sweep-subset", type=int, default=None, help="requests scored in the radius_scale sweep (default all; full 200)")
    ap.add_argument("--gen-subset", type=int, default=None, help="requests scored by generation (default quick 50, full 100)")
    ap.add_argument("--latency-entries", type=int, default=10000)
    ap.add_argument("--latency-repeats", type=int, default=21)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None)
    ap.add_argument("--latency-only", action="store_true", help="only the synthetic-codebook latency test (no edits, no scoring)")
    ap.add_argument("--save-dir", default=None, help="also save each mode's trained codebook adapter under this folder")
    ap.add_argument("--jobs", type=int, default=1, help="processes: with 2, each radius mode edits in its own process "
                    "(one torch thread each) while the parent scores the unedited model; results are merged")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pre-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = args.n or (24 if args.quick else 1000)
    args.scales = args.scales or ("0.75,1.0,1.5" if args.quick else "0.5,0.75,1.0,1.25,1.5")
    sweep_n = args.sweep_subset or (n if args.quick else min(n, 200))
    gen_n = args.gen_subset or (min(n, 50) if args.quick else min(n, 100))
    name = args.name or ("codebook_quick" if args.quick else "codebook_full")
    set_threads(1)

    from repedit import models
    from repedit.hooks import EditableModel

    model, tok = models.load(args.model)
    reqs, data_info = select_requests(n, seed=args.seed, source=args.source)
    if args.layer is None:
        from repedit.methods.codebook.config import CodebookConfig

        args.layer = CodebookConfig.default_layers(model.config.get_text_config().num_hidden_layers)[0]
    edited = EditableModel(model, tok)
    if args.worker:  # one radius mode, scores from the parent's file
        m, rows = run_mode(args.worker, args, model, tok, edited, reqs, lambda: wait_for(Path(args.pre_file)), sweep_n, gen_n)
        tmp = Path(args.worker_out + ".tmp")
        tmp.write_text(json.dumps({"m": m, "rows": rows}))
        os.replace(tmp, args.worker_out)
        return 0

    env = environment(model, args.model)
    if args.latency_only:
        lat = latency_test(edited, tok, reqs, args.latency_entries, args.layer, args.latency_repeats)
        write_results(name, {"latency": lat, "environment": env, "model": args.model, "layer": args.layer},
                      notes="Synthetic-codebook latency only." + latency_note(lat))
        log("done")
        return 0
    modes = args.modes.split(",")
    from repedit.editing import EditorConfig, resolve_config
    from repedit.methods.codebook import CodebookConfig

    editor_cfg = resolve_config(EditorConfig(method="codebook", lr=args.lr, max_steps=args.max_steps), CodebookConfig)
    payload = {"n_edits": len(reqs), "layer": args.layer, "model": args.model, "source": args.source, "lr": editor_cfg.lr, "max_steps": editor_cfg.max_steps, "jobs": args.jobs,
               "environment": env, "data": data_info, "modes": {}}
    workdir = Path(tempfile.mkdtemp(prefix="bench-codebook-"))
    procs = {}
    if args.jobs > 1:
        import subprocess

        base = [a for a in (argv if argv is not None else sys.argv[1:])]
        for mode in modes:
            out = workdir / f"{mode}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--worker", mode,
                   "--pre-file", str(workdir / "pre.json"), "--worker-out", str(out)]
            procs[mode] = (subprocess.Popen(cmd), out)
        log(f"started {len(procs)} worker processes")
    log(f"{len(reqs)} requests; pre-edit scoring")
    pre, pre_gen = score_pre(model, tok, reqs, gen_n)
    tmp = workdir / "pre.json.tmp"
    tmp.write_text(json.dumps({"pre": pre, "pre_gen": pre_gen}))
    os.replace(tmp, workdir / "pre.json")
    from repedit.eval.metrics import summarize

    pre_summ = summarize([{"post": r} for r in pre])
    pre_row = {"mode": "unedited", "radius_scale": None, "n_scored": len(reqs), **pick(pre_summ)}
    pre_row["locality"] = 1.0
    payload["unedited"] = pre_row
    table = [pre_row]
    for mode in modes:
        if procs:
            proc, out = procs[mode]
            if proc.wait() != 0:
                raise SystemExit(f"worker for {mode} failed with exit code {proc.returncode}")
            data = json.loads(out.read_text())
            m, rows = data["m"], data["rows"]
        else:
            m, rows = run_mode(mode, args, model, tok, edited, reqs, lambda: (pre, pre_gen), sweep_n, gen_n)
        payload["modes"][mode] = m
        table.extend(rows)
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
