"""The ``repedit`` command line: edit, eval, sweep, inspect, generate.

Examples::

    repedit edit --model smollm2-135m --data counterfact --limit 10 --method loreft --layers 9 --out cf10
    repedit edit --prompt "The Eiffel Tower is in" --target Rome --subject "Eiffel Tower" --out eiffel
    repedit eval --adapter cf10 --out cf10/metrics.json              # the adapter's own requests
    repedit eval --adapter cf10 --data zsre --limit 50 --zsre-target answers --protocols teacher_forced
    repedit sweep --adapter cf10 --knob scale --values 0,0.5,1,1.5 --out sweep.json   # + sweep.png
    repedit inspect cf10
    repedit generate --adapter eiffel --prompt "The Eiffel Tower is in"
    torchrun --nproc_per_node 2 -m repedit.cli eval --adapter cf10 --out m.json   # sharded

Every subcommand has ``--help``. Errors in arguments or files print one line on stderr and
exit with status 1 (2 for argument syntax); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import textwrap
import time
from itertools import zip_longest
from pathlib import Path
from typing import Any, Sequence

from repedit.cli_args import (  # noqa: F401  (re-exported: the subcommands' shared helpers)
    CLIError,
    _check_against_model_size,
    _check_checkpoint_args,
    _data_spec,
    _is_main,
    _json_arg,
    _load_data,
    _model_dims,
    _note,
    _parse_csv_numbers,
    _say,
    _sniff_format,
)
from repedit.cli_parser import PROG, build_parser

logger = logging.getLogger(__name__)

__all__ = ["main", "build_parser", "CLIError"]


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2)
    root = logging.getLogger()
    if not root.handlers:  # leave an embedding application's (or pytest's) logging alone
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("repedit").setLevel(level)
    if getattr(args, "verbose", 0) < 2:
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: noise here
        except ImportError:  # pragma: no cover
            pass


def _device(args: argparse.Namespace) -> Any:
    import torch

    from repedit.eval.distributed import launched, local_device

    if args.device:
        return args.device
    if launched():
        return local_device()
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_model(args: argparse.Namespace, adapter_cfg: Any = None) -> tuple[Any, Any, str]:
    import torch

    from repedit import models

    name = args.model
    if name is None:
        base = getattr(adapter_cfg, "base_model_name_or_path", None)
        if base and (base in models.KNOWN_MODELS or Path(base).exists()):
            name = base
            _note(f"model: {name} (the adapter's base model)")
        else:
            name = models.DEFAULT_MODEL
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).parent.exists()
    if name not in models.KNOWN_MODELS and looks_local and not Path(name).expanduser().exists():
        raise CLIError(f"--model {name}: no such directory (known aliases: {', '.join(sorted(models.KNOWN_MODELS))})")
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model, tok = models.load(name, dtype=dtype, device=_device(args))
    logger.info("loaded %s in %.1f s", name, time.perf_counter() - t0)
    return model, tok, name


def _read_adapter_cfg(directory: str) -> Any:
    from repedit.adapters import read_adapter_config

    return read_adapter_config(directory)


def _load_adapter(model: Any, tok: Any, directory: str, ignore_fingerprint: bool) -> Any:
    import warnings

    from repedit.hooks import EditableModel

    with warnings.catch_warnings():
        if not ignore_fingerprint:
            warnings.simplefilter("default")
        return EditableModel.from_pretrained(model, directory, tokenizer=tok, ignore_fingerprint=ignore_fingerprint)


def _protocols(text: str) -> tuple[str, ...]:
    from repedit.eval.harness import _check_protocols

    return _check_protocols(text)


# ============================================================================ commands
def _edit_spec(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Check ``repedit edit``'s arguments (nothing loaded yet) and return the data spec."""
    from repedit.adapters import CONFIG_NAME
    from repedit.eval.distributed import launched

    if launched():
        raise CLIError("`repedit edit` runs in one process; start it without torchrun/accelerate launch")
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    if (out / CONFIG_NAME).exists() and not args.overwrite:
        raise CLIError(f"--out {out} already holds an adapter; pass --overwrite to replace it")
    if args.requests_file and args.data:
        raise CLIError("give --data or --requests, not both")
    if args.requests_file:
        args.data = args.requests_file
    single = any(v is not None for v in (args.prompt, args.target))
    if single:
        if args.data:
            raise CLIError("give either --data or --prompt/--target, not both")
        if not (args.prompt and args.target):
            raise CLIError("a single request needs both --prompt and --target")
        req = {"prompt": args.prompt, "target_new": args.target, "subject": args.subject,
               "ground_truth": args.ground_truth, "case_id": 0}
        spec = {"requests": [req]}
    else:
        spec = _data_spec(args)
    if args.evaluate != "none" and not args.sequential:
        raise CLIError("--evaluate immediate|final needs --sequential")
    _check_checkpoint_args(args)
    return spec


