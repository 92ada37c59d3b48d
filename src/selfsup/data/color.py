"""Batched colour operations with per-sample parameters (torchvision semantics, vectorised):
brightness, contrast, saturation, hue, grayscale and their random composition (colour jitter).

Every function takes ``x`` ``[B, C, H, W]`` float in [0, 1] on any device; per-sample factors are
``[B]`` tensors. Saturation, hue and grayscale need RGB (C = 3); for other channel counts colour
jitter uses only per-band brightness and contrast.

Colour spaces: :func:`rgb_to_lab` and its inverse :func:`lab_to_rgb` (CIE L*a*b*, D65), and
:func:`srgb_ab_bins`, the quantised ab values of the sRGB gamut (colorization's output classes).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from selfsup.types import ConfigError, DataError

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma (torchvision uses 0.2989 for red)
_JITTER = ("brightness", "contrast", "saturation", "hue")


def _rand(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=device, generator=generator)


def _uniform(n: int, low: float, high: float, device: torch.device,
             generator: torch.Generator | None) -> Tensor:
    return _rand(n, device, generator).mul_(high - low).add_(low)


def _col(v: Tensor, x: Tensor) -> Tensor:
    """Per-sample values ``[B]`` as ``[B, 1, 1, 1]`` in ``x``'s dtype, for broadcasting."""
    return v.to(x.dtype).view(-1, 1, 1, 1)


def _check_images(x: Tensor, name: str) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise DataError(f"{name}: expected a float batch [B, C, H, W], got {x.dtype} {list(x.shape)}")


