"""SwAV's optimisation against facebookresearch/swav ``main_swav.py``: SGD (then LARC) over
``model.parameters()`` with one weight decay, so every parameter is decayed; the prototypes'
gradient set to None during the first ``freeze_prototypes_niters`` iterations, so the optimiser
skips them (no decay, no momentum buffer)."""

from __future__ import annotations

import torch

from selfsup.config import OptimConfig
from selfsup.engine.optim import build_optimizer, resolve
from selfsup.methods.base import build_method
from selfsup.methods.swav import SwAV
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch

B, SIZE = 6, 16


def _swav(**kw: object) -> SwAV:
    torch.manual_seed(0)
    args = {"proj_hidden_dim": 32, "proj_out_dim": 4, "num_prototypes": 5, "queue_length": 0,
            **kw}
    m = build_method("swav", create_backbone("small_cnn", 1, SIZE, width=8), **args)
    assert isinstance(m, SwAV)
    return m.train()


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(B, 1, SIZE, SIZE, generator=g) for _ in range(2)]
    v += [torch.randn(B, 1, 8, 8, generator=g) for _ in range(2)]
    return Batch(views=v, index=torch.arange(B))


def test_every_parameter_is_decayed_as_main_swav() -> None:
    m = _swav()
    ocfg = resolve(OptimConfig(), SwAV.default_optim)
    opt = build_optimizer(m, ocfg, 0.1)
    assert ocfg.weight_decay == 1e-6
    groups = [g for g in opt.param_groups if g["params"]]
    assert all(g["weight_decay"] == ocfg.weight_decay for g in groups)
    covered = {id(p) for g in groups for p in g["params"]}
    assert covered == {id(p) for p in m.parameters()}  # biases and BN included


def test_frozen_prototypes_get_no_optimizer_state_or_decay() -> None:
    m = _swav()
    m.on_train_start(steps_per_epoch=2, total=10)
    opt = build_optimizer(m, resolve(OptimConfig(), SwAV.default_optim), 0.1)
    w = m.prototypes.weight
    for step in range(3):
        m.training_step(_batch(step)).loss.backward()
        grad = w.grad
        assert grad is not None and (float(grad.abs().sum()) == 0.0) == (step < 2)  # in graph
        m.before_optimizer_step(step)
        assert (w.grad is None) == (step < 2), step
        before = w.detach().clone()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step < 2:  # skipped: no momentum buffer, not even the decay moved it
            assert len(opt.state[w]) == 0 and torch.equal(w, before)
        m.on_step_end(step, 10)
    assert "momentum_buffer" in opt.state[w]
