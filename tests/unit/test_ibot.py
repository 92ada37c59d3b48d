"""iBOT (Zhou et al. 2022): the masked-patch loss against a plain loop over views, images and
patches (``iBOTLoss``'s ``v == q`` term) and its closed forms, only masked patches counting; the
method's step against a by-hand reference (student masked, teacher unmasked, two centers, [CLS]
across views incl. local crops), the teacher without gradients but moving, both centers' eq. 4
updates, the masks (ratio drawn per crop, half the crops unmasked, blocks or exact random
counts, none before ``pred_start_epoch``), the schedules and the shared/separate heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.losses.ibot import ibot_patch_loss, ibot_patch_loss_masked
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError, DataError

SIZE, PATCH = 16, 4  # a 4 x 4 patch grid
SMALL = {"out_dim": 24, "patch_out_dim": 20, "hidden_dim": 32, "bottleneck_dim": 16}

# ------------------------------------------------------------------ references


def _loop_patch_loss(s: torch.Tensor, q: torch.Tensor, m: torch.Tensor, ts: float) -> float:
    """``iBOTLoss``'s patch term as loops: per view and image, the mean cross-entropy over the
    masked patches (0 without any), averaged over images, then views."""
    views = []
    for v in range(s.shape[0]):
        images = []
        for b in range(s.shape[1]):
            ces = []
            for n in range(s.shape[2]):
                if m[v, b, n]:
                    log_p = torch.log_softmax(s[v, b, n].double() / ts, dim=-1)
                    ces.append(-sum(float(q[v, b, n, k]) * float(log_p[k])
                                    for k in range(s.shape[3])))
            images.append(sum(ces) / len(ces) if ces else 0.0)
        views.append(sum(images) / len(images))
    return sum(views) / len(views)


def _loop_cls_loss(s: list[torch.Tensor], q: list[torch.Tensor], ts: float) -> float:
    """DINO's eq. 3 as loops: teacher crop t against every other student crop v."""
    total, terms = 0.0, 0
    for t, qt in enumerate(q):
        for v, sv in enumerate(s):
            if v == t:
                continue
            log_p = torch.log_softmax(sv.double() / ts, dim=-1)
            total += float(-(qt.double() * log_p).sum(-1).mean())
            terms += 1
    return total / terms


def _ibot(size: int = SIZE, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", in_chans=3, image_size=size, patch_size=PATCH, depth=2)
    return build_method("ibot", vit, **{**SMALL, **kw})


def _masks(m: nn.Module, b: int, seed: int) -> dict[str, torch.Tensor]:
    return m.sample_masks(b, generator=torch.Generator().manual_seed(seed))


def _views(b: int, seed: int, local: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(b, 3, SIZE, SIZE, generator=g) for _ in range(2)]
            + [torch.randn(b, 3, 8, 8, generator=g) for _ in range(local)])


# ------------------------------------------------------------------ the patch loss


@pytest.mark.parametrize("v,b,n,k,ts,tt", [(1, 3, 4, 5, 0.1, 0.04), (2, 2, 6, 3, 0.2, 0.07),
                                           (2, 4, 5, 7, 0.1, 0.1)])
def test_patch_loss_matches_loop_reference(v: int, b: int, n: int, k: int, ts: float,
                                           tt: float) -> None:
    g = torch.Generator().manual_seed(v * 100 + b * 10 + n)
    s = torch.randn(v, b, n, k, generator=g) * 3
    q = torch.softmax(torch.randn(v, b, n, k, generator=g) / tt, dim=-1)
    m = torch.rand(v, b, n, generator=g) < 0.4
    m[0, 0] = False  # an image without masked patches counts as 0 in the mean over images
    m[-1, -1, 0] = True
    out = ibot_patch_loss(s, q, m, ts)
    assert out.item() == pytest.approx(_loop_patch_loss(s, q, m, ts), rel=1e-5)
    # the teacher view is the same view: pairing view 0's student with view 1's teacher differs
    if v == 2:
        assert ibot_patch_loss(s, q.flip(0), m, ts).item() != pytest.approx(out.item(), rel=1e-3)


def test_patch_loss_closed_forms() -> None:
    q = torch.softmax(torch.randn(2, 3, 4, 6), dim=-1)
    m = torch.zeros(2, 3, 4, dtype=torch.bool)
    m[:, :, 1] = True  # every image has one masked patch
    uniform = ibot_patch_loss(torch.zeros(2, 3, 4, 6), q, m)
    assert uniform.item() == pytest.approx(math.log(6), rel=1e-6)  # H(q, uniform) = log K
    assert ibot_patch_loss(torch.randn(2, 3, 4, 6), q, torch.zeros_like(m)).item() == 0.0


