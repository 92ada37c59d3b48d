"""Every collective of the library goes through here. Without an initialised process group each
function is a cheap no-op (rank 0 of a world of 1), so single-process code paths are the same code.

Launch multi-process training with ``torchrun --nproc_per_node=N -m selfsup pretrain ...``:
:func:`init_from_env` reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and picks NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist
from torch import Tensor


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_type: str) -> bool:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Returns:
        True if a process group is (now) initialised.
    """
    if is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    tdist.init_process_group(backend=backend)
    return True


def destroy() -> None:
    if is_initialized():
        tdist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and returns this rank's
    slice, so that a loss over the gathered batch yields the same gradients as one process
    holding the whole batch (with the loss averaged over the global batch)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        out = [torch.empty_like(x) for _ in range(world_size())]
        tdist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        n = grad.shape[0] // world_size()
        return grad[rank() * n : (rank() + 1) * n]


def all_gather_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``[B, ...]`` from all ranks along dim 0 with gradients flowing back.

    Every rank must pass the same shape. Identity without a process group.
    """
    if world_size() == 1:
        return x
    out = _GatherWithGrad.apply(x)
    assert isinstance(out, Tensor)
    return out


@torch.no_grad()
def all_gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, without gradient (for queues and banks)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    tdist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_sum(x: Tensor) -> Tensor:
    """In-place sum over ranks (returns ``x``)."""
    if world_size() > 1:
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
    return x


def all_reduce_max(x: Tensor) -> Tensor:
    """In-place element-wise maximum over ranks (returns ``x``)."""
    if world_size() > 1:
        tdist.all_reduce(x, op=tdist.ReduceOp.MAX)
    return x


def all_reduce_mean(x: Tensor) -> Tensor:
    """In-place mean over ranks (returns ``x``)."""
    if world_size() > 1:
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
        x /= world_size()
    return x


def broadcast(x: Tensor, src: int = 0) -> Tensor:
    """In-place broadcast from ``src`` (returns ``x``)."""
    if world_size() > 1:
        tdist.broadcast(x, src=src)
    return x


def all_gather_object(obj: object) -> list[object]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` without a process group)."""
    if world_size() == 1:
        return [obj]
    out: list[object] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (one tiny all-reduce; ``flag`` itself alone)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)
