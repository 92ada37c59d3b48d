from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.config import OptimConfig
from selfsup.engine.optim import LARS, build_optimizer, param_groups, resolve, scaled_lr
from selfsup.types import ConfigError


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_decay_groups_split_by_dim() -> None:
    m = _model()
    groups = param_groups(m, 0.1)
    assert [p.dim() for p in groups[0]["params"]] == [2, 2]
    assert all(p.dim() == 1 for p in groups[1]["params"])
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    m[0].weight.requires_grad_(False)
    assert len(param_groups(m, 0.1)[0]["params"]) == 1


def _lars_reference(w: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, lr: float,
                    mom: float, wd: float, eta: float, adapt: bool):
    """Plain transcription of LARS (You et al. 2017, Algorithm 1) with momentum."""
    d = g + wd * w
    if adapt:
        wn, dn = float(w.norm()), float(d.norm())
        trust = eta * wn / dn if wn > 0 and dn > 0 else 1.0
        d = d * trust
    buf = d.clone() if buf is None else buf * mom + d
    return w - lr * buf, buf


def test_lars_matches_reference_over_steps() -> None:
    torch.manual_seed(0)
    m = _model()
    ref = {n: (p.detach().clone(), None) for n, p in m.named_parameters()}
    opt = LARS(param_groups(m, 1e-4), lr=0.5, momentum=0.9, eta=0.001)
    x = torch.randn(16, 4)
    for _ in range(3):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        opt.step()
        for n, p in m.named_parameters():
            w, buf = ref[n]
            adapt = p.dim() >= 2
            w2, buf2 = _lars_reference(w, grads[n], buf, 0.5, 0.9, 1e-4 if adapt else 0.0,
                                       0.001, adapt)
            ref[n] = (w2, buf2)
            torch.testing.assert_close(p.detach(), w2)
            ref[n] = (p.detach().clone(), buf2)


def test_resolve_fills_from_method_then_fallback() -> None:
    cfg = resolve(OptimConfig(lr=0.1), {"name": "lars", "lr": 0.3, "weight_decay": 1e-6})
    assert cfg.name == "lars" and cfg.lr == 0.1 and cfg.weight_decay == 1e-6
    assert cfg.momentum == 0.9 and cfg.warmup_epochs is not None
    with pytest.raises(ConfigError, match="optim.name 'rmsprop'"):
        resolve(OptimConfig(name="rmsprop"), {})
    with pytest.raises(ConfigError, match="optim.lr_scaling"):
        resolve(OptimConfig(lr_scaling="quadratic"), {})
    with pytest.raises(ConfigError, match="optim.accumulate"):
        resolve(OptimConfig(accumulate=0), {})


def test_scaled_lr() -> None:
    c = resolve(OptimConfig(lr=0.3, lr_scaling="linear"), {})
    assert scaled_lr(c, 512) == pytest.approx(0.6)
    c = resolve(OptimConfig(lr=0.3, lr_scaling="sqrt"), {})
    assert scaled_lr(c, 1024) == pytest.approx(0.6)
    c = resolve(OptimConfig(lr=0.3, lr_scaling="none"), {})
    assert scaled_lr(c, 1024) == pytest.approx(0.3)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_build_optimizer_steps(name: str) -> None:
    m = _model()
    opt = build_optimizer(m, resolve(OptimConfig(name=name), {}), lr=0.01)
    before = [p.detach().clone() for p in m.parameters()]
    m(torch.randn(8, 4)).sum().backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, m.parameters()))


