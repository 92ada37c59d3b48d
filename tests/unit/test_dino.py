"""DINO's parts against references: the loss against a plain loop over crop pairs (the authors'
``DINOLoss``), KoLeo against a loop over nearest neighbours, the center's update rule (eq. 4; the
distributed form is in tests/dist/test_dino_center.py), the head's shapes and normalisation, and
the method's schedules: last layer frozen in the first epoch, teacher without gradients but
moving after a step, teacher temperature warm-up, ViT on multi-crop sizes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import OptimConfig, replace
from selfsup.data.views import get_preset
from selfsup.engine.optim import build_optimizer, resolve
from selfsup.losses.dino import dino_loss, koleo_loss, teacher_entropies, teacher_probs
from selfsup.methods.base import build_method
from selfsup.methods.dino import DINO
from selfsup.nn.backbones import create_backbone
from selfsup.nn.center import Center
from selfsup.nn.heads import DINOHead
from selfsup.nn.multicrop import encode_by_resolution
from selfsup.types import Batch, ConfigError, DataError
from sinkhorn_reference import loop_sinkhorn

# ------------------------------------------------------------------ references


def _loop_dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor],
                    center: torch.Tensor | None, ts: float, tt: float) -> torch.Tensor:
    """The authors' DINOLoss.forward written as the plain double loop (no chunking tricks)."""
    total, terms = torch.zeros((), dtype=torch.float64), 0
    for iq, t in enumerate(teacher):
        logits = t.double() - (center.double() if center is not None else 0.0)
        q = torch.softmax(logits / tt, dim=-1)
        for v, s in enumerate(student):
            if v == iq:
                continue
            per_sample = torch.stack([
                -sum(q[b, k] * torch.log_softmax(s[b].double() / ts, dim=-1)[k]
                     for k in range(s.shape[1]))
                for b in range(s.shape[0])
            ])
            total = total + per_sample.mean()
            terms += 1
    return total / terms


