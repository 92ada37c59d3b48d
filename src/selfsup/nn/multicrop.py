"""Multi-crop encoding: the backbone passes over a list of crops (SwAV, Caron et al. 2020,
sec. 3.2; DINO, Caron et al. 2021).

Two layouts give the same outputs when BatchNorm uses running statistics (eval mode) and differ
in training mode, where each pass normalises with its own batch statistics:

- ``grouped``: one pass per run of equal-size consecutive crops, as the references'
  ``MultiCropWrapper`` (facebookresearch/dino ``utils.py``) and ``ResNet.forward``
  (facebookresearch/swav ``src/resnet50.py``): BatchNorm statistics are those of all crops of one
  size (e.g. 6 local crops x B images in one batch).
- ``per_crop``: one pass per crop, as lightly's DINO/SwAV examples: BatchNorm statistics per crop
  (B images each). On a CPU several small passes are faster than one large one (ResNet-18, 6 x
  256 16-px crops, forward + backward on 2 cores: 6.02 s grouped, 4.29 s per crop;
  ``benchmarks/multicrop_passes.py``); GPUs usually prefer the larger pass.
- ``auto``: ``per_crop`` when the crops are on the CPU, ``grouped`` on any accelerator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError

__all__ = ["CROP_PASSES", "encode_by_resolution", "resolve_crop_passes"]

CROP_PASSES = ("auto", "grouped", "per_crop")


def resolve_crop_passes(passes: str, device: torch.device) -> str:
    """The concrete layout (``grouped`` or ``per_crop``) of ``passes`` for crops on ``device``.

    Raises:
        ConfigError: if ``passes`` is not one of :data:`CROP_PASSES`.
    """
    if passes not in CROP_PASSES:
        raise ConfigError(f"crop_passes must be one of {', '.join(CROP_PASSES)}, got {passes!r}")
    if passes == "auto":
        return "per_crop" if device.type == "cpu" else "grouped"
    return passes


def encode_by_resolution(module: nn.Module | Callable[[Tensor], Tensor], views: Sequence[Tensor],
                         passes: str = "grouped") -> Tensor:
    """``module`` (a network or any function of a batch, e.g. a ViT's [CLS] token) applied to
    ``views`` (each ``[B, C, H_v, W_v]``): one pass per run of equal-size
    consecutive views (``grouped``), one per view (``per_crop``), or as
    :func:`resolve_crop_passes` picks for the views' device (``auto``).

    Returns:
        ``[V * B, D]`` outputs, view-major (rows ``v * B : (v + 1) * B`` belong to view ``v``).

    Raises:
        DataError: for no views or views of different batch sizes.
        ConfigError: for an unknown ``passes``.
    """
    if not views:
        raise DataError("multi-crop encoding needs at least one view")
    if any(v.shape[0] != views[0].shape[0] for v in views):
        raise DataError("every view must hold the same number of images")
    if resolve_crop_passes(passes, views[0].device) == "per_crop":
        return torch.cat([module(v) for v in views])
    out: list[Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out.append(module(torch.cat(list(views[start:end]))))
        start = end
    return torch.cat(out)
