"""How cost grows with the number of edits: forward latency, peak memory and adapter bytes.

For BaFT (``rank`` bases per edit, incremental) and the codebook (one entry per edit) at 1,
100, 1,000 and 10,000 edits, with interventions of the sizes those edits produce (synthetic
parameters: the cost of an intervention depends on its shapes, not its values; gates and
radii are set so that, as with real edits, unrelated prompts do not fire):

* forward-latency ratio of the edited to the unedited model, same process, same prompts,
  median of interleaved repeats (one prompt and a batch of 16);
* peak memory: the rise of the process's peak RSS over an unedited forward, measured in a
  fresh process per point (CPU; on CUDA, ``torch.cuda.max_memory_allocated``);
* adapter bytes per edit, as saved by ``save_pretrained``.

It also collects the quality of sequential edits against their number from the other
benchmarks' result files (``codebook_*``, ``baft_*``) and plots everything into
``benchmarks/results/growth.png``.

Usage::

    python benchmarks/bench_growth.py --quick          # 1, 100, 1000 edits (growth_quick.*)
    python benchmarks/bench_growth.py                  # 1, 100, 1000, 10000 edits
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import RESULTS_DIR, environment, latency_ratio, median_time, select_requests, set_threads, write_results  # noqa: E402

METHODS = ("baft", "baft_dense", "codebook")


def synthetic(method: str, n_edits: int, hidden: int, rank: int = 2):
    """An intervention of the size ``n_edits`` real edits produce, with inert gates/radii."""
    from repedit.methods import build

    g = torch.Generator().manual_seed(0)
    if method in ("baft", "baft_dense"):  # baft: the default routing (sparse from 256 edits); baft_dense: every edit
        nb = n_edits * rank
        # 7 earlier-negative rows per edit: the subject token of the prompt, its 2 augmented
        # copies and 4 relation templates (the defaults)
        routing = {"routing": "dense"} if method == "baft_dense" else {}
        mod = build("baft", {"rank": rank, "num_bases": nb, "num_earlier": 7 * n_edits, **routing}, hidden)
        with torch.no_grad():
            mod.earlier_states.copy_(torch.randn(7 * n_edits, hidden, generator=g).half())
            # one gate row per edit, shared by its bases (the gate fit copies it)
            gates = torch.randn(n_edits, hidden, generator=g).repeat_interleave(rank, 0)
            mod.read_frozen.copy_(torch.cat([gates, torch.randn(2 * nb, hidden, generator=g)]) / hidden ** 0.5)
            mod.write_frozen.copy_(torch.nn.functional.normalize(torch.randn(nb, hidden, generator=g), dim=-1))
            mod.gate_bias_frozen.fill_(-30.0)  # gates off on unrelated prompts, as trained gates are
        return mod
    if method == "codebook":
        mod = build("codebook", {"n_entries": n_edits, "entries": [{} for _ in range(n_edits)]}, hidden)
        with torch.no_grad():
            mod.keys.copy_(torch.nn.functional.normalize(torch.randn(n_edits, hidden, generator=g), dim=-1))
            mod.values.copy_(torch.randn(n_edits, hidden, generator=g))
            mod.radii.fill_(0.05)
        mod.config.has_stats = True
        return mod
    raise ValueError(f"unknown method {method!r}")


def adapter_bytes(edited, adapter: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        edited.save_pretrained(tmp, adapter=adapter)
        return sum(f.stat().st_size for f in (Path(tmp) / adapter).rglob("*") if f.is_file())


def worker(args) -> dict:
    """One (method, size) point in this process: latency, peak-memory rise, adapter bytes."""
    from repedit import models
    from repedit.hooks import EditableModel
    from repedit.positions import encode

    set_threads(1)
    model, tok = models.load(args.model)
    model.eval()
    edited = EditableModel(model, tok)
    reqs, _ = select_requests(16, seed=0)
    layer = args.layer if args.layer is not None else max(0, round(edited.num_layers / 6))
    batches = {"batch1": encode(tok, [reqs[0].prompt]), "batch16": encode(tok, [r.prompt for r in reqs])}

    def fwd(b):
        with torch.no_grad(), b.info():
            model(**b.model_inputs())

    for b in batches.values():
        fwd(b)
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mod = synthetic(args.worker_method, args.worker_n, edited.hidden_size)
    positions = "prompt" if args.worker_method.startswith("baft") else "last_prompt"
    edited.add("growth", mod, layer=layer, positions=positions, adapter="growth")
    for b in batches.values():
        fwd(b)
    peak1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"method": args.worker_method, "edits": args.worker_n, "layer": layer,
           "tensor_bytes": sum(t.numel() * t.element_size() for t in list(mod.buffers()) + list(mod.parameters())),
           "peak_rss_rise_bytes": peak1 - peak0, "adapter_bytes": adapter_bytes(edited, "growth")}
    out["adapter_bytes_per_edit"] = out["adapter_bytes"] / args.worker_n
    for label, b in batches.items():
        def run_edited(b=b):
            fwd(b)

        def run_base(b=b):
            with edited.disabled():
                fwd(b)

        out[label] = latency_ratio(run_edited, run_base, repeats=args.repeats, warmup=3)
        out[f"{label}_aa"] = latency_ratio(run_base, run_base, repeats=args.repeats, warmup=3)  # the noise floor
        h, mask = edited.capture(layer, "block_output", b, before="growth")
        with torch.no_grad():
            out[f"{label}_hook_ms"] = 1000 * median_time(lambda: mod(h, mask), repeats=args.repeats)
    return out


def quality_points() -> list[dict]:
    """Sequential-edit quality against the number of edits, from other result files."""
    pts = []
    # runs at the methods' default settings only (probes at other layers are left out)
    for path in [RESULTS_DIR / f"codebook_{n}.json" for n in ("quick", "n200", "n1000", "full")]:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for mode, m in (data.get("modes") or {}).items():
            for row in m.get("sweep", []):
                if row.get("radius_scale") == 1.0:
                    pts.append({"file": path.name, "method": f"codebook ({mode})", "edits": data.get("n_edits"),
                                **{k: row.get(k) for k in ("efficacy", "paraphrase", "locality")}})
    for path in [RESULTS_DIR / f"baft_{n}.json" for n in ("quick", "seq100", "full")]:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for row in data.get("rows", []):
            setting = str(row.get("setting", ""))
            if setting.endswith("sequential"):
                pts.append({"file": path.name, "method": row["method"], "edits": int(setting.split()[0]),
                            **{k: row.get(k) for k in ("efficacy", "paraphrase", "locality")}})
    return pts


def plot(points: list[dict], quality: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for method in METHODS:
        pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["edits"])
        if not pts:
            continue
        x = [p["edits"] for p in pts]
        axes[0].plot(x, [p["batch1"]["ratio"] for p in pts], "o-", label=f"{method}, 1 prompt")
        axes[0].plot(x, [p["batch16"]["ratio"] for p in pts], "s--", label=f"{method}, batch 16")
        axes[1].plot(x, [max(p["peak_rss_rise_bytes"] / 2**20, 0.1) for p in pts], "o-", label=method)
        axes[2].plot(x, [p["adapter_bytes"] / 2**20 for p in pts], "o-", label=method)
    for ax, title in zip(axes[:3], ("forward latency, edited / unedited", "peak memory rise (MiB)", "adapter size (MiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("edits")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    ax = axes[3]
    for method in sorted({q["method"] for q in quality}):
        qs = sorted((q for q in quality if q["method"] == method and q.get("locality") is not None), key=lambda q: q["edits"])
        if qs:
            ax.plot([q["edits"] for q in qs], [q["paraphrase"] for q in qs], "o-", label=f"{method} paraphrase")
            ax.plot([q["edits"] for q in qs], [q["locality"] for q in qs], "s--", label=f"{method} locality")
    ax.set_xscale("log")
    ax.set_xlabel("sequential edits (scored after the last)")
    ax.set_title("quality vs edits (dev CounterFact)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_name(args: argparse.Namespace) -> str:
    """The results file stem: ``--name``, else ``growth_quick`` for ``--quick`` (a quick run never
    overwrites the full one) and ``growth`` otherwise."""
    return args.name or ("growth_quick" if args.quick else "growth")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="sizes 1, 100, 1000")
    p.add_argument("--sizes", default=None, help="comma list of edit counts (default 1,100,1000,10000; quick 1,100,1000)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=None, help="edited layer (default: 1/6 of the depth, BaFT's default)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--name", default=None, help="results file stem (default growth; growth_quick with --quick, so a "
                   "quick run never overwrites the full one)")
    p.add_argument("--worker-method", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--replot", action="store_true", help="redraw the plot from the last results (and the other result files)")
    args = p.parse_args(argv)
    args.name = results_name(args)
    if args.replot:
        data = json.loads((RESULTS_DIR / f"{args.name}.json").read_text())
        data["quality"] = quality_points()
        (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps(data, indent=2, default=str))
        plot(data["points"], data["quality"], RESULTS_DIR / f"{args.name}.png")
        return 0
    if args.worker_method:
        res = worker(args)
        tmp = Path(args.worker_out + ".tmp")
        tmp.write_text(json.dumps(res))
        os.replace(tmp, args.worker_out)
        return 0
    set_threads(1)
    sizes = [int(s) for s in (args.sizes or ("1,100,1000" if args.quick else "1,100,1000,10000")).split(",")]
    start = time.perf_counter()
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for n in sizes:
                out = Path(tmp) / f"{method}_{n}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--repeats", str(args.repeats),
                       "--worker-method", method, "--worker-n", str(n), "--worker-out", str(out)]
                if args.layer is not None:
                    cmd += ["--layer", str(args.layer)]
                if subprocess.run(cmd).returncode != 0:
                    raise SystemExit(f"worker {method} {n} failed")
                pt = json.loads(out.read_text())
                points.append(pt)
                print(f"[{time.perf_counter() - start:6.0f}s] {method} {n}: latency 1 prompt {pt['batch1']['ratio']:.3f}, "
                      f"batch16 {pt['batch16']['ratio']:.3f}, peak +{pt['peak_rss_rise_bytes'] / 2**20:.1f} MiB, "
                      f"adapter {pt['adapter_bytes_per_edit']:.0f} B/edit", flush=True)
    quality = quality_points()
    from repedit import models

    model, _ = models.load(args.model)
    table = [{"method": p_["method"], "edits": p_["edits"], "latency_1_prompt": p_["batch1"]["ratio"],
              "latency_batch16": p_["batch16"]["ratio"],
              "A/A 1 prompt": p_.get("batch1_aa", {}).get("ratio"), "A/A batch16": p_.get("batch16_aa", {}).get("ratio"),
              "hook_ms_1_prompt": p_.get("batch1_hook_ms"), "hook_ms_batch16": p_.get("batch16_hook_ms"),
              "peak_rss_rise_MiB": p_["peak_rss_rise_bytes"] / 2**20,
              "tensor_MiB": p_["tensor_bytes"] / 2**20, "adapter_bytes_per_edit": p_["adapter_bytes_per_edit"]} for p_ in points]
    write_results(args.name, {"points": points, "quality": quality, "environment": environment(model, args.model)}, table=table,
                  notes=("Cost against the number of edits (synthetic interventions of the sizes real edits produce; BaFT: "
                         "2 bases per edit at every prompt token of layer 1/6 of the depth; codebook: one entry per edit, "
                         "subject-token scan, projected index from 4,096 entries). Latency: edited/unedited forward, "
                         f"median of {args.repeats} interleaved repeats, one torch thread; A/A: the unedited model timed against "
                         "itself (the noise floor); hook_ms: the intervention alone on the site's states. "
                         "baft routes sparsely from 256 edits (top 8 per token), baft_dense evaluates every edit. Peak memory: rise of the "
                         "process's peak RSS over an unedited forward (fresh process per point). "
                         f"Plot: {args.name}.png; its "
                         "last panel collects sequential-edit quality from the other result files."))
    plot(points, quality, RESULTS_DIR / f"{args.name}.png")
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
