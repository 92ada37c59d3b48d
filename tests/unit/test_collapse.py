"""Collapse metrics (SimSiam std, RankMe, Wang & Isola): closed forms and loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.eval.collapse import (
    alignment,
    collapse_report,
    effective_rank,
    embedding_std,
    uniformity,
)
from selfsup.types import DataError


def test_constant_embeddings_are_collapsed() -> None:
    z = torch.ones(64, 16) * 3.0
    assert embedding_std(z) == pytest.approx(0.0, abs=1e-7)
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-3)
    assert uniformity(z) == pytest.approx(0.0, abs=1e-9)  # its maximum: all points coincide
    r = collapse_report(z)
    assert r["collapsed"] is True and r["std_ratio"] == pytest.approx(0.0, abs=1e-6)


def test_isotropic_gaussian_is_healthy() -> None:
    d = 32
    z = torch.randn(4096, d, generator=torch.Generator().manual_seed(0))
    assert embedding_std(z) == pytest.approx(1 / math.sqrt(d), rel=0.05)
    r = collapse_report(z)
    assert r["std_ratio"] == pytest.approx(1.0, abs=0.05)
    assert 0.9 * d < r["effective_rank"] <= d
    assert r["collapsed"] is False


def test_embedding_std_reference_and_scale_invariance() -> None:
    z = torch.randn(50, 7, generator=torch.Generator().manual_seed(1))
    zn = z.numpy().astype(np.float64)
    zn /= np.linalg.norm(zn, axis=1, keepdims=True)
    assert embedding_std(z) == pytest.approx(float(zn.std(axis=0, ddof=1).mean()), rel=1e-6)
    assert embedding_std(z * 10) == pytest.approx(embedding_std(z), rel=1e-6)
    # two orthogonal unit vectors: each coordinate is {1, 0}, std 1 / sqrt(2)
    assert embedding_std(torch.eye(2)) == pytest.approx(1 / math.sqrt(2))


@pytest.mark.parametrize("k", [1, 2, 5, 12])
def test_effective_rank_of_k_equal_singular_values_is_k(k: int) -> None:
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(k)))
    z = q[:, :k] @ torch.eye(k, 12)  # [20, 12] with k unit singular values
    assert effective_rank(z) == pytest.approx(k, rel=1e-4)


def test_effective_rank_reference() -> None:
    z = torch.randn(40, 10, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.1, 3, 10)
    s = np.linalg.svd(z.numpy().astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert effective_rank(z) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)


def test_one_line_with_both_signs_is_caught_by_rank() -> None:
    # normalised embeddings are +v or -v: spread out per dimension, yet rank 1
    v = torch.randn(16)
    sign = torch.tensor([1.0, -1.0]).repeat(32)[:, None]
    z = sign * v * torch.rand(64, 1).add(0.5)
    r = collapse_report(z)
    assert r["std_ratio"] > 0.5
    assert r["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert r["collapsed"] is True


def test_alignment_closed_forms_and_reference() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(30, 8, generator=g)
    assert alignment(z, z * 2.0) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, -z) == pytest.approx(4.0)  # antipodal: ||u - (-u)||^2 = 4
    assert alignment(z, -z, alpha=1.0) == pytest.approx(2.0)
    z2 = torch.randn(30, 8, generator=g)
    a = z.double() / z.double().norm(dim=1, keepdim=True)
    b = z2.double() / z2.double().norm(dim=1, keepdim=True)
    want = sum(float((a[i] - b[i]).norm() ** 2) for i in range(30)) / 30
    assert alignment(z, z2) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("t", [0.5, 2.0])
def test_uniformity_loop_reference(t: float) -> None:
    z = torch.randn(12, 5, generator=torch.Generator().manual_seed(4))
    u = z.double() / z.double().norm(dim=1, keepdim=True)
    terms = [
        math.exp(-t * float((u[i] - u[j]).norm() ** 2)) for i in range(12) for j in range(i + 1, 12)
    ]
    assert uniformity(z, t=t) == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-9)
    # two antipodal points: one pair at squared distance 4
    assert uniformity(torch.tensor([[1.0, 0.0], [-2.0, 0.0]]), t=t) == pytest.approx(-4 * t)


def test_report_keys_with_second_view() -> None:
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(32, 8, generator=g)
    r = collapse_report(z1, z1 + 0.01 * torch.randn(32, 8, generator=g))
    assert set(r) == {
        "embedding_std",
        "std_ratio",
        "effective_rank",
        "rank_ratio",
        "uniformity",
        "alignment",
        "collapsed",
    }
    assert 0 < r["alignment"] < 0.01
    assert r["rank_ratio"] == pytest.approx(r["effective_rank"] / 8)


def test_bad_input_raises() -> None:
    with pytest.raises(DataError, match="B >= 2"):
        embedding_std(torch.randn(1, 4))
    with pytest.raises(DataError, match=r"\[B, D\]"):
        effective_rank(torch.randn(4))
    with pytest.raises(DataError, match="NaN"):
        uniformity(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(DataError, match="equal shape"):
        alignment(torch.randn(3, 4), torch.randn(3, 5))
