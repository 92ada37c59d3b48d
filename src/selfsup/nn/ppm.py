"""PixPro's pixel propagation module (PPM) and per-pixel heads on feature maps.

Xie et al. 2021, "Propagate Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual
Representation Learning", sec. 3.2. For the pixel features ``x_i`` of one view ``[C, H, W]``
(``N = H W`` pixels), the PPM computes the smoothed transform

    ``y_i = sum_j s(x_i, x_j) g(x_j)``                    (eq. 3)
    ``s(x_i, x_j) = max(cos(x_i, x_j), 0) ** gamma``      (eq. 4)

with ``gamma = 2`` (sharpness, table 3) and ``g`` a transform of ``l`` linear layers with BN and
ReLU between successive layers (``l = 0``: identity; ``l = 1`` is the paper's best, table 3). As in
the authors' code, ``g(x_j)`` is L2-normalised per pixel before it is propagated and the sum runs
over all pixels of the same image (including ``i`` itself).

A ``1 x 1`` convolution is a linear layer applied to every pixel, and ``BatchNorm2d`` statistics are
those of ``BatchNorm1d`` over the ``B H W`` pixel rows, so the 2-D heads of the paper's code
(``MLP2d``: conv1x1-BN-ReLU-conv1x1) are :func:`selfsup.nn.heads.mlp` applied per pixel by
:func:`per_pixel` (one builder for 1-D and 2-D heads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.nn.heads import mlp
from selfsup.types import ConfigError, DataError

__all__ = ["PixelPropagation", "per_pixel", "propagate", "propagation_weights"]


def _check_map(x: Tensor, name: str) -> None:
    if x.dim() != 4 or 0 in x.shape:
        raise DataError(f"{name} expects a non-empty feature map [B, C, H, W], got "
                        f"{tuple(x.shape)}")


def per_pixel(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a row-wise module (``[M, C] -> [M, D]``, e.g. an :func:`~selfsup.nn.heads.mlp`) to
    every pixel of ``x`` ``[B, C, H, W]``: returns ``[B, D, H, W]`` (a stack of 1x1 convolutions,
    BN statistics over all ``B H W`` pixels as ``BatchNorm2d``).

    Raises:
        DataError: if ``x`` is not a non-empty ``[B, C, H, W]`` map.
    """
    _check_map(x, "per_pixel")
    b, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # [B*H*W, C]
    out: Tensor = module(rows)  # [B*H*W, D]
    return out.view(b, h, w, -1).permute(0, 3, 1, 2)  # [B, D, H, W]


def propagation_weights(x: Tensor, gamma: float = 2.0) -> Tensor:
    """``s(x_i, x_j) = max(cos(x_i, x_j), 0) ** gamma`` between all pixel pairs of each image (eq. 4).

    Args:
        x: feature map ``[B, C, H, W]``.
        gamma: sharpness exponent (> 0; paper: 2). For ``gamma < 1`` a 1e-6 is added before the
            power (the authors' code) so the gradient at 0 stays finite.

    Returns:
        ``[B, N, N]`` with ``N = H W`` (row-major pixels), entry ``[b, i, j] = s(x_i, x_j)``.

    Raises:
        DataError: if ``x`` is not a non-empty ``[B, C, H, W]`` map.
        ConfigError: if ``gamma`` is not positive.
    """
    _check_map(x, "propagation_weights")
    if not gamma > 0:
        raise ConfigError(f"PPM gamma must be positive, got {gamma}")
    xn = F.normalize(x.flatten(2), dim=1)  # [B, C, N]
    s = torch.bmm(xn.transpose(1, 2), xn).clamp(min=0.0)  # [B, N, N]
    if gamma < 1:
        s = s + 1e-6
    return s.pow(gamma)


def propagate(x: Tensor, values: Tensor, gamma: float = 2.0) -> Tensor:
    """``y_i = sum_j s(x_i, x_j) v_j`` (eq. 3) with ``s`` from :func:`propagation_weights`.

    Args:
        x: features deciding the weights ``[B, C, H, W]``.
        values: the propagated values ``v_j = g(x_j)`` ``[B, D, H, W]`` (same ``B, H, W``).
        gamma: sharpness exponent of ``s``.

    Returns:
        ``[B, D, H, W]``.

    Raises:
        DataError: for maps of mismatched batch or spatial size.
        ConfigError: if ``gamma`` is not positive.
    """
    _check_map(values, "propagate")
    if values.shape[0] != x.shape[0] or values.shape[2:] != x.shape[2:]:
        raise DataError(f"propagate: values {tuple(values.shape)} do not match the map "
                        f"{tuple(x.shape)} in batch and spatial size")
    s = propagation_weights(x, gamma)  # [B, N, N]
    y = torch.bmm(values.flatten(2), s.transpose(1, 2))  # [B, D, N]: y[:, :, i] = sum_j s_ij v_j
    return y.view_as(values)


class PixelPropagation(nn.Module):
    """The PPM of PixPro (sec. 3.2, eqs. 3-4): ``[B, dim, H, W] -> [B, dim, H, W]``.

    Args:
        dim: channel count of the (projected) feature map.
        transform_layers: ``l``, the linear layers of ``g`` (0 = identity; 1 = the paper's best;
            ``l >= 2``: Linear-BN-ReLU between successive layers), all ``dim`` wide.
        gamma: sharpness exponent of the similarity (paper: 2).

    Attributes:
        transform: ``g`` as a row-wise module (applied per pixel).

    Raises:
        ConfigError: for ``dim < 1``, ``transform_layers < 0`` or ``gamma <= 0``.
    """

    def __init__(self, dim: int, transform_layers: int = 1, gamma: float = 2.0) -> None:
        super().__init__()
        if dim < 1 or transform_layers < 0:
            raise ConfigError(f"PixelPropagation: dim must be >= 1 and transform_layers >= 0, "
                              f"got {dim}, {transform_layers}")
        if not gamma > 0:
            raise ConfigError(f"PPM gamma must be positive, got {gamma}")
        self.dim, self.transform_layers, self.gamma = dim, transform_layers, float(gamma)
        self.transform: nn.Module = (
            mlp([dim] * (transform_layers + 1)) if transform_layers > 0 else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        """Smoothed features ``y`` ``[B, dim, H, W]`` of ``x`` ``[B, dim, H, W]``.

        Raises:
            DataError: if ``x`` is not a ``[B, dim, H, W]`` map.
        """
        _check_map(x, "PixelPropagation")
        if x.shape[1] != self.dim:
            raise DataError(f"PixelPropagation: expected {self.dim} channels, got {x.shape[1]}")
        values = F.normalize(per_pixel(self.transform, x), dim=1)  # g(x_j), unit length
        return propagate(x, values, self.gamma)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, transform_layers={self.transform_layers}, gamma={self.gamma}"
