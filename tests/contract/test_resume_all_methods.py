"""``--resume`` is exact for every registered method (issue 10, item 11).

For each method, an uninterrupted run of ``STEPS`` optimiser steps is compared with a run stopped
at step ``k`` (``pretrain(cfg, stop_at=k)``, as a preemption would) and then resumed. Everything a
run carries must come out bit-identical (tolerance 0: the same CPU ops run in the same order, so
any difference is lost or wrongly restored state, never rounding):

- every tensor of the method's ``state_dict`` (EMA teachers, queues and their ids, memory banks
  and NCE's ``Z``, DINO's center, SwAV's queue and step counter, prototypes, pseudo-labels and
  centroids), the optimiser state (momenta, Adam moments and step counts), the AMP scaler, the
  RNG states saved in the final checkpoint;
- every record of ``metrics.jsonl`` (loss, lr and the method's own logs) except the throughput.

The grid covers every method with ``optim.accumulate`` 1 and 2, stopped mid-epoch (the resumed
run then crosses an epoch boundary, where SwAV's prototypes and DINO's last layer unfreeze and
DeepCluster re-clusters) and, for methods with epoch hooks (``on_epoch_start``: DeepCluster,
DeepCluster-v2), also exactly at an epoch boundary. Methods are built small (``*_dim`` fields of
64 or more shrunk to 16, plus ``OVERRIDES``) so the grid stays fast; a new method gets the generic
shrink and runs otherwise with its defaults.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import selfsup.methods  # noqa: F401  (registers the methods)
from method_grid import grid_backbone_config, shrunk_args, tokenizer_args
from selfsup import registry
from selfsup.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from selfsup.data.arrays import shared_data_file
from selfsup.engine import checkpoint
from selfsup.engine.trainer import PretrainResult, pretrain
from selfsup.methods.base import Method
from selfsup.types import DataError

METHODS = registry.list_names("method")
LIMIT, BATCH, STEPS = 48, 12, 5  # 4 batches per epoch: 4 (accumulate 1) or 2 (accumulate 2) steps
MID, BOUNDARY = 3, 4  # mid-epoch 0 (accumulate 1) / 1 (accumulate 2); the start of epoch 1 / 2

# Shrinks for speed, and settings that make the stateful parts act within STEPS steps.
OVERRIDES: dict[str, dict[str, Any]] = {
    # the shrink gives pred_dim 16, not a multiple of vit_tiny's 3 heads
    "ijepa": {"pred_dim": 24, "pred_depth": 1},
    # 8-px images give 2-px patches: LocalMIM's scale 4 would need 0.5-px regions
    "localmim": {"scales": [2.0, 1.0, 0.5], "layers": [1, 2, 2]},
    "cmc": {"num_negatives": 16},
    "instdisc": {"num_negatives": 16},
    "deepcluster": {"num_clusters": 4, "pca_dim": 4},
    "deepcluster_v2": {"num_prototypes": [5, 4]},
    "moco_v1": {"queue_size": 20},  # not a multiple of the batch: the pointer wraps mid-batch
    "moco_v2": {"queue_size": 20},
    # the queue fills from the first step and is in use (full) from the second on
    "swav": {"num_prototypes": 16, "queue_length": BATCH, "epoch_queue_starts": 0},
}


def method_args(name: str) -> dict[str, Any]:
    # BEiT: the path of a 2-step vq_tokenizer run on the grid's grey 8-px digits
    return {**shrunk_args(name, OVERRIDES), **tokenizer_args(name, 1, 8, as_path=True)}


def has_epoch_hooks(name: str) -> bool:
    cls = registry.get("method", name).obj
    return cls.on_epoch_start is not Method.on_epoch_start


def _cases() -> list[Any]:
    out = []
    for name in METHODS:
        for accum in (1, 2):
            out.append(pytest.param(name, accum, MID, id=f"{name}-acc{accum}-mid"))
            if has_epoch_hooks(name):
                out.append(pytest.param(name, accum, BOUNDARY, id=f"{name}-acc{accum}-boundary"))
    return out


def _data(name: str) -> str:
    """Grey digits, or the shared CIFAR-10 for methods taking RGB only (colorization)."""
    chans = getattr(registry.get("method", name).obj, "input_channels", None)
    if chans is None or 1 in chans:
        return "digits"
    try:
        shared_data_file("cifar10")
    except DataError as e:
        pytest.skip(f"{name} takes {chans}-channel data only and needs the shared CIFAR-10: {e}")
    return "cifar10"


def _config(name: str, accum: int, out: Path) -> RunConfig:
    return RunConfig(
        method=name, method_args=method_args(name),
        backbone=grid_backbone_config(name, width=4, image_size=8),
        data=DataConfig(path=_data(name), image_size=8, limit=LIMIT),
        optim=OptimConfig(accumulate=accum),
        train=TrainConfig(steps=STEPS, batch_size=BATCH, out=str(out), device="cpu",
                          progress=False, tensorboard=False, log_every=1, collapse_every=2),
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these tensors are tiny, and with two threads on a shared 2-core
    machine a busy neighbour process makes every op wait for the second thread (measured: 10
    runs 1.8 s with 1 thread, 151 s with 2, while another test process ran)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory
                 ) -> Callable[[str, int], PretrainResult]:
    """The uninterrupted run of ``(method, accumulate)``, trained once and shared by its cases."""
    cache: dict[tuple[str, int], PretrainResult] = {}

    def get(name: str, accum: int) -> PretrainResult:
        if (name, accum) not in cache:
            out = tmp_path_factory.mktemp(f"{name}-acc{accum}-straight")
            cache[name, accum] = pretrain(_config(name, accum, out / "run"))
        return cache[name, accum]

    return get


def _records(run_dir: Path) -> list[dict[str, Any]]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("images_per_s", None)  # wall-clock throughput, the only field allowed to differ
    return recs


def assert_same(a: Any, b: Any, where: str) -> None:
    """``a`` and ``b`` (nested dicts/lists/tuples of tensors, arrays and scalars) are identical."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)
    elif hasattr(a, "shape"):  # numpy arrays in the RNG states
        assert a.shape == b.shape and bool((a == b).all()), where
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize(("name", "accum", "stop"), _cases())
def test_resume_is_exact(straight_run: Callable[[str, int], PretrainResult], tmp_path: Path,
                         name: str, accum: int, stop: int) -> None:
    straight = straight_run(name, accum)
    cfg = _config(name, accum, tmp_path / "run")
    part = pretrain(cfg, stop_at=stop)
    assert part.step == stop and not part.completed
    resumed = pretrain(cfg, resume=True)
    assert resumed.step == straight.step == STEPS and resumed.completed

    ra, rb = _records(straight.run_dir), _records(resumed.run_dir)
    assert [r["step"] for r in rb] == list(range(1, STEPS + 1))  # no step lost or logged twice
    # the loss of every step, before and after the stop
    assert [r["loss"] for r in rb] == [r["loss"] for r in ra]
    # the trained method in memory, every buffer included
    assert_same(straight.method.state_dict(), resumed.method.state_dict(), "state_dict")
    # what the final checkpoints hold: model, optimiser, scaler, step, RNG states
    a, b = checkpoint.load(straight.checkpoint), checkpoint.load(resumed.checkpoint)
    for key in ("model", "optimizer", "scaler", "step", "rng", "rng_per_rank"):
        if key in a or key in b:
            assert_same(a.get(key), b.get(key), key)
    # the rest of every record: lr, grad norm, collapse metrics and the method's own logs
    for x, y in zip(ra, rb):
        assert_same(x, y, f"metrics.jsonl step {x['step']}")
