"""The plain loop form of Sinkhorn-Knopp (SwAV's ``distributed_sinkhorn`` on one process,
DINOv2's ``sinkhorn_knopp_teacher``), shared by the Sinkhorn and DINO tests as the reference."""

from __future__ import annotations

import torch


def loop_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Codes ``[B, K]`` (float64) of scores ``[B, K]``: element-wise loops over the rows and
    columns of ``Q = exp(scores / eps)^T`` ``[K, B]``."""
    q = torch.exp(scores.double() / eps).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        for r in range(k):
            q[r] = q[r] / q[r].sum() / k
        for c in range(b):
            q[:, c] = q[:, c] / q[:, c].sum() / b
    return (q * b).t()
