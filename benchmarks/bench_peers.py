"""Run EasyEdit's methods (GRACE, ROME, MEMIT, AlphaEdit) on bench_baft's records and score them
with repedit's scorer, so the peers' rows are measured exactly like repedit's.

EasyEdit (zjunlp/EasyEdit, pinned commit ``14cea82``) is never a dependency of repedit: it runs
in a separate virtual environment made by ``benchmarks/peers/setup_easyedit.sh``::

    bash benchmarks/peers/setup_easyedit.sh            # .venv-peers + EasyEdit in .peers/EasyEdit
    .venv-peers/bin/python benchmarks/bench_peers.py --methods grace,rome,memit,alphaedit \\
        --single 20 --name peers_single20 --checkpoint-dir .peers/ckpt      # ~45 min on one CPU thread
    .venv-peers/bin/python benchmarks/bench_peers.py --methods grace,memit,alphaedit,rome --single 0 \\
        --sequential 10 --name peers_seq10
    .venv-peers/bin/python benchmarks/bench_peers.py --methods grace,rome,memit,alphaedit \\
        --repedit-methods baft,balancedit --single 20 --name peers_samerun_single20 --checkpoint-dir CKPT
        # repedit's methods in the same process, single edits interleaved record by record: one-run s/edit ratios

The first MEMIT/AlphaEdit run computes the layer statistics (about 8 minutes on one CPU thread);
without ``--easyedit`` the tree is looked for in ``.peers/EasyEdit``.

What it does, per method:

* loads the model the way EasyEdit does (``BaseEditor`` from a path: the HF folder repedit
  caches for ``smollm2-135m``, through a symlink whose name contains ``llama``, which EasyEdit's
  loader and AlphaEdit look for) and checks its logits equal repedit's model's;
* reads ``benchmarks/peers/hparams/<method>.yaml`` (EasyEdit's llama settings, layers ×30/32);
* computes the layer statistics MEMIT and AlphaEdit need with EasyEdit's own ``layer_stats`` on
  WikiText-2 from ``$REPEDIT_DATA`` instead of the hub's Wikipedia (cached in ``--stats-dir``;
  this preparation is timed apart from the edits), and AlphaEdit's null-space projector P;
* ``single``: each record edited alone on the unedited model (EasyEdit's ``_prepare_requests``
  on :func:`easyedit_arguments`, then the method's ``apply_*_to_model`` as
  ``BaseEditor.edit_requests`` calls it, with EasyEdit's own evaluation off), scored by
  :func:`repedit.eval.metrics.evaluate_requests`, then restored with EasyEdit's
  ``restore_after_edit``; the restore is checked on fixed prompts' logits;
* ``sequential``: all edits applied to one model, then every record scored.

The table has bench_baft's columns (``flat`` of ``summarize(build_case_records(...))``) and
s/edit (the edit call only). EasyEdit patches: none to its files; absent optional packages are
stubbed at import (``benchmarks/peers/easyedit_shim.py``); the run-time substitutions and the
hyper-parameter changes are listed in ``benchmarks/peers/PATCHES.md`` and in the results'
``patches``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import environment, select_requests, set_threads, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
EASYEDIT_COMMIT = "14cea82"
PROTOCOLS = ["teacher_forced", "probability", "generation"]
#: method name on the command line -> (EasyEdit hparams class, module, apply function)
METHODS = {
    "grace": ("GraceHyperParams", "easyeditor.models.grace", "apply_grace_to_model"),
    "rome": ("ROMEHyperParams", "easyeditor.models.rome", "apply_rome_to_model"),
    "memit": ("MEMITHyperParams", "easyeditor.models.memit", "apply_memit_to_model"),
    "alphaedit": ("AlphaEditHyperParams", "easyeditor.models.alphaedit", "apply_AlphaEdit_to_model"),
}
COLUMNS = ["method", "setting", "rewrite_acc", "rephrase_acc", "locality", "subject_loc", "gen_rephrase_prefix",
           "gen_rephrase", "gen_rewrite", "gen_loc_agree", "gen_subject_agree", "efficacy", "paraphrase",
           "neighborhood", "s_per_edit"]
#: prompts whose logits must match the unedited model's after every restore
CHECK_PROMPTS = ["The Eiffel Tower is located in the city of", "Michel Rocard is a native speaker of"]
logger = logging.getLogger(__name__)


def easyedit_arguments(req) -> dict[str, Any]:
    """The keyword arguments of EasyEdit's ``BaseEditor.edit`` for one repedit ``EditRequest``.

    Lists of length one (one edit per call); the first rephrase and the neighbourhood prompts go
    to EasyEdit's ``rephrase_prompts`` / ``locality_inputs["neighborhood"]`` (only EasyEdit's own
    evaluation reads them; repedit's scorer reads the request itself). Example::

        >>> from repedit import EditRequest
        >>> r = EditRequest("The capital of France is", "Rome", subject="France", ground_truth="Paris",
        ...                 rephrase_prompts=["France's capital is"])
        >>> easyedit_arguments(r)["subject"], easyedit_arguments(r)["target_new"]
        (['France'], ['Rome'])
    """
    if not req.subject or req.subject not in req.prompt:
        raise ValueError(f"EasyEdit's ROME/MEMIT/AlphaEdit need the subject inside the prompt: {req.prompt!r}")
    args: dict[str, Any] = {
        "prompts": [req.prompt],
        "target_new": [req.target_new],
        "ground_truth": [req.ground_truth],  # None when unknown, as EasyEdit's normalize_ground_truths
        "subject": [req.subject],
    }
    if req.rephrase_prompts:
        args["rephrase_prompts"] = [req.rephrase_prompts[0]]
    if req.locality_prompts:
        loc = req.locality_prompts[0]
        args["locality_inputs"] = {"neighborhood": {"prompt": [loc.prompt], "ground_truth": [loc.ground_truth]}}
    return args


def scaled_layer(layer: int, layers_to: int = 30, layers_from: int = 32) -> int:
    """A layer index of a ``layers_from``-layer model mapped to a ``layers_to``-layer one.

    Example::

        >>> scaled_layer(27), scaled_layer(5), [scaled_layer(x) for x in (4, 5, 6, 7, 8)]
        (25, 5, [4, 5, 6, 7, 8])
    """
    return int(round(layer * layers_to / layers_from))


def wikitext_texts(path: Path, limit: int | None = None) -> list[str]:
    """Paragraphs of WikiText-2's raw test split (no headings, no blank lines), in file order.

    Example::

        texts = wikitext_texts(Path(os.environ["REPEDIT_DATA"]) / "wikitext2" / "wiki.test.raw", 500)
    """
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("="):
            out.append(line)
    return out[:limit] if limit else out


# ---------------------------------------------------------------------------------- EasyEdit


def easyedit_commit(path: Path) -> str | None:
    """The commit of an EasyEdit tree: ``COMMIT`` written by setup_easyedit.sh, or git."""
    marker = path / "COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    if not (path / ".git").exists():
        return None
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def import_easyedit(path: Path):
    """``import easyeditor`` from an EasyEdit source tree, with absent optional packages stubbed."""
    if not (path / "easyeditor" / "__init__.py").is_file():
        raise SystemExit(
            f"no EasyEdit source at {path}. Get commit {EASYEDIT_COMMIT} of https://github.com/zjunlp/EasyEdit "
            f"(git clone ... && git checkout {EASYEDIT_COMMIT}, or `git archive {EASYEDIT_COMMIT} easyeditor hparams "
            "| tar -x -C DIR` from a mirror) and pass --easyedit DIR; benchmarks/peers/setup_easyedit.sh does it.")
    from benchmarks.peers import easyedit_shim

    easyedit_shim.install()
    sys.path.insert(0, str(path))
    logging.disable(logging.INFO)  # easyeditor configures root logging at INFO on import
    import easyeditor  # noqa: F401
    logging.disable(logging.NOTSET)
    logging.getLogger().setLevel(logging.WARNING)
    return easyedit_shim.stubbed()


def patch_layer_stats(texts: list[str]) -> list[str]:
    """Runtime substitutions in EasyEdit's ``layer_stats`` (its files stay untouched):

    * ``load_dataset`` returns ``texts`` (local WikiText-2) for any dataset name, since the hub's
      Wikipedia cannot be downloaded;
    * ``tally`` runs its DataLoader in this process (``num_workers=0``, ``pin_memory=False``)
      instead of 2 worker processes on a CPU machine.

    Returns the descriptions recorded in the results.
    """
    from easyeditor.models.rome import layer_stats as ls

    ls.load_dataset = lambda *a, **k: {"train": [{"text": t} for t in texts]}
    tally = ls.tally

    def tally_in_process(*args, **kwargs):
        kwargs.update(num_workers=0, pin_memory=False)
        return tally(*args, **kwargs)

    ls.tally = tally_in_process
    return [f"layer_stats.load_dataset -> {len(texts)} WikiText-2 test paragraphs from $REPEDIT_DATA",
            "layer_stats.tally: num_workers=0, pin_memory=False"]


def model_link(model_dir: Path, links: Path) -> Path:
    """A symlink to ``model_dir`` whose name contains ``llama``: EasyEdit picks its loader (and
    AlphaEdit its projector shape) from ``'llama' in model_name.lower()``."""
    links.mkdir(parents=True, exist_ok=True)
    link = links / f"{model_dir.name}-llama"
    if not link.exists():
        link.symlink_to(model_dir.resolve(), target_is_directory=True)
    return link


def load_hparams(method: str, hparams_dir: Path, model_path: Path, stats_dir: Path):
    """EasyEdit's hyper-parameter object for ``method`` from ``hparams_dir/<method>.yaml``, with
    the paths of this machine filled in."""
    import easyeditor

    cls = getattr(easyeditor, METHODS[method][0])
    hp = cls.from_hparams(str(hparams_dir / f"{method}.yaml"))
    hp.model_name = str(model_path)
    if hasattr(hp, "stats_dir"):
        hp.stats_dir = str(stats_dir)
    if hasattr(hp, "P_loc"):
        n = getattr(hp, "mom2_n_samples", 0)
        hp.P_loc = str(stats_dir / f"null_space_project_{model_path.name}_{n}_{hp.nullspace_threshold:g}_"
                       f"{'-'.join(map(str, hp.layers))}.pt")
    return hp


def _module(name: str):
    """An EasyEdit module by its dotted name. (``import easyeditor.models.x as m`` resolves
    ``easyeditor.models`` as an attribute, which ``from .trainer import *`` in
    ``easyeditor/__init__.py`` replaces with ``easyeditor.trainer.models``.)"""
    import importlib

    return importlib.import_module(name)


def prepare(method: str, editor, hp) -> dict[str, Any]:
    """Compute (or load) what the method caches before its first edit: MEMIT's and AlphaEdit's
    covariances of the rewritten modules' inputs, and AlphaEdit's projector P (saved at
    ``hp.P_loc``). Timed apart from the edits."""
    info: dict[str, Any] = {}
    t = time.perf_counter()
    if method in ("memit", "alphaedit") and getattr(hp, "mom2_adjustment", False):
        from easyeditor.models.memit.memit_main import get_cov

        for layer in hp.layers:
            get_cov(editor.model, editor.tok, hp.rewrite_module_tmp.format(layer), hp.mom2_dataset,
                    hp.mom2_n_samples, hp.mom2_dtype, hparams=hp)
    if method == "alphaedit":
        am = _module("easyeditor.models.alphaedit.AlphaEdit_main")
        if not Path(hp.P_loc).exists():
            projectors = [am.get_project(editor.model, editor.tok, layer, hp) for layer in hp.layers]
            P = torch.stack(projectors)
            Path(hp.P_loc).parent.mkdir(parents=True, exist_ok=True)
            torch.save(P, hp.P_loc)
        P = torch.load(hp.P_loc)
        info["nullspace_dims"] = [int(round(float(torch.trace(p)))) for p in P]
    info["prepare_s"] = round(time.perf_counter() - t, 1)
    return info


def new_editor(hp):
    """EasyEdit's ``BaseEditor`` for ``hp`` (it loads the model from ``hp.model_name``; its log
    file goes to ``.peers/logs/run.log``)."""
    from easyeditor import BaseEditor

    work = ROOT / ".peers"
    work.mkdir(exist_ok=True)
    with contextlib.chdir(work):  # EasyEdit writes ./logs/run.log
        editor = BaseEditor.from_hparams(hp)
    editor.model.eval()
    return editor


def apply_edits(editor, reqs) -> tuple[Any, Any]:
    """Edit ``reqs`` one after another on ``editor.model`` exactly as ``BaseEditor.edit_requests``
    does for each request (``edit_func``), without EasyEdit's evaluation. Returns the edited
    model object EasyEdit returns and the ``weights_copy`` of the *first* edit (the original
    weights, or GRACE's layer reset)."""
    from easyeditor.editors.utils import _prepare_requests

    first = None
    edited = None
    for req in reqs:
        args = easyedit_arguments(req)
        kw = {"subject": args.pop("subject")}
        request = _prepare_requests(args["prompts"], args["target_new"], args["ground_truth"], None,
                                    args.get("rephrase_prompts"), args.get("locality_inputs"), None, **kw)[0]
        edited, weights_copy = editor.apply_algo(editor.model, editor.tok, [request], editor.hparams, copy=False,
                                                 return_orig_weights=True, keep_original_weight=False, train_ds=None)
        if first is None:
            first = weights_copy
    return edited, first


def reset_method_state(method: str) -> None:
    """Forget state EasyEdit keeps in module globals between calls (AlphaEdit's ``cache_c`` of
    earlier edits' keys), so a single edit sees the unedited model only."""
    if method == "alphaedit":
        _module("easyeditor.models.alphaedit.AlphaEdit_main").cache_c_new = False


def restore(editor, edited, weights_copy) -> None:
    """EasyEdit's own ``restore_after_edit`` (weights copied back; GRACE's layer reset)."""
    from easyeditor.editors.utils import restore_after_edit

    restore_after_edit(editor, edited, weights_copy)


@contextlib.contextmanager
def easyedit_generation(model):
    """Generation as EasyEdit's ``GRACE.generate`` does it, while repedit's scorer generates.

    A GRACE adapter replaces the layer output at one token index, ``key_id``, fixed at edit time
    to the edit prompt's last token. ``GRACE.generate`` sets ``key_id = -1`` first (the last
    position of the batch: with the scorer's left padding, each prompt's last token). Here
    ``model.generate`` does the same, and puts the edit's ``key_id`` back afterwards so
    teacher-forced scoring keeps EasyEdit's behaviour. No-op for models without GRACE adapters.
    Example::

        with easyedit_generation(editor.model):
            post = evaluate_requests(editor.model, tok, reqs, protocols=PROTOCOLS, pre=pre)
    """
    adapters = [m for m in model.modules() if type(m).__name__ == "GRACEAdapter"]
    if not adapters:
        yield
        return
    original = model.generate

    def generate(*args, **kwargs):
        saved = [a.key_id for a in adapters]
        for a in adapters:
            a.key_id = -1
        try:
            return original(*args, **kwargs)
        finally:
            for a, key_id in zip(adapters, saved):
                a.key_id = key_id

    model.generate = generate
    try:
        yield
    finally:
        del model.generate


def fixed_logits(model, tok) -> torch.Tensor:
    """Last-position logits of :data:`CHECK_PROMPTS` (one at a time: no padding)."""
    out = []
    with torch.no_grad():
        for p in CHECK_PROMPTS:
            ids = tok(p, return_tensors="pt")
            out.append(model(**ids).logits[0, -1].float())
    return torch.stack(out)


# ---------------------------------------------------------------------------------- runs


def peer_single_edit(method, editor, tok, req, pre_i, base_logits) -> dict[str, Any]:
    """One request edited alone by an EasyEdit method, scored with repedit's scorer, restored
    (checked on fixed prompts' logits): ``{"post", "seconds", "restore_max_abs_diff"}``."""
    from repedit.eval.metrics import evaluate_requests

    reset_method_state(method)
    t = time.perf_counter()
    edited, weights_copy = apply_edits(editor, [req])
    took = time.perf_counter() - t
    with easyedit_generation(editor.model):
        post = evaluate_requests(editor.model, tok, [req], protocols=PROTOCOLS, pre=[pre_i])[0]
    restore(editor, edited, weights_copy)
    return {"post": post, "seconds": took, "restore_max_abs_diff": restored_diff(method, editor.model, tok, base_logits, req)}


def restored_diff(who: str, model, tok, base_logits, req) -> float:
    """Max |Δlogit| of :data:`CHECK_PROMPTS` against the unedited model after an edit was undone;
    raises when the model is not restored."""
    diff = float((fixed_logits(model, tok) - base_logits).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"{who}: the model is not restored after editing case {req.case_id} (max |Δlogit| {diff:.3g})")
    return diff


def repedit_single_edit(editor, model, tok, req, pre_i, base_logits) -> dict[str, Any]:
    """One request edited alone by a repedit :class:`~repedit.Editor`, scored, and the edit
    removed (checked like the peers'): ``{"post", "seconds", "restore_max_abs_diff", "steps"}``."""
    from repedit.eval.metrics import evaluate_requests

    editor.reset()
    t = time.perf_counter()
    outcome = editor.edit(req).outcomes[0]
    took = time.perf_counter() - t
    post = evaluate_requests(model, tok, [req], protocols=PROTOCOLS, pre=[pre_i])[0]
    editor.reset()
    return {"post": post, "seconds": took, "restore_max_abs_diff": restored_diff("repedit", model, tok, base_logits, req),
            "steps": outcome.steps}


def interleaved_single(runners: dict[str, Any], cases: list, log, checkpoint_dir=None, idents=None) -> dict[str, list[dict]]:
    """Record by record, every method in turn (``runners[m](i)`` edits, scores and restores
    record ``i``, whose case id is ``cases[i]``), so all methods' edits run under the same load
    and their s/edit compare within one run. With ``checkpoint_dir`` each record's result is kept
    (``idents[m]`` keys it), and a rerun resumes; a kept record is marked ``fresh: False`` (timed
    by an earlier run).
    Returns ``{method: [record result, ...]}``."""
    from benchmarks.checkpoints import cached

    out: dict[str, list[dict]] = {m: [] for m in runners}
    keys = {m: hashlib.sha256(json.dumps(idents[m], sort_keys=True, default=str).encode()).hexdigest()[:16]
            for m in runners} if checkpoint_dir else {}
    n = len(cases)
    for i in range(n):
        for m, run in runners.items():
            made = []
            compute = lambda: made.append(1) or run(i)  # noqa: E731
            if checkpoint_dir:
                rec = cached(checkpoint_dir, f"peers_single_{m}_{keys[m]}/{i:05d}", dict(idents[m], case=cases[i]), compute)
            else:
                rec = compute()
            out[m].append(dict(rec, fresh=bool(made)))
        log(f"  record {i + 1}/{n}: " + ", ".join(f"{m} {out[m][-1]['seconds']:.1f} s" for m in runners))
    return out


def speed_ratios(recs: dict[str, list[dict]], peers: list[str], mine: list[str]) -> list[dict[str, Any]]:
    """Each peer's s/edit over each repedit method's, on the records both timed in this run.

    Example::

        speed_ratios({"rome": [{"seconds": 60, "fresh": True}], "repedit baft": [{"seconds": 3, "fresh": True}]},
                     ["rome"], ["repedit baft"])[0]["ratio"]  # 20.0
    """
    rows = []
    for p in peers:
        for m in mine:
            both = [(a["seconds"], b["seconds"]) for a, b in zip(recs[p], recs[m]) if a["fresh"] and b["fresh"]]
            if not both:
                continue
            ps, ms = sum(a for a, _ in both) / len(both), sum(b for _, b in both) / len(both)
            rows.append({"peer": p, "repedit": m, "records": len(both), "peer_s_per_edit": ps,
                         "repedit_s_per_edit": ms, "ratio": ps / ms})
    return rows


def run_sequential(method, editor, tok, reqs, pre, base_logits, log):
    """All requests applied in order, then all scored; the model is restored afterwards."""
    from repedit.eval.metrics import evaluate_requests

    reset_method_state(method)
    t = time.perf_counter()
    edited, first = None, None
    for i, req in enumerate(reqs):
        edited, wc = apply_edits(editor, [req])
        first = wc if first is None else first
        if (i + 1) % 5 == 0:
            log(f"  {method} sequential {i + 1}/{len(reqs)} ({(time.perf_counter() - t) / (i + 1):.1f} s/edit)")
    seconds = time.perf_counter() - t
    with easyedit_generation(editor.model):
        posts = evaluate_requests(editor.model, tok, reqs, protocols=PROTOCOLS, pre=pre)
    restore(editor, edited, first)
    worst = float((fixed_logits(editor.model, tok) - base_logits).abs().max())
    return posts, seconds, worst


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--easyedit", default=str(ROOT / ".peers" / "EasyEdit"),
                   help=f"EasyEdit source tree at commit {EASYEDIT_COMMIT} (benchmarks/peers/setup_easyedit.sh)")
    p.add_argument("--methods", default="grace,rome,memit,alphaedit", help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--single", type=int, default=10)
    p.add_argument("--sequential", type=int, default=0)
    p.add_argument("--name", default=None, help="results name (default peers_single<N>[_seq<M>])")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--hparams-dir", default=str(PEERS / "hparams"))
    p.add_argument("--stats-dir", default=str(ROOT / ".peers" / "stats"),
                   help="EasyEdit's layer statistics and AlphaEdit's P are cached here")
    p.add_argument("--checkpoint-dir", default=None, help="keep each single edit's scores here (resumable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--subject-locality", type=int, default=3, help="as bench_baft's (0: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repedit-methods", default="",
                   help="bench_baft.py methods (e.g. baft,balancedit) run in the same process on the same records: "
                   "single edits interleaved record by record with the peers', so s/edit compares within one run")
    p.add_argument("--repedit-args", default="--mixed-precision bf16",
                   help="bench_baft.py options the repedit methods' configs are built from (default: the matrix's cost)")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r} (one of {', '.join(METHODS)})")
    from benchmarks import bench_baft

    mine = [m.strip() for m in args.repedit_methods.split(",") if m.strip()]
    for m in mine:
        if m not in bench_baft.METHODS:
            p.error(f"unknown repedit method {m!r} (one of {', '.join(bench_baft.METHODS)})")
    baft_args = bench_baft.build_parser().parse_args(["--methods", ",".join(mine or ["baft"]), *args.repedit_args.split()])
    repedit_configs = {m: c for m, c in bench_baft.method_configs(baft_args).items() if m in mine}
    name = args.name or "_".join(([f"peers_single{args.single}"] if args.single else ["peers"])
                                 + ([f"seq{args.sequential}"] if args.sequential else []))

    set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)  # noqa: E731

    ee_path = Path(args.easyedit).resolve()
    stubbed = import_easyedit(ee_path)
    commit = easyedit_commit(ee_path)
    if commit and not commit.startswith(EASYEDIT_COMMIT):
        log(f"warning: EasyEdit at {ee_path} is commit {commit}, not {EASYEDIT_COMMIT}")
    torch.set_num_threads(args.threads)  # easyeditor's import may have changed it

    from benchmarks.bench_baft import flat
    from repedit import models
    from repedit.eval.metrics import build_case_records, evaluate_requests, summarize

    model, tok = models.load(args.model, device="cpu")
    model.eval()
    env = environment(model, args.model)
    import importlib.metadata as md

    env.update({"easyedit_commit": commit, "easyedit_path": str(ee_path), "transformers": md.version("transformers"),
                "stubbed_packages": stubbed})
    n_all = max(args.single, args.sequential)
    reqs, data = select_requests(n_all, seed=args.seed, offset=args.offset)
    if args.subject_locality > 0:
        from benchmarks.common import add_subject_locality

        data.update(add_subject_locality(reqs, model, tok, per_request=args.subject_locality, seed=args.seed))
    pre = evaluate_requests(model, tok, reqs, protocols=PROTOCOLS)
    base_logits = fixed_logits(model, tok)
    unedited = {"method": "unedited", "setting": "–", **flat(summarize(build_case_records(reqs, pre, pre)))}
    unedited["locality"] = None
    log(f"loaded {args.model} and {len(reqs)} requests; scored the unedited model")

    texts = wikitext_texts(Path(os.environ["REPEDIT_DATA"]) / "wikitext2" / "wiki.test.raw")
    patches = patch_layer_stats(texts) + [
        f"absent optional packages stubbed at import: {', '.join(stubbed)}",
        "model path: a symlink <repedit cache folder>-llama (EasyEdit picks its loader by 'llama' in the name)",
        "hparams lm_head_module: model.embed_tokens (SmolLM2 ties lm_head to it; lm_head.weight is no parameter)",
        "AlphaEdit: P computed up front with EasyEdit's get_project and saved at P_loc; "
        "AlphaEdit_main.cache_c_new = False before each single edit / sequential run",
        "edit call: _prepare_requests + apply_algo as BaseEditor.edit_requests's edit_func (EasyEdit's eval off)",
        "GRACE: model.generate sets the adapters' key_id = -1 while repedit's scorer generates (GRACE.generate)",
    ]
    link = model_link(models.cached_model_dir(args.model), ROOT / ".peers" / "models")
    rows, details, ratios = [unedited], {}, []
    editors, infos, idents = {}, {}, {}
    for method in methods:  # every peer's editor (its own copy of the model) and what it prepares
        hp = load_hparams(method, Path(args.hparams_dir), link, Path(args.stats_dir))
        editor = new_editor(hp)
        same = float((fixed_logits(editor.model, tok) - base_logits).abs().max())
        log(f"{method}: EasyEdit loaded {link.name}; max |Δlogit| vs repedit's model {same:.3g}")
        info = prepare(method, editor, hp)
        info.update({"hparams": {k: v for k, v in dataclasses.asdict(hp).items()}, "load_max_abs_diff": same})
        log(f"{method}: prepared in {info['prepare_s']} s")
        editors[method], infos[method] = editor, info
        ident = {"method": method, "hparams": info["hparams"], "easyedit": commit, "protocols": PROTOCOLS,
                 "model": env.get("model"), "transformers": env["transformers"]}
        ident["hparams"] = {k: v for k, v in ident["hparams"].items() if k not in ("model_name", "stats_dir", "P_loc")}
        if method == "grace":
            ident["generation"] = "GRACE.generate: key_id=-1"
        idents[method] = ident
    edited = None
    if mine:
        from repedit import Editor, EditorConfig
        from repedit.hooks import EditableModel

        edited = EditableModel(model, tok)
        for m, cfg in repedit_configs.items():
            editors[f"repedit {m}"] = Editor(edited, tok, EditorConfig(**cfg))
            infos[f"repedit {m}"] = {"config": cfg}
            idents[f"repedit {m}"] = {"repedit": m, "config": cfg, "protocols": PROTOCOLS, "model": env.get("model")}

    def add_row(method, setting, n, sub, sub_pre, posts, seconds, extra):
        summary = summarize(build_case_records(sub, sub_pre, posts))
        row = {"method": method, "setting": f"{n} {setting}", **flat(summary), "s_per_edit": seconds / n}
        rows.append(row)
        details[f"{method}/{row['setting']}"] = {"summary": summary, **extra, **infos[method]}
        log(f"  -> {row}")
        save()

    def save():
        notes = (f"EasyEdit {commit} run by benchmarks/bench_peers.py in .venv-peers "
                 f"(transformers {env['transformers']}), hparams benchmarks/peers/hparams/*.yaml "
                 "(EasyEdit's llama settings, layers x30/32), scored with repedit's scorer exactly "
                 "as bench_baft.py (same records: dev CounterFact, seed "
                 f"{args.seed}, offset {args.offset}, subject locality {args.subject_locality}). "
                 "s_per_edit: the EasyEdit edit call only (layer statistics / P computed before, "
                 "see details.prepare_s). Patches: benchmarks/peers/PATCHES.md.")
        if mine:
            notes += (f" 'repedit <method>' rows: bench_baft.py's config for that method with `{args.repedit_args}`, "
                      "in the same process; single edits interleaved record by record with the peers'.")
        if ratios:
            notes += " One-run s/edit ratios (peer over repedit, on the records both timed in this run): " + "; ".join(
                f"{r['peer']} / {r['repedit']} {r['ratio']:.1f}x ({r['peer_s_per_edit']:.1f} against "
                f"{r['repedit_s_per_edit']:.2f} s, {r['records']} records)" for r in ratios) + "."
        write_results(name, {"rows": rows, "details": details, "ratios": ratios, "args": vars(args), "data": data,
                             "environment": env, "patches": patches, "wall_seconds": time.perf_counter() - start},
                      table=rows, columns=COLUMNS, notes=notes)

    if args.single > 0:
        n = args.single
        sub, sub_pre = reqs[:n], pre[:n]
        runners = {m: (lambda i, m=m: peer_single_edit(m, editors[m], tok, sub[i], sub_pre[i], base_logits))
                   for m in methods}
        runners.update({m: (lambda i, m=m: repedit_single_edit(editors[m], model, tok, sub[i], sub_pre[i], base_logits))
                        for m in editors if m.startswith("repedit ")})
        recs = interleaved_single(runners, [r.case_id for r in sub], log, args.checkpoint_dir, idents)
        ratios[:] = speed_ratios(recs, methods, [m for m in runners if m.startswith("repedit ")])
        for m, got in recs.items():
            extra = {"restore_max_abs_diff": max(r["restore_max_abs_diff"] for r in got),
                     "timed_here": sum(r["fresh"] for r in got)}
            if "steps" in got[0]:
                extra["mean_steps"] = sum(r["steps"] for r in got) / n
            add_row(m, "single", n, sub, sub_pre, [r["post"] for r in got], sum(r["seconds"] for r in got), extra)
    if args.sequential > 0:
        n = args.sequential
        sub, sub_pre = reqs[:n], pre[:n]
        for method in methods:
            posts, seconds, worst = run_sequential(method, editors[method], tok, sub, sub_pre, base_logits, log)
            add_row(method, "sequential", n, sub, sub_pre, posts, seconds, {"restore_max_abs_diff": worst})
        for m in mine:
            row, det = bench_baft.run_setting(m, repedit_configs[m], sub, sub_pre, model, tok, edited, True, log,
                                              latency_repeats=3)
            rows.append({**row, "method": f"repedit {m}"})
            details[f"repedit {m}/{row['setting']}"] = det
            save()
    log("done")


if __name__ == "__main__":
    main()
