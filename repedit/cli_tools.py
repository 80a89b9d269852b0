"""``repedit sweep``, ``repedit inspect`` and ``repedit generate``: the subcommands that read a
saved adapter and report on it (``repedit.cli`` dispatches to them).

Example::

    repedit inspect my-edit
    repedit generate --adapter my-edit --prompt "The Eiffel Tower is located in the city of"
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from itertools import zip_longest
from pathlib import Path
from typing import Any

from repedit.cli_args import (
    CLIError,
    _data_spec,
    _load_adapter,
    _load_data,
    _load_model,
    _note,
    _parse_csv_numbers,
    _protocols,
    _read_adapter_cfg,
    _say,
)


def cmd_sweep(args: argparse.Namespace) -> int:
    from repedit.eval import distributed as D
    from repedit.eval.harness import evaluate_pre, write_json
    from repedit.eval.sweep import pareto_plot, sweep

    protocols = _protocols(args.protocols)
    values = _parse_csv_numbers(args.values, float, "--values")
    if not values:
        raise CLIError("--values needs at least one number")
    adapters = args.adapter
    knobs = args.knob or ["scale"]
    if len(knobs) not in (1, len(adapters)):
        raise CLIError(f"give one --knob for all adapters or one per adapter ({len(adapters)}), got {len(knobs)}")
    knobs = knobs * len(adapters) if len(knobs) == 1 else knobs
    labels = args.label or []
    if labels and len(labels) != len(adapters):
        raise CLIError(f"give one --label per adapter ({len(adapters)}), got {len(labels)}")
    cfgs = [_read_adapter_cfg(a) for a in adapters]
    spec = _data_spec(args, cfgs[0])
    ds, _ = _load_data(spec)
    plot = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
    D.init_from_env()
    try:
        model, tok, model_name = _load_model(args, cfgs[0])
        from repedit.hooks import EditableModel

        edited = EditableModel(model, tok)
        pre = evaluate_pre(edited, tok, ds, protocols, args.batch_size)
        results = []
        for i, (adir, knob) in enumerate(zip(adapters, knobs)):
            atts = edited.load_adapter(adir, ignore_fingerprint=args.ignore_fingerprint)
            try:
                res = sweep(edited, tok, ds, knob, values, attachments=atts, protocols=protocols, pre=pre,
                            batch_size=args.batch_size, scope=args.scope, label=labels[i] if labels else None,
                            progress=args.progress)
            finally:
                for a in atts:
                    edited.remove(a.name)
            res.metadata["adapter"] = {"path": str(Path(adir).resolve()), "tensors_sha256": cfgs[i].tensors_sha256}
            results.append(res)
            _say(_sweep_table(res))
        if D.is_main_process():
            out = write_json(args.out, {"protocol": results[0].protocol, "knob_values": values,
                                        "curves": [r.to_dict() for r in results]})
            pareto_plot(results, plot)
            _say(f"protocol: {results[0].protocol}; sweep written to {out}, plot to {plot}")
        D.barrier()
    finally:
        D.cleanup()
    return 0


def _sweep_table(res: Any) -> str:
    lines = [f"{res.label}: knob {res.knob}  (protocol {res.protocol})",
             f"{'value':>8} {'reliab.':>8} {'general.':>8} {'locality':>8} {'HM':>8} {'scope AUC':>10}"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in res.rows:
        auc = ", ".join(f"{v:.3f}" if v is not None else "-" for v in r["scope_auc"].values()) or "-"
        lines.append(f"{r['value']:>8g} {f(r['reliability']):>8} {f(r['generality']):>8} {f(r['locality']):>8} "
                     f"{f(r['hm']):>8} {auc:>10}")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.methods:
        from repedit.methods import available_methods, get_method

        for name in available_methods():
            spec = get_method(name)
            print(name)
            for field, text in spec.config_cls.help().items():
                print(f"  {field}: {text}")
        return 0
    if not args.adapter:
        raise CLIError("give an adapter directory (or --methods)")
    from repedit.adapters import format_inspect, inspect_adapter

    info = inspect_adapter(args.adapter, max_entries=args.entries)
    if args.json:
        from repedit.eval.harness import _clean

        print(json.dumps(_clean(info), indent=2))
    else:
        print(format_inspect(info))
    return 0


def _columns(left: str, right: str, width: int) -> list[str]:
    col = max(20, (width - 3) // 2)
    a = textwrap.wrap(left, col) or [""]
    b = textwrap.wrap(right, col) or [""]
    return [f"{x:<{col}} | {y}" for x, y in zip_longest(a, b, fillvalue="")]


def _subjects_from_adapter(cfg: Any, prompts: list[str]) -> list[str] | None:
    """Each prompt's subject, from the requests stored with the adapter, when an intervention
    acts on subject tokens (None when none does); a prompt with no known subject is an error."""
    rules = [r["name"] for r in cfg.interventions if r["active"] and r["positions"] == "subject"]
    if not rules:
        return None
    stored = ((cfg.metadata or {}).get("data") or {}).get("inline_requests") or []
    known = sorted({r["subject"] for r in stored if isinstance(r, dict) and isinstance(r.get("subject"), str)
                    and r["subject"]}, key=len, reverse=True)
    subjects = []
    for p in prompts:
        found = next((s for s in known if s in p), None)
        if found is None:
            raise CLIError(f"interventions {rules} act on the subject's tokens (positions subject), and none of the "
                           f"adapter's requests has a subject in the prompt {p!r}: pass --subject once per prompt")
        subjects.append(found)
    _note(f"subjects: {subjects} (from the adapter's requests)")
    return subjects


def cmd_generate(args: argparse.Namespace) -> int:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        p = Path(args.prompts_file)
        if not p.is_file():
            raise CLIError(f"--prompts-file {p}: no such file")
        prompts += [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise CLIError("give at least one --prompt or a --prompts-file")
    if any(not p.strip() for p in prompts):
        raise CLIError("--prompt must not be empty")
    subjects = args.subject
    if subjects is not None and len(subjects) != len(prompts):
        raise CLIError(f"give one --subject per prompt ({len(prompts)}), got {len(subjects)}")
    if subjects:
        for s, p in zip(subjects, prompts):
            if s not in p:
                raise CLIError(f"--subject {s!r} does not occur in the prompt {p!r}")
    if args.max_new_tokens < 1:
        raise CLIError("--max-new-tokens must be >= 1")
    cfg = _read_adapter_cfg(args.adapter)
    if subjects is None:
        subjects = _subjects_from_adapter(cfg, prompts)
    model, tok, _ = _load_model(args, cfg)
    edited = _load_adapter(model, tok, args.adapter, args.ignore_fingerprint)
    from tqdm.auto import tqdm

    bar = tqdm(total=2, desc="generating", unit="pass", disable=not args.progress)
    with edited.disabled():
        base = edited.generate(prompts, subjects=subjects, max_new_tokens=args.max_new_tokens)
    bar.update(1)
    new = edited.generate(prompts, subjects=subjects, max_new_tokens=args.max_new_tokens)
    bar.update(1)
    bar.close()
    if args.json:
        print(json.dumps([{"prompt": p, "without_adapter": a, "with_adapter": b} for p, a, b in zip(prompts, base, new)],
                         indent=2))
        return 0
    width = shutil.get_terminal_size((120, 24)).columns
    for p, a, b in zip(prompts, base, new):
        print(f"prompt: {p}")
        for line in _columns("without adapter:", "with adapter:", width):
            print(line)
        for line in _columns(a.strip(), b.strip(), width):
            print(line)
        print()
    return 0
