"""Alignment and uniformity losses (Wang & Isola 2020, "Understanding Contrastive Representation
Learning through Alignment and Uniformity on the Hypersphere", eqs. 2-3) as differentiable losses;
:mod:`selfsup.eval.collapse` reports the same quantities as metrics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.contrastive import _gather_candidates
from selfsup.types import ConfigError, DataError

__all__ = ["AlignUniformLoss", "align_uniform_loss", "alignment_loss", "uniformity_loss"]


def alignment_loss(z1: Tensor, z2: Tensor, alpha: float = 2.0, *, normalize: bool = True) -> Tensor:
    """Alignment loss ``L_align = E ||f(x) - f(y)||_2^alpha`` over positive pairs (Wang & Isola
    2020, "Understanding Contrastive Representation Learning through Alignment and Uniformity on
    the Hypersphere", sec. 4.1, eq. 2), with rows ``z1[i], z2[i]`` ``[B, D]`` a positive pair.

    For ``alpha < 2`` the squared distance is clamped at 1e-12 so identical pairs have a finite
    gradient. With ``normalize`` the features are L2-normalised first (the paper's setting).

    Raises:
        DataError: if the shapes differ or are not ``[B, D]`` with ``B >= 1``.
        ConfigError: if ``alpha <= 0``.
    """
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] == 0:
        raise DataError(
            f"alignment_loss expects two [B, D] tensors of equal shape, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    if not alpha > 0:
        raise ConfigError(f"alignment alpha must be > 0, got {alpha!r}")
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    sq = (z1 - z2).pow(2).sum(dim=1)
    return (sq if alpha == 2 else sq.clamp_min(1e-12).pow(alpha / 2)).mean()


def uniformity_loss(
    z: Tensor, t: float = 2.0, *, normalize: bool = True, gather: bool = False
) -> Tensor:
    """Uniformity loss ``L_uniform = log E_{x != y} exp(-t ||f(x) - f(y)||_2^2)`` (Wang & Isola
    2020, sec. 4.1, eq. 3) over distinct pairs of ``z`` ``[B, D]`` (``B >= 2``).

    With ``gather`` the pairs are (local row, any other row of the gathered batch), so each rank
    returns the log-mean over its own rows (the log is outside the mean: the average over ranks
    is close to, not exactly, the global-batch value). Squared
    distances come from dot products (no square root), so coincident rows have finite gradients.

    Raises:
        DataError: if ``z`` is not ``[B, D]`` with ``B >= 2`` rows in total.
        ConfigError: if ``t <= 0``.
    """
    if z.dim() != 2 or z.shape[0] < 1:
        raise DataError(f"uniformity_loss expects [B, D] embeddings, got {tuple(z.shape)}")
    if not t > 0:
        raise ConfigError(f"uniformity t must be > 0, got {t!r}")
    if normalize:
        z = F.normalize(z, dim=1)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    others, (self_mask,) = _gather_candidates(z, [eye], gather)
    if others.shape[0] < 2:
        raise DataError("uniformity_loss needs at least 2 embeddings")
    sq = (z.pow(2).sum(1, keepdim=True) + others.pow(2).sum(1)[None] - 2 * z @ others.T)
    logits = (-t * sq.clamp_min(0.0)).masked_fill(self_mask, float("-inf"))
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(logits.numel() - z.shape[0])


def align_uniform_loss(
    z1: Tensor,
    z2: Tensor,
    *,
    alpha: float = 2.0,
    t: float = 2.0,
    align_weight: float = 1.0,
    uniform_weight: float = 1.0,
    normalize: bool = True,
    gather: bool = False,
) -> Tensor:
    """``align_weight L_align(alpha) + uniform_weight (L_uniform(z1; t) + L_uniform(z2; t)) / 2``
    (Wang & Isola 2020, sec. 4.1 and their training code; defaults alpha = 2, t = 2, weights 1).

    Raises:
        DataError, ConfigError: as :func:`alignment_loss` and :func:`uniformity_loss`.
    """
    align = alignment_loss(z1, z2, alpha, normalize=normalize)
    uni = uniformity_loss(z1, t, normalize=normalize, gather=gather) + uniformity_loss(
        z2, t, normalize=normalize, gather=gather
    )
    return align_weight * align + uniform_weight * uni / 2



class AlignUniformLoss(nn.Module):
    """Module wrapper of :func:`align_uniform_loss` (Wang & Isola 2020, sec. 4.1).

    ``forward(z1 [B, D], z2 [B, D]) -> scalar``.

    Raises:
        ConfigError: at construction, for ``alpha <= 0``, ``t <= 0`` or a negative weight.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        t: float = 2.0,
        align_weight: float = 1.0,
        uniform_weight: float = 1.0,
        normalize: bool = True,
        gather: bool = False,
    ) -> None:
        super().__init__()
        for name, value, ok in (("alpha", alpha, alpha > 0), ("t", t, t > 0),
                                ("align_weight", align_weight, align_weight >= 0),
                                ("uniform_weight", uniform_weight, uniform_weight >= 0)):
            if not ok:
                raise ConfigError(f"AlignUniformLoss: {name} must be positive, got {value!r}")
        self.alpha, self.t = float(alpha), float(t)
        self.align_weight, self.uniform_weight = float(align_weight), float(uniform_weight)
        self.normalize, self.gather = normalize, gather

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return align_uniform_loss(
            z1, z2, alpha=self.alpha, t=self.t, align_weight=self.align_weight,
            uniform_weight=self.uniform_weight, normalize=self.normalize, gather=self.gather,
        )

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, t={self.t}, align_weight={self.align_weight}, "
                f"uniform_weight={self.uniform_weight}")
