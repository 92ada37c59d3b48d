"""Run a function on N local CPU processes joined in a gloo process group (the distributed tests).

``run_on_ranks(worker, world, out)`` spawns ``world`` processes; each initialises the group, calls
``worker(rank)`` and saves the returned object to ``out/rank{r}.pt``; the parent returns the list
of results in rank order. ``worker`` must be a module-level function (it is pickled by name).
Skips the calling test when torch.distributed or gloo is unavailable.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, worker: Callable[[int], Any], world: int, port: int, out: str,
           timeout_s: float | None = None) -> None:
    torch.set_num_threads(1)
    timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=world, timeout=timeout)
    try:
        torch.save(worker(rank), Path(out) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def run_on_ranks(worker: Callable[[int], Any], world: int, out: Path, *,
                 weights_only: bool = True, timeout_s: float | None = None) -> list[Any]:
    """``[worker(0), ..., worker(world - 1)]``, each computed in its own gloo process.

    ``weights_only=False`` reads results that hold more than tensors and builtins (e.g. the
    NumPy arrays of RNG states); they come from the test's own worker. ``timeout_s`` bounds
    every collective (gloo's default is 30 minutes), so a rank left waiting for a peer that
    raised fails the test instead of hanging it.
    """
    if not tdist.is_available() or not tdist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_entry, args=(worker, world, _free_port(), str(out), timeout_s), nprocs=world,
             join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=weights_only) for r in range(world)]
