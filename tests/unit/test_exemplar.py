"""Exemplar-CNN beyond the registry contract: the seed-patch location (gradient energy, window
scores and the inverse-CDF draw against loops; fixed per image whatever the step, batch or RNG),
the transformations against closed forms (identity crop, rot90, shifts, colorsys HSV, PCA
contrast), the drawn parameter ranges, the loss against a loop with the image index as class,
the identity view preset, the counter-based keyed draws and the errors."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.config import ViewConfig
from selfsup.data.views import MultiView, get_preset
from selfsup.methods.base import build_method
from selfsup.methods.exemplar import Config, Exemplar
from selfsup.nn import exemplar_patches as xp
from selfsup.nn.backbones import create_backbone
from selfsup.nn.keyed_random import draw_key, keyed_uniform, seed_key
from selfsup.types import Batch, ConfigError, DataError

SIZE = 12


def _method(in_chans: int = 1, **kw: object) -> Exemplar:
    torch.manual_seed(0)
    args: dict[str, object] = {"num_samples": 20, "hidden_dim": 16, **kw}
    m = build_method("exemplar", create_backbone("small_cnn", in_chans, SIZE, width=4), **args)
    assert isinstance(m, Exemplar)
    return m


# ------------------------------------------------------------------ keyed draws


def test_keyed_uniform_is_uniform_deterministic_and_position_free() -> None:
    key = seed_key(3, "cpu")
    u = keyed_uniform(key, torch.arange(100_000))
    assert u.min() >= 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    counts = torch.histc(u, 20, 0, 1)
    assert float(counts.min()) > 4700 and float(counts.max()) < 5300  # 5000 expected per bin
    v = keyed_uniform(key, torch.arange(100_000), 1)  # another slot: uncorrelated
    assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 0.02
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.02
    idx = torch.tensor([7, 3, 11])
    torch.testing.assert_close(keyed_uniform(key, idx), u[idx], rtol=0, atol=0)  # per sample
    assert not torch.equal(keyed_uniform(seed_key(4, "cpu"), idx), u[idx])
    torch.manual_seed(0)
    a = draw_key("cpu")
    torch.manual_seed(0)
    assert torch.equal(draw_key("cpu"), a) and draw_key("cpu") != a


# ------------------------------------------------------------------ seed patch location


def test_gradient_energy_and_window_scores_match_loops() -> None:
    x = torch.rand(2, 3, 6, 7)
    e = xp.gradient_energy(x)
    ref = np.zeros((2, 6, 7))
    for b in range(2):
        for c in range(3):
            gy, gx = np.gradient(x[b, c].double().numpy())
            ref[b] += gx**2 + gy**2
    np.testing.assert_allclose(e.numpy(), ref, rtol=1e-5, atol=1e-6)
    s = xp.patch_scores(e, 3)
    assert s.shape == (2, 4, 5)
    for i in range(4):
        for j in range(5):
            torch.testing.assert_close(s[:, i, j], e[:, i:i + 3, j:j + 3].mean((1, 2)))


def test_sample_corners_is_the_inverse_cdf_of_the_scores() -> None:
    torch.manual_seed(0)
    scores = torch.rand(3, 4, 5) ** 3
    u = torch.rand(3)
    got = xp.sample_corners(scores, u)
    for b in range(3):
        p = scores[b].flatten().double()
        p = p + 1e-6 * p.mean() + 1e-30
        cdf = np.cumsum(p.numpy())
        flat = next(i for i, c in enumerate(cdf) if c > float(u[b]) * cdf[-1])
        assert got[b].tolist() == [flat // 5, flat % 5]
    # frequencies proportional to the scores: n evenly spaced u's fall into each window's share
    n = 20_000
    grid = (torch.arange(n) + 0.5) / n
    one = scores[:1].expand(n, -1, -1)
    c = xp.sample_corners(one, grid)
    counts = torch.bincount(c[:, 0] * 5 + c[:, 1], minlength=20).double()
    share = scores[0].flatten().double() / scores[0].sum()
    assert (counts - n * share).abs().max() <= 2
    # a flat image is sampled uniformly; zero-score windows next to texture are (almost) never
    flat = xp.sample_corners(torch.zeros(n, 2, 2), grid)
    assert torch.bincount(flat[:, 0] * 2 + flat[:, 1]).tolist() == [n // 4] * 4
    peaked = torch.zeros(n, 3, 3)
    peaked[:, 2, 1] = 1.0
    assert (xp.sample_corners(peaked, grid) == torch.tensor([2, 1])).all()


def test_seed_patch_is_fixed_per_image() -> None:
    m = _method()
    torch.manual_seed(0)
    unit = torch.rand(6, 1, SIZE, SIZE)
    unit[:, :, :6, :6] = 0.5  # a flat quarter: high-gradient windows elsewhere
    index = torch.tensor([4, 8, 15, 16, 23, 1])
    side = m.patch_side(unit)
    assert side == 4
    a = m.seed_corners(unit, index, side)
    torch.manual_seed(123)  # another step's global RNG state
    torch.rand(10)
    torch.testing.assert_close(m.seed_corners(unit, index, side), a, rtol=0, atol=0)
    perm = torch.tensor([5, 2, 0, 3, 1, 4])  # another batch composition / rank shard
    torch.testing.assert_close(m.seed_corners(unit[perm], index[perm], side), a[perm])
    torch.testing.assert_close(m.seed_corners(unit[:2], index[:2], side), a[:2])
    other = _method(patch_seed=1).seed_corners(unit, index, side)
    assert not torch.equal(other, a)
    # the location follows the gradients: a window inside the flat quarter is never chosen
    locs = torch.stack([_method(patch_seed=s).seed_corners(unit, index, side) for s in range(30)])
    assert not ((locs[..., 0] <= 2) & (locs[..., 1] <= 2)).any()


def test_exemplar_preset_is_the_identity() -> None:
    (view,) = get_preset("exemplar", SIZE)
    assert view == ViewConfig(n=1, size=SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0,
                              jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    x = torch.rand(5, 3, SIZE, SIZE)
    mv = MultiView([view], 3, [0.2, 0.3, 0.4], [0.5, 0.5, 0.25])
    (v,), _ = mv(x)
    ref = (x - torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.5, 0.25]).view(1, 3, 1, 1)
    torch.testing.assert_close(v, ref, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ transformations


def test_geometric_transformations_closed_forms() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 10, 10)
    corners = torch.tensor([[1, 2], [4, 3]])
    s = 5
    crop = torch.stack([x[b, :, r:r + s, c:c + s] for b, (r, c) in enumerate(corners.tolist())])
    zero, one = torch.zeros(4, 2), torch.ones(4)

    def run(shift: torch.Tensor = zero, scale: torch.Tensor = one, angle: float = 0.0):
        return xp.transform_patches(x, corners, s, shift, scale, torch.full((4,), angle))

    out = run()
    assert out.shape == (4, 3, s, s)
    torch.testing.assert_close(out, torch.cat([crop, crop]), rtol=0, atol=1e-6)  # copy-major
    torch.testing.assert_close(run(angle=math.pi / 2), torch.cat([torch.rot90(crop, 1, (2, 3))] * 2),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(run(angle=math.pi), torch.cat([crop.flip(2, 3)] * 2), atol=1e-5,
                               rtol=0)
    moved = run(shift=torch.tensor([[1.0, -2.0]] * 4))
    torch.testing.assert_close(moved[0], x[0, :, 2:2 + s, 0:s], rtol=0, atol=1e-6)
    # scale 3/5 about the centre of a linear ramp (pixel j holds j): the same ramp around the
    # centre pixel 4 with 3/5 of the slope
    ramp = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 10, 10).contiguous()
    small = xp.transform_patches(ramp, torch.tensor([[2, 2]]), 5, torch.zeros(1, 2),
                                 torch.tensor([0.6]), torch.zeros(1))
    torch.testing.assert_close(small[0, 0, 0], 4 + 0.6 * (torch.arange(5.0) - 2), rtol=0,
                               atol=1e-5)


def test_pixel_pca_and_contrast_closed_forms() -> None:
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.2, 0.0, 0.6]])
    x = torch.einsum("ij,bjhw->bihw", mix, torch.randn(4, 3, 8, 8)) * 0.1 + 0.5
    mean, axes = xp.pixel_principal_axes(x)
    pix = x.permute(1, 0, 2, 3).reshape(3, -1).double().numpy()
    np.testing.assert_allclose(mean.numpy(), pix.mean(1), rtol=1e-5)
    w, v = np.linalg.eigh(np.cov(pix, bias=True))
    np.testing.assert_allclose(np.abs(axes.numpy()), np.abs(v), atol=1e-4)  # up to sign
    f = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.5, 1.5]])
    out = xp.pca_contrast(x[:2], mean, axes, f)
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=1e-5)  # factors 1: identity
    u = axes.double()
    for i, j in [(0, 0), (3, 5), (7, 2)]:  # a per-pixel loop: U diag(f) U^T (p - m) + m
        p = x[1, :, i, j].double() - mean.double()
        ref = u @ torch.diag(f[1].double()) @ u.T @ p + mean.double()
        torch.testing.assert_close(out[1, :, i, j].double(), ref, rtol=1e-5, atol=1e-6)
    # along each principal axis the projection is scaled by exactly that axis's factor
    proj_in = torch.einsum("ck,chw->khw", axes, x[1] - mean.view(3, 1, 1))
    proj_out = torch.einsum("ck,chw->khw", axes, out[1] - mean.view(3, 1, 1))
    torch.testing.assert_close(proj_out, proj_in * f[1].view(3, 1, 1), rtol=1e-4, atol=1e-5)
    # grey: one component, a contrast change about the mean
    g = torch.rand(2, 1, 4, 4)
    gm, ga = xp.pixel_principal_axes(g)
    torch.testing.assert_close(xp.pca_contrast(g, gm, ga, torch.tensor([[2.0], [0.5]])),
                               gm + torch.tensor([2.0, 0.5]).view(2, 1, 1, 1) * (g - gm))


def test_hsv_round_trip_and_transform_against_colorsys() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 4)
    x[0, :, 0, 0] = 0.3  # a grey pixel (no hue)
    hsv = xp.rgb_to_hsv(x)
    for b, i, j in [(0, 0, 0), (0, 1, 2), (1, 3, 3), (1, 0, 1)]:
        ref = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
        torch.testing.assert_close(hsv[b, :, i, j], torch.tensor(ref), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xp.hsv_to_rgb(hsv), x, rtol=0, atol=1e-6)
    ones, zeros = torch.ones(2), torch.zeros(2)
    ident = xp.hsv_transform(x, ones, ones, zeros, ones, ones, zeros, zeros)
    torch.testing.assert_close(ident, x, rtol=0, atol=1e-6)
    sp, sm, sa = torch.tensor([2.0, 0.5]), torch.tensor([1.2, 0.8]), torch.tensor([0.05, -0.1])
    vp, vm, va = torch.tensor([0.3, 3.0]), torch.tensor([0.9, 1.3]), torch.tensor([-0.05, 0.1])
    hue = torch.tensor([0.1, -0.07])
    out = xp.hsv_transform(x, sp, sm, sa, vp, vm, va, hue)
    for b, i, j in [(0, 1, 2), (1, 3, 0)]:
        h, s, v = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
        s = min(max(s ** float(sp[b]) * float(sm[b]) + float(sa[b]), 0.0), 1.0)
        v = min(max(v ** float(vp[b]) * float(vm[b]) + float(va[b]), 0.0), 1.0)
        ref = colorsys.hsv_to_rgb((h + float(hue[b])) % 1.0, s, v)
        torch.testing.assert_close(out[b, :, i, j], torch.tensor(ref), rtol=1e-5, atol=1e-5)
    g = torch.rand(2, 1, 3, 3)  # grey: V only
    torch.testing.assert_close(xp.hsv_transform(g, sp, sm, sa, vp, vm, va, hue),
                               (g ** vp.view(2, 1, 1, 1) * vm.view(2, 1, 1, 1)
                                + va.view(2, 1, 1, 1)).clamp(0, 1))


def test_drawn_parameters_follow_the_paper_ranges() -> None:
    m = _method(3)
    index = torch.arange(400)
    p = m.draw(seed_key(0, "cpu"), index, 5, 3)
    assert p["shift"].shape == (2000, 2) and p["pca"].shape == (2000, 3)
    assert p["shift"].abs().max() <= 1.0 and p["shift"].abs().max() > 0.99  # x translate * side
    assert p["angle"].abs().max() <= math.radians(20) and p["angle"].abs().max() > math.radians(19.8)
    for key, (lo, hi) in [("scale", (0.7, 1.4)), ("pca", (0.5, 2.0)), ("s_pow", (0.25, 4.0)),
                          ("v_pow", (0.25, 4.0)), ("s_mul", (0.7, 1.4)), ("v_mul", (0.7, 1.4))]:
        v = p[key]
        assert lo <= float(v.min()) < lo * 1.01 and hi * 0.99 < float(v.max()) < hi
        assert float(v.log().median()) == pytest.approx(math.log(lo * hi) / 2, abs=0.05)  # log-U
    for key, amp in [("s_add", 0.1), ("v_add", 0.1), ("hue", 0.1)]:
        assert 0.099 < float(p[key].abs().max()) <= amp
    # S and V, and the copies of one image, are drawn independently
    assert abs(float(torch.corrcoef(torch.stack([p["s_pow"], p["v_pow"]]))[0, 1])) < 0.1
    assert not torch.equal(p["scale"][:400], p["scale"][400:800])
    # each (image, copy) draws the same whatever else is in the batch (rows are copy-major)
    half = m.draw(seed_key(0, "cpu"), index[200:], 5, 3)
    torch.testing.assert_close(half["scale"].view(5, 200), p["scale"].view(5, 400)[:, 200:])


def test_loss_is_the_surrogate_class_cross_entropy_over_all_copies() -> None:
    m = _method(3, copies=3).eval()  # dropout off, BN on running stats: rows independent
    x = torch.randn(4, 3, SIZE, SIZE)
    index = torch.tensor([3, 0, 17, 9])
    torch.manual_seed(5)
    out = m.training_step(Batch(views=[x], index=index))
    torch.manual_seed(5)
    patches = m.make_patches(x, index, draw_key("cpu"), 3)
    assert patches.shape == (12, 3, 4, 4)
    losses, correct = [], []
    with torch.no_grad():
        for row in range(12):
            logits = m.head(m.backbone(patches[row:row + 1]))[0]
            cls = int(index[row % 4])  # copy-major rows: image row % B
            losses.append(-F.log_softmax(logits, 0)[cls])
            correct.append(float(logits.argmax() == cls))
    torch.testing.assert_close(out.loss.detach(), torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)
    assert float(out.logs["exemplar_acc"]) == pytest.approx(sum(correct) / 12)
    assert m.head[-1].out_features == 20  # one class per image of the dataset


def test_paper_defaults() -> None:
    cfg = Config()
    assert (cfg.translate, cfg.scale, cfg.rotate) == (0.2, (0.7, 1.4), 20.0)
    assert (cfg.pca_factor, cfg.sv_power, cfg.sv_factor, cfg.sv_shift, cfg.hue_shift) == (
        (0.5, 2.0), (0.25, 4.0), (0.7, 1.4), 0.1, 0.1)
    assert cfg.max_classes == 32000 and cfg.patch_fraction == pytest.approx(32 / 96)
    m = _method()
    kinds = [type(layer).__name__ for layer in m.head]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear"] and m.head[2].p == 0.5
    assert Exemplar.default_optim["momentum"] == 0.9
    assert Exemplar.default_optim["lr"] * 128 / 256 == pytest.approx(0.01)


@pytest.mark.parametrize(("kw", "field"), [
    ({"num_samples": 40000}, "num_samples"), ({"num_samples": 1}, "num_samples"),
    ({"scale": (1.4, 0.7)}, "scale"), ({"sv_power": (0.0, 4.0)}, "sv_power"),
    ({"patch_fraction": 0.0}, "patch_fraction"), ({"rotate": 200.0}, "rotate"),
    ({"hue_shift": 0.7}, "hue_shift"), ({"dropout": 1.0}, "dropout"), ({"copies": 0}, "copies"),
    ({"input_mean": [0.1, 0.2]}, "input_mean"), ({"input_std": [-1.0]}, "input_std"),
])
def test_bad_config_names_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"method_args.{field}"):
        _method(**kw)


def test_dataset_larger_than_the_head_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"max_classes=100.*data\.limit"):
        _method(num_samples=500, max_classes=100)


def test_bad_inputs() -> None:
    m = _method()
    with pytest.raises(DataError, match="patch_fraction"):
        m.training_step(Batch(views=[torch.randn(2, 1, 4, 4)], index=torch.arange(2)))
    with pytest.raises(DataError, match="num_samples"):
        m.training_step(Batch(views=[torch.randn(2, 1, SIZE, SIZE)], index=torch.tensor([0, 20])))
    with pytest.raises(DataError, match="one view"):
        m.training_step(Batch(views=[], index=torch.arange(2)))


def test_picture_rows() -> None:
    m = _method(3).eval()
    rows = m.picture_rows(torch.randn(2, 3, SIZE, SIZE), torch.zeros(1, 3, 1, 1),
                          torch.ones(1, 3, 1, 1), torch.Generator().manual_seed(0))
    assert [n for n, _ in rows][:2] == ["seed patch", "transformed copy 1"] and len(rows) == 4
    assert all(r.shape == (2, 3, SIZE, SIZE) for _, r in rows)
