"""Null-space projection for representation edits (the AlphaEdit idea, moved to hidden states).

AlphaEdit (Fang et al., ICLR 2025) projects a weight update onto the null space of the
keys the model should keep answering as before. repedit edits hidden states, so the
"keys" are the hidden states an intervention *reads*: the residual stream at its layer.

How ``P`` is built:

1. Run a text corpus through the unedited model and collect the hidden states entering the
   intervention at every attended token. (For the ``last_prompt`` rule every token counts:
   in a causal LM the state at token t *is* the last-prompt-token state of the prefix
   ending at t. The ``subject`` and ``prompt`` rules also use every token, as a corpus has no
   subject annotation.) The default corpus is the editor's (:mod:`repedit.corpus`: the
   WikiText-2 test sentences shipped with repedit); any list of strings may be passed instead.
2. Accumulate the *uncentred* second moment ``K0 K0ᵀ / N`` in float32, streaming: no
   vector is kept (:class:`SecondMoment`).
3. Eigen-decompose it and keep the eigenvectors ``Û`` with small eigenvalues; ``P = Û Ûᵀ``.
   The threshold is relative (:func:`null_space_projector`): either a fraction of the
   spectral energy (the smallest eigenvalues whose sum is at most ``threshold · trace``) or a
   fraction of the largest eigenvalue. AlphaEdit's absolute ``2e-2`` depends on the model's
   activation scale and is not used.

The second moment is kept by the Editor's cache (``Editor.cached``: memory, then
``$REPEDIT_CACHE/nullspace/``), keyed by the model fingerprint, layer, component, position
rule and the sha256 of the corpus, so ``P`` for a new threshold costs one 576×576
eigendecomposition, not a corpus pass.

The guarantees of the two modes are documented on :class:`repedit.methods.baft.BaFT`.

Example::

    texts = editor.corpus.sentences(limit=2000)
    mom = collect_second_moment(editor, attachment, texts)
    P, info = null_space_projector(mom.matrix(), threshold=1e-4)
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "THRESHOLD_MODES",
    "SecondMoment",
    "corpus_hash",
    "collect_second_moment",
    "null_space_projector",
    "cached_second_moment",
    "deflate",
]

#: ``"energy"``: keep the smallest eigenvalues whose sum is ≤ threshold × trace;
#: ``"max"``: keep eigenvalues < threshold × the largest eigenvalue.
THRESHOLD_MODES = ("energy", "max")


# ------------------------------------------------------------------------- corpus
def corpus_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


# ------------------------------------------------------------------------- statistics
class SecondMoment:
    """Streaming uncentred second moment ``Σ k kᵀ`` and count, in float32 (or float64).

    Example::

        m = SecondMoment(576)
        m.add(torch.randn(100, 576))
        m.matrix()   # (576, 576) = K Kᵀ / N
    """

    def __init__(self, dim: int, dtype: torch.dtype = torch.float32):
        self.sum = torch.zeros(dim, dim, dtype=dtype)
        self.count = 0

    def add(self, keys: torch.Tensor) -> None:
        k = keys.detach().reshape(-1, keys.shape[-1]).to(self.sum.dtype).cpu()
        self.sum.addmm_(k.T, k)
        self.count += k.shape[0]

    def matrix(self) -> torch.Tensor:
        return self.sum / max(1, self.count)


def collect_second_moment(editor: Any, attachment: Any, texts: Sequence[str], batch_size: int = 16,
                          max_tokens: int = 64) -> SecondMoment:
    """Run ``texts`` through the unedited model and accumulate the second moment of the
    hidden states entering ``attachment`` at every attended token (see the module doc)."""
    from repedit.positions import encode, length_chunks

    mom = SecondMoment(attachment.module.hidden_size)
    tok = editor.tokenizer
    for idx in length_chunks(tok, texts, batch_size):  # chunks of similar length pad little
        chunk = [texts[i] for i in idx]
        batch = encode(tok, chunk, padding_side="right")
        if batch.input_ids.shape[1] > max_tokens:  # keep memory and time bounded
            batch = type(batch)(**{k: v[:, :max_tokens] for k, v in batch.__dict__.items()})
        batch = batch.to(editor.device)
        h, _ = editor.capture(attachment, batch, edited=False)
        mom.add(h[batch.attention_mask.bool()].float())
    return mom


def null_space_projector(moment: torch.Tensor, threshold: float = 1e-4, mode: str = "energy",
                         min_dim: int = 1) -> tuple[torch.Tensor, dict]:
    """``P = Û Ûᵀ`` from the eigenvectors of ``moment`` with small eigenvalues (relative threshold).

    Returns ``(P, info)`` where ``info`` has the null-space dimension and the energy it holds.
    At least ``min_dim`` directions are kept.
    """
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    if not threshold > 0:
        raise ValueError("the null-space threshold must be > 0")
    m = moment.double()
    m = 0.5 * (m + m.T)
    evals, evecs = torch.linalg.eigh(m)  # ascending
    evals = evals.clamp_min(0)
    total = float(evals.sum()) or 1.0
    if mode == "energy":
        keep = int((torch.cumsum(evals, 0) <= threshold * total).sum())
    else:
        keep = int((evals < threshold * float(evals[-1])).sum())
    keep = max(min_dim, min(keep, m.shape[0] - 1))
    U = evecs[:, :keep]
    P = (U @ U.T).float()
    info = {"dim": keep, "energy_fraction": float(evals[:keep].sum()) / total, "threshold": threshold, "mode": mode}
    return P, info


def deflate(P: torch.Tensor, keys: torch.Tensor, tol: float = 1e-6) -> tuple[torch.Tensor, int]:
    """Remove the directions of ``keys`` (k, d) from the range of projector ``P`` exactly
    (Gram–Schmidt inside the null space), so afterwards ``P @ key == 0``. Returns the new
    projector and how many directions were removed."""
    P = P.double()
    removed = 0
    for k in keys.reshape(-1, keys.shape[-1]).double():
        q = P @ k
        n = q.norm()
        if n <= tol * k.norm().clamp_min(1e-12):
            continue
        q = q / n
        P = P - torch.outer(q, q)
        removed += 1
    P = 0.5 * (P + P.T)
    return P.float(), removed


# ------------------------------------------------------------------------- cache
def cached_second_moment(editor: Any, attachment: Any, texts: Sequence[str], max_tokens: int = 64) -> tuple[torch.Tensor, dict]:
    """The second moment for ``attachment`` over ``texts``, built once per model, site and
    corpus and kept by ``editor.cached`` (the Editor's memory and disk cache; an
    :class:`~repedit.methods.base.EditSession` works too).

    Returns ``(moment (d, d) float32, info)``; ``info`` has the cache key, the count and
    whether it came from the cache.
    """
    h = corpus_hash(texts)
    parts = {"layer": attachment.layer, "component": attachment.component, "rule": attachment.positions.value,
             "corpus": h, "max_tokens": max_tokens}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    built = []

    def build() -> dict[str, torch.Tensor]:
        mom = collect_second_moment(editor, attachment, texts, max_tokens=max_tokens)
        built.append(True)
        return {"moment": mom.matrix().contiguous(), "count": torch.tensor([mom.count], dtype=torch.long)}

    t = editor.cached("nullspace", build, **parts)
    info = {"cache_key": key, "corpus_sha256": h, "texts": len(texts), "count": int(t["count"].item()),
            "cached": not built}
    return t["moment"], info