def test_patch_loss_sees_only_masked_patches() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 3, 5, 4, generator=g, requires_grad=True)
    q = torch.softmax(torch.randn(2, 3, 5, 4, generator=g), dim=-1)
    m = torch.rand(2, 3, 5, generator=g) < 0.5
    m[:, :, 0] = True
    loss = ibot_patch_loss(s, q, m)
    loss.backward()
    assert s.grad is not None
    assert torch.all(s.grad[~m] == 0) and torch.any(s.grad[m] != 0)
    other = s.detach().clone()
    other[~m] = torch.randn(int((~m).sum()), 4) * 10  # unmasked student outputs
    q_other = q.clone()
    q_other[~m] = torch.softmax(torch.randn(int((~m).sum()), 4), dim=-1)  # and teacher targets
    assert ibot_patch_loss(other, q_other, m).item() == pytest.approx(loss.item(), rel=1e-6)
    moved = s.detach().clone()
    moved[m] += 1.0 + torch.randn(int(m.sum()), 4)
    assert ibot_patch_loss(moved, q, m).item() != pytest.approx(loss.item(), rel=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_only_loss_and_head_equal_the_full_ones(seed: int) -> None:
    """The student head on masked patches only (the speed-up): same loss, same gradients."""
    from selfsup.nn.heads import IBOTHead

    g = torch.Generator().manual_seed(seed)
    v, b, n, d = 2, 3, 5, 8
    head = IBOTHead(d, 12, shared=False, patch_out_dim=10, hidden_dim=16, bottleneck_dim=6)
    tokens = torch.randn(v * b, 1 + n, d, generator=g, requires_grad=True)
    m = torch.rand(v, b, n, generator=g) < 0.4
    m[0, 0] = False  # an image without masked patches
    q = torch.softmax(torch.randn(v, b, n, 10, generator=g), dim=-1)
    cls_full, patch_full = head.forward_tokens(tokens)
    full = ibot_patch_loss(patch_full.view(v, b, n, -1), q, m, 0.1) + cls_full.sum()
    (g_full,) = torch.autograd.grad(full, tokens)
    cls_m, patch_m = head.forward_tokens(tokens, patch_mask=m.flatten(0, 1))
    torch.testing.assert_close(cls_m, cls_full)
    torch.testing.assert_close(patch_m, patch_full[m.flatten(0, 1)])
    part = ibot_patch_loss_masked(patch_m, q, m, 0.1) + cls_m.sum()
    (g_part,) = torch.autograd.grad(part, tokens)
    torch.testing.assert_close(part, full)
    torch.testing.assert_close(g_part, g_full)
    with pytest.raises(DataError, match="masks.sum"):
        ibot_patch_loss_masked(patch_m[1:], q, m)


def test_patch_loss_rejects_bad_input() -> None:
    q = torch.softmax(torch.randn(2, 3, 4, 6), dim=-1)
    with pytest.raises(DataError, match="ibot_patch_loss"):
        ibot_patch_loss(torch.randn(2, 3, 4, 6), q, torch.ones(2, 3, 5, dtype=torch.bool))
    with pytest.raises(ConfigError, match="temperature"):
        ibot_patch_loss(torch.randn(2, 3, 4, 6), q, torch.ones(2, 3, 4, dtype=torch.bool), 0.0)


# ------------------------------------------------------------------ the method


def test_step_matches_a_by_hand_reference() -> None:
    m = _ibot(lambda1=0.7, lambda2=1.3).train()
    with torch.no_grad():  # centers away from 0, so a missing or swapped center shows
        m.center.value.normal_()
        m.patch_center.value.normal_()
    b, views = 3, _views(3, 1)
    ms = _masks(m, b, 4)
    ms["mask_0"][0] = True  # some patches masked in each crop whatever the ratio draws
    ms["mask_1"][1, :5] = True
    out = m.training_step(Batch(views=views, index=torch.arange(b), masks=ms))
    tau, tau_p = m.teacher_temps_at(0)
    with torch.no_grad():
        s_cls, s_patch, q_cls, q_patch = [], [], [], []
        for i in range(2):
            tok = m.backbone.forward_tokens(views[i], mask=ms[f"mask_{i}"],
                                            mask_token=m.mask_token)
            c, p = m.head.forward_tokens(tok)
            s_cls.append(c)
            s_patch.append(p)
            t_c, t_p = m.teacher_head.module.forward_tokens(
                m.teacher_backbone.module.forward_tokens(views[i]))  # unmasked
            q_cls.append(torch.softmax((t_c - m.center.value) / tau, dim=-1))
            q_patch.append(torch.softmax((t_p - m.patch_center.value) / tau_p, dim=-1))
        for v in views[2:]:
            s_cls.append(m.head(m.backbone.forward_tokens(v)[:, 0]))
        mask = torch.stack([ms["mask_0"], ms["mask_1"]])
        cls_ref = _loop_cls_loss(s_cls, q_cls, 0.1)
        patch_ref = _loop_patch_loss(torch.stack(s_patch), torch.stack(q_patch), mask, 0.1)
    assert float(out.logs["cls"]) == pytest.approx(cls_ref, rel=1e-4)
    assert float(out.logs["patch"]) == pytest.approx(patch_ref, rel=1e-4)
    assert out.loss.item() == pytest.approx(0.7 * cls_ref + 1.3 * patch_ref, rel=1e-4)


def test_student_is_masked_the_teacher_is_not() -> None:
    m = _ibot().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [0, 5, 6]] = True
    y = x.clone()
    y[:, :, 0:4, 0:4] = 9.0  # the pixels of patch 0, which is masked
    student = m.backbone.forward_tokens(x, mask=mask, mask_token=m.mask_token)
    torch.testing.assert_close(
        m.backbone.forward_tokens(y, mask=mask, mask_token=m.mask_token), student)
    teacher = m.teacher_backbone.module.forward_tokens
    assert not torch.allclose(teacher(y), teacher(x))


