"""Multi-crop encoding: consecutive views of the same resolution share one backbone pass (SwAV,
Caron et al. 2020, sec. 3.2; DINO's ``MultiCropWrapper``), so BatchNorm statistics are per
resolution group, as in the reference code."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from selfsup.types import DataError

__all__ = ["encode_by_resolution"]


def encode_by_resolution(module: nn.Module, views: Sequence[Tensor]) -> Tensor:
    """``module`` applied to ``views`` (each ``[B, C, H_v, W_v]``), one pass per run of equal-size
    consecutive views.

    Returns:
        ``[V * B, D]`` outputs, view-major (rows ``v * B : (v + 1) * B`` belong to view ``v``).

    Raises:
        DataError: for no views or views of different batch sizes.
    """
    if not views:
        raise DataError("multi-crop encoding needs at least one view")
    if any(v.shape[0] != views[0].shape[0] for v in views):
        raise DataError("every view must hold the same number of images")
    out: list[Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out.append(module(torch.cat(list(views[start:end]))))
        start = end
    return torch.cat(out)
