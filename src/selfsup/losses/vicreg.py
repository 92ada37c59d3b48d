"""VICReg's loss (Bardes et al. 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", eqs. 1-6), each term public: invariance ``s(Z, Z') = mean (z - z')^2``,
variance ``v(Z) = mean_j max(0, gamma - sqrt(Var(z^j) + eps))`` (unbiased variance) and covariance
``c(Z) = sum_{i != j} Cov(Z)_ij^2 / d``; ``L = lambda s + mu [v(Z) + v(Z')] / 2 + nu [c(Z) + c(Z')]``
with ``lambda = mu = 25``, ``nu = 1`` (variance averaged and covariance summed over the branches,
as the authors' code). Distributed behaviour and float32 computation as
:mod:`selfsup.losses.redundancy` (the embeddings are gathered for the variance and covariance).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.redundancy import _check_number, _check_pair, _float, _global_rows, off_diagonal
from selfsup.types import DataError
from selfsup.utils import dist

__all__ = [
    "VICRegLoss",
    "VICRegTerms",
    "covariance_loss",
    "invariance_loss",
    "variance_loss",
    "vicreg_loss",
    "vicreg_terms",
]


# ------------------------------------------------------------------------------------ VICReg


def invariance_loss(z1: Tensor, z2: Tensor) -> Tensor:
    """VICReg invariance ``s(Z, Z')`` (Bardes et al. 2022, eq. 5): MSE over all ``N * D`` entries.

    Raises:
        DataError: for shapes other than two equal non-empty ``[N, D]``.
    """
    _check_pair(z1, z2, "invariance_loss")
    return F.mse_loss(_float(z1), _float(z2))


def variance_loss(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg variance ``v(Z) = mean_j max(0, gamma - sqrt(Var(z^j) + eps))`` (eqs. 1-2).

    ``Var`` is the unbiased variance over the ``N`` rows of ``z`` ``[N, D]`` (pass the gathered
    batch when distributed).

    Raises:
        DataError: if ``z`` is not ``[N, D]`` with ``N >= 2``.
        ConfigError: if ``gamma`` or ``eps`` is negative.
    """
    _check_number("gamma", gamma)
    _check_number("eps", eps)
    if z.dim() != 2 or z.shape[0] < 2 or z.shape[1] == 0:
        raise DataError(f"variance_loss expects [N, D] embeddings with N >= 2, got "
                        f"{tuple(z.shape)}")
    std = torch.sqrt(_float(z).var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_loss(z: Tensor) -> Tensor:
    """VICReg covariance ``c(Z) = sum_{i != j} C(Z)_ij^2 / D`` (eqs. 3-4), with
    ``C(Z) = sum_b (z_b - mean)(z_b - mean)^T / (N - 1)`` over the rows of ``z`` ``[N, D]``.

    Raises:
        DataError: if ``z`` is not ``[N, D]`` with ``N >= 2``.
    """
    if z.dim() != 2 or z.shape[0] < 2 or z.shape[1] == 0:
        raise DataError(f"covariance_loss expects [N, D] embeddings with N >= 2, got "
                        f"{tuple(z.shape)}")
    z = _float(z)
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (z.shape[0] - 1)  # [D, D]
    return off_diagonal(cov).pow(2).sum() / z.shape[1]


class VICRegTerms(NamedTuple):
    """VICReg's three terms, unweighted: ``invariance`` s(Z, Z'), ``variance`` [v(Z) + v(Z')] / 2
    and ``covariance`` c(Z) + c(Z')."""

    invariance: Tensor
    variance: Tensor
    covariance: Tensor


def vicreg_terms(
    z1: Tensor, z2: Tensor, gamma: float = 1.0, eps: float = 1e-4, *, gather: bool = True
) -> VICRegTerms:
    """The three VICReg terms of two ``[N, D]`` embeddings (invariance over this rank's rows,
    variance and covariance over the batch gathered from all ranks).

    Raises:
        DataError: for shapes other than two equal ``[N, D]`` or a global batch below 2.
        ConfigError: if ``gamma`` or ``eps`` is negative.
    """
    _check_pair(z1, z2, "vicreg")
    _global_rows(z1, gather, "vicreg")
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = _float(z1), _float(z2)
        inv = invariance_loss(z1, z2)
        if gather and dist.world_size() > 1:
            z1, z2 = dist.all_gather_grad(z1), dist.all_gather_grad(z2)
        var = 0.5 * (variance_loss(z1, gamma, eps) + variance_loss(z2, gamma, eps))
        cov = covariance_loss(z1) + covariance_loss(z2)
    return VICRegTerms(inv, var, cov)


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    *,
    gather: bool = True,
) -> Tensor:
    """VICReg loss ``sim * s + std * [v(Z) + v(Z')] / 2 + cov * [c(Z) + c(Z')]`` (eq. 6).

    Args:
        z1: expander outputs of the first views ``[N, D]``.
        z2: expander outputs of the second views ``[N, D]``.
        sim_coeff: invariance weight lambda (paper: 25).
        std_coeff: variance weight mu (paper: 25).
        cov_coeff: covariance weight nu (paper: 1).
        gamma: target standard deviation of every dimension (paper: 1).
        eps: numerical epsilon inside the square root (paper: 1e-4).
        gather: variance and covariance over the batch of all ranks when distributed.

    Returns:
        Scalar (float32 or float64).

    Raises:
        DataError: for shapes other than two equal ``[N, D]`` or a global batch below 2.
        ConfigError: if a coefficient, ``gamma`` or ``eps`` is negative.
    """
    for name, v in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
        _check_number(name, v)
    t = vicreg_terms(z1, z2, gamma, eps, gather=gather)
    return sim_coeff * t.invariance + std_coeff * t.variance + cov_coeff * t.covariance


class VICRegLoss(nn.Module):
    """Module wrapper of :func:`vicreg_loss` (Bardes et al. 2022, eq. 6).

    ``forward(z1 [N, D], z2 [N, D]) -> scalar``; :meth:`terms` and :meth:`combine` split it for
    logging.

    Raises:
        ConfigError: at construction, for a negative or non-finite coefficient, gamma or eps.
    """

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        gather: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff),
                        ("cov_coeff", cov_coeff), ("gamma", gamma), ("eps", eps)):
            _check_number(name, v)
        self.sim_coeff, self.std_coeff, self.cov_coeff = (
            float(sim_coeff), float(std_coeff), float(cov_coeff))
        self.gamma, self.eps, self.gather = float(gamma), float(eps), gather

    def terms(self, z1: Tensor, z2: Tensor) -> VICRegTerms:
        return vicreg_terms(z1, z2, self.gamma, self.eps, gather=self.gather)

    def combine(self, t: VICRegTerms) -> Tensor:
        return (self.sim_coeff * t.invariance + self.std_coeff * t.variance
                + self.cov_coeff * t.covariance)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return self.combine(self.terms(z1, z2))

    def extra_repr(self) -> str:
        return (f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, "
                f"cov_coeff={self.cov_coeff}, gamma={self.gamma}, eps={self.eps}, "
                f"gather={self.gather}")