def test_teacher_has_no_gradient_moves_after_the_step_and_both_centers_update() -> None:
    m = _ibot(center_momentum=0.8, center_momentum_patch=0.6).train()
    b, views = 4, _views(4, 2)
    ms = _masks(m, b, 5)
    ms["mask_0"][:, 3] = True
    with torch.no_grad():
        x = torch.cat(views[:2])
        t_c, t_p = m.teacher_head.module.forward_tokens(
            m.teacher_backbone.module.forward_tokens(x))
    out = m.training_step(Batch(views=views, index=torch.arange(b), masks=ms))
    out.loss.backward()
    assert all(p.grad is None for p in m.teacher_backbone.parameters())
    assert all(p.grad is None for p in m.teacher_head.parameters())
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0
    before = [p.detach().clone() for p in m.teacher_backbone.parameters()]
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.1)  # a stand-in optimiser step
    m.on_step_end(0, 10)
    after = list(m.teacher_backbone.parameters())
    moved = [not torch.equal(a, p) for a, p in zip(before, after)]
    assert all(moved)
    lam = 0.996  # cosine momentum at step 0
    torch.testing.assert_close(after[0], lam * before[0] + (1 - lam) * m.backbone.cls_token)
    # eq. 4 from c = 0: (1 - m) x the mean over both global crops, per image patch-mean for c'
    torch.testing.assert_close(m.center.value, 0.2 * t_c.mean(0, keepdim=True))
    torch.testing.assert_close(m.patch_center.value, 0.4 * t_p.mean(1).mean(0, keepdim=True))
    assert int(m.steps_done) == 1


def test_masks_ratio_per_crop_half_unmasked_and_blocks() -> None:
    m = _ibot(size=32)  # an 8 x 8 grid
    ms = _masks(m, 400, 0)
    assert set(ms) == {"mask_0", "mask_1"}
    counts = torch.stack([ms["mask_0"], ms["mask_1"]]).sum(-1)  # [2, 400]
    empty = (counts == 0).float().mean()
    assert 0.42 < float(empty) < 0.58  # ratio 0 with probability 0.5
    full = counts[counts > 0].float()
    assert int(full.max()) <= 32 and int(full.min()) >= 1  # r in [0.1, 0.5] of 64 patches
    assert 12 < float(full.mean()) < 22  # mean r 0.3 (blocks can fall a little short)
    assert not torch.equal(ms["mask_0"], ms["mask_1"])  # drawn per crop
    fixed = _masks(_ibot(size=32, pred_ratio=[0.3], pred_ratio_var=[0.0]), 50, 1)["mask_0"]
    assert int(fixed.sum(-1).max()) <= 19 and int(fixed.sum(-1).min()) > 0
    # blocks: a masked patch usually has a masked 4-neighbour (uniform masks at 0.3 much less)
    grid = fixed.view(50, 8, 8)
    nb = torch.zeros_like(grid)
    nb[:, 1:] |= grid[:, :-1]
    nb[:, :-1] |= grid[:, 1:]
    nb[:, :, 1:] |= grid[:, :, :-1]
    nb[:, :, :-1] |= grid[:, :, 1:]
    assert float((nb & grid).sum() / grid.sum()) > 0.9
    rand = _masks(_ibot(size=32, pred_ratio=[0.3], pred_ratio_var=[0.0], pred_shape="rand"),
                  50, 1)["mask_0"]
    assert torch.all(rand.sum(-1) == 19)  # int(0.3 * 64), as ImageFolderMask's "rand"


