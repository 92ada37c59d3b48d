"""Pixel-level losses between two crops of one image: which feature-map pixels of the two views
show the same place of the source image, and PixPro's pixel-to-propagation consistency.

Xie et al. 2021, "Propagate Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual
Representation Learning", sec. 3.1-3.2.

Geometry (sec. 3.1, eq. 1). A view is the crop box ``(y0, x0, y1, x1)`` of the source image in
normalised coordinates (``[0, 1]`` along each side), resized to the view; a horizontally flipped
view has ``x0 > x1`` (the box runs from the view's left edge to its right edge), which is how
:class:`~selfsup.data.augment.Augment` records flips and how the authors' code swaps coordinates.
Pixel ``(r, c)`` of an ``h x w`` feature map of the view is the bin centred at
``(y0 + (r + 0.5) (y1 - y0) / h, x0 + (c + 0.5) (x1 - x0) / w)``. The distance of two pixels of
the two views is the Euclidean distance of their centres divided by the larger of the two views'
bin diagonals ``sqrt(((y1 - y0) / h)^2 + ((x1 - x0) / w)^2)`` (so it is measured in feature-map
pixels, whatever the crops' scales); pairs closer than the threshold ``T = 0.7`` are positive
(``A(i, j) = 1``, eq. 1; strict ``<`` as the authors' code).

Loss (sec. 3.2, eq. 5). With ``y`` the propagated pixels of one view (online branch + PPM) and
``x'`` the momentum encoder's pixels of the other, ``L = -cos(y_i, x'_j) - cos(y_j, x'_i)`` over
the positive pairs. As in the authors' code each direction is ``-2 x`` the mean cosine over an
image's positive pairs, averaged over the images (an image without a positive pair contributes 0),
so each direction lies in ``[-2, 2]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = [
    "PIXPRO_THRESHOLD",
    "bin_diagonal",
    "pixel_centers",
    "pixel_consistency_loss",
    "pixel_distance",
    "pixpro_loss",
    "positive_pairs",
]

PIXPRO_THRESHOLD = 0.7  # T of eq. 1 (sec. 4.1 / authors' code pixpro-pos-ratio)


def _check_boxes(boxes: Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
        raise DataError(f"{name} expects boxes [B, 4] as (y0, x0, y1, x1), got "
                        f"{tuple(boxes.shape)}")


def _check_size(h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise DataError(f"feature map sizes must be >= 1, got {h}x{w}")


def pixel_centers(boxes: Tensor, h: int, w: int) -> Tensor:
    """Source-image centres of the ``h x w`` feature-map pixels of each view.

    Args:
        boxes: crop boxes ``[B, 4]`` ``(y0, x0, y1, x1)``, normalised (``x0 > x1``: flipped).
        h: feature-map rows; w: feature-map columns.

    Returns:
        ``[B, h * w, 2]`` as ``(y, x)``, pixels in row-major order (``r * w + c``).

    Raises:
        DataError: for boxes not ``[B, 4]`` or a size below 1.
    """
    _check_boxes(boxes, "pixel_centers")
    _check_size(h, w)
    y0, x0, y1, x1 = boxes.unbind(1)  # [B] each
    r = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) / h  # [h]
    c = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) / w  # [w]
    cy = y0[:, None] + r[None, :] * (y1 - y0)[:, None]  # [B, h]
    cx = x0[:, None] + c[None, :] * (x1 - x0)[:, None]  # [B, w]
    grid_y = cy[:, :, None].expand(-1, h, w)
    grid_x = cx[:, None, :].expand(-1, h, w)
    return torch.stack([grid_y, grid_x], dim=-1).reshape(boxes.shape[0], h * w, 2)


def bin_diagonal(boxes: Tensor, h: int, w: int) -> Tensor:
    """Diagonal of one feature-map bin in normalised source units, ``[B]``:
    ``sqrt(((y1 - y0) / h)^2 + ((x1 - x0) / w)^2)`` (a flip does not change it).

    Raises:
        DataError: for boxes not ``[B, 4]`` or a size below 1.
    """
    _check_boxes(boxes, "bin_diagonal")
    _check_size(h, w)
    y0, x0, y1, x1 = boxes.unbind(1)
    return torch.sqrt(((y1 - y0) / h) ** 2 + ((x1 - x0) / w) ** 2)


def pixel_distance(boxes_a: Tensor, boxes_b: Tensor, size_a: tuple[int, int],
                   size_b: tuple[int, int]) -> Tensor:
    """Normalised distances between all pixel pairs of two views of each image (sec. 3.1).

    Args:
        boxes_a: crop boxes of the first views ``[B, 4]``.
        boxes_b: crop boxes of the second views ``[B, 4]``.
        size_a: ``(h, w)`` of the first views' feature maps.
        size_b: ``(h', w')`` of the second views' feature maps.

    Returns:
        ``[B, h w, h' w']``: centre distance / max(bin diagonal of a, bin diagonal of b).

    Raises:
        DataError: for boxes not ``[B, 4]`` of one batch size or a size below 1.
    """
    _check_boxes(boxes_a, "pixel_distance")
    _check_boxes(boxes_b, "pixel_distance")
    if boxes_a.shape != boxes_b.shape:
        raise DataError(f"pixel_distance: boxes {tuple(boxes_a.shape)} and "
                        f"{tuple(boxes_b.shape)} differ")
    boxes_a, boxes_b = boxes_a.float(), boxes_b.float()
    ca = pixel_centers(boxes_a, *size_a)  # [B, Na, 2]
    cb = pixel_centers(boxes_b, *size_b)  # [B, Nb, 2]
    d = torch.cdist(ca, cb, compute_mode="donot_use_mm_for_euclid_dist")  # [B, Na, Nb]
    diag = torch.maximum(bin_diagonal(boxes_a, *size_a), bin_diagonal(boxes_b, *size_b))
    return d / diag.clamp_min(1e-12)[:, None, None]


def positive_pairs(boxes_a: Tensor, boxes_b: Tensor, size_a: tuple[int, int],
                   size_b: tuple[int, int], threshold: float = PIXPRO_THRESHOLD) -> Tensor:
    """``A(i, j) = [dist(i, j) < T]`` (eq. 1) as a bool ``[B, h w, h' w']`` (see
    :func:`pixel_distance`).

    Raises:
        DataError: as :func:`pixel_distance`.
        ConfigError: if ``threshold`` is not a positive finite number.
    """
    if not (math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"pixel threshold must be a positive number, got {threshold}")
    return pixel_distance(boxes_a, boxes_b, size_a, size_b) < threshold


def pixel_consistency_loss(y: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """One direction of eq. 5: ``-2 mean_b [sum_ij A_ij cos(y_i, x_j) / (sum_ij A_ij + 1e-6)]``.

    Args:
        y: propagated online features of one view ``[B, C, h, w]``.
        x: momentum features of the other view ``[B, C, h', w']`` (no gradient is taken through
            them by the caller).
        mask: positive pairs ``[B, h w, h' w']`` (bool or 0/1).

    Returns:
        Scalar in ``[-2, 2]`` (float32 or float64; computed with autocast off).

    Raises:
        DataError: for mismatched shapes.
    """
    if y.dim() != 4 or x.dim() != 4 or y.shape[:2] != x.shape[:2]:
        raise DataError(f"pixel_consistency_loss: y {tuple(y.shape)} and x {tuple(x.shape)} must "
                        "be [B, C, h, w] maps of one batch and channel size")
    n_y, n_x = y.shape[2] * y.shape[3], x.shape[2] * x.shape[3]
    if mask.shape != (y.shape[0], n_y, n_x):
        raise DataError(f"pixel_consistency_loss: mask must be {(y.shape[0], n_y, n_x)}, got "
                        f"{tuple(mask.shape)}")
    with torch.autocast(y.device.type, enabled=False):
        yn = F.normalize(y.flatten(2).float(), dim=1)  # [B, C, Ny]
        xn = F.normalize(x.flatten(2).float(), dim=1)  # [B, C, Nx]
        cos = torch.bmm(yn.transpose(1, 2), xn)  # [B, Ny, Nx]
        a = mask.to(cos.dtype)
        per_image = (cos * a).sum(dim=(1, 2)) / (a.sum(dim=(1, 2)) + 1e-6)  # [B]
    return -2.0 * per_image.mean()


def pixpro_loss(y1: Tensor, y2: Tensor, x1: Tensor, x2: Tensor, boxes1: Tensor, boxes2: Tensor,
                threshold: float = PIXPRO_THRESHOLD) -> Tensor:
    """Symmetric pixel-to-propagation consistency (eq. 5): ``L(y1, x2') + L(y2, x1')``.

    Args:
        y1, y2: propagated online features of views 1 and 2 ``[B, C, h, w]``.
        x1, x2: momentum-encoder features of views 1 and 2 ``[B, C, h, w]``.
        boxes1, boxes2: the views' crop boxes ``[B, 4]`` ``(y0, x0, y1, x1)``, normalised.
        threshold: ``T`` of eq. 1 (paper: 0.7).

    Returns:
        Scalar in ``[-4, 4]``; ``-4`` when every positive pair agrees perfectly.

    Raises:
        DataError: for mismatched shapes. ConfigError: for a non-positive threshold.
    """
    size1, size2 = (y1.shape[2], y1.shape[3]), (y2.shape[2], y2.shape[3])
    if (x1.shape[2], x1.shape[3]) != size1 or (x2.shape[2], x2.shape[3]) != size2:
        raise DataError("pixpro_loss: online and momentum maps of a view must have one size")
    a12 = positive_pairs(boxes1, boxes2, size1, size2, threshold)  # [B, N1, N2]
    return pixel_consistency_loss(y1, x2, a12) + pixel_consistency_loss(y2, x1, a12.transpose(1, 2))
