"""Sinkhorn-Knopp equipartition of a batch over prototypes (SwAV, Caron et al. 2020, sec. 3.1).

SwAV computes soft codes ``Q`` that maximise ``Tr(Q^T C^T Z) + eps H(Q)`` over the transportation
polytope ``{Q in R_+^{K x B} : Q 1_B = 1_K / K, Q^T 1_K = 1_B / B}`` (eq. 3): every prototype
receives the same share of the batch. The solution is ``Q = Diag(u) exp(C^T Z / eps) Diag(v)``
(eq. 5), with ``u, v`` found by a few alternating row/column normalisations (Cuturi 2013);
SwAV uses ``eps = 0.05`` and 3 iterations. In distributed training the batch is the union of all
ranks' batches: the row sums are summed over ranks, so every rank's codes are those
one process holding the global batch would compute.
"""

from __future__ import annotations

import math

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
        scores: ``[B, K]`` similarities of this rank's samples to the ``K`` prototypes (SwAV:
            cosines; DINOv2: unbounded teacher logits). The iterations run on ``log Q`` in
            float32 (row and column log-sum-exps, the row ones over all ranks), which gives
            the same codes as the plain iteration without its overflow (``exp(30 / 0.04)``)
            or all-zero columns for samples far below the others.
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
    log_q = scores.detach().float().t() / eps  # [K, B]: log of Q up to a constant
    k, b = log_q.shape[0], log_q.shape[1] * world
    # a global scale of Q (its first normalisation to total 1) cancels in the first row step
    for _ in range(iters):
        # each prototype gets mass 1 / K: rows summed over all ranks
        log_q = log_q - _row_logsumexp(log_q, distributed) - math.log(k)
        # each sample gets mass 1 / B: columns are local
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(b)
    return (log_q.exp() * b).t()  # each row (sample) now sums to 1: a soft assignment


def _row_logsumexp(log_q: Tensor, distributed: bool) -> Tensor:
    """``log sum_j exp(log_q[r, j])`` ``[K, 1]`` over this rank's columns and, if
    ``distributed``, every other rank's: a shared per-row maximum, then summed exponentials."""
    top = log_q.max(dim=1, keepdim=True).values
    if distributed:
        dist.all_reduce_max(top)
    sums = torch.exp(log_q - top).sum(dim=1, keepdim=True)
    if distributed:
        dist.all_reduce_sum(sums)
    return top + sums.log()
