"""PixPro's parts against loop references and closed forms: crop-box geometry (flips included),
the positive-pair mask of eq. 1, the pixel propagation module (eqs. 3-4), the consistency loss
(eq. 5), per-pixel heads = the paper's 1x1-conv heads, and the method's momentum encoder."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import ViewConfig
from selfsup.data.augment import Augment, resized_crop
from selfsup.losses.dense import (
    bin_diagonal,
    pixel_centers,
    pixel_consistency_loss,
    pixel_distance,
    pixpro_loss,
    positive_pairs,
)
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.heads import mlp
from selfsup.nn.ppm import PixelPropagation, per_pixel, propagate, propagation_weights
from selfsup.types import Batch, ConfigError, DataError

BOXES_A = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.7, 0.6], [0.3, 0.9, 0.8, 0.1]])
BOXES_B = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.0, 0.5, 0.8, 1.0], [0.2, 0.0, 1.0, 0.7]])


# ------------------------------------------------------------------------- geometry, eq. 1


def _loop_distance(ba: torch.Tensor, bb: torch.Tensor, sa: tuple[int, int], sb: tuple[int, int]
                   ) -> torch.Tensor:
    """Sec. 3.1's normalised distances pixel pair by pixel pair, in float64, written from the
    definitions (flips: x0 > x1)."""
    out = torch.zeros(ba.shape[0], sa[0] * sa[1], sb[0] * sb[1], dtype=torch.float64)
    for n in range(ba.shape[0]):
        def centre(box: list[float], h: int, w: int, r: int, c: int) -> tuple[float, float]:
            y0, x0, y1, x1 = box
            return y0 + (r + 0.5) * (y1 - y0) / h, x0 + (c + 0.5) * (x1 - x0) / w

        def diag(box: list[float], h: int, w: int) -> float:
            return math.hypot((box[2] - box[0]) / h, (box[3] - box[1]) / w)

        a, b = ba[n].tolist(), bb[n].tolist()
        scale = max(diag(a, *sa), diag(b, *sb))
        for i in range(sa[0] * sa[1]):
            for j in range(sb[0] * sb[1]):
                ya, xa = centre(a, *sa, i // sa[1], i % sa[1])
                yb, xb = centre(b, *sb, j // sb[1], j % sb[1])
                out[n, i, j] = math.hypot(ya - yb, xa - xb) / scale
    return out


@pytest.mark.parametrize("sa, sb", [((4, 4), (4, 4)), ((3, 5), (2, 2)), ((7, 7), (7, 7))])
@pytest.mark.parametrize("t", [0.7, 1.5, 3.0])
def test_positive_pairs_match_loop(sa: tuple[int, int], sb: tuple[int, int], t: float) -> None:
    d = _loop_distance(BOXES_A, BOXES_B, sa, sb)
    torch.testing.assert_close(pixel_distance(BOXES_A, BOXES_B, sa, sb), d.float())
    expected = d < t  # eq. 1
    clear = (d - t).abs() > 1e-4  # pairs exactly at the threshold may round either way
    got = positive_pairs(BOXES_A, BOXES_B, sa, sb, t)
    assert got.dtype == torch.bool and torch.equal(got[clear], expected[clear])
    assert expected.any() and clear.float().mean() > 0.9
    back = positive_pairs(BOXES_B, BOXES_A, sb, sa, t).transpose(1, 2)
    assert torch.equal(back[clear], expected[clear])


def test_identical_crops_pair_each_pixel_with_itself_and_flip_mirrors() -> None:
    box = torch.tensor([[0.1, 0.2, 0.6, 0.7]])  # square crop: neighbours are 1 / sqrt(2) > 0.7
    mask = positive_pairs(box, box, (4, 4), (4, 4))
    assert torch.equal(mask[0], torch.eye(16, dtype=torch.bool))
    d = pixel_distance(box, box, (4, 4), (4, 4))[0]
    assert d[0, 1].item() == pytest.approx(1 / math.sqrt(2))  # one bin apart, diag = sqrt(2) bins
    flipped = box[:, [0, 3, 2, 1]]  # the same crop, mirrored: x0 > x1
    mask = positive_pairs(box, flipped, (4, 4), (4, 4))[0]
    mirror = torch.arange(16).view(4, 4).flip(1).flatten()  # (r, c) <-> (r, 3 - c)
    assert torch.equal(mask, torch.eye(16, dtype=torch.bool)[mirror])
    assert torch.equal(bin_diagonal(flipped, 4, 4), bin_diagonal(box, 4, 4))
    # disjoint crops have no positive pair
    left, right = torch.tensor([[0.0, 0.0, 1.0, 0.4]]), torch.tensor([[0.0, 0.6, 1.0, 1.0]])
    assert not positive_pairs(left, right, (4, 4), (4, 4)).any()


def test_pixel_centers_row_major() -> None:
    c = pixel_centers(torch.tensor([[0.0, 0.0, 1.0, 0.5]]), 2, 4)
    assert c.shape == (1, 8, 2)
    torch.testing.assert_close(c[0, 5], torch.tensor([0.75, 0.1875]))  # row 1, column 1


def test_geometry_errors() -> None:
    with pytest.raises(DataError, match="boxes"):
        positive_pairs(torch.zeros(2, 3), torch.zeros(2, 3), (2, 2), (2, 2))
    with pytest.raises(DataError, match="differ"):
        pixel_distance(BOXES_A, BOXES_B[:2], (2, 2), (2, 2))
    with pytest.raises(ConfigError, match="threshold"):
        positive_pairs(BOXES_A, BOXES_B, (2, 2), (2, 2), threshold=0.0)


def test_augment_records_flips_as_mirrored_boxes() -> None:
    """The boxes the augmentation hands to methods reproduce each view, flip included."""
    torch.manual_seed(0)
    x = torch.rand(6, 3, 20, 20)
    off = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
    views, boxes = Augment(ViewConfig(size=12, hflip_p=1.0, **off), 3)(x)
    assert (boxes[:, 1] > boxes[:, 3]).all()  # every view flipped: x0 > x1
    torch.testing.assert_close(resized_crop(x, boxes, 12), views, atol=1e-5, rtol=0)
    plain = resized_crop(x, boxes[:, [0, 3, 2, 1]], 12)  # the unflipped crop
    torch.testing.assert_close(plain.flip(-1), views, atol=1e-5, rtol=0)
    _, boxes = Augment(ViewConfig(size=12, hflip_p=0.0, **off), 3)(x)
    assert (boxes[:, 1] < boxes[:, 3]).all()


# ------------------------------------------------------------------------- PPM, eqs. 3-4


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5])
def test_propagation_matches_loop(gamma: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 2)
    v = torch.randn(2, 4, 3, 2)
    got = propagate(x, v, gamma)
    xs, vs = x.flatten(2), v.flatten(2)  # [B, C, N]
    for b in range(2):
        for i in range(6):
            acc = torch.zeros(4)
            for j in range(6):
                cos = F.cosine_similarity(xs[b, :, i], xs[b, :, j], dim=0)
                s = max(cos.item(), 0.0) + (1e-6 if gamma < 1 else 0.0)
                acc += s ** gamma * vs[b, :, j]
            torch.testing.assert_close(got[b, :, i // 2, i % 2], acc, atol=1e-5, rtol=1e-5)
    w = propagation_weights(x, gamma)
    assert w.shape == (2, 6, 6) and (w >= 0).all()
    torch.testing.assert_close(torch.diagonal(w, dim1=1, dim2=2),
                               torch.full((2, 6), (1 + (1e-6 if gamma < 1 else 0)) ** gamma))


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_pixel_propagation_module(layers: int) -> None:
    torch.manual_seed(0)
    ppm = PixelPropagation(8, transform_layers=layers, gamma=2.0).eval()
    x = torch.randn(3, 8, 4, 4)
    linears = [m for m in ppm.transform.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == layers
    with torch.no_grad():
        g = per_pixel(ppm.transform, x)
        expected = propagate(x, F.normalize(g, dim=1), 2.0)
        torch.testing.assert_close(ppm(x), expected)
    if layers == 0:  # identity transform: y_i = sum_j s_ij x_j / |x_j|
        torch.testing.assert_close(ppm(x), propagate(x, F.normalize(x, dim=1), 2.0))
    with pytest.raises(DataError, match="channels"):
        ppm(torch.randn(1, 4, 2, 2))
    with pytest.raises(ConfigError, match="gamma"):
        PixelPropagation(8, gamma=0.0)


def test_per_pixel_mlp_equals_conv1x1_head() -> None:
    """``per_pixel(mlp)`` is the paper's MLP2d: conv1x1 - BatchNorm2d - ReLU - conv1x1."""
    torch.manual_seed(0)
    head = mlp([6, 16, 5])
    lin1, bn, lin2 = head[0], head[1], head[3]
    conv = nn.Sequential(nn.Conv2d(6, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 5, 1))
    conv[0].weight.data.copy_(lin1.weight.data.view(16, 6, 1, 1))
    conv[3].weight.data.copy_(lin2.weight.data.view(5, 16, 1, 1))
    conv[3].bias.data.copy_(lin2.bias.data)
    x = torch.randn(4, 6, 3, 5)
    torch.testing.assert_close(per_pixel(head, x), conv(x), atol=1e-5, rtol=1e-5)  # train mode
    torch.testing.assert_close(bn.running_var, conv[1].running_var)
    head.eval()
    conv.eval()
    torch.testing.assert_close(per_pixel(head, x), conv(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- loss, eq. 5


def test_consistency_loss_matches_loop() -> None:
    torch.manual_seed(0)
    y, x = torch.randn(3, 4, 2, 3), torch.randn(3, 4, 3, 2)
    mask = torch.rand(3, 6, 6) < 0.3
    mask[2] = False  # an image without positive pairs contributes 0
    per_image = []
    for b in range(3):
        total, count = 0.0, 0
        for i in range(6):
            for j in range(6):
                if mask[b, i, j]:
                    yi, xj = y[b].flatten(1)[:, i], x[b].flatten(1)[:, j]
                    total += F.cosine_similarity(yi, xj, dim=0).item()
                    count += 1
        per_image.append(total / (count + 1e-6))
    expected = -2 * sum(per_image) / 3
    assert pixel_consistency_loss(y, x, mask).item() == pytest.approx(expected, rel=1e-5)


def test_pixpro_loss_closed_forms_and_symmetry() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 8, 4, 4)
    box = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.2, 0.3, 0.9, 1.0]])
    # identical crops, online = momentum features: every positive pair has cos 1 -> -2 - 2
    assert pixpro_loss(z, z, z, z, box, box).item() == pytest.approx(-4.0, abs=1e-5)
    # disjoint crops: no positive pairs -> 0
    far = torch.tensor([[0.6, 0.6, 1.0, 1.0], [0.0, 0.0, 0.1, 0.1]])
    assert pixpro_loss(z, z, z, z, box, far).item() == pytest.approx(0.0, abs=1e-6)
    y1, y2, x1, x2 = (torch.randn(2, 8, 4, 4) for _ in range(4))
    a = pixpro_loss(y1, y2, x1, x2, BOXES_A[:2], BOXES_B[:2], 1.5)
    b = pixpro_loss(y2, y1, x2, x1, BOXES_B[:2], BOXES_A[:2], 1.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    m = positive_pairs(BOXES_A[:2], BOXES_B[:2], (4, 4), (4, 4), 1.5)
    split = pixel_consistency_loss(y1, x2, m) + pixel_consistency_loss(y2, x1, m.transpose(1, 2))
    assert a.item() == pytest.approx(split.item(), rel=1e-6)
    with pytest.raises(DataError, match="mask"):
        pixel_consistency_loss(y1, x2, m[:, :3])


# ------------------------------------------------------------------------- the method


def _pixpro(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = create_backbone("small_cnn", in_chans=1, image_size=32, width=8)
    return build_method("pixpro", backbone, proj_hidden_dim=32, proj_out_dim=16,
                        pred_hidden_dim=16, **kw)


def _batch(flip: bool = False) -> Batch:
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 1, 32, 32, generator=g) for _ in range(2)]
    b1 = torch.tensor([[0.0, 0.0, 0.8, 0.8]]).repeat(4, 1)
    b2 = torch.tensor([[0.2, 0.2, 1.0, 1.0]]).repeat(4, 1)
    if flip:
        b2 = b2[:, [0, 3, 2, 1]]
    return Batch(views=views, index=torch.arange(4), boxes=[b1, b2])


