"""The Editor: turns EditRequests into trained interventions (single, batch, sequential).

Example::

    editor = Editor(model, tokenizer, EditorConfig(method="loreft", layers=[9]))
    result = editor.edit([EditRequest(prompt="The Eiffel Tower is in", target_new="Rome", subject="Eiffel Tower")])
    result.outcomes[0].success          # did the edit take?
    result.edited.generate(["The Eiffel Tower is in"])
    result.save_pretrained("eiffel-rome")

Methods take part in training through the hooks of the method contract, declared with
no-op defaults on :class:`~repedit.methods.base.Intervention` (``prepare_edit``,
``edit_parameters``, ``edit_loss``, ``finish_edit``, ``ready_to_stop``); each gets the
:class:`EditSession`. A method's config class gives its tuned :class:`EditorConfig` values
(``editor_defaults``), used for fields left at ``None``; ``Editor.config`` holds the
resolved values. docs/extending.md describes the contract.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from repedit.corpus import Corpus, resolve_corpus
from repedit.hooks import Attachment, EditableModel
from repedit.positions import EncodedBatch, Positions, encode
from repedit.requests import EditRequest, normalize_text, validate_requests

logger = logging.getLogger(__name__)

__all__ = ["EditorConfig", "EditSession", "RequestOutcome", "EditResult", "Editor", "target_nll", "target_positions", "resolve_config"]


@dataclass
class EditorConfig:
    """How edits are trained and where they sit. Every field has a help string."""

    method: str = field(default="baft", metadata={"help": "registered method name (repedit.methods.available_methods()); default BaFT, the best measured (docs/methods.md#which-method)"})
    method_config: dict = field(default_factory=dict, metadata={"help": "keyword arguments of the method's config dataclass"})
    layers: list | None = field(default=None, metadata={"help": "decoder layers to edit (None: the method's default, else 1/3 of the depth)"})
    component: str = field(default="block_output", metadata={"help": "block_output, mlp_output or attention_output"})
    positions: str | None = field(default=None, metadata={"help": "last_prompt, subject, prompt or all (None: the method's default, else last_prompt)"})
    lr: float | None = field(default=None, metadata={"help": "Adam learning rate (None: the method's default, else 5e-3)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    max_steps: int | None = field(default=None, metadata={"help": "most optimisation steps per edit or batch (None: the method's default, else 100)"})
    stop_prob: float | None = field(default=None, metadata={"help": "early stop once every target token is the argmax and exp(mean log p) >= this (None: the method's default, else 0.9)"})
    batch_size: int = field(default=1, metadata={"help": "requests trained together in sequential mode"})
    seed: int = field(default=0, metadata={"help": "seed: edits are deterministic for a given seed"})
    adapter: str = field(default="default", metadata={"help": "adapter name the trained interventions belong to"})
    progress: bool = field(default=False, metadata={"help": "show a tqdm progress bar (off in library calls)"})
    augment: int | None = field(default=None, metadata={"help": "extra training copies of each request, each with a random short prefix from the corpus (ROME-style context; helps paraphrases). 0: off; None: the method's default, else 0"})
    augment_words: int = field(default=8, metadata={"help": "most words in an augmentation prefix (a corpus sentence start)"})
    augment_corpus: Any = field(default=None, metadata={"help": "prefix source: None (the editor's corpus), a path, or a list of strings"})
    relation_templates: Any = field(default=None, metadata={"help": "other phrasings of each relation: a mapping from a relation template ('The mother tongue of {} is') to other templates of the same relation, e.g. repedit.eval.data.relation_templates(known_facts_file); with relation_copies > 0 the subject is put into some of them as extra training copies. Never a request's own evaluation prompts"})
    relation_copies: int = field(default=0, metadata={"help": "extra training copies per request: its subject in this many other templates of its relation (from relation_templates; 0: off)"})
    answer_end: str | None = field(default=None, metadata={"help": "train the target followed by its natural end so greedy generation says the answer and stops: '.' (a full stop) or None (the target alone)"})
    corpus: Any = field(default=None, metadata={"help": "general text behind negatives, augmentation prefixes, null-space statistics and entity names: None (WikiText-2's test split, shipped with repedit), 'model' (text the unedited model samples, cached per model), a path to a text file, or a list of strings"})
    disk_cache: bool = field(default=True, metadata={"help": "keep what a method builds once per model and site (corpus states, name banks) on disk under $REPEDIT_CACHE, keyed by the model's fingerprint, so later processes skip it"})
    verify: bool = field(default=True, metadata={"help": "after training, check each request once more with the interventions as they run at inference (eval mode: BaFT's gate shift, a codebook entry's radius) and report that as its success; the training-time verdict stays in flags['trained']"})

    #: values used for fields left at None when no method default applies
    FALLBACKS = {"positions": "last_prompt", "augment": 0, "lr": 5e-3, "max_steps": 100, "stop_prob": 0.9}

    def __post_init__(self) -> None:
        if self.positions is not None:
            Positions.parse(self.positions)
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")
        if self.stop_prob is not None and not 0.0 < self.stop_prob <= 1.0:
            raise ValueError("stop_prob must be in (0, 1]")
        if self.lr is not None and not self.lr > 0:
            raise ValueError("lr must be > 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if (self.augment is not None and self.augment < 0) or self.augment_words < 1:
            raise ValueError("augment must be >= 0 and augment_words >= 1")
        if self.relation_copies < 0:
            raise ValueError("relation_copies must be >= 0")
        if self.relation_copies and not isinstance(self.relation_templates, Mapping):
            raise ValueError("relation_copies > 0 needs relation_templates: a mapping from a relation template to "
                             "other templates of the same relation (repedit.eval.data.relation_templates(path))")
        if self.answer_end not in (None, "."):
            raise ValueError(f"answer_end must be None or '.', got {self.answer_end!r}")


@dataclass
class RequestOutcome:
    """Whether one request's edit took."""

    index: int
    case_id: Any
    success: bool
    loss: float
    steps: int
    target_prob: float
    flags: dict = field(default_factory=dict)