def test_no_masks_before_pred_start_epoch_and_patch_temperature_waits() -> None:
    m = _ibot(pred_start_epoch=2, warmup_teacher_temp_epochs=1)
    m.on_train_start(10, 100)
    assert not any(v.any() for v in _masks(m, 20, 0).values())
    assert m.teacher_temps_at(0) == (0.04, 0.04)
    assert m.teacher_temps_at(10) == pytest.approx((0.07, 0.04))  # patch warm-up from step 20
    assert m.teacher_temps_at(25) == pytest.approx((0.07, 0.055))
    assert m.teacher_temps_at(30) == pytest.approx((0.07, 0.07))
    m.steps_done.fill_(20)
    assert any(v.any() for v in _masks(m, 20, 0).values())


@pytest.mark.parametrize("shared", [True, False])
def test_heads_shared_or_separate_and_last_layers_frozen(shared: bool) -> None:
    m = _ibot(shared_head=shared).train()
    m.on_train_start(2, 10)  # frozen during steps 0 and 1
    k_patch = 24 if shared else 20
    assert (m.head.patch_layer is None) == shared
    assert m.patch_center.value.shape == (1, k_patch)
    b, views = 2, _views(2, 3, local=0)
    ms = {"mask_0": torch.ones(b, 16, dtype=torch.bool), "mask_1": torch.ones(b, 16,
                                                                              dtype=torch.bool)}
    tok = m.teacher_backbone.module.forward_tokens(views[0])
    c, p = m.teacher_head.module.forward_tokens(tok)
    assert c.shape == (b, 24) and p.shape == (b, 16, k_patch)
    out = m.training_step(Batch(views=views, index=torch.arange(b), masks=ms))
    out.loss.backward()
    m.before_optimizer_step(1)
    frozen = [p for layer in m.head.last_layers() for p in layer.parameters()]
    assert len(m.head.last_layers()) == (1 if shared else 2)
    assert all(p.grad is None for p in frozen)
    assert m.head.mlp[0].weight.grad is not None
    m.zero_grad()
    m.steps_done.fill_(2)  # the first step after the frozen epoch
    out = m.training_step(Batch(views=views, index=torch.arange(b), masks=ms))
    out.loss.backward()
    m.before_optimizer_step(2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in frozen
               if p.requires_grad)


def test_bad_config_and_inputs() -> None:
    for kw in ({"pred_ratio": [0.2], "pred_ratio_var": [0.3]},
               {"pred_ratio": [0.0, 0.3], "pred_ratio_var": [0.0, 0.1, 0.2]},
               {"pred_shape": "grid"}, {"teacher_patch_temp": 0.0}, {"lambda2": -1.0}):
        with pytest.raises(ConfigError, match="method_args"):
            _ibot(**kw)
    cnn = create_backbone("small_cnn", in_chans=3, width=4)
    with pytest.raises(ConfigError, match="ViT"):
        build_method("ibot", cnn, **SMALL)
    m = _ibot()
    views = _views(2, 0)
    with pytest.raises(DataError, match="mask"):
        m.training_step(Batch(views=views, index=torch.arange(2),
                              masks={"mask_0": torch.zeros(2, 9, dtype=torch.bool),
                                     "mask_1": torch.zeros(2, 9, dtype=torch.bool)}))
    with pytest.raises(DataError, match="views"):
        m.training_step(Batch(views=views[:1], index=torch.arange(2)))
    with pytest.raises(DataError, match="16"):
        m.training_step(Batch(views=[views[2], *views], index=torch.arange(2)))

