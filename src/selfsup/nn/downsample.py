"""Downsampling by exactly 2 with OpenCV's four ``cv2.resize`` filters, batched on the device.

Learning to count (Noroozi, Pirsiavash & Favaro 2017, sec. 4 "The network recognizes the
downsampling style") downsamples every image by 2 with a filter picked at random at each SGD
iteration among "the bicubic, bilinear, lanczos, or the area method as defined in OpenCV", so the
network cannot tell a downsampled image from a tile by its resampling artefacts.

At a factor of exactly 2, ``cv2.resize`` (no antialiasing for the interpolating filters) reads
output pixel ``i`` at source position ``2 i + 0.5`` with source indices clamped at the borders.
Every filter is then a fixed symmetric 1-D kernel applied separably with stride 2:

- ``area`` (``INTER_AREA``): the mean of each 2 x 2 block, ``[1/2, 1/2]``;
- ``bilinear`` (``INTER_LINEAR``): half way between two pixels, also ``[1/2, 1/2]``: at this
  factor the bilinear and area resizes are the same image (OpenCV itself switches an exact 2x
  bilinear downscale to its area code), so two of the four draws agree, as they do there;
- ``bicubic`` (``INTER_CUBIC``, Keys' kernel with ``a = -0.75``): 4 taps ``w(1.5), w(0.5),
  w(0.5), w(1.5)`` = ``[-0.09375, 0.59375, 0.59375, -0.09375]``;
- ``lanczos`` (``INTER_LANCZOS4``): 8 taps ``sinc(d) sinc(d / 4)`` at distances
  ``d = 3.5, 2.5, 1.5, 0.5, 0.5, ...``, normalised to sum 1.

Borders replicate the edge pixel (clamped indices). Checked against ``cv2.resize`` of
opencv-python-headless 4.14 on float32 images: every filter agrees to 4e-7, borders included
(``tests/unit/test_counting.py`` repeats the check where OpenCV is installed; it is not a
dependency of the library). ``torch.nn.functional.interpolate`` gives the same
``bilinear``/``bicubic``/``area`` images (``align_corners=False``, no antialias); the Lanczos
filter has no torch counterpart, hence one convolution path for all four.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["DOWNSAMPLE_METHODS", "downsample2", "downsample_kernel"]

DOWNSAMPLE_METHODS = ("bicubic", "bilinear", "lanczos", "area")  # the paper's order


def _keys_cubic(d: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel at distance ``d`` (OpenCV's ``a = -0.75``)."""
    d = abs(d)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    if d < 2:
        return a * (d**3 - 5 * d**2 + 8 * d - 4)
    return 0.0


def _sinc(d: float) -> float:
    return 1.0 if d == 0 else math.sin(math.pi * d) / (math.pi * d)


def downsample_kernel(method: str) -> list[float]:
    """The 1-D taps of ``method`` at a factor of 2 (output pixel ``i`` reads source pixels
    ``2 i - k / 2 + 1 ... 2 i + k / 2`` for ``k`` taps), summing to 1.

    Raises:
        ConfigError: for a method outside :data:`DOWNSAMPLE_METHODS`.
    """
    if method in ("area", "bilinear"):
        return [0.5, 0.5]
    if method == "bicubic":
        taps = [_keys_cubic(d) for d in (1.5, 0.5, 0.5, 1.5)]
    elif method == "lanczos":
        dists = (3.5, 2.5, 1.5, 0.5, 0.5, 1.5, 2.5, 3.5)
        taps = [_sinc(d) * _sinc(d / 4) for d in dists]
    else:
        raise ConfigError(f"downsampling method must be one of {DOWNSAMPLE_METHODS}, got "
                          f"{method!r}")
    s = sum(taps)
    return [t / s for t in taps]


def downsample2(x: Tensor, method: str) -> Tensor:
    """``x`` ``[B, C, H, W]`` (even ``H`` and ``W``) downsampled by 2 with OpenCV's ``method``
    filter: ``[B, C, H / 2, W / 2]``, same dtype and device.

    Raises:
        DataError: if ``x`` is not a float ``[B, C, H, W]`` batch with even sides.
        ConfigError: for an unknown ``method``.
    """
    if x.dim() != 4 or not x.is_floating_point() or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise DataError(f"downsample2 expects float images [B, C, H, W] with even H and W, got "
                        f"{x.dtype} {tuple(x.shape)}")
    taps = downsample_kernel(method)
    k = torch.tensor(taps, dtype=x.dtype, device=x.device)
    pad = len(taps) // 2 - 1  # the taps reach pad pixels beyond each 2-pixel block
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    if pad:
        y = F.pad(y, (pad, pad, pad, pad), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1), stride=(1, 2))  # along W
    y = F.conv2d(y, k.view(1, 1, -1, 1), stride=(2, 1))  # along H
    return y.reshape(b, c, h // 2, w // 2)
