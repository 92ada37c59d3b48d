"""Batched image augmentations with per-sample random parameters, run on the training device.

Every op takes a unit-range float batch ``x`` ``[B, C, H, W]`` plus per-sample parameters ``[B]``
and is a few whole-batch tensor ops (no loop over samples, no PIL). Each follows the matching
``torchvision.transforms.v2.functional`` kernel (the tests compare them): random resized crop +
flip + bilinear resize in one ``F.grid_sample``; colour jitter (brightness = multiply, contrast =
blend with the mean grey level, saturation = blend with the grey image, hue = rotation in HSV);
random grayscale (ITU-R 601 luma); separable Gaussian blur; solarisation (SimCLR appendix A,
BYOL table 6). :class:`Augment` chains them for one :class:`~selfsup.config.ViewConfig` group.

All randomness comes from torch's global RNG on ``x``'s device (so checkpointing the RNG state
makes a resumed run exact) unless a ``generator`` is passed.
"""


import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ViewConfig
from selfsup.data.color import (  # noqa: F401  (re-exported: the public augmentation API)
    GRAY_WEIGHTS,
    _check_images,
    _check_jitter,
    _col,
    _grayscale_,
    _jitter_,
    _jitter_strengths,
    _rand,
    _uniform,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    random_grayscale,
    rgb_to_grayscale,
)
from selfsup.types import ConfigError, DataError

SIGMA_REFERENCE_SIZE = 224  # ViewConfig.blur_sigma is in pixels of a 224-pixel view
_UNIT_OPTIONS = ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "solarize_threshold")



def _check_range(name: str, pair: tuple[float, float], low: float = 0.0) -> None:
    if not low < pair[0] <= pair[1]:
        raise ConfigError(f"view option '{name}' must satisfy {low} < min <= max, got {pair}")


def check_view_config(cfg: ViewConfig) -> None:
    """Raise ConfigError naming the first invalid option of a view group and its range."""
    if cfg.n < 1 or cfg.size < 1:
        raise ConfigError(f"view options 'n' and 'size' must be >= 1, got {cfg.n}, {cfg.size}")
    for name in _UNIT_OPTIONS:
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"view option '{name}' must be in [0, 1], got {getattr(cfg, name)}")
    _check_range("scale", cfg.scale)
    _check_range("ratio", cfg.ratio)
    _check_range("blur_sigma", cfg.blur_sigma)
    _check_jitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)


