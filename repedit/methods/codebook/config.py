"""Configuration of the codebook method (GRACE-style and BalancEdit-style radii)."""

from __future__ import annotations

from dataclasses import dataclass, field

from repedit.methods.base import MethodConfig

KEY_POSITIONS = ("subject", "subject_mean", "last_prompt", "prompt")
DISTANCES = ("cosine", "euclidean")
NORMALIZATIONS = ("standardize", "center", "none")
VALUE_KINDS = ("vector", "lowrank")
VALUE_POSITIONS = ("attachment", "key")
RADIUS_MODES = ("balanced", "grace")
INDEXES = ("auto", "exact", "projected")


@dataclass
class CodebookConfig(MethodConfig):
    """A codebook of (key, value, radius) entries at one site.

    Sizes that grow with edits (``n_entries``) and the entries' request texts (``entries``)
    are part of the config, so a saved adapter can be rebuilt before its tensors are loaded.
    """

    key_positions: str = field(default="subject", metadata={"help": (
        "what the key is: 'subject' = the subject's last token at edit time, matched at inference "
        "against every prompt token (no subject annotation needed); 'subject_mean' = mean over the "
        "subject tokens (needs the subject span at inference; rows without one never fire); "
        "'last_prompt' = last prompt token; 'prompt' = mean over the prompt")})
    distance: str = field(default="cosine", metadata={"help": "key distance: 'cosine' (1 - cos) or 'euclidean'"})
    normalize: str = field(default="standardize", metadata={"help": (
        "key normalisation before the distance: 'standardize' ((h - mean) / std per dimension with "
        "corpus statistics; tames the few massive dimensions), 'center' (subtract the mean) or 'none'")})
    radius_mode: str = field(default="balanced", metadata={"help": (
        "'balanced': each entry's radius from its own positives/negatives, "
        "eps = (1 - alpha) d(k, k-) + alpha d(k, k+); 'grace': fixed init_radius plus GRACE's "
        "expand/split rules")})
    alpha: float = field(default=0.2, metadata={"help": "BalancEdit's alpha: weight of the positive distance in the radius (0: at the nearest negative)"})
    init_radius: float = field(default=0.5, metadata={"help": "GRACE mode: initial radius of a new entry (in distance units)"})
    radius_scale: float = field(default=0.7, metadata={"help": "multiplies every radius at inference (a sweep knob, no retraining needed); < 1 narrows every entry's scope (default 0.7, measured in docs/methods.md)"})
    value_positions: str = field(default="key", metadata={"help": (
        "where the value acts: 'attachment' = the attachment's position rule (e.g. last_prompt); "
        "'key' = the token(s) the key was read from (for key_positions='subject': the matched token, "
        "ROME-style subject edit that the model's attention carries to any phrasing)")})
    value: str = field(default="vector", metadata={"help": "'vector': additive vector; 'lowrank': additive vector plus a per-entry rank-r map of h"})
    value_rank: int = field(default=4, metadata={"help": "rank of the per-entry low-rank value (value='lowrank')"})
    value_scale: float = field(default=10.0, metadata={"help": "the value is value_scale * parameter, so the Editor's lr moves it at a useful speed"})
    null_space: bool = field(default=False, metadata={"help": (
        "project value vectors onto the null space of the corpus states at this site (repedit.methods.nullspace: "
        "the eigen-directions of their second moment holding at most null_space_threshold of its energy), so a "
        "value never writes along the directions preserved text uses")})
    null_space_threshold: float = field(default=1e-3, metadata={"help": "null_space: energy fraction of the discarded directions"})
    index: str = field(default="auto", metadata={"help": (
        "nearest-key search: 'exact' (one matmul over every key), 'projected' (two stages: scores in an "
        "index_dim-dimensional principal subspace of the keys pick index_candidates per query, exact "
        "distances rank them) or 'auto' (projected from index_min_entries entries on)")})
    index_dim: int = field(default=64, metadata={"help": "projected index: dimensions of the first stage"})
    index_candidates: int = field(default=16, metadata={"help": "projected index: candidates per query re-ranked exactly"})
    index_min_entries: int = field(default=4096, metadata={"help": "index='auto': entries from which the projected index is used"})
    num_positives: int = field(default=8, metadata={"help": "template rewrites of the prompt used as positive samples"})
    train_positives: int = field(default=0, metadata={"help": "the first this many positives (template rewrites of the prompt that place the radius) are also trained as copies with the target, so the value is fitted in those contexts too (0: the prompt and the Editor's copies only)"})
    num_negatives: int = field(default=24, metadata={"help": "same-relation prompts with other subjects used as negatives"})
    corpus_sentences: int = field(default=2000, metadata={"help": "corpus sentences, spread over the corpus, for statistics and nearest-neighbour negatives (0: none; docs/methods.md)"})
    corpus_path: str | None = field(default=None, metadata={"help": "a raw text file for those sentences (None: the editor's corpus, by default the WikiText-2 test split shipped with repedit)", "resource": True})
    known_facts_path: str | None = field(default=None, metadata={"help": "a known_1000.json-style file whose subjects fill other-subject negatives (None: entity names from the editor's corpus)", "resource": True})
    num_names: int = field(default=1000, metadata={"help": "corpus entity names used for other-subject negatives when known_facts_path is None"})
    seed: int = field(default=0, metadata={"help": "seed of the deterministic sample selection"})
    n_entries: int = field(default=0, metadata={"help": "number of entries (set by export_config; sizes the tensors on load)"})
    has_stats: bool = field(default=False, metadata={"help": "whether normalisation statistics have been computed (set automatically)"})
    entries: list = field(default_factory=list, metadata={"help": "per-entry metadata: request text, target, subject, case id, flags"})

    def __post_init__(self) -> None:
        for name, allowed in (("key_positions", KEY_POSITIONS), ("distance", DISTANCES), ("normalize", NORMALIZATIONS),
                              ("value", VALUE_KINDS), ("radius_mode", RADIUS_MODES),
                              ("value_positions", VALUE_POSITIONS), ("index", INDEXES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"codebook {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.radius_scale < 0 or self.init_radius < 0:
            raise ValueError("radius_scale and init_radius must be >= 0")
        if self.index_dim < 1 or self.index_candidates < 1 or self.index_min_entries < 0:
            raise ValueError("index_dim and index_candidates must be >= 1, index_min_entries >= 0")
        if self.value_rank < 1:
            raise ValueError("value_rank must be >= 1")
        if self.n_entries < 0:
            raise ValueError("n_entries must be >= 0")
        if self.entries and len(self.entries) != self.n_entries:
            raise ValueError(f"{len(self.entries)} entry records but n_entries={self.n_entries}")

    @classmethod
    def editor_defaults(cls, method_config: dict | None = None) -> dict:
        """Adam at 0.2 (the value is ``value_scale`` × the parameter) for at most 50 steps until
        p(target) ≥ 0.9, the target trained with a full stop after it (docs/methods.md)."""
        return {"lr": 0.2, "max_steps": 50, "stop_prob": 0.9, "answer_end": "."}

    @classmethod
    def default_layers(cls, num_layers: int, model_type: str | None = None) -> list[int]:
        """1/6 of the depth (layer 5 of SmolLM2's 30, BaFT's layer too), where the subject's last
        token still carries the entity with little of its context (measured: docs/methods.md)."""
        return [max(0, round(num_layers / 6))]