def _editor_config(args: argparse.Namespace) -> Any:
    """The :class:`~repedit.editing.EditorConfig` of ``repedit edit``'s options (checked)."""
    from repedit.arch import COMPONENTS
    from repedit.editing import EditorConfig
    from repedit.methods import config_from_dict

    if args.component not in COMPONENTS:
        raise CLIError(f"--component must be one of {', '.join(COMPONENTS)}, got {args.component!r}")
    layers = _parse_csv_numbers(args.layers, int, "--layers") if args.layers else None
    method_cfg = _json_arg(args.method_config, "--method-config")
    kw: dict[str, Any] = {}
    for name in ("lr", "max_steps", "stop_prob"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    config_from_dict(args.method, method_cfg, strict=True)  # unknown method or option: fail before loading anything
    if args.answer_end is not None:
        kw["answer_end"] = "" if args.answer_end == "none" else args.answer_end
    if args.entity_names is not None:
        kw["entity_names"] = args.entity_names
    if args.relation_copies < 0:
        raise CLIError(f"--relation-copies must be >= 0, got {args.relation_copies}")
    if args.relation_copies and not args.relation_templates:
        raise CLIError("--relation-copies needs --relation-templates FILE (a known_1000.json-style file)")
    if args.relation_templates:
        from repedit.eval.data import relation_templates

        try:
            kw["relation_templates"] = relation_templates(args.relation_templates)
        except (OSError, ValueError) as err:
            raise CLIError(f"--relation-templates: {err}") from None
        kw["relation_copies"] = args.relation_copies
    return EditorConfig(method=args.method, method_config=method_cfg, layers=layers, component=args.component,
                        positions=args.positions, batch_size=args.batch_size, seed=args.seed, augment=args.augment,
                        progress=args.progress, verify=not args.no_verify, corpus=args.corpus, **kw)


def _train(args: argparse.Namespace, editor: Any, ds: Any, reqs: list, ck: Any,
           model_name: str) -> tuple[dict, dict]:
    """Train the edits (resuming checkpoint ``ck``, or with sequential evaluation when asked):
    (outcome summary, sequential-protocol reports)."""
    cfg = editor.config
    t0 = time.perf_counter()
    if ck is not None:
        from repedit.editing import EditResult

        done, prior, prior_seconds = ck.restore(editor.edited, cfg.adapter) if args.resume else (0, [], 0.0)
        if done:
            _note(f"resuming after {done}/{len(reqs)} edits from {ck.dir}")
        new = []
        if done < len(reqs):
            new = editor.edit(reqs, sequential=True, start=done,
                              callback=ck.callback(editor.edited, cfg.adapter, len(reqs))).outcomes
        return EditResult(prior + new, editor.edited, prior_seconds + time.perf_counter() - t0).summary(), {}
    if args.evaluate != "none":
        from repedit.eval.harness import run_sequential_protocols

        reports = run_sequential_protocols(editor, ds, (args.evaluate,), _protocols(args.protocols),
                                           model_name=model_name, progress=args.progress)
        return {"edits": len(reqs), "success_rate": reports[args.evaluate].metadata.get("edit_success_rate")}, reports
    return editor.edit(reqs, sequential=args.sequential).summary(), {}


def run_edit(args: argparse.Namespace) -> dict[str, Any]:
    """``repedit edit`` as a library call, without printing results: check the options, load
    the data and model, train, save the adapter to ``--out`` (with its provenance) and return
    ``{"out", "requests", "outcome", "reports", "seconds", "interventions"}``."""
    from repedit.editing import Editor
    from repedit.eval.data import to_requests

    out = Path(args.out)
    spec = _edit_spec(args, out)
    cfg = _editor_config(args)
    _check_against_model_size(args, cfg)
    ds, recorded = _load_data(spec)
    reqs = to_requests(ds)
    model, tok, model_name = _load_model(args)
    editor = Editor(model, tok, cfg)
    _note(f"editing {len(reqs)} request(s) with {cfg.method} at layers {editor.default_layers()} "
          f"({'sequential' if args.sequential else 'one batch'})")
    t0 = time.perf_counter()
    ck = _edit_checkpoint(args, cfg, recorded, reqs, editor, out)
    outcome, reports = _train(args, editor, ds, reqs, ck, model_name)
    seconds = time.perf_counter() - t0
    editor_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("progress", "augment_corpus")}
    editor_cfg["layers"] = editor.default_layers()
    metadata = {"data": recorded, "editor": editor_cfg, "sequential": args.sequential, "outcome": outcome,
                "seconds": seconds, "model": model_name, "command": "repedit " + " ".join(sys.argv[1:])}
    editor.edited.save_pretrained(str(out), adapter=cfg.adapter, metadata=metadata)
    if ck is not None:
        ck.clear()
    return {"out": out, "requests": len(reqs), "outcome": outcome, "reports": reports, "seconds": seconds,
            "interventions": len(editor.attachments())}


