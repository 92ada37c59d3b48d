"""Barlow Twins (Zbontar et al. 2021, eq. 1) and VICReg (Bardes et al. 2022, eqs. 1-6) against
plain-loop references over a grid of settings, closed forms, gradients, input checks, and their
distributed form on 2 gloo processes (batch N each == one process with batch 2N)."""

from __future__ import annotations

import math

import pytest
import torch

from gloo_harness import run_on_ranks
from selfsup.losses.redundancy import (
    BarlowTwinsLoss,
    barlow_twins_loss,
    barlow_twins_terms,
    batch_standardize,
    cross_correlation,
    off_diagonal,
)
from selfsup.losses.vicreg import (
    VICRegLoss,
    covariance_loss,
    invariance_loss,
    variance_loss,
    vicreg_loss,
    vicreg_terms,
)
from selfsup.types import ConfigError, DataError

# ------------------------------------------------------------------ loop references


def _bt_reference(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float) -> torch.Tensor:
    """Barlow Twins eq. 1-2 with explicit loops over dimensions (differentiable)."""
    n, d = z1.shape

    def standardize(z: torch.Tensor) -> list[torch.Tensor]:
        cols = []
        for j in range(d):
            col = z[:, j]
            mean = sum(col[b] for b in range(n)) / n
            var = sum((col[b] - mean) ** 2 for b in range(n)) / n
            cols.append((col - mean) / torch.sqrt(var + eps))
        return cols

    a, b = standardize(z1), standardize(z2)
    loss = torch.zeros((), dtype=z1.dtype)
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss = loss + ((1 - c_ij) ** 2 if i == j else lambd * c_ij**2)
    return loss