def test_pixpro_defaults_and_momentum_schedule() -> None:
    from selfsup.methods.pixpro import Config, PixPro

    cfg = Config()
    assert (cfg.proj_hidden_dim, cfg.proj_out_dim, cfg.gamma, cfg.transform_layers) == (
        4096, 256, 2.0, 1)
    assert (cfg.pos_threshold, cfg.momentum_base, cfg.instance_weight) == (0.7, 0.99, 0.0)
    assert PixPro.default_optim["name"] == "lars" and PixPro.default_optim["lr"] == 1.0
    m = _pixpro()
    assert m.momentum_at(0, 100) == pytest.approx(0.99)
    assert m.momentum_at(50, 100) == pytest.approx(0.995)
    assert m.momentum_at(100, 100) == pytest.approx(1.0)
    assert m.instance_projector is None and m.target_instance_projector is None


@pytest.mark.parametrize("instance_weight", [0.0, 1.0])
def test_pixpro_step_target_frozen_then_updated(instance_weight: float) -> None:
    m = _pixpro(instance_weight=instance_weight).train()
    out = m.training_step(_batch(flip=True))
    assert out.embeddings is not None and out.embeddings.shape == (4, 16)
    assert out.logs["pos_pairs"] > 0 and ("loss_ins" in out.logs) == (instance_weight > 0)
    out.loss.backward()
    targets = [n for n, _ in m.named_parameters() if n.startswith("target_")]
    assert targets and all(not p.requires_grad for n, p in m.named_parameters() if n in targets)
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    before = [p.clone() for p in m.target_backbone.parameters()]
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.1)
    m.on_step_end(0, 10)
    after = list(m.target_backbone.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(after, before))
    torch.testing.assert_close(after[0], 0.99 * before[0] + 0.01 * next(m.backbone.parameters()))


