"""The per-channel mean/std a method's views were normalised with (``input_mean``/``input_std``
Config fields, filled in by the trainer), checked and shaped for undoing the normalisation.

Methods that build their task in pixel units (padding with black, colour transformations in
HSV) read ``x * std + mean`` of their normalised views; unset fields mean "unknown" and give the
identity (mean 0, std 1), the views' own normalised units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from selfsup.types import ConfigError

__all__ = ["input_stats"]


def input_stats(mean: Sequence[float], std: Sequence[float], chans: int) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` as float ``[1, C, 1, 1]`` tensors (``[1, 1, 1, 1]`` of 0 and 1 when unset).

    Args:
        mean: ``method_args.input_mean`` (empty: unset).
        std: ``method_args.input_std`` (empty: unset).
        chans: the backbone's input channels (0: unknown, not checked).

    Raises:
        ConfigError: naming ``method_args.input_mean`` / ``input_std`` for a length other than
            ``chans`` or a non-positive std.
    """
    for key, vals in (("input_mean", mean), ("input_std", std)):
        if vals and chans and len(vals) != chans:
            raise ConfigError(f"method_args.{key} needs {chans} values (one per channel), got "
                              f"{list(vals)}")
    if any(s <= 0 for s in std):
        raise ConfigError(f"method_args.input_std must be positive, got {list(std)}")
    m = torch.tensor(list(mean) or [0.0], dtype=torch.float).view(1, -1, 1, 1)
    s = torch.tensor(list(std) or [1.0], dtype=torch.float).view(1, -1, 1, 1)
    return m, s
