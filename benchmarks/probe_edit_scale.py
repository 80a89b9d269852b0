"""Probe: is a BaFT edit's change too small on paraphrases? Each single edit (defaults) is
scored with its change Φ(h) − h scaled by α at inference, α in ``--scales``.

The scaling is applied by wrapping ``BaFT.edit`` in this script only (it is not a library
knob): the question is whether a larger write turns "the new answer beats the old one" into
"the new answer is the argmax" on paraphrases. Per-record results are kept in
``--checkpoint`` (a JSON file; a stopped run resumes).

Example::

    python benchmarks/probe_edit_scale.py --n 30 --scales 1,1.5,2,3 --relation-copies 0 --checkpoint ckpt.json \
        --name edit_scale_30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, write_results  # noqa: E402
from benchmarks.probes import edit_each, mean_steps, probe_setup, score_request, summary_rows  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30, help="single edits (dev CounterFact, seed 0)")
    p.add_argument("--scales", default="1,1.5,2,3", help="comma list of α")
    p.add_argument("--relation-copies", type=int, default=None, help="EditorConfig.relation_copies (default: BaFT's; "
                   "edit_scale_30 ran before they were, with 0)")
    p.add_argument("--checkpoint", required=True, help="JSON file of per-record results (resumed)")
    p.add_argument("--name", default="edit_scale_30")
    args = p.parse_args(argv)
    keys = [str(float(x)) for x in args.scales.split(",")]

    import torch

    from repedit.editing import Editor, EditorConfig
    from repedit.methods.baft import BaFT

    setup = probe_setup(args.n)
    alpha = [1.0]
    plain = BaFT.edit

    def scaled(self, h: torch.Tensor, ctx=None) -> torch.Tensor:
        out = plain(self, h, ctx)
        return out if alpha[0] == 1.0 else h.to(out.dtype) + alpha[0] * (out - h.to(out.dtype))

    def score(editor, req, i, key, rec):
        alpha[0] = float(key)
        rec["post"][key] = score_request(setup, i)
        alpha[0] = 1.0

    BaFT.edit = scaled
    kw = {} if args.relation_copies is None else {"relation_copies": args.relation_copies}
    editor = Editor(setup.edited, setup.tok, EditorConfig(method="baft", **kw))
    done = edit_each(setup, editor, keys, Path(args.checkpoint), score)
    rows = summary_rows(setup, done, keys, "scale")
    write_results(args.name, {"rows": rows, "data": setup.data, "environment": environment(setup.model, "smollm2-135m"),
                              "mean_steps": mean_steps(done)}, table=rows,
                  columns=["scale", "rewrite_acc", "rephrase_acc", "locality", "subject_loc", "gen_rephrase_prefix",
                           "gen_rephrase", "gen_rewrite", "gen_loc_agree", "gen_subject_agree", "efficacy",
                           "paraphrase"],
                  notes="Single BaFT edits (defaults, SmolLM2, dev CounterFact seed 0), each scored with its change "
                        "scaled by α at inference. Columns as in bench_baft's tables.")


if __name__ == "__main__":
    main()