def test_pixpro_momentum_bn_keeps_the_statistics_of_its_own_forward_passes() -> None:
    """zdaxie/PixPro contrast/models/PixPro.py `_momentum_update_key_encoder` averages
    `.parameters()` only: after training_step + on_step_end every momentum BN holds the running
    statistics of its own passes over the two views (as a copy that ran them), not the online
    network's (the old copy-every-step rule)."""
    m = _pixpro(instance_weight=1.0).train()
    with torch.no_grad():  # an online network that differs from the momentum one
        for name, p in m.named_parameters():
            if not name.startswith("target_"):
                p.add_(0.3 * torch.randn_like(p))
    ref = copy.deepcopy(m)
    batch = _batch()
    m.training_step(batch)
    ref._target(batch.views[0])  # the momentum passes of training_step: view 0, then view 1
    ref._target(batch.views[1])
    m.on_step_end(2, 10)
    teachers = ("target_backbone", "target_projector", "target_instance_projector")
    for name in teachers:
        got = dict(getattr(m, name).named_buffers())
        own = dict(getattr(ref, name).named_buffers())
        online = dict(getattr(m, name.removeprefix("target_")).named_buffers())
        assert got.keys() == own.keys() and any(k.endswith("running_var") for k in got), name
        for key in got:
            torch.testing.assert_close(got[key], own[key], msg=f"{name}.{key}")
        assert any(not torch.allclose(got[k], online[k.removeprefix("module.")])
                   for k in got if "running" in k), name