def _check_rgb(x: Tensor, name: str) -> None:
    if x.shape[1] != 3:
        raise DataError(f"{name}: needs RGB images (3 channels), got {x.shape[1]} channels")


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B``: ``[B, 3, H, W]`` -> ``[B, 1, H, W]``.

    Raises:
        DataError: if ``x`` is not a float batch with 3 channels.
    """
    _check_images(x, "rgb_to_grayscale")
    _check_rgb(x, "rgb_to_grayscale")
    r, g, b = x.unbind(1)
    gray = r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])
    return gray.unsqueeze(1)


# In-place kernels (trailing _) for tensors the caller owns, e.g. Augment's fresh views: on CPU
# each new multi-MB tensor costs page faults that can exceed the arithmetic. lerp is exact at 0/1.


def _brightness_(x: Tensor, f: Tensor) -> Tensor:
    return x.mul_(_col(f, x)).clamp_(0, 1)


def _contrast_(x: Tensor, f: Tensor) -> Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
    if x.shape[1] == 3:  # the mean of the luma is the luma of the channel means
        mean = rgb_to_grayscale(mean)
    return x.lerp_(mean, _col(1 - f, x)).clamp_(0, 1)


def _saturation_(x: Tensor, f: Tensor) -> Tensor:
    return x.lerp_(rgb_to_grayscale(x), _col(1 - f, x)).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(x * factor, 0, 1)`` per sample (any channel count); ``factor`` ``[B]`` >= 0."""
    _check_images(x, "adjust_brightness")
    return _brightness_(x.clone(), factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the mean grey level: ``clamp(f * x + (1 - f) * mean(gray(x)), 0, 1)``. RGB uses
    the luma's mean (torchvision); other channel counts blend each band with its own mean."""
    _check_images(x, "adjust_contrast")
    return _contrast_(x.clone(), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the grey image: ``clamp(f * x + (1 - f) * gray(x), 0, 1)``; one channel is
    returned unchanged (as torchvision does).

    Raises:
        DataError: for a channel count other than 1 or 3.
    """
    _check_images(x, "adjust_saturation")
    return x if x.shape[1] == 1 else _saturation_(x.clone(), factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue in HSV space by ``shift`` ``[B]`` (in turns, |shift| <= 0.5); RGB only.

    Equals torchvision/Pillow's RGB -> HSV -> RGB round trip in closed form: with ``v = max``,
    chroma ``c = max - min`` and hue ``h`` in turns (from the largest channel's sector), output
    channel ``n`` is ``v - c * a(frac(h + shift + o_n))``, ``o = (1, 5/3, 4/3)`` for (R, G, B),
    ``a(t) = clamp(2 - 6 |t - 1/2|, 0, 1)``. No ``where``/``remainder`` (slow on CPU). One
    channel is returned unchanged (as torchvision does).

    Raises:
        DataError: for a channel count other than 1 or 3.
    """
    _check_images(x, "adjust_hue")
    if x.shape[1] == 1:
        return x
    _check_rgb(x, "adjust_hue")
    r, g, b = x.unbind(1)  # out= and in-place steps below reuse buffers
    v = torch.maximum(torch.maximum(r, g), b)
    c = torch.minimum(r, g)
    c = torch.minimum(c, b, out=c).neg_().add_(v)  # chroma
    # Hue in sixths for each possible largest channel, picked by float masks (r wins ties, then
    # g, as in torchvision); comparisons written into float tensors are vectorised.
    is_r = torch.eq(v, r, out=torch.empty_like(v))
    mask = torch.eq(v, g, out=torch.empty_like(v))
    num = torch.sub(r, g).add_(c, alpha=4)
    tmp = torch.sub(b, r).add_(c, alpha=2)
    num = num.lerp_(tmp, mask).lerp_(torch.sub(g, b, out=tmp), is_r)  # in [-c, 5c)
    h = num.div_(torch.clamp_min(c, 1e-30, out=mask).mul_(6))  # turns in [-1/6, 5/6); grey: 0
    off = torch.arange(3, device=x.device, dtype=x.dtype).div_(-3).add_(2).view(1, 3, 1, 1)
    t = h.unsqueeze(1) + (_col(shift, x) + off)  # > 0, so frac() is the positive remainder
    a = t.frac_().sub_(0.5).abs_().mul_(-6).add_(2).clamp_(0, 1)
    return a.mul_(c.unsqueeze(1)).neg_().add_(v.unsqueeze(1))


def _grayscale_(x: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    mask = _rand(x.shape[0], x.device, generator) < p
    return x.lerp_(rgb_to_grayscale(x), _col(mask, x))  # weight 0/1: exactly x / gray


def random_grayscale(x: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each RGB sample by its luma (on all 3 channels) with probability ``p``.

    Raises:
        DataError: if ``x`` is not a float batch with 3 channels.
    """
    _check_images(x, "random_grayscale")
    _check_rgb(x, "random_grayscale")
    return x if p <= 0 else _grayscale_(x.clone(), p, generator)


def _jitter_(x: Tensor, strengths: dict[str, float], p: float,
             generator: torch.Generator | None) -> Tensor:
    n, dev = x.shape[0], x.device
    on = _rand(n, dev, generator) < p if p < 1 else None
    factors = {}
    for name, v in strengths.items():
        low, high = (-v, v) if name == "hue" else (max(0.0, 1 - v), 1 + v)
        factors[name] = _uniform(n, low, high, dev, generator)
    cpu_gen = generator if generator is not None and generator.device.type == "cpu" else None
    order = [_JITTER[i] for i in torch.randperm(4, generator=cpu_gen).tolist()]
    order = [name for name in order if name in factors]
    if on is not None and dev.type == "cpu":  # gather the selected samples (measured faster)
        idx = on.nonzero().squeeze(1)
        sub = x.index_select(0, idx)
        sub = _jitter_apply(sub, {k: f.index_select(0, idx) for k, f in factors.items()}, order)
        return x.index_copy_(0, idx, sub)
    return _jitter_apply(x, factors, order, on)


def _jitter_apply(x: Tensor, factors: dict[str, Tensor], order: list[str],
                  on: Tensor | None = None) -> Tensor:
    """Apply the jitter ops in ``order``; samples where ``on`` is False get identity factors."""
    ops = {"brightness": _brightness_, "contrast": _contrast_, "saturation": _saturation_}
    for name in order:
        f = factors[name]
        if name == "hue":  # the HSV round trip is exact only up to rounding: blend by ``on``
            hued = adjust_hue(x, f)
            x = hued if on is None else x.lerp_(hued, _col(on, x))
        else:
            x = ops[name](x, f if on is None else torch.where(on, f, 1.0))
    return x


def _check_jitter(brightness: float, contrast: float, saturation: float, hue: float) -> None:
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if v < 0:
            raise ConfigError(f"view option '{name}' must be >= 0, got {v}")
    if not 0 <= hue <= 0.5:
        raise ConfigError(f"view option 'hue' must be in [0, 0.5], got {hue}")


def _jitter_strengths(channels: int, b: float, c: float, s: float, h: float) -> dict[str, float]:
    """The non-zero jitter strengths that apply to ``channels``-channel images."""
    _check_jitter(b, c, s, h)
    values = (b, c, s, h) if channels == 3 else (b, c, 0.0, 0.0)  # no saturation/hue off RGB
    return {k: v for k, v in zip(_JITTER, values) if v > 0}


def color_jitter(x: Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 p: float, generator: torch.Generator | None = None) -> Tensor:
    """Random colour jitter (torchvision ``RandomApply(ColorJitter(b, c, s, h), p)``) per sample.

    A selected sample draws brightness, contrast and saturation factors from
    ``U(max(0, 1 - v), 1 + v)`` and a hue shift from ``U(-hue, hue)``; an unselected sample is
    returned unchanged. On the CPU the selected samples are gathered and jittered; on an
    accelerator every op runs over the whole batch with identity factors for the unselected
    samples, which needs no host sync. The four ops run in a random order drawn once per call (per
    batch, not per sample as in torchvision; each sample's marginal distribution is the same),
    from the CPU generator (or ``generator`` if it is a CPU one) so that no device sync is
    needed. Saturation and hue need RGB; for other channel counts only brightness and (per-band)
    contrast apply. Ops with strength 0, or all ops when ``p`` is 0, are skipped.

    Raises:
        ConfigError: for a negative strength, ``hue`` > 0.5 or ``p`` outside [0, 1].
    """
    _check_images(x, "color_jitter")
    strengths = _jitter_strengths(x.shape[1], brightness, contrast, saturation, hue)
    if not 0 <= p <= 1:
        raise ConfigError(f"view option 'jitter_p' must be in [0, 1], got {p}")
    return x if p == 0 or not strengths else _jitter_(x.clone(), strengths, p, generator)


# --------------------------------------------------------------------------- filters


# sRGB (D65) -> CIE XYZ, the matrix of IEC 61966-2-1 (as skimage.color.rgb2lab)
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(x: Tensor) -> Tensor:
    """CIE L*a*b* (D65 white) of sRGB images: ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, H, W]``
    with ``L`` in [0, 100] and ``a``, ``b`` roughly in [-128, 128] (as ``skimage.color.rgb2lab``).

    sRGB is linearised (``((c + 0.055) / 1.055) ** 2.4`` above 0.04045, else ``c / 12.92``),
    mapped to XYZ, divided by the white point, and ``f(t) = t ** (1/3)`` (linear below
    ``(6/29) ** 3``) gives ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``,
    ``b = 200 (f(Y) - f(Z))``. Traceable (no data-dependent control flow).

    Raises:
        DataError: if ``x`` is not a float batch with 3 channels.
    """
    _check_images(x, "rgb_to_lab")
    _check_rgb(x, "rgb_to_lab")
    c = x.clamp(0.0, 1.0)
    lin = torch.where(c > 0.04045, ((c + 0.055) / 1.055).pow(2.4), c / 12.92)
    m = torch.tensor(_RGB_TO_XYZ, dtype=x.dtype, device=x.device)
    white = torch.tensor(_WHITE_D65, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin) / white
    eps = (6.0 / 29.0) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps).pow(1.0 / 3.0),
                    xyz / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(x: Tensor) -> Tensor:
    """sRGB of CIE L*a*b* (D65) images, the inverse of :func:`rgb_to_lab`: ``[B, 3, H, W]`` with
    ``L`` in [0, 100] -> ``[B, 3, H, W]`` in [0, 1].

    ``f_y = (L + 16) / 116``, ``f_x = f_y + a / 500``, ``f_z = f_y - b / 200``;
    ``f^-1(t) = t ** 3`` above ``6/29`` (else ``3 (6/29)^2 (t - 4/29)``) times the white point
    gives XYZ; the exact inverse of :func:`rgb_to_lab`'s matrix (not skimage's rounded one, so
    the round trip is exact up to float rounding) gives linear RGB, clamped to [0, 1] (colours
    outside the sRGB gamut are clipped, as ``skimage.color.lab2rgb`` does), then the sRGB curve
    (``1.055 c ** (1/2.4) - 0.055`` above 0.0031308, else ``12.92 c``).

    Raises:
        DataError: if ``x`` is not a float batch with 3 channels.
    """
    _check_images(x, "lab_to_rgb")
    _check_rgb(x, "lab_to_rgb")
    light, a, b = x.unbind(1)
    fy = (light + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=1)
    delta = 6.0 / 29.0
    t = torch.where(f > delta, f.pow(3), 3 * delta ** 2 * (f - 4.0 / 29.0))
    white = torch.tensor(_WHITE_D65, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    inv = torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(x)
    lin = torch.einsum("ij,bjhw->bihw", inv, t * white).clamp(0.0, 1.0)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(0.0031308).pow(1 / 2.4) - 0.055,
                       12.92 * lin)


@functools.cache
def _surface_ab() -> Tensor:
    """ab ``[6 * 256^2, 2]`` (float64) of the colours on the 6 faces of the 8-bit RGB cube."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    u, v = torch.meshgrid(levels, levels, indexing="ij")
    faces = []
    for c in range(3):  # channel c fixed at 0 or 1
        for value in (0.0, 1.0):
            planes = [u, v]
            planes.insert(c, torch.full_like(u, value))
            faces.append(torch.stack(planes).reshape(3, -1))
    rgb = torch.cat(faces, dim=1).reshape(1, 3, -1, 1)
    return rgb_to_lab(rgb)[0, 1:, :, 0].T.contiguous()


@functools.cache
def _gamut_bins(grid: float) -> Tensor:
    q = torch.round(_surface_ab() / grid).to(torch.int64)
    lo = q.amin(0)
    span = int(q[:, 1].max() - lo[1]) + 1
    keys = torch.unique((q[:, 0] - lo[0]) * span + (q[:, 1] - lo[1]))  # one int per cell, sorted
    cells = torch.stack([keys // span + lo[0], keys % span + lo[1]], dim=1)  # by a, then b
    return cells.to(torch.float32) * grid


def srgb_ab_bins(grid: float = 10.0) -> Tensor:
    """The quantised in-gamut ab values of Zhang et al. 2016 (sec. 2.1, fig. 3): the centres of
    the ``grid``-spaced ab grid cells that some 8-bit sRGB colour falls in (rounding its ab to the
    nearest multiple of ``grid``), ``[Q, 2]`` float32 as ``(a, b)``, sorted by ``a`` then ``b``.

    Computed, not downloaded (the reference ships ``resources/pts_in_hull.npy`` and does not say
    how it was made): the projection of the gamut onto the ab plane is the projection of its
    surface (along every vertical line in L the gamut's extreme L lies on its boundary), so the 6
    faces of the 8-bit RGB cube (6 x 256^2 colours, in float64) give every cell any 8-bit sRGB
    colour of any lightness reaches. ``grid=10`` gives Q = 261 bins with the reference's extent
    (a in [-90, 100], b in [-110, 90]); the reference's 313 are a superset (checked against a
    public transcription of ``pts_in_hull.npy``): its 52 extra cells lie 5-13 ab units outside
    the gamut, so no sRGB colour is nearest to one of them. Cached per ``grid``; a fresh copy is
    returned.

    Raises:
        ConfigError: if ``grid`` is not in (0, 100].
    """
    if not 0.0 < grid <= 100.0:
        raise ConfigError(f"ab grid size must be in (0, 100], got {grid}")
    return _gamut_bins(float(grid)).clone()