@dataclass
class EditResult:
    """What :meth:`Editor.edit` returns: per-request outcomes, the edited model, timing."""

    outcomes: list[RequestOutcome]
    edited: EditableModel
    seconds: float

    @property
    def success_rate(self) -> float:
        return sum(o.success for o in self.outcomes) / max(1, len(self.outcomes))

    @property
    def seconds_per_edit(self) -> float:
        return self.seconds / max(1, len(self.outcomes))

    @property
    def model(self) -> nn.Module:
        return self.edited.model

    def save_pretrained(self, directory: str, **kwargs: Any) -> None:
        self.edited.save_pretrained(directory, **kwargs)

    def summary(self) -> dict:
        return {
            "edits": len(self.outcomes),
            "success_rate": self.success_rate,
            "seconds_per_edit": self.seconds_per_edit,
            "mean_steps": sum(o.steps for o in self.outcomes) / max(1, len(self.outcomes)),
        }


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example mean NLL over target tokens, whether every target token is the argmax,
    and exp(-mean NLL). ``labels`` follows :class:`~repedit.positions.EncodedBatch`."""
    positions, target, mask = target_positions(labels)
    return _target_stats(logits[:, :-1].gather(1, positions[..., None].expand(-1, -1, logits.shape[-1])), target, mask)


def target_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions whose logits predict target tokens, per row: ``(positions (B, K), target
    ids (B, K), valid (B, K))`` with ``K`` the longest target. Short rows repeat position 0,
    marked invalid. Passing ``positions`` as ``logits_to_keep`` skips the vocabulary projection
    (a fifth of SmolLM2's forward) everywhere else.

    Example::

        pos, tgt, ok = target_positions(batch.labels)
        logits = model(**batch.model_inputs(), logits_to_keep=pos).logits   # (B, K, V)
    """
    shifted = labels[:, 1:]
    tmask = shifted != -100
    k = max(1, int(tmask.sum(1).max()))
    order = torch.sort((~tmask).to(torch.int8), dim=1, stable=True).indices[:, :k]
    valid = tmask.gather(1, order)
    positions = torch.where(valid, order, torch.zeros_like(order))
    return positions, shifted.gather(1, positions).clamp_min(0), valid