def _loop_koleo(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    z = F.normalize(x.double(), dim=1, eps=eps)
    out = []
    for i in range(z.shape[0]):
        d = min(float((z[i] - z[j]).norm()) for j in range(z.shape[0]) if j != i)
        out.append(-math.log(d + eps))
    return torch.tensor(sum(out) / len(out), dtype=torch.float64)


# ------------------------------------------------------------------ loss


@pytest.mark.parametrize("n_global", [1, 2])
@pytest.mark.parametrize("n_local", [0, 1, 4])
@pytest.mark.parametrize(("ts", "tt"), [(0.1, 0.04), (0.1, 0.07), (0.2, 1.0)])
@pytest.mark.parametrize("centered", [True, False])
def test_dino_loss_matches_pair_loop(n_global: int, n_local: int, ts: float, tt: float,
                                     centered: bool) -> None:
    if n_global + n_local < 2:
        pytest.skip("one crop has no pair")
    g = torch.Generator().manual_seed(n_global * 10 + n_local)
    B, K = 3, 7
    student = [torch.randn(B, K, generator=g) for _ in range(n_global + n_local)]
    teacher = [torch.randn(B, K, generator=g) for _ in range(n_global)]
    center = torch.randn(1, K, generator=g) if centered else None
    ref = _loop_dino_loss(student, teacher, center, ts, tt)
    got = dino_loss(student, teacher, center, ts, tt)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    # the stacked [V, B, K] form gives the same value
    stacked = dino_loss(torch.stack(student), torch.stack(teacher), center, ts, tt)
    torch.testing.assert_close(stacked, got)


def test_dino_loss_closed_forms_and_gradient() -> None:
    B, K = 4, 16
    zeros = torch.zeros(3, B, K)
    # uniform student and teacher: H(u, u) = log K
    assert dino_loss(zeros, zeros[:2], None, 0.1, 0.04).item() == pytest.approx(math.log(K))
    # centering with the teacher's own constant logits gives the same uniform target
    c = torch.full((1, K), 5.0)
    assert dino_loss(zeros, zeros[:2] + 5.0, c, 0.1, 0.04).item() == pytest.approx(math.log(K))
    # the teacher is detached; the student gets a gradient
    s = torch.randn(3, B, K, requires_grad=True)
    t = torch.randn(2, B, K, requires_grad=True)
    dino_loss(s, t, None).backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()
    # a crop is never its own target: changing student crop 0 with only teacher crop 0 present
    # and one other crop changes nothing that teacher 0 is compared against except crop 1
    s1 = torch.randn(2, B, K)
    t1 = torch.randn(1, B, K)
    s2 = s1.clone()
    s2[0] += 10 * torch.randn(B, K)
    assert dino_loss(s1, t1, None).item() == pytest.approx(dino_loss(s2, t1, None).item())


def test_dino_loss_bad_input() -> None:
    x = torch.randn(2, 3, 5)
    with pytest.raises(DataError, match="T <= V"):
        dino_loss(x[:1], x, None)
    with pytest.raises(DataError, match="T <= V"):
        dino_loss(x, torch.randn(2, 3, 4), None)
    with pytest.raises(DataError, match="list"):
        dino_loss([x[0], torch.randn(3, 4)], x[:1], None)
    with pytest.raises(ConfigError, match="temperature"):
        dino_loss(x, x, None, student_temp=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        dino_loss(x, x, None, teacher_temp=-1.0)


def test_teacher_probs_and_entropies() -> None:
    t = torch.randn(6, 5)
    c = torch.randn(1, 5)
    torch.testing.assert_close(teacher_probs(t, c, 0.5), torch.softmax((t - c) / 0.5, dim=1))
    K = 8
    uniform = torch.full((4, K), 1.0 / K)
    one_hot_same = F.one_hot(torch.zeros(4, dtype=torch.long), K).float()
    one_hot_spread = F.one_hot(torch.arange(4) * 2, K).float()
    assert teacher_entropies(uniform) == pytest.approx((math.log(K), math.log(K)))
    assert teacher_entropies(one_hot_same) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert teacher_entropies(one_hot_spread) == pytest.approx((0.0, math.log(4)), abs=1e-12)
    # a constant, non-uniform output (the same target for every image): both entropies are
    # equal however sharp it is, so the collapse test's marginal-minus-per-sample gap is 0
    const = torch.softmax(torch.randn(1, 64) * 3, dim=1).expand(50, 64)
    h_sample, h_marginal = teacher_entropies(const)
    assert 0.5 < h_sample < math.log(64) - 0.3 and h_marginal - h_sample == pytest.approx(0.0)


@pytest.mark.parametrize(("n", "d"), [(2, 3), (7, 4), (16, 8)])
def test_koleo_matches_loop(n: int, d: int) -> None:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n), requires_grad=True)
    got = koleo_loss(x)
    torch.testing.assert_close(got.double(), _loop_koleo(x.detach()), rtol=1e-5, atol=1e-6)
    got.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # spreading the rows lowers the loss: orthonormal rows beat near-duplicates
    assert koleo_loss(torch.eye(4)).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)
    close = torch.eye(4) * 0.01 + torch.ones(4, 4)
    assert koleo_loss(close).item() > koleo_loss(torch.eye(4)).item()
    with pytest.raises(DataError, match="n >= 2"):
        koleo_loss(torch.randn(1, 3))


# ------------------------------------------------------------------ center


def test_center_update_rule_and_accumulation() -> None:
    c = Center(4, momentum=0.9)
    assert c.value.shape == (1, 4) and float(c.value.abs().sum()) == 0.0
    a, b = torch.randn(5, 4), torch.randn(3, 4)
    c.add(a)
    c.update()
    torch.testing.assert_close(c.value, 0.1 * a.mean(0, keepdim=True))
    expected = 0.9 * c.value + 0.1 * torch.cat([a, b]).mean(0, keepdim=True)
    c.add(a)  # two micro-batches of one optimiser step average together
    c.add(b)
    c.update()
    torch.testing.assert_close(c.value, expected)
    before = c.value.clone()
    c.update()  # nothing recorded: unchanged
    torch.testing.assert_close(c.value, before)
    assert set(c.state_dict()) == {"value"}  # the pending sums are not checkpointed
    with pytest.raises(DataError, match=r"\[N, 4\]"):
        c.add(torch.randn(3, 5))
    with pytest.raises(ConfigError, match="momentum"):
        Center(4, momentum=1.5)


