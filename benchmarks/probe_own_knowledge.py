"""Probe: how well does the unedited model carry its *own* knowledge from a prompt to its
paraphrase? The teacher-forced token accuracy of the true answer (``ground_truth``) on each dev
CounterFact record's prompt and on its paraphrase, and, among the records whose prompt the model
answers fully right, the share whose paraphrase it answers fully right too. An edit written where
the model keeps its facts can be expected to transfer about as well as the model's own facts do.

Example::

    python benchmarks/probe_own_knowledge.py --n 2000 --name own_knowledge_2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, select_requests, set_threads, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="dev CounterFact records (seed 0)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--name", default="own_knowledge_2000")
    args = p.parse_args(argv)

    import dataclasses

    from repedit import models
    from repedit.eval.metrics import evaluate_requests

    set_threads(1)
    model, tok = models.load(args.model)
    model.eval()
    reqs, data = select_requests(args.n, seed=0)
    truth = [dataclasses.replace(r, target_new=r.ground_truth, locality_prompts=[], portability=[],
                                 subject_locality_prompts=[]) for r in reqs if r.ground_truth and r.rephrase_prompts]
    scores = evaluate_requests(model, tok, truth, protocols=("teacher_forced",))
    prompt = [s["rewrite_acc"][0] for s in scores]
    para = [s["rephrase_acc"][0] for s in scores]
    known = [i for i, a in enumerate(prompt) if a == 1.0]
    row = {"model": args.model, "records": len(truth), "prompt_acc": sum(prompt) / len(prompt),
           "paraphrase_acc": sum(para) / len(para), "prompt_fully_right": len(known),
           "paraphrase_fully_right_given_prompt": (sum(para[i] == 1.0 for i in known) / len(known)) if known else None,
           "paraphrase_acc_given_prompt": (sum(para[i] for i in known) / len(known)) if known else None}
    write_results(args.name, {"rows": [row], "data": data, "environment": environment(model, args.model)}, table=[row],
                  columns=list(row),
                  notes="The unedited model on dev CounterFact's true answers, teacher-forced token accuracy "
                        "(EasyEdit's rewrite_acc / rephrase_acc with target_new = ground_truth): on the prompt, on "
                        "its paraphrase, and on the paraphrase among the records whose prompt is fully right.")
    print(row)


if __name__ == "__main__":
    main()
