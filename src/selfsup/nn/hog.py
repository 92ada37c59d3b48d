"""Histograms of oriented gradients (HOG) as batched tensor ops: MaskFeat's prediction target.

Wei et al. 2022, "Masked Feature Prediction for Self-Supervised Visual Pre-Training", sec. 3
("Target features", HOG); reference: facebookresearch/SlowFast
``slowfast/models/operators.py`` (``HOGLayerC``, used by ``slowfast/models/masked.py``
``MaskMViT._get_hog_label_2d``). The same formula as the reference, for any channel count, on the
images' device, with no loop over images:

1. Per channel ``c`` (MaskFeat computes HOG on each colour channel separately and concatenates,
   so a multispectral image gets one histogram per band), the image is reflect-padded by one
   pixel and filtered by the fixed 3 x 3 Sobel kernels of the reference,
   ``kx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]`` and ``ky = kx^T``, as cross-correlations:
   ``gx[i, j] = sum_{u,v} kx[u, v] x[i+u-1, j+v-1]`` (likewise ``gy``), computed separably
   (difference, then ``[1, 2, 1]`` smoothing) so that a flat region gives exactly 0.
2. Magnitude ``m = sqrt(gx^2 + gy^2)`` and orientation ``theta = atan2(gx, gy)`` (the reference's
   argument order, so a vertical edge, ``gy = 0``, has ``theta = +-pi/2``). ``nbins`` (9)
   *unsigned* orientation bins of ``pi / nbins`` (20 degrees): pixel bin
   ``k = floor(theta nbins / pi) mod nbins``. Binning is **hard** (the reference's
   ``scatter_add_`` of ``phase.floor()``): each pixel adds its magnitude ``m`` to one bin; a
   vertical edge lands in bin ``floor(nbins / 2)`` (4 of 9), a horizontal edge in bin 0.
3. Cells of ``cell_size`` x ``cell_size`` pixels (paper: 8 x 8) sum their pixels' votes:
   ``h[c, k, I, J] = sum_{(i, j) in cell (I, J), bin(i, j) = k} m[c, i, j]``.
4. Local contrast normalisation, which the paper finds essential (abstract, HOG ablation):
   each cell's histogram, per channel, is L2-normalised over its ``nbins`` bins,
   ``h / max(||h||_2, 1e-12)`` (``F.normalize(out, p=2, dim=2)`` in the reference; "block" =
   one cell there). A cell with no gradient stays all zero.
5. Per patch (:func:`hog_patches`), the ``(p / cell)^2`` cells inside a ``p`` x ``p`` patch are
   concatenated in the reference's order ``(channel, bin, cell row, cell column)``: a
   ``C * nbins * (p / cell)^2`` vector (108 for RGB, 16-px patches, 8-px cells).

Scaling for small images: the paper's 8-px cells in 16-px patches make 2 x 2 cells per patch;
MaskFeat's method file keeps that ratio (``cell = patch / 2``: 2-px cells for 4-px patches at
16-32 px) unless a cell size is given. The reference's optional Gaussian weighting of the
magnitudes (``gaussian_window``; 0 in ``masked.py``, 16 in mmpretrain's ``HOGGenerator``) is not
implemented: MaskFeat's own code leaves it off.

Computed without autograd and outside autocast, in float32 (float64 inputs stay float64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["hog_cells", "hog_dim", "hog_glyphs", "hog_patches", "patches_to_cells"]

def hog_dim(in_chans: int, patch_size: int, cell_size: int, nbins: int = 9) -> int:
    """Length of one patch's HOG vector: ``in_chans * nbins * (patch_size / cell_size)^2``.

    Raises:
        ConfigError: if the sizes are not positive or ``cell_size`` does not divide
            ``patch_size``.
    """
    _check_sizes(patch_size, cell_size, nbins)
    return in_chans * nbins * (patch_size // cell_size) ** 2


def hog_cells(images: Tensor, cell_size: int = 8, nbins: int = 9) -> Tensor:
    """Per-channel, per-cell L2-normalised orientation histograms (steps 1-4 of the module doc).

    Args:
        images: ``[B, C, H, W]`` (any ``C``; ``H, W >= 2`` and multiples of ``cell_size``).
        cell_size: cell side in pixels (paper: 8).
        nbins: unsigned orientation bins over ``[0, pi)`` (paper: 9).

    Returns:
        ``[B, C, nbins, H / cell_size, W / cell_size]`` float32 (float64 for float64 input),
        every ``[:, c, :, I, J]`` of unit L2 norm or all zero; no gradient.

    Raises:
        ConfigError: for a non-positive ``cell_size`` or ``nbins``.
        DataError: for images that are not 4-D, smaller than 2 x 2, or whose sides are not
            multiples of ``cell_size``.
    """
    if cell_size < 1 or nbins < 1:
        raise ConfigError(f"HOG needs cell_size >= 1 and nbins >= 1, got {cell_size}, {nbins}")
    if images.dim() != 4:
        raise DataError(f"HOG expects images [B, C, H, W], got {tuple(images.shape)}")
    b, c, h, w = images.shape
    if h < 2 or w < 2 or h % cell_size or w % cell_size:
        raise DataError(f"HOG: image sides {h}x{w} must be >= 2 and multiples of the cell size "
                        f"{cell_size}")
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        xp = F.pad(images.detach().to(dtype), (1, 1, 1, 1), mode="reflect")  # [B, C, H+2, W+2]
        gx, gy = _sobel(xp)  # [B, C, H, W] each
        mag = torch.hypot(gx, gy)
        bins = torch.floor(torch.atan2(gx, gy) / math.pi * nbins).long() % nbins  # [B, C, H, W]
        votes = torch.zeros(b, c, nbins, h, w, dtype=dtype, device=images.device)
        votes.scatter_(2, bins.unsqueeze(2), mag.unsqueeze(2))  # one vote per pixel
        hc, wc = h // cell_size, w // cell_size
        cells = votes.reshape(b, c, nbins, hc, cell_size, wc, cell_size).sum(dim=(4, 6))
        return F.normalize(cells, p=2, dim=2)


def hog_patches(images: Tensor, patch_size: int, cell_size: int = 8, nbins: int = 9) -> Tensor:
    """MaskFeat's per-patch HOG target: the cells of every ``patch_size`` patch concatenated.

    Args:
        images: ``[B, C, H, W]``, sides multiples of ``patch_size``.
        patch_size: the ViT's patch side ``p`` (a multiple of ``cell_size``).
        cell_size: HOG cell side (paper: 8 for 16-px patches).
        nbins: orientation bins (paper: 9).

    Returns:
        ``[B, (H/p)(W/p), C * nbins * (p / cell_size)^2]``, patches in row-major order (as
        :func:`~selfsup.nn.patches.patchify`), each vector ordered (channel, bin, cell row,
        cell column) as the reference's ``_get_hog_label_2d``.

    Raises:
        ConfigError: if ``cell_size`` does not divide ``patch_size``.
        DataError: as :func:`hog_cells`, or for sides that are not multiples of ``patch_size``.
    """
    _check_sizes(patch_size, cell_size, nbins)
    if images.dim() != 4 or images.shape[-2] % patch_size or images.shape[-1] % patch_size:
        raise DataError(f"HOG: images [B, C, H, W] with sides multiples of the patch size "
                        f"{patch_size} expected, got {tuple(images.shape)}")
    cells = hog_cells(images, cell_size, nbins)  # [B, C, K, Hc, Wc]
    b, c, k, hc, wc = cells.shape
    u = patch_size // cell_size
    x = cells.reshape(b, c, k, hc // u, u, wc // u, u)
    x = x.permute(0, 3, 5, 1, 2, 4, 6)  # [B, h, w, C, K, u, u]
    return x.reshape(b, (hc // u) * (wc // u), c * k * u * u)


def patches_to_cells(vectors: Tensor, grid: int, in_chans: int, patch_size: int, cell_size: int,
                     nbins: int = 9) -> Tensor:
    """The inverse of :func:`hog_patches`' layout: per-patch vectors ``[B, grid^2, C * nbins *
    u^2]`` (``u = patch_size / cell_size``; targets or a model's predictions) back to the cell
    histograms ``[B, C, nbins, grid u, grid u]`` of :func:`hog_cells`.

    Raises:
        DataError: if the vectors do not have that shape.
    """
    _check_sizes(patch_size, cell_size, nbins)
    u = patch_size // cell_size
    b = vectors.shape[0]
    if vectors.dim() != 3 or vectors.shape[1:] != (grid * grid, in_chans * nbins * u * u):
        raise DataError(f"HOG vectors must be [B, {grid * grid}, {in_chans * nbins * u * u}], "
                        f"got {tuple(vectors.shape)}")
    x = vectors.reshape(b, grid, grid, in_chans, nbins, u, u).permute(0, 3, 4, 1, 5, 2, 6)
    return x.reshape(b, in_chans, nbins, grid * u, grid * u)


def hog_glyphs(cells: Tensor, glyph_px: int = 12) -> Tensor:
    """The usual HOG picture (Dalal & Triggs' figures, scikit-image's ``hog(visualize=True)``):
    in every cell, one line per orientation bin through the cell centre along the *edge*
    direction of that bin (perpendicular to its gradient), as bright as the bin's value.

    Args:
        cells: ``[B, C, nbins, Hc, Wc]`` histograms (:func:`hog_cells`); channels are averaged.
        glyph_px: side of one cell's drawing in pixels.

    Returns:
        ``[B, 1, Hc glyph_px, Wc glyph_px]`` in [0, 1], each image scaled by its largest value.

    Raises:
        DataError: if ``cells`` is not 5-D; ConfigError: if ``glyph_px`` < 3.
    """
    if cells.dim() != 5:
        raise DataError(f"HOG cells must be [B, C, nbins, Hc, Wc], got {tuple(cells.shape)}")
    if glyph_px < 3:
        raise ConfigError(f"hog_glyphs: glyph_px must be >= 3, got {glyph_px}")
    b, _, k, hc, wc = cells.shape
    h = cells.detach().float().mean(1).clamp_min(0)  # [B, K, Hc, Wc]
    # pixel centres of one glyph in cell units, origin at the centre: u right, v down
    t = (torch.arange(glyph_px, dtype=torch.float32, device=h.device) + 0.5) / glyph_px - 0.5
    v, u = torch.meshgrid(t, t, indexing="ij")
    # bin k's gradient angle phi (atan2(gx, gy), step 2 of the module doc) points along
    # (x, y) = (sin phi, cos phi); the edge runs along (cos phi, -sin phi)
    phi = (torch.arange(k, dtype=torch.float32, device=h.device) + 0.5) * math.pi / k
    ex, ey = phi.cos().view(k, 1, 1), (-phi.sin()).view(k, 1, 1)
    dist = (u * ey - v * ex).abs() * glyph_px  # distance to the line, in output pixels
    along = (u * ex + v * ey).abs()
    masks = ((1.0 - dist / 0.75).clamp(0, 1) * (along <= 0.45)).to(h.dtype)  # [K, g, g]
    img = torch.einsum("bkij,kuv->biujv", h, masks).reshape(b, 1, hc * glyph_px, wc * glyph_px)
    top = img.flatten(1).amax(1).clamp_min(1e-12).view(b, 1, 1, 1)
    return img / top


def _sobel(xp: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's Sobel cross-correlations of a padded ``[B, C, H+2, W+2]`` batch, computed
    separably: the central difference ``x[j-1] - x[j+1]`` first, then the ``[1, 2, 1]``
    smoothing across it. The same linear filter as ``conv2d`` with ``[[1, 0, -1], [2, 0, -2],
    [1, 0, -1]]``, but a flat region gives exactly 0 (a float32 ``conv2d`` sums ``a + 2a + a -
    (a + 2a + a)`` in an order that leaves ~1e-8, which the L2 normalisation would blow up to
    a unit histogram)."""
    dx = xp[..., :, :-2] - xp[..., :, 2:]  # [B, C, H+2, W]: x[i, j-1] - x[i, j+1]
    gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
    dy = xp[..., :-2, :] - xp[..., 2:, :]  # [B, C, H, W+2]: x[i-1, j] - x[i+1, j]
    gy = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]
    return gx, gy


def _check_sizes(patch_size: int, cell_size: int, nbins: int) -> None:
    if patch_size < 1 or cell_size < 1 or nbins < 1 or patch_size % cell_size:
        raise ConfigError(f"HOG: cell_size={cell_size} must be a positive divisor of the patch "
                          f"size {patch_size} (nbins={nbins} >= 1)")
