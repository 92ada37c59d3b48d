"""The contrastive counting loss of learning to count.

Noroozi, Pirsiavash & Favaro 2017, "Representation Learning by Learning to Count", eq. 4: with
the counting vector ``phi`` (non-negative), the downsampling operator ``D`` and the 2 x 2 tiling
operators ``T_1 .. T_4``, for two different images ``x != y``

    l_con(x, y) = |phi(D x) - sum_j phi(T_j x)|^2
                  + max(0, M - |phi(D y) - sum_j phi(T_j x)|^2)

with ``|.|^2`` the squared Euclidean norm over the counting vector and ``M = 10``. The first term
alone (eq. 3) has the trivial minimiser ``phi = 0``; the contrastive term asks the tiles of ``x``
to count differently from another image ``y``, so a constant ``phi`` costs at least ``M``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["counting_loss", "counting_terms"]


def counting_terms(down_x: Tensor, tiles_x: Tensor, down_y: Tensor,
                   margin: float = 10.0) -> tuple[Tensor, Tensor]:
    """The two per-sample terms of eq. 4, ``(count, contrast)``, each ``[B]``.

    Args:
        down_x: ``phi(D x)`` ``[B, K]``.
        tiles_x: ``phi(T_j x)`` of the tiles ``[B, J, K]`` (``J = 4`` for the paper's 2 x 2 grid).
        down_y: ``phi(D y)`` ``[B, K]`` of the other image of each sample.
        margin: ``M`` (eq. 4: 10), >= 0.

    Raises:
        ConfigError: if ``margin`` is negative.
        DataError: on mismatched shapes.
    """
    if not margin >= 0:
        raise ConfigError(f"method_args.margin must be >= 0, got {margin}")
    if down_x.dim() != 2 or down_y.shape != down_x.shape or tiles_x.dim() != 3 or (
            tiles_x.shape[0], tiles_x.shape[2]) != tuple(down_x.shape):
        raise DataError(f"counting loss expects phi(D x) [B, K], phi(T x) [B, J, K] and phi(D y) "
                        f"[B, K], got {tuple(down_x.shape)}, {tuple(tiles_x.shape)} and "
                        f"{tuple(down_y.shape)}")
    tile_sum = tiles_x.sum(dim=1)  # sum_j phi(T_j x), [B, K]
    count = (down_x - tile_sum).pow(2).sum(dim=1)
    contrast = torch.clamp(margin - (down_y - tile_sum).pow(2).sum(dim=1), min=0)
    return count, contrast


def counting_loss(down_x: Tensor, tiles_x: Tensor, down_y: Tensor,
                  margin: float = 10.0) -> Tensor:
    """Eq. 4 averaged over the batch (see :func:`counting_terms` for the arguments)."""
    count, contrast = counting_terms(down_x, tiles_x, down_y, margin)
    return (count + contrast).mean()
