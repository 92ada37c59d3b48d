"""DINO's center (Caron et al. 2021, eq. 4) across 2 gloo processes on CPU: the update uses the
mean over the global batch (sum and count all-reduced), also for unequal shards, and every rank
ends with the same center."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from selfsup.nn.center import Center


def _center_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=2)
    try:
        x = torch.arange(24, dtype=torch.float32).view(6, 4)  # rank 0: rows 0-3, rank 1: 4-5
        c = Center(4, momentum=0.5)
        c.add(x[:4] if rank == 0 else x[4:])  # unequal shards: the mean must weight by rows
        c.update()
        torch.save(c.value, Path(out_dir) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_center_is_the_global_batch_mean_across_ranks(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_center_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    x = torch.arange(24, dtype=torch.float32).view(6, 4)
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt"),
                                   0.5 * x.mean(0, keepdim=True))
