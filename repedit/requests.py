"""Edit requests: what to change in the model, and how to check it.

An :class:`EditRequest` uses EasyEdit's field names::

    from repedit.requests import EditRequest

    req = EditRequest(
        prompt="The mother tongue of Danielle Darrieux is",
        target_new="English",
        subject="Danielle Darrieux",
        ground_truth="French",
        rephrase_prompts=["Where Danielle Darrieux is from, people speak the language of"],
        locality_prompts=[{"prompt": "Michel Rocard is a native speaker of", "ground_truth": "French"}],
        case_id=0,
    )
    req.relation  # 'The mother tongue of {} is'
    req.validate()

Targets are stored without a leading space; the evaluation code adds ``" "`` before
tokenising a continuation (EasyEdit and ROME both feed ``prompt + " " + target``).

:func:`validate_requests` checks a whole list before any editing or evaluation starts, and
every error names the field and the record (its ``case_id``, or its index in the list).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = ["LocalityPrompt", "EditRequest", "validate_requests", "normalize_text", "REQUEST_FIELDS"]

#: The fields of :meth:`EditRequest.to_dict`, in order (also the columns of the eval loaders).
REQUEST_FIELDS: tuple[str, ...] = (
    "prompt",
    "target_new",
    "subject",
    "ground_truth",
    "rephrase_prompts",
    "locality_prompts",
    "portability",
    "case_id",
    "relation",
    "subject_locality_prompts",
)

# Above this, ``tokenizer.model_max_length`` is HF's "unknown" placeholder, not a real limit.
_UNKNOWN_MAX_LENGTH = 10**6


@dataclass
class LocalityPrompt:
    """A prompt with its expected answer: used for locality (neighbourhood) and portability checks.

    Example::

        LocalityPrompt.from_dict({"prompt": "Michel Rocard is a native speaker of", "ground_truth": "French"})
        LocalityPrompt.from_dict(("Michel Rocard is a native speaker of", "French"))
    """

    prompt: str
    ground_truth: str

    @classmethod
    def from_dict(cls, value: "LocalityPrompt | Mapping[str, Any] | Sequence[str]") -> "LocalityPrompt":
        """Build from a ``{"prompt", "ground_truth"}`` mapping or a ``(prompt, ground_truth)`` pair."""
        if isinstance(value, LocalityPrompt):
            return value
        if isinstance(value, Mapping):
            extra = set(value) - {"prompt", "ground_truth"}
            if extra or "prompt" not in value or "ground_truth" not in value:
                raise ValueError(
                    "a locality/portability item needs exactly the keys 'prompt' and 'ground_truth', "
                    f"got {sorted(value)}"
                )
            return cls(prompt=value["prompt"], ground_truth=value["ground_truth"])
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(prompt=value[0], ground_truth=value[1])
        raise ValueError(
            "a locality/portability item must be a {'prompt': ..., 'ground_truth': ...} mapping "
            f"or a (prompt, ground_truth) pair, got {type(value).__name__}: {value!r:.80}"
        )

    def to_dict(self) -> dict[str, str]:
        """``{"prompt": ..., "ground_truth": ...}``."""
        return {"prompt": self.prompt, "ground_truth": self.ground_truth}


def _coerce_items(items: Any) -> Any:
    """Turn well-formed dicts/pairs into LocalityPrompts; leave anything else for validate() to report."""
    if items is None:
        return []
    if isinstance(items, tuple):
        items = list(items)
    if not isinstance(items, list):
        return items
    out = []
    for item in items:
        try:
            out.append(LocalityPrompt.from_dict(item))
        except ValueError:
            out.append(item)
    return out


@dataclass
class EditRequest:
    """One fact to edit, with the prompts used to check the edit.

    ``relation`` is the prompt with the subject replaced by ``"{}"``; it is derived when not
    given, and identifies facts of the same relation (used to build negative samples).

    Example::

        req = EditRequest("The capital of France is", "Rome", subject="France", ground_truth="Paris")
        req.relation   # 'The capital of {} is'
        EditRequest.from_dict(req.to_dict()) == req   # True
    """

    prompt: str
    target_new: str
    subject: str | None = None
    ground_truth: str | None = None
    rephrase_prompts: list[str] = field(default_factory=list)
    locality_prompts: list[LocalityPrompt] = field(default_factory=list)
    portability: list[LocalityPrompt] = field(default_factory=list)
    case_id: int | str | None = None
    relation: str | None = None
    #: prompts about the same subject with other relations (EasyEdit KnowEdit's
    #: "Relation_Specificity"): the edit should leave their answers as they were
    subject_locality_prompts: list[LocalityPrompt] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rephrase_prompts is None:
            self.rephrase_prompts = []
        elif isinstance(self.rephrase_prompts, tuple):
            self.rephrase_prompts = list(self.rephrase_prompts)
        self.locality_prompts = _coerce_items(self.locality_prompts)
        self.portability = _coerce_items(self.portability)
        self.subject_locality_prompts = _coerce_items(self.subject_locality_prompts)
        if (
            self.relation is None
            and isinstance(self.subject, str)
            and self.subject
            and isinstance(self.prompt, str)
            and self.subject in self.prompt
        ):
            self.relation = self.prompt.replace(self.subject, "{}")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict with the fields of :data:`REQUEST_FIELDS`."""
        return {
            "prompt": self.prompt,
            "target_new": self.target_new,
            "subject": self.subject,
            "ground_truth": self.ground_truth,
            "rephrase_prompts": list(self.rephrase_prompts),
            "locality_prompts": [
                p.to_dict() if isinstance(p, LocalityPrompt) else p for p in self.locality_prompts
            ],
            "portability": [p.to_dict() if isinstance(p, LocalityPrompt) else p for p in self.portability],
            "case_id": self.case_id,
            "relation": self.relation,
            "subject_locality_prompts": [
                p.to_dict() if isinstance(p, LocalityPrompt) else p for p in self.subject_locality_prompts
            ],
        }

    def evaluation_prompts(self) -> set[str]:
        """The normalised texts of every prompt that scores this request without being its edit
        prompt (rephrase, locality, portability and subject-locality prompts): what training
        and sample generation must never use.

        Example::

            "where is it" in EditRequest("p", "t", rephrase_prompts=["Where is it?"]).evaluation_prompts()
        """
        out = {normalize_text(p) for p in (self.rephrase_prompts or []) if isinstance(p, str)}
        for item in list(self.locality_prompts or []) + list(self.portability or []) + list(self.subject_locality_prompts or []):
            prompt = item.prompt if isinstance(item, LocalityPrompt) else (item.get("prompt") if isinstance(item, dict) else None)
            if isinstance(prompt, str):
                out.add(normalize_text(prompt))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], index: int | None = None) -> "EditRequest":
        """Build from a :meth:`to_dict`-style mapping; unknown or missing fields raise ValueError.

        ``index`` (the record's position in its file or list) only makes error messages precise.
        """
        where = _where(data.get("case_id") if isinstance(data, Mapping) else None, index)
        if not isinstance(data, Mapping):
            raise ValueError(f"EditRequest {where}: expected a JSON object, got {type(data).__name__}")
        unknown = [k for k in data if k not in REQUEST_FIELDS]
        if unknown:
            raise ValueError(
                f"EditRequest {where}: unknown field {unknown[0]!r}; allowed fields: {', '.join(REQUEST_FIELDS)}"
            )
        for required in ("prompt", "target_new"):
            if required not in data:
                raise ValueError(f"EditRequest {where}: field {required!r} is missing")
        for name in ("locality_prompts", "portability", "subject_locality_prompts"):
            items = data.get(name)
            if isinstance(items, (list, tuple)):
                for j, item in enumerate(items):
                    if not isinstance(item, LocalityPrompt):
                        try:
                            LocalityPrompt.from_dict(item)
                        except ValueError as e:
                            raise ValueError(f"EditRequest {where}: field '{name}[{j}]': {e}") from None
        return cls(**{k: data[k] for k in REQUEST_FIELDS if k in data})

    # ------------------------------------------------------------------ validation
    def validate(self, tokenizer: Any = None, max_length: int | None = None, index: int | None = None) -> "EditRequest":
        """Check types and contents; raise ValueError naming the field and the record.

        With a ``tokenizer``, also checks that each prompt plus its answer fits in
        ``max_length`` tokens (default: ``tokenizer.model_max_length`` when that is a real limit).
        Returns ``self`` so calls chain.

        Example::

            EditRequest("The capital of France is", " ").validate()
            # ValueError: EditRequest index 0: field 'target_new': must be a non-empty string ...
        """
        self._validate_structure(index)
        if tokenizer is not None:
            _check_lengths([self], [index], tokenizer, max_length)
        return self

    def _where(self, index: int | None) -> str:
        return _where(self.case_id, index)

    def _validate_structure(self, index: int | None) -> None:
        def fail(name: str, msg: str) -> None:
            raise ValueError(f"EditRequest {self._where(index)}: field {name!r}: {msg}")

        def check_text(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if not isinstance(value, str):
                fail(name, f"must be a string, got {type(value).__name__}")
            if not value.strip():
                fail(name, f"must be a non-empty string, got {value!r}")

        check_text("prompt", self.prompt)
        check_text("target_new", self.target_new)
        check_text("ground_truth", self.ground_truth, allow_none=True)
        check_text("subject", self.subject, allow_none=True)
        if self.subject is not None and self.subject not in self.prompt:
            fail("subject", f"{self.subject!r} does not occur in the prompt {self.prompt!r}")
        if isinstance(self.case_id, bool) or not (self.case_id is None or isinstance(self.case_id, (int, str))):
            fail("case_id", f"must be an int, a str or None, got {type(self.case_id).__name__}")
        if self.relation is not None:
            check_text("relation", self.relation)
            if "{}" not in self.relation:
                fail("relation", f"must contain '{{}}' where the subject goes, got {self.relation!r}")
        if not isinstance(self.rephrase_prompts, list):
            hint = " (wrap a single prompt in a list)" if isinstance(self.rephrase_prompts, str) else ""
            fail("rephrase_prompts", f"must be a list of str, got {type(self.rephrase_prompts).__name__}{hint}")
        for j, p in enumerate(self.rephrase_prompts):
            check_text(f"rephrase_prompts[{j}]", p)
        for name in ("locality_prompts", "portability", "subject_locality_prompts"):
            items = getattr(self, name)
            if not isinstance(items, list):
                fail(name, f"must be a list of {{'prompt', 'ground_truth'}} items, got {type(items).__name__}")
            for j, item in enumerate(items):
                if not isinstance(item, LocalityPrompt):
                    fail(
                        f"{name}[{j}]",
                        "must be a {'prompt': str, 'ground_truth': str} mapping or a (prompt, ground_truth) "
                        f"pair, got {type(item).__name__}: {item!r:.80}",
                    )
                check_text(f"{name}[{j}].prompt", item.prompt)
                check_text(f"{name}[{j}].ground_truth", item.ground_truth)

    def _text_pairs(self) -> list[tuple[str, str, str]]:
        """(field name, prompt, answer) for every forward the evaluation will run."""
        pairs = [("prompt", self.prompt, self.target_new)]
        if self.ground_truth is not None:
            pairs.append(("prompt", self.prompt, self.ground_truth))
        pairs += [(f"rephrase_prompts[{j}]", p, self.target_new) for j, p in enumerate(self.rephrase_prompts)]
        pairs += [(f"locality_prompts[{j}]", p.prompt, p.ground_truth) for j, p in enumerate(self.locality_prompts)]
        pairs += [(f"portability[{j}]", p.prompt, p.ground_truth) for j, p in enumerate(self.portability)]
        pairs += [(f"subject_locality_prompts[{j}]", p.prompt, p.ground_truth)
                  for j, p in enumerate(self.subject_locality_prompts)]
        return pairs


def normalize_text(text: str) -> str:
    """Lower case, one space, no trailing punctuation: how prompts are compared for leakage."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" ?.:!")


def _where(case_id: Any, index: int | None) -> str:
    parts = []
    if case_id is not None:
        parts.append(f"case_id={case_id!r}")
    if index is not None:
        parts.append(f"index {index}")
    return " ".join(parts) if parts else "(no case_id)"


def _resolve_max_length(tokenizer: Any, max_length: int | None) -> int | None:
    if max_length is not None:
        return int(max_length)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _UNKNOWN_MAX_LENGTH:
        return limit
    return None


def _check_lengths(
    requests: Sequence[EditRequest], indices: Sequence[int | None], tokenizer: Any, max_length: int | None
) -> None:
    """Tokenise every (prompt, answer) pair in two batched calls and compare with the limit."""
    limit = _resolve_max_length(tokenizer, max_length)
    if limit is None:
        return
    owners: list[tuple[int, str]] = []
    prompts: list[str] = []
    answers: list[str] = []
    for k, req in enumerate(requests):
        for name, p, a in req._text_pairs():
            owners.append((k, name))
            prompts.append(p)
            answers.append(" " + a)
    if not prompts:
        return
    # Same scheme as repedit.positions.encode: prompt with special tokens, continuation without.
    p_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    a_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    for (k, name), p, a in zip(owners, p_ids, a_ids):
        n = len(p) + len(a)
        if n > limit:
            where = requests[k]._where(indices[k])
            raise ValueError(
                f"EditRequest {where}: field {name!r}: the prompt with its answer is {n} tokens, "
                f"over the model context of {limit} tokens"
            )


def validate_requests(
    requests: Iterable[EditRequest | Mapping[str, Any]],
    tokenizer: Any = None,
    max_length: int | None = None,
) -> list[EditRequest]:
    """Validate every request before anything runs; return them as a list of EditRequest.

    Mappings are converted with :meth:`EditRequest.from_dict`. The first problem raises a
    ValueError naming the field and the record (``case_id`` and list index).

    Example::

        reqs = validate_requests([{"prompt": "The capital of France is", "target_new": "Rome"}], tok)
    """
    out: list[EditRequest] = []
    for i, r in enumerate(requests):
        if isinstance(r, Mapping):
            r = EditRequest.from_dict(r, index=i)
        elif not isinstance(r, EditRequest):
            raise ValueError(f"EditRequest index {i}: expected an EditRequest or a mapping, got {type(r).__name__}")
        r._validate_structure(i)
        out.append(r)
    if tokenizer is not None and out:
        _check_lengths(out, list(range(len(out))), tokenizer, max_length)
    logger.debug("validated %d edit requests", len(out))
    return out
