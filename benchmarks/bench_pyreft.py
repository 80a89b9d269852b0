"""Cross-check repedit's LoReFT against pyreft's on the same weights, and time both.

pyreft 0.1.0 pins transformers 4.45.1 and ~200 packages, so it never enters repedit's
environment. This script runs in a separate virtual environment::

    python -m venv /tmp/pyreft-venv
    /tmp/pyreft-venv/bin/pip install torch==2.13.0 transformers==5.23.0 matplotlib datasets pytest
    /tmp/pyreft-venv/bin/pip install --no-deps pyreft==0.1.0 pyvene==0.1.8
    /tmp/pyreft-venv/bin/pip install --no-deps --no-build-isolation -e /work/main
    /tmp/pyreft-venv/bin/python benchmarks/bench_pyreft.py            # tiny llama + SmolLM2-135M
    /tmp/pyreft-venv/bin/python benchmarks/bench_pyreft.py --models tiny

(matplotlib and datasets are hard imports of pyvene; pytest only because the tiny model
comes from ``tests/conftest.py``.)

Per model it:

1. builds a LoReFT in pyreft (``LoreftIntervention``, float32, seeded random W, b, R) and
   saves it with ``ReftModel.save`` -- files pyreft really wrote;
2. reads that directory with :func:`repedit.interop.read_pyreft` into a *separate* model
   instance (pyvene removes every forward hook on its model on every call) and compares
   logits on the last-position intervention, plus greedy generation (pyreft
   ``intervene_on_prompt=True`` vs repedit ``last_prompt``);
3. exports repedit's copy with :func:`repedit.interop.write_pyreft` and loads it back into
   pyreft three ways: ``ReftModel.load`` as is, ``ReftModel.load`` + casting to float32,
   and a float32 ``ReftConfig`` + ``load_state_dict`` of the files;
4. times the forward pass of the bare model, pyreft and repedit, interleaved, and reports
   medians and the pyreft / repedit ratio.

Results go to ``benchmarks/results/pyreft_crosscheck.{json,md}``. If pyreft cannot be
imported the files record why (status ``unavailable``) instead of numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
logger = logging.getLogger("bench_pyreft")


def _env() -> dict[str, Any]:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "executable": sys.executable,
    }
    for pkg in ("pyreft", "pyvene"):
        try:
            import importlib.metadata as md

            env[pkg] = md.version(pkg)
        except Exception:  # noqa: BLE001
            env[pkg] = None
    return env


def _load_model(which: str):
    if which == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import tiny_model

        return tiny_model("llama"), {"layer": 1, "batch": 8, "seq": 32, "vocab": 48, "bias_scale": 2.0}
    if which == "smollm2":
        from repedit import models

        model, _ = models.load("smollm2-135m")
        return model, {"layer": 15, "batch": 2, "seq": 32, "vocab": model.config.vocab_size, "bias_scale": 20.0}
    raise ValueError(which)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def run_model(which: str, rank: int, repeats: int, gen_tokens: int, workdir: Path) -> dict[str, Any]:
    import pyreft

    from repedit.interop import read_pyreft, write_pyreft

    res: dict[str, Any] = {"model": which}
    step = time.perf_counter()

    def mark(what: str) -> None:
        nonlocal step
        logger.info("%s: %s (%.1f s)", which, what, time.perf_counter() - step)
        step = time.perf_counter()

    t0 = time.perf_counter()
    model_p, spec = _load_model(which)  # pyreft's instance
    model_r, _ = _load_model(which)  # repedit's instance
    res["load_s"] = round(time.perf_counter() - t0, 2)
    d = model_p.config.hidden_size
    layer, B, T = spec["layer"], spec["batch"], spec["seq"]
    res.update({"hidden_size": d, "num_layers": model_p.config.num_hidden_layers, "layer": layer, "rank": rank,
                "batch": B, "seq": T, "component": "block_output", "positions": "last token (prompt)"})

    # 1. pyreft LoReFT with seeded random weights, saved by pyreft itself
    torch.manual_seed(1234)
    cfg = pyreft.ReftConfig(representations={
        "layer": layer, "component": "block_output", "low_rank_dimension": rank,
        "intervention": pyreft.LoreftIntervention(embed_dim=d, low_rank_dimension=rank, dtype=torch.float32)})
    reft = pyreft.get_reft_model(model_p, cfg)
    iv = next(iter(reft.interventions.values()))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        iv.learned_source.weight.copy_(torch.randn(rank, d, generator=g) / d**0.5)
        iv.learned_source.bias.copy_(spec["bias_scale"] * torch.randn(rank, generator=g))
    reft.set_device("cpu")
    reft.eval()
    pdir = workdir / f"{which}-saved-by-pyreft"
    reft.save(str(pdir))
    res["pyreft_files"] = sorted(p.name for p in pdir.iterdir())

    # 2. read those files into repedit on a separate instance
    mark("pyreft built and saved")
    edited = read_pyreft(pdir, model_r, positions="last_prompt")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, spec["vocab"], (B, T), generator=g)
    am = torch.ones_like(ids)
    loc = {"sources->base": (None, [[[T - 1]] * B])}

    def f_pyreft():
        return reft({"input_ids": ids, "attention_mask": am}, unit_locations=loc)[1].logits

    def f_repedit():
        return model_r(input_ids=ids, attention_mask=am).logits

    def f_base():
        with edited.disabled():
            return model_r(input_ids=ids, attention_mask=am).logits

    with torch.no_grad():
        lp, lr, l0 = f_pyreft(), f_repedit(), f_base()
    res["forward"] = {
        "max_abs_diff_pyreft_vs_repedit": _maxdiff(lp, lr),
        "max_abs_logit": float(lp.abs().max()),
        "max_abs_edit_effect": _maxdiff(lp, l0),
        "max_abs_diff_non_intervened_positions": _maxdiff(lp[:, :-1], lr[:, :-1]),
        "same_argmax_last_pos": bool((lp[:, -1].argmax(-1) == lr[:, -1].argmax(-1)).all()),
    }
    mark("forward compared")
    res["hooks"] = {"pyreft_model_after_call": _hooks(model_p), "repedit_model_after_pyreft_calls": _hooks(model_r)}

    # greedy generation: pyreft intervene_on_prompt=True vs repedit last_prompt
    try:
        gids = ids[:2, :16]
        gam = torch.ones_like(gids)
        with torch.no_grad():
            _, gp = reft.generate({"input_ids": gids, "attention_mask": gam},
                                  unit_locations={"sources->base": (None, [[[15]] * 2])},
                                  intervene_on_prompt=True, max_new_tokens=gen_tokens, do_sample=False,
                                  pad_token_id=0, eos_token_id=None)
            gr = model_r.generate(input_ids=gids, attention_mask=gam, max_new_tokens=gen_tokens, do_sample=False,
                                  pad_token_id=0, eos_token_id=None)
            with edited.disabled():
                g0 = model_r.generate(input_ids=gids, attention_mask=gam, max_new_tokens=gen_tokens,
                                      do_sample=False, pad_token_id=0, eos_token_id=None)
        res["generate"] = {"new_tokens": gen_tokens, "identical_tokens": bool(torch.equal(gp, gr)),
                           "differs_from_base": bool(not torch.equal(gr, g0))}
    except Exception as err:  # noqa: BLE001
        res["generate"] = {"error": f"{type(err).__name__}: {err}"[:400]}

    mark("generation compared")
    # 3. repedit -> pyreft
    back: dict[str, Any] = {}
    for exact in (True, False):
        odir = workdir / f"{which}-written-by-repedit-exact{int(exact)}"
        write_pyreft(edited, odir, exact=exact)
        tag = "exact" if exact else "plain"
        # a) ReftModel.load as is
        try:
            r2 = pyreft.ReftModel.load(str(odir), model_p)
            with torch.no_grad():
                l2 = r2({"input_ids": ids, "attention_mask": am}, unit_locations=loc)[1].logits
            back[f"{tag}_ReftModel.load"] = {"max_abs_diff_vs_repedit": _maxdiff(l2, lr)}
        except Exception as err:  # noqa: BLE001
            back[f"{tag}_ReftModel.load"] = {"error": f"{type(err).__name__}: {err}"[:300]}
            # b) the usual workaround: cast the reloaded (bf16-built) interventions to fp32
            try:
                r2 = pyreft.ReftModel.load(str(odir), model_p)
                dtypes = sorted({str(p.dtype) for v in r2.interventions.values() for p in v.parameters()})
                for v in r2.interventions.values():
                    v.to(torch.float32)
                with torch.no_grad():
                    l2 = r2({"input_ids": ids, "attention_mask": am}, unit_locations=loc)[1].logits
                back[f"{tag}_ReftModel.load+cast_fp32"] = {"param_dtypes_after_load": dtypes,
                                                           "max_abs_diff_vs_repedit": _maxdiff(l2, lr)}
            except Exception as err2:  # noqa: BLE001
                back[f"{tag}_ReftModel.load+cast_fp32"] = {"error": f"{type(err2).__name__}: {err2}"[:300]}
        # c) fp32 ReftConfig + pyreft's own load_state_dict of our files
        try:
            cfg3 = pyreft.ReftConfig(representations={
                "layer": layer, "component": "block_output", "low_rank_dimension": rank,
                "intervention": pyreft.LoreftIntervention(embed_dim=d, low_rank_dimension=rank, dtype=torch.float32)})
            r3 = pyreft.get_reft_model(model_p, cfg3)
            for k, v in r3.interventions.items():
                v.load_state_dict(torch.load(odir / f"intkey_{k}.bin", weights_only=True, map_location="cpu"))
            with torch.no_grad():
                l3 = r3({"input_ids": ids, "attention_mask": am}, unit_locations=loc)[1].logits
            back[f"{tag}_fp32_config+load_state_dict"] = {"max_abs_diff_vs_repedit": _maxdiff(l3, lr)}
        except Exception as err:  # noqa: BLE001
            back[f"{tag}_fp32_config+load_state_dict"] = {"error": f"{type(err).__name__}: {err}"[:300]}
    res["repedit_to_pyreft"] = back

    mark("repedit -> pyreft checked")
    # 4. latency, interleaved; median of repeats
    # Wall time and process CPU time per call. With one torch thread the forward runs in this
    # thread, so CPU time is what the code costs even when other jobs deschedule it.
    wall: dict[str, list[float]] = {"base": [], "pyreft": [], "repedit": []}
    cpu: dict[str, list[float]] = {"base": [], "pyreft": [], "repedit": []}
    fns = {"base": f_base, "pyreft": f_pyreft, "repedit": f_repedit}
    with torch.no_grad():
        for _ in range(3):
            for f in fns.values():
                f()
        for i in range(repeats):
            order = list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]
            for name, f in order:
                c, t = time.process_time(), time.perf_counter()
                f()
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)

    def summary(times: dict[str, list[float]]) -> dict[str, Any]:
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        paired = [p / r for p, r in zip(times["pyreft"], times["repedit"])]
        return {
            "median_ms": {k: round(v, 3) for k, v in med.items()},
            # pyreft and repedit calls of the same round run back to back, under the same load
            "paired_ratio_median": round(statistics.median(paired), 3),
            "ratio_of_mins": round(min(times["pyreft"]) / min(times["repedit"]), 3),
            "raw_ms": {k: [round(x * 1e3, 3) for x in v] for k, v in times.items()},
            "min_ms": {k: round(min(v) * 1e3, 3) for k, v in times.items()},
            "ratio_pyreft_over_repedit": round(med["pyreft"] / med["repedit"], 3),
            "overhead_ms_over_base": {"pyreft": round(med["pyreft"] - med["base"], 3),
                                      "repedit": round(med["repedit"] - med["base"], 3)},
        }

    res["latency_repeats"] = repeats
    res["latency_cpu"] = summary(cpu)
    res["latency_wall"] = summary(wall)
    res["loadavg_after"] = list(os.getloadavg())
    mark("timed")
    return res


def _markdown(out: dict[str, Any]) -> str:
    env = out["env"]
    lines = [
        "# pyreft cross-check",
        "",
        f"Command (from the repository root): `{out['command']}`",
        "",
        f"Status: **{out['status']}**. Date: {out['date']}.",
        "",
        f"Environment: Python {env.get('python')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
        f"pyreft {env.get('pyreft')}, pyvene {env.get('pyvene')} (installed `--no-deps` in a separate venv), "
        f"{env.get('torch_threads')} torch threads on {env.get('cpu_count')} shared CPU cores; "
        f"load average at start {env.get('loadavg_at_start')}.",
        "",
    ]
    if out["status"] != "ok" and not out.get("models"):
        lines += ["## Why there are no numbers", "", "```", out.get("reason", ""), "```", ""]
        return "\n".join(lines)
    lines += [
        "## Outputs (same LoReFT weights, last position of the prompt)",
        "",
        "| model | layer | rank | batch×seq | max |Δlogit| pyreft vs repedit | edit effect (max |Δ| vs base) | generate identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in out["models"]:
        if "error" in m:
            lines.append(f"| {m['model']} | error: {m['error'][:120]} |||||| ")
            continue
        f = m["forward"]
        gen = m.get("generate", {})
        gtxt = gen.get("identical_tokens", gen.get("error", "n/a"))
        lines.append(
            f"| {m['model']} (d={m['hidden_size']}, {m['num_layers']} layers) | {m['layer']} | {m['rank']} | "
            f"{m['batch']}×{m['seq']} | {f['max_abs_diff_pyreft_vs_repedit']:.3g} | {f['max_abs_edit_effect']:.3g} | {gtxt} |"
        )
    lines += ["", "Checks per model:", ""]
    for m in out["models"]:
        if "error" in m:
            continue
        f, h, gen = m["forward"], m["hooks"], m.get("generate", {})
        lines.append(
            f"- {m['model']}: pyreft wrote {m['pyreft_files']}; read_pyreft read them. Positions pyreft did not "
            f"intervene on: max |Δlogit| = {f['max_abs_diff_non_intervened_positions']:.3g}; same argmax at the "
            f"intervened position: {f['same_argmax_last_pos']}; greedy generation with the edit differs from the "
            f"bare model: {gen.get('differs_from_base', 'n/a')}. Forward hooks left on pyreft's model instance after "
            f"its call: {h['pyreft_model_after_call']}; on repedit's instance: {h['repedit_model_after_pyreft_calls']} "
            f"(repedit's own, untouched)."
        )
    lines += ["", "## Forward latency (median of interleaved repeats, ms)", "",
              "Clocks: process CPU time (`time.process_time`, one torch thread) and wall time. The machine was "
              "shared with other jobs, so read the paired ratios and minima alongside the medians (see Notes).", "",
              "| model | clock | repeats | bare model | pyreft | repedit | pyreft / repedit (medians) | median of paired ratios | ratio of minima | min bare / pyreft / repedit | overhead pyreft | overhead repedit |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in out["models"]:
        if "error" in m:
            continue
        for clock in ("cpu", "wall"):
            lat = m[f"latency_{clock}"]
            t, o = lat["median_ms"], lat["overhead_ms_over_base"]
            mn = lat["min_ms"]
            lines.append(f"| {m['model']} | {clock} | {m['latency_repeats']} | {t['base']:.2f} | {t['pyreft']:.2f} | "
                         f"{t['repedit']:.2f} | **{lat['ratio_pyreft_over_repedit']:.2f}×** | "
                         f"{lat['paired_ratio_median']:.2f}× | {lat['ratio_of_mins']:.2f}× | "
                         f"{mn['base']:.2f} / {mn['pyreft']:.2f} / {mn['repedit']:.2f} | {o['pyreft']:+.2f} | "
                         f"{o['repedit']:+.2f} |")
    lines += ["", "## repedit → pyreft (files written by `write_pyreft`, loaded by pyreft)", ""]
    for m in out["models"]:
        if "error" in m:
            continue
        lines.append(f"**{m['model']}**")
        lines.append("")
        for k, v in m["repedit_to_pyreft"].items():
            val = v.get("error") or f"max |Δlogit| vs repedit = {v['max_abs_diff_vs_repedit']:.3g}"
            if "param_dtypes_after_load" in v:
                val += f" (parameters after load: {', '.join(v['param_dtypes_after_load'])})"
            lines.append(f"- `{k}`: {val}")
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in out.get("notes", [])] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,smollm2", help="comma list of: tiny, smollm2")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=100, help="timed repeats for the tiny model")
    ap.add_argument("--repeats-large", type=int, default=10, help="timed repeats for SmolLM2")
    ap.add_argument("--gen-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least jitter on a shared machine)")
    ap.add_argument("--out", default=str(RESULTS / "pyreft_crosscheck"), help="path prefix for .json and .md")
    ap.add_argument("--force", action="store_true", help="overwrite successful results with an 'unavailable' record")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    out_json, out_md = Path(args.out + ".json"), Path(args.out + ".md")
    out: dict[str, Any] = {
        "command": " ".join([sys.executable, os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "env": _env(),
        "models": [],
        "notes": [],
    }
    try:
        import pyreft  # noqa: F401
    except Exception as err:  # noqa: BLE001
        out["status"] = "unavailable"
        out["reason"] = (f"import pyreft failed in {sys.executable}: {type(err).__name__}: {err}\n"
                         "Set up the separate environment described at the top of benchmarks/bench_pyreft.py.")
        if out_json.exists() and json.loads(out_json.read_text()).get("status") == "ok" and not args.force:
            print(out["reason"] + f"\nnot overwriting the successful results in {out_json} (use --force)")
            return 2
    else:
        with tempfile.TemporaryDirectory(prefix="bench-pyreft-") as tmp:
            for which in [m.strip() for m in args.models.split(",") if m.strip()]:
                logger.info("model %s", which)
                t0 = time.perf_counter()
                repeats = args.repeats if which == "tiny" else args.repeats_large
                try:
                    out["models"].append(run_model(which, args.rank, repeats, args.gen_tokens, Path(tmp)))
                except Exception as err:  # noqa: BLE001
                    traceback.print_exc()
                    out["models"].append({"model": which, "error": f"{type(err).__name__}: {err}"})
                out["models"][-1]["wall_s"] = round(time.perf_counter() - t0, 1)
                logger.info("model %s done in %.0f s", which, out["models"][-1]["wall_s"])
        ok = [m for m in out["models"] if "error" not in m]
        out["status"] = "ok" if ok and len(ok) == len(out["models"]) else ("partial" if ok else "failed")
        out["notes"] = [
            "pyreft and repedit run on separate model instances: pyvene removes every forward hook on its "
            "model on every call (`hooks.pyreft_model_after_call` is the count left on pyreft's instance).",
            "pyreft gathers the intervened positions, applies LoReFT and scatters them back; repedit applies "
            "LoReFT to the whole hidden state and keeps the unmasked positions with torch.where, so tiny "
            "differences come from matmul shapes and from repedit re-orthonormalising R (QR) on load.",
            "`exact_*` files carry repedit's unconstrained rotation parameter as an extra tensor pyreft ignores; "
            "`plain_*` files hold pyreft's three tensors only.",
            "`ReftModel.load` rebuilds learned_source in bfloat16 (pyreft does not store the dtype), so on a "
            "float32 model it fails; casting to float32 afterwards runs but the weights went through bfloat16.",
            "Latency: the same inputs, the three variants interleaved in alternating order after 3 warm-up "
            "rounds. The machine's 2 cores are shared with other jobs (load average 5-8 during the run), so "
            "both clocks are inflated and drift during the run (in this VM even process CPU time grows under "
            "load). The median of per-round paired ratios (pyreft and repedit measured back to back) and the "
            "ratio of minima are the most robust numbers; the ratio of medians is what was asked for. "
            "`raw_ms` in the JSON holds every measurement.",
        ]
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    out_md.write_text(_markdown(out))
    print(_markdown(out))
    return 0 if out["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
