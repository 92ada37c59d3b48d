"""BYOL, SimSiam, Barlow Twins and VICReg specifics: heads and paper defaults, the loss each
training step computes, BYOL's EMA target (no gradient, moves after ``on_step_end`` by the
cosine tau schedule), the stop-gradient flag and input checks. The generic contract (finite loss,
gradients, state_dict round trip) is in tests/contract/test_methods.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from selfsup.losses.distillation import byol_loss, simsiam_loss
from selfsup.losses.redundancy import barlow_twins_loss
from selfsup.losses.vicreg import vicreg_loss
from selfsup.methods.base import Method, build_method
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError, DataError

SIZE, B = 16, 6
SMALL = {
    "byol": {"proj_hidden_dim": 32, "proj_out_dim": 16, "pred_hidden_dim": 24},
    "simsiam": {"proj_hidden_dim": 32, "proj_out_dim": 16, "pred_hidden_dim": 8},
    "barlow_twins": {"proj_hidden_dim": 32, "proj_out_dim": 16},
    "vicreg": {"proj_hidden_dim": 32, "proj_out_dim": 16},
}


def _build(name: str, seed: int = 0, in_chans: int = 1, **kw) -> Method:
    torch.manual_seed(seed)
    backbone = create_backbone("small_cnn", in_chans=in_chans, image_size=SIZE, width=8)
    return build_method(name, backbone, **{**SMALL[name], **kw}).train()


def _batch(seed: int = 0, in_chans: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, in_chans, SIZE, SIZE, generator=g) for _ in range(2)]
    return Batch(views=views, index=torch.arange(B))


def _kinds(seq: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in seq]


# ------------------------------------------------------------------ defaults and heads


def test_paper_defaults_and_heads() -> None:
    backbone = create_backbone("small_cnn", in_chans=3, image_size=SIZE, width=8)  # 64 features
    byol = build_method("byol", backbone)
    assert _kinds(byol.projector) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (byol.projector[0].out_features, byol.projector[3].out_features) == (4096, 256)
    assert _kinds(byol.predictor) == _kinds(byol.projector)
    assert (byol.predictor[0].in_features, byol.predictor[3].out_features) == (256, 256)
    assert byol.cfg.momentum_base == 0.996 and byol.cfg.momentum_end == 1.0
    assert type(byol).default_views == "byol"
    assert type(byol).default_optim == {
        "name": "lars", "lr": 0.2, "lr_scaling": "linear", "weight_decay": 1.5e-6,
        "momentum": 0.9, "warmup_epochs": 10, "min_lr_ratio": 0.0, "decay_norm_bias": False}

    sims = build_method("simsiam", create_backbone("small_cnn", 3, SIZE, width=8))
    assert _kinds(sims.projector) == ["Linear", "BatchNorm1d", "ReLU"] * 2 + [
        "Linear", "BatchNorm1d"]
    assert sims.projector[-1].affine is False and sims.projector[-2].bias is None
    assert sims.projector[-2].out_features == 2048
    assert _kinds(sims.predictor) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert sims.predictor[0].out_features == 512 and sims.predictor[3].out_features == 2048
    opt = type(sims).default_optim
    assert (opt["name"], opt["lr"], opt["weight_decay"], opt["momentum"]) == (
        "sgd", 0.05, 1e-4, 0.9)
    assert type(sims).default_views == "moco_v2"  # main_simsiam.py: "MoCo v2's aug"

    for name, wd in (("barlow_twins", 1.5e-6), ("vicreg", 1e-6)):
        m = build_method(name, create_backbone("small_cnn", 3, SIZE, width=8))
        linears = [x for x in m.projector if isinstance(x, nn.Linear)]
        assert len(linears) == 3 and all(x.bias is None for x in linears)
        assert linears[-1].out_features == 2048  # scaled from the paper's 8192 (documented)
        assert type(m).default_views == "byol"
        opt = type(m).default_optim
        assert (opt["name"], opt["lr"], opt["weight_decay"], opt["min_lr_ratio"]) == (
            "lars", 0.2, wd, 0.001)
    bt = build_method("barlow_twins", create_backbone("small_cnn", 3, SIZE, width=8))
    assert bt.criterion.lambd == 5e-3
    vic = build_method("vicreg", create_backbone("small_cnn", 3, SIZE, width=8))
    assert (vic.criterion.sim_coeff, vic.criterion.std_coeff, vic.criterion.cov_coeff) == (
        25.0, 25.0, 1.0)


# ------------------------------------------------------------------ the loss of a step


@pytest.mark.parametrize("name", ["byol", "simsiam", "barlow_twins", "vicreg"])
def test_step_computes_the_paper_loss_on_views_0_and_1(name: str) -> None:
    m = _build(name)
    batch = _batch()
    out = m.training_step(batch)
    with torch.no_grad():  # one pass per view in train mode: the same batch statistics
        z1 = m.projector(m.backbone(batch.views[0]))
        z2 = m.projector(m.backbone(batch.views[1]))
        if name == "byol":
            t1 = m.target_projector(m.target_backbone(batch.views[0]))
            t2 = m.target_projector(m.target_backbone(batch.views[1]))
            ref = byol_loss(m.predictor(z1), m.predictor(z2), t1, t2)
        elif name == "simsiam":
            ref = simsiam_loss(m.predictor(z1), m.predictor(z2), z1, z2)
        elif name == "barlow_twins":
            ref = barlow_twins_loss(z1, z2, 5e-3)
        else:
            ref = vicreg_loss(z1, z2)
        swapped = z1[torch.randperm(B)]
    torch.testing.assert_close(out.loss.detach(), ref, rtol=1e-5, atol=1e-6)
    assert out.embeddings is not None and not out.embeddings.requires_grad
    torch.testing.assert_close(out.embeddings, z1)  # projector outputs of view 0
    assert not torch.allclose(out.embeddings, swapped)
    for v in out.logs.values():
        assert not (isinstance(v, torch.Tensor) and v.requires_grad)


def test_logged_terms() -> None:
    bt = _build("barlow_twins").training_step(_batch())
    assert bt.loss.item() == pytest.approx(
        float(bt.logs["on_diag"]) + 5e-3 * float(bt.logs["off_diag"]), rel=1e-5)
    vic = _build("vicreg").training_step(_batch())
    total = 25 * float(vic.logs["invariance"]) + 25 * float(vic.logs["variance"]) + float(
        vic.logs["covariance"])
    assert vic.loss.item() == pytest.approx(total, rel=1e-5)


# ------------------------------------------------------------------ BYOL's EMA target


def test_byol_target_gets_no_gradient_but_moves_after_on_step_end() -> None:
    m = _build("byol")
    target = list(m.target_backbone.parameters()) + list(m.target_projector.parameters())
    online = list(m.backbone.parameters()) + list(m.projector.parameters())
    assert all(not p.requires_grad for p in target)
    for t, o in zip(target, online):  # the target starts as a copy of the online network
        torch.testing.assert_close(t, o)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    m.training_step(_batch()).loss.backward()
    assert all(p.grad is None for p in target)
    before = [p.detach().clone() for p in target]
    opt.step()
    m.training_step(_batch())  # a forward in between changes nothing in the target
    assert all(torch.equal(a, b) for a, b in zip(before, target))
    step, total = 3, 10
    tau = m.momentum_at(step, total)
    m.on_step_end(step, total)
    assert m.momentum == tau
    changed = 0
    for t, b, o in zip(target, before, online):
        torch.testing.assert_close(t, tau * b + (1 - tau) * o.detach())
        changed += int(not torch.equal(t, b))
    assert changed > 0


def _bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Running mean/var and batch counters of every BatchNorm in ``module``."""
    return {k: v.detach().clone() for k, v in module.named_buffers()}


