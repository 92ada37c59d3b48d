"""Sinkhorn-Knopp (SwAV eq. 3-5): marginals, a loop reference, the closed form of the limit and
input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.nn.sinkhorn import sinkhorn
from selfsup.types import ConfigError, DataError
from sinkhorn_reference import loop_sinkhorn


def _scores(b: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, 16, generator=g), dim=1)
    c = F.normalize(torch.randn(k, 16, generator=g), dim=1)
    return z @ c.t()  # cosine similarities, as SwAV's scores


@pytest.mark.parametrize(("b", "k", "eps", "iters"),
                         [(8, 5, 0.05, 3), (32, 10, 0.05, 3), (6, 12, 0.1, 1), (16, 4, 0.5, 7)])
def test_matches_loop_reference(b: int, k: int, eps: float, iters: int) -> None:
    s = _scores(b, k)
    torch.testing.assert_close(sinkhorn(s, eps, iters).double(), loop_sinkhorn(s, eps, iters),
                               rtol=1e-4, atol=1e-6)


def test_marginals() -> None:
    s = _scores(64, 8)
    q = sinkhorn(s, 0.05, 3)
    assert q.shape == (64, 8) and bool((q >= 0).all()) and not q.requires_grad
    # after the last (column) normalisation every sample's code sums to exactly 1
    torch.testing.assert_close(q.sum(1), torch.ones(64))
    # prototype totals approach B / K (equipartition) as the iterations grow
    err3 = (q.sum(0) - 64 / 8).abs().max()
    q100 = sinkhorn(s, 0.05, 100)
    torch.testing.assert_close(q100.sum(0), torch.full((8,), 64 / 8), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(q100.sum(1), torch.ones(64))
    assert (q100.sum(0) - 8).abs().max() < err3


def test_uniform_scores_give_uniform_codes_and_equipartition_beats_argmax() -> None:
    q = sinkhorn(torch.zeros(10, 5), 0.05, 3)
    torch.testing.assert_close(q, torch.full((10, 5), 0.2))
    # every sample prefers prototype 0: argmax would put all in one cluster, Sinkhorn spreads
    s = torch.zeros(20, 4)
    s[:, 0] = 0.5
    s += 0.01 * torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    q = sinkhorn(s, 0.05, 50)
    torch.testing.assert_close(q.sum(0), torch.full((4,), 5.0), rtol=1e-3, atol=1e-3)


def test_low_precision_input_and_bad_input() -> None:
    s = _scores(8, 4)
    torch.testing.assert_close(sinkhorn(s.bfloat16()), sinkhorn(s.bfloat16().float()))
    assert sinkhorn(s.bfloat16()).dtype == torch.float32
    with pytest.raises(ConfigError, match="eps"):
        sinkhorn(s, eps=0.0)
    with pytest.raises(ConfigError, match="iters"):
        sinkhorn(s, iters=0)
    with pytest.raises(DataError, match=r"\[B, K\]"):
        sinkhorn(torch.zeros(3))


def test_large_logits_do_not_overflow_and_a_constant_shift_changes_nothing() -> None:
    """DINOv2 feeds unbounded teacher logits at eps = tau_t = 0.04: exp(20 / 0.04) overflows
    float32 (not float64, the reference's dtype); a sample whose scores are all far below the
    others still gets a code (no 0/0 column)."""
    s = _scores(16, 6) * 20.0
    q = sinkhorn(s, 0.04, 3)
    assert bool(torch.isfinite(q).all())
    torch.testing.assert_close(q.double(), loop_sinkhorn(s, 0.04, 3), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sinkhorn(s + 7.0, 0.04, 3), q, rtol=1e-5, atol=1e-6)
    s[0] -= 200.0  # exp((s - max) / eps) of this row underflows to 0 in float64 too
    q = sinkhorn(s, 0.04, 3)
    assert bool(torch.isfinite(q).all())
    torch.testing.assert_close(q.sum(1), torch.ones(16))
