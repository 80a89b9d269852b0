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
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from repedit.corpus import Corpus, resolve_corpus
from repedit.edit_config import EditorConfig, config_dict, resolve_config
from repedit.edit_results import EditResult, RequestOutcome, _mark_verified, _target_stats, target_nll, target_positions
from repedit.hooks import Attachment, EditableModel
from repedit.positions import EncodedBatch, encode
from repedit.requests import EditRequest, validate_requests
from repedit.training_forward import TrainingForwardMixin
from repedit.training_prompts import TrainingPromptsMixin
from repedit.session import EditSession

logger = logging.getLogger(__name__)

# EditorConfig (edit_config.py), EditSession (session.py), the outcomes and target statistics
# (edit_results.py) are re-exported here, where the Editor uses them.
__all__ = ["EditorConfig", "EditSession", "RequestOutcome", "EditResult", "Editor", "target_nll", "target_positions",
           "resolve_config", "config_dict"]


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class Editor(TrainingPromptsMixin, TrainingForwardMixin):
    """Trains interventions so a model produces new targets for edit requests.

    Args:
        model: a causal LM, or an :class:`EditableModel` to add edits to.
        tokenizer: the model's tokenizer (taken from the EditableModel if omitted).
        config: an :class:`EditorConfig`.
    """

    #: training forwards start at the edited layer, from states captured once per edit
    #: (:mod:`repedit.resume`; the same logits and gradients as the full forward)
    resume_forward: bool = True
    #: when the trained edits write only from a column on (``Intervention.training_start``),
    #: the columns before it are computed once per edit (:mod:`repedit.prefix`; the same
    #: logits and gradients)
    split_prefix: bool = True

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
                corpus = resolve_corpus(self.config.corpus, self.edited.model, self.tokenizer)
            if self.config.entity_names is not None:
                corpus = corpus.with_names(self.config.entity_names)
            self._corpus = corpus
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

    def cached(self, kind: str, build: Callable[[], dict[str, torch.Tensor]], *, autocast: bool = False,
               **parts: Any) -> dict[str, torch.Tensor]:
        """Tensors that depend only on the model and ``parts`` (a fixed corpus's states at a site):
        built once by ``build()``, kept for this editor's lifetime and, with
        ``EditorConfig.disk_cache``, on disk under ``$REPEDIT_CACHE/<kind>/`` keyed by the model's
        fingerprint and ``parts``, so a later process loads them instead. With ``autocast`` and
        ``EditorConfig.mixed_precision`` set, ``build()`` runs in that precision
        (:mod:`repedit.precision`) and the precision is part of the key.

        Example::

            states = editor.cached("corpus_states", lambda: {"h": capture()}, layer=5, corpus=sha)["h"]
        """
        if autocast and self.config.mixed_precision is not None:
            parts = dict(parts, precision=self.config.mixed_precision)
            plain_build = build

            def build() -> dict[str, torch.Tensor]:
                with self._autocast():
                    return plain_build()
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
            model_type = getattr(getattr(self.edited.model, "config", None), "model_type", None)
            layers = self.spec.config_cls.default_layers(self.edited.num_layers, model_type)
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
        for outcome, n in zip(outcomes, session.relation_copies):
            outcome.flags["relation_copies"] = n
        for att in atts:
            att.module.finish_edit(session, outcomes)
        if self.config.verify and trained:
            self._verify(session, fixed, outcomes)
        return outcomes

    def _start_session(self, reqs: list[EditRequest], indices: list[int],
                       all_requests: list[EditRequest] | None) -> EditSession:
        """The training prompts of ``reqs`` encoded with their targets, in an :class:`EditSession`."""
        prompts, owners, relation_copies = self._training_prompts(reqs, indices)
        end = self._answer_end()
        batch = encode(
            self.tokenizer, prompts, [" " + reqs[o].target_new.lstrip() + end for o in owners],
            [reqs[o].subject for o in owners],
        ).to(self.device)
        return EditSession(self, reqs, indices, batch, all_requests, prompts, owners, relation_copies)

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
                out = self._forward(session, fixed)
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
        fixed = fixed.get("full", fixed)
        if self.config.mixed_precision is not None:  # its states below the edited layer were captured in that precision
            fixed = {k: v for k, v in fixed.items() if k != "resume"}
        with torch.no_grad():
            out = self._forward(session, fixed, mixed=False)
        _, row_prob, ok = self._stats(session, fixed, out)
        _mark_verified(outcomes, ok, row_prob[: len(outcomes)].float().cpu())

    def _row_stats(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, prob_valid: torch.Tensor,
                   owner_t: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-row target NLL, per-row target probability, per-request reached) from the
        logits at the target positions (B, K, V): a request is reached once its prompt and every
        augmented copy predict every target token as the argmax and the answer (``prob_valid``:
        the target without a trained answer end) with probability at least ``stop_prob``."""
        row_nll, row_correct, row_prob = _target_stats(logits, target, valid, prob_valid)
        row_ok = (row_correct & (row_prob >= self.config.stop_prob)).cpu()
        reached = torch.zeros(n, dtype=torch.long).index_add_(0, owner_t, (~row_ok).long()) == 0
        return row_nll, row_prob, reached