# --------------------------------------------------------------------------- geometry


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
                      ratio: tuple[float, float], *, device: torch.device | str,
                      generator: torch.Generator | None = None) -> Tensor:
    """Random-resized-crop boxes ``[n, 4]`` ``(y0, x0, y1, x1)`` normalised to [0, 1].

    Vectorised torchvision ``RandomResizedCrop.make_params``: per sample, 10 candidates draw an
    area fraction ``U(scale)`` and a log aspect ratio ``U(log ratio)``; sides are rounded to whole
    pixels and the first candidate that fits is kept, at a uniform random integer offset. Samples
    with none get torchvision's fallback, the central crop with the ratio clamped to ``ratio``.

    Raises:
        ConfigError: if ``scale`` or ``ratio`` is not an increasing pair of positive numbers.
    """
    _check_range("scale", scale)
    _check_range("ratio", ratio)
    dev = torch.device(device)
    area = torch.rand(n, 10, device=dev, generator=generator)
    area = area.mul_(scale[1] - scale[0]).add_(scale[0]).mul_(height * width)
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.rand(n, 10, device=dev, generator=generator).mul_(lr[1] - lr[0]).add_(lr[0])
    aspect = aspect.exp_()
    w = torch.sqrt(area * aspect).round_()
    h = torch.sqrt(area / aspect).round_()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.int().argmax(dim=1, keepdim=True)  # index of the first valid candidate
    found = ok.any(dim=1)
    # torchvision's fallback when all 10 candidates fail: central crop, ratio clamped.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fw))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fh))
    u = torch.rand(n, 2, device=dev, generator=generator)
    top = torch.minimum((u[:, 0] * (height - h + 1)).floor_(), height - h)
    left = torch.minimum((u[:, 1] * (width - w + 1)).floor_(), width - w)
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    return torch.stack([top / height, left / width, (top + h) / height, (left + w) / width], 1)


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop ``x`` ``[B, C, H, W]`` to ``boxes``, resize to ``size x size`` and optionally flip.

    One ``F.grid_sample`` (bilinear, ``align_corners=False``, no antialiasing) with per-sample
    affine grids. Equals torchvision ``resized_crop(..., antialias=False)`` of the integer pixel
    box, except that an upsampled box's outermost half-pixel reads the neighbouring pixels of the
    full image instead of repeating the crop's edge. ``boxes`` ``[k*B, 4]`` (normalised
    ``(y0, x0, y1, x1)``) and ``flip`` (bool ``[k*B]``, mirror after the crop) give ``k`` views
    per image, view-major (row ``v*B + b`` is view ``v`` of sample ``b``): ``[k*B, C, size, size]``.

    Raises:
        DataError: if ``x`` is not a float ``[B, C, H, W]`` batch or ``boxes`` does not match it.
    """
    _check_images(x, "resized_crop")
    b = x.shape[0]
    if boxes.dim() != 2 or boxes.shape[1] != 4 or b == 0 or boxes.shape[0] % b:
        raise DataError(f"resized_crop: boxes must be [k*{b}, 4], got {tuple(boxes.shape)}")
    k = boxes.shape[0] // b
    bx = boxes.to(x.dtype).view(k, b, 4).transpose(0, 1)  # [B, k, 4]
    y0, x0, y1, x1 = bx.unbind(-1)
    sx = x1 - x0
    if flip is not None:
        sx = torch.where(flip.view(k, b).t(), -sx, sx)
    # Output pixel centre u in (-1, 1) maps to x0 + (u + 1) / 2 * (x1 - x0) in [0, 1] source
    # coordinates, i.e. 2 * that - 1 in grid_sample's [-1, 1] convention.
    u = torch.arange(size, device=x.device, dtype=x.dtype).mul_(2).add_(1).div_(size).sub_(1)
    gx = sx.unsqueeze(-1) * u + (x0 + x1 - 1).unsqueeze(-1)  # [B, k, S]
    gy = (y1 - y0).unsqueeze(-1) * u + (y0 + y1 - 1).unsqueeze(-1)
    grid = torch.stack(torch.broadcast_tensors(gx.unsqueeze(2), gy.unsqueeze(3)), dim=-1)
    grid = grid.view(b, k * size, size, 2)  # [B, k*S (rows of k views), S (cols), 2]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if k == 1:
        return out
    c = x.shape[1]
    return out.view(b, c, k, size, size).permute(2, 0, 1, 3, 4).reshape(k * b, c, size, size)


# --------------------------------------------------------------------------- colour


def blur_kernel_size(size: int) -> int:
    """Gaussian kernel side for a ``size``-pixel view: 10% of the side, odd, at least 3 (SimCLR A)."""
    k = int(0.1 * size)
    k += 1 - k % 2
    return max(k, 3)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int, mask: Tensor | None = None) -> Tensor:
    """Separable Gaussian blur with per-sample ``sigma`` ``[B]`` (torchvision ``gaussian_blur``).

    Weights ``exp(-t^2 / (2 sigma^2))``, ``|t| <= kernel_size // 2``, normalised; reflect padding;
    two depthwise 1-D convolutions over ``B*C`` groups. Samples where the optional bool ``mask``
    ``[B]`` is False are returned unchanged: on the CPU only the others are convolved, elsewhere
    they get a delta kernel (exact identity, no host sync).

    Raises:
        ConfigError: if ``kernel_size`` is not odd and positive.
        DataError: if the image is not larger than half the kernel (reflect padding).
    """
    _check_images(x, "gaussian_blur")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"gaussian_blur: kernel_size must be odd and positive, got {kernel_size}")
    if mask is not None and x.device.type == "cpu":
        idx = mask.nonzero().squeeze(1)
        if idx.numel() == 0:
            return x
        if idx.numel() < x.shape[0]:
            sub = gaussian_blur(x.index_select(0, idx), sigma.index_select(0, idx), kernel_size)
            return x.index_copy(0, idx, sub)
        mask = None
    return _blur(x, sigma, kernel_size, mask)


def _blur(x: Tensor, sigma: Tensor, kernel_size: int, mask: Tensor | None) -> Tensor:
    b, c, h, w = x.shape
    r = kernel_size // 2
    if r >= min(h, w):
        raise DataError(f"gaussian_blur: image {h}x{w} is too small for kernel {kernel_size}")
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    s = _col(sigma, x).view(b, 1)
    weight = torch.softmax(-(t * t) / (2 * s * s), dim=1)  # [B, k], normalised
    if mask is not None:
        weight = torch.lerp((t == 0).to(x.dtype).expand(b, -1), weight, _col(mask, x).view(b, 1))
    weight = weight.repeat_interleave(c, dim=0)  # [B*C, k]
    xp = F.pad(x, (r, r, r, r), mode="reflect").reshape(1, b * c, h + 2 * r, w + 2 * r)
    xp = F.conv2d(xp, weight.view(b * c, 1, 1, kernel_size), groups=b * c)  # along W
    xp = F.conv2d(xp, weight.view(b * c, 1, kernel_size, 1), groups=b * c)  # along H
    return xp.reshape(b, c, h, w)


def solarize(x: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """``x -> 1 - x`` where ``x >= threshold``, for the samples where ``mask`` ``[B]`` is True."""
    _check_images(x, "solarize")
    return _solarize_(x.clone(), mask, threshold)


def _solarize_(x: Tensor, mask: Tensor, threshold: float) -> Tensor:
    hit = torch.ge(x, threshold, out=torch.empty_like(x)).mul_(_col(mask, x))  # float 0/1
    return x.lerp_(1 - x, hit)  # weight 0/1: exactly x / 1 - x


# --------------------------------------------------------------------------- one view group


class Augment(nn.Module):
    """One :class:`~selfsup.config.ViewConfig` group applied to ``channels``-channel batches.

    Order as in SimCLR appendix A / BYOL table 6: random resized crop + flip (one resampling),
    colour jitter, random grayscale, Gaussian blur, solarisation. Blur uses a kernel of
    :func:`blur_kernel_size` ``(cfg.size)`` and sigma ``U(cfg.blur_sigma) * cfg.size / 224``
    (``blur_sigma`` is in pixels of a 224-pixel view). Saturation, hue and grayscale apply only
    when ``channels == 3``. An op with probability 0 costs nothing. No parameters or buffers.

    Raises:
        ConfigError: for an invalid option of ``cfg`` (named in the message) or ``channels`` < 1.
    """

    def __init__(self, cfg: ViewConfig, channels: int) -> None:
        super().__init__()
        check_view_config(cfg)
        if channels < 1:
            raise ConfigError(f"Augment: channels must be >= 1, got {channels}")
        self.jitter = _jitter_strengths(channels, cfg.brightness, cfg.contrast, cfg.saturation,
                                        cfg.hue)  # fmt: skip
        self.cfg = cfg
        self.channels = channels
        self.kernel_size = blur_kernel_size(cfg.size)
        k = cfg.size / SIGMA_REFERENCE_SIZE
        self.sigma = (cfg.blur_sigma[0] * k, cfg.blur_sigma[1] * k)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, {self.cfg}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One view of ``x`` ``[B, C, H, W]`` in [0, 1]: ``(view [B, C, size, size] in [0, 1],
        boxes [B, 4])`` (boxes as in :func:`sample_crop_boxes`). See :meth:`sample`."""
        return self.sample(x, 1)

    def sample(self, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """``n`` views of every sample in one batched pass: ``(views [n*B, C, size, size],
        boxes [n*B, 4])``, view-major (row ``v*B + b`` is view ``v`` of sample ``b``).

        A box is ``(y0, x0, y1, x1)``: the source position of the view's top-left corner and of
        its bottom-right corner, so a horizontally flipped view has ``x0 > x1`` (and
        ``resized_crop(x, boxes, size)`` reproduces the view's geometry, flip included).

        Raises:
            DataError: if ``x`` is not a float ``[B, C, H, W]`` batch with ``channels`` channels.
        """
        _check_images(x, "Augment")
        if x.shape[1] != self.channels:
            raise DataError(f"Augment: expected {self.channels} channels, got {x.shape[1]}")
        cfg, dev = self.cfg, x.device
        m = n * x.shape[0]
        boxes = sample_crop_boxes(m, x.shape[2], x.shape[3], cfg.scale, cfg.ratio, device=dev)
        flip = _rand(m, dev, None) < cfg.hflip_p if cfg.hflip_p > 0 else None
        v = resized_crop(x, boxes, cfg.size, flip)  # a fresh tensor: the ops below work in place
        if flip is not None:  # a mirrored view's box runs right to left: x0 > x1 (PixPro's code)
            boxes = torch.where(flip.unsqueeze(1), boxes[:, [0, 3, 2, 1]], boxes)
        if cfg.jitter_p > 0 and self.jitter:
            v = _jitter_(v, self.jitter, cfg.jitter_p, None)
        if self.channels == 3 and cfg.grayscale_p > 0:
            v = _grayscale_(v, cfg.grayscale_p, None)
        if cfg.blur_p > 0:
            sigma = _uniform(m, self.sigma[0], self.sigma[1], dev, None)
            mask = _rand(m, dev, None) < cfg.blur_p if cfg.blur_p < 1 else None
            v = gaussian_blur(v, sigma, self.kernel_size, mask=mask)
        if cfg.solarize_p > 0:
            v = _solarize_(v, _rand(m, dev, None) < cfg.solarize_p, cfg.solarize_threshold)
        return v.clamp_(0, 1), boxes  # resampling/blur weights may sum to 1 + eps
