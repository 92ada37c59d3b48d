"""DINO's center (Caron et al. 2021, eq. 4) across 2 gloo processes on CPU: the update uses the
mean over the global batch (sum and count all-reduced), also for unequal shards, and every rank
ends with the same center."""

from __future__ import annotations

from pathlib import Path

import torch

from gloo_harness import run_on_ranks
from selfsup.nn.center import Center


def _center_worker(rank: int) -> torch.Tensor:
    x = torch.arange(24, dtype=torch.float32).view(6, 4)  # rank 0: rows 0-3, rank 1: 4-5
    c = Center(4, momentum=0.5)
    c.add(x[:4] if rank == 0 else x[4:])  # unequal shards: the mean must weight by rows
    c.update()
    return c.value


def test_center_is_the_global_batch_mean_across_ranks(tmp_path: Path) -> None:
    x = torch.arange(24, dtype=torch.float32).view(6, 4)
    for value in run_on_ranks(_center_worker, 2, tmp_path):
        torch.testing.assert_close(value, 0.5 * x.mean(0, keepdim=True))
