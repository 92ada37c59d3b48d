"""Sinkhorn-Knopp, PCA whitening and k-means across 2 gloo processes on CPU equal one process
holding all rows: each rank passes its shard, and sums over ranks make the result global."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gloo_harness import run_on_ranks
from selfsup.nn.kmeans import gather_labels, kmeans, pca_whiten
from selfsup.nn.sinkhorn import sinkhorn

WORLD = 2
B, K = 6, 4  # per-rank batch, prototypes
N, D = 40, 5  # per-rank k-means rows


def _scores() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(WORLD * B, 8, generator=g), dim=1)
    return z @ F.normalize(torch.randn(K, 8, generator=g), dim=1).t()


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, D, generator=g) * 4
    y = torch.randint(0, 3, (WORLD * N,), generator=g)
    return centers[y] + 0.2 * torch.randn(WORLD * N, D, generator=g), y


def _worker(rank: int) -> dict:
    codes = sinkhorn(_scores()[rank * B : (rank + 1) * B], 0.05, 3)
    x, _ = _rows()
    index = torch.arange(rank, WORLD * N, WORLD)  # the trainer's shards: rank::world
    y, _, proj = pca_whiten(x[index], 3)
    init = y[:3].clone()  # rank 0's rows are broadcast as initial centroids
    res = kmeans(y, 3, iters=10, init=init)
    return {"codes": codes, "pca": y, "proj": proj, "centroids": res.centroids,
                "labels": gather_labels(res.labels, index, WORLD * N),
                "counts": res.counts, "init": init}



@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_on_ranks(_worker, WORLD, tmp_path_factory.mktemp("clustering"))


def test_sinkhorn_over_ranks_equals_the_global_batch(results: list[dict]) -> None:
    full = sinkhorn(_scores(), 0.05, 3)
    torch.testing.assert_close(torch.cat([r["codes"] for r in results]), full)
    # the local-only codes differ: the equipartition is over the global batch
    local = sinkhorn(_scores()[:B], 0.05, 3)
    assert not torch.allclose(local, full[:B], atol=1e-3)


def test_pca_and_kmeans_over_ranks_equal_one_process(results: list[dict]) -> None:
    x, _ = _rows()
    order = torch.cat([torch.arange(r, WORLD * N, WORLD) for r in range(WORLD)])
    y, _, proj = pca_whiten(x[order], 3)
    torch.testing.assert_close(results[0]["proj"], results[1]["proj"])
    torch.testing.assert_close(proj.abs(), results[0]["proj"].abs(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["pca"] for r in results]), y @ torch.diag(
        torch.sign((proj * results[0]["proj"]).sum(0))), rtol=1e-4, atol=1e-5)
    ref = kmeans(torch.cat([r["pca"] for r in results]), 3, iters=10, init=results[0]["init"])
    for r in results:  # every rank holds the same centroids, counts and full label vector
        torch.testing.assert_close(r["centroids"], ref.centroids, rtol=1e-5, atol=1e-6)
        assert torch.equal(r["counts"], ref.counts)
    labels = torch.empty(WORLD * N, dtype=torch.long)
    labels[order] = ref.labels
    assert torch.equal(results[0]["labels"], labels) and torch.equal(results[1]["labels"], labels)
