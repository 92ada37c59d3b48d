"""Torch k-means (DeepCluster): separable blobs are recovered, empty clusters are re-seeded by a
split, spherical mode, PCA-whitening properties, label gathering and input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.nn.kmeans import gather_labels, kmeans, pca_whiten
from selfsup.types import ConfigError, DataError


def _blobs(k: int = 4, per: int = 50, dim: int = 8, spread: float = 0.05,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g) * 3
    y = torch.arange(k).repeat_interleave(per)
    return centers[y] + spread * torch.randn(k * per, dim, generator=g), y


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to renaming the clusters."""
    pairs = {(int(x), int(y)) for x, y in zip(a, b)}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_recovers_separable_blobs(init: str) -> None:
    x, y = _blobs()
    res = kmeans(x, 4, iters=20, init=init, generator=torch.Generator().manual_seed(1))
    if init == "kmeans++":  # k-means++ seeds one centre per well-separated blob
        assert _same_partition(res.labels, y)
    assert res.counts.sum() == len(x) and res.centroids.shape == (4, 8)
    # the centroids are the means of their points
    for c in range(4):
        if res.counts[c] > 0:
            torch.testing.assert_close(res.centroids[c], x[res.labels == c].mean(0))


def test_empty_cluster_is_split_from_a_populated_one() -> None:
    x, y = _blobs(k=3)
    # two centroids start on blob 0 and blob 1, the third far from every point: it is empty
    # after the first assignment, and blob 2's points sit in one of the other two clusters
    init = torch.stack([x[0], x[50], torch.full((8,), 100.0)])
    res = kmeans(x, 3, iters=10, init=init)
    assert res.splits >= 1 and bool((res.counts > 0).all())
    assert _same_partition(res.labels, y)
    # "keep" (DeepCluster-v2's rule) leaves it empty instead
    kept = kmeans(x, 3, iters=10, init=init, empty="keep")
    assert kept.splits == 0 and int((kept.counts == 0).sum()) == 1
    torch.testing.assert_close(kept.centroids[2], init[2])


def test_spherical_kmeans_on_directions() -> None:
    x, y = _blobs(k=3, dim=16, spread=0.2, seed=3)
    x = F.normalize(x, dim=1)
    res = kmeans(x, 3, iters=10, init="kmeans++", spherical=True,
                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.centroids.norm(dim=1), torch.ones(3))
    assert _same_partition(res.labels, y)


def test_deterministic_in_the_generator() -> None:
    x, _ = _blobs(k=5, spread=1.0)
    a = kmeans(x, 6, init="random", generator=torch.Generator().manual_seed(7))
    b = kmeans(x, 6, init="random", generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)


def test_pca_whitening_properties() -> None:
    g = torch.Generator().manual_seed(0)
    # correlated data with very different variances per direction
    x = torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g) * 5 + 3
    y, mean, proj = pca_whiten(x, 4)
    assert y.shape == (500, 4) and proj.shape == (6, 4)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(y.norm(dim=1), torch.ones(500))  # L2-normalised rows
    w = (x - mean) @ proj  # before the L2 normalisation: zero mean, identity covariance
    torch.testing.assert_close(w.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(w.t()), torch.eye(4), atol=1e-3, rtol=1e-3)
    # the kept directions are the top principal components
    full = torch.linalg.eigvalsh(torch.cov(x.t()).double()).flip(0)
    kept = 1 / proj.double().norm(dim=0) ** 2
    torch.testing.assert_close(kept, full[:4], rtol=1e-3, atol=1e-4)
    assert pca_whiten(x, 99)[0].shape == (500, 6)  # clipped to the input size


def test_gather_labels_single_process() -> None:
    out = gather_labels(torch.tensor([3, 1]), torch.tensor([4, 0]), 5)
    assert out.tolist() == [1, -1, -1, -1, 3]
    with pytest.raises(DataError):
        gather_labels(torch.tensor([1]), torch.tensor([7]), 5)


def test_bad_input() -> None:
    x, _ = _blobs()
    with pytest.raises(ConfigError, match="k >= 1"):
        kmeans(x, 0)
    with pytest.raises(ConfigError, match="init"):
        kmeans(x, 2, init="farthest")
    with pytest.raises(ConfigError, match="empty"):
        kmeans(x, 2, empty="drop")
    with pytest.raises(DataError, match="k=4 initial centroids.*only 3; use at most 3 clusters"):
        kmeans(x[:3], 4)
    with pytest.raises(DataError, match=r"\[N, D\]"):
        kmeans(torch.zeros(0, 3), 1)
    with pytest.raises(ConfigError, match="PCA"):
        pca_whiten(x, 0)
