"""The FIFO key queue (MoCo sec. 3.2): order, wrap-around with K not a multiple of B, oversized
batches, state_dict round trip, input checks and the all-gather of keys on 2 gloo processes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from selfsup.nn.queue import Queue
from selfsup.types import ConfigError, DataError


def _keys(start: int, b: int, d: int = 3) -> torch.Tensor:
    """Key ``i`` is the constant vector ``i`` so the queue's order can be read off."""
    return torch.arange(start, start + b, dtype=torch.float32)[:, None].repeat(1, d)


def test_initial_keys_are_unit_vectors_and_get_is_detached() -> None:
    q = Queue(10, 4)
    torch.testing.assert_close(q.get().norm(dim=1), torch.ones(10))
    assert not q.get().requires_grad and int(q.ptr) == 0 and int(q.filled) == 0
    assert q.size == 10 and "size=10" in repr(q)


@pytest.mark.parametrize("k,b", [(8, 2), (10, 3), (7, 7), (5, 4)])
def test_fifo_order_and_wrap_around(k: int, b: int) -> None:
    q = Queue(k, 3)
    pushed: list[float] = []
    for step in range(6):
        q.push(_keys(step * b, b))
        pushed += [float(i) for i in range(step * b, (step + 1) * b)]
        # a plain Python model of the ring buffer: slot (n mod K) holds the n-th key
        expected = list(q.get()[:, 0])
        for n, value in enumerate(pushed):
            expected[n % k] = value
        assert [float(x) for x in q.get()[:, 0]] == [float(x) for x in expected]
        assert int(q.ptr) == len(pushed) % k and int(q.filled) == min(len(pushed), k)
    # the queue holds exactly the newest K keys
    assert sorted(float(x) for x in q.get()[:, 0]) == pushed[-k:]
    assert (q.get_ids() == -1).all()  # pushed without ids


def test_ids_follow_their_keys() -> None:
    q = Queue(5, 3)
    assert (q.get_ids() == -1).all()
    for step in range(4):
        q.push(_keys(step * 3, 3), ids=torch.arange(step * 3, step * 3 + 3) + 1000)
    torch.testing.assert_close(q.get_ids(), q.get()[:, 0].long() + 1000)
    with pytest.raises(DataError, match="ids"):
        q.push(_keys(0, 3), ids=torch.arange(2))


def test_batch_larger_than_queue_keeps_the_newest() -> None:
    q = Queue(4, 3)
    q.push(_keys(0, 1))
    q.push(_keys(100, 6))
    assert sorted(float(x) for x in q.get()[:, 0]) == [102.0, 103.0, 104.0, 105.0]
    assert int(q.ptr) == 1 and int(q.filled) == 4


def test_state_dict_round_trip_and_dtype() -> None:
    a = Queue(6, 2)
    a.push(_keys(0, 4, 2).double())
    b = Queue(6, 2)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.get(), a.get())
    assert int(b.ptr) == 4 and b.get().dtype == torch.float32


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="size"):
        Queue(0, 3)
    with pytest.raises(ConfigError, match="dim"):
        Queue(3, True)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="keys"):
        Queue(4, 3).push(torch.randn(2, 5))


WORLD = 2


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=WORLD)
    try:
        q = Queue(7, 3)
        for step in range(3):  # each rank pushes 2 keys per step: 4 keys per step in total
            q.push(_keys(100 * rank + 10 * step, 2), ids=torch.arange(2) + 100 * rank + 10 * step)
        torch.save(q.state_dict(), Path(out_dir) / f"{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_push_gathers_keys_of_all_ranks(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    states = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    torch.testing.assert_close(states[0]["keys"], states[1]["keys"])  # the same queue everywhere
    # one process pushing rank 0's keys then rank 1's keys at every step
    ref = Queue(7, 3)
    for step in range(3):
        ref.push(torch.cat([_keys(10 * step, 2), _keys(100 + 10 * step, 2)]))
    torch.testing.assert_close(states[0]["keys"], ref.state_dict()["keys"])
    torch.testing.assert_close(states[1]["ids"], states[0]["keys"][:, 0].long())
    assert int(states[0]["ptr"]) == 12 % 7
