"""Batches of raw images for one process: a fast gather loop for in-memory data, a DataLoader
for folders. Both shard one seeded per-epoch permutation over ranks and expose ``set_epoch`` and
``__len__`` (batches per epoch), yielding ``(images [B,C,H,W] raw, labels [B], index [B])``.

``set_epoch(epoch, balance=labels)`` replaces the epoch's permutation by
:func:`uniform_label_order` (DeepCluster's sampling uniform over pseudo-labels); the number of
samples per epoch does not change.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from selfsup.types import ConfigError
from selfsup.utils.seed import worker_seed

if TYPE_CHECKING:
    from selfsup.data.datasets import ImageDataset

Batch3 = tuple[Tensor, Tensor, Tensor]


def uniform_label_order(labels: Tensor, *, seed: int) -> Tensor:
    """``N = len(labels)`` sample indices drawn uniformly over the label classes (DeepCluster,
    Caron et al. 2018, sec. 3.4, ``UnifLabelSampler`` of the reference code).

    Each of the ``m`` non-empty classes contributes ``N // m + 1`` of its samples (without
    replacement when it has more than that, else with replacement); the union is shuffled and
    cut to ``N``. Samples labelled ``< 0`` are never drawn. Deterministic in ``seed``.

    Args:
        labels: ``[N]`` int64 class of every sample (``-1``: none).
        seed: seeds the CPU generator of every draw.

    Returns:
        int64 ``[N]`` indices into ``labels``.

    Raises:
        ConfigError: if ``labels`` is not a vector with at least one labelled sample.
    """
    labels = torch.as_tensor(labels).long().cpu()
    if labels.dim() != 1 or not bool((labels >= 0).any()):
        raise ConfigError("uniform_label_order needs a [N] label vector with a label >= 0")
    g = torch.Generator().manual_seed(seed)
    n = labels.numel()
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    keep = classes >= 0
    starts = torch.cumsum(counts, 0) - counts
    per = n // int(keep.sum()) + 1
    picks = []
    for start, count in zip(starts[keep].tolist(), counts[keep].tolist()):
        members = order[start : start + count]
        if count > per:
            picks.append(members[torch.randperm(count, generator=g)[:per]])
        else:
            picks.append(members[torch.randint(count, (per,), generator=g)])
    pool = torch.cat(picks)
    return pool[torch.randperm(len(pool), generator=g)[:n]]


def epoch_indices(n: int, *, epoch: int, seed: int, shuffle: bool, drop_last: bool,
                  rank: int = 0, world_size: int = 1, balance: Tensor | None = None) -> Tensor:
    """The sample indices rank ``rank`` visits in ``epoch``.

    All ranks draw the same permutation (``torch.Generator`` seeded with ``seed + epoch``) and take
    every ``world_size``-th element from position ``rank``, so the shards are disjoint. To give
    every rank the same count, ``drop_last`` cuts the permutation to a multiple of
    ``world_size``; otherwise it is padded by wrapping around (as ``DistributedSampler``).
    With ``balance`` (``[n]`` labels) the permutation is :func:`uniform_label_order` with the
    same seed instead.

    Returns:
        int64 ``[n_rank]`` indices.

    Raises:
        ConfigError: if ``balance`` is not ``[n]``.
    """
    if balance is not None:
        if balance.shape != (n,):
            raise ConfigError(f"balance labels must be [{n}], got {tuple(balance.shape)}")
        order = uniform_label_order(balance, seed=seed + epoch)
    elif shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    else:
        order = torch.arange(n)
    if drop_last:
        order = order[: n - n % world_size]
    elif n % world_size:
        pad = world_size - n % world_size
        order = torch.cat([order, order.repeat(pad // n + 1)[:pad]])
    return order[rank::world_size]


class _EpochMixin:
    """Epoch counter and batch count shared by both loaders."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 rank: int, world_size: int) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.balance: Tensor | None = None

    def set_epoch(self, epoch: int, balance: Tensor | None = None) -> None:
        """Select the permutation of ``epoch`` (call before iterating); ``balance`` ``[N]``
        labels make it uniform over their classes (:func:`uniform_label_order`)."""
        self.epoch = epoch
        self.balance = None if balance is None else balance.detach().cpu()

    def indices(self) -> Tensor:
        """This rank's sample indices in the current epoch."""
        return epoch_indices(self.n, epoch=self.epoch, seed=self.seed, shuffle=self.shuffle,
                             drop_last=self.drop_last, rank=self.rank,
                             world_size=self.world_size, balance=self.balance)

    def __len__(self) -> int:
        per_rank = (self.n // self.world_size if self.drop_last
                    else -(-self.n // self.world_size))
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)


class MemoryLoader(_EpochMixin):
    """Iterate an in-memory dataset by slicing its per-epoch permutation with ``get_batch``.

    No per-sample work or collate: one gather per batch, on the storage's device.
    """

    def __init__(self, ds: ImageDataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                 seed: int, rank: int, world_size: int) -> None:
        super().__init__(len(ds), batch_size, shuffle, drop_last, seed, rank, world_size)
        self.dataset = ds

    def __iter__(self) -> Iterator[Batch3]:
        idx = self.indices()
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = self.dataset.get_batch(sel)
            yield x, y, sel.to(x.device)


class ShardSampler(_EpochMixin, Sampler[int]):
    """A ``DistributedSampler``-like sampler over :func:`epoch_indices` (batch_size 1)."""

    def __init__(self, n: int, *, shuffle: bool, drop_last: bool, seed: int, rank: int,
                 world_size: int) -> None:
        super().__init__(n, 1, shuffle, drop_last, seed, rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


def _init_worker(worker_id: int, *, seed: int, rank: int) -> None:
    s = worker_seed(seed, worker_id, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


class FolderLoader:
    """A ``DataLoader`` over lazily decoded files with a seeded shard sampler."""

    def __init__(self, ds: ImageDataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                 seed: int, num_workers: int, rank: int, world_size: int) -> None:
        self.dataset = ds
        self.sampler = ShardSampler(len(ds), shuffle=shuffle, drop_last=drop_last, seed=seed,
                                    rank=rank, world_size=world_size)
        self.loader = DataLoader(
            ds, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
            drop_last=drop_last, pin_memory=torch.cuda.is_available(),
            persistent_workers=num_workers > 0,
            worker_init_fn=functools.partial(_init_worker, seed=seed, rank=rank),
        )

    def set_epoch(self, epoch: int, balance: Tensor | None = None) -> None:
        """Select the permutation of ``epoch`` (call before iterating), see
        :meth:`_EpochMixin.set_epoch`."""
        self.sampler.set_epoch(epoch, balance)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch3]:
        yield from self.loader


def make_loader(ds: ImageDataset, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int,
                num_workers: int = 0, rank: int = 0,
                world_size: int = 1) -> MemoryLoader | FolderLoader:
    """A loader yielding ``(images [B,C,H,W] raw, labels [B] int64, index [B] int64)``.

    In-memory datasets get :class:`MemoryLoader` (``num_workers`` is ignored: a gather is faster
    than any worker); folders a :class:`FolderLoader` with ``num_workers`` decoding processes
    (persistent, seeded from ``(seed, rank, worker_id)``, pinned memory when CUDA is available).

    Args:
        ds: the dataset.
        batch_size: samples per batch on this process.
        shuffle: visit a new seeded permutation every epoch (``seed + epoch``); else in order.
        drop_last: drop the incomplete last batch (and cut the data to a multiple of the ranks).
        seed: base seed of the permutations.
        num_workers: DataLoader worker processes for folders.
        rank: this process's rank; ``world_size``: number of processes.

    Raises:
        ConfigError: for a batch size < 1, a negative ``num_workers``, a rank outside
            ``[0, world_size)`` or an empty dataset. (With ``drop_last`` and fewer images per
            rank than ``batch_size`` the loader has ``len() == 0``: the caller decides.)
    """
    if batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside [0, world_size={world_size})")
    if len(ds) == 0:
        raise ConfigError(f"dataset '{ds.source}' is empty")
    if ds.in_memory:
        return MemoryLoader(ds, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                            rank=rank, world_size=world_size)
    return FolderLoader(ds, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                        num_workers=num_workers, rank=rank, world_size=world_size)
