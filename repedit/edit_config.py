"""How edits are trained and where they sit: :class:`EditorConfig`, and the method defaults
that fill its ``None`` fields (:func:`resolve_config`).

Example::

    cfg = resolve_config(EditorConfig(method="loreft"), LoReFTConfig)
    cfg.lr      # 0.02, LoReFT's default
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from repedit.positions import Positions
from repedit.precision import PRECISIONS

__all__ = ["EditorConfig", "resolve_config", "config_dict"]


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
    stop_prob: float | None = field(default=None, metadata={"help": "early stop once every target token is the argmax and exp(mean log p) >= this (see answer_end_stop; None: the method's default, else 0.9)"})
    batch_size: int = field(default=1, metadata={"help": "requests trained together in sequential mode"})
    seed: int = field(default=0, metadata={"help": "seed: edits are deterministic for a given seed"})
    adapter: str = field(default="default", metadata={"help": "adapter name the trained interventions belong to"})
    progress: bool = field(default=False, metadata={"help": "show a tqdm progress bar (off in library calls)"})
    augment: int | None = field(default=None, metadata={"help": "extra training copies of each request, each with a random short prefix from the corpus (ROME-style context; helps paraphrases). 0: off; None: the method's default, else 0"})
    augment_words: int = field(default=8, metadata={"help": "most words in an augmentation prefix (a corpus sentence start)"})
    augment_corpus: Any = field(default=None, metadata={"help": "prefix source: None (the editor's corpus), a path, or a list of strings"})
    relation_templates: Any = field(default=None, metadata={"help": "other phrasings of each relation, for relation_copies: None (the table shipped with repedit: 68 common Wikidata relations as statements and questions, matched tolerantly; repedit.relations), a repedit.relations.RelationTable, a path to a table in its JSON format, or a mapping from a relation template ('The mother tongue of {} is') to other templates of the same relation (exact lookup; e.g. repedit.eval.data.relation_templates(known_facts_file)). Never a request's own evaluation prompts"})
    relation_copies: int | None = field(default=None, metadata={"help": "extra training copies per request: its subject in this many other templates of its relation (from relation_templates; requests whose relation is not found get none). 0: off; None: the method's default, else 0"})
    answer_end: str | None = field(default=None, metadata={"help": "train the target followed by its natural end so greedy generation says the answer and stops: '.' (a full stop), '' (the target alone) or None (the method's default: '.' for BaFT and the codebook, '' for LoReFT); skipped for a tokenizer that does not know the end"})
    answer_end_stop: str = field(default="probability", metadata={"help": "how the stop rule reads a trained answer end: 'probability' (its log p counts in the mean, as every target token's) or 'argmax' (the probability is the answer's alone; the end need only be the argmax: about a third fewer steps, a little less generality, docs/results.md)"})
    entity_names: Any = field(default=None, metadata={"help": "names of other entities for subject negatives: None (names found in the corpus), a list of strings, or a path to a file with one name per line"})
    corpus: Any = field(default=None, metadata={"help": "general text behind negatives, augmentation prefixes, null-space statistics and entity names: None (WikiText-2's test split, shipped with repedit), 'model' (text the unedited model samples, cached per model), a path to a text file, or a list of strings"})
    disk_cache: bool = field(default=True, metadata={"help": "keep what a method builds once per model and site (corpus states, name banks) on disk under $REPEDIT_CACHE, keyed by the model's fingerprint, so later processes skip it"})
    mixed_precision: str | None = field(default=None, metadata={"help": "None (train in the model's dtype), 'bf16' or 'fp16': the training forwards (and the states and prefix they start from) run under torch.autocast in that precision, with half-precision copies of the frozen linear weights kept between steps (repedit.precision; memory: half the model's fp32 size); on a CPU with AVX512-BF16 a training step with 'bf16' takes about 0.4x the time. BaFT's corpus banks are built in it too (cached per precision). The stop rule reads these logits; verification, per-edit captures and inference stay in the model's dtype"})
    verify: bool = field(default=True, metadata={"help": "after training, check each request once more with the interventions as they run at inference (eval mode: BaFT's gate shift, a codebook entry's radius) and report that as its success; the training-time verdict stays in flags['trained']"})

    #: values used for fields left at None when no method default applies
    FALLBACKS = {"positions": "last_prompt", "augment": 0, "lr": 5e-3, "max_steps": 100, "stop_prob": 0.9, "answer_end": "",
                 "relation_copies": 0}

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
        if self.relation_copies is not None and self.relation_copies < 0:
            raise ValueError("relation_copies must be >= 0")
        if not (self.relation_templates is None or isinstance(self.relation_templates, (Mapping, str, os.PathLike))
                or hasattr(self.relation_templates, "relation_of")):
            raise ValueError("relation_templates must be None (the table shipped with repedit), a "
                             "repedit.relations.RelationTable, a path to a relation table, or a mapping from a relation "
                             f"template to other templates of the same relation; got {type(self.relation_templates).__name__}")
        if self.answer_end not in (None, "", "."):
            raise ValueError(f"answer_end must be '.', '' or None (the method's default), got {self.answer_end!r}")
        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be None or one of {sorted(PRECISIONS)}, got {self.mixed_precision!r}")
        if self.answer_end_stop not in ("probability", "argmax"):
            raise ValueError(f"answer_end_stop must be 'probability' or 'argmax', got {self.answer_end_stop!r}")


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