def test_byol_target_bn_keeps_the_statistics_of_its_own_forward_passes() -> None:
    """deepmind-research byol/byol_experiment.py `_update_fn`: only `target_params` are averaged;
    `target_state` (BN moving averages) is what the target's own forward returns. So after
    training_step + on_step_end the target's BN buffers equal those of a copy of the target that
    saw the same two views, and not the online network's (the old copy-every-step rule)."""
    m = _build("byol")
    with torch.no_grad():  # an online network that differs from the target, as after training
        for p in list(m.backbone.parameters()) + list(m.projector.parameters()):
            p.add_(0.3 * torch.randn_like(p))
    ref_backbone = copy.deepcopy(m.target_backbone.module).train()
    ref_projector = copy.deepcopy(m.target_projector.module).train()
    batch = _batch()
    m.training_step(batch)
    with torch.no_grad():
        for view in batch.views[:2]:  # the target's passes in training_step: view 0, then 1
            ref_projector(ref_backbone(view))
    m.on_step_end(3, 10)
    pairs = ((m.target_backbone.module, ref_backbone, m.backbone),
             (m.target_projector.module, ref_projector, m.projector))
    for target, ref, online in pairs:
        own, theirs, got = _bn_buffers(ref), _bn_buffers(online), _bn_buffers(target)
        assert got.keys() == own.keys() and any(k.endswith("running_mean") for k in got)
        for key in got:
            torch.testing.assert_close(got[key], own[key], msg=key)
        # the online statistics differ, so the assertion above rules out copying them
        assert any(not torch.allclose(got[k], theirs[k]) for k in got if "running" in k)
    assert m.target_backbone.copy_buffers is False and m.target_projector.copy_buffers is False


