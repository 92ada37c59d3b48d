"""MemoryBank (Wu et al. 2018, sec. 3.1-3.2): momentum update rule, uniform sampling over all
entries, index checks, state_dict, and the all-gathered update across 2 gloo processes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F

from selfsup.nn.memory_bank import MemoryBank
from selfsup.types import ConfigError, DataError


def test_init_unit_rows_and_state_dict() -> None:
    torch.manual_seed(0)
    bank = MemoryBank(20, 6, momentum=0.5)
    torch.testing.assert_close(bank.bank.norm(dim=1), torch.ones(20))
    other = MemoryBank(20, 6)
    assert not torch.equal(other.bank, bank.bank)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.bank, bank.bank) and "momentum=0.5" in repr(bank)


@pytest.mark.parametrize("m", [0.0, 0.5, 0.9])
def test_update_rule(m: float) -> None:
    torch.manual_seed(1)
    bank = MemoryBank(10, 4, momentum=m)
    before = bank.bank.clone()
    idx = torch.tensor([7, 2, 5])
    f = torch.randn(3, 4)
    bank.update(idx, f)
    for row, i in enumerate(idx.tolist()):
        expected = m * before[i] + (1 - m) * f[row]
        torch.testing.assert_close(bank.bank[i], expected / expected.norm())
    untouched = [i for i in range(10) if i not in idx.tolist()]
    assert torch.equal(bank.bank[untouched], before[untouched])
    if m == 0.0:  # the paper's sec. 3.1 rule v_i <- f_i (normalised)
        torch.testing.assert_close(bank.bank[idx], F.normalize(f, dim=1))


def test_get_is_detached_copy_and_sample_is_uniform_over_all() -> None:
    torch.manual_seed(2)
    bank = MemoryBank(8, 3)
    got = bank.get(torch.tensor([[1, 2], [3, 3]]))
    assert got.shape == (2, 2, 3) and not got.requires_grad
    idx = bank.sample((40000,))
    assert idx.dtype == torch.int64 and int(idx.min()) == 0 and int(idx.max()) == 7
    counts = torch.bincount(idx, minlength=8).float() / 40000
    assert torch.allclose(counts, torch.full((8,), 1 / 8), atol=0.01)  # nothing excluded
    assert MemoryBank.clamp_negatives(4096, 100) == 99
    assert MemoryBank.clamp_negatives(16, 100) == 16 and MemoryBank.clamp_negatives(5, 1) == 1


def test_bad_inputs() -> None:
    bank = MemoryBank(5, 3)
    with pytest.raises(DataError, match="num_samples"):
        bank.update(torch.tensor([5]), torch.randn(1, 3))
    with pytest.raises(DataError, match="index -1"):
        bank.check_index(torch.tensor([0, -1]))
    with pytest.raises(DataError, match=r"\[B, 3\]"):
        bank.update(torch.tensor([0, 1]), torch.randn(2, 4))
    with pytest.raises(DataError, match="1-D integer"):
        bank.check_index(torch.tensor([0.5]))
    for kw in ({"size": 0, "dim": 3}, {"size": 3, "dim": 0}, {"size": 3, "dim": 3, "momentum": 1.0}):
        with pytest.raises(ConfigError):
            MemoryBank(**kw)


WORLD, N, D = 2, 12, 4


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=WORLD)
    try:
        torch.manual_seed(0)  # same initial bank on both ranks
        bank = MemoryBank(N, D)
        idx = torch.tensor([[0, 5, 9], [3, 4, 11]])[rank]
        feats = torch.arange(rank * 3 * D, (rank + 1) * 3 * D, dtype=torch.float32).view(3, D)
        bank.update(idx, feats + 1.0)
        torch.save(bank.bank, Path(out_dir) / f"bank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_update_all_gathers_over_ranks(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    b0, b1 = (torch.load(tmp_path / f"bank{r}.pt") for r in range(WORLD))
    assert torch.equal(b0, b1)  # both ranks applied the whole global batch
    torch.manual_seed(0)
    ref = MemoryBank(N, D)
    ref.update(torch.tensor([0, 5, 9, 3, 4, 11]),
               torch.arange(6 * D, dtype=torch.float32).view(6, D) + 1.0)
    torch.testing.assert_close(b0, ref.bank)
