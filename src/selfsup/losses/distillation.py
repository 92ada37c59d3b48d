"""Regression losses of the negative-free "distillation" methods: a prediction of one view
regresses the (stop-gradient) target of the other view.

- BYOL (Grill et al. 2020, "Bootstrap Your Own Latent", eq. 2): the normalised mean squared error
  ``||q/|q| - z'/|z'|||^2 = 2 - 2 cos(q, z')`` between the online prediction ``q`` and the target
  projection ``z'`` of the other view, symmetrised (eq. 2 plus its swapped twin ``L~``):
  ``L_BYOL = L(q1, z2') + L(q2, z1')``; each term is averaged over the batch, so the loss lies in
  ``[0, 8]`` and is 0 when every prediction points along its target.
- SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning", eqs. 1-3): the
  negative cosine ``D(p, z) = -cos(p, stopgrad(z))`` symmetrised as
  ``L = D(p1, z2) / 2 + D(p2, z1) / 2``; it lies in ``[-1, 1]`` and is -1 when aligned.

The functions are pure: which branch is a target (an EMA network for BYOL, the same network with
a stop-gradient for SimSiam) is the method's business. Every function computes in float32 (or the
wider input dtype), so half-precision autocast does not degrade the cosines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import DataError

__all__ = [
    "byol_loss",
    "negative_cosine",
    "normalized_mse",
    "simsiam_loss",
]

_EPS = 1e-12  # F.normalize's default: a zero vector stays zero instead of becoming NaN


def _check_pair(p: Tensor, z: Tensor, name: str) -> None:
    if p.dim() != 2 or p.shape != z.shape or p.shape[0] == 0:
        raise DataError(
            f"{name} expects two non-empty [N, D] tensors of equal shape, got "
            f"{tuple(p.shape)} and {tuple(z.shape)}"
        )


def _wide(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _cosine(p: Tensor, z: Tensor) -> Tensor:
    """Row-wise cosine ``[N]`` of ``[N, D]`` tensors (0 for a zero row)."""
    return (F.normalize(_wide(p), dim=1, eps=_EPS) * F.normalize(_wide(z), dim=1, eps=_EPS)).sum(1)


def normalized_mse(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalised MSE (Grill et al. 2020, eq. 2), averaged over the batch.

    ``mean_i || p_i / |p_i| - z_i / |z_i| ||^2 = mean_i (2 - 2 cos(p_i, z_i))``. No stop-gradient
    is applied: pass a detached (or no-grad) target.

    Args:
        p: predictions ``[N, D]``.
        z: targets ``[N, D]``.

    Returns:
        Scalar in ``[0, 4]``.

    Raises:
        DataError: if the shapes differ, are not 2-D, or the batch is empty.
    """
    _check_pair(p, z, "normalized_mse")
    return (2.0 - 2.0 * _cosine(p, z)).mean()


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetrised BYOL loss ``L + L~`` (Grill et al. 2020, eq. 2 and sec. 3.1).

    ``normalized_mse(p1, z2) + normalized_mse(p2, z1)``: the online prediction of each view
    regresses the target projection of the other view.

    Args:
        p1: online predictions of view 1 ``[N, D]``.
        p2: online predictions of view 2 ``[N, D]``.
        z1: target projections of view 1 ``[N, D]`` (detached / computed without gradient).
        z2: target projections of view 2 ``[N, D]``.

    Returns:
        Scalar in ``[0, 8]``; 0 when each prediction is parallel to the other view's target.

    Raises:
        DataError: if the four tensors are not non-empty ``[N, D]`` of one shape.
    """
    return normalized_mse(p1, z2) + normalized_mse(p2, z1)


def negative_cosine(p: Tensor, z: Tensor, *, stop_gradient: bool = True) -> Tensor:
    """SimSiam's ``D(p, z) = -cos(p, stopgrad(z))`` (Chen & He 2021, eqs. 1 and 3), batch mean.

    Args:
        p: predictions ``[N, D]``.
        z: targets ``[N, D]``.
        stop_gradient: detach ``z`` (eq. 3). False lets the gradient flow into ``z`` too, the
            ablation of sec. 4.1 / figure 2 that collapses.

    Returns:
        Scalar in ``[-1, 1]``.

    Raises:
        DataError: if the shapes differ, are not 2-D, or the batch is empty.
    """
    _check_pair(p, z, "negative_cosine")
    return -_cosine(p, z.detach() if stop_gradient else z).mean()


def simsiam_loss(
    p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, *, stop_gradient: bool = True
) -> Tensor:
    """Symmetrised SimSiam loss ``D(p1, z2) / 2 + D(p2, z1) / 2`` (Chen & He 2021, eqs. 2-4).

    Args:
        p1: predictions of view 1 ``[N, D]``.
        p2: predictions of view 2 ``[N, D]``.
        z1: projections of view 1 ``[N, D]``.
        z2: projections of view 2 ``[N, D]``.
        stop_gradient: detach the projections ``z`` (the paper's eq. 3); False is the collapsing
            ablation.

    Returns:
        Scalar in ``[-1, 1]``; -1 when each prediction is parallel to the other view's projection.

    Raises:
        DataError: if the four tensors are not non-empty ``[N, D]`` of one shape.
    """
    return 0.5 * (
        negative_cosine(p1, z2, stop_gradient=stop_gradient)
        + negative_cosine(p2, z1, stop_gradient=stop_gradient)
    )
