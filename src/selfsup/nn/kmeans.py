"""k-means in torch for DeepCluster (Caron et al. 2018) and DeepCluster-v2 (Caron et al. 2020).

* :func:`pca_whiten`: DeepCluster's preprocessing (sec. 3.3 / 4.1 of the paper, ``faiss``
  ``PCAMatrix(eigen_power=-0.5)`` in the reference code): centre, project on the top ``dim``
  principal components, divide each by the square root of its eigenvalue (whitening) and
  L2-normalise every row.
* :func:`kmeans`: Lloyd's algorithm with k-means++ (Arthur & Vassilvitskii 2007) or random
  initialisation, Euclidean or spherical (cosine, DeepCluster-v2), and the paper's empty-cluster
  rule (sec. 3.4 "Avoiding trivial solutions", "Empty clusters": an empty cluster takes the
  centroid of a random non-empty cluster with a small random perturbation and the points of that
  cluster are reassigned between the two).
* :func:`gather_labels`: rows of a sharded dataset's labels put back into one ``[N]`` vector.

Everything is distributed-aware through :mod:`selfsup.utils.dist` and a no-op in one process:
each rank passes its own shard of the rows, sums and counts are summed over ranks, the initial
centroids and the PCA basis come from rank 0 (broadcast), and random choices use a caller-given
CPU generator, which every rank seeds identically, so all ranks reach the same centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError
from selfsup.utils import dist

__all__ = ["KMeansResult", "gather_labels", "kmeans", "pca_whiten"]

INITS = ("kmeans++", "random")


def _check_rows(x: Tensor, what: str) -> None:
    if x.dim() != 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise DataError(f"{what} expects a non-empty float [N, D] matrix, got "
                        f"{tuple(x.shape)} {x.dtype}")


@torch.no_grad()
def pca_whiten(x: Tensor, dim: int, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """PCA to ``dim`` dimensions, whitening and L2 normalisation (DeepCluster's preprocessing).

    ``y = normalize((x - mu) V_d diag(lambda_d + eps)^(-1/2))`` with the top-``d`` eigenpairs
    ``(lambda_d, V_d)`` of the covariance of the rows of *all ranks* (sums over ranks).
    Before the final L2 normalisation the output has zero mean and identity covariance.

    Args:
        x: ``[n, D]`` this rank's features.
        dim: output size ``d``; clipped to ``D``.
        eps: added to the eigenvalues (guards directions of near-zero variance).

    Returns:
        ``(y [n, d], mean [D], projection [D, d])`` in float32 on ``x``'s device.

    Raises:
        ConfigError: for ``dim < 1``.
        DataError: for an empty or non-float ``x``.
    """
    if dim < 1:
        raise ConfigError(f"PCA dimension must be >= 1, got {dim}")
    _check_rows(x, "pca_whiten")
    x = x.float()
    d_in = x.shape[1]
    dim = min(dim, d_in)
    stats = torch.cat([x.sum(0), x.new_tensor([x.shape[0]])])
    dist.all_reduce_sum(stats)
    mean = stats[:d_in] / stats[d_in]
    xc = x - mean
    cov = dist.all_reduce_sum(xc.double().t() @ xc.double()) / max(float(stats[d_in]) - 1, 1.0)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(evals, descending=True)[:dim]
    proj = (evecs[:, order] / torch.sqrt(evals[order].clamp(min=0) + eps)).float()
    dist.broadcast(proj, 0)  # every rank uses rank 0's basis (eigh signs are arbitrary)
    return F.normalize(xc @ proj, dim=1), mean, proj


@dataclass
class KMeansResult:
    """What :func:`kmeans` returns.

    Attributes:
        centroids: ``[k, D]`` (unit rows for spherical k-means), same on every rank.
        labels: ``[n]`` int64 cluster of each of this rank's rows.
        counts: ``[k]`` int64 cluster sizes over all ranks (0 = empty).
        splits: empty clusters re-seeded by splitting another cluster, over all iterations.
    """

    centroids: Tensor
    labels: Tensor
    counts: Tensor
    splits: int


def _assign(x: Tensor, c: Tensor, spherical: bool) -> Tensor:
    """Nearest centroid of every row: max cosine (spherical) or min squared distance."""
    if spherical:
        return (x @ c.t()).argmax(dim=1)
    d = (c * c).sum(1)[None, :] - 2 * (x @ c.t())  # ||x||^2 is the same for every centroid
    return d.argmin(dim=1)


def _init(x: Tensor, k: int, how: str, g: torch.Generator) -> Tensor:
    """``k`` initial centroids from rows of ``x`` (this rank's; rank 0's are broadcast)."""
    n = x.shape[0]
    if n < k:
        raise DataError(f"k-means draws its k={k} initial centroids from rank 0's rows, but "
                        f"rank 0 has only {n}; use at most {n} clusters")
    if how == "random":
        return x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    # k-means++: each next centroid is a row drawn with probability ~ squared distance to the
    # nearest centroid chosen so far
    first = int(torch.randint(n, (1,), generator=g))
    c = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        w = d2.double().cpu()
        i = int(torch.multinomial(w, 1, generator=g)) if float(w.sum()) > 0 else \
            int(torch.randint(n, (1,), generator=g))
        c.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.stack(c).clone()


def _sums(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums ``[k, D]`` and counts ``[k]`` over all ranks."""
    sums = torch.zeros(k, x.shape[1] + 1, dtype=torch.float64, device=x.device)
    sums[:, :-1].index_add_(0, labels, x.double())
    sums[:, -1].index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    dist.all_reduce_sum(sums)
    return sums[:, :-1], sums[:, -1]


def _split_empty(x: Tensor, labels: Tensor, c: Tensor, counts: Tensor, spherical: bool,
                 g: torch.Generator, rel_noise: float = 1e-4) -> int:
    """Re-seed each empty cluster from a non-empty one (in place on ``c``, ``labels``, ``counts``).

    The donor ``i`` is drawn with probability ``~ (size_i - 1)`` (a singleton cannot be split);
    both get ``c_i +- delta`` with ``delta`` a small random vector, and the donor's points go to
    the nearer of the two; both centroids are then recomputed from their points.
    """
    splits = 0
    for j in torch.nonzero(counts == 0).flatten().tolist():
        w = (counts - 1).clamp(min=0).double().cpu()
        if float(w.sum()) <= 0:
            break  # every cluster is a singleton or empty: nothing left to split
        i = int(torch.multinomial(w, 1, generator=g))
        delta = torch.randn(c.shape[1], generator=g, dtype=torch.float64).to(c)
        delta = delta * rel_noise * c[i].norm().clamp(min=1e-12) / delta.norm().clamp(min=1e-12)
        ci = c[i].clone()
        c[j], c[i] = ci + delta, ci - delta
        mine = labels == i
        pair = c[[i, j]]
        near = _assign(x[mine], F.normalize(pair, dim=1) if spherical else pair, spherical)
        labels[mine] = torch.where(near == 1, j, i)
        for cl in (i, j):
            rows = labels == cl
            s = torch.cat([x[rows].double().sum(0), rows.sum().double().reshape(1)])
            dist.all_reduce_sum(s)
            counts[cl] = s[-1]
            if s[-1] > 0:
                c[cl] = (s[:-1] / s[-1]).to(c)
        if spherical:
            c[[i, j]] = F.normalize(c[[i, j]], dim=1)
        splits += 1
    return splits


@torch.no_grad()
def kmeans(x: Tensor, k: int, *, iters: int = 20, init: str | Tensor = "kmeans++",
           spherical: bool = False, empty: str = "split",
           generator: torch.Generator | None = None) -> KMeansResult:
    """Lloyd's k-means over the rows of all ranks.

    Each of ``iters`` rounds assigns every row to its nearest centroid (E step), moves each
    centroid to the mean of its rows, summed over ranks (M step; spherical: then re-normalised)
    and handles empty clusters; a final E step gives the labels.

    Args:
        x: ``[n, D]`` this rank's rows (float). Spherical k-means expects unit rows.
        k: number of clusters (>= 1); rank 0 must hold at least ``k`` rows.
        iters: rounds (>= 1); DeepCluster's faiss k-means uses 20, DeepCluster-v2 10.
        init: ``"kmeans++"``, ``"random"`` (``k`` distinct random rows, DeepCluster-v2) or a
            ``[k, D]`` tensor of initial centroids (taken from rank 0).
        spherical: cosine similarity and unit centroids (DeepCluster-v2).
        empty: ``"split"`` re-seeds empty clusters by splitting a non-empty one (DeepCluster);
            ``"keep"`` leaves an empty cluster's centroid where it was (DeepCluster-v2's code).
        generator: CPU generator for the random choices; seed it the same on every rank.

    Returns:
        :class:`KMeansResult`.

    Raises:
        ConfigError: for ``k < 1``, ``iters < 1``, an unknown ``init``/``empty`` or an init
            tensor of the wrong shape.
        DataError: for an empty or non-float ``x`` or fewer rows than ``k`` on rank 0.
    """
    _check_rows(x, "kmeans")
    if k < 1 or iters < 1:
        raise ConfigError(f"kmeans needs k >= 1 and iters >= 1, got k={k}, iters={iters}")
    if empty not in ("split", "keep"):
        raise ConfigError(f"kmeans empty must be 'split' or 'keep', got {empty!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = x.float()
    if isinstance(init, Tensor):
        if init.shape != (k, x.shape[1]):
            raise ConfigError(f"kmeans init centroids must be [{k}, {x.shape[1]}], got "
                              f"{tuple(init.shape)}")
        c = init.detach().to(x).clone()
    elif init in INITS:
        c = _init(x, k, init, g) if dist.is_main() else x.new_empty(k, x.shape[1])
    else:
        raise ConfigError(f"kmeans init must be one of {INITS} or a tensor, got {init!r}")
    dist.broadcast(c, 0)
    if spherical:
        c = F.normalize(c, dim=1)
    splits = 0
    for _ in range(iters):
        labels = _assign(x, c, spherical)
        sums, counts = _sums(x, labels, k)
        full = counts > 0
        c[full] = (sums[full] / counts[full, None]).to(c)
        if spherical:
            c = F.normalize(c, dim=1)
        if empty == "split":
            splits += _split_empty(x, labels, c, counts, spherical, g)
    labels = _assign(x, c, spherical)
    counts = torch.bincount(labels, minlength=k).double()
    dist.all_reduce_sum(counts)
    return KMeansResult(c, labels, counts.long(), splits)


@torch.no_grad()
def gather_labels(labels: Tensor, index: Tensor, n: int) -> Tensor:
    """One ``[n]`` int64 vector from every rank's ``labels [n_r]`` of rows ``index [n_r]``.

    Shards must be disjoint; rows no rank holds get ``-1``.

    Raises:
        DataError: if ``labels`` and ``index`` differ in length or an index is outside ``[0, n)``.
    """
    if labels.shape != index.shape or labels.dim() != 1:
        raise DataError(f"labels {tuple(labels.shape)} and index {tuple(index.shape)} must be "
                        "equal-length vectors")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise DataError(f"label index outside [0, {n})")
    out = torch.zeros(n, dtype=torch.long, device=labels.device)
    out[index] = labels.long() + 1
    dist.all_reduce_sum(out)
    return out - 1
