"""Patches and fixed position embeddings for masked image modeling.

:func:`patchify` / :func:`unpatchify` turn images of any channel count into the per-patch pixel
vectors that pixel-reconstruction methods predict, in the layout of MAE's reference
(facebookresearch/mae ``models_mae.py`` ``patchify``: ``'nchpwq->nhwpqc'``, each patch flattened
as ``(row p, column q, channel c)``), and back. :func:`sincos_2d` is the fixed 2-D sine-cosine
position embedding of MAE (``util/pos_embed.py`` ``get_2d_sincos_pos_embed``, after the MoCo v3
code): half of the channels encode the column, half the row, each as ``[sin(pos w), cos(pos w)]``
with ``w_k = 10000^(-k / (D/4))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["patchify", "sincos_2d", "unpatchify"]


def patchify(images: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p)(W/p), p*p*C]``, patches in row-major order.

    Raises:
        DataError: if the image sides are not multiples of ``patch``.
    """
    if images.dim() != 4:
        raise DataError(f"patchify expects images [B, C, H, W], got {tuple(images.shape)}")
    b, c, h, w = images.shape
    if patch < 1 or h % patch or w % patch:
        raise DataError(f"image sides {h}x{w} are not multiples of the patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, gh * gw, patch * patch * c)


def unpatchify(tokens: Tensor, patch: int, channels: int, height: int | None = None) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, N, p*p*C]`` -> ``[B, C, h p, w p]``.

    Args:
        tokens: per-patch pixel vectors.
        patch: patch side ``p``.
        channels: ``C``.
        height: rows ``h`` of the patch grid; None = a square grid (``N`` a square).

    Raises:
        DataError: if the shapes do not fit.
    """
    if tokens.dim() != 3 or tokens.shape[-1] != patch * patch * channels:
        raise DataError(f"unpatchify expects [B, N, {patch * patch * channels}] for patch "
                        f"{patch} and {channels} channels, got {tuple(tokens.shape)}")
    b, n, _ = tokens.shape
    gh = int(round(n ** 0.5)) if height is None else height
    if gh < 1 or n % gh or (height is None and gh * gh != n):
        raise DataError(f"{n} patches do not form a {'square ' if height is None else ''}grid"
                        f"{'' if height is None else f' of {height} rows'}")
    gw = n // gh
    x = tokens.reshape(b, gh, gw, patch, patch, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, gh * patch, gw * patch)


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``[M]`` positions -> ``[M, dim]``: ``[sin(pos w_k), cos(pos w_k)]``, ``w_k`` =
    ``10000^(-k / (dim/2))`` for ``k < dim/2`` (float64, as the reference's numpy)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega  # [dim/2]
    out = pos.to(torch.float64).reshape(-1)[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int | None = None, cls_token: bool = False) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``[(1 +) h w, dim]`` (float32).

    Row-major over the patch grid; the first ``dim/2`` channels encode the column index and the
    last ``dim/2`` the row index (MAE's ``np.meshgrid(grid_w, grid_h)`` puts the column first).
    With ``cls_token`` a zero row is prepended for the class token, as in MAE.

    Raises:
        ConfigError: if ``dim`` is not a multiple of 4 or the grid is empty.
    """
    grid_w = grid_h if grid_w is None else grid_w
    if dim < 4 or dim % 4:
        raise ConfigError(f"a 2-D sine-cosine position embedding needs a width divisible by 4, "
                          f"got {dim}")
    if grid_h < 1 or grid_w < 1:
        raise ConfigError(f"position-embedding grid must be non-empty, got {grid_h}x{grid_w}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
