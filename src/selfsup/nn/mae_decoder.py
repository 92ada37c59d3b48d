"""MAE's light decoder (He et al. 2022, sec. 3; facebookresearch/mae ``models_mae.py``
``forward_decoder``), shared by the masked-autoencoder family (MAE, DeepMIM's per-layer decoders,
LocalMIM's per-scale decoders).

The decoder maps encoder tokens of the visible patches ``[B, 1 + K, D]`` (class token first,
visible patches in ``keep`` order) to a prediction for every patch ``[B, N, out]``: a linear map
to the decoder width, one learned mask token per removed patch, the tokens put back in the
original order with ``ids_restore``, fixed 2-D sine-cosine position embeddings, timm transformer
blocks, a LayerNorm and a linear prediction (``out = p*p*C`` pixels for MAE).

:func:`mae_decode` is the forward as a pure function of the parts, so a method can keep the
parts as its own attributes (MAE does, keeping its ``state_dict`` keys ``decoder_embed.*``,
``mask_token``, ``decoder_blocks.*``, ...); :class:`MAEDecoder` is the same decoder as one module.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from selfsup.nn.patches import sincos_2d
from selfsup.types import ConfigError

__all__ = ["MAEDecoder", "decoder_blocks", "fixed_sincos_pos_", "mae_decode", "mae_encoder_init_",
           "mae_init_"]


def decoder_blocks(dim: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                   qkv_bias: bool = True) -> nn.Sequential:
    """``depth`` timm transformer blocks of width ``dim`` with LayerNorm(eps=1e-6), as the
    decoders of models_mae.py (``qkv_bias=True``, ``norm_layer=partial(LayerNorm, eps=1e-6)``)."""
    norm = functools.partial(nn.LayerNorm, eps=1e-6)
    return nn.Sequential(*[
        Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
              norm_layer=norm)  # type: ignore[arg-type]
        for _ in range(depth)])


def mae_decode(latent: Tensor, ids_restore: Tensor, *, embed: nn.Module, mask_token: Tensor,
               pos_embed: Tensor, blocks: nn.Module, norm: nn.Module, pred: nn.Module) -> Tensor:
    """MAE's decoder forward (models_mae.py ``forward_decoder``).

    Args:
        latent: encoder tokens ``[B, 1 + K, D]``, class token first, visible patches in
            ``keep`` order.
        ids_restore: ``[B, N]`` position of every patch in ``cat(visible, removed)`` order
            (:func:`selfsup.nn.masking.random_masking`).
        embed: ``D -> Dd`` map; mask_token: ``[1, 1, Dd]``; pos_embed: ``[1, 1 + N, Dd]``;
        blocks, norm: the decoder's transformer blocks and final norm; pred: the map applied
            to the ``N`` patch tokens ``[B, N, Dd]`` (the class token is dropped first).

    Returns:
        ``pred`` of the patch tokens in the original patch order, ``[B, N, out]``.
    """
    x = embed(latent)  # [B, 1 + K, Dd]
    b, n1, d = x.shape
    n = ids_restore.shape[1]
    masks = mask_token.to(x.dtype).expand(b, n + 1 - n1, d)
    x_ = torch.cat([x[:, 1:], masks], dim=1)  # [B, N, Dd], visible first
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # unshuffle
    x = torch.cat([x[:, :1], x_], dim=1) + pos_embed.to(x.dtype)
    x = norm(blocks(x))
    out: Tensor = pred(x[:, 1:])  # drop the class token
    return out


def fixed_sincos_pos_(vit: Any, grid: int, who: str) -> None:
    """Write MAE's fixed 2-D sine-cosine embedding (class token slot zero) into the ViT's
    ``pos_embed`` ``[1, 1 + grid^2, D]`` and freeze it (models_mae.py: ``requires_grad=False``).

    Raises:
        ConfigError: naming ``who`` when ``pos_embed`` does not cover the class token and the grid.
    """
    pos = vit.pos_embed
    if pos.shape[1] != grid * grid + 1:
        raise ConfigError(f"{who}: the ViT's position embedding must cover the class token and "
                          f"{grid * grid} patches, got {tuple(pos.shape)}")
    with torch.no_grad():
        pos.copy_(sincos_2d(pos.shape[-1], grid, cls_token=True).unsqueeze(0))
    pos.requires_grad_(False)


@torch.no_grad()
def mae_encoder_init_(vit: Any) -> None:
    """models_mae.py ``initialize_weights``' encoder part: the patch projection Xavier uniform as
    a linear layer, the class token normal(0.02)."""
    proj = vit.patch_embed.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    nn.init.normal_(vit.cls_token, std=0.02)


@torch.no_grad()
def mae_init_(root: nn.Module, tokens: list[Tensor]) -> None:
    """models_mae.py ``initialize_weights`` over ``root``: the listed tokens normal(0.02) in
    order, then every Linear Xavier uniform with zero bias and every LayerNorm (1, 0), in
    ``root.modules()`` order. (The ViT's patch projection and class token are the caller's.)"""
    for t in tokens:
        nn.init.normal_(t, std=0.02)
    for m in root.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MAEDecoder(nn.Module):
    """MAE's decoder as one module: ``(latent [B, 1 + K, D], ids_restore [B, N]) -> [B, N, out]``.

    Args:
        in_dim: encoder width ``D``.
        grid: patch grid side (``N = grid ** 2``), for the sine-cosine position embeddings.
        out_dim: outputs per patch (``p*p*C`` pixels); None = no prediction layer, the output is
            the normalised decoder tokens ``[B, N, dim]`` (for a head of the caller's).
        dim, depth, heads, mlp_ratio, qkv_bias: decoder width, blocks, heads, MLP ratio, qkv bias.

    Attributes:
        decoder_embed, mask_token, decoder_blocks, decoder_norm, decoder_pred: the parts (named as
            MAE's); decoder_pos_embed: fixed ``[1, 1 + N, dim]`` buffer (not saved).

    Raises:
        ConfigError: for a non-positive size or a width that is not a multiple of 4 and ``heads``.
    """

    decoder_pos_embed: Tensor

    def __init__(self, in_dim: int, grid: int, out_dim: int | None, dim: int = 512,
                 depth: int = 8, heads: int = 16, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        if min(in_dim, grid, dim, depth, heads) < 1 or (out_dim is not None and out_dim < 1):
            raise ConfigError(f"MAEDecoder: sizes must be positive, got in_dim={in_dim}, "
                              f"grid={grid}, out_dim={out_dim}, dim={dim}, depth={depth}, "
                              f"heads={heads}")
        if dim % heads or dim % 4:
            raise ConfigError(f"MAEDecoder: decoder width {dim} must be a multiple of 4 and of "
                              f"the heads {heads}")
        self.grid = grid
        self.decoder_embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(dim, grid, cls_token=True)
                             .unsqueeze(0), persistent=False)
        self.decoder_blocks = decoder_blocks(dim, depth, heads, mlp_ratio, qkv_bias)
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred: nn.Module = (nn.Identity() if out_dim is None
                                        else nn.Linear(dim, out_dim))

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``[B, 1 + K, D]``, ``[B, N]`` -> ``[B, N, out_dim]`` (or ``[B, N, dim]``)."""
        if ids_restore.shape[1] != self.grid ** 2:
            raise ValueError(f"ids_restore must be [B, {self.grid ** 2}], got "
                             f"{tuple(ids_restore.shape)}")
        return mae_decode(latent, ids_restore, embed=self.decoder_embed,
                          mask_token=self.mask_token, pos_embed=self.decoder_pos_embed,
                          blocks=self.decoder_blocks, norm=self.decoder_norm,
                          pred=self.decoder_pred)
