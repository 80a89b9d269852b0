"""The ``repedit`` command line: edit, eval, sweep, inspect, generate, edits.

Examples::

    repedit edit --model smollm2-135m --data counterfact --limit 10 --method loreft --layers 9 --out cf10
    repedit edit --prompt "The Eiffel Tower is in" --target Rome --subject "Eiffel Tower" --out eiffel
    repedit eval --adapter cf10 --out cf10/metrics.json              # the adapter's own requests
    repedit eval --adapter cf10 --data zsre --limit 50 --zsre-target answers --protocols teacher_forced
    repedit sweep --adapter cf10 --knob scale --values 0,0.5,1,1.5 --out sweep.json   # + sweep.png
    repedit inspect cf10
    repedit generate --adapter eiffel --prompt "The Eiffel Tower is in"
    repedit edits list cf10                                           # also delete, explain, merge
    torchrun --nproc_per_node 2 -m repedit.cli eval --adapter cf10 --out m.json   # sharded

Every subcommand has ``--help``. Errors in arguments or files print one line on stderr and
exit with status 1 (2 for argument syntax); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

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
from repedit.cli_args import _device, _load_adapter, _load_model, _protocols, _read_adapter_cfg  # noqa: F401
from repedit.cli_parser import PROG, build_parser
from repedit.cli_edits import cmd_edits
from repedit.cli_tools import cmd_generate, cmd_inspect, cmd_sweep

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


def _relation_templates(path: str) -> Any:
    """A relation table file, or a known-facts file (known_1000.json layout) grouped by relation."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CLIError(f"--relation-templates: cannot read {path}: {err}") from None
    try:
        if isinstance(data, dict):
            from repedit.relations import load_relations

            return load_relations(path)
        from repedit.eval.data import relation_templates

        return relation_templates(path)
    except (OSError, ValueError) as err:
        raise CLIError(f"--relation-templates: {err}") from None


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
    kw["answer_end_stop"] = args.answer_end_stop
    if getattr(args, "mixed_precision", None) is not None:
        kw["mixed_precision"] = args.mixed_precision
    if args.entity_names is not None:
        kw["entity_names"] = args.entity_names
    if args.relation_copies is not None:
        if args.relation_copies < 0:
            raise CLIError(f"--relation-copies must be >= 0, got {args.relation_copies}")
        kw["relation_copies"] = args.relation_copies
    if args.relation_templates:
        kw["relation_templates"] = _relation_templates(args.relation_templates)
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


COMMANDS = {"edit": cmd_edit, "eval": cmd_eval, "sweep": cmd_sweep, "inspect": cmd_inspect, "generate": cmd_generate,
            "edits": cmd_edits}


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


def console_main() -> NoReturn:
    """Run :func:`main` on ``sys.argv`` and exit with its status: the ``repedit`` console script.

    A rank started by a multi-process launcher leaves with ``os._exit`` once its streams and
    log handlers are flushed. By then its results are written and its process group is
    destroyed, and torch's gloo teardown during interpreter finalization now and then aborts
    (SIGABRT, "terminate called without an active exception"), which the launcher would
    report as a failed run.

    Example::

        python -m repedit.cli inspect my-edit
    """
    from repedit.eval.distributed import launched

    code = main()
    if launched():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # python -m repedit.cli ...
    console_main()