# ------------------------------------------------------------------ head


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_dino_head_shapes_and_normalisation(layers: int) -> None:
    head = DINOHead(10, 32, hidden_dim=16, bottleneck_dim=8, num_layers=layers)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == layers and linears[-1].out_features == 8
    assert all(isinstance(m, (torch.nn.Linear, torch.nn.GELU)) for m in head.mlp)
    x = torch.randn(5, 10)
    out = head(x)
    assert out.shape == (5, 32)
    # unit bottleneck and unit-norm rows of W: every logit is a cosine in [-1, 1]
    w = head.last_layer.weight()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(32))
    z = F.normalize(head.mlp(x), dim=1)
    torch.testing.assert_close(out, z @ w.t())
    assert out.abs().max() <= 1.0 + 1e-6
    # weight_g fixed to 1 and not trained by default; trainable with norm_last_layer=False
    assert not head.last_layer.weight_g.requires_grad
    free = DINOHead(10, 32, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False)
    # torch.nn.utils.weight_norm's weight_g shape, so the decay groups treat it as the reference
    assert free.last_layer.weight_g.requires_grad and free.last_layer.weight_g.shape == (32, 1)
    bn = DINOHead(10, 32, hidden_dim=16, bottleneck_dim=8, use_bn=True)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in bn.mlp) == 2
    with pytest.raises(ConfigError):
        DINOHead(10, 0)
    with pytest.raises(ConfigError):
        DINOHead(10, 8, num_layers=0)


def test_frozen_last_layer_same_output_zero_gradient() -> None:
    head = DINOHead(6, 12, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False)
    x = torch.randn(3, 6)
    torch.testing.assert_close(head(x, freeze_last_layer=True), head(x))
    head(x, freeze_last_layer=True).square().sum().backward()
    lv, lg = head.last_layer.weight_v.grad, head.last_layer.weight_g.grad
    assert lv is not None and lg is not None
    assert float(lv.abs().sum()) == 0.0 and float(lg.abs().sum()) == 0.0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in head.mlp.parameters())


# ------------------------------------------------------------------ method

SIZE = 16
B = 4


def _method(**kw: object) -> DINO:
    torch.manual_seed(0)
    backbone = create_backbone("small_cnn", in_chans=1, image_size=SIZE, width=8)
    args = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, **kw}
    m = build_method("dino", backbone, **args)
    assert isinstance(m, DINO)
    return m.train()


