"""``make demo``: edit one fact in the default model, show it, save it, reload it.

Run with ``python -m repedit.demo [--method baft] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

import repedit
from repedit import EditorConfig, EditRequest, Editor, models

REQUEST = EditRequest(
    prompt="The Eiffel Tower is located in the city of",
    target_new="Rome",
    subject="Eiffel Tower",
    ground_truth="Paris",
)
UNRELATED = "The Brandenburg Gate is located in the city of"
PARAPHRASE = "Where is the Eiffel Tower? It stands in the city of"


def _complete(edited: repedit.EditableModel, prompts: list[str], n: int = 8) -> list[str]:
    return [t.strip().split("\n")[0] for t in edited.generate(prompts, max_new_tokens=n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--method", default="baft", help="baft (default), codebook or loreft")
    parser.add_argument("--out", default=None, help="adapter directory (default: a temporary one)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    model, tok = models.load(args.model)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s")
    editor = Editor(model, tok, EditorConfig(method=args.method, progress=True))
    edited = editor.edited
    prompts = [REQUEST.prompt, PARAPHRASE, UNRELATED]
    before = _complete(edited, prompts)

    result = editor.edit(REQUEST)
    outcome = result.outcomes[0]
    after = _complete(edited, prompts)
    print(f"\nedit: {REQUEST.prompt!r} -> {REQUEST.target_new!r} ({args.method}, "
          f"{outcome.steps} steps, p(target)={outcome.target_prob:.2f}, {result.seconds:.1f}s)\n")
    width = max(len(p) for p in prompts)
    for label, p, b, a in zip(["edited", "paraphrase", "unrelated"], prompts, before, after):
        print(f"[{label:10s}] {p:<{width}} | before: {b!r:<24} | after: {a!r}")

    out = args.out or tempfile.mkdtemp(prefix="repedit-demo-")
    result.save_pretrained(out)
    fresh, tok2 = models.load(args.model)
    reloaded = repedit.load_adapter(fresh, out, tokenizer=tok2)
    again = _complete(reloaded, prompts)
    print(f"\nsaved the adapter to {out}; reloaded onto a fresh {args.model}:")
    for p, a in zip(prompts, again):
        print(f"  {p:<{width}} | {a!r}")
    ok = again == after and outcome.success
    x = tok([REQUEST.prompt], return_tensors="pt")
    with torch.no_grad():
        same = torch.equal(edited.model(**x).logits, fresh(**x).logits)
    print(f"\nreloaded completions identical: {again == after}; logits bit-identical: {same}")
    return 0 if ok and same else 1


if __name__ == "__main__":
    sys.exit(main())