def _vic_reference(
    z1: torch.Tensor, z2: torch.Tensor, gamma: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VICReg's invariance, mean variance hinge and summed covariance terms, with loops."""
    n, d = z1.shape
    inv = sum((z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def var_term(z: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=z.dtype)
        for j in range(d):
            mean = sum(z[b, j] for b in range(n)) / n
            v = sum((z[b, j] - mean) ** 2 for b in range(n)) / (n - 1)
            total = total + torch.clamp(gamma - torch.sqrt(v + eps), min=0)
        return total / d

    def cov_term(z: torch.Tensor) -> torch.Tensor:
        mean = [sum(z[b, j] for b in range(n)) / n for j in range(d)]
        total = torch.zeros((), dtype=z.dtype)
        for i in range(d):
            for j in range(d):
                if i != j:
                    c = sum((z[b, i] - mean[i]) * (z[b, j] - mean[j]) for b in range(n)) / (n - 1)
                    total = total + c**2
        return total / d

    return inv, (var_term(z1) + var_term(z2)) / 2, cov_term(z1) + cov_term(z2)


def _pair(n: int, d: int, seed: int, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 1
    z2 = 0.5 * z1 + torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.requires_grad_(grad), z2.requires_grad_(grad)


def _centred_orthonormal(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """``[n, d]`` with orthonormal columns that each sum to zero (needs d < n)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.cat([torch.ones(n, 1, dtype=torch.float64),
                   torch.randn(n, d, generator=g, dtype=torch.float64)], dim=1)
    q, _ = torch.linalg.qr(m)
    return q[:, 1:]  # orthogonal to the ones column -> zero mean


# ------------------------------------------------------------------ Barlow Twins


def test_off_diagonal() -> None:
    c = torch.arange(16.0).view(4, 4)
    expected = torch.tensor([c[i, j] for i in range(4) for j in range(4) if i != j])
    torch.testing.assert_close(off_diagonal(c), expected)
    assert off_diagonal(torch.ones(1, 1)).numel() == 0
    with pytest.raises(DataError, match="square"):
        off_diagonal(torch.ones(2, 3))


@pytest.mark.parametrize("n", [2, 5, 9])
@pytest.mark.parametrize("d", [1, 3, 6])
@pytest.mark.parametrize("lambd", [0.0, 5e-3, 0.5])
def test_barlow_twins_matches_reference(n: int, d: int, lambd: float) -> None:
    z1, z2 = _pair(n, d, seed=n * 10 + d, grad=True)
    loss = barlow_twins_loss(z1, z2, lambd, gather=False)
    ref = _bt_reference(z1, z2, lambd, 1e-5)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    g = torch.autograd.grad(loss, (z1, z2))
    r = torch.autograd.grad(ref, (z1, z2))
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    # the module wrapper and the split terms agree with the function
    assert BarlowTwinsLoss(lambd, gather=False)(z1, z2).item() == pytest.approx(loss.item())
    t = barlow_twins_terms(z1, z2, gather=False)
    assert (t.on_diag + lambd * t.off_diag).item() == pytest.approx(loss.item(), rel=1e-12)


def test_standardize_is_batchnorm_without_affine() -> None:
    z = torch.randn(7, 5, dtype=torch.float64) * 3 + 2
    bn = torch.nn.BatchNorm1d(5, affine=False).double().train()
    torch.testing.assert_close(batch_standardize(z, gather=False), bn(z))


@pytest.mark.parametrize("n,d", [(4, 3), (16, 8), (64, 20)])
def test_barlow_twins_zero_at_identity_correlation(n: int, d: int) -> None:
    # orthonormal, centred columns with any per-dimension scale and offset: after batch
    # standardisation the columns are sqrt(n) * q_j, so C = Q^T Q = I exactly (eps = 0)
    q = _centred_orthonormal(n, d)
    z1 = q * torch.linspace(0.3, 5.0, d, dtype=torch.float64) + torch.arange(d)
    z2 = q * 7.0 - 2.0
    torch.testing.assert_close(cross_correlation(z1, z2, eps=0.0, gather=False),
                               torch.eye(d, dtype=torch.float64))
    assert barlow_twins_loss(z1, z2, 0.5, eps=0.0, gather=False).item() == pytest.approx(
        0.0, abs=1e-12)
    # with BatchNorm's eps the diagonal is 1/sqrt(1 + eps/var): still ~0
    assert barlow_twins_loss(z1 * 100, z2 * 100, gather=False).item() < 1e-8


@pytest.mark.parametrize("d", [2, 5])
def test_barlow_twins_closed_forms(d: int) -> None:
    q = _centred_orthonormal(12, d, seed=1)
    # opposite views: C = -I, every diagonal term is (1 - (-1))^2 = 4, no off-diagonal
    assert barlow_twins_loss(q, -q, 0.3, eps=0.0, gather=False).item() == pytest.approx(4 * d)
    # fully redundant dimensions: every column the same centred unit vector -> C = all ones
    v = q[:, :1].repeat(1, d)
    loss = barlow_twins_loss(v, v, 0.3, eps=0.0, gather=False)
    assert loss.item() == pytest.approx(0.3 * d * (d - 1))
    # a collapsed (constant) embedding: standardised to 0 -> C = 0, loss = d
    const = torch.ones(6, d, dtype=torch.float64)
    assert barlow_twins_loss(const, const, 0.3, gather=False).item() == pytest.approx(d)


def test_barlow_twins_input_checks() -> None:
    z = torch.randn(4, 3)
    with pytest.raises(DataError, match="equal shape"):
        barlow_twins_loss(z, torch.randn(4, 2))
    with pytest.raises(DataError, match="equal shape"):
        barlow_twins_loss(z[0], z[0])
    with pytest.raises(DataError, match="at least 2"):
        barlow_twins_loss(z[:1], z[:1])
    with pytest.raises(ConfigError, match="lambd"):
        BarlowTwinsLoss(lambd=-1.0)
    with pytest.raises(ConfigError, match="eps"):
        BarlowTwinsLoss(eps=float("nan"))


def test_barlow_twins_half_precision_inputs_compute_in_float32() -> None:
    z1, z2 = _pair(8, 4, seed=3)
    loss = barlow_twins_loss(z1.bfloat16(), z2.bfloat16(), gather=False)
    assert loss.dtype == torch.float32
    ref = barlow_twins_loss(z1.bfloat16().double(), z2.bfloat16().double(), gather=False)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)


# ------------------------------------------------------------------ VICReg


@pytest.mark.parametrize("n", [2, 5, 9])
@pytest.mark.parametrize("d", [1, 4])
@pytest.mark.parametrize("gamma,eps", [(1.0, 1e-4), (2.5, 1e-2)])
def test_vicreg_terms_match_reference(n: int, d: int, gamma: float, eps: float) -> None:
    z1, z2 = _pair(n, d, seed=n + 7 * d, grad=True)
    t = vicreg_terms(z1, z2, gamma, eps, gather=False)
    ref = _vic_reference(z1, z2, gamma, eps)
    for got, want in zip(t, ref):
        assert got.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12)
    loss = vicreg_loss(z1, z2, 25.0, 25.0, 1.0, gamma, eps, gather=False)
    want_loss = 25 * ref[0] + 25 * ref[1] + ref[2]
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-10)
    g = torch.autograd.grad(loss, (z1, z2))
    r = torch.autograd.grad(want_loss, (z1, z2))
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    mod = VICRegLoss(25.0, 25.0, 1.0, gamma, eps, gather=False)
    assert mod(z1, z2).item() == pytest.approx(loss.item(), rel=1e-12)


def test_vicreg_closed_forms() -> None:
    n, d = 32, 6
    q = _centred_orthonormal(n, d, seed=2)
    # identical views -> invariance 0
    z = torch.randn(n, d, dtype=torch.float64)
    assert invariance_loss(z, z.clone()).item() == 0.0
    # invariance is the MSE: a constant offset c gives c^2
    assert invariance_loss(z, z + 0.5).item() == pytest.approx(0.25)
    # decorrelated (orthogonal centred columns) -> covariance 0 at any scales
    scaled = q * torch.linspace(1.0, 9.0, d, dtype=torch.float64)
    assert covariance_loss(scaled).item() == pytest.approx(0.0, abs=1e-24)
    # std >= 1 in every dimension -> variance 0; columns of q have std 1/sqrt(n - 1)
    big = q * math.sqrt(n - 1) * torch.linspace(1.0, 3.0, d, dtype=torch.float64)
    assert variance_loss(big).item() == 0.0
    # std exactly s < gamma everywhere -> gamma - sqrt(s^2 + eps)
    s = 0.3
    small = q * math.sqrt(n - 1) * s
    assert variance_loss(small, 1.0, 1e-4).item() == pytest.approx(1 - math.sqrt(s**2 + 1e-4))
    # a collapsed batch: every row the same -> variance 1 - sqrt(eps) = 0.99, covariance 0
    const = torch.ones(n, d, dtype=torch.float64) * 3
    assert variance_loss(const).item() == pytest.approx(0.99)
    assert covariance_loss(const).item() == 0.0
    # fully redundant dimensions: cov = var * ones -> off-diagonal sum var^2 d (d - 1) / d
    v = q[:, :1].repeat(1, d) * math.sqrt(n - 1)  # var 1 in each column
    assert covariance_loss(v).item() == pytest.approx(d - 1)


def test_vicreg_input_checks() -> None:
    z = torch.randn(4, 3)
    with pytest.raises(DataError, match="equal shape"):
        vicreg_loss(z, torch.randn(5, 3))
    with pytest.raises(DataError, match="at least 2"):
        vicreg_loss(z[:1], z[:1])
    with pytest.raises(DataError, match="N >= 2"):
        variance_loss(z[:1])
    with pytest.raises(DataError, match="N >= 2"):
        covariance_loss(torch.randn(3))
    for bad in ({"sim_coeff": -1.0}, {"gamma": -0.1}, {"eps": float("inf")}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            VICRegLoss(**bad)
    with pytest.raises(ConfigError, match="cov_coeff"):
        vicreg_loss(z, z, cov_coeff=-2.0)


# ------------------------------------------------------------------ distributed (2 gloo ranks)

WORLD = 2
NB, D = 4, 3  # per-rank batch, embedding size


def _global_pair() -> tuple[torch.Tensor, torch.Tensor]:
    return _pair(WORLD * NB, D, seed=11)


def _worker(rank: int) -> dict:
    x1, x2 = _global_pair()
    local = slice(rank * NB, (rank + 1) * NB)
    res = {}
    for name, fn in (("bt", lambda a, b: barlow_twins_loss(a, b, 0.1)),
                     ("vic", lambda a, b: vicreg_loss(a, b))):
        z1 = x1[local].clone().requires_grad_()
        z2 = x2[local].clone().requires_grad_()
        loss = fn(z1, z2)
        loss.backward()
        res[name] = {"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad}
    res["bt_local"] = barlow_twins_loss(x1[local], x2[local], 0.1, gather=False)
    res["vic_local"] = vicreg_loss(x1[local], x2[local], gather=False)
    return res



@pytest.fixture(scope="module")
def dist_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_on_ranks(_worker, WORLD, tmp_path_factory.mktemp("redundancy"))


@pytest.mark.parametrize("name", ["bt", "vic"])
def test_distributed_equals_single_process_full_batch(dist_results: list[dict],
                                                      name: str) -> None:
    x1, x2 = _global_pair()
    z1, z2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    full = barlow_twins_loss(z1, z2, 0.1) if name == "bt" else vicreg_loss(z1, z2)
    full.backward()
    assert z1.grad is not None and z2.grad is not None
    mean_loss = sum(r[name]["loss"] for r in dist_results) / WORLD
    torch.testing.assert_close(mean_loss, full.detach(), rtol=1e-12, atol=1e-12)
    if name == "bt":  # Barlow Twins' loss is a function of the global C: equal on every rank
        for r in dist_results:
            torch.testing.assert_close(r[name]["loss"], full.detach(), rtol=1e-12, atol=1e-12)
    for rank, r in enumerate(dist_results):
        local = slice(rank * NB, (rank + 1) * NB)
        # convention: a rank's input gradient is WORLD x the single-process one (DDP averages)
        torch.testing.assert_close(r[name]["g1"] / WORLD, z1.grad[local], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(r[name]["g2"] / WORLD, z2.grad[local], rtol=1e-9, atol=1e-12)
        # the global statistics matter: the local-only loss differs
        assert abs(r[name]["loss"].item() - r[f"{name}_local"].item()) > 1e-3
