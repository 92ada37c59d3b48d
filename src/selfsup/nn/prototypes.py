"""Prototypes: a bias-free linear layer whose rows are unit vectors (SwAV, Caron et al. 2020,
sec. 3.1: ``C = [c_1, ..., c_K]``, scores ``z^T c_k`` of a normalised embedding ``z``).

SwAV normalises the prototypes at every iteration, so the scores are cosine similarities, and
freezes them during the first epoch (appendix A). The weights are a parameter (trained through
the swapped-prediction loss); :meth:`Prototypes.normalize_` re-projects them onto the sphere after
each optimiser step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError

__all__ = ["Prototypes", "scale_grad"]


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward pass, ``scale * dL/dx`` in the backward pass.

    ``scale = 0`` freezes a parameter for one step while it still takes part in the graph (so
    DistributedDataParallel sees a gradient for it and needs no ``find_unused_parameters``).
    """
    if scale == 1.0:
        return x
    return x.detach() + scale * (x - x.detach())


class Prototypes(nn.Module):
    """``K`` unit-norm prototypes of dimension ``D``; ``forward(z) = z @ C^T``.

    Args:
        dim: embedding size ``D``.
        num_prototypes: ``K``.

    Attributes:
        weight: ``[K, D]`` parameter, rows of norm 1 after :meth:`normalize_`.

    Raises:
        ConfigError: for a non-positive ``dim`` or ``num_prototypes``.
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("num_prototypes", num_prototypes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"prototypes {name} must be a positive integer, got {v!r}")
        layer = nn.Linear(dim, num_prototypes, bias=False)
        self.weight = nn.Parameter(F.normalize(layer.weight.detach(), dim=1))

    @property
    def num_prototypes(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, z: Tensor, grad_scale: float = 1.0) -> Tensor:
        """Scores ``[B, K]`` of embeddings ``z`` ``[B, D]``; ``grad_scale`` scales the gradient
        reaching the prototypes (0: frozen, see :func:`scale_grad`).

        Raises:
            DataError: if ``z`` is not ``[B, D]``.
        """
        if z.dim() != 2 or z.shape[1] != self.weight.shape[1]:
            raise DataError(f"prototypes expect [B, {self.weight.shape[1]}], got {tuple(z.shape)}")
        return z @ scale_grad(self.weight, grad_scale).t()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere (in place)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"dim={self.weight.shape[1]}, num_prototypes={self.num_prototypes}"
