"""BaFT: basis-level representation fine-tuning (Liu et al., ICLR 2025), as repedit reconstructs it.

**A reconstruction, not the authors' code** (no official implementation is public)::

    Φ(h) = h + Σ_i w_i(h) · r_i · (⟨W_i, h⟩ + b_i − ⟨r_i, h⟩),   w_i(h) = σ((⟨u_i, h⟩ + c_i) / τ)

``R = [r_i]`` orthonormal rows, ``W``, ``b``, gate weights ``U``, biases ``c``, temperature
``τ``; ``gate="constant"`` (every ``w_i = 1``) is exactly LoReFT. Each request gets ``rank``
fresh bases (earlier ones are frozen) whose gates are fitted to fire on its subject's last
token. Design notes and measurements: docs/methods.md#baft.

Example::

    from repedit import Editor, EditorConfig
    editor = Editor(model, tok, EditorConfig(method="baft"))
    editor.edit(requests, sequential=True)
"""

from repedit.methods import register_method
from repedit.methods.baft.config import GATE_INPUTS, GATES, NULLSPACE_MODES, TRIGGERS, BaFTConfig
from repedit.methods.baft.module import BaFT, _Block, baft_delta, normalize_gate_input
from repedit.methods.baft.negatives import SUBJECT_PREFIXES, subject_key

__all__ = ["BaFTConfig", "BaFT", "baft_delta", "normalize_gate_input", "subject_key", "NULLSPACE_MODES", "GATES",
           "GATE_INPUTS", "TRIGGERS", "SUBJECT_PREFIXES"]

register_method("baft", BaFTConfig, BaFT)
