"""Sinkhorn-Knopp equipartition of a batch over prototypes (SwAV, Caron et al. 2020, sec. 3.1).

SwAV computes soft codes ``Q`` that maximise ``Tr(Q^T C^T Z) + eps H(Q)`` over the transportation
polytope ``{Q in R_+^{K x B} : Q 1_B = 1_K / K, Q^T 1_K = 1_B / B}`` (eq. 3): every prototype
receives the same share of the batch. The solution is ``Q = Diag(u) exp(C^T Z / eps) Diag(v)``
(eq. 5), with ``u, v`` found by a few alternating row/column normalisations (Cuturi 2013);
SwAV uses ``eps = 0.05`` and 3 iterations. In distributed training the batch is the union of all
ranks' batches: the row sums and the total are summed over ranks, so every rank's codes are those
one process holding the global batch would compute.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.types import ConfigError, DataError
from selfsup.utils import dist

__all__ = ["sinkhorn"]


@torch.no_grad()
def sinkhorn(scores: Tensor, eps: float = 0.05, iters: int = 3, distributed: bool = True) -> Tensor:
    """Soft equipartitioned codes of ``scores`` (SwAV eq. 5, ``distributed_sinkhorn``).

    Starting from ``Q = exp(scores / eps)^T`` ``[K, B_global]`` normalised to sum 1, each
    iteration divides every row by its sum times ``K`` (each prototype gets mass ``1 / K``) and
    every column by its sum times ``B`` (each sample has mass ``1 / B``). The returned codes are
    ``B * Q^T``: after the last (column) step **every row of the result sums to exactly 1**, and
    the prototype totals approach ``B / K`` as ``iters`` grows.

    Args:
        scores: ``[B, K]`` similarities of this rank's samples to the ``K`` prototypes. They are
            divided by ``eps`` and exponentiated in float32 without shifting (a per-rank shift
            would break the cross-rank sums), so they should be bounded, as cosine similarities
            of normalised embeddings and prototypes are.
        eps: entropic regularisation ``epsilon`` (> 0); SwAV uses 0.05.
        iters: alternating normalisation steps (>= 1); SwAV uses 3.
        distributed: sum row totals over ranks with :mod:`selfsup.utils.dist` (no-op in one
            process), so the equipartition holds over the global batch.

    Returns:
        ``[B, K]`` float32 codes, non-negative, each row summing to 1, no gradient.

    Raises:
        ConfigError: for ``eps <= 0`` or ``iters < 1``.
        DataError: if ``scores`` is not a non-empty ``[B, K]`` matrix.
    """
    if eps <= 0:
        raise ConfigError(f"sinkhorn eps must be > 0, got {eps}")
    if iters < 1:
        raise ConfigError(f"sinkhorn iters must be >= 1, got {iters}")
    if scores.dim() != 2 or scores.numel() == 0:
        raise DataError(f"sinkhorn expects scores [B, K], got {tuple(scores.shape)}")
    world = dist.world_size() if distributed else 1
    q = torch.exp(scores.detach().float() / eps).t()  # [K, B]
    k, b = q.shape[0], q.shape[1] * world
    total = q.sum()
    if distributed:
        dist.all_reduce_sum(total)
    q /= total
    for _ in range(iters):
        rows = q.sum(dim=1, keepdim=True)  # [K, 1]: mass of each prototype, over all ranks
        if distributed:
            dist.all_reduce_sum(rows)
        q /= rows
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # columns are local: each sample gets mass 1 / B
        q /= b
    q *= b  # each column (sample) now sums to 1: a soft assignment
    return q.t()
