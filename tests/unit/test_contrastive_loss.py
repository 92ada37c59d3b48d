"""NT-Xent (SimCLR eq. 1) against a plain-loop reference over a grid of settings, closed forms,
gradients and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses.contrastive import NTXentLoss, nt_xent
from selfsup.types import ConfigError, DataError


def _reference(
    z1: torch.Tensor, z2: torch.Tensor, t: float, normalize: bool = True
) -> torch.Tensor:
    """Transcription of SimCLR eq. 1 / Algorithm 1 with explicit loops (differentiable).

    z[k] and z[k + N] are the two views of sample k (the paper uses 2k-1 and 2k).
    """
    n = z1.shape[0]
    z = torch.cat([z1, z2])

    def sim(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return u @ v / (u.norm() * v.norm()) if normalize else u @ v

    def ell(i: int, j: int) -> torch.Tensor:
        denom = sum(torch.exp(sim(z[i], z[k]) / t) for k in range(2 * n) if k != i)
        return -torch.log(torch.exp(sim(z[i], z[j]) / t) / denom)

    total = sum(ell(k, k + n) + ell(k + n, k) for k in range(n))
    return total / (2 * n)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("dim", [1, 3, 16])
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0, 10.0])
def test_matches_reference_loss_and_gradients(n: int, dim: int, t: float) -> None:
    g = torch.Generator().manual_seed(n * 100 + dim)
    z1 = torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    loss = nt_xent(z1, z2, t)
    ref = _reference(z1, z2, t)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-10)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    r1, r2 = torch.autograd.grad(ref, (z1, z2))
    torch.testing.assert_close(g1, r1, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(g2, r2, rtol=1e-8, atol=1e-10)
    # the pairing is symmetric: swapping the views leaves the loss unchanged
    assert nt_xent(z2, z1, t).item() == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize("t", [0.2, 1.0])
def test_matches_reference_without_normalisation(t: float) -> None:
    g = torch.Generator().manual_seed(7)
    z1 = 0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    z2 = 0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    loss = nt_xent(z1, z2, t, normalize=False)
    assert float(loss) == pytest.approx(float(_reference(z1, z2, t, normalize=False)), rel=1e-10)
    assert float(loss) != pytest.approx(float(nt_xent(z1, z2, t)), rel=1e-3)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("t", [0.1, 0.5, 2.0])
def test_closed_form_identical_views_orthogonal_samples(n: int, t: float) -> None:
    # z1 == z2 and different samples mutually orthogonal: the positive has cosine 1, the other
    # 2N - 2 candidates cosine 0  ->  -log(e^{1/t} / (e^{1/t} + (2N - 2) e^0)).
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    z = q[:n] * torch.linspace(0.5, 3.0, n, dtype=torch.float64)[:, None]  # any norms
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2)))
    assert float(nt_xent(z, z.clone(), t)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n", [1, 3, 16])
def test_closed_form_equal_similarities(n: int) -> None:
    # huge temperature: every similarity / t is ~0, the softmax is uniform over 2N - 1 candidates
    z1, z2 = torch.randn(n, 8, dtype=torch.float64), torch.randn(n, 8, dtype=torch.float64)
    assert float(nt_xent(z1, z2, 1e8)) == pytest.approx(math.log(2 * n - 1), rel=1e-7, abs=1e-12)
    # collinear embeddings (all cosines 1) give the same value at any temperature
    base = torch.rand(2 * n, 1, dtype=torch.float64) + 0.1
    c = torch.cat([base, 2 * base], dim=1)
    for t in (0.05, 1.0, 7.0):
        assert float(nt_xent(c[:n], c[n:], t)) == pytest.approx(math.log(2 * n - 1), abs=1e-10)


def test_gradcheck() -> None:
    z1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2))


def test_stable_for_small_temperature_and_large_logits() -> None:
    # raw dot products of ~1e4 / 0.01: exp() would overflow; the log-softmax form must not
    z1 = (100 * torch.randn(8, 32)).requires_grad_()
    z2 = (100 * torch.randn(8, 32)).requires_grad_()
    loss = nt_xent(z1, z2, 0.01, normalize=False)
    loss.backward()
    assert torch.isfinite(loss.detach())
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    ref = nt_xent(z1.detach().double(), z2.detach().double(), 0.01, normalize=False)
    assert loss.detach().item() == pytest.approx(ref.item(), rel=1e-4)


def test_half_precision_inputs_give_float32_loss() -> None:
    z1, z2 = torch.randn(6, 16), torch.randn(6, 16)
    loss = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.5)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(nt_xent(z1, z2, 0.5)), abs=0.05)


def test_gather_is_identity_without_process_group() -> None:
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    assert float(nt_xent(z1, z2, gather=True)) == float(nt_xent(z1, z2, gather=False))


def test_module_wrapper() -> None:
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    crit = NTXentLoss(temperature=0.2, gather=False)
    assert float(crit(z1, z2)) == pytest.approx(float(nt_xent(z1, z2, 0.2)))
    assert "temperature=0.2" in repr(crit)


@pytest.mark.parametrize("t", [0.0, -0.5, float("nan")])
def test_non_positive_temperature_rejected(t: float) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        NTXentLoss(temperature=t)
    with pytest.raises(ConfigError, match="temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), t)


@pytest.mark.parametrize(
    "s1, s2", [((4, 8), (4, 7)), ((4, 8), (3, 8)), ((4,), (4,)), ((0, 8), (0, 8))]
)
def test_bad_shapes_rejected(s1: tuple[int, ...], s2: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match=r"\[N, D\]"):
        nt_xent(torch.randn(*s1), torch.randn(*s2))
