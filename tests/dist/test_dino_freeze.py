"""DINO's frozen last layer under DDP (2 gloo processes, the trainer's wrapping: no
``find_unused_parameters``, ``broadcast_buffers=False``) with gradient accumulation: the layer
stays in the graph with a zero gradient, so DDP reduces every parameter and raises nothing on the
next step; ``before_optimizer_step`` then drops the reduced gradient (the reference's
``cancel_gradients_last_layer``), so AdamW keeps no state for it; after the freeze the ranks
update it identically.

(A ``register_post_accumulate_grad_hook`` that sets ``p.grad = None`` does not work here: DDP
writes the reduced gradient back afterwards, so the optimiser still sees a zero gradient.)"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from gloo_harness import run_on_ranks
from selfsup.config import OptimConfig
from selfsup.engine.optim import build_optimizer, resolve
from selfsup.methods.base import build_method
from selfsup.methods.dino import DINO
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch

ACCUM, FROZEN_STEPS = 2, 2


def _worker(rank: int) -> dict[str, Any]:
    torch.manual_seed(0)  # same initial weights on both ranks
    bb = create_backbone("small_cnn", in_chans=1, image_size=16, width=8)
    m = build_method("dino", bb, out_dim=16, hidden_dim=16, bottleneck_dim=8,
                     norm_last_layer=False)
    assert isinstance(m, DINO)
    m.on_train_start(steps_per_epoch=FROZEN_STEPS, total=10)
    opt = build_optimizer(m, resolve(OptimConfig(), DINO.default_optim), 1e-2)
    model = DistributedDataParallel(m.train(), broadcast_buffers=False)
    last = [m.head.last_layer.weight_v, m.head.last_layer.weight_g]
    before = [p.detach().clone() for p in last]
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own images
    out: dict[str, Any] = {}
    for step in range(FROZEN_STEPS + 1):
        for micro in range(ACCUM):
            views = [torch.randn(4, 1, s, s, generator=g) for s in (16, 16, 8, 8)]
            sync = model.no_sync() if micro < ACCUM - 1 else contextlib.nullcontext()
            with sync:
                model(Batch(views=views, index=torch.arange(4))).loss.backward()
        m.before_optimizer_step(step)
        if step < FROZEN_STEPS:
            out.setdefault("none_while_frozen", []).append(all(p.grad is None for p in last))
        opt.step()
        opt.zero_grad(set_to_none=True)
        m.on_step_end(step, 10)
        if step == FROZEN_STEPS - 1:
            out["state_after_freeze"] = [len(opt.state[p]) for p in last]
            out["unchanged"] = all(torch.equal(p, b) for p, b in zip(last, before))
    out["steps_after"] = [int(opt.state[p]["step"]) for p in last]
    out["last"] = [p.detach().clone() for p in last]
    return out


def test_frozen_last_layer_under_ddp_with_accumulation(tmp_path: Path) -> None:
    r0, r1 = run_on_ranks(_worker, 2, tmp_path)
    for r in (r0, r1):
        assert r["none_while_frozen"] == [True] * FROZEN_STEPS
        assert r["state_after_freeze"] == [0, 0] and r["unchanged"]
        assert r["steps_after"] == [1, 1]
    for a, b in zip(r0["last"], r1["last"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # DDP reduced the first real update
