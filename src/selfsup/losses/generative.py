"""Pixel-reconstruction and adversarial losses of autoencoders and context encoders, as pure
tensor functions.

- :func:`reconstruction_loss`: the (denoising) autoencoder's reconstruction error (Vincent et
  al. 2008, sec. 2.2; Vincent et al. 2010, JMLR): the cross-entropy
  ``L_H(x, z) = -sum_k [x_k log z_k + (1 - x_k) log(1 - z_k)]`` of a sigmoid decoder for inputs
  in [0, 1] (``kind="bce"``; the decoder's logits are passed, ``z = sigmoid(logits)``, computed
  stably) or the squared error ``||x - z||^2`` of an affine decoder (``kind="mse"``), summed over
  the components of every sample and averaged over the batch (the papers' per-example losses;
  lisa-lab DeepLearningTutorials ``dA.py``: ``T.mean(T.sum(..., axis=1))``), or averaged over
  every component (``reduction="mean"``).
- :func:`weighted_l2`: the context encoder's reconstruction loss with the reference's overlap
  weighting (Pathak et al. 2016, eq. 1; pathak22/context-encoder ``train.lua``: ``MSECriterion``
  whose gradient is multiplied by ``wtl2Matrix``): ``mean(w * (pred - target)^2)`` over all
  elements of the predicted region, ``w`` broadcast from ``[B or 1, 1, H, W]``.
- :func:`discriminator_loss`, :func:`generator_loss`: the GAN terms of eq. 2 as the reference
  computes them (``BCECriterion`` on ``sigmoid`` outputs; here from logits): the discriminator's
  ``BCE(D(x), 1) + BCE(D(G(z)), 0)`` (``errD_real + errD_fake``) and the generator's
  ``BCE(D(G(z)), 1)`` (the non-saturating ``max log D(G(z))``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import DataError

__all__ = ["discriminator_loss", "generator_loss", "reconstruction_loss", "weighted_l2"]


def reconstruction_loss(pred: Tensor, target: Tensor, kind: str = "bce",
                        reduction: str = "sum") -> Tensor:
    """Autoencoder reconstruction error.

    Args:
        pred: decoder outputs ``[B, ...]``: logits for ``"bce"``, values for ``"mse"``.
        target: the clean input ``[B, ...]``; in [0, 1] for ``"bce"``.
        kind: ``"bce"`` (cross-entropy ``L_H``) or ``"mse"`` (squared error).
        reduction: ``"sum"`` over each sample's components, then the batch mean (the papers'
            per-example loss), or ``"mean"`` over every component.

    Returns:
        scalar loss (float32 at least).

    Raises:
        DataError: for mismatched shapes, an unknown kind or reduction.
    """
    if pred.shape != target.shape or pred.dim() < 2:
        raise DataError(f"reconstruction_loss expects pred and target of one shape [B, ...], "
                        f"got {tuple(pred.shape)}, {tuple(target.shape)}")
    p, t = pred.float(), target.float()
    if kind == "bce":
        err = F.binary_cross_entropy_with_logits(p, t, reduction="none")
    elif kind == "mse":
        err = (p - t).pow(2)
    else:
        raise DataError(f"reconstruction_loss: kind must be bce or mse, got {kind!r}")
    if reduction == "sum":
        return err.flatten(1).sum(1).mean()
    if reduction == "mean":
        return err.mean()
    raise DataError(f"reconstruction_loss: reduction must be sum or mean, got {reduction!r}")


def weighted_l2(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``mean(weight * (pred - target)^2)`` over all ``B C H W`` elements.

    Args:
        pred, target: ``[B, C, H, W]``.
        weight: ``[B, 1, H, W]`` or ``[1, 1, H, W]`` (or ``[H, W]``) per-pixel weights, shared by
            the channels (the reference's ``wtl2Matrix``: 1 in the hole, 10 on the overlap).

    Raises:
        DataError: on mismatched shapes.
    """
    if weight.dim() == 2:
        weight = weight[None, None]
    if (pred.shape != target.shape or pred.dim() != 4 or weight.dim() != 4
            or weight.shape[1] != 1 or weight.shape[2:] != pred.shape[2:]
            or weight.shape[0] not in (1, pred.shape[0])):
        raise DataError(f"weighted_l2 expects pred/target [B, C, H, W] and weight [B|1, 1, H, W],"
                        f" got {tuple(pred.shape)}, {tuple(target.shape)}, {tuple(weight.shape)}")
    return (weight.float() * (pred.float() - target.float()).pow(2)).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``BCE(sigmoid(real), 1) + BCE(sigmoid(fake), 0)``, each a batch mean (``[B]`` or ``[B, 1]``
    logits)."""
    real = F.binary_cross_entropy_with_logits(real_logits.float(),
                                              torch.ones_like(real_logits, dtype=torch.float))
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(),
                                              torch.zeros_like(fake_logits, dtype=torch.float))
    return real + fake


def generator_loss(fake_logits: Tensor) -> Tensor:
    """``BCE(sigmoid(fake), 1)``: the generator's term, its fakes labelled real."""
    return F.binary_cross_entropy_with_logits(fake_logits.float(),
                                              torch.ones_like(fake_logits, dtype=torch.float))
