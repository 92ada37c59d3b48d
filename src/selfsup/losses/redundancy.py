"""Redundancy-reduction losses: Barlow Twins here and VICReg in :mod:`selfsup.losses.vicreg`
(which shares this module's batch helpers), whose statistics over the batch keep the embeddings
from collapsing without negatives, predictors or momentum encoders.

- Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
  Reduction", eqs. 1-2): with the embeddings of the two views standardised along the batch
  (zero mean, unit variance per dimension, as ``BatchNorm1d(affine=False)``), the cross-correlation
  ``C_ij = sum_b z1_bi z2_bj / N`` ``[D, D]`` is pushed to the identity:
  ``L_BT = sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2``.
- VICReg (Bardes et al. 2022, "VICReg: Variance-Invariance-Covariance Regularization for
  Self-Supervised Learning", eqs. 1-6): invariance ``s(Z, Z') = mean (z - z')^2`` (MSE), variance
  ``v(Z) = mean_j max(0, gamma - sqrt(Var(z^j) + eps))`` (unbiased variance) and covariance
  ``c(Z) = sum_{i != j} Cov(Z)_ij^2 / d``; ``L = lambda s + mu [v(Z) + v(Z')] / 2 + nu [c(Z) +
  c(Z')]`` with ``lambda = mu = 25``, ``nu = 1``. The variance terms are averaged over the two
  branches and the covariance terms summed, as in the authors' code (the paper writes a sum for
  both, eq. 6, which only rescales ``mu``).

Distributed (``gather=True`` inside a process group of ``W`` ranks, each holding ``N`` rows): every
batch statistic is over the global batch of ``N W`` rows, so the loss equals that of one process
holding the whole batch. Barlow Twins standardises with globally reduced mean and variance,
divides its per-rank ``C`` by ``N W`` and sums ``C`` over ranks (an all-reduce of a ``[D, D]``
matrix, as the authors' code); VICReg gathers the embeddings with
:func:`selfsup.utils.dist.all_gather_grad` for its variance and covariance terms and averages the
invariance over the local rows. Gradient convention (as :func:`selfsup.losses.contrastive.nt_xent`):
the mean of the ranks' losses is the global loss and a rank's input gradient is ``W`` times the
single-process one, so DDP's averaging gives every parameter exactly the single-process gradient.

Both losses compute in float32 with autocast disabled: ``D x D`` correlations in bfloat16 lose the
small off-diagonal entries the losses are about.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError
from selfsup.utils import dist

__all__ = [
    "BarlowTwinsLoss",
    "BarlowTwinsTerms",
    "barlow_twins_loss",
    "barlow_twins_terms",
    "batch_standardize",
    "cross_correlation",
    "off_diagonal",
]

BN_EPS = 1e-5  # BatchNorm1d's default eps, used by Barlow Twins' affine-free batch norm
BT_LAMBDA = 5e-3  # Barlow Twins sec. 2 / 4: weight of the redundancy-reduction term


# ------------------------------------------------------------------------------------ helpers


def _check_number(name: str, value: float, *, positive: bool = False) -> None:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or value < 0 or (positive and value == 0):
        need = "a positive" if positive else "a non-negative"
        raise ConfigError(f"{name} must be {need} finite number, got {value!r}")


def _check_pair(z1: Tensor, z2: Tensor, name: str) -> None:
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] == 0 or z1.shape[1] == 0:
        raise DataError(
            f"{name} expects two non-empty [N, D] embeddings of equal shape, got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )


def _float(z: Tensor) -> Tensor:
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def _global_rows(z: Tensor, gather: bool, name: str) -> int:
    """Rows of the (global) batch; raises if fewer than 2 (no variance to estimate)."""
    world = dist.world_size() if gather else 1
    n = z.shape[0] * world
    if n < 2:
        raise DataError(f"{name} needs a (global) batch of at least 2 samples, got {n}")
    return n


def _global_sum(x: Tensor, gather: bool) -> Tensor:
    """``x.sum(0)`` over the rows of all ranks, differentiable (backward sums over ranks)."""
    s = x.sum(dim=0, keepdim=True)  # [1, D]
    if gather and dist.world_size() > 1:
        s = dist.all_gather_grad(s)  # [W, D]
    return s.sum(dim=0)


def off_diagonal(c: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix ``[D, D]`` as a flat ``[D * (D - 1)]`` view.

    Raises:
        DataError: if ``c`` is not a square 2-D matrix.
    """
    if c.dim() != 2 or c.shape[0] != c.shape[1]:
        raise DataError(f"off_diagonal expects a square [D, D] matrix, got {tuple(c.shape)}")
    d = c.shape[0]
    # drop the last element; the rest reshaped to [D - 1, D + 1] has the diagonal in column 0
    return c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


# ------------------------------------------------------------------------------ Barlow Twins


