"""NT-Xent across 2 gloo processes on CPU equals one process holding the whole batch.

Convention (see :func:`selfsup.losses.contrastive.nt_xent`): each rank returns the mean loss over
its own anchors, so the mean of the ranks' losses is the global-batch loss; the gathered
embeddings' backward sums gradients over ranks, so a rank's input gradient is ``world_size`` times
the single-process one, and DDP's averaging of parameter gradients gives exactly the
single-process parameter gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gloo_harness import run_on_ranks
from selfsup.losses.contrastive import nt_xent

WORLD = 2
B = 3  # per-rank batch
DIM_IN, DIM = 5, 4
T = 0.3


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(WORLD * B, DIM_IN, generator=g, dtype=torch.float64)
    x2 = torch.randn(WORLD * B, DIM_IN, generator=g, dtype=torch.float64)
    return x1, x2


def _encoder() -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(DIM_IN, DIM).double()


def _worker(rank: int) -> dict:
    x1, x2 = _data()
    local = slice(rank * B, (rank + 1) * B)
    # 1) gradients w.r.t. the embeddings themselves
    z1 = x1[local].clone().requires_grad_()
    z2 = x2[local].clone().requires_grad_()
    loss = nt_xent(z1, z2, T, gather=True)
    loss.backward()
    local_only = nt_xent(x1[local], x2[local], T, gather=False)
    # 2) a DDP-wrapped encoder: parameter gradients are averaged over ranks by DDP
    model = DistributedDataParallel(_encoder())
    h = model(torch.cat([x1[local], x2[local]]))
    ddp_loss = nt_xent(h[:B], h[B:], T, gather=True)
    ddp_loss.backward()
    return {
            "loss": loss.detach(),
            "local_only": local_only,
            "g1": z1.grad,
            "g2": z2.grad,
            "ddp_loss": ddp_loss.detach(),
            "param_grads": [p.grad for p in model.module.parameters()],
        }



@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_on_ranks(_worker, WORLD, tmp_path_factory.mktemp("gather"))


def test_loss_equals_single_process_full_batch(results: list[dict]) -> None:
    x1, x2 = _data()
    full = nt_xent(x1, x2, T)
    mean_over_ranks = sum(r["loss"] for r in results) / WORLD
    torch.testing.assert_close(mean_over_ranks, full, rtol=1e-12, atol=1e-12)
    # gathering matters: the local-only loss (fewer negatives) is different
    assert all(abs(r["loss"].item() - r["local_only"].item()) > 1e-3 for r in results)


def test_input_gradients_equal_single_process_slices(results: list[dict]) -> None:
    x1, x2 = _data()
    z1, z2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    nt_xent(z1, z2, T).backward()
    assert z1.grad is not None and z2.grad is not None
    for rank, r in enumerate(results):
        local = slice(rank * B, (rank + 1) * B)
        torch.testing.assert_close(r["g1"] / WORLD, z1.grad[local], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r["g2"] / WORLD, z2.grad[local], rtol=1e-10, atol=1e-12)


def test_ddp_parameter_gradients_equal_single_process(results: list[dict]) -> None:
    x1, x2 = _data()
    model = _encoder()
    n = WORLD * B
    h = model(torch.cat([x1, x2]))
    loss = nt_xent(h[:n], h[n:], T)
    loss.backward()
    torch.testing.assert_close(sum(r["ddp_loss"] for r in results) / WORLD, loss.detach())
    for r in results:  # DDP leaves the same averaged gradient on every rank
        for p, g in zip(model.parameters(), r["param_grads"]):
            torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)
