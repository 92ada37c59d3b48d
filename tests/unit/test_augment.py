"""Batched augmentation ops against torchvision.transforms.v2.functional on real images, plus
per-sample randomness, channel handling and determinism of :class:`Augment`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

from selfsup.config import ViewConfig
from selfsup.data import augment as A
from selfsup.data import color as C
from selfsup.types import ConfigError, DataError

SHARED = Path("/work/shared/data")


@pytest.fixture(scope="module")
def rgb() -> torch.Tensor:
    """24 real CIFAR-10 test images as unit floats [24, 3, 32, 32]."""
    x = np.load(SHARED / "cifar10" / "cifar10.npz")["x_test"][:24]
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).contiguous()


@pytest.fixture(scope="module")
def bands() -> torch.Tensor:
    """8 real 13-band EuroSAT images, per-band min-max scaled to [0, 1]: [8, 13, 64, 64]."""
    x = torch.from_numpy(np.load(SHARED / "eurosat_ms" / "eurosat_ms.npz")["x"][::25].astype("f4"))
    x = x.permute(0, 3, 1, 2)
    lo, hi = x.amin(dim=(0, 2, 3), keepdim=True), x.amax(dim=(0, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo)).contiguous()


def per_sample(fn, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.stack([fn(x[i], float(values[i])) for i in range(x.shape[0])])


def only(**kw: object) -> ViewConfig:
    """A group with every random op off except those given (identity crop on square images)."""
    base = dict(n=1, size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0,
                grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)  # fmt: skip
    return ViewConfig(**{**base, **kw})  # type: ignore[arg-type]


# ------------------------------------------------------------------------- geometry


def test_crop_boxes_respect_scale_ratio_and_pixel_grid() -> None:
    h, w, scale, ratio = 40, 56, (0.2, 0.6), (0.5, 2.0)
    boxes = A.sample_crop_boxes(5000, h, w, scale, ratio, device="cpu")
    assert boxes.shape == (5000, 4) and boxes.dtype == torch.float32
    y0, x0, y1, x1 = (boxes * torch.tensor([h, w, h, w])).double().unbind(1)
    for v in (y0, x0, y1, x1):  # integer pixel boxes, as torchvision's
        assert torch.allclose(v, v.round(), atol=1e-4)
    bh, bw = (y1 - y0).round(), (x1 - x0).round()
    assert bool((y0 >= 0).all() and (x0 >= 0).all() and (y1 <= h).all() and (x1 <= w).all())
    assert bool((bh >= 1).all() and (bw >= 1).all())
    # sides are rounded sqrt(area * ratio): allow half a pixel of rounding on each side
    area_lo = (torch.sqrt(torch.tensor(scale[0] * h * w)) - 1) ** 2 / (h * w)
    frac = bh * bw / (h * w)
    assert frac.min() >= area_lo - 1e-6 and frac.max() <= scale[1] + (bh + bw).max() / (h * w)
    r = bw / bh
    assert r.min() >= ratio[0] * 0.8 and r.max() <= ratio[1] * 1.25
    # offsets cover the whole valid range: boxes touch every border sometimes
    assert bool((y0 == 0).any() and (x1 == w).any())


def test_crop_box_distribution_matches_torchvision() -> None:
    torch.manual_seed(0)
    img = torch.zeros(3, 32, 32)
    ref = [RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(3000)]
    ref_area = torch.tensor([hh * ww / 1024 for _, _, hh, ww in ref])
    boxes = A.sample_crop_boxes(3000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), device="cpu")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs(area.std() - ref_area.std()) < 0.02


def test_crop_boxes_fallback_is_torchvision_central_crop() -> None:
    # no candidate can fit (area > image): every sample gets the central crop with clamped ratio
    boxes = A.sample_crop_boxes(7, 32, 48, (2.0, 3.0), (3 / 4, 4 / 3), device="cpu")
    # torchvision: in_ratio 1.5 > 4/3 -> h = 32, w = round(32 * 4/3) = 43, left = (48-43)//2 = 2
    expected = torch.tensor([0 / 32, 2 / 48, 32 / 32, 45 / 48]).expand(7, 4)
    assert torch.allclose(boxes, expected)


def test_crop_boxes_generator_and_errors() -> None:
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = A.sample_crop_boxes(9, 30, 30, (0.1, 1.0), (0.75, 1.33), device="cpu", generator=g1)
    b = A.sample_crop_boxes(9, 30, 30, (0.1, 1.0), (0.75, 1.33), device="cpu", generator=g2)
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="scale"):
        A.sample_crop_boxes(2, 8, 8, (0.5, 0.1), (1.0, 1.0), device="cpu")
    with pytest.raises(ConfigError, match="ratio"):
        A.sample_crop_boxes(2, 8, 8, (0.5, 1.0), (0.0, 1.0), device="cpu")


def test_resized_crop_matches_torchvision(rgb: torch.Tensor) -> None:
    torch.manual_seed(1)
    n, size = rgb.shape[0], 24
    boxes = A.sample_crop_boxes(n, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), device="cpu")
    flip = torch.rand(n) < 0.5
    out = A.resized_crop(rgb, boxes, size, flip)
    assert out.shape == (n, 3, size, size)
    for i in range(n):
        top, left, bottom, right = (boxes[i] * 32).round().long().tolist()
        ref = TF.resized_crop(rgb[i], top, left, bottom - top, right - left, [size, size],
                              antialias=False)  # fmt: skip
        if flip[i]:
            ref = TF.horizontal_flip(ref)
        # torchvision clamps at the crop's edge, we read the neighbouring pixel: compare the
        # pixels whose sampling point lies inside the crop (all of them when downscaling).
        my = math.ceil(0.5 * size / (bottom - top) - 0.5) if bottom - top < size else 0
        mx = math.ceil(0.5 * size / (right - left) - 0.5) if right - left < size else 0
        inner = (slice(None), slice(my, size - my), slice(mx, size - mx))
        torch.testing.assert_close(out[i][inner], ref[inner], atol=2e-5, rtol=0)
        assert (out[i] - ref).abs().mean() < 0.02


@pytest.mark.parametrize("size", [16, 32, 57])
def test_full_box_resize_equals_torchvision_resize(rgb: torch.Tensor, size: int) -> None:
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(rgb.shape[0], 1)
    ref = TF.resize(rgb, [size, size], antialias=False)
    torch.testing.assert_close(A.resized_crop(rgb, full, size), ref, atol=1e-5, rtol=0)
    flipped = A.resized_crop(rgb, full, size, torch.ones(rgb.shape[0], dtype=torch.bool))
    torch.testing.assert_close(flipped, TF.horizontal_flip(ref), atol=1e-5, rtol=0)


def test_resized_crop_non_square_source(rgb: torch.Tensor) -> None:
    wide = torch.cat([rgb, rgb.flip(-1)], dim=-1)  # [B, 3, 32, 64]
    box = torch.tensor([[0.25, 0.5, 0.75, 1.0]]).repeat(rgb.shape[0], 1)  # rows 8:24, cols 32:64
    ref = TF.resized_crop(wide, 8, 32, 16, 32, [16, 16], antialias=False)
    torch.testing.assert_close(A.resized_crop(wide, box, 16), ref, atol=1e-5, rtol=0)


def test_resized_crop_several_views_per_image(rgb: torch.Tensor) -> None:
    n = rgb.shape[0]
    boxes = A.sample_crop_boxes(3 * n, 32, 32, (0.08, 1.0), (0.75, 1.33), device="cpu")
    flip = torch.rand(3 * n) < 0.5
    together = A.resized_crop(rgb, boxes, 20, flip)
    apart = [A.resized_crop(rgb, boxes[v * n : (v + 1) * n], 20, flip[v * n : (v + 1) * n])
             for v in range(3)]  # fmt: skip
    assert torch.equal(together, torch.cat(apart))
    with pytest.raises(DataError, match="boxes"):
        A.resized_crop(rgb, boxes[:5], 20)


# ------------------------------------------------------------------------- colour


def test_brightness_contrast_saturation_match_torchvision(rgb: torch.Tensor) -> None:
    f = torch.linspace(0.0, 2.0, rgb.shape[0])
    torch.testing.assert_close(A.adjust_brightness(rgb, f),
                               per_sample(TF.adjust_brightness, rgb, f), atol=1e-6, rtol=0)  # fmt: skip
    # luma weights 0.299 (ITU-R 601) vs torchvision's 0.2989 differ by <= 1e-4 * red
    torch.testing.assert_close(A.adjust_contrast(rgb, f),
                               per_sample(TF.adjust_contrast, rgb, f), atol=2e-4, rtol=0)  # fmt: skip
    torch.testing.assert_close(A.adjust_saturation(rgb, f),
                               per_sample(TF.adjust_saturation, rgb, f), atol=2e-4, rtol=0)  # fmt: skip
    one = torch.ones(rgb.shape[0])
    for op in (A.adjust_brightness, A.adjust_contrast, A.adjust_saturation):
        assert torch.equal(op(rgb, one), rgb)


def test_hue_matches_torchvision_including_grey_and_ties(rgb: torch.Tensor) -> None:
    x = rgb.clone()
    x[0] = x[0, :1]  # grey image
    x[1, 1] = x[1, 0]  # red == green everywhere
    x[2, :, :8] = 0.0  # black block
    x[3, 2] = x[3, 1]  # green == blue
    shift = torch.linspace(-0.5, 0.5, x.shape[0])
    out = A.adjust_hue(x, shift)
    torch.testing.assert_close(out, per_sample(TF.adjust_hue, x, shift), atol=1e-5, rtol=0)
    torch.testing.assert_close(A.adjust_hue(x, torch.zeros(x.shape[0])), x, atol=1e-6, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_grayscale_and_solarize_match_torchvision(rgb: torch.Tensor) -> None:
    gray = A.rgb_to_grayscale(rgb)
    assert gray.shape == (rgb.shape[0], 1, 32, 32)
    torch.testing.assert_close(gray, TF.rgb_to_grayscale(rgb), atol=1.1e-4, rtol=0)
    r, g, b = rgb.unbind(1)
    torch.testing.assert_close(gray[:, 0], 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-6, rtol=0)
    mask = torch.arange(rgb.shape[0]) % 2 == 0
    out = A.solarize(rgb, mask, 0.6)
    assert torch.equal(out[mask], TF.solarize(rgb[mask], 0.6))
    assert torch.equal(out[~mask], rgb[~mask])


@pytest.mark.parametrize("kernel", [3, 5, 9])
def test_gaussian_blur_matches_torchvision(rgb: torch.Tensor, kernel: int) -> None:
    sigma = torch.linspace(0.1, 3.0, rgb.shape[0])
    ref = torch.stack([TF.gaussian_blur(rgb[i], [kernel, kernel], [float(s), float(s)])
                       for i, s in enumerate(sigma)])  # fmt: skip
    torch.testing.assert_close(A.gaussian_blur(rgb, sigma, kernel), ref, atol=1e-5, rtol=0)
    mask = torch.arange(rgb.shape[0]) % 3 == 0
    part = A.gaussian_blur(rgb, sigma, kernel, mask=mask)
    assert torch.equal(part[~mask], rgb[~mask])
    torch.testing.assert_close(part[mask], ref[mask], atol=1e-5, rtol=0)
    assert torch.equal(A.gaussian_blur(rgb, sigma, kernel, mask=torch.zeros_like(mask)), rgb)
    delta = A._blur(rgb, sigma, kernel, mask)  # the accelerator path: delta kernels, no sync
    assert torch.equal(delta[~mask], rgb[~mask])
    torch.testing.assert_close(delta[mask], ref[mask], atol=1e-5, rtol=0)


def test_blur_kernel_size_rule_and_errors(rgb: torch.Tensor) -> None:
    assert [A.blur_kernel_size(s) for s in (8, 32, 64, 96, 224)] == [3, 3, 7, 9, 23]
    with pytest.raises(ConfigError, match="odd"):
        A.gaussian_blur(rgb, torch.ones(rgb.shape[0]), 4)
    with pytest.raises(DataError, match="too small"):
        A.gaussian_blur(rgb[:, :, :2, :2], torch.ones(rgb.shape[0]), 5)


def test_color_jitter_per_sample_factors(rgb: torch.Tensor) -> None:
    torch.manual_seed(0)
    x = rgb * 0.5  # no clipping for factors <= 2
    out = A.color_jitter(x, 0.8, 0.0, 0.0, 0.0, p=1.0)
    f = (out.flatten(1).sum(1) / x.flatten(1).sum(1))
    torch.testing.assert_close(out, x * f.view(-1, 1, 1, 1), atol=1e-5, rtol=0)
    assert f.min() >= 0.2 - 1e-4 and f.max() <= 1.8 + 1e-4
    assert len(set(f.round(decimals=4).tolist())) == x.shape[0]  # every sample its own factor
    assert torch.equal(A.color_jitter(x, 0.8, 0.8, 0.8, 0.2, p=0.0), x)
    full = A.color_jitter(x, 0.8, 0.8, 0.8, 0.2, p=1.0)
    assert bool(((full - x).flatten(1).abs().amax(1) > 1e-3).all())
    changed = [A.color_jitter(x, 0.8, 0.8, 0.8, 0.2, p=0.5).ne(x).flatten(1).any(1)
               for _ in range(20)]  # fmt: skip
    assert 0.35 < torch.stack(changed).float().mean() < 0.65


def test_color_jitter_generator_and_errors(rgb: torch.Tensor) -> None:
    a = A.color_jitter(rgb, 0.4, 0.4, 0.2, 0.1, 0.8, generator=torch.Generator().manual_seed(5))
    b = A.color_jitter(rgb, 0.4, 0.4, 0.2, 0.1, 0.8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="hue"):
        A.color_jitter(rgb, 0.4, 0.4, 0.2, 0.6, 0.8)
    with pytest.raises(ConfigError, match="brightness"):
        A.color_jitter(rgb, -0.1, 0.4, 0.2, 0.1, 0.8)


def test_random_grayscale(rgb: torch.Tensor) -> None:
    gray = A.random_grayscale(rgb, 1.0)
    assert torch.equal(gray, A.rgb_to_grayscale(rgb).expand_as(rgb))
    assert torch.equal(A.random_grayscale(rgb, 0.0), rgb)
    torch.manual_seed(0)
    some = A.random_grayscale(rgb.repeat(20, 1, 1, 1), 0.2)
    is_gray = (some[:, 0] == some[:, 1]).flatten(1).all(1) & (some[:, 1] == some[:, 2]).flatten(1).all(1)
    assert 0.1 < is_gray.float().mean() < 0.3
    with pytest.raises(DataError, match="3 channels"):
        A.random_grayscale(rgb[:, :1], 0.5)


def test_non_rgb_contrast_is_per_band(bands: torch.Tensor) -> None:
    f = torch.linspace(0.3, 1.7, bands.shape[0])
    mean = bands.mean(dim=(2, 3), keepdim=True)
    expected = (f.view(-1, 1, 1, 1) * bands + (1 - f.view(-1, 1, 1, 1)) * mean).clamp(0, 1)
    torch.testing.assert_close(A.adjust_contrast(bands, f), expected, atol=1e-6, rtol=0)
    one = bands[:, :1]
    torch.testing.assert_close(A.adjust_contrast(one, f),
                               per_sample(TF.adjust_contrast, one, f), atol=1e-5, rtol=0)  # fmt: skip
    with pytest.raises(DataError, match="3 channels"):
        A.adjust_hue(bands, torch.zeros(bands.shape[0]))


# ------------------------------------------------------------------------- Augment


@pytest.mark.parametrize("channels", [1, 3, 13])
def test_augment_shapes_range_and_boxes(rgb: torch.Tensor, bands: torch.Tensor,
                                        channels: int) -> None:  # fmt: skip
    x = {1: rgb[:, :1], 3: rgb, 13: bands}[channels]
    aug = A.Augment(ViewConfig(size=24, blur_p=0.5, solarize_p=0.5), channels)
    view, boxes = aug(x)
    assert view.shape == (x.shape[0], channels, 24, 24) and view.dtype == x.dtype
    assert view.device == x.device and boxes.shape == (x.shape[0], 4)
    assert view.min() >= 0 and view.max() <= 1
    views, boxes3 = aug.sample(x, 3)
    assert views.shape == (3 * x.shape[0], channels, 24, 24) and boxes3.shape == (3 * x.shape[0], 4)
    assert list(aug.parameters()) == [] and aug.state_dict() == {}


@pytest.mark.parametrize("channels", [1, 13])
def test_non_rgb_skips_saturation_hue_grayscale(rgb: torch.Tensor, bands: torch.Tensor,
                                                channels: int) -> None:  # fmt: skip
    x = rgb[:, :1] if channels == 1 else bands[:, :, :32, :32]
    cfg = only(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.8, hue=0.5, grayscale_p=1.0)
    view, _ = A.Augment(cfg, channels)(x)
    torch.testing.assert_close(view, x, atol=1e-6, rtol=0)
    changed, _ = A.Augment(cfg, 3)(rgb)  # the same options do change RGB images
    assert (changed - rgb).abs().amax() > 0.1


def test_augment_all_off_is_identity_and_each_op_applies(rgb: torch.Tensor) -> None:
    view, boxes = A.Augment(only(), 3)(rgb)
    torch.testing.assert_close(view, rgb, atol=1e-6, rtol=0)
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand_as(boxes))
    flipped, _ = A.Augment(only(hflip_p=1.0), 3)(rgb)
    torch.testing.assert_close(flipped, rgb.flip(-1), atol=1e-6, rtol=0)
    sol, _ = A.Augment(only(solarize_p=1.0, solarize_threshold=0.5), 3)(rgb)
    assert torch.equal(sol, TF.solarize(rgb, 0.5))
    gray, _ = A.Augment(only(grayscale_p=1.0), 3)(rgb)
    assert torch.equal(gray, A.rgb_to_grayscale(rgb).expand_as(rgb))
    blur, _ = A.Augment(only(size=224, blur_p=1.0, scale=(1.0, 1.0)), 3)(rgb)
    assert blur.diff(dim=-1).abs().mean() < TF.resize(rgb, [224, 224], antialias=False).diff(
        dim=-1).abs().mean()  # fmt: skip


def test_augment_per_sample_independence_and_determinism(rgb: torch.Tensor) -> None:
    aug = A.Augment(ViewConfig(size=32), 3)
    x = rgb[:1].expand(16, -1, -1, -1)  # the same image 16 times
    torch.manual_seed(7)
    v1, b1 = aug(x)
    assert len({tuple(b.tolist()) for b in b1}) == 16  # each sample its own crop
    assert len({round(float(v.mean()), 5) for v in v1}) == 16
    torch.manual_seed(7)
    v2, b2 = aug(x)
    assert torch.equal(v1, v2) and torch.equal(b1, b2)
    v3, _ = aug(x)
    assert not torch.equal(v1, v3)


def test_augment_validation(rgb: torch.Tensor) -> None:
    state = torch.get_rng_state()
    A.Augment(ViewConfig(), 3)
    assert torch.equal(state, torch.get_rng_state())  # construction draws nothing
    for bad in (dict(hue=0.6), dict(jitter_p=1.5), dict(blur_sigma=(0.0, 1.0)),
                dict(scale=(0.5, 0.1)), dict(size=0), dict(saturation=-1.0)):  # fmt: skip
        (option,) = bad
        with pytest.raises(ConfigError, match=option):
            A.Augment(ViewConfig(**bad), 3)  # type: ignore[arg-type]
    aug = A.Augment(ViewConfig(), 3)
    with pytest.raises(DataError, match="channels"):
        aug(rgb[:, :1])
    with pytest.raises(DataError, match="float"):
        aug((rgb * 255).to(torch.uint8))


def test_jitter_accelerator_path_equals_cpu_gather_path(rgb: torch.Tensor) -> None:
    torch.manual_seed(2)
    n = rgb.shape[0]
    on = torch.rand(n) < 0.6
    factors = {"brightness": torch.rand(n) + 0.5, "contrast": torch.rand(n) + 0.5,
               "saturation": torch.rand(n) + 0.5, "hue": torch.rand(n) - 0.5}  # fmt: skip
    order = ["saturation", "hue", "brightness", "contrast"]
    masked = C._jitter_apply(rgb.clone(), factors, order, on)  # identity factors, no gather
    gathered = C._jitter_apply(rgb[on].clone(), {k: f[on] for k, f in factors.items()}, order)
    assert torch.equal(masked[~on], rgb[~on])
    torch.testing.assert_close(masked[on], gathered, atol=1e-6, rtol=0)
    one = C._jitter_apply(rgb[:1].clone(), {k: f[:1] for k, f in factors.items()}, order)
    ref = rgb[:1]
    for name in order:  # the same op sequence through torchvision's kernels
        fn = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
              "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}[name]  # fmt: skip
        ref = fn(ref, float(factors[name][0]))
    torch.testing.assert_close(one, ref, atol=5e-4, rtol=0)
