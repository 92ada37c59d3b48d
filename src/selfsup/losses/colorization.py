"""Colorization's classification loss over quantised ab colours, as pure tensor functions.

Zhang, Isola & Efros 2016, "Colorful Image Colorization" (ECCV), sec. 2; the released training
layers are richzhang/colorization ``resources/caffe_traininglayers.py`` (``NNEncode``,
``PriorFactor``, ``NonGrayMaskLayer``) and the loss ``models/colorization_train_val_v2.prototxt``.

- :func:`soft_encode` (sec. 2.1, "soft-encoding scheme"): the ground-truth ab value of a pixel
  becomes a distribution over its ``k`` nearest bins (5 in the paper; the released layer uses
  10), weighted by a Gaussian kernel of the distance (sigma 5) and normalised to sum to 1.
- :func:`smooth_prior` and :func:`rebalance_weights` (sec. 2.2, eqs. 3-4): the empirical
  distribution ``p`` of the quantised colours of the training data is smoothed with a Gaussian
  kernel over the bins (sigma 5), mixed with the uniform distribution,
  ``w ~ ((1 - lambda) p~ + lambda / Q) ^ -1`` (lambda 0.5), and normalised so that the expected
  weight under the smoothed prior is 1, ``sum_q p~_q w_q = 1`` (``PriorFactor``: alpha 1,
  gamma 0.5; the reference's uniform covers the bins with non-zero prior, which with a smoothed
  prior over its 313 bins is all of them, so ``1 / Q`` is the same).
- :func:`rebalanced_cross_entropy` (eq. 2 with eq. 3): the multinomial cross-entropy of the
  predicted distribution against the soft-encoded target at every pixel, weighted by the
  rebalancing weight of the pixel's nearest bin (``v(Z_hw) = w_q*``, ``q* = argmax_q Z_hw,q``)
  and by the pixel's image mask (``NonGrayMaskLayer``: 0 for grey images), summed over the
  pixels and averaged over the images (the reference's loss layer divides by the batch size).
  The weight multiplies the gradient of each pixel as ``ClassRebalanceMultLayer`` does.
- :func:`annealed_mean` (sec. 2.3, eq. 5): ``H(Z) = E[f_T(Z)]``, the mean ab of the
  re-tempered distribution ``f_T(z) = exp(log z / T) / sum_q exp(log z_q / T)`` (T = 0.38), which
  is ``softmax(logits / T)``; :func:`mode_ab` is its ``T -> 0`` limit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["annealed_mean", "bin_distances", "mode_ab", "rebalance_weights",
           "rebalanced_cross_entropy", "smooth_prior", "soft_cross_entropy", "soft_encode"]


def bin_distances(ab: Tensor, bins: Tensor) -> Tensor:
    """Squared Euclidean distances ``[P, Q]`` of ab points ``[P, 2]`` to bins ``[Q, 2]``, in float32
    at least (never under autocast)."""
    dtype = torch.promote_types(ab.dtype, torch.float32)
    a, c = ab.to(dtype), bins.to(device=ab.device, dtype=dtype)
    return (a.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(-1)


def soft_encode(ab: Tensor, bins: Tensor, neighbors: int = 5, sigma: float = 5.0
                ) -> tuple[Tensor, Tensor]:
    """Soft-encode ab points over their nearest bins (sec. 2.1).

    Args:
        ab: ground-truth ab values ``[P, 2]``.
        bins: the bin centres ``[Q, 2]``.
        neighbors: ``k``, how many nearest bins share the point (at most ``Q``).
        sigma: the Gaussian kernel's sigma, in ab units.

    Returns:
        ``(index, weight)``, both ``[P, k]``: the ``k`` nearest bins of every point, nearest
        first (so ``index[:, 0]`` is the hard quantisation ``argmax_q Z_q``), and their weights
        ``exp(-d^2 / (2 sigma^2))`` normalised to sum to 1 per point.

    Raises:
        ConfigError: if ``neighbors`` is not in [1, Q] or ``sigma`` <= 0.
        DataError: if ``ab`` is not ``[P, 2]`` or ``bins`` not ``[Q, 2]``.
    """
    if ab.dim() != 2 or ab.shape[1] != 2 or bins.dim() != 2 or bins.shape[1] != 2:
        raise DataError(f"soft_encode expects ab [P, 2] and bins [Q, 2], got {tuple(ab.shape)} "
                        f"and {tuple(bins.shape)}")
    if not 1 <= neighbors <= bins.shape[0]:
        raise ConfigError(f"method_args.neighbors must be in [1, {bins.shape[0]}] (the number of "
                          f"bins), got {neighbors}")
    if sigma <= 0:
        raise ConfigError(f"method_args.sigma must be > 0, got {sigma}")
    d2, index = bin_distances(ab, bins).topk(neighbors, dim=1, largest=False)  # sorted ascending
    # the kernel's normaliser is shifted by the nearest distance (a constant per point), so a
    # point far outside the gamut keeps finite weights
    weight = torch.softmax(-d2 / (2 * sigma ** 2), dim=1)
    return index, weight


def smooth_prior(counts: Tensor, bins: Tensor, sigma: float = 5.0) -> Tensor:
    """The smoothed empirical colour distribution ``p~`` ``[Q]`` (sec. 2.2): the normalised bin
    counts ``[Q]`` convolved with a Gaussian kernel of ``sigma`` ab units over the bin centres
    ``[Q, 2]``, ``p~_q ~ sum_r exp(-|c_q - c_r|^2 / (2 sigma^2)) p_r``, renormalised to sum to 1
    over the bins (mass the kernel spreads off the gamut is dropped). ``sigma`` 0: no smoothing.
    Computed in float64 (on the counts' device, without a host sync). All-zero counts give the
    uniform distribution.

    Raises:
        ConfigError: if ``sigma`` < 0. DataError: if ``counts`` is not ``[Q]``.
    """
    if counts.dim() != 1 or counts.shape[0] != bins.shape[0]:
        raise DataError(f"smooth_prior expects counts [{bins.shape[0]}], got {tuple(counts.shape)}")
    if sigma < 0:
        raise ConfigError(f"method_args.prior_sigma must be >= 0, got {sigma}")
    p = counts.to(torch.float64)
    total = p.sum()
    p = p / total.clamp_min(1e-300)
    if sigma > 0:
        c = bins.to(device=p.device, dtype=torch.float64)
        kernel = torch.exp(-torch.cdist(c, c).pow(2) / (2 * sigma ** 2))  # [Q, Q], symmetric
        p = kernel @ p
    # no host sync: all-zero counts select the uniform distribution on the device
    return torch.where(total > 0, p / p.sum().clamp_min(1e-300), 1.0 / p.numel())


def rebalance_weights(prior: Tensor, lam: float = 0.5) -> Tensor:
    """Class-rebalancing weights ``w`` ``[Q]`` (eq. 4) of a smoothed prior ``p~`` ``[Q]``:
    ``w ~ ((1 - lam) p~ + lam / Q) ^ -1``, scaled so that ``sum_q p~_q w_q = 1``. ``lam = 1``
    gives ``w = 1`` (no rebalancing); ``lam = 0`` divides by the prior itself. Float64.

    Raises:
        ConfigError: if ``lam`` is outside [0, 1], or ``lam = 0`` with an empty bin.
    """
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"method_args.rebalance_lambda must be in [0, 1], got {lam}")
    p = prior.to(torch.float64)
    mix = (1.0 - lam) * p + lam / p.numel()
    if lam == 0.0 and bool((mix <= 0).any()):
        raise ConfigError("method_args.rebalance_lambda=0 needs a prior with no empty bin")
    w = 1.0 / mix
    return w / (p * w).sum()


def soft_cross_entropy(logits: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """Per-pixel cross-entropy ``- sum_q Z_q log softmax(logits)_q`` of the scores
    ``[B, Q, h, w]`` against the soft targets ``(index, weight)`` ``[B, h, w, k]``
    (:func:`soft_encode`): ``[B, h, w]``, in float32 at least (the log-softmax runs in float32
    under autocast).

    Raises:
        DataError: on mismatched shapes.
    """
    b, _, h, w = logits.shape if logits.dim() == 4 else (0, 0, 0, 0)
    if logits.dim() != 4 or index.shape[:3] != (b, h, w) or index.shape != weight.shape:
        raise DataError(f"soft_cross_entropy expects logits [B, Q, h, w] and index/weight "
                        f"[B, h, w, k], got {tuple(logits.shape)}, {tuple(index.shape)}, "
                        f"{tuple(weight.shape)}")
    logp = F.log_softmax(logits.float(), dim=1).permute(0, 2, 3, 1)  # [B, h, w, Q]
    return -(weight.to(logp) * logp.gather(-1, index)).sum(-1)


def rebalanced_cross_entropy(logits: Tensor, index: Tensor, weight: Tensor,
                             pixel_weight: Tensor) -> Tensor:
    """Eq. 2: ``(1 / B) sum_{b,h,w} v_bhw (- sum_q Z_bhwq log softmax(logits)_bhwq)``.

    Args:
        logits: ``[B, Q, h, w]`` scores of the bins at every pixel.
        index: ``[B, h, w, k]`` the soft target's bins (:func:`soft_encode`).
        weight: ``[B, h, w, k]`` their probabilities (summing to 1 over ``k``).
        pixel_weight: ``[B, h, w]`` the pixel weights ``v`` (rebalancing times the grey mask).

    Returns:
        The scalar loss, in float32 at least.

    Raises:
        DataError: on mismatched shapes.
    """
    ce = soft_cross_entropy(logits, index, weight)
    if pixel_weight.shape != ce.shape:
        raise DataError(f"rebalanced_cross_entropy expects pixel_weight {tuple(ce.shape)}, got "
                        f"{tuple(pixel_weight.shape)}")
    return (pixel_weight.to(ce) * ce).sum() / max(ce.shape[0], 1)


def annealed_mean(logits: Tensor, bins: Tensor, temperature: float = 0.38) -> Tensor:
    """The annealed-mean ab (eq. 5) of bin scores ``[B, Q, h, w]`` -> ``[B, 2, h, w]``:
    ``sum_q softmax(logits / T)_q c_q``. ``T = 1`` is the mean, ``T -> 0`` the mode.

    Raises:
        ConfigError: if ``temperature`` <= 0.
    """
    if temperature <= 0:
        raise ConfigError(f"method_args.temperature must be > 0, got {temperature}")
    prob = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", prob, bins.to(prob))


def mode_ab(logits: Tensor, bins: Tensor) -> Tensor:
    """The ab of the most probable bin at every pixel: ``[B, Q, h, w]`` -> ``[B, 2, h, w]``."""
    return bins.to(device=logits.device, dtype=torch.float32)[logits.argmax(1)].permute(0, 3, 1, 2)
