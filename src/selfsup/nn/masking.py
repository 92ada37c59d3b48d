"""Patch-mask samplers for masked image modeling: MAE's and SimMIM's random masks.

Every sampler draws one mask per sample over a ViT's ``H x W`` patch grid (patch ``n`` is row
``n // W``, column ``n % W``) as index or boolean tensors a method hands to its encoder, so masks
can be sampled on the data side (a collator) or on the training device. Randomness comes from
``generator`` if given (drawn on its device and moved to ``device``: a CPU generator gives the
same masks on every device), else from torch's global RNG.

- :func:`random_masking`: MAE's uniform per-sample shuffle (He et al. 2022, sec. 3).
- :func:`simmim_mask`: SimMIM's random masking of coarse mask patches (Xie et al. 2022, sec. 3.1).

The block samplers (BEiT, I-JEPA) are in :mod:`selfsup.nn.block_masks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.types import ConfigError

__all__ = ["Device", "MaskSample", "random_masking", "simmim_mask"]

Device = torch.device | str | None

@dataclass(frozen=True)
class MaskSample:
    """One MAE mask per sample (the outputs of MAE's ``random_masking`` without the gather).

    Attributes:
        keep: ``[B, K]`` int64 indices of the visible patches in shuffle order
            (``ids_shuffle[:, :K]``); ``x.gather(1, keep[..., None].expand(-1, -1, D))`` gives
            the encoder's input.
        mask: ``[B, N]`` bool in the original patch order, True where a patch is removed.
        ids_restore: ``[B, N]`` int64 inverse permutation: gathering ``[visible, mask tokens]``
            with it puts every token back at its patch position (MAE's decoder).
    """

    keep: Tensor
    mask: Tensor
    ids_restore: Tensor


def random_masking(batch: int, num_patches: int, mask_ratio: float, *, device: Device = None,
                   generator: torch.Generator | None = None) -> MaskSample:
    """MAE's per-sample random masking (He et al. 2022, sec. 3 "Masking"; ``random_masking``).

    Each sample gets uniform noise ``[N]``; ``ids_shuffle = argsort(noise)`` (ascending: small
    is kept), ``ids_restore = argsort(ids_shuffle)`` and the first
    ``K = int(N * (1 - mask_ratio))`` shuffled patches are kept, computed exactly as the
    reference (``int`` truncates: 7 patches at ratio 0.5 keep 3), but at least 1.

    Args:
        batch: number of samples ``B`` (>= 1).
        num_patches: patches per sample ``N`` (>= 1).
        mask_ratio: fraction removed, in ``[0, 1)`` (MAE: 0.75).
        device: where the returned tensors live (default CPU).
        generator: source of the noise; None uses torch's global RNG on ``device``.

    Returns:
        :class:`MaskSample` with ``keep [B, K]``, ``mask [B, N]`` (``N - K`` True per row) and
        ``ids_restore [B, N]``.

    Raises:
        ConfigError: for non-positive sizes or ``mask_ratio`` outside ``[0, 1)``.
    """
    _positive(batch=batch, num_patches=num_patches)
    _ratio(mask_ratio)
    len_keep = max(1, int(num_patches * (1 - mask_ratio)))
    noise = _rand((batch, num_patches), device, generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=noise.device)
    mask[:, :len_keep] = False  # in shuffle order, then back to patch order
    return MaskSample(keep=ids_shuffle[:, :len_keep], mask=mask.gather(1, ids_restore),
                      ids_restore=ids_restore)


def simmim_mask(batch: int, grid: int, mask_patch: int, model_patch: int, mask_ratio: float, *,
                device: Device = None, generator: torch.Generator | None = None) -> Tensor:
    """SimMIM's random masking of coarse mask patches (Xie et al. 2022, sec. 3.1;
    ``data_simmim.py`` ``MaskGenerator``).

    The model sees a ``grid x grid`` token grid (image size / ``model_patch``). Masking is
    decided on the coarser ``grid / scale`` grid of ``mask_patch``-pixel patches, with
    ``scale = mask_patch // model_patch`` tokens per side: per sample exactly
    ``ceil(M * mask_ratio)`` of its ``M = (grid / scale)^2`` mask patches are drawn without
    replacement, each masking its aligned ``scale x scale`` tokens (SimMIM: 192 px, model patch
    4, mask patch 32, ratio 0.6 masks 22 of 36). Small images need a smaller mask patch: the
    caller scales it, e.g. 32 px images with model patch 4 (grid 8) and mask patch 8 (scale 2).

    Args:
        batch: number of samples ``B`` (>= 1).
        grid: model tokens per side (>= 1).
        mask_patch: mask patch size in pixels, a multiple of ``model_patch``.
        model_patch: the model's patch size in pixels (>= 1).
        mask_ratio: fraction of mask patches masked, in ``[0, 1)`` (SimMIM: 0.6).
        device: where the mask lives (default CPU).
        generator: source of randomness; None uses torch's global RNG on ``device``.

    Returns:
        ``[B, grid * grid]`` bool, True where a token is masked.

    Raises:
        ConfigError: naming ``method_args.mask_patch_size`` (and listing the sizes that work)
            when ``mask_patch`` is not a multiple of ``model_patch`` or ``grid`` is not a
            multiple of ``scale``; for non-positive sizes or a ratio outside ``[0, 1)``.
    """
    _positive(batch=batch, grid=grid, model_patch=model_patch, mask_patch_size=mask_patch)
    _ratio(mask_ratio)
    scale = mask_patch // model_patch
    if mask_patch % model_patch or grid % scale:
        ok = ", ".join(str(model_patch * d) for d in range(1, grid + 1) if grid % d == 0)
        raise ConfigError(
            f"method_args.mask_patch_size = {mask_patch} does not tile a {grid} x {grid} grid of "
            f"{model_patch} px patches: it must be a multiple of the model patch whose scale "
            f"divides the grid; sizes that work: {ok}"
        )
    side = grid // scale
    count = int(math.ceil(side * side * mask_ratio))  # as the reference's int(np.ceil(...))
    order = torch.argsort(_rand((batch, side * side), device, generator), dim=1)
    coarse = torch.zeros(batch, side * side, dtype=torch.bool, device=order.device)
    coarse.scatter_(1, order[:, :count], True)
    coarse = coarse.view(batch, side, side)
    fine = coarse.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return fine.reshape(batch, grid * grid)


def _rand(shape: tuple[int, int], device: Device, generator: torch.Generator | None) -> Tensor:
    """Uniform noise on ``device``, drawn on the generator's device when one is given."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device or "cpu")


def _positive(**sizes: int) -> None:
    """Raise a ConfigError naming ``method_args.<key>`` unless every size is an int >= 1."""
    for key, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"method_args.{key} must be a positive integer, got {v!r}")


def _ratio(mask_ratio: float) -> None:
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"method_args.mask_ratio must be in [0, 1), got {mask_ratio!r}")
