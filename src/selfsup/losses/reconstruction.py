"""Reconstruction losses of masked image modeling, as pure tensor functions.

- :func:`mae_loss`: MAE (He et al. 2022, sec. 3 "Reconstruction target";
  facebookresearch/mae ``models_mae.py`` ``forward_loss``): mean squared error per patch between
  the predicted and the true pixels of that patch, optionally normalised per patch
  (``norm_pix_loss``: the patch's pixels minus their mean, over ``sqrt(var + 1e-6)``, the
  unbiased variance as ``torch.var``'s default), averaged over the **masked** patches only.
- :func:`simmim_loss`: SimMIM (Xie et al. 2022, sec. 3.3 "Prediction loss", microsoft/SimMIM
  ``models/simmim.py``): L1 between predicted and true pixels on the masked pixels,
  ``sum(|x - x_rec| m) / (sum(m) + 1e-5) / C``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.types import DataError

__all__ = ["mae_loss", "normalize_patches", "simmim_loss"]


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