def test_weight_decay_schedule_is_cosine_and_constant_by_default() -> None:
    from selfsup.engine.optim import weight_decay_at

    const = resolve(OptimConfig(weight_decay=0.04), {})
    assert weight_decay_at(const, 0, 100) == weight_decay_at(const, 100, 100) == 0.04
    sched = resolve(OptimConfig(weight_decay=0.04, weight_decay_end=0.4), {})
    assert weight_decay_at(sched, 0, 100) == pytest.approx(0.04)
    assert weight_decay_at(sched, 50, 100) == pytest.approx(0.22)  # cosine midpoint
    assert weight_decay_at(sched, 100, 100) == pytest.approx(0.4)
    # a method's schedule (DINO's 0.04 -> 0.4) gives way to a weight decay the user sets alone
    method = {"weight_decay": 0.04, "weight_decay_end": 0.4}
    assert resolve(OptimConfig(), method).weight_decay_end == 0.4
    assert resolve(OptimConfig(weight_decay=0.0), method).weight_decay_end is None
    assert resolve(OptimConfig(weight_decay=0.0, weight_decay_end=0.1), method).weight_decay_end \
        == 0.1
    with pytest.raises(ConfigError, match="weight_decay_end"):
        resolve(OptimConfig(weight_decay_end=-1.0), {})


def test_trainer_applies_the_weight_decay_schedule_to_decayed_groups(tiny_run) -> None:
    from selfsup.config import apply_overrides
    from selfsup.engine.trainer import pretrain

    cfg = apply_overrides(tiny_run(steps=4), ["optim.name=adamw", "optim.weight_decay=0.1",
                                              "optim.weight_decay_end=0.5"])
    res = pretrain(cfg)
    groups = torch.load(res.checkpoint, weights_only=False)["optimizer"]["param_groups"]
    decayed = [g for g in groups if g["decay"]]
    # the last step (3 of 4) set cos(pi * 3/4): 0.5 + (0.1 - 0.5) * (1 + cos(3 pi / 4)) / 2
    assert decayed[0]["weight_decay"] == pytest.approx(0.5 - 0.4 * (1 - 2 ** -0.5) / 2)
    assert all(g["weight_decay"] == 0.0 for g in groups if not g["decay"])


def _grads(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in ((4, 3), (7,), (2, 2, 3))]
    for p, scale in zip(params, (10.0, 0.1, 3.0)):  # one above, one below, one near the clip
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


def test_per_param_clipping_matches_dino_loop_reference() -> None:
    """DINO's utils.clip_gradients, written as its loop: each parameter on its own norm."""
    from selfsup.engine.optim import clip_gradients

    params, ref = _grads(), _grads()
    for p in ref:
        norm = p.grad.norm(2)
        coef = 3.0 / (norm + 1e-6)
        if coef < 1:
            p.grad.mul_(coef)
    total = clip_gradients(params, 3.0, "per_param")
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.grad, r.grad)
    norms = [p.grad.norm() for p in params]
    assert max(norms) <= 3.0 + 1e-4 and min(norms) < 1.0  # the small one is left alone
    assert total == pytest.approx(float(torch.cat([g.grad.flatten() for g in _grads()]).norm()))


def test_global_clipping_matches_torch_and_differs_from_per_param() -> None:
    from selfsup.engine.optim import clip_gradients

    params, ref = _grads(), _grads()
    clip_gradients(params, 3.0, "global")
    torch.nn.utils.clip_grad_norm_(ref, 3.0)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.grad, r.grad)
    per = _grads()
    clip_gradients(per, 3.0, "per_param")
    assert not torch.allclose(per[1].grad, params[1].grad)  # global also shrinks the small one


def test_clip_norm_is_non_finite_when_any_gradient_is() -> None:
    from selfsup.engine.optim import clip_gradients

    params = _grads()
    params[1].grad[3] = float("nan")
    assert not torch.isfinite(clip_gradients(params, 0.0, "global"))
    with pytest.raises(ConfigError, match="clip_mode 'layer'"):
        resolve(OptimConfig(clip_mode="layer"), {})


def test_decay_norm_bias_puts_biases_and_norms_in_the_decayed_group() -> None:
    from selfsup.engine.optim import build_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    for flag, want in ((False, 0.0), (True, 0.1)):
        cfg = resolve(OptimConfig(name="sgd", weight_decay=0.1, decay_norm_bias=flag), {})
        opt = build_optimizer(net, cfg, 0.1)
        by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
        assert by_id[id(net[0].weight)]["weight_decay"] == 0.1
        for p in (net[0].bias, net[1].weight, net[1].bias):
            assert by_id[id(p)]["weight_decay"] == want and by_id[id(p)]["decay"] is flag
