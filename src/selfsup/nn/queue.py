"""A first-in-first-out queue of keys: MoCo's dictionary (He et al. 2020, sec. 3.2, "Dictionary
as a queue"; Algorithm 1: ``enqueue(queue, k); dequeue(queue)``).

The keys of the current mini-batch are enqueued and the oldest ones dequeued, so the queue holds
the keys of the last ``K / B`` batches. The buffer and the write pointer are registered buffers,
so the queue is part of ``state_dict()`` and a resumed run continues with the same negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError
from selfsup.utils import dist

__all__ = ["Queue"]


class Queue(nn.Module):
    """FIFO queue of ``size`` keys of dimension ``dim``.

    The queue starts filled with random unit vectors (as MoCo's reference code, which
    initialises it with normalised Gaussian noise) so it can be used from the first step; call
    :meth:`get` for the ``[K, D]`` contents and :meth:`push` with a batch of new keys.

    Attributes:
        keys: buffer ``[K, D]``.
        ptr: buffer ``[]`` int64, the row the next key is written to.
        filled: buffer ``[]`` int64, number of real (pushed) keys, at most ``K``.
        ids: buffer ``[K]`` int64, an id per key (e.g. the dataset index of its image; ``-1``
            for the random initial keys and keys pushed without ids), so a method can tell
            which queued keys come from the same image as a query.

    Args:
        size: number of keys ``K`` (MoCo: 65536 on ImageNet; 4096 on CIFAR-10).
        dim: key dimension ``D``.
        normalize_init: L2-normalise the random initial keys (MoCo's keys are unit vectors).

    Raises:
        ConfigError: if ``size`` or ``dim`` is not a positive integer.
    """

    keys: Tensor
    ptr: Tensor
    filled: Tensor
    ids: Tensor

    def __init__(self, size: int, dim: int, normalize_init: bool = True) -> None:
        super().__init__()
        for name, value in (("size", size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"queue {name} must be a positive integer, got {value!r}")
        init = torch.randn(size, dim)
        self.register_buffer("keys", F.normalize(init, dim=1) if normalize_init else init)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])

    def get(self) -> Tensor:
        """The queue contents ``[K, D]``, detached (the queue never receives gradients)."""
        return self.keys.detach()

    def get_ids(self) -> Tensor:
        """The id of every queued key ``[K]`` int64 (``-1``: no id)."""
        return self.ids

    @torch.no_grad()
    def push(self, keys: Tensor, ids: Tensor | None = None, gather: bool = True) -> None:
        """Enqueue ``keys`` ``[B, D]`` (of all ranks when ``gather``), dequeuing the oldest.

        ``ids`` ``[B]`` (integers, e.g. dataset indices) are stored alongside, gathered the
        same way; without them the new keys get id ``-1``.

        With a process group, the keys of all ranks are concatenated with
        :func:`selfsup.utils.dist.all_gather` first (MoCo's ``concat_all_gather``), so every rank
        holds the same queue. The write wraps around the end of the buffer, so ``K`` need not be
        a multiple of the batch size; a batch larger than ``K`` keeps only its last ``K`` keys.

        Raises:
            DataError: if ``keys`` is not ``[B, D]`` with the queue's ``D`` or ``ids`` is not
                ``[B]``.
        """
        if keys.dim() != 2 or keys.shape[1] != self.keys.shape[1]:
            raise DataError(
                f"queue push expects keys [B, {self.keys.shape[1]}], got {tuple(keys.shape)}"
            )
        if ids is None:
            ids = torch.full((keys.shape[0],), -1, dtype=torch.long, device=keys.device)
        if ids.shape != (keys.shape[0],):
            raise DataError(f"queue push expects ids [{keys.shape[0]}], got {tuple(ids.shape)}")
        if gather:
            keys, ids = dist.all_gather(keys), dist.all_gather(ids)
        keys = keys.detach().to(self.keys.dtype)
        ids = ids.to(device=self.ids.device, dtype=torch.long)
        k, b = self.size, keys.shape[0]
        if b == 0:
            return
        if b >= k:  # only the newest K keys survive; they are written in order from ptr
            keys, ids, b = keys[-k:], ids[-k:], k
        rows = (self.ptr + torch.arange(b, device=self.keys.device)) % k
        self.keys[rows] = keys
        self.ids[rows] = ids
        self.ptr.copy_((self.ptr + b) % k)
        self.filled.copy_(torch.clamp(self.filled + b, max=k))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.keys.shape[1]}"
