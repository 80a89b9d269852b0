"""``repedit edits list|delete|explain|merge``: the individual edits of a saved adapter
(``repedit.cli`` dispatches here; the library calls are in :mod:`repedit.edits`).

Example::

    repedit edits list mine
    repedit edits explain mine --prompt "The Eiffel Tower is located in"
    repedit edits delete mine 3 --out mine-without-3
    repedit edits merge mine theirs both
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from repedit.cli_args import CLIError, _read_adapter_cfg, _say

__all__ = ["cmd_edits"]


def _print_json(value: Any) -> None:
    from repedit.eval.harness import _clean

    print(json.dumps(_clean(value), indent=2))


def _line(e: dict) -> str:
    text = f"{e['prompt']!r} -> {e['target_new']!r}" if e.get("prompt") is not None else "(no recorded request)"
    subject = f" [subject {e['subject']!r}]" if e.get("subject") else ""
    return f"{e['name']} #{e['index']}: {text}{subject}"


def _stats(e: dict) -> str:
    if "bases" in e:
        return f"bases {e['bases'][0]}..{e['bases'][1] - 1}, gate bias {e['gate_bias']:.2f}"
    if "radius" in e:
        return f"radius {e['effective_radius']:.3g}, key norm {e['key_norm']:.3g}"
    return ""


def _loaded(args: argparse.Namespace, directory: str) -> tuple[Any, Any]:
    """(the adapter's config, the model with the adapter attached as ``default``)."""
    from repedit import cli
    from repedit.hooks import EditableModel

    cfg = _read_adapter_cfg(directory)
    model, tok, _ = cli._load_model(args, cfg)  # through cli, so tests can stand in a model
    edited = EditableModel(model, tok, layers_path=cfg.layers_path, compute_dtype=cfg.compute_dtype)
    try:
        edited.load_adapter(directory, adapter="default")
    except BaseException:
        edited.unwrap()
        raise
    return cfg, edited


def _fresh_out(out: str) -> Path:
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CLIError(f"{path} exists and is not empty; give a new directory")
    return path


def cmd_list(args: argparse.Namespace) -> int:
    from repedit.edits import list_adapter_edits

    rows = list_adapter_edits(args.adapter, name=args.name)
    if args.json:
        _print_json(rows)
        return 0
    for e in rows:
        _say(f"{_line(e)}  ({_stats(e)})")
    _say(f"{len(rows)} edit(s)")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from repedit.edits import delete_edit

    out = _fresh_out(args.out) if args.out is not None else Path(args.adapter)
    cfg, edited = _loaded(args, args.adapter)
    try:
        info = delete_edit(edited, args.index, name=args.name)
        metadata = dict(cfg.metadata or {})
        metadata["deleted_edits"] = list(metadata.get("deleted_edits", [])) + [
            {k: info.get(k) for k in ("name", "index", "prompt", "subject", "target_new", "case_id")}]
        edited.save_pretrained(str(out), metadata=metadata)  # atomic: the old adapter or the new one
    finally:
        edited.unwrap()
    if args.json:
        _print_json(info)
    else:
        _say(f"deleted {_line(info)}; wrote {out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from repedit.edits import explain

    if not args.prompt.strip():
        raise CLIError("--prompt must not be empty")
    if args.subject is not None and args.subject not in args.prompt:
        raise CLIError(f"--subject {args.subject!r} does not occur in the prompt {args.prompt!r}")
    _, edited = _loaded(args, args.adapter)
    try:
        rows = explain(edited, args.prompt, subject=args.subject, threshold=args.threshold, name=args.name,
                       all_edits=args.all_edits)
    finally:
        edited.unwrap()
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        _say("no edit fires on this prompt")
    for e in rows:
        score = "-" if e["score"] is None else f"{e['score']:.3f}"
        where = f" at token {e['token']} {e['token_text']!r}" if e.get("token") is not None else ""
        _say(f"{'fires' if e['fired'] else 'quiet'} {score}{where}: {_line(e)}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from repedit import cli
    from repedit.edits import merge_adapters

    out = _fresh_out(args.out)
    cfg = _read_adapter_cfg(args.adapter)
    _read_adapter_cfg(args.other)
    model, tok, _ = cli._load_model(args, cfg)
    merge_adapters(model, args.adapter, args.other, str(out), tokenizer=tok)
    _say(f"merged {args.adapter} and {args.other} into {out}")
    return 0


VERBS = {"list": cmd_list, "delete": cmd_delete, "explain": cmd_explain, "merge": cmd_merge}


def cmd_edits(args: argparse.Namespace) -> int:
    """``repedit edits VERB``: a method without per-edit structure or an index out of range is a
    one-line error."""
    try:
        return VERBS[args.edits_command](args)
    except (NotImplementedError, IndexError) as err:
        raise CLIError(str(err)) from None