def test_pixpro_flip_changes_the_pairs_it_uses() -> None:
    m = _pixpro()
    plain, flipped = m.training_step(_batch()), m.training_step(_batch(flip=True))
    assert float(plain.logs["loss_pix"]) != pytest.approx(float(flipped.logs["loss_pix"]), rel=1e-4)


def test_pixpro_on_vit_backbone() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", in_chans=1, image_size=32, patch_size=8)
    m = build_method("pixpro", backbone, proj_hidden_dim=32, proj_out_dim=16)
    out = m.training_step(_batch())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert backbone.patch_embed.proj.weight.grad is not None


def test_pixpro_errors() -> None:
    with pytest.raises(ConfigError, match="forward_features"):
        bare = nn.Linear(3, 3)
        bare.num_features = 3  # type: ignore[assignment]
        build_method("pixpro", bare)
    with pytest.raises(ConfigError, match="pos_threshold"):
        _pixpro(pos_threshold=0.0)
    with pytest.raises(ConfigError, match="momentum_base"):
        _pixpro(momentum_base=1.5)
    m = _pixpro()
    batch = _batch()
    with pytest.raises(DataError, match="boxes"):
        m.training_step(Batch(views=batch.views, index=batch.index))
    with pytest.raises(DataError, match="2 views"):
        m.training_step(Batch(views=batch.views[:1], index=batch.index, boxes=batch.boxes))
