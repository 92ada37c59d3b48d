"""Reconstruction losses of masked image modeling, as pure tensor functions.

- :func:`mae_loss`: MAE (He et al. 2022, sec. 3 "Reconstruction target";
  facebookresearch/mae ``models_mae.py`` ``forward_loss``): mean squared error per patch between
  the predicted and the true pixels of that patch, optionally normalised per patch
  (``norm_pix_loss``: the patch's pixels minus their mean, over ``sqrt(var + 1e-6)``, the
  unbiased variance as ``torch.var``'s default), averaged over the **masked** patches only.
- :func:`simmim_loss`: SimMIM (Xie et al. 2022, sec. 3.3 "Prediction loss", microsoft/SimMIM
  ``models/simmim.py``): L1 between predicted and true pixels on the masked pixels,
  ``sum(|x - x_rec| m) / (sum(m) + 1e-5) / C``.
- :func:`deep_supervision_loss`: DeepMIM (Ren et al. 2023, sec. 3; OliverRensu/DeepMIM
  ``engine_pretrain.py``: ``loss1 + loss2 + loss3 + loss4``): the weighted sum over decoders on
  several encoder layers of :func:`mae_loss`, every decoder predicting the same masked patches.
- :func:`multiscale_masks`, :func:`local_pixel_targets`, :func:`localmim_loss`: LocalMIM (Wang et
  al. 2023, sec. 3.2-3.3; Haoqing-Wang/LocalMIM ``ViT/models_mim.py`` ``recal_mask``,
  ``forward_loss``): at every scale ``l`` a prediction per region of that scale's grid, MSE per
  region (mean over the feature) weighted by the region's masked fraction ``M_l``,
  ``sum_i mse_i M_l,i / sum_i M_l,i``, summed over the scales with weights (all 1 there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import DataError

__all__ = ["deep_supervision_loss", "local_pixel_targets", "localmim_loss", "mae_loss",
           "multiscale_masks", "normalize_patches", "simmim_loss"]


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's per-patch pixel normalisation: ``(t - mean) / sqrt(var + eps)`` over the last dim of
    ``target`` ``[B, N, P]`` (unbiased variance, as the reference's ``target.var(dim=-1)``)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MAE's loss: per-patch MSE, averaged over masked patches.

    Args:
        pred: predicted pixels ``[B, N, P]`` (``P = p*p*C``).
        target: true pixels ``[B, N, P]`` (:func:`~selfsup.nn.patches.patchify` of the images).
        mask: ``[B, N]``, 1/True where a patch was masked (the only patches that count).
        norm_pix: normalise every target patch by its own mean and variance first.

    Returns:
        scalar loss (float32 at least).

    Raises:
        DataError: on mismatched shapes or a mask with no masked patch.
    """
    if pred.shape != target.shape or pred.dim() != 3 or mask.shape != pred.shape[:2]:
        raise DataError(f"mae_loss expects pred/target [B, N, P] and mask [B, N], got "
                        f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}")
    m = mask.to(torch.float32)
    if not bool(m.sum() > 0):
        raise DataError("mae_loss: the mask hides no patch (method_args.mask_ratio is too low "
                        "for this patch grid)")
    t = target.float()
    if norm_pix:
        t = normalize_patches(t)
    per_patch = (pred.float() - t).pow(2).mean(dim=-1)  # [B, N]
    return (per_patch * m).sum() / m.sum()


def simmim_loss(pred: Tensor, images: Tensor, pixel_mask: Tensor) -> Tensor:
    """SimMIM's L1 on masked pixels.

    Args:
        pred: reconstructed images ``[B, C, H, W]``.
        images: the input images ``[B, C, H, W]`` (the normalised encoder input).
        pixel_mask: ``[B, 1, H, W]`` or ``[B, H, W]``, 1 where the pixel was masked.

    Returns:
        ``sum(|images - pred| * mask) / (sum(mask) + 1e-5) / C``: the mean absolute error per
        masked pixel and channel (the mask is counted once per pixel, as the reference's).

    Raises:
        DataError: on mismatched shapes.
    """
    if pixel_mask.dim() == 3:
        pixel_mask = pixel_mask.unsqueeze(1)
    if pred.shape != images.shape or pred.dim() != 4 or pixel_mask.shape != (
            images.shape[0], 1, *images.shape[2:]):
        raise DataError(f"simmim_loss expects pred/images [B, C, H, W] and mask [B, 1, H, W], "
                        f"got {tuple(pred.shape)}, {tuple(images.shape)}, "
                        f"{tuple(pixel_mask.shape)}")
    m = pixel_mask.to(torch.float32)
    err = (images.float() - pred.float()).abs() * m
    return err.sum() / (m.sum() + 1e-5) / images.shape[1]


