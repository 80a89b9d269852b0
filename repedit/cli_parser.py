"""The argument parser of the ``repedit`` command, one function per subcommand."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

__all__ = ["build_parser", "PROG", "DATA_NAMES", "DATA_FORMATS"]

PROG = "repedit"
DATA_NAMES = ("counterfact", "zsre")
DATA_FORMATS = ("auto", "counterfact", "zsre", "requests")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _model_args(p: argparse.ArgumentParser, adapter: str | None = None) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help=(
        "model alias (smollm2-135m, gemma3-270m), Hugging Face id or local path "
        "(default: the adapter's base model if it is an alias or an existing path, else smollm2-135m)"))
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="model dtype (default float32)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    if adapter == "optional":
        g.add_argument("--adapter", default=None, help="adapter directory (made by `repedit edit`); without it the base model is scored")
    elif adapter == "required":
        g.add_argument("--adapter", required=True, help="adapter directory (made by `repedit edit`)")
    elif adapter == "multi":
        g.add_argument("--adapter", action="append", required=True,
                       help="adapter directory; repeat for one curve per adapter (method)")
    if adapter is not None:
        g.add_argument("--ignore-fingerprint", action="store_true",
                       help="load an adapter even if it was made for another base model (warns)")


def _data_args(p: argparse.ArgumentParser, default_note: str = "") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help=(
        "counterfact, zsre (from the data directory, $REPEDIT_DATA) or a path to a CounterFact/zsRE file "
        "or your own JSON/JSONL requests" + default_note))
    g.add_argument("--format", dest="data_format", choices=DATA_FORMATS, default="auto",
                   help="layout of a --data PATH file (default: detected)")
    g.add_argument("--limit", type=int, default=None, help="use N records")
    g.add_argument("--offset", type=int, default=None, help="skip the first K records (default 0)")
    g.add_argument("--data-seed", type=int, default=None,
                   help="take the slice from a seeded permutation instead of file order")
    g.add_argument("--zsre-target", choices=("alt", "answers"), default=None,
                   help="zsRE edit target: alt (EasyEdit, default) or answers (ROME/MEMIT)")
    g.add_argument("--skip-invalid", action="store_true", default=None,
                   help="drop invalid records with a warning instead of stopping at the first")


def _eval_args(p: argparse.ArgumentParser, default_protocols: str) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--protocols", default=default_protocols,
                   help=f"comma list of teacher_forced, probability, generation (default {default_protocols})")
    g.add_argument("--batch-size", type=int, default=16, help="prompts per forward (default 16)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``repedit`` command (subcommands edit, eval, sweep, inspect,
    generate, edits)."""
    from repedit.version import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Edit what a language model knows through representation interventions (forward hooks, "
                    "no weight changes), evaluate edits, sweep knobs, inspect adapters.",
        epilog="Run `repedit <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"repedit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    _add_edit_parser(sub)
    _add_eval_parser(sub)
    _add_sweep_parser(sub)
    _add_inspect_parser(sub)
    _add_generate_parser(sub)
    _add_edits_parser(sub)
    return parser


def _add_edit_parser(sub: Any) -> None:
    """``repedit edit``: train edits and save an adapter directory."""
    p = sub.add_parser("edit", help="train edits for requests and save them as an adapter directory",
                       description="Train representation edits for edit requests and save an adapter directory.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=textwrap.dedent("""\
                           examples:
                             repedit edit --data counterfact --limit 10 --method loreft --layers 9 --out cf10
                             repedit edit --data my_edits.jsonl --method baft --sequential --out mine
                             repedit edit --prompt "The Eiffel Tower is in" --target Rome --subject "Eiffel Tower" --out eiffel
                           """))
    _model_args(p)
    _data_args(p)
    p.add_argument("--requests", dest="requests_file", default=None, help="alias of --data PATH")
    g = p.add_argument_group("a single request instead of --data")
    g.add_argument("--prompt", default=None, help="prompt of one edit request")
    g.add_argument("--target", default=None, help="new target of that request")
    g.add_argument("--subject", default=None, help="subject (must occur in the prompt)")
    g.add_argument("--ground-truth", default=None, help="the old answer (optional)")
    g = p.add_argument_group("method")
    g.add_argument("--method", default="baft", help="registered method (see `repedit inspect --methods`; default baft)")
    g.add_argument("--method-config", default=None,
                   help="method options as a JSON object, or @file.json (e.g. '{\"rank\": 8}')")
    g.add_argument("--layers", default=None, help="comma list of decoder layers (default: the method's choice)")
    g.add_argument("--component", default="block_output", help="block_output, mlp_output or attention_output")
    g.add_argument("--positions", default=None, help="last_prompt, subject, prompt or all (default: the method's: "
                   "prompt for baft, whose gates pick the subject token; last_prompt otherwise)")
    g = p.add_argument_group("training")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the method's: 2e-2 for baft "
                   "and loreft, 0.1 for codebook)")
    g.add_argument("--max-steps", type=int, default=None, help="most steps per edit (default: the method's: 60 for baft "
                   "and loreft, 50 for codebook)")
    g.add_argument("--stop-prob", type=float, default=None, help="early-stop target probability (default: the method's, 0.9)")
    g.add_argument("--corpus", default=None, help="general text for negatives, prefixes and names: a text file, or "
                   "'model' for text the model generates (default: the WikiText-2 test split shipped with repedit)")
    g.add_argument("--entity-names", default=None, metavar="FILE", help="names of other entities (one per line) for "
                   "subject negatives (default: names found in the corpus)")
    g.add_argument("--answer-end", choices=(".", "none"), default=None, help="train the target followed by a full stop "
                   "('.'; greedy answers then say the target and stop) or alone ('none') (default: the method's: '.' for "
                   "baft and codebook, none for loreft)")
    g.add_argument("--answer-end-stop", choices=("probability", "argmax"), default="probability", help="how the stop "
                   "rule reads the answer end: its probability counts ('probability', the default) or it need only be "
                   "the argmax ('argmax': about a third fewer steps, a little less generality)")
    g.add_argument("--relation-templates", default=None, metavar="FILE", help="other phrasings of each relation: a "
                   "relation table (repedit-relations/1 JSON) or a known-facts file (ROME's known_1000.json layout: "
                   "template, relation_id) (default: the table shipped with repedit)")
    g.add_argument("--relation-copies", type=int, default=None, metavar="K", help="train each request's subject in K "
                   "other templates of its relation as well (0: off; default: the method's)")
    g.add_argument("--sequential", action="store_true", help="edit the requests one after another (else as one batch)")
    g.add_argument("--batch-size", type=int, default=1, help="requests per sequential step (default 1)")
    g.add_argument("--augment", type=int, default=None,
                   help="extra training copies per request with random prefixes (default: the method's: 2 for baft, else 0)")
    g.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    g.add_argument("--mixed-precision", choices=("bf16", "fp16"), default=None, help="run the training steps under "
                   "autocast in this precision, with half-precision copies of the frozen weights (a BaFT step takes "
                   "about 0.4x the time on a CPU with AVX512-BF16; verification and inference stay in the model's dtype)")
    g.add_argument("--no-verify", action="store_true", help=(
        "report the training-time verdict of each edit instead of re-checking it as it runs at inference"))
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="adapter directory to write")
    g.add_argument("--overwrite", action="store_true", help="replace an existing adapter in --out")
    g.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help=(
        "with --sequential: save the adapter and progress to <out>/checkpoint every N edits (removed once the "
        "final adapter is saved)"))
    g.add_argument("--resume", action="store_true", help=(
        "continue an interrupted --sequential run from <out>/checkpoint (same data, model and options); "
        "the result equals an uninterrupted run"))
    g.add_argument("--evaluate", choices=("none", "immediate", "final"), default="none", help=(
        "with --sequential: also score the edits, right after each edit (immediate) or after the last (final); "
        "metrics go to <out>/metrics_<protocol>.json"))
    g.add_argument("--protocols", default="teacher_forced", help="protocols for --evaluate (default teacher_forced)")
    _common(p)


def _add_eval_parser(sub: Any) -> None:
    """``repedit eval``: score an adapter's edits, pre vs post."""
    p = sub.add_parser("eval", help="score an adapter's edits (pre vs post) and write metrics JSON",
                       description="Score edits before (edits disabled) and after (edits on) with labelled protocols; "
                                   "prints a table and writes EasyEdit-style records. Shards over processes under "
                                   "torchrun / accelerate launch.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=textwrap.dedent("""\
                           examples:
                             repedit eval --adapter cf10 --out cf10/metrics.json
                             repedit eval --adapter cf10 --data counterfact --offset 10 --limit 100 --protocols teacher_forced
                             torchrun --nproc_per_node 2 -m repedit.cli eval --adapter cf10 --out m.json
                           """))
    _model_args(p, adapter="optional")
    _data_args(p, " (default: the requests the adapter was trained on)")
    _eval_args(p, "teacher_forced,probability,generation")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="metrics JSON file to write (default: print only)")
    g.add_argument("--no-records", dest="records", action="store_false", help="write the summary only")
    g.add_argument("--keep-outputs", action="store_true", help="keep argmax token lists in the records")
    g.add_argument("--chunk-size", type=int, default=64, help="requests per work unit (default 64)")
    g.add_argument("--fluency-tokens", type=int, default=0, help="> 0: also n-gram entropy of that many generated tokens")
    _common(p)


def _add_sweep_parser(sub: Any) -> None:
    """``repedit sweep``: sweep a knob of trained edits."""
    p = sub.add_parser("sweep", help="sweep a knob of trained edits; JSON + generality/locality PNG",
                       description="Evaluate trained edits at several values of a knob (no retraining): generality, "
                                   "locality and scope AUC per value, one curve per adapter, and a Pareto plot.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=textwrap.dedent("""\
                           knobs: 'scale' (every method: h + s*(edit(h) - h)), codebook 'radius_scale',
                           baft 'temperature', or any knob a method exposes through knobs()/set_knob().

                           examples:
                             repedit sweep --adapter lo --adapter cb --knob scale --knob radius_scale \\
                                 --values 0,0.5,1,1.5,2 --out sweep.json --plot sweep.png
                           """))
    _model_args(p, adapter="multi")
    _data_args(p, " (default: the first adapter's requests)")
    _eval_args(p, "teacher_forced")
    g = p.add_argument_group("sweep")
    g.add_argument("--knob", action="append", default=None,
                   help="knob name; give one for all adapters or one per adapter (default scale)")
    g.add_argument("--values", default="0,0.25,0.5,0.75,1,1.25,1.5,2", help="comma list of knob values")
    g.add_argument("--label", action="append", default=None, help="curve label per adapter (default: its methods)")
    g.add_argument("--no-scope", dest="scope", action="store_false", help="skip the scope AUC")
    g.add_argument("--out", required=True, help="sweep JSON file to write")
    g.add_argument("--plot", default=None, help="PNG to write (default: --out with .png)")
    _common(p)


def _add_inspect_parser(sub: Any) -> None:
    """``repedit inspect``: summarise an adapter directory."""
    p = sub.add_parser("inspect", help="summarise an adapter directory (no model needed)",
                       description="Summarise an adapter: interventions (method, layer, positions), sizes, entries, "
                                   "base model, provenance. Reads files only; loads no model.")
    p.add_argument("adapter", nargs="?", default=None, help="adapter directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--entries", type=int, default=10, help="list at most N entries per codebook (default 10)")
    p.add_argument("--methods", action="store_true", help="list the registered methods and their options")
    _common(p)


def _add_generate_parser(sub: Any) -> None:
    """``repedit generate``: generate with and without an adapter."""
    p = sub.add_parser("generate", help="generate with and without an adapter, side by side",
                       description="Greedy generation from prompts without the adapter (left) and with it (right).")
    _model_args(p, adapter="required")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    p.add_argument("--subject", action="append", default=None,
                   help="the subject of each prompt, in order (for subject-position edits)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON instead of columns")
    _common(p)


def _add_edits_parser(sub: Any) -> None:
    """``repedit edits list|delete|explain|merge``: manage the individual edits of an adapter."""
    p = sub.add_parser("edits", help="list, delete, explain or merge the individual edits of an adapter (baft, codebook)",
                       description="Manage the individual edits of a saved adapter whose method keeps per-edit "
                                   "structure (baft, codebook).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=textwrap.dedent("""\
                           examples:
                             repedit edits list mine
                             repedit edits explain mine --prompt "The Eiffel Tower is located in"
                             repedit edits delete mine 3 --out mine-without-3
                             repedit edits merge mine theirs both
                           """))
    verbs = p.add_subparsers(dest="edits_command", metavar="verb", required=True)
    v = verbs.add_parser("list", help="one line per edit (reads the adapter's files; no model)")
    v.add_argument("adapter", help="adapter directory")
    v.add_argument("--name", default=None, help="only this intervention's edits")
    v.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(v)
    v = verbs.add_parser("delete", help="delete one edit and write the adapter (in place, atomically, or to --out)")
    v.add_argument("adapter", help="adapter directory")
    v.add_argument("index", type=int, help="the edit's index (see `repedit edits list`)")
    v.add_argument("--name", default=None, help="the intervention (needed when several hold edits)")
    v.add_argument("--out", default=None, help="write the result to this new directory (default: rewrite the adapter)")
    v.add_argument("--json", action="store_true", help="print the deleted edit as JSON")
    _model_args(v)
    _common(v)
    v = verbs.add_parser("explain", help="which edits fire on a prompt, how strongly, on which token")
    v.add_argument("adapter", help="adapter directory")
    v.add_argument("--prompt", required=True, help="the prompt to explain")
    v.add_argument("--subject", default=None, help="the prompt's subject (for subject-position edits)")
    v.add_argument("--name", default=None, help="only this intervention")
    v.add_argument("--threshold", type=float, default=0.5, help="BaFT: smallest gate weight that counts as firing (default 0.5)")
    v.add_argument("--all", dest="all_edits", action="store_true", help="list every edit, firing or not")
    v.add_argument("--json", action="store_true", help="print JSON instead of text")
    _model_args(v)
    _common(v)
    v = verbs.add_parser("merge", help="merge two adapters of the same base model into a new one")
    v.add_argument("adapter", help="first adapter directory (its edits come first)")
    v.add_argument("other", help="second adapter directory")
    v.add_argument("out", help="new adapter directory to write")
    _model_args(v)
    _common(v)
