"""The forwards an edit trains with: its batch's fixed inputs, resumed at the edited layer
(:mod:`repedit.resume`) and, where the trained edits write only from a column on, over a
cached prefix (:mod:`repedit.prefix`).

A mixin of :class:`~repedit.editing.Editor` (it reads ``self.edited``, ``self.config``,
``self.attachments()``, ``self.resume_forward``, ``self.split_prefix``, ``self._sliced_logits``,
``self._answer_end()`` and ``self._row_stats``).

Example::

    fixed = editor._fixed_inputs(session)
    out = editor._forward(session, fixed)
    row_nll, row_prob, reached = editor._stats(session, fixed, out)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from repedit.edit_results import target_logits, target_positions, without_last_token
from repedit.positions import EncodedBatch
from repedit.precision import MixedPrecision
from repedit.prefix import split_batch
from repedit.resume import can_resume, resumed_at, site_input
from repedit.session import EditSession
from repedit.sites import Attachment

__all__ = ["TrainingForwardMixin"]


@contextlib.contextmanager
def _training_mode(atts: list[Attachment]) -> Iterator[None]:
    """The attachments' modules in training mode while inside (then eval, as between edits)."""
    for att in atts:
        att.module.train()
    try:
        yield
    finally:
        for att in atts:
            att.module.eval()


class TrainingForwardMixin:
    """Training forwards of the :class:`~repedit.editing.Editor`."""

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The training forwards' precision: ``EditorConfig.mixed_precision``
        (:class:`~repedit.precision.MixedPrecision`, its weight copies kept for the editor's
        lifetime), or nothing."""
        name = self.config.mixed_precision
        if name is None:
            return contextlib.nullcontext()
        mp = getattr(self, "_mixed", None)
        if mp is None or mp.name != name:
            mp = self._mixed = MixedPrecision(name)
        return mp(self.edited.model)

    def _training_start(self, atts: list[Attachment], session: EditSession) -> torch.Tensor | None:
        """The first column each training row's trained edits write (the earliest over the
        attachments), or None when one of them may write anywhere."""
        start = None
        for att in atts:
            s = att.module.training_start(session)
            if s is None:
                return None
            start = s if start is None else torch.minimum(start, s)
        return start

    def _fixed_inputs(self, session: EditSession) -> dict[str, Any]:
        """What every forward of an edit shares: the model inputs (logits only where a target
        token is predicted, when the model allows), the target ids and which are valid, and the
        request each training row belongs to. When the trained edits write only from a column
        on and the forward can resume at their layer, the columns before it are computed once
        (:mod:`repedit.prefix`) and each step runs the rest; ``fixed["full"]`` then holds the
        inputs of the whole batch, which verification uses."""
        atts = self.attachments()
        start = self._training_start(atts, session)
        full = self._batch_inputs(session, session.batch, trained_from=start)
        layer = can_resume(self.edited, atts) if self.resume_forward else None
        if layer is None:
            return full
        split = None
        if start is not None and self.split_prefix:
            with _training_mode(atts), self._autocast():  # the prefix as the training forwards compute it
                split = split_batch(self.edited, session.batch, start)
        if split is None:
            with self._autocast():
                states = site_input(self.edited, layer, session.batch)
            if states is not None:
                full["resume"] = (layer, states)
            return full
        with self._autocast():
            states = site_input(self.edited, layer, split.batch)
        if states is None:
            return full
        fixed = self._batch_inputs(session, split.batch, trained_from=split.trained_from, labels=split.labels,
                                   inputs=split.suffix_inputs())
        fixed["split"] = split
        fixed["resume"] = (layer, states[:, split.first:])
        fixed["full"] = full
        return fixed

    def _batch_inputs(self, session: EditSession, batch: EncodedBatch, trained_from: torch.Tensor | None,
                      labels: torch.Tensor | None = None, inputs: dict | None = None) -> dict[str, Any]:
        """The forward inputs (default the batch's) and the target statistics' inputs of
        ``batch`` (targets read from ``labels``, default the batch's)."""
        positions, target, valid = target_positions(batch.labels if labels is None else labels)
        inputs = batch.model_inputs() if inputs is None else inputs
        if self._sliced_logits:
            inputs["logits_to_keep"] = positions
        # answer_end_stop='argmax': the stop rule's probability is the answer's; the end need only be the argmax
        answer_only = self.config.answer_end_stop == "argmax" and self._answer_end()
        prob_valid = without_last_token(valid) if answer_only else valid
        return {"inputs": inputs, "target": target, "valid": valid, "prob_valid": prob_valid, "positions": positions,
                "owner": torch.tensor(session.owners), "batch": batch, "trained_from": trained_from}

    def _forward(self, session: EditSession, fixed: dict[str, Any], mixed: bool = True) -> Any:
        """The model on the edit's batch; from the edited layer up when the states below it
        were captured (:mod:`repedit.resume`), over the cached prefix when it was split
        (:mod:`repedit.prefix`); under ``mixed_precision`` autocast when ``mixed``."""
        resume = fixed.get("resume")
        inputs = fixed["inputs"]
        if "split" in fixed:
            inputs = dict(inputs, **fixed["split"].cache_inputs())
        with fixed["batch"].info(trained_from=fixed["trained_from"]), \
                (resumed_at(self.edited, *resume) if resume else contextlib.nullcontext()), \
                (self._autocast() if mixed else contextlib.nullcontext()):
            return self.edited.model(**inputs)

    def _stats(self, session: EditSession, fixed: dict[str, Any], out: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = out.logits if self._sliced_logits else target_logits(out.logits, fixed["positions"])
        return self._row_stats(logits, fixed["target"], fixed["valid"], fixed["prob_valid"], fixed["owner"],
                               len(session.requests))
