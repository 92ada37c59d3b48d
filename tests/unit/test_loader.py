"""Loaders: seeded per-epoch order, batch counts, rank sharding, folder DataLoader with workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from selfsup.data.datasets import make_loader, open_dataset
from selfsup.data.loader import FolderLoader, MemoryLoader, epoch_indices
from selfsup.types import ConfigError


def order(loader) -> list[int]:
    return torch.cat([i for _, _, i in loader]).tolist()


def test_memory_loader_batches_match_dataset() -> None:
    ds = open_dataset("digits")
    loader = make_loader(ds, 100, shuffle=True, drop_last=False, seed=0)
    assert isinstance(loader, MemoryLoader) and len(loader) == 15  # ceil(1438 / 100)
    batches = list(loader)
    assert [len(b[2]) for b in batches] == [100] * 14 + [38]
    x, y, i = batches[3]
    assert x.dtype == torch.uint8 and x.shape == (100, 1, 8, 8)
    ref_x, ref_y = ds.get_batch(i)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y) and torch.equal(y, ds.labels[i])
    assert sorted(order(loader)) == list(range(len(ds)))


def test_order_is_seeded_per_epoch() -> None:
    ds = open_dataset("digits")
    a = make_loader(ds, 64, shuffle=True, drop_last=True, seed=5)
    b = make_loader(ds, 64, shuffle=True, drop_last=True, seed=5)
    assert len(a) == 1438 // 64
    a.set_epoch(3)
    b.set_epoch(3)
    first = order(a)
    assert first == order(b) == order(a)  # same seed and epoch, repeatable
    a.set_epoch(4)
    assert order(a) != first
    c = make_loader(ds, 64, shuffle=True, drop_last=True, seed=6)
    c.set_epoch(3)
    assert order(c) != first
    plain = make_loader(ds, 64, shuffle=False, drop_last=False, seed=5)
    assert order(plain) == list(range(len(ds)))


@pytest.mark.parametrize("n,world,drop_last", [(30, 3, True), (31, 3, True), (31, 4, False),
                                               (7, 2, False)])
def test_rank_shards_disjoint_and_covering(n: int, world: int, drop_last: bool) -> None:
    shards = [epoch_indices(n, epoch=2, seed=1, shuffle=True, drop_last=drop_last, rank=r,
                            world_size=world).tolist() for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    flat = [i for s in shards for i in s]
    if drop_last:
        assert len(set(flat)) == len(flat) == n - n % world  # disjoint
    else:
        assert set(flat) == set(range(n)) and len(flat) == -(-n // world) * world  # covering
        assert len(set(flat)) == n  # only the padding repeats


def test_sharded_memory_loaders_split_one_permutation() -> None:
    ds = open_dataset("digits", limit=120)
    loaders = [make_loader(ds, 20, shuffle=True, drop_last=True, seed=0, rank=r, world_size=3)
               for r in range(3)]
    seen = [order(ld) for ld in loaders]
    assert all(len(ld) == 2 for ld in loaders) and all(len(s) == 40 for s in seen)
    assert sorted(sum(seen, [])) == list(range(120))


def test_loader_argument_errors() -> None:
    ds = open_dataset("digits", limit=10)
    with pytest.raises(ConfigError, match="train.batch_size"):
        make_loader(ds, 0, shuffle=True, drop_last=True, seed=0)
    with pytest.raises(ConfigError, match="rank"):
        make_loader(ds, 2, shuffle=True, drop_last=True, seed=0, rank=2, world_size=2)
    assert len(make_loader(ds, 64, shuffle=True, drop_last=True, seed=0)) == 0


def test_folder_loader_with_workers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(9):
            img = rng.integers(0, 9000, (16, 16, 4), dtype=np.uint16)
            tifffile.imwrite(tmp_path / c / f"{i}.tif", img, photometric="minisblack")
    ds = open_dataset(str(tmp_path))
    assert not ds.in_memory and ds.dtype == torch.uint16
    kw = dict(shuffle=True, drop_last=False, seed=3)
    par = make_loader(ds, 4, num_workers=2, **kw)
    seq = make_loader(ds, 4, num_workers=0, **kw)
    assert isinstance(par, FolderLoader) and len(par) == 5
    for ld in (par, seq):
        ld.set_epoch(1)
    got = list(par)
    ref = list(seq)
    assert [g[2].tolist() for g in got] == [r[2].tolist() for r in ref]
    assert sorted(torch.cat([g[2] for g in got]).tolist()) == list(range(18))
    x, y, i = got[0]
    assert x.dtype == torch.uint16 and x.shape == (4, 4, 16, 16)
    assert torch.equal(x, ds.get_batch(i)[0]) and torch.equal(y, ds.labels[i])
    par.set_epoch(2)
    assert order(par) != [j for g in got for j in g[2].tolist()]
    shard = make_loader(ds, 4, num_workers=0, rank=1, world_size=2, **kw)
    shard.set_epoch(1)
    assert order(shard) == epoch_indices(18, epoch=1, seed=3, shuffle=True, drop_last=False,
                                         rank=1, world_size=2).tolist()