def test_byol_momentum_schedule() -> None:
    m = _build("byol")
    # tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2  (BYOL sec. 3.2)
    assert m.momentum_at(0, 100) == pytest.approx(0.996)
    assert m.momentum_at(50, 100) == pytest.approx(0.998)
    assert m.momentum_at(100, 100) == pytest.approx(1.0)
    assert m.momentum_at(25, 100) == pytest.approx(1 - 0.004 * (2 ** -0.5 + 1) / 2)
    copy = _build("byol", momentum_base=0.0, momentum_end=0.0, use_predictor=False)
    assert isinstance(copy.predictor, nn.Identity)
    with torch.no_grad():
        for p in copy.backbone.parameters():
            p.add_(0.1)
    copy.on_step_end(5, 10)  # tau = 0: the target becomes the online network
    for t, o in zip(copy.target_backbone.parameters(), copy.backbone.parameters()):
        torch.testing.assert_close(t, o)


# ------------------------------------------------------------------ SimSiam's stop-gradient


def _backbone_grads(m: Method, batch: Batch) -> list[torch.Tensor]:
    m.zero_grad()
    m.training_step(batch).loss.backward()
    return [p.grad.clone() for p in m.backbone.parameters() if p.grad is not None]


def test_simsiam_stop_gradient_flag_changes_the_gradient_only() -> None:
    batch = _batch(1)
    sg, free = _build("simsiam", seed=2), _build("simsiam", seed=2, stop_gradient=False)
    assert sg.training_step(batch).loss.item() == pytest.approx(
        free.training_step(batch).loss.item(), rel=1e-6)
    g_sg, g_free = _backbone_grads(sg, batch), _backbone_grads(free, batch)
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-7) for a, b in zip(g_sg, g_free))
    # with the stop-gradient the gradient is that of the loss with detached projections
    sg.zero_grad()
    z1 = sg.projector(sg.backbone(batch.views[0]))
    z2 = sg.projector(sg.backbone(batch.views[1]))
    simsiam_loss(sg.predictor(z1), sg.predictor(z2), z1.detach(), z2.detach(),
                 stop_gradient=False).backward()
    manual = [p.grad for p in sg.backbone.parameters() if p.grad is not None]
    for a, b in zip(g_sg, manual):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", ["byol", "simsiam", "barlow_twins", "vicreg"])
def test_bad_input(name: str) -> None:
    m = _build(name)
    x = torch.randn(B, 1, SIZE, SIZE)
    with pytest.raises(DataError, match="2 views"):
        m.training_step(Batch(views=[x], index=torch.arange(B)))
    with pytest.raises(DataError):
        m.training_step(Batch(views=[x, x[:3]], index=torch.arange(B)))
    backbone = create_backbone("small_cnn", 1, SIZE)
    with pytest.raises(ConfigError, match="proj_out_dim"):
        build_method(name, backbone, proj_out_dim=0)
    with pytest.raises(ConfigError, match="unknown option 'method_args.nope'"):
        build_method(name, backbone, nope=1)
    with pytest.raises(ConfigError, match="num_features"):
        build_method(name, nn.Linear(3, 3))


@pytest.mark.parametrize("name,bad", [
    ("byol", {"momentum_base": 1.5}), ("byol", {"momentum_end": -0.1}),
    ("byol", {"pred_hidden_dim": 0}), ("simsiam", {"pred_hidden_dim": 0}),
    ("simsiam", {"proj_layers": 0}), ("barlow_twins", {"lambd": -1.0}),
    ("barlow_twins", {"eps": -1.0}), ("vicreg", {"std_coeff": -1.0}),
    ("vicreg", {"gamma": -1.0}),
])
def test_bad_config(name: str, bad: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        build_method(name, create_backbone("small_cnn", 1, SIZE), **bad)


def test_batch_of_one_is_rejected_by_redundancy_methods() -> None:
    x = torch.randn(1, 1, SIZE, SIZE)
    for name in ("barlow_twins", "vicreg"):
        m = _build(name).eval()  # eval: BatchNorm accepts a single sample; the loss must not
        with pytest.raises(DataError, match="at least 2"):
            m.training_step(Batch(views=[x, x], index=torch.arange(1)))
