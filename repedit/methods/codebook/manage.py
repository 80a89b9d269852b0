"""Managing codebooks: list, delete, merge, explain.

Example::

    from repedit.methods.codebook import manage
    manage.list_entries(edited)                      # one dict per entry
    manage.explain(edited, "The mother tongue of Danielle Darrieux is")
    manage.delete_entry(edited, 3)

Merging two saved adapters (files) is :func:`repedit.edits.merge_adapters`.
"""

from __future__ import annotations

import dataclasses

import torch

from repedit.methods.codebook.module import _LOWRANK, _PER_ENTRY, Codebook

__all__ = ["codebooks", "list_entries", "delete_entry", "explain", "merge"]


def codebooks(edited) -> list:
    """The attachments of ``edited`` whose module is a :class:`Codebook`."""
    return [a for a in edited.attachments() if isinstance(a.module, Codebook)]


def _one(edited, name: str | None):
    if isinstance(edited, Codebook):
        return edited
    atts = [a for a in codebooks(edited) if name is None or a.name == name]
    if len(atts) != 1:
        raise ValueError(f"name one codebook; found {[a.name for a in codebooks(edited)]}")
    return atts[0].module


def list_entries(edited, name: str | None = None) -> list[dict]:
    """Entries of a codebook (an EditableModel with one codebook, or the module itself):
    request text, target, subject, key norm, radius, sample distances, flags."""
    return _one(edited, name).entries()


def delete_entry(edited, index: int, name: str | None = None) -> dict:
    """Delete one entry; returns its metadata."""
    return _one(edited, name).delete(index)


@torch.no_grad()
def explain(edited, prompt: str, subject: str | None = None) -> list[dict]:
    """Which entry (if any) fires for ``prompt``, per codebook: the nearest entry, its
    distance and its effective radius (radius x radius_scale)."""
    from repedit.positions import encode

    atts = codebooks(edited)
    batch = encode(edited.tokenizer, [prompt], subjects=[subject] if subject else None)
    batch = batch.to(next(edited.model.parameters()).device)
    for a in atts:
        a.module._record = []
    try:
        with batch.info():
            edited.model(**batch.model_inputs())
        out = []
        for a in atts:
            cb = a.module
            rec = cb._record[0] if cb._record else None
            if rec is None:  # empty codebook or inactive
                out.append({"codebook": a.name, "fired": False, "entry": None, "active": a.active})
                continue
            j = int(rec["entry"][0])
            meta = cb.config.entries[j] if j < len(cb.config.entries) else {}
            out.append({"codebook": a.name, "fired": bool(rec["fire"][0]), "entry": j,
                        "distance": float(rec["distance"][0]), "radius": float(rec["radius"][0]),
                        "has_query": bool(rec["has_query"][0]), "prompt": meta.get("prompt"),
                        "target_new": meta.get("target_new"), "subject": meta.get("subject")})
        return out
    finally:
        for a in atts:
            a.module._record = None


_COMPAT = ("key_positions", "distance", "normalize", "value", "value_rank")


def merge(a: Codebook, b: Codebook) -> Codebook:
    """A new codebook with the entries of ``a`` then ``b``.

    Both must share the key definition, distance, normalisation statistics and value kind.
    An entry of ``b`` for the same (prompt, subject) as one of ``a`` replaces it (a repeat).
    Entries with another target whose keys fall inside each other's radius are shrunk as
    in editing (conflicts), and flagged.
    """
    if a.hidden_size != b.hidden_size:
        raise ValueError(f"hidden sizes differ: {a.hidden_size} vs {b.hidden_size}")
    for f in _COMPAT:
        if getattr(a.config, f) != getattr(b.config, f):
            raise ValueError(f"cannot merge codebooks with different {f}: {getattr(a.config, f)!r} vs {getattr(b.config, f)!r}")
    if a.n_entries and b.n_entries and a.config.normalize != "none":
        if not (torch.allclose(a.stat_mean, b.stat_mean, atol=1e-5) and torch.allclose(a.stat_std, b.stat_std, atol=1e-5)):
            raise ValueError("cannot merge codebooks built with different normalisation statistics (other model, layer or corpus)")
    src_stats = a if a.n_entries or not b.n_entries else b
    key = lambda e: (e.get("prompt"), e.get("subject"))  # noqa: E731
    b_keys = {key(e) for e in b.config.entries if e.get("prompt") is not None}
    keep_a = [i for i, e in enumerate(a.config.entries[: a.n_entries]) if key(e) not in b_keys or e.get("prompt") is None]
    keep_a += list(range(len(a.config.entries), a.n_entries))  # entries without metadata
    names = _PER_ENTRY + (_LOWRANK if a.config.value == "lowrank" else ())
    ia = torch.tensor(sorted(keep_a), dtype=torch.long, device=a.keys.device)
    tensors = {n: torch.cat([getattr(a, n).index_select(0, ia), getattr(b, n).to(getattr(a, n))]) for n in names}
    meta_a = [a.config.entries[i] if i < len(a.config.entries) else {} for i in sorted(keep_a)]
    meta_b = [b.config.entries[i] if i < len(b.config.entries) else {} for i in range(b.n_entries)]
    entries = [dict(e) for e in meta_a + meta_b]
    cfg = dataclasses.replace(a.config, n_entries=len(entries), entries=entries,
                              has_stats=a.config.has_stats or b.config.has_stats)
    out = Codebook(cfg, a.hidden_size).to(a.keys.device)
    with torch.no_grad():
        for n, t in tensors.items():
            setattr(out, n, t.clone())
        out.stat_mean.copy_(src_stats.stat_mean)
        out.stat_std.copy_(src_stats.stat_std)
        # conflicts across the two books: a key inside another target's radius shrinks that radius
        na = len(meta_a)
        if na and b.n_entries:
            d = out.distances(out.keys[na:], out.keys[:na])  # (nb, na)
            for jb in range(b.n_entries):
                for ja in range(na):
                    if entries[na + jb].get("target_new") == entries[ja].get("target_new"):
                        continue
                    dist = float(d[jb, ja])
                    for i, other in ((ja, na + jb), (na + jb, ja)):
                        if dist <= float(out.radii[i]):
                            alpha = cfg.alpha
                            new = (1 - alpha) * dist + alpha * min(float(out.pos_dist[i]), dist) if cfg.radius_mode == "balanced" else dist / 2
                            out.radii[i] = min(float(out.radii[i]), new)
                            entries[i].setdefault("flags", {})["merge_conflict_with"] = other
    return out
