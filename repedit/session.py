"""What a method sees while one edit (or batch) is trained: :class:`EditSession`, the
Editor's implementation of :class:`repedit.methods.base.EditSession`.

Example::

    h, mask = session.site_states(attachment, ["The Eiffel Tower is in"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from repedit.corpus import Corpus
from repedit.hooks import Attachment, EditableModel
from repedit.positions import EncodedBatch, encode
from repedit.requests import EditRequest

if TYPE_CHECKING:  # pragma: no cover
    from repedit.editing import Editor

__all__ = ["EditSession"]


class EditSession:
    """What a method sees while one edit (or batch) is trained."""

    def __init__(self, editor: "Editor", requests: list[EditRequest], indices: list[int], batch: EncodedBatch,
                 all_requests: list[EditRequest] | None = None, prompts: list[str] | None = None,
                 owners: list[int] | None = None, relation_copies: list[int] | None = None):
        self.editor = editor
        self.requests = requests
        #: the training prompts (the requests' prompts first, then augmented copies) and,
        #: per training row, the index into ``requests`` it belongs to
        self.prompts = prompts if prompts is not None else [r.prompt for r in requests]
        self.owners = owners if owners is not None else list(range(len(requests)))
        #: every request of the current ``edit()`` call (sequential runs see them all), so a
        #: method can draw negatives from other facts; never their evaluation fields.
        self.all_requests = all_requests if all_requests is not None else requests
        #: relation copies trained per request (``EditorConfig.relation_copies``)
        self.relation_copies = relation_copies if relation_copies is not None else [0] * len(requests)
        self.indices = indices
        self.batch = batch
        self.step = 0

    @property
    def edited(self) -> EditableModel:
        return self.editor.edited

    @property
    def tokenizer(self) -> Any:
        return self.editor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.batch.input_ids.device

    @property
    def corpus(self) -> Corpus:
        """General text for negatives, prefixes and names (:attr:`Editor.corpus`)."""
        return self.editor.corpus

    def corpus_from(self, source: Any) -> Corpus:
        """A :class:`~repedit.corpus.Corpus` for a method's own text source: ``None`` (the
        editor's corpus), a path to a text file, or a list of strings."""
        return self.editor.corpus_from(source)

    def cached(self, kind: str, build: Callable[[], dict[str, torch.Tensor]], *, autocast: bool = False,
               **parts: Any) -> dict[str, torch.Tensor]:
        """Tensors that depend only on the model and ``parts`` (:meth:`Editor.cached`; ``autocast``:
        built in ``EditorConfig.mixed_precision``)."""
        return self.editor.cached(kind, build, autocast=autocast, **parts)

    def memory(self, kind: str) -> dict:
        """A dict that lives as long as the editor, for a method's per-model working state
        (:meth:`Editor.memory`)."""
        return self.editor.memory(kind)

    def encode(self, prompts: Sequence[str], continuations: Sequence[str] | None = None,
               subjects: Sequence[str | None] | None = None) -> EncodedBatch:
        return encode(self.tokenizer, list(prompts), continuations, subjects).to(self.device)

    def attachment_of(self, module: nn.Module) -> Attachment:
        """The editor's attachment that holds ``module``."""
        for att in self.editor.attachments():
            if att.module is module:
                return att
        raise RuntimeError(f"this {type(module).__name__} module is not attached to the session's editor")

    def capture(self, attachment: Attachment, batch: EncodedBatch, edited: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden states entering ``attachment`` for ``batch`` and its position mask
        (:meth:`Editor.capture`)."""
        return self.editor.capture(attachment, batch, edited=edited)

    def site_states(
        self,
        attachment: Attachment,
        prompts: Sequence[str],
        subjects: Sequence[str | None] | None = None,
        edited: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states at an attachment's site for some prompts: ((B, T, d), (B, T) mask
        of the attachment's positions). With ``edited=False`` the model runs without edits."""
        batch = self.encode(prompts, subjects=subjects)
        return self.editor.capture(attachment, batch, edited=edited)