def _batch(seed: int = 0, size: int = SIZE, channels: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    sizes = [v.size for v in get_preset("dino", size) for _ in range(v.n)]
    assert sizes[:2] == [size, size] and len(sizes) == 8
    views = [torch.randn(B, channels, s, s, generator=g) for s in sizes]
    return Batch(views=views, index=torch.arange(B))


def _adamw(m: DINO) -> torch.optim.Optimizer:
    return build_optimizer(m, resolve(OptimConfig(), DINO.default_optim), 1e-2)


def test_last_layer_frozen_first_epoch_gradient_dropped_so_adamw_skips_it() -> None:
    """main_dino.py: backward, clip_gradients, cancel_gradients_last_layer (``p.grad = None``),
    step. AdamW skips a parameter without gradient: no step count, moments or weight decay. The
    layer stays in the graph with a zero gradient (DDP needs it); the hook drops it."""
    m = _method(norm_last_layer=False)  # g trainable too (and decayed, as the reference)
    m.on_train_start(steps_per_epoch=3, total=10)
    opt = _adamw(m)
    last = [m.head.last_layer.weight_v, m.head.last_layer.weight_g]
    before = [p.detach().clone() for p in last]
    mlp0 = m.head.mlp[0].weight.detach().clone()
    for step in range(3):  # the whole first epoch
        assert m.last_layer_frozen_at(step)
        m.training_step(_batch(step)).loss.backward()
        assert all(p.grad is not None and float(p.grad.abs().sum()) == 0.0 for p in last)
        m.before_optimizer_step(step)
        assert all(p.grad is None for p in last)
        opt.step()
        opt.zero_grad(set_to_none=True)
        m.on_step_end(step, 10)
    # a zero gradient would have given them state (step 3, moments) and decayed V and g
    assert all(len(opt.state[p]) == 0 for p in last)
    assert all(torch.equal(p, b) for p, b in zip(last, before))
    assert not torch.equal(m.head.mlp[0].weight, mlp0)
    assert int(opt.state[m.head.mlp[0].weight]["step"]) == 3
    assert not m.last_layer_frozen_at(3) and int(m.steps_done) == 3
    m.training_step(_batch(3)).loss.backward()
    m.before_optimizer_step(3)
    grad = m.head.last_layer.weight_v.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    opt.step()
    # the first update after the freeze is Adam's first step for the layer
    assert all(int(opt.state[p]["step"]) == 1 for p in last)
    assert not torch.allclose(m.head.last_layer.weight(), before[1] * F.normalize(before[0]))
    # freeze_last_layer=0 never freezes
    assert not _method(freeze_last_layer=0).last_layer_frozen_at(0)


def test_trainer_drops_the_frozen_last_layer_gradient(tiny_run) -> None:
    """Through the trainer (which calls ``before_optimizer_step`` after backward): two steps of
    the frozen first epoch leave the last layer without AdamW state in the checkpoint."""
    from selfsup.engine import checkpoint
    from selfsup.engine.trainer import pretrain

    c = tiny_run("dino", steps=2, batch=32)  # the paper recipe: AdamW, last layer frozen 1 epoch
    res = pretrain(replace(c, method="dino", recipe="paper",
                           method_args={"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8}))
    m = res.method
    assert isinstance(m, DINO) and m.last_layer_frozen_at(1)
    opt = _adamw(m)
    opt.load_state_dict(checkpoint.load(res.checkpoint)["optimizer"])
    assert len(opt.state[m.head.last_layer.weight_v]) == 0
    assert int(opt.state[m.head.mlp[0].weight]["step"]) == 2


def test_optim_defaults_follow_main_dino() -> None:
    """utils.clip_gradients (each parameter to norm 3.0) and utils.get_params_groups (no decay
    for biases and 1-d parameters) against a plain re-statement of the latter."""
    ocfg = resolve(OptimConfig(), DINO.default_optim)
    assert ocfg.clip_mode == "per_param" and ocfg.clip_grad == 3.0 and ocfg.name == "adamw"
    m = _method(norm_last_layer=False, use_bn_in_head=True)
    opt = _adamw(m)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    ref = {id(p) for n, p in m.named_parameters()
           if p.requires_grad and not (n.endswith(".bias") or len(p.shape) == 1)}
    assert decayed == ref
    assert id(m.head.last_layer.weight_g) in decayed  # [K, 1] like weight_norm's, decayed
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable  # no teacher


def test_teacher_batchnorm_keeps_its_own_statistics() -> None:
    """main_dino.py's EMA moves parameters only; the teacher (train mode) updates its BN
    running statistics from its own passes over the global crops, so after a step they are
    those of a replay of the teacher, not the student's (which also saw the local crops)."""
    m = _method(use_bn_in_head=True)
    replay_bb = copy.deepcopy(m.teacher_backbone).train()
    replay_head = copy.deepcopy(m.teacher_head).train()
    batch = _batch()
    m.training_step(batch).loss.backward()
    m.on_step_end(0, 10)
    with torch.no_grad():
        replay_head(encode_by_resolution(replay_bb, batch.views[:2], m.cfg.crop_passes))
    pairs = [(m.teacher_backbone, m.backbone, replay_bb), (m.teacher_head, m.head, replay_head)]
    for teacher, student, replay in pairs:
        bufs = dict(teacher.module.named_buffers())
        assert bufs and any("running_mean" in k for k in bufs)
        for name, buf in student.named_buffers():
            torch.testing.assert_close(bufs[name], dict(replay.module.named_buffers())[name])
            if "running" in name:
                assert not torch.allclose(bufs[name], buf), name


def test_teacher_gets_no_gradient_but_follows_after_step() -> None:
    m = _method(momentum_base=0.9)
    out = m.training_step(_batch())
    out.loss.backward()
    teacher = list(m.teacher_backbone.parameters()) + list(m.teacher_head.parameters())
    assert teacher and all(not p.requires_grad and p.grad is None for p in teacher)
    before = [p.clone() for p in teacher]
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.1)
    m.on_step_end(0, 10)
    assert m.momentum == pytest.approx(0.9)
    assert any(not torch.equal(a, b) for a, b in zip(before, teacher))
    # theta_t <- lambda theta_t + (1 - lambda) theta_s
    p_t, p_s = next(m.teacher_backbone.parameters()), next(m.backbone.parameters())
    torch.testing.assert_close(p_t, 0.9 * before[0] + 0.1 * p_s)
    # the center moved towards the teacher outputs of the step
    assert float(m.center.value.abs().sum()) > 0
    assert m.momentum_at(10, 10) == pytest.approx(1.0)


def test_teacher_sees_global_crops_and_loss_matches_reference() -> None:
    m = _method()
    batch = _batch()
    m.eval()  # BN with running statistics: grouping of passes does not change the outputs
    with torch.no_grad():
        out = m.training_step(batch)
        student = [m.head(m.backbone(v)) for v in batch.views]
        teacher = [m.teacher_head(m.teacher_backbone(v)) for v in batch.views[:2]]
        ref = dino_loss(student, teacher, m.center.value, 0.1, 0.04)
    torch.testing.assert_close(out.loss, ref)
    assert out.embeddings is not None and out.embeddings.shape == (B, m.backbone.num_features)
    assert {"teacher_temp", "teacher_entropy", "teacher_marginal_entropy"} <= set(out.logs)
    # the center recorded exactly the teacher outputs of the two global crops
    m.on_step_end(0, 10)
    torch.testing.assert_close(m.center.value, 0.1 * torch.cat(teacher).mean(0, keepdim=True))


def test_teacher_temperature_schedule_and_ablation_flags() -> None:
    m = _method(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    m.on_train_start(steps_per_epoch=10, total=1000)
    assert m.teacher_temp_at(0) == pytest.approx(0.04)
    assert m.teacher_temp_at(150) == pytest.approx(0.055)
    assert m.teacher_temp_at(300) == pytest.approx(0.07)
    assert m.teacher_temp_at(900) == pytest.approx(0.07)
    assert _method().teacher_temp_at(0) == pytest.approx(0.04)  # paper default: constant
    assert _method(sharpening=False).teacher_temp_at(0) == pytest.approx(0.1)
    # the schedule reads the checkpointed step counter: a restored method continues it
    m.steps_done.fill_(150)
    restored = _method(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    restored.load_state_dict(m.state_dict())
    restored.on_train_start(steps_per_epoch=10, total=1000)
    assert restored.training_step(_batch()).logs["teacher_temp"] == pytest.approx(0.055)
    # centering=False: the loss ignores the center
    nc = _method(centering=False)
    nc.center.value.fill_(3.0)
    x = torch.randn(B, 1, SIZE, SIZE)
    probs = nc.teacher_distribution(x)
    with torch.no_grad():
        raw = torch.softmax(nc.teacher_head(nc.teacher_backbone(x)) / 0.04, dim=1)
    torch.testing.assert_close(probs, raw)


def test_koleo_option_adds_the_regulariser() -> None:
    batch = _batch()
    plain = _method().training_step(batch)
    reg = _method(koleo_weight=0.1).training_step(batch)
    assert "koleo" in reg.logs and "koleo" not in plain.logs
    koleo = reg.logs["koleo"]
    assert isinstance(koleo, torch.Tensor)
    torch.testing.assert_close(reg.loss, plain.loss + 0.1 * koleo)


def test_bad_config_and_input() -> None:
    backbone = create_backbone("small_cnn", in_chans=1, image_size=SIZE, width=8)
    for bad in ({"student_temp": 0.0}, {"center_momentum": 2.0}, {"out_dim": 0},
                {"freeze_last_layer": -1.0}, {"koleo_weight": -0.1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build_method("dino", backbone, **bad)
    m = _method()
    x = torch.randn(B, 1, SIZE, SIZE)
    with pytest.raises(DataError, match="at least 2 views"):
        m.training_step(Batch(views=[x], index=torch.arange(B)))
    with pytest.raises(DataError, match="global crops"):
        m.training_step(Batch(views=[x, x[:, :, :8, :8], x], index=torch.arange(B)))


def test_resnet_backbone_multicrop_step() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", in_chans=3, image_size=32, cifar_stem=True)
    m = build_method("dino", backbone, out_dim=32, hidden_dim=16, bottleneck_dim=8).train()
    out = m.training_step(_batch(size=32, channels=3))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.embeddings is not None
    assert out.embeddings.shape == (B, backbone.num_features)
    assert all(p.grad is not None for p in m.backbone.parameters())


@pytest.mark.parametrize("size", [32, 16])
def test_vit_tiny_trains_on_dino_multicrop(size: int) -> None:
    """Local crops of the dino preset are whole multiples of the default ViT patch and the ViT
    resamples its position embeddings to them (DINO's interpolate_pos_encoding)."""
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", in_chans=3, image_size=size)
    local = get_preset("dino", size)[2].size
    assert local < size and local % backbone.patch_size == 0
    m = build_method("dino", backbone, out_dim=32, hidden_dim=16, bottleneck_dim=8).train()
    out = m.training_step(_batch(size=size, channels=3))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert backbone.pos_embed.grad is not None and torch.isfinite(backbone.pos_embed.grad).all()


def _loop_sinkhorn_dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor],
                             ts: float, tt: float, iters: int) -> torch.Tensor:
    """DINOv2's sinkhorn_knopp_teacher over all global crops, then the double loop of eq. 3."""
    logits = torch.cat(teacher).double()  # [T*B, K]
    targets = loop_sinkhorn(logits - logits.max(), tt, iters).split(teacher[0].shape[0])
    total, terms = torch.zeros((), dtype=torch.float64), 0
    for iq, tq in enumerate(targets):
        for v, s in enumerate(student):
            if v == iq:
                continue
            log_p = torch.log_softmax(s.double() / ts, dim=-1)
            total = total - (tq * log_p).sum(dim=1).mean()
            terms += 1
    return total / terms


def test_sinkhorn_centering_matches_loop_and_equipartitions() -> None:
    """DINOv2 option: the teacher targets are Sinkhorn codes of the teacher logits at
    eps = tau_t over all global crops; each row is a distribution and the prototypes share the
    batch (more evenly than the softmax targets)."""
    m = _method(sinkhorn_centering=True)
    batch = _batch()
    out = m.training_step(batch)
    with torch.no_grad():
        passes = m.cfg.crop_passes  # the method's BN grouping
        feats = encode_by_resolution(m.backbone, batch.views, passes)
        student = list(m.head(feats, freeze_last_layer=True).split(B))
        teacher = list(m.teacher_head(encode_by_resolution(m.teacher_backbone, batch.views[:2],
                                                           passes)).split(B))
    ref = _loop_sinkhorn_dino_loss(student, teacher, 0.1, 0.04, 3)
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-4, atol=1e-5)
    logits = torch.stack(teacher)  # [2, B, K]
    q = m.teacher_targets(logits, 0.04)
    torch.testing.assert_close(q.sum(-1), torch.ones(2, B))
    mass = q.reshape(-1, q.shape[-1]).sum(0)
    soft = torch.softmax(logits / 0.04, dim=-1).reshape(-1, q.shape[-1]).sum(0)
    assert float(mass.std()) < float(soft.std())  # closer to equal shares per prototype
    with pytest.raises(ConfigError, match="sinkhorn_centering"):
        _method(sinkhorn_centering=True, centering=False)
    with pytest.raises(ConfigError, match="sinkhorn_iters"):
        _method(sinkhorn_centering=True, sinkhorn_iters=0)
