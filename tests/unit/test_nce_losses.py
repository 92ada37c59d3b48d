"""InstDisc NCE (Wu et al. 2018, eq. 5-8), InvaSpread (Ye et al. 2019, sec. 3.1) and CPC's
InfoNCE against plain-loop transcriptions of the papers' formulas, closed forms and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses.nce import (
    cpc_info_nce,
    estimate_log_z,
    invaspread_batch_loss,
    invaspread_loss,
    nce_loss,
)
from selfsup.types import ConfigError, DataError


def _nce_reference(pos: torch.Tensor, noise: torch.Tensor, n: int, z: float) -> torch.Tensor:
    """Loop transcription: P = exp(logit)/Z, h = P / (P + m/n), J = -log h - sum log(1 - h)."""
    total = torch.zeros((), dtype=pos.dtype)
    m = noise.shape[1]
    for i in range(pos.shape[0]):
        p = torch.exp(pos[i]) / z
        term = -torch.log(p / (p + m / n))
        for k in range(m):
            pn = torch.exp(noise[i, k]) / z
            term = term - torch.log(1 - pn / (pn + m / n))
        total = total + term
    return total / pos.shape[0]


@pytest.mark.parametrize("b", [1, 3, 6])
@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize("n", [10, 1000])
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_nce_matches_reference(b: int, k: int, n: int, t: float) -> None:
    g = torch.Generator().manual_seed(b * 31 + k + n)
    f = torch.nn.functional.normalize(torch.randn(b, 8, generator=g, dtype=torch.float64), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(b + k, 8, generator=g, dtype=torch.float64),
                                         dim=1)
    f.requires_grad_(True)
    pos = (f * bank[:b]).sum(1) / t
    noise = f @ bank[b:].T / t
    log_z = estimate_log_z(noise, n)
    z = n * torch.exp(noise.detach()).mean().item()  # the paper's estimate, by hand
    assert float(log_z) == pytest.approx(math.log(z), rel=1e-12)
    loss = nce_loss(pos, noise, n, log_z)
    ref = _nce_reference(pos, noise, n, z)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    (g1,) = torch.autograd.grad(loss, f, retain_graph=True)
    (r1,) = torch.autograd.grad(ref, f)
    torch.testing.assert_close(g1, r1, rtol=1e-7, atol=1e-10)


def test_nce_closed_form_and_float_z() -> None:
    # every logit equal to log Z + log(m/n): h = 1/2 for all, loss = (1 + m) log 2
    n, m = 50, 7
    shift = math.log(3.0) + math.log(m / n)
    pos = torch.full((4,), shift, dtype=torch.float64)
    noise = torch.full((4, m), shift, dtype=torch.float64)
    assert float(nce_loss(pos, noise, n, math.log(3.0))) == pytest.approx((1 + m) * math.log(2))


def test_nce_stable_for_huge_logits() -> None:
    pos = torch.tensor([500.0, -500.0], requires_grad=True)
    noise = torch.tensor([[400.0, -300.0], [0.0, 800.0]], requires_grad=True)
    loss = nce_loss(pos, noise, 100, torch.tensor(0.0))
    loss.backward()
    assert torch.isfinite(loss) and pos.grad is not None and torch.isfinite(pos.grad).all()


def test_nce_bad_inputs() -> None:
    with pytest.raises(DataError, match=r"\[N, K\]"):
        nce_loss(torch.randn(3), torch.randn(4, 2), 10, 0.0)
    with pytest.raises(DataError, match="K >= 1"):
        nce_loss(torch.randn(3), torch.randn(3, 0), 10, 0.0)
    with pytest.raises(ConfigError, match="num_samples"):
        nce_loss(torch.randn(3), torch.randn(3, 2), 0, 0.0)
    with pytest.raises(DataError, match=r"\[N, K\]"):
        estimate_log_z(torch.randn(3), 10)


def _invaspread_reference(f: torch.Tensor, fh: torch.Tensor, t: float) -> torch.Tensor:
    """Loop transcription of Ye et al. 2019 sec. 3.1 (features normalised first)."""
    f = f / f.norm(dim=1, keepdim=True)
    fh = fh / fh.norm(dim=1, keepdim=True)
    m = f.shape[0]
    total = torch.zeros((), dtype=f.dtype)
    for i in range(m):
        den = sum(torch.exp(f[k] @ fh[i] / t) for k in range(m))
        total = total - torch.log(torch.exp(f[i] @ fh[i] / t) / den)
        for j in range(m):
            if j == i:
                continue
            den_j = sum(torch.exp(f[k] @ f[j] / t) for k in range(m))
            total = total - torch.log(1 - torch.exp(f[i] @ f[j] / t) / den_j)
    return total / m


@pytest.mark.parametrize("m", [2, 3, 7])
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("t", [0.1, 0.5, 2.0])
def test_invaspread_matches_reference(m: int, dim: int, t: float) -> None:
    g = torch.Generator().manual_seed(m * 10 + dim)
    f = torch.randn(m, dim, generator=g, dtype=torch.float64, requires_grad=True)
    fh = torch.randn(m, dim, generator=g, dtype=torch.float64, requires_grad=True)
    loss = invaspread_loss(f, fh, t)
    ref = _invaspread_reference(f, fh, t)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    ga = torch.autograd.grad(loss, (f, fh), retain_graph=True)
    gr = torch.autograd.grad(ref, (f, fh))
    for a, r in zip(ga, gr):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-10)
    # the roles of the views are not symmetric
    assert invaspread_loss(fh, f, t).item() != pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("m", [2, 4, 8])
def test_invaspread_closed_form_orthogonal(m: int) -> None:
    # f_hat == f, features mutually orthogonal: P(i|x_hat_i) = e^{1/t} / (e^{1/t} + m - 1),
    # P(i|x_j) = 1 / (e^{1/t} + m - 1) for j != i
    t = 0.5
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    f = q[:m] * 3.0
    e, d = math.exp(1 / t), math.exp(1 / t) + m - 1
    expected = -math.log(e / d) - (m - 1) * math.log(1 - 1 / d)
    assert float(invaspread_loss(f, f.clone(), t)) == pytest.approx(expected, rel=1e-12)


def test_invaspread_bad_inputs() -> None:
    with pytest.raises(DataError, match="m >= 2"):
        invaspread_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(DataError, match="equal shape"):
        invaspread_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ConfigError, match="temperature"):
        invaspread_loss(torch.randn(3, 4), torch.randn(3, 4), 0.0)



def _batch_criterion_reference(f: torch.Tensor, fh: torch.Tensor, t: float,
                               detach: bool = True) -> torch.Tensor:
    """Loop transcription of InvaSpread's official BatchCriterion (BatchAverage.py, negM = 1):
    every one of the 2m embeddings is an anchor, the 2m - 1 others (no gradient) are the
    weights, the positive is the other view, the sum is divided by 2m."""
    z = torch.cat([f, fh])
    z = z / z.norm(dim=1, keepdim=True)
    w = z.detach() if detach else z
    n = z.shape[0]
    total = torch.zeros((), dtype=z.dtype)
    for i in range(n):
        pair = (i + n // 2) % n
        den = sum(torch.exp(z[i] @ w[k] / t) for k in range(n) if k != i)
        total = total - torch.log(torch.exp(z[i] @ w[pair] / t) / den)
        for j in range(n):
            if j not in (i, pair):
                total = total - torch.log(1 - torch.exp(z[i] @ w[j] / t) / den)
    return total / n


@pytest.mark.parametrize("m", [2, 3, 6])
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("t", [0.1, 0.5, 2.0])
def test_invaspread_batch_matches_official_reference(m: int, dim: int, t: float) -> None:
    g = torch.Generator().manual_seed(m * 10 + dim)
    f = torch.randn(m, dim, generator=g, dtype=torch.float64, requires_grad=True)
    fh = torch.randn(m, dim, generator=g, dtype=torch.float64, requires_grad=True)
    loss = invaspread_batch_loss(f, fh, t)
    ref = _batch_criterion_reference(f, fh, t)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    ga = torch.autograd.grad(loss, (f, fh))
    gr = torch.autograd.grad(ref, (f, fh))
    for a, r in zip(ga, gr):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-10)
    # the weight side is detached: gradients through both sides would differ
    f2, fh2 = f.detach().clone().requires_grad_(), fh.detach().clone().requires_grad_()
    g_both = torch.autograd.grad(_batch_criterion_reference(f2, fh2, t, detach=False), (f2,))[0]
    assert not torch.allclose(ga[0], g_both, rtol=1e-3, atol=1e-6)
    # not the paper's one-sided loss, and symmetric in the two views
    assert loss.item() != pytest.approx(invaspread_loss(f, fh, t).item(), rel=1e-4)
    assert invaspread_batch_loss(fh, f, t).item() == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize("m", [2, 4, 8])
def test_invaspread_batch_closed_form_orthogonal(m: int) -> None:
    # f_hat == f, features mutually orthogonal: each anchor's 2m - 1 others are its copy (score
    # 1/t) and 2m - 2 orthogonal ones (score 0): P(pos) = e / d, P(neg) = 1 / d, d = e + 2m - 2
    t = 0.5
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    f = q[:m] * 3.0
    e = math.exp(1 / t)
    d = e + 2 * m - 2
    expected = -math.log(e / d) - (2 * m - 2) * math.log(1 - 1 / d)
    assert float(invaspread_batch_loss(f, f.clone(), t)) == pytest.approx(expected, rel=1e-12)


def test_invaspread_batch_is_finite_for_duplicate_instances() -> None:
    # two images with the same embedding and far-away second views: P(j | z_i) -> 1 without
    # the self term; a float32 `log(1 - P)` would be -inf there (the official code's is)
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 8, generator=g)
    f[1] = f[0]
    fh = -f.clone()
    fh[:, 0] += 5.0
    f.requires_grad_(True)
    loss = invaspread_batch_loss(f, fh, 0.05)
    (grad,) = torch.autograd.grad(loss, (f,))
    ref = _batch_criterion_reference(f.detach().double(), fh.double(), 0.05)
    assert torch.isfinite(grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_invaspread_batch_bad_inputs() -> None:
    with pytest.raises(DataError, match="m >= 2"):
        invaspread_batch_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(DataError, match="equal shape"):
        invaspread_batch_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ConfigError, match="temperature"):
        invaspread_batch_loss(torch.randn(3, 4), torch.randn(3, 4), -1.0)


def test_cpc_info_nce_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([0, 3, 8, 3, 5])
    loss = cpc_info_nce(p, z, idx)
    ref = sum(-torch.log(torch.exp(p[m] @ z[idx[m]]) / sum(torch.exp(p[m] @ z[n])
                                                           for n in range(9)))
              for m in range(5)) / 5
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.autograd.gradcheck(lambda a, b: cpc_info_nce(a, b, idx), (p, z))
    # all-equal scores: log N
    assert float(cpc_info_nce(torch.zeros(3, 6), z.detach().float(), idx[:3])) == pytest.approx(
        math.log(9), rel=1e-6)
    with pytest.raises(DataError, match="lie in"):
        cpc_info_nce(p, z, torch.tensor([0, 1, 2, 3, 9]))
    with pytest.raises(DataError, match=r"\[M\]"):
        cpc_info_nce(p, z, torch.tensor([0, 1]))
