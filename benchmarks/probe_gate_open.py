"""Probe: when a BaFT edit misses a paraphrase, is its gate shut, or is it open and the write
not enough? Each single edit (BaFT defaults, or ``--relation-copies``) is scored on its
paraphrase, and the edit's own gate weight at the paraphrase's subject token (the largest of
its bases, at the inference gate shift) is recorded; the summary splits rephrase_acc by
whether that gate was open (w ≥ 0.5). Scores are also taken at wider gate shifts.

Per-record results are kept in ``--checkpoint`` (a JSON file; a stopped run resumes).

Example::

    python benchmarks/probe_gate_open.py --n 30 --shifts -4,0,4 --checkpoint ckpt.json --name gate_open_30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, write_results  # noqa: E402
from benchmarks.probes import edit_each, mean_steps, probe_setup, score_request, summary_rows  # noqa: E402


def subject_gate(model, tok, module, prompt: str, subject: str) -> float | None:
    """The largest gate weight of ``module``'s bases at the last token of ``subject`` in
    ``prompt`` (None where the subject is not in the prompt)."""
    import torch

    from repedit.methods.baft import BaFT
    from repedit.positions import encode, last_true_index

    batch = encode(tok, [prompt], subjects=[subject if subject in prompt else None])
    if not bool(batch.subject_mask.any()):
        return None
    seen = {}
    plain = BaFT.edit

    def spy(self, h, ctx=None):
        if self is module:
            seen["w"] = self.weights(h)
        return plain(self, h, ctx)

    BaFT.edit = spy
    try:
        with torch.no_grad(), batch.info():
            model(**batch.model_inputs())
    finally:
        BaFT.edit = plain
    w = seen.get("w")
    if w is None:
        return None
    return float(w[0, int(last_true_index(batch.subject_mask)[0])].max())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30, help="single edits (dev CounterFact, seed 0)")
    p.add_argument("--shifts", default="-4,0,4", help="comma list of inference gate shifts (the first is the default's)")
    p.add_argument("--relation-copies", type=int, default=None, help="EditorConfig.relation_copies (default: BaFT's)")
    p.add_argument("--checkpoint", required=True, help="JSON file of per-record results (resumed)")
    p.add_argument("--name", default="gate_open_30")
    args = p.parse_args(argv)
    keys = [str(float(x)) for x in args.shifts.split(",")]

    from repedit.editing import Editor, EditorConfig

    setup = probe_setup(args.n)

    def score(editor, req, i, key, rec):
        module = editor.attachments()[0].module
        module.set_knob("gate_shift", float(key))
        rec.setdefault("gate", {})[key] = [subject_gate(setup.model, setup.tok, module, q, req.subject)
                                           for q in req.rephrase_prompts]
        rec["post"][key] = score_request(setup, i)

    kw = {} if args.relation_copies is None else {"relation_copies": args.relation_copies}
    editor = Editor(setup.edited, setup.tok, EditorConfig(method="baft", **kw))
    done = edit_each(setup, editor, keys, Path(args.checkpoint), score)
    rows = summary_rows(setup, done, keys, "gate_shift")
    for key, row in zip(keys, rows):
        # rephrase_acc split by whether the edit's gate opened at the paraphrase's subject token
        opened, shut = [], []
        for i in range(len(setup.reqs)):
            accs = done[str(i)]["post"][key].get("rephrase_acc") or []
            for g, acc in zip(done[str(i)]["gate"][key], accs):
                if g is not None:
                    (opened if g >= 0.5 else shut).append(float(acc))
        row.update(gate_open_share=len(opened) / max(1, len(opened) + len(shut)),
                   rephrase_acc_gate_open=sum(opened) / len(opened) if opened else None,
                   rephrase_acc_gate_shut=sum(shut) / len(shut) if shut else None)
    write_results(args.name, {"rows": rows, "data": setup.data, "environment": environment(setup.model, "smollm2-135m"),
                              "mean_steps": mean_steps(done)}, table=rows,
                  columns=["gate_shift", "rewrite_acc", "rephrase_acc", "gate_open_share", "rephrase_acc_gate_open",
                           "rephrase_acc_gate_shut", "locality", "subject_loc", "gen_rephrase_prefix", "gen_rephrase",
                           "gen_loc_agree", "gen_subject_agree"],
                  notes="Single BaFT edits (SmolLM2, dev CounterFact seed 0), scored at each inference gate shift. "
                        "gate_open_share: share of paraphrases where the edit's own gate weight at the subject's last "
                        "token is >= 0.5; rephrase_acc_gate_open / _shut: rephrase_acc over those paraphrases and "
                        "the others. Other columns as in bench_baft's tables.")


if __name__ == "__main__":
    main()