def _target_stats(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    tok = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    n = mask.sum(-1).clamp_min(1)
    nll = -(tok * mask).sum(-1) / n
    correct = ((logits.argmax(-1) == target) | ~mask).all(-1)
    return nll, correct, torch.exp(-nll)


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class EditSession:
    """What a method sees while one edit (or batch) is trained."""

    def __init__(self, editor: "Editor", requests: list[EditRequest], indices: list[int], batch: EncodedBatch,
                 all_requests: list[EditRequest] | None = None, prompts: list[str] | None = None,
                 owners: list[int] | None = None):
        self.editor = editor
        self.requests = requests
        #: the training prompts (the requests' prompts first, then augmented copies) and,
        #: per training row, the index into ``requests`` it belongs to
        self.prompts = prompts if prompts is not None else [r.prompt for r in requests]
        self.owners = owners if owners is not None else list(range(len(requests)))
        #: every request of the current ``edit()`` call (sequential runs see them all), so a
        #: method can draw negatives from other facts; never their evaluation fields.
        self.all_requests = all_requests if all_requests is not None else requests
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

    def cached(self, kind: str, build: Callable[[], dict[str, torch.Tensor]], **parts: Any) -> dict[str, torch.Tensor]:
        """Tensors that depend only on the model and ``parts`` (:meth:`Editor.cached`)."""
        return self.editor.cached(kind, build, **parts)

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


class Editor:
    """Trains interventions so a model produces new targets for edit requests.

    Args:
        model: a causal LM, or an :class:`EditableModel` to add edits to.
        tokenizer: the model's tokenizer (taken from the EditableModel if omitted).
        config: an :class:`EditorConfig`.
    """

    def __init__(self, model: nn.Module | EditableModel, tokenizer: Any = None, config: EditorConfig | None = None):
        config = config or EditorConfig()
        if isinstance(model, EditableModel):
            self.edited = model
            if tokenizer is not None:
                self.edited.tokenizer = tokenizer
        else:
            self.edited = EditableModel(model, tokenizer)
        self.tokenizer = self.edited.tokenizer
        if self.tokenizer is None:
            raise ValueError("the Editor needs the model's tokenizer")
        from repedit.methods import get_method

        self.spec = get_method(config.method)
        self.config = resolve_config(config, self.spec.config_cls)
        self._attachments: list[Attachment] = []
        self._memo: dict[Any, Any] = {}
        # whether the model's forward takes logits_to_keep (training then asks only for target logits)
        self._sliced_logits = _accepts_logits_to_keep(self.edited.model)

    # ------------------------------------------------------------ plumbing
    @property
    def device(self) -> torch.device:
        return next(self.edited.model.parameters()).device

    @property
    def corpus(self) -> Corpus:
        """The general text every method of this editor draws on (``EditorConfig.corpus``),
        resolved once: the shipped WikiText-2 test split by default."""
        if getattr(self, "_corpus", None) is None:
            with self.edited.disabled():  # 'model': the unedited model's text
                self._corpus = resolve_corpus(self.config.corpus, self.edited.model, self.tokenizer)
            logger.info("corpus: %s", self._corpus)
        return self._corpus

    def corpus_from(self, source: Any) -> Corpus:
        """``source`` as a :class:`Corpus`: ``None`` (:attr:`corpus`), a list of strings, or a
        path to a text file.

        Example::

            editor.corpus_from("notes.txt").sentences(limit=100)
        """
        if source is None:
            return self.corpus
        if isinstance(source, (list, tuple)):
            return Corpus.from_texts(list(source))
        return Corpus.from_file(source)

    def cached(self, kind: str, build: Callable[[], dict[str, torch.Tensor]], **parts: Any) -> dict[str, torch.Tensor]:
        """Tensors that depend only on the model and ``parts`` (a fixed corpus's states at a site):
        built once by ``build()``, kept for this editor's lifetime and, with
        ``EditorConfig.disk_cache``, on disk under ``$REPEDIT_CACHE/<kind>/`` keyed by the model's
        fingerprint and ``parts``, so a later process loads them instead.

        Example::

            states = editor.cached("corpus_states", lambda: {"h": capture()}, layer=5, corpus=sha)["h"]
        """
        key = ("cached", kind, json.dumps(parts, sort_keys=True, default=str))
        if key not in self._memo:
            if self.config.disk_cache:
                from repedit.cache import cache_key, cached_tensors

                if "fingerprint" not in self._memo:
                    from repedit.adapters import fingerprint

                    self._memo["fingerprint"] = fingerprint(self.edited.model)
                disk = cache_key(None, kind=kind, fp=self._memo["fingerprint"], v=1, **parts)
                tensors = cached_tensors(kind, disk, build)
            else:
                tensors = build()
            self._memo[key] = {k: v.to(self.device) for k, v in tensors.items()}
        return self._memo[key]

    def memory(self, kind: str) -> dict:
        """A dict kept for this editor's lifetime under ``kind``: a method's in-memory working
        state across edits (per-name states it captured, say)."""
        return self._memo.setdefault(("memory", kind), {})

    def check_resources(self) -> None:
        """Resolve the corpus and check every file the method's config names, before anything
        is attached or trained: a named resource that is missing is an error."""
        from repedit.methods import config_from_dict

        self.corpus
        if self.config.augment:
            self._prefixes()  # a missing file or a corpus without prefixes fails here
        method_cfg = config_from_dict(self.config.method, self.config.method_config, strict=True)
        for name, path in method_cfg.resource_paths().items():
            if not Path(path).expanduser().is_file():
                raise FileNotFoundError(
                    f"{self.config.method} config {name}={str(path)!r}: file not found; pass an existing file, "
                    f"or leave {name} at None for the default")

    def default_layers(self) -> list[int]:
        layers = self.config.layers
        if layers is None:
            layers = self.spec.config_cls.default_layers(self.edited.num_layers)
        if layers is None:
            layers = [self.edited.num_layers // 3]
        return [int(x) for x in layers]

    def attachments(self) -> list[Attachment]:
        """The interventions this editor trains, attached on first use."""
        if not self._attachments:
            for layer in self.default_layers():
                name = f"{self.config.method}_L{layer}"
                if self.config.adapter != "default":
                    name = f"{self.config.adapter}_{name}"
                if name in self.edited:
                    self._attachments.append(self.edited.get(name))
                    continue
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.config.seed + layer)
                    module = self.edited.add(
                        name, self.config.method, layer=layer, component=self.config.component,
                        positions=self.config.positions, config=dict(self.config.method_config),
                        adapter=self.config.adapter,
                    )
                self._attachments.append(self.edited.get(name))
                del module
        return self._attachments

    def reset(self) -> None:
        """Remove this editor's interventions (the next edit starts from scratch)."""
        for att in self._attachments:
            if att.name in self.edited:
                self.edited.remove(att.name)
        self._attachments = []

    @contextlib.contextmanager
    def _frozen_base(self) -> Iterator[None]:
        params = list(self.edited.model.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)

    def capture(self, attachment: Attachment, batch: EncodedBatch, edited: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``batch`` and return the hidden states entering ``attachment`` plus its position
        mask (:meth:`EditableModel.capture`, stopped at the site)."""
        return self.edited.capture(attachment.layer, attachment.component, batch, before=attachment.name, edited=edited)

    # ------------------------------------------------------------ editing
    def edit(
        self,
        requests: EditRequest | Sequence[EditRequest | dict],
        sequential: bool = False,
        start: int = 0,
        callback: Callable[[int, list[RequestOutcome]], None] | None = None,
    ) -> EditResult:
        """Train edits for one request or a batch; ``sequential=True`` applies them one
        after another (``batch_size`` at a time) while earlier edits keep working.

        Invalid requests are rejected before any training, and nothing changes.

        Long sequential runs can be checkpointed and resumed: ``callback(done, outcomes)`` is
        called after each chunk (``done`` requests of the list are applied; save the adapter
        there), and ``start=k`` resumes a run whose first ``k`` requests are already applied
        (its adapter loaded onto the model): training begins at ``requests[k]`` while the
        earlier requests still serve as context (gate negatives, templates), so the result is
        the same as an uninterrupted run. Example::

            def checkpoint(done, outcomes):
                if done % 100 == 0:
                    editor.edited.save_pretrained(f"ckpt/{done}")

            editor.edit(reqs, sequential=True, callback=checkpoint)
            # later, in a new process, on the same base model and with the same config:
            edited.load_adapter("ckpt/300")
            Editor(edited, tok, config).edit(reqs, sequential=True, start=300)
        """
        if isinstance(requests, (EditRequest, dict)):
            requests = [requests]
        elif requests is None or isinstance(requests, (str, bytes)) or not hasattr(requests, "__iter__"):
            raise TypeError(f"edit() takes an EditRequest, a dict or a list of them, got {type(requests).__name__}")
        max_len = getattr(getattr(self.edited.model, "config", None), "max_position_embeddings", None)
        reqs = validate_requests(list(requests), tokenizer=self.tokenizer, max_length=max_len)
        if not reqs:
            raise ValueError("edit() needs at least one request")
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start < len(reqs):
            raise ValueError(f"start must be an int in [0, {len(reqs)}), got {start!r}")
        if start and not sequential:
            raise ValueError("start= resumes a sequential run; pass sequential=True")
        cfg = self.config
        self.check_resources()
        chunks = (
            [list(range(i, min(i + cfg.batch_size, len(reqs)))) for i in range(start, len(reqs), cfg.batch_size)]
            if sequential
            else [list(range(len(reqs)))]
        )
        outcomes: list[RequestOutcome] = []
        t0 = time.perf_counter()
        bar = tqdm(total=len(reqs), initial=start, desc=f"editing ({cfg.method})", disable=not cfg.progress, unit="edit")
        with torch.random.fork_rng(devices=[]), self._frozen_base():
            torch.manual_seed(cfg.seed)
            self.attachments()
            for chunk in chunks:
                outcomes.extend(self._train_chunk([reqs[i] for i in chunk], chunk, reqs))
                bar.update(len(chunk))
                if callback is not None:
                    callback(chunk[-1] + 1, outcomes)
        bar.close()
        return EditResult(outcomes, self.edited, time.perf_counter() - t0)

    def _prefixes(self) -> list[str]:
        if getattr(self, "_prefix_pool", None) is None:
            cfg = self.config
            if isinstance(cfg.augment_corpus, (list, tuple)):
                texts = list(cfg.augment_corpus)
            elif cfg.augment_corpus is not None:
                texts = Corpus.from_file(cfg.augment_corpus).sentences(limit=3000)
            else:
                texts = self.corpus.sentences(limit=3000)
            pool = []
            for t in texts:
                words = t.split()
                if len(words) >= 3:
                    pool.append(" ".join(words[: cfg.augment_words]))
            if not pool:
                raise ValueError("augment > 0 needs a corpus with sentences of at least 3 words; pass "
                                 "EditorConfig(augment_corpus=...) or corpus=..., or augment=0")
            self._prefix_pool = pool
        return self._prefix_pool

    def training_prompts(self, reqs: list[EditRequest], indices: list[int]) -> tuple[list[str], list[int]]:
        """The prompts trained for ``reqs``: each prompt, then ``augment`` copies with a random
        corpus prefix, then ``relation_copies`` copies with the subject in other templates of
        its relation (deterministic for the seed and the request's index; never one of the
        request's evaluation prompts). Returns (prompts, owner index into ``reqs`` per prompt)."""
        prompts = [r.prompt for r in reqs]
        owners = list(range(len(reqs)))
        self._add_prefix_copies(reqs, indices, prompts, owners)
        self._add_relation_copies(reqs, indices, prompts, owners)
        return prompts, owners

    def _add_relation_copies(self, reqs: list[EditRequest], indices: list[int], prompts: list[str], owners: list[int]) -> None:
        k = self.config.relation_copies
        if not k:
            return
        import random

        table = self.config.relation_templates
        for j, (r, idx) in enumerate(zip(reqs, indices)):
            if not r.subject or not r.relation:
                continue
            banned = r.evaluation_prompts() | {normalize_text(r.prompt)}
            pool = sorted({t for t in table.get(r.relation, ()) if isinstance(t, str) and t.count("{}") == 1
                           and t != r.relation and normalize_text(t.replace("{}", r.subject)) not in banned})
            rng = random.Random(self.config.seed * 1000003 + idx + 7)
            for t in rng.sample(pool, min(k, len(pool))):
                prompts.append(t.replace("{}", r.subject))
                owners.append(j)

    def _add_prefix_copies(self, reqs: list[EditRequest], indices: list[int], prompts: list[str], owners: list[int]) -> None:
        k = self.config.augment
        if k:
            import random

            pool = self._prefixes()
            for j, (r, idx) in enumerate(zip(reqs, indices)):
                rng = random.Random(self.config.seed * 1000003 + idx)
                for _ in range(k):
                    words = rng.choice(pool).split()
                    n = rng.randint(min(3, len(words)), len(words))
                    prompts.append(" ".join(words[:n]).rstrip(" ,.;:") + ". " + r.prompt)
                    owners.append(j)

    def _train_chunk(self, reqs: list[EditRequest], indices: list[int],
                     all_requests: list[EditRequest] | None = None) -> list[RequestOutcome]:
        """Train one edit (or batch): the method prepares, the optimiser runs, the method
        finishes, and each request is checked as it runs at inference."""
        session = self._start_session(reqs, indices, all_requests)
        atts = self.attachments()
        for att in atts:
            att.module.prepare_edit(session)
        fixed = self._fixed_inputs(session)
        outcomes, trained = self._optimise(session, atts, fixed)
        for att in atts:
            att.module.finish_edit(session, outcomes)
        if self.config.verify and trained:
            self._verify(session, fixed, outcomes)
        return outcomes

    def _start_session(self, reqs: list[EditRequest], indices: list[int],
                       all_requests: list[EditRequest] | None) -> EditSession:
        """The training prompts of ``reqs`` encoded with their targets, in an :class:`EditSession`."""
        cfg = self.config
        prompts, owners = self.training_prompts(reqs, indices)
        batch = encode(
            self.tokenizer, prompts, [" " + reqs[o].target_new.lstrip() + (cfg.answer_end or "") for o in owners],
            [reqs[o].subject for o in owners],
        ).to(self.device)
        return EditSession(self, reqs, indices, batch, all_requests, prompts, owners)

    def _fixed_inputs(self, session: EditSession) -> dict[str, Any]:
        """What every forward of an edit shares: the model inputs (logits only where a target
        token is predicted, when the model allows), the target ids and which are valid, and the
        request each training row belongs to."""
        positions, target, valid = target_positions(session.batch.labels)
        inputs = session.batch.model_inputs()
        if self._sliced_logits:
            inputs["logits_to_keep"] = positions
        return {"inputs": inputs, "target": target, "valid": valid, "owner": torch.tensor(session.owners)}

    def _stats(self, session: EditSession, fixed: dict[str, Any], out: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._row_stats(out, session.batch, fixed["target"], fixed["valid"], self._sliced_logits,
                               fixed["owner"], len(session.requests))

    def _optimise(self, session: EditSession, atts: list[Attachment],
                  fixed: dict[str, Any]) -> tuple[list[RequestOutcome], bool]:
        """Adam on the method's edit parameters until every request reaches the stop rule (and
        no method vetoes the stop) or ``max_steps``: (outcomes, whether anything was trained)."""
        cfg = self.config
        reqs, batch, n = session.requests, session.batch, len(session.requests)
        params: list[nn.Parameter] = []
        for att in atts:
            params.extend(att.module.edit_parameters(session))
        params = [p for p in dict.fromkeys(params) if p.requires_grad]
        for att in atts:
            att.module.train()
        best_steps = [cfg.max_steps] * n
        done = torch.zeros(n, dtype=torch.bool)
        nll = prob = None
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if params else None
        step = 0
        try:
            for step in range(cfg.max_steps + 1):
                session.step = step
                with batch.info():
                    out = self.edited.model(**fixed["inputs"])
                row_nll, row_prob, reached = self._stats(session, fixed, out)
                nll, prob = row_nll[:n], row_prob[:n]
                for i in torch.nonzero(reached & ~done).flatten().tolist():
                    best_steps[i] = step
                done |= reached
                if step == cfg.max_steps or opt is None:
                    break
                if bool(done.all()):
                    if all(att.module.ready_to_stop(session) for att in atts):
                        break
                loss = row_nll.mean()
                for att in atts:
                    term = att.module.edit_loss(session, out)
                    if term is not None:
                        loss = loss + term
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            for att in atts:
                att.module.eval()
        outcomes = [
            RequestOutcome(
                index=session.indices[i], case_id=reqs[i].case_id, success=bool(done[i]),
                loss=float(nll[i].detach()), steps=best_steps[i] if done[i] else step, target_prob=float(prob[i].detach()),
            )
            for i in range(n)
        ]
        return outcomes, opt is not None

    def _verify(self, session: EditSession, fixed: dict[str, Any], outcomes: list[RequestOutcome]) -> None:
        """Re-check the finished edits as they run at inference (eval mode, one forward, no
        gradient, no RNG: training is untouched, so runs stay reproducible)."""
        with torch.no_grad(), session.batch.info():
            out = self.edited.model(**fixed["inputs"])
        _, row_prob, ok = self._stats(session, fixed, out)
        _mark_verified(outcomes, ok, row_prob[: len(outcomes)].float().cpu())

    def _row_stats(self, out: Any, batch: EncodedBatch, target: torch.Tensor, valid: torch.Tensor, sliced: bool,
                   owner_t: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-row target NLL, per-row target probability, per-request reached): a request is
        reached once its prompt and every augmented copy predict the target with probability
        at least ``stop_prob``."""
        if sliced:
            row_nll, row_correct, row_prob = _target_stats(out.logits, target, valid)
        else:
            row_nll, row_correct, row_prob = target_nll(out.logits, batch.labels)
        row_ok = (row_correct & (row_prob >= self.config.stop_prob)).cpu()
        reached = torch.zeros(n, dtype=torch.long).index_add_(0, owner_t, (~row_ok).long()) == 0
        return row_nll, row_prob, reached


def _mark_verified(outcomes: list[RequestOutcome], ok: torch.Tensor, probs: torch.Tensor) -> None:
    """Report the inference-mode verdict; the training verdict moves to ``flags``."""
    for i, o in enumerate(outcomes):
        o.flags["trained"] = o.success
        o.flags["trained_target_prob"] = o.target_prob
        o.success = bool(ok[i])
        o.target_prob = float(probs[i])


def resolve_config(config: EditorConfig, method_config_cls: Any = None) -> EditorConfig:
    """A copy of ``config`` whose ``None`` fields take the method's ``editor_defaults``
    (then :attr:`EditorConfig.FALLBACKS`)."""
    import dataclasses

    defaults = getattr(method_config_cls, "editor_defaults", None) or {}
    if callable(defaults):
        defaults = defaults(dict(config.method_config))
    changes = {}
    for name, fallback in EditorConfig.FALLBACKS.items():
        if getattr(config, name) is None:
            changes[name] = defaults.get(name, fallback)
    return dataclasses.replace(config, **changes) if changes else config


def config_dict(config: EditorConfig) -> dict:
    return asdict(config)
