"""BaFT's config: one dataclass field per constructor argument, each with a help string."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from repedit.methods.base import MethodConfig

__all__ = ["BaFTConfig", "NULLSPACE_MODES", "GATES", "GATE_INPUTS", "TRIGGERS", "GATE_FITS", "VALUES", "ROUTINGS",
           "TRAIN_AS_INFERENCE"]

NULLSPACE_MODES = ("none", "read", "write")
GATES = ("sigmoid", "constant")
GATE_INPUTS = ("normalized", "raw")
TRIGGERS = ("subject", "positions")
GATE_FITS = ("active", "full")
VALUES = ("reft", "vector")
ROUTINGS = ("auto", "dense", "sparse")
TRAIN_AS_INFERENCE = ("earlier", "all", "none")


@dataclass
class BaFTConfig(MethodConfig):
    rank: int = field(default=2, metadata={"help": "bases per request (incremental) or in the fixed pool"})
    incremental: bool = field(default=True, metadata={"help": "allocate fresh bases per request and freeze earlier ones (False: one fixed pool of `rank` bases, all trained)"})
    num_bases: int = field(default=0, metadata={"help": "frozen bases held (grows with incremental edits; set by export_config)"})
    gate: str = field(default="sigmoid", metadata={"help": "'sigmoid': w_i = σ((⟨u_i,h⟩+c_i)/τ); 'constant': w_i = 1 (LoReFT)"})
    gate_input: str = field(default="normalized", metadata={"help": "what the gates read: 'normalized' = the centred, scaled, normalised state y·√d/‖y‖ with y = (h−μ)/σ (μ, σ: per-coordinate median and spread of corpus states at the site, fixed at the first edit), so a gate fires inside a cone around its subject's direction whatever the token's norm; 'raw' = h (P·h with a read-mode null space), as in the formula"})
    value: str = field(default="reft", metadata={"help": "what an edit writes where its gates open: 'reft' = LoReFT's R^T(Wh + b − Rh) (depends on h); 'vector' = R^T b, one fixed vector per edit (ROME's v*), W tied to R"})
    temperature: float = field(default=1.0, metadata={"help": "gate temperature τ"})
    gate_shift: float = field(default=-4.0, metadata={"help": "added to every gate logit before /τ at inference, and in training to the gates that train_as_inference names (a sweep knob on a saved adapter, no retraining): > 0 widens each edit's scope (generality), < 0 narrows it (locality); the default −4 shuts the sigmoid tails of gates fitted to ≤ −2 on negatives, which add up over many edits (measurements: docs/methods.md#baft)"})
    gate_init_sharpness: float = field(default=4.0, metadata={"help": "data-driven gate init: logit at the request's prompt (and −logit mirrored at the negatives' boundary)"})
    locality_weight: float = field(default=1.0, metadata={"help": "weight of the gate locality term: mean softplus(gate logit) of the new bases on negative inputs (pushes w_i → 0)"})
    gate_positive_weight: float = field(default=0.1, metadata={"help": "weight of −log w_i on the request's own positions (keeps the gate on)"})
    kl_weight: float = field(default=0.0, metadata={"help": "weight of KL(base ‖ edited) of next-token distributions on negative prompts (one extra forward per step)"})
    essence_weight: float = field(default=0.0, metadata={"help": "weight of ROME's essence term: KL(unedited ‖ edited) of the next-token distribution after the subject put into essence_templates, so the edit keeps the subject's other properties (subject locality; one extra forward per step)"})
    essence_templates: list = field(default_factory=lambda: ["{} is a", "{} is known for", "{} was", "{} has"], metadata={"help": "templates of the essence term ('{}' is the subject); never one of a request's evaluation prompts"})
    balance_weight: float = field(default=0.01, metadata={"help": "incremental load balancing: penalise current gate usage of bases in proportion to their past usage"})
    num_negatives: int = field(default=24, metadata={"help": "negative prompts per edit: the request's relation with other subjects, earlier requests"})
    earlier_negatives: bool = field(default=True, metadata={"help": "sequential editing: the gate positives of every earlier edit (other subjects) are negatives of each new gate, so a new edit does not fire on an earlier subject; the bank is saved with the adapter (float16, about 8 KB per edit), so editing continues the same after a reload"})
    num_earlier: int = field(default=0, metadata={"help": "rows of the earlier-negatives bank held (set by export_config)"})
    edits: list = field(default_factory=list, metadata={"help": "per-edit metadata, one dict per incremental edit in base order: prompt, subject, target_new, case_id, num_bases, num_earlier (rows of the earlier-negatives bank), group (edits trained together); set by finish_edit, saved with the adapter (older adapters have none: their bases count as edits of `rank` bases)"})
    num_subject_negatives: int = field(default=1000, metadata={"help": "entity negatives: the last-token states of up to this many other subjects (every other request's subject in the edit() call, then capitalised names from the corpus unless num_corpus_negatives is 0), each at a sentence start and after a short prefix; each name captured once per model and site, then cached"})
    subject_variants: int = field(default=0, metadata={"help": "subject trigger (opt-in, e.g. 8): hard gate negatives built from each request's own subject: its proper word suffixes ('Football Federation', 'Federation' for 'Chilean Football Federation') and this many look-alikes with the leading words replaced by corpus names ('Romanian Football Federation', 'George Harrison' for 'William Henry Harrison'), so a gate keys on the whole name rather than its last word (0: off)"})
    variant_weight: float = field(default=1.0, metadata={"help": "weight of the subject-variant negatives in the gate fit, as a group of their own (the thousands of easy negatives would otherwise drown them)"})
    num_corpus_negatives: int = field(default=1000, metadata={"help": "corpus sentences (first 16 words) whose every token is a gate negative (captured once per run; 0: no corpus negatives, no corpus names)"})
    nullspace: str = field(default="none", metadata={"help": "'none', 'read' (bases read P·h, no bias: Φ(h)=h on the preserved span) or 'write' (the change is projected)"})
    nullspace_threshold: float = field(default=1e-3, metadata={"help": "relative threshold for the null space (see nullspace_threshold_mode)"})
    nullspace_threshold_mode: str = field(default="energy", metadata={"help": "'energy': smallest eigenvalues holding ≤ threshold of the trace; 'max': eigenvalues < threshold·λ_max"})
    nullspace_texts: int = field(default=2000, metadata={"help": "corpus sentences used to build P"})
    nullspace_corpus: Any = field(default=None, metadata={"help": "None (the editor's corpus), a path, or a list of strings", "resource": True})
    nullspace_fold_edits: bool = field(default=True, metadata={"help": "remove each finished edit's keys from the null space (sequential editing)"})
    nullspace_min_dim: int = field(default=8, metadata={"help": "stop folding keys once the null space would drop below this dimension"})
    nullspace_built: bool = field(default=False, metadata={"help": "whether P is built (set by export_config; a loaded adapter never rebuilds it)"})
    num_fold: int = field(default=-1, metadata={"help": "rows of the fold history held: the keys each recorded edit folded out of the null space, kept with P as built, so deleting an edit folds it back in exactly (set by export_config; -1: no history, as in adapters from before it)"})
    seed: int | None = field(default=None, metadata={"help": "seed for initial parameters (None: torch's global RNG)"})
    trigger: str = field(default="subject", metadata={"help": "what the gates of an edit learn to fire on when the intervention sees several tokens per prompt (positions 'prompt'/'all'): 'subject' = the last token of the request's subject only (every other token is a negative); 'positions' = every token the positions rule selects"})
    gate_templates: int = field(default=4, metadata={"help": "subject trigger: extra gate positives, the subject put into this many relation templates of other requests (never the request's own evaluation fields)"})
    gate_margin: float = field(default=2.0, metadata={"help": "gate-margin term: hinge pushing gate logits above +margin on positives and below −margin on negatives"})
    gate_margin_weight: float = field(default=1.0, metadata={"help": "weight of the gate-margin term (0: off)"})
    gate_fit_steps: int = field(default=150, metadata={"help": "steps of a logistic fit of the new gates on the fixed positive/negative states before the edit is trained (0: data init only)"})
    gate_fit_lr: float = field(default=5e-3, metadata={"help": "Adam learning rate of the gate fit"})
    train_as_inference: str = field(default="earlier", metadata={"help": "which gates run as at inference (gate_shift added) in the forwards that train an edit: 'earlier' = the earlier (frozen) edits of a sequential run, also sparsely routed where inference is, so each edit is trained in the model it will be used in, and the new bases unshifted; 'all' = the new bases too, so the stop rule judges the edit as inference will run it; 'none' = nothing shifted, every edit dense, as before session 17 (the gates' sigmoid tails, shut by gate_shift at inference, then add up over thousands of earlier edits in training only)"})
    routing: str = field(default="auto", metadata={"help": "inference with many edits: 'sparse' evaluates at each token only the routing_top_k edits whose gates are most open (one matmul over the edits' gate rows picks them; the others contribute exactly 0); 'dense' evaluates every edit; 'auto': sparse from routing_min_edits edits on"})
    routing_top_k: int = field(default=8, metadata={"help": "sparse routing: edits evaluated per token"})
    routing_min_edits: int = field(default=256, metadata={"help": "routing 'auto': the number of edits from which routing is sparse"})
    gate_fit: str = field(default="active", metadata={"help": "'active': each gate-fit step sees the negatives near the boundary plus a reweighted random sample of the rest, then every negative is checked; 'full': every negative at every step"})
    gate_fit_sample: int = field(default=1024, metadata={"help": "active gate fit: easy negatives sampled (reweighted) beside the active ones"})
    gate_fit_slack: float = field(default=4.0, metadata={"help": "active gate fit: negatives with a logit above −(gate_margin + slack) at the start are active"})
    gate_fit_rounds: int = field(default=3, metadata={"help": "active gate fit: rounds at most (a round adds the negatives the last fit left above −gate_margin)"})
    train_gates: bool = field(default=False, metadata={"help": "keep training the gates (with the locality and margin terms) while the edit is trained; False: gates stay as fitted"})
    stop_on_gates: bool = field(default=True, metadata={"help": "veto the Editor's early stop until the new gates separate positives from negatives (only while train_gates)"})

    @classmethod
    def editor_defaults(cls, method_config: dict | None = None) -> dict:
        """Every prompt token (the gates pick the subject's last token), 2 augmented copies and
        4 copies in other phrasings of the request's relation (the table shipped with repedit),
        the target trained with a full stop after it, Adam at 2e-2 for at most 60 steps until
        p(target) ≥ 0.9 (docs/methods.md)."""
        return {"positions": "prompt", "augment": 2, "relation_copies": 4, "lr": 2e-2, "max_steps": 60, "stop_prob": 0.9,
                "answer_end": "."}

    #: the default edited layer as a fraction of the depth, per ``config.model_type`` where it
    #: was measured (docs/results.md, "Which layer"); other architectures get 1/6
    LAYER_FRACTIONS: ClassVar[dict[str, float]] = {"llama": 0.3}

    @classmethod
    def default_layers(cls, num_layers: int, model_type: str | None = None) -> list[int]:
        """0.3 of the depth for Llama-type models (layer 9 of SmolLM2's 30), else 1/6 (layer 3
        of Gemma 3 270M's 18), where the subject's last token carries the entity (ROME's
        insight; measured in docs/results.md).

        Example::

            BaFTConfig.default_layers(30, "llama")        # [9]
            BaFTConfig.default_layers(18, "gemma3_text")  # [3]
        """
        return [max(0, round(num_layers * cls.LAYER_FRACTIONS.get(model_type or "", 1 / 6)))]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not out["edits"]:  # an adapter without edit metadata saves the config it always had
            del out["edits"]
        return out

    def __post_init__(self) -> None:
        if not isinstance(self.edits, list) or not all(isinstance(e, dict) for e in self.edits):
            raise ValueError("edits must be a list of dicts (per-edit metadata)")
        if self.rank < 1:
            raise ValueError("rank must be >= 1")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {self.trigger!r}")
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")
        if self.train_as_inference not in TRAIN_AS_INFERENCE:
            raise ValueError(f"train_as_inference must be one of {TRAIN_AS_INFERENCE}, "
                             f"got {self.train_as_inference!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.routing_top_k < 1 or self.routing_min_edits < 1:
            raise ValueError("routing_top_k and routing_min_edits must be >= 1")
        if self.value not in VALUES:
            raise ValueError(f"value must be one of {VALUES}, got {self.value!r}")
        if self.gate_fit not in GATE_FITS:
            raise ValueError(f"gate_fit must be one of {GATE_FITS}, got {self.gate_fit!r}")
        if self.gate_fit_sample < 1 or self.gate_fit_rounds < 1:
            raise ValueError("gate_fit_sample and gate_fit_rounds must be >= 1")
        if self.gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input must be one of {GATE_INPUTS}, got {self.gate_input!r}")
        if self.nullspace not in NULLSPACE_MODES:
            raise ValueError(f"nullspace must be one of {NULLSPACE_MODES}, got {self.nullspace!r}")
        if not math.isfinite(self.gate_shift):
            raise ValueError("gate_shift must be finite")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if self.num_bases < 0:
            raise ValueError("num_bases must be >= 0")
        if self.num_fold < -1:
            raise ValueError("num_fold must be >= -1")