def deep_supervision_loss(preds: Sequence[Tensor], target: Tensor, mask: Tensor,
                          weights: Sequence[float] | None = None, norm_pix: bool = True
                          ) -> tuple[Tensor, list[Tensor]]:
    """DeepMIM's loss: ``sum_l w_l mae_loss(pred_l, target, mask)``.

    Args:
        preds: one prediction ``[B, N, P]`` per supervised encoder layer.
        target, mask, norm_pix: as :func:`mae_loss` (shared by every layer).
        weights: one weight per prediction; None = all 1 (the reference's plain sum).

    Returns:
        ``(total, per-layer losses)``.

    Raises:
        DataError: without predictions, for a weight count that does not match, or as
            :func:`mae_loss`.
    """
    w = [1.0] * len(preds) if weights is None else list(weights)
    if not preds or len(w) != len(preds):
        raise DataError(f"deep_supervision_loss needs one weight per prediction, got "
                        f"{len(preds)} predictions and {len(w)} weights")
    parts = [mae_loss(p, target, mask, norm_pix) for p in preds]
    return torch.stack([wi * li for wi, li in zip(w, parts, strict=True)]).sum(), parts


def multiscale_masks(mask: Tensor, grid: int, scales: Sequence[float]) -> list[Tensor]:
    """LocalMIM's mask at every scale (models_mim.py ``recal_mask``).

    Args:
        mask: ``[B, grid * grid]`` patch mask, 1 = removed.
        grid: patch grid side.
        scales: grid multipliers: ``s >= 1`` an integer (every patch becomes ``s x s`` regions,
            each with the patch's mask), ``s < 1`` with integer ``1 / s`` dividing ``grid``
            (a region of ``1 / s x 1 / s`` patches weighs their masked fraction).

    Returns:
        One float ``[B, (grid * s) ** 2]`` per scale, regions row-major.

    Raises:
        DataError: for a mask that is not ``[B, grid * grid]`` or a scale the grid cannot take.
    """
    if mask.dim() != 2 or mask.shape[1] != grid * grid:
        raise DataError(f"multiscale_masks expects a mask [B, {grid * grid}], got "
                        f"{tuple(mask.shape)}")
    m = mask.float().reshape(-1, 1, grid, grid)
    out = []
    for s in scales:
        k = round(s) if s >= 1 else round(1 / s)
        if k < 1 or abs((k if s >= 1 else 1 / k) - s) > 1e-9 or (s < 1 and grid % k):
            raise DataError(f"multiscale_masks: scale {s} is neither an integer nor 1/k with k "
                            f"dividing the grid {grid}")
        ms = (m.repeat_interleave(k, 2).repeat_interleave(k, 3) if s >= 1
              else F.avg_pool2d(m, k))
        out.append(ms.flatten(1))
    return out


def local_pixel_targets(images: Tensor, region: int, eps: float = 1e-6) -> Tensor:
    """LocalMIM's pixel target at one scale (sec. 3.2): the ``region x region x C`` pixels of
    every region, normalised by that region's own mean and (unbiased) variance.

    Args:
        images: ``[B, C, H, W]``, sides multiples of ``region``.
        region: region side in pixels.

    Returns:
        ``[B, (H / region)(W / region), region * region * C]``, regions row-major, each vector
        ordered (row, column, channel) as :func:`~selfsup.nn.patches.patchify`.

    Raises:
        DataError: for sides that are not multiples of ``region`` or a region of one value.
    """
    b, c, h, w = images.shape
    if region < 1 or h % region or w % region or region * region * c < 2:
        raise DataError(f"local_pixel_targets: region {region} must divide the sides {h}x{w} "
                        f"and hold at least 2 values (C={c})")
    x = images.float().reshape(b, c, h // region, region, w // region, region)
    x = x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // region) * (w // region), -1)
    return normalize_patches(x, eps)


def localmim_loss(preds: Sequence[Tensor], targets: Sequence[Tensor], masks: Sequence[Tensor],
                  weights: Sequence[float] | None = None) -> tuple[Tensor, list[Tensor]]:
    """LocalMIM's multi-scale loss (models_mim.py ``forward_loss``):
    ``sum_l w_l sum_i mean_d (pred_l,i - target_l,i)^2 M_l,i / sum_i M_l,i``.

    Args:
        preds, targets: per scale ``[B, N_l, D_l]`` predictions and targets.
        masks: per scale ``[B, N_l]`` region weights (:func:`multiscale_masks`).
        weights: one per scale; None = all 1 (the reference's plain sum).

    Returns:
        ``(total, per-scale losses)``.

    Raises:
        DataError: for mismatched counts or shapes, or a scale whose mask hides nothing.
    """
    w = [1.0] * len(preds) if weights is None else list(weights)
    if not preds or not len(preds) == len(targets) == len(masks) == len(w):
        raise DataError(f"localmim_loss needs as many targets, masks and weights as "
                        f"predictions, got {len(preds)}, {len(targets)}, {len(masks)}, {len(w)}")
    parts = []
    for p, t, m in zip(preds, targets, masks, strict=True):
        if p.shape != t.shape or p.dim() != 3 or m.shape != p.shape[:2]:
            raise DataError(f"localmim_loss expects pred/target [B, N, D] and mask [B, N], got "
                            f"{tuple(p.shape)}, {tuple(t.shape)}, {tuple(m.shape)}")
        mf = m.float()
        if not bool(mf.sum() > 0):
            raise DataError("localmim_loss: a scale's mask hides no region")
        parts.append(((p.float() - t.float()).pow(2).mean(dim=-1) * mf).sum() / mf.sum())
    return torch.stack([wi * li for wi, li in zip(w, parts, strict=True)]).sum(), parts
