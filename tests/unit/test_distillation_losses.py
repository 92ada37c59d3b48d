"""BYOL's normalised MSE (Grill et al. 2020, eq. 2) and SimSiam's negative cosine (Chen & He 2021,
eqs. 1-4) against per-sample loop references, closed forms, the stop-gradient and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses.distillation import byol_loss, negative_cosine, normalized_mse, simsiam_loss
from selfsup.types import DataError


def _nmse_reference(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mean_i || p_i/|p_i| - z_i/|z_i| ||^2 (BYOL eq. 2), one sample at a time."""
    total = torch.zeros((), dtype=p.dtype)
    for i in range(p.shape[0]):
        diff = p[i] / p[i].norm() - z[i] / z[i].norm()
        total = total + (diff * diff).sum()
    return total / p.shape[0]


def _neg_cos_reference(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-mean_i p_i . z_i / (|p_i| |z_i|) (SimSiam eq. 1)."""
    return -sum(p[i] @ z[i] / (p[i].norm() * z[i].norm()) for i in range(p.shape[0])) / p.shape[0]


def _four(n: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(4)]


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("d", [1, 2, 16])
def test_byol_matches_reference(n: int, d: int) -> None:
    p1, p2, z1, z2 = _four(n, d, seed=n * 31 + d)
    loss = byol_loss(p1, p2, z1, z2)
    ref = _nmse_reference(p1, z2) + _nmse_reference(p2, z1)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    for a, b in zip(torch.autograd.grad(loss, (p1, p2, z1, z2)),
                    torch.autograd.grad(ref, (p1, p2, z1, z2))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    # the 2 - 2 cos form of eq. 2
    cos = torch.nn.functional.cosine_similarity(p1, z2, dim=1)
    assert normalized_mse(p1, z2).item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-10)


def test_byol_closed_forms() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64)
    scale = torch.rand(5, 1, generator=g, dtype=torch.float64) + 0.1
    # identical directions (any positive scale) -> 0; opposite -> 4 per pair, 8 symmetrised
    assert byol_loss(z * scale, z * 3, z, z).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(-z, -z, z, z).item() == pytest.approx(8.0)
    # orthogonal -> 2 per pair
    e = torch.eye(4, dtype=torch.float64)
    assert normalized_mse(e, e.roll(1, dims=1)).item() == pytest.approx(2.0)
    # symmetric in the two directions
    p1, p2, z1, z2 = _four(4, 3, seed=1)
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(byol_loss(p2, p1, z2, z1).item())


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("d", [2, 9])
def test_simsiam_matches_reference(n: int, d: int) -> None:
    p1, p2, z1, z2 = _four(n, d, seed=n * 7 + d)
    loss = simsiam_loss(p1, p2, z1, z2, stop_gradient=False)
    ref = 0.5 * _neg_cos_reference(p1, z2) + 0.5 * _neg_cos_reference(p2, z1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    for a, b in zip(torch.autograd.grad(loss, (p1, p2, z1, z2)),
                    torch.autograd.grad(ref, (p1, p2, z1, z2))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_simsiam_closed_forms() -> None:
    z = torch.randn(6, 5, dtype=torch.float64)
    assert simsiam_loss(z, 2 * z, z, z).item() == pytest.approx(-1.0)
    assert simsiam_loss(-z, -z, z, z).item() == pytest.approx(1.0)
    e = torch.eye(3, dtype=torch.float64)
    assert negative_cosine(e, e.roll(1, dims=1)).item() == pytest.approx(0.0, abs=1e-15)
    # 45 degrees: -cos(pi / 4)
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert negative_cosine(a, b).item() == pytest.approx(-math.sqrt(0.5))


def test_stop_gradient() -> None:
    p1, p2, z1, z2 = _four(4, 3, seed=5)
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None  # eq. 3: z is a constant
    assert p1.grad is not None and p2.grad is not None
    # without the stop-gradient the same value, but z receives a gradient too
    q1, q2, y1, y2 = (t.detach().clone().requires_grad_() for t in (p1, p2, z1, z2))
    loss = simsiam_loss(q1, q2, y1, y2, stop_gradient=False)
    assert loss.item() == pytest.approx(simsiam_loss(p1, p2, z1, z2).item())
    loss.backward()
    assert y1.grad is not None and y1.grad.abs().sum() > 0
    torch.testing.assert_close(q1.grad, p1.grad)


def test_half_precision_inputs_compute_in_float32() -> None:
    p1, p2, z1, z2 = (t.detach().bfloat16() for t in _four(8, 16, seed=2))
    assert byol_loss(p1, p2, z1, z2).dtype == torch.float32
    assert simsiam_loss(p1, p2, z1, z2).dtype == torch.float32


def test_zero_vectors_do_not_give_nan() -> None:
    z = torch.zeros(3, 4, requires_grad=True)
    loss = byol_loss(z, z, torch.ones(3, 4), torch.ones(3, 4))
    assert loss.item() == pytest.approx(4.0)  # cos = 0 for a zero prediction
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_input_checks() -> None:
    a = torch.randn(4, 3)
    with pytest.raises(DataError, match="normalized_mse"):
        normalized_mse(a, torch.randn(4, 2))
    with pytest.raises(DataError, match="negative_cosine"):
        negative_cosine(a[0], a[0])
    with pytest.raises(DataError, match="equal shape"):
        byol_loss(a, a, a, torch.randn(3, 3))
    with pytest.raises(DataError, match="non-empty"):
        simsiam_loss(a[:0], a[:0], a[:0], a[:0])
