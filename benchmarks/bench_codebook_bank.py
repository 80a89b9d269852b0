"""Re-place a saved BalancEdit codebook's radii with a bigger corpus negative bank, no re-editing.

Each radius is ``(1 − α)·d⁻ + α·min(d⁺, d⁻)`` with ``d⁻`` the nearest negative. The corpus part
of the negatives is the token states of ``corpus_sentences`` WikiText-2 sentences (256 when the
1,000-edit run was made). This script loads a codebook saved by ``bench_codebook.py
--save-dir``, recomputes ``d⁻`` against the tokens of ``--sentences`` sentences (sentences that
contain the entry's subject are skipped, as in training), keeps every radius at most its old
value (conflict shrinks stay), and scores the first ``--n`` records before and after.

Usage::

    python benchmarks/bench_codebook.py --n 1000 --save-dir /tmp/cb ...   # makes the codebook
    python benchmarks/bench_codebook_bank.py --adapter-dir /tmp/cb --adapter balanced --sentences 2000 --n 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import environment, select_requests, set_threads, write_results  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter-dir", required=True)
    ap.add_argument("--adapter", default="balanced")
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--n", type=int, default=300, help="records scored (the first n of the edited ones)")
    ap.add_argument("--records", type=int, default=1000, help="records the codebook was made from (same seeded selection)")
    ap.add_argument("--name", default="codebook_bank")
    args = ap.parse_args(argv)
    set_threads(1)
    from repedit import models
    from repedit.corpus import Corpus
    from repedit.eval.metrics import evaluate_requests
    from repedit.hooks import EditableModel
    from repedit.methods.codebook import radius as R
    from benchmarks.bench_codebook import evaluate, pick

    model, tok = models.load("smollm2-135m")
    model.eval()
    edited = EditableModel(model, tok)
    edited.load_adapter(args.adapter_dir, adapter=args.adapter)
    att = edited.attachments()[0]
    cb = att.module
    reqs, data = select_requests(args.records, seed=0)
    sub = reqs[: args.n]
    t0 = time.perf_counter()
    with edited.disabled():
        pre = evaluate_requests(model, tok, sub, protocols=("teacher_forced", "probability"))
    rows = [{"radii": f"as trained (corpus bank {cb.config.corpus_sentences} sentences)", **pick(evaluate(model, tok, sub, pre))}]
    corpus = Corpus.from_file(cb.config.corpus_path) if cb.config.corpus_path else Corpus.default()
    sents = corpus.spread_sentences(args.sentences)
    vecs, sid = [], []
    for b, (h, pm, _) in enumerate(R.site_hidden(edited, att.layer, att.component, tok, sents, None)):
        pm = pm.clone()
        pm[:, 0] = False  # attention-sink token, never a key
        vecs.append(cb.normalize(h[pm]))
        sid.append((torch.arange(h.shape[0], device=h.device)[:, None] + b * 32).expand_as(pm)[pm])
    vecs, sid = torch.cat(vecs), torch.cat(sid)
    alpha = cb.config.alpha
    old = cb.radii.clone()
    new = old.clone()
    for i, e in enumerate(cb.config.entries):
        row = cb.distances(vecs, cb.keys[i : i + 1])[:, 0]
        subject = (e.get("subject") or "").lower()
        if subject:
            bad = [k for k, s in enumerate(sents) if subject in s.lower()]
            if bad:
                row = row.masked_fill(torch.isin(sid, torch.tensor(bad, device=sid.device)), float("inf"))
        dn = min(float(cb.neg_dist[i]), float(row.min()))
        dp = float(cb.pos_dist[i])
        new[i] = min(float(old[i]), (1 - alpha) * dn + alpha * min(dp, dn))
    with torch.no_grad():
        cb.radii.copy_(new)
    rows.append({"radii": f"re-placed with a {args.sentences}-sentence bank ({vecs.shape[0]} tokens)", **pick(evaluate(model, tok, sub, pre))})
    payload = {"rows": rows, "entries": cb.n_entries, "shrunk": int((new < old - 1e-6).sum()),
               "radius_median": {"before": float(old.median()), "after": float(new.median())},
               "n_scored": len(sub), "data": data, "environment": environment(model, "smollm2-135m"),
               "seconds": time.perf_counter() - t0}
    write_results(args.name, payload, table=rows, notes=(
        f"A {cb.n_entries}-entry BalancEdit codebook (layer {att.layer}) scored on the first {len(sub)} of its records "
        "(radius scale 1.0) before and after its radii are re-placed against a bigger corpus negative bank; "
        "no value is retrained. Locality: EasyEdit agreement with the unedited model; paraphrase/efficacy: ROME."))
    print(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