def batch_standardize(z: Tensor, eps: float = BN_EPS, *, gather: bool = True) -> Tensor:
    """Standardise each dimension along the (global) batch, as ``BatchNorm1d(affine=False)``.

    ``(z - mean) / sqrt(var + eps)`` with the biased variance over the ``N W`` rows of all ranks
    (two-pass: the mean first, then the centred squares). Returns this rank's rows ``[N, D]``.

    Raises:
        DataError: if ``z`` is not ``[N, D]`` or the global batch has fewer than 2 rows.
        ConfigError: if ``eps`` is negative.
    """
    _check_number("eps", eps)
    if z.dim() != 2 or z.shape[0] == 0:
        raise DataError(f"batch_standardize expects non-empty [N, D] embeddings, got "
                        f"{tuple(z.shape)}")
    n = _global_rows(z, gather, "batch_standardize")
    z = _float(z)
    zc = z - _global_sum(z, gather) / n
    var = _global_sum(zc.pow(2), gather) / n
    return zc / torch.sqrt(var + eps)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = BN_EPS, *, gather: bool = True
                      ) -> Tensor:
    """Barlow Twins' cross-correlation matrix ``C`` ``[D, D]`` (Zbontar et al. 2021, eq. 2).

    ``C_ij = sum_b a_bi b_bj / (N W)`` where ``a, b`` are :func:`batch_standardize`'d ``z1, z2``
    and the sum runs over the global batch (per-rank sums are all-reduced). ``C`` is the same
    on every rank; its backward is scaled by ``W`` (see the module docstring's convention).

    Raises:
        DataError: for shapes other than two equal ``[N, D]`` or a global batch below 2.
        ConfigError: if ``eps`` is negative.
    """
    _check_pair(z1, z2, "cross_correlation")
    n = _global_rows(z1, gather, "cross_correlation")
    with torch.autocast(z1.device.type, enabled=False):
        a = batch_standardize(z1, eps, gather=gather)
        b = batch_standardize(z2, eps, gather=gather)
        c = a.T @ b / n  # [D, D] this rank's share of the global C
        world = dist.world_size() if gather else 1
        if world > 1:
            # value: the sum over ranks; gradient: every rank's loss is the same function of the
            # global C, so the objective summed over ranks sends W * dL/dC into each share.
            total = dist.all_reduce_sum(c.detach().clone())
            c = total + world * (c - c.detach())
    return c


class BarlowTwinsTerms(NamedTuple):
    """The two sums of Barlow Twins' eq. 1: ``on_diag = sum_i (1 - C_ii)^2`` and
    ``off_diag = sum_{i != j} C_ij^2`` (unweighted)."""

    on_diag: Tensor
    off_diag: Tensor


def barlow_twins_terms(z1: Tensor, z2: Tensor, eps: float = BN_EPS, *, gather: bool = True
                       ) -> BarlowTwinsTerms:
    """Invariance and redundancy-reduction sums of Barlow Twins (eq. 1) for ``[N, D]`` inputs.

    Raises:
        DataError: as :func:`cross_correlation`.
        ConfigError: if ``eps`` is negative.
    """
    c = cross_correlation(z1, z2, eps, gather=gather)
    on = (1.0 - torch.diagonal(c)).pow(2).sum()
    off = off_diagonal(c).pow(2).sum()
    return BarlowTwinsTerms(on, off)


def barlow_twins_loss(
    z1: Tensor,
    z2: Tensor,
    lambd: float = BT_LAMBDA,
    eps: float = BN_EPS,
    *,
    gather: bool = True,
) -> Tensor:
    """Barlow Twins loss ``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2`` (eq. 1).

    Args:
        z1: projector outputs of the first views ``[N, D]``.
        z2: projector outputs of the second views ``[N, D]``.
        lambd: weight of the off-diagonal term (paper: 5e-3).
        eps: variance epsilon of the batch standardisation (BatchNorm1d's 1e-5).
        gather: batch statistics over all ranks when running distributed.

    Returns:
        Scalar (float32 or float64); 0 exactly when ``C`` is the identity.

    Raises:
        DataError: for shapes other than two equal ``[N, D]`` or a global batch below 2.
        ConfigError: if ``lambd`` or ``eps`` is negative.
    """
    _check_number("lambd", lambd)
    t = barlow_twins_terms(z1, z2, eps, gather=gather)
    return t.on_diag + lambd * t.off_diag


class BarlowTwinsLoss(nn.Module):
    """Module wrapper of :func:`barlow_twins_loss` (Zbontar et al. 2021, eq. 1).

    ``forward(z1 [N, D], z2 [N, D]) -> scalar``; :meth:`terms` and :meth:`combine` split it for
    logging.

    Raises:
        ConfigError: at construction, if ``lambd`` or ``eps`` is negative or not finite.
    """

    def __init__(self, lambd: float = BT_LAMBDA, eps: float = BN_EPS, gather: bool = True):
        super().__init__()
        _check_number("lambd", lambd)
        _check_number("eps", eps)
        self.lambd, self.eps, self.gather = float(lambd), float(eps), gather

    def terms(self, z1: Tensor, z2: Tensor) -> BarlowTwinsTerms:
        return barlow_twins_terms(z1, z2, self.eps, gather=self.gather)

    def combine(self, t: BarlowTwinsTerms) -> Tensor:
        return t.on_diag + self.lambd * t.off_diag

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return self.combine(self.terms(z1, z2))

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}, gather={self.gather}"
