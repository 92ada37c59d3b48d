"""DeepCluster's epoch order uniform over pseudo-labels (``uniform_label_order``) and the loaders'
``set_epoch(epoch, balance=labels)``."""

from __future__ import annotations

import pytest
import torch

from selfsup.data.loader import epoch_indices, uniform_label_order
from selfsup.types import ConfigError


def test_every_cluster_is_drawn_equally_often() -> None:
    # one huge cluster (900 images), two medium, one singleton, and unlabeled samples (-1)
    labels = torch.cat([torch.zeros(900), torch.ones(60), torch.full((30,), 2), torch.tensor([3]),
                        torch.full((9,), -1)]).long()
    order = uniform_label_order(labels, seed=0)
    assert order.shape == (1000,)
    counts = torch.bincount(labels[order], minlength=4)
    assert bool((labels[order] >= 0).all())  # unlabeled samples are never drawn
    # 4 clusters x (1000 // 4 + 1) = 1004 drawn, cut to 1000: each cluster 251 - at most 4
    assert counts.min() >= 247 and counts.max() <= 251, counts
    # large clusters are sampled without replacement, small ones with
    big = order[labels[order] == 0]
    assert len(big.unique()) == len(big)
    assert set(order[labels[order] == 3].tolist()) == {990}


def test_deterministic_in_the_seed() -> None:
    labels = torch.randint(0, 7, (200,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(uniform_label_order(labels, seed=3), uniform_label_order(labels, seed=3))
    assert not torch.equal(uniform_label_order(labels, seed=3), uniform_label_order(labels, seed=4))


def test_epoch_indices_with_balance_shards_the_same_order() -> None:
    labels = torch.randint(0, 5, (101,), generator=torch.Generator().manual_seed(1))
    full = epoch_indices(101, epoch=2, seed=10, shuffle=True, drop_last=True, balance=labels)
    torch.testing.assert_close(full, uniform_label_order(labels, seed=12))
    r0 = epoch_indices(101, epoch=2, seed=10, shuffle=True, drop_last=True, rank=0,
                       world_size=2, balance=labels)
    r1 = epoch_indices(101, epoch=2, seed=10, shuffle=True, drop_last=True, rank=1,
                       world_size=2, balance=labels)
    assert len(r0) == len(r1) == 50
    torch.testing.assert_close(torch.stack([r0, r1], 1).flatten(), full[:100])
    with pytest.raises(ConfigError, match="balance"):
        epoch_indices(100, epoch=0, seed=0, shuffle=True, drop_last=True, balance=labels)


def test_memory_loader_follows_the_balance_labels() -> None:
    from selfsup.data.datasets import ImageDataset, make_loader

    n = 40
    ds = ImageDataset(labels=torch.zeros(n, dtype=torch.long), source="t", class_names=None,
                      images=torch.rand(n, 1, 4, 4), split=None)
    loader = make_loader(ds, 8, shuffle=True, drop_last=True, seed=5)
    pseudo = (torch.arange(n) >= 36).long()  # cluster 1 holds only 4 of the 40 images
    loader.set_epoch(3, balance=pseudo)
    seen = torch.cat([idx for _, _, idx in loader])
    assert len(seen) == n and torch.equal(seen, uniform_label_order(pseudo, seed=8))
    assert 16 <= int(pseudo[seen].sum()) <= 21  # about half, not a tenth
    loader.set_epoch(3)  # back to the plain permutation
    plain = torch.cat([idx for _, _, idx in loader])
    assert sorted(plain.tolist()) == list(range(n))


def test_bad_labels() -> None:
    with pytest.raises(ConfigError):
        uniform_label_order(torch.full((5,), -1), seed=0)
    with pytest.raises(ConfigError):
        uniform_label_order(torch.zeros(2, 2).long(), seed=0)