def cmd_edit(args: argparse.Namespace) -> int:
    run = run_edit(args)
    out = run["out"]
    for sp, rep in run["reports"].items():
        path = rep.save(out / f"metrics_{sp}.json")
        _say(rep.table())
        _say(f"sequential protocol: {sp}; metrics: {path}")
    sr = run["outcome"].get("success_rate")
    _say(f"saved {run['interventions']} intervention(s) to {out} "
         f"({run['requests']} edits, success rate {sr if sr is None else f'{sr:.3f}'}, {run['seconds']:.1f} s)")
    return 0


def _edit_checkpoint(args: argparse.Namespace, cfg: Any, recorded: Any, reqs: list, editor: Any, out: Path) -> Any:
    """The run's checkpoint (``--checkpoint-every`` / ``--resume``), or None (options checked by
    :func:`_check_checkpoint_args`)."""
    if args.checkpoint_every is None and not args.resume:
        return None
    from repedit.adapters import fingerprint
    from repedit.checkpoints import SequentialCheckpoint

    editor_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("progress",)}
    identity = {"editor": editor_cfg, "data": recorded, "cases": [r.case_id for r in reqs],
                "requests": len(reqs), "model": fingerprint(editor.edited.model)}
    ck = SequentialCheckpoint(out, "checkpoint", every=args.checkpoint_every or len(reqs), identity=identity)
    if ck.exists() and not args.resume:
        raise CLIError(f"{ck.dir} holds a checkpoint of an interrupted run; pass --resume to continue it "
                       "(or delete it to start over)")
    if args.resume and not ck.exists():
        raise CLIError(f"--resume: no checkpoint in {ck.dir}")
    return ck


def cmd_eval(args: argparse.Namespace) -> int:
    from repedit.eval import distributed as D
    from repedit.eval.harness import evaluate
    from repedit.hooks import EditableModel

    protocols = _protocols(args.protocols)
    if args.batch_size < 1 or args.chunk_size < 1:
        raise CLIError("--batch-size and --chunk-size must be >= 1")
    if args.fluency_tokens < 0:
        raise CLIError(f"--fluency-tokens must be >= 0, got {args.fluency_tokens}")
    cfg = _read_adapter_cfg(args.adapter) if args.adapter else None
    spec = _data_spec(args, cfg)
    ds, _ = _load_data(spec)
    D.init_from_env()
    try:
        model, tok, model_name = _load_model(args, cfg)
        if args.adapter:
            edited = _load_adapter(model, tok, args.adapter, args.ignore_fingerprint)
        else:
            _note("no --adapter: scoring the base model (pre and post are the same)")
            edited = EditableModel(model, tok)
        seed = ((cfg.metadata or {}).get("editor") or {}).get("seed") if cfg else None
        extra = {"adapter": {"path": str(Path(args.adapter).resolve()), "tensors_sha256": cfg.tensors_sha256}} if cfg else {}
        report = evaluate(edited, tok, ds, protocols, batch_size=args.batch_size, seed=seed, model_name=model_name,
                          chunk_size=args.chunk_size, fluency_tokens=args.fluency_tokens, keep_outputs=args.keep_outputs,
                          progress=args.progress, extra_metadata=extra)
        if D.is_main_process():
            _say(report.table())
            if args.out:
                path = report.save(args.out, records=args.records)
                _say(f"protocols: {', '.join(report.protocols)}; metrics written to {path}")
        D.barrier()
    finally:
        D.cleanup()
    return 0


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


COMMANDS = {"edit": cmd_edit, "eval": cmd_eval, "sweep": cmd_sweep, "inspect": cmd_inspect, "generate": cmd_generate}


def _expected_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [CLIError, ValueError, OSError, KeyError, ImportError]
    try:
        from repedit.models import ChecksumMismatch

        errs.append(ChecksumMismatch)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


#: the library's hints name Python arguments; on the command line they name the flags
_CLI_HINTS = (
    ("pass ignore_fingerprint=True", "pass --ignore-fingerprint"),
    ("pass skip_invalid=True", "pass --skip-invalid"),
    ("pass path=... to the loader", "pass --data PATH"),
    ("pass path=...", "pass --data PATH"),
    ("pass subjects=[...] (one per prompt, None to skip one)", "pass --subject once per prompt"),
)


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, FileNotFoundError) and err.filename:
        text = f"file not found: {err.filename}" if not str(err).strip() else str(err)
    else:
        text = str(err) or type(err).__name__
    for python, flag in _CLI_HINTS:
        text = text.replace(python, flag)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``repedit`` console script; returns the exit status.

    Example::

        from repedit.cli import main
        main(["inspect", "my-edit"])   # 0
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a syntax error (2); argparse printed the message
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(args)
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            print(f"{PROG} {args.command}: error: --threads must be >= 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as err:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {_message(err)}", file=sys.stderr)
        if not isinstance(err, CLIError):
            print("(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # python -m repedit.cli ...
    sys.exit(main())
