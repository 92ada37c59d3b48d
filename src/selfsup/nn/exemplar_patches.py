"""Exemplar-CNN's surrogate data: seed patches at high-gradient locations and their random
transformations, batched on the training device.

Dosovitskiy, Fischer, Springenberg, Riedmiller & Brox, "Discriminative Unsupervised Feature
Learning with Exemplar Convolutional Neural Networks" (TPAMI 2016; NIPS 2014 version with
Springenberg, Riedmiller, Brox), sec. 2. Every function takes unit-range images ``x``
``[B, C, H, W]``; per-sample parameters are ``[N]`` tensors (``N = K * B`` rows, copy-major).

- Seed patches (sec. 2: "we sample only from regions containing considerable gradients", with
  probability proportional to the mean squared gradient magnitude within the patch):
  :func:`gradient_energy`, :func:`patch_scores`, :func:`sample_corners` (inverse CDF of a given
  uniform, so a keyed uniform fixes each image's patch).
- Geometric transformations (translation, scaling, rotation) in one resampling:
  :func:`transform_patches`.
- "contrast 1" (:func:`pca_contrast`, :func:`pixel_principal_axes`), "contrast 2" and "color"
  (:func:`hsv_transform`, with :func:`rgb_to_hsv` / :func:`hsv_to_rgb`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import DataError
from selfsup.utils import dist

__all__ = ["gradient_energy", "hsv_to_rgb", "hsv_transform", "log_uniform", "patch_scores",
           "pca_contrast", "pixel_principal_axes", "rgb_to_hsv", "sample_corners",
           "transform_patches"]


def gradient_energy(x: Tensor) -> Tensor:
    """Squared gradient magnitude ``[B, H, W]`` of ``x`` ``[B, C, H, W]``: the sum over channels
    of the squared central differences along x and y (one-sided at the borders, as
    ``numpy.gradient``)."""
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        raise DataError(f"gradient_energy needs images of at least 2 x 2 px, got {tuple(x.shape)}")
    gy = torch.gradient(x, dim=2)[0]
    gx = torch.gradient(x, dim=3)[0]
    return (gx * gx + gy * gy).sum(1)


def patch_scores(energy: Tensor, side: int) -> Tensor:
    """Mean of ``energy`` ``[B, H, W]`` over every ``side x side`` window inside the image:
    ``[B, H - side + 1, W - side + 1]`` (entry ``(i, j)``: the window with top-left ``(i, j)``)."""
    return F.avg_pool2d(energy.unsqueeze(1), side, stride=1).squeeze(1)


def sample_corners(scores: Tensor, u: Tensor) -> Tensor:
    """Top-left corners ``[B, 2]`` (row, column; int64) drawn with probability proportional to
    ``scores`` ``[B, h, w]`` (non-negative) by the inverse CDF of ``u`` ``[B]`` in [0, 1): the first
    window in row-major order whose cumulative score exceeds ``u`` times the total. A tiny floor
    (1e-6 of the image's mean score) keeps a flat image uniform."""
    b, h, w = scores.shape
    p = scores.reshape(b, -1).double()
    p = p + 1e-6 * p.mean(1, keepdim=True) + 1e-30
    cdf = p.cumsum(1)
    target = (u.double() * cdf[:, -1]).unsqueeze(1)
    flat = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=h * w - 1)
    return torch.stack([flat // w, flat % w], dim=1)


def transform_patches(x: Tensor, corners: Tensor, side: int, shift: Tensor, scale: Tensor,
                      angle: Tensor) -> Tensor:
    """``K`` transformed copies of each image's seed patch, ``[K*B, C, side, side]`` copy-major.

    The seed patch of image ``b`` is the ``side x side`` window at ``corners[b]``. Copy row
    ``n = k*B + b`` samples (bilinear, border padding, ``align_corners=False``) the square of side
    ``side * scale[n]`` centred on the patch centre moved by ``shift[n]`` (``[N, 2]``, (dy, dx)
    in pixels) and rotated by ``angle[n]`` radians (counter-clockwise as displayed, y down), at
    ``side x side`` pixels. ``shift = 0, scale = 1, angle = 0`` is the patch itself, exactly.

    Raises:
        DataError: if the rows are not a multiple of the batch.
    """
    b, c, h, w = x.shape
    n = angle.shape[0]
    if n % b or shift.shape != (n, 2) or scale.shape != (n,):
        raise DataError(f"transform_patches: parameters for {n} rows do not fit a batch of {b}")
    k = n // b
    centre = corners.to(x.dtype) + side / 2  # [B, 2] (y, x), pixel units
    cy = centre[:, 0].repeat(k) + shift[:, 0]
    cx = centre[:, 1].repeat(k) + shift[:, 1]
    half = (side / 2) * scale  # [N]
    u = torch.arange(side, device=x.device, dtype=x.dtype).mul_(2).add_(1).div_(side).sub_(1)
    cos, sin = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1)
    uu, vv = u.view(1, 1, side), u.view(1, side, 1)  # output column / row coordinate in (-1, 1)
    # output offset (u, v) reads the source at R(angle) (u, v): content turns counter-clockwise
    # on screen (y down; angle pi/2 is torch.rot90(patch, 1, dims=(2, 3)))
    px = cx.view(n, 1, 1) + half.view(n, 1, 1) * (cos * uu - sin * vv)
    py = cy.view(n, 1, 1) + half.view(n, 1, 1) * (sin * uu + cos * vv)
    grid = torch.stack([px * (2 / w) - 1, py * (2 / h) - 1], dim=-1)  # [N, S, S, 2]
    grid = grid.view(k, b, side, side, 2).transpose(0, 1).reshape(b, k * side, side, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(b, c, k, side, side).permute(2, 0, 1, 3, 4).reshape(n, c, side, side)


def pixel_principal_axes(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[C]`` and principal axes ``[C, C]`` (columns, ascending variance) of the set of all
    pixels of ``x`` ``[B, C, H, W]``: the eigenvectors of the pixel covariance. The sums are
    reduced over all ranks, so every rank gets the statistics of the global batch."""
    c = x.shape[1]
    d = x.transpose(0, 1).reshape(c, -1).double()
    stats = torch.cat([d.sum(1), (d @ d.T).flatten(), d.new_tensor([d.shape[1]])])
    stats = dist.all_reduce_sum(stats)
    count = stats[-1]
    mean = stats[:c] / count
    cov = stats[c: c + c * c].view(c, c) / count - torch.outer(mean, mean)
    return mean.to(x.dtype), torch.linalg.eigh(cov)[1].to(x.dtype)


def pca_contrast(x: Tensor, mean: Tensor, axes: Tensor, factors: Tensor) -> Tensor:
    """"contrast 1": the projection of every pixel (about ``mean`` ``[C]``) onto each principal
    axis (``axes`` ``[C, C]``, columns) multiplied by that axis's factor of the row (``factors``
    ``[N, C]``, the same for every pixel of a patch): ``p' = mean + U diag(f) U^T (p - mean)``."""
    n, c = factors.shape
    m = torch.einsum("ij,nj,kj->nik", axes, factors, axes)  # [N, C, C]
    d = x - mean.view(1, c, 1, 1)
    return torch.einsum("nik,nkhw->nihw", m, d) + mean.view(1, c, 1, 1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB ``[N, 3, H, W]`` in [0, 1] to HSV (hue in turns [0, 1)), as ``colorsys.rgb_to_hsv``."""
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)
    s = torch.where(v > 0, c / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = c.clamp_min(1e-12)
    rc, gc, bc = (v - r) / safe, (v - g) / safe, (v - b) / safe
    h = torch.where(r == v, bc - gc, torch.where(g == v, 2 + rc - bc, 4 + gc - rc))
    h = torch.where(c > 0, (h / 6) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV ``[N, 3, H, W]`` (hue in turns) to RGB, as ``colorsys.hsv_to_rgb``: channel ``n`` of
    (R, G, B) is ``v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``, n = 5, 3, 1."""
    h, s, v = hsv.unbind(1)
    n = torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = (n + 6 * h.unsqueeze(1)) % 6
    a = torch.minimum(k, 4 - k).clamp(0, 1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * a


def _col(t: Tensor) -> Tensor:
    return t.view(-1, 1, 1)


def hsv_transform(x: Tensor, s_pow: Tensor, s_mul: Tensor, s_add: Tensor, v_pow: Tensor,
                  v_mul: Tensor, v_add: Tensor, hue: Tensor) -> Tensor:
    """"contrast 2" and "color" of rows ``x`` ``[N, C, H, W]`` in [0, 1], per-row ``[N]``
    parameters: ``S <- clamp(S ** s_pow * s_mul + s_add, 0, 1)``, ``V`` likewise, ``H <- H + hue``
    (turns). RGB goes through HSV; one channel is its own ``V`` (saturation and hue do not
    exist); other channel counts are returned unchanged (no HSV)."""
    if x.shape[1] == 1:
        v = x[:, 0].clamp(0, 1)
        return (v.pow(_col(v_pow)) * _col(v_mul) + _col(v_add)).clamp(0, 1).unsqueeze(1)
    if x.shape[1] != 3:
        return x
    h, s, v = rgb_to_hsv(x.clamp(0, 1)).unbind(1)
    s = (s.pow(_col(s_pow)) * _col(s_mul) + _col(s_add)).clamp(0, 1)
    v = (v.pow(_col(v_pow)) * _col(v_mul) + _col(v_add)).clamp(0, 1)
    h = (h + _col(hue)) % 1.0
    return hsv_to_rgb(torch.stack([h, s, v], dim=1))


def log_uniform(u: Tensor, low: float, high: float) -> Tensor:
    """``u`` in [0, 1) mapped log-uniformly onto ``[low, high)``."""
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))
