"""LoReFT, the reference intervention (Wu et al. 2024, pyreft's ``LoreftIntervention``).

    Φ(h) = h + Rᵀ(W h + b − R h)

R (rank × hidden) has orthonormal rows, kept by a torch parametrization; W, b is a
linear map to the rank-dimensional subspace. Within the subspace spanned by R's rows the
representation is replaced by ``W h + b``; the orthogonal complement is untouched.

Example::

    from repedit.methods.loreft import LoReFT, LoReFTConfig
    phi = LoReFT(LoReFTConfig(rank=4), hidden_size=576)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from repedit.methods import register_method
from repedit.methods.base import Intervention, MethodConfig, OrthonormalRows


@dataclass
class LoReFTConfig(MethodConfig):
    rank: int = field(default=4, metadata={"help": "dimension r of the edited subspace"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the edit (W h + b − R h) during training"})
    seed: int | None = field(default=None, metadata={"help": "seed for the initial R and W (None: torch's global RNG)"})

    @classmethod
    def editor_defaults(cls, method_config: dict | None = None) -> dict:
        """Adam at 2e-2 for at most 60 steps until p(target) ≥ 0.9 (the benchmarks' values)."""
        return {"lr": 2e-2, "max_steps": 60, "stop_prob": 0.9}


class LoReFT(Intervention):
    """Low-rank linear subspace intervention."""

    def __init__(self, config: LoReFTConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        self.rotate = OrthonormalRows(hidden_size, config.rank, generator=gen)
        self.learned_source = nn.Linear(hidden_size, config.rank)
        if gen is not None:
            bound = 1.0 / hidden_size**0.5
            with torch.no_grad():
                self.learned_source.weight.uniform_(-bound, bound, generator=gen)
                self.learned_source.bias.uniform_(-bound, bound, generator=gen)
        self.dropout = nn.Dropout(config.dropout)

    def subspace_edit(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, the per-basis change W h + b − R h), both in the parameters' dtype."""
        R = self.rotate.matrix()
        h = h.to(R.dtype)
        return R, self.learned_source(h) - h @ R.transpose(0, 1)

    def edit(self, h: torch.Tensor, ctx=None) -> torch.Tensor:
        R, diff = self.subspace_edit(h)
        return h.to(R.dtype) + self.dropout(diff) @ R


register_method("loreft", LoReFTConfig, LoReFT)
