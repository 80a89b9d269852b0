"""Which token positions an intervention touches.

Positions are computed from the attention mask, so left and right padding both work,
and entirely with tensor operations, so nothing synchronises with the host.

Four rules (:class:`Positions`):

``last_prompt``
    The last token of the prompt. Acts during the prefill forward only; decoding steps
    leave the representation alone.
``subject``
    The tokens of the subject, given as a character span of the prompt and mapped
    through the tokenizer's offsets. Prefill only.
``prompt``
    Every (non-pad) prompt token. Prefill only.
``all``
    Every non-pad token, including each newly generated one during decoding.

What "prompt" means in a forward pass: by default every attended token of the first
(cache-less) forward. When a caller feeds prompt *and* continuation in one forward
(teacher forcing, training), it says where the prompt ends with :func:`token_info`::

    batch = encode(tokenizer, ["The capital of France is"], [" Rome"])
    with token_info(prompt_mask=batch.prompt_mask, subject_mask=batch.subject_mask):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

__all__ = [
    "Positions",
    "TokenInfo",
    "token_info",
    "current_token_info",
    "EncodedBatch",
    "encode",
    "length_chunks",
    "rule_mask",
    "last_true_index",
    "trained_columns",
]


class Positions(str, enum.Enum):
    """Position rules an intervention can act on."""

    LAST_PROMPT = "last_prompt"
    SUBJECT = "subject"
    PROMPT = "prompt"
    ALL = "all"

    @classmethod
    def parse(cls, value: "str | Positions") -> "Positions":
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown position rule {value!r}; choose one of: {names}") from None


@dataclass
class TokenInfo:
    """Per-forward facts the attention mask cannot tell: where prompts end and subjects lie.

    Both masks are ``(batch, seq)`` booleans over absolute positions of the *full* sequence
    (past tokens included). They may be narrower than the sequence; missing columns count
    as ``False``. ``trained_from`` (batch,), set only by the Editor's training forwards, is
    the first absolute column of each row where the edit being trained may write
    (:meth:`~repedit.methods.base.Intervention.training_start`).
    """

    prompt_mask: torch.Tensor | None = None
    subject_mask: torch.Tensor | None = None
    trained_from: torch.Tensor | None = None


_TOKEN_INFO: contextvars.ContextVar[TokenInfo | None] = contextvars.ContextVar(
    "repedit_token_info", default=None
)


@contextlib.contextmanager
def token_info(
    prompt_mask: torch.Tensor | None = None, subject_mask: torch.Tensor | None = None,
    trained_from: torch.Tensor | None = None,
) -> Iterator[TokenInfo]:
    """Tell every wrapped model which tokens are prompt and subject tokens while inside."""
    info = TokenInfo(prompt_mask=prompt_mask, subject_mask=subject_mask, trained_from=trained_from)
    token = _TOKEN_INFO.set(info)
    try:
        yield info
    finally:
        _TOKEN_INFO.reset(token)


def trained_columns(ctx: Any, width: int, device: torch.device) -> torch.Tensor | None:
    """(B, width) mask of the columns of this forward where the edit being trained may
    write (from each row's ``TokenInfo.trained_from`` on), or None when no forward of the
    Editor's training set it. For methods' ``forward``/``edit`` in training mode."""
    start = getattr(getattr(ctx, "info", None), "trained_from", None)
    if start is None:
        return None
    cols = ctx.past_len + torch.arange(width, device=device)
    return cols[None, :] >= start.to(device)[:, None]


def current_token_info() -> TokenInfo | None:
    """The :class:`TokenInfo` set by the innermost :func:`token_info`, if any."""
    return _TOKEN_INFO.get()


def _fit(mask: torch.Tensor, width: int, device: torch.device) -> torch.Tensor:
    """Pad with False or cut a (B, T') mask to (B, width)."""
    mask = mask.to(device=device, dtype=torch.bool)
    t = mask.shape[1]
    if t == width:
        return mask
    if t > width:
        return mask[:, :width]
    pad = torch.zeros(mask.shape[0], width - t, dtype=torch.bool, device=device)
    return torch.cat([mask, pad], dim=1)


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True per row of a (B, T) mask (0 for an all-False row); no host sync."""
    t = mask.shape[-1]
    ar = torch.arange(1, t + 1, device=mask.device)
    return (mask.long() * ar).argmax(dim=-1)


def rule_mask(
    rule: Positions,
    attention_mask: torch.Tensor,
    past_len: int,
    prompt_width: int,
    info: TokenInfo | None,
) -> torch.Tensor:
    """Boolean (B, T_new) mask of the new tokens a rule acts on.

    ``attention_mask`` covers past and new tokens (B, T_total); ``past_len`` is the number
    of cached tokens (a Python int taken from shapes, never from tensor values);
    ``prompt_width`` is the padded width of the prompt recorded at prefill.
    """
    total = attention_mask.shape[1]
    device = attention_mask.device
    attended = attention_mask.to(torch.bool)
    if rule is Positions.ALL:
        full = attended
    else:
        if info is not None and info.prompt_mask is not None:
            prompt = _fit(info.prompt_mask, total, device) & attended
        else:
            prompt = attended.clone()
            if prompt_width < total:
                prompt[:, prompt_width:] = False
        if rule is Positions.PROMPT:
            full = prompt
        elif rule is Positions.LAST_PROMPT:
            idx = last_true_index(prompt)
            full = torch.zeros_like(prompt)
            full.scatter_(1, idx[:, None], prompt.gather(1, idx[:, None]))
        elif rule is Positions.SUBJECT:
            if info is None or info.subject_mask is None:
                raise ValueError(
                    "the 'subject' position rule needs subject tokens: run the forward inside "
                    "repedit.positions.token_info(subject_mask=...) (encode() builds it), or use "
                    "EditableModel.generate(prompts, subjects=...)"
                )
            full = _fit(info.subject_mask, total, device) & prompt
        else:  # pragma: no cover - enum is closed
            raise ValueError(rule)
    return full[:, past_len:]


@dataclass
class EncodedBatch:
    """A tokenised batch with the masks repedit needs.

    ``prompt_mask``, ``subject_mask`` and ``target_mask`` are (B, T) booleans;
    ``labels`` holds target token ids where ``target_mask`` is set and -100 elsewhere,
    already aligned with the logits that predict them (``labels[:, t]`` is predicted by
    ``logits[:, t - 1]``, as HF's causal-LM loss expects).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    subject_mask: torch.Tensor
    target_mask: torch.Tensor
    labels: torch.Tensor
    #: explicit positions (B, T), set by :meth:`aligned_at` (rows padded on both sides);
    #: None: the model counts from 0 (right padding)
    position_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "EncodedBatch":
        return EncodedBatch(**{k: (v.to(device) if v is not None else None) for k, v in self.__dict__.items()})

    def model_inputs(self) -> dict:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids
        return out

    def info(self, trained_from: torch.Tensor | None = None) -> contextlib.AbstractContextManager:
        """``with batch.info(): model(**batch.model_inputs())``."""
        return token_info(prompt_mask=self.prompt_mask, subject_mask=self.subject_mask, trained_from=trained_from)

    def aligned_at(self, column: torch.Tensor) -> tuple["EncodedBatch", int]:
        """The same rows shifted right so that each row's ``column[i]`` lands at one column
        ``P = max(column)``: (the aligned batch, ``P``). Rows are padded on the left and the
        right, with ``position_ids`` that keep every token's position, so a forward over
        the aligned batch gives each real token the states it has here.

        Example::

            aligned, p = batch.aligned_at(torch.tensor([3, 1]))   # both rows' columns 3 / 1 at p = 3
        """
        column = column.to("cpu", torch.long)
        first = int(column.max())
        shift = first - column
        n, t = self.input_ids.shape
        full = t + int(shift.max())
        ends = last_true_index(self.attention_mask.bool()).cpu() + 1  # right padding stays behind the row
        width = int((ends + shift).max())
        dev = self.input_ids.device
        rows = torch.arange(n, device=dev)[:, None]
        cols = torch.arange(t, device=dev)[None, :] + shift.to(dev)[:, None]
        # the positions the model gives these tokens now: explicit, else the column (HF's default)
        pos = self.position_ids if self.position_ids is not None else torch.arange(t, device=dev).expand(n, t)
        padded = self.attention_mask == 0
        pad = int(self.input_ids[padded][0]) if bool(padded.any()) else 0

        def moved(x: torch.Tensor, fill) -> torch.Tensor:
            out = torch.full((n, full), fill, dtype=x.dtype, device=dev)
            out[rows, cols] = x
            return out[:, :width]

        aligned = EncodedBatch(
            moved(self.input_ids, pad), moved(self.attention_mask, 0), moved(self.prompt_mask, False),
            moved(self.subject_mask, False), moved(self.target_mask, False), moved(self.labels, -100),
            moved(pos, 0),
        )
        return aligned, first


def length_chunks(tokenizer, texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of ``texts`` in chunks of at most ``batch_size``, longest token count first, so
    that a batched forward over each chunk pads little (a capture over unsorted sentences of
    WikiText pads about half its tokens). Each index appears once.

    Example::

        for idx in length_chunks(tok, texts, 64):
            batch = encode(tok, [texts[i] for i in idx])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]] if texts else []
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _token_ids_with_offsets(tokenizer, text: str, add_special: bool):
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def encode(
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str] | None = None,
    subjects: Sequence[str | None] | None = None,
    padding_side: str = "right",
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> EncodedBatch:
    """Tokenise prompts (and optional continuations) into a padded batch with masks.

    The prompt and the continuation are tokenised separately and concatenated, so the
    boundary is exact whatever the tokenizer merges. Subject tokens are the prompt tokens
    whose character offsets overlap the first occurrence of the subject in the prompt.

    Example::

        b = encode(tok, ["Paris is in"], [" France"], subjects=["Paris"])
        b.subject_mask  # True over the tokens of "Paris"
    """
    if isinstance(prompts, str):
        raise TypeError("encode() takes a list of prompts, not a single string")
    n = len(prompts)
    if continuations is not None and len(continuations) != n:
        raise ValueError(f"{n} prompts but {len(continuations)} continuations")
    if subjects is not None and len(subjects) != n:
        raise ValueError(f"{n} prompts but {len(subjects)} subjects")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    rows = []
    for i, prompt in enumerate(prompts):
        ids, offsets = _token_ids_with_offsets(tokenizer, prompt, add_special_tokens)
        subj = [False] * len(ids)
        subject = subjects[i] if subjects is not None else None
        if subject:
            start = prompt.find(subject)
            if start < 0:
                raise ValueError(f"subject {subject!r} does not occur in prompt {i}: {prompt!r}")
            end = start + len(subject)
            subj = [(e > start and s < end and e > s) for s, e in offsets]
        cont_ids: list[int] = []
        if continuations is not None and continuations[i]:
            cont_ids = list(tokenizer(continuations[i], add_special_tokens=False)["input_ids"])
        rows.append((ids, subj, cont_ids))

    lengths = [len(p) + len(c) for p, _, c in rows]
    width = max(lengths)
    if max_length is not None and width > max_length:
        row = lengths.index(width)
        raise ValueError(f"row {row} (prompt {prompts[row][:60]!r}) is {width} tokens with its continuation, over max_length={max_length}")
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    pmask = torch.zeros((n, width), dtype=torch.bool)
    smask = torch.zeros((n, width), dtype=torch.bool)
    tmask = torch.zeros((n, width), dtype=torch.bool)
    for i, (ids, subj, cont) in enumerate(rows):
        length = len(ids) + len(cont)
        off = width - length if padding_side == "left" else 0
        seq = ids + cont
        input_ids[i, off : off + length] = torch.tensor(seq, dtype=torch.long)
        attn[i, off : off + length] = 1
        pmask[i, off : off + len(ids)] = True
        if any(subj):
            smask[i, off : off + len(ids)] = torch.tensor(subj, dtype=torch.bool)
        tmask[i, off + len(ids) : off + length] = True
    labels = torch.where(tmask, input_ids, torch.full_like(input_ids, -100))
    return EncodedBatch(input_ids, attn, pmask, smask, tmask, labels)
