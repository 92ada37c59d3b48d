"""ConvViT: ConvMAE's hybrid convolution-transformer encoder (Gao et al. 2022, "ConvMAE: Masked
Convolution Meets Masked Autoencoders", sec. 3.1; Alpha-VL/ConvMAE ``vision_transformer.py``
``ConvViT``, ``CBlock``, ``PatchEmbed``).

Three stages, each opened by a non-overlapping strided convolution (``PatchEmbed``: a ``s x s``
convolution with stride ``s``, LayerNorm over channels, GELU):

- stage 1 at ``1/s1`` resolution, stage 2 at ``1/(s1 s2)``: ``CBlock`` convolutional blocks,
  ``x + conv1x1(dwconv5x5(conv1x1(LN(x))))`` (the depthwise 5 x 5 convolution stands in for
  attention) followed by ``x + MLP(LN(x))`` with 1 x 1 convolutions. The LayerNorms act per
  position (over channels), as the reference's, so the blocks never mix statistics across
  positions: with a mask (below) no visible position reads a masked one.
- stage 3 at ``1/(s1 s2 s3)``: the map is flattened to tokens, passed through a linear layer
  (``patch_embed4``), given position embeddings (learned, trunc-normal 0.02 as the reference's
  ``ConvViT``; ConvMAE's pre-training overwrites and freezes them with sine-cosine) and timm
  transformer ``Block``\\ s, then a final LayerNorm.

The paper's strides are ``(4, 2, 2)`` (224 px -> 56, 28, 14); the total stride
``s1 s2 s3`` is the patch size of masked image modeling. When no strides are given they follow
the ViT's :func:`~selfsup.nn.backbones.vit.default_patch_size` rule: total 16 from 128 px up
``(4, 2, 2)``, 8 in between ``(2, 2, 2)``, 4 up to 32 px ``(1, 2, 2)``, so 16-32 px images get a
4 x 4 to 8 x 8 transformer grid (a scaling for small images, not the paper's).

Masked convolution (sec. 3.2): :meth:`ConvViT.forward_masked` takes MAE's mask on the stage-3
grid, upsamples it (nearest) to the stage-1 and stage-2 grids and multiplies the visibility
into every ``CBlock``'s input to the depthwise convolution (as the reference's
``blk(x, 1 - mask)``), so the features of visible positions never depend on masked pixels.

Sizes: ``convvit_base`` is the paper's ConvViT-B (widths 256, 384, 768; depths 2, 2, 11; 12
heads; MLP ratio 4; about 84M parameters with the pre-training heads); ``convvit_tiny`` is a
small width of this library's (64, 128, 192; 3 heads; same depths) for CPU runs and tests. The
forward returns the mean of the normalised stage-3 tokens ``[B, D]``; ``forward_features`` the
normalised tokens as a map ``[B, D, h, w]``. Like the reference's fine-tuning encoder
(``models_convvit.py``), the evaluated encoder has no multi-scale fusion (pre-training's
``stage*_output_decode`` layers belong to :mod:`selfsup.methods.convmae`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from selfsup.registry import register
from selfsup.types import ConfigError, DataError

__all__ = ["CBlock", "ConvViT", "PatchEmbed", "default_strides", "upsample_mask"]

_REFERENCE = "Gao et al. 2022, ConvMAE: Masked Convolution Meets Masked Autoencoders"


def default_strides(image_size: int) -> tuple[int, int, int]:
    """Stage strides when none are given: ``(4, 2, 2)`` (the paper's, total 16) from 128 px up,
    ``(2, 2, 2)`` in between, ``(1, 2, 2)`` up to 32 px (a 4 x 4 to 8 x 8 transformer grid)."""
    if image_size >= 128:
        return (4, 2, 2)
    if image_size <= 32:
        return (1, 2, 2)
    return (2, 2, 2)


def _layer_norm_2d(norm: nn.Module, x: Tensor) -> Tensor:
    """LayerNorm over the channels of a map ``[B, C, H, W]`` (per position)."""
    out: Tensor = norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return out


def upsample_mask(mask: Tensor, grid: int, factor: int) -> Tensor:
    """``[B, grid * grid]`` stage-3 mask -> ``[B, 1, grid f, grid f]`` (nearest: every stage-3
    cell covers ``f x f`` positions of the finer map), the reference's ``mask_for_patch1/2``."""
    m = mask.reshape(mask.shape[0], 1, grid, grid)
    return m.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


class PatchEmbed(nn.Module):
    """``[B, C_in, H, W]`` -> ``[B, C_out, H/s, W/s]``: ``s x s`` convolution with stride ``s``,
    LayerNorm over channels, GELU (the reference's ``PatchEmbed``)."""

    def __init__(self, in_chans: int, dim: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=stride, stride=stride)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(_layer_norm_2d(self.norm, self.proj(x)))
        return out


class CBlock(nn.Module):
    """ConvMAE's convolutional block on a map ``[B, C, H, W]`` (reference ``CBlock``).

    ``x + conv2(dw5x5(v * conv1(LN(x))))``, then ``x + fc2(GELU(fc1(LN(x))))`` with 1 x 1
    convolutions; ``v`` ``[B, 1, H, W]`` is the optional visibility (1 visible, 0 masked).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        y = self.conv1(_layer_norm_2d(self.norm1, x))
        if visible is not None:
            y = y * visible.to(y.dtype)  # masked positions enter the 5 x 5 conv as zeros
        x = x + self.drop_path(self.conv2(self.attn(y)))
        out: Tensor = x + self.drop_path(self.mlp(_layer_norm_2d(self.norm2, x)))
        return out


class ConvViT(nn.Module):
    """Hybrid convolution-transformer encoder (see the module docstring).

    Attributes:
        num_features: stage-3 width ``D``.
        dims: the widths of the three stages.
        in_chans: number of input channels.
        image_size: input side the position embeddings are laid out for (other multiples of
            ``patch_size`` work in :meth:`forward`: the embeddings are resampled bicubically).
        strides: ``(s1, s2, s3)``; ``patch_size = s1 s2 s3``.
        grid: stage-3 tokens per side, ``image_size // patch_size``; ``num_patches = grid^2``.
        patch_embed1, patch_embed2, patch_embed3: the stages' strided convolutions.
        blocks1, blocks2: ``CBlock`` lists; blocks3: timm ``Block``\\ s; norm: final LayerNorm.
        patch_embed4: linear map of the stage-3 tokens; pos_embed: ``[1, N, D]``.
    """

    def __init__(self, *, name: str, dims: tuple[int, int, int], depths: tuple[int, int, int],
                 num_heads: int, in_chans: int, image_size: int,
                 strides: Sequence[int] | None, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        s = _check_strides(name, image_size, strides)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(f"backbone '{name}': drop_path_rate must be in [0, 1), got "
                              f"{drop_path_rate!r}")
        self.in_chans, self.image_size, self.strides = in_chans, image_size, s
        self.dims = dims
        self.num_features = dims[2]
        self.patch_size = s[0] * s[1] * s[2]
        self.grid = image_size // self.patch_size
        self.num_patches = self.grid * self.grid
        self.num_prefix_tokens = 0  # no class token (read by the visualiser's feature PCA)
        self.patch_embed1 = PatchEmbed(in_chans, dims[0], s[0])
        self.patch_embed2 = PatchEmbed(dims[0], dims[1], s[1])
        self.patch_embed3 = PatchEmbed(dims[1], dims[2], s[2])
        self.patch_embed4 = nn.Linear(dims[2], dims[2])
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dims[2]))
        # stochastic depth linear over all blocks of the three stages (reference ``dpr``)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.blocks1 = nn.ModuleList(CBlock(dims[0], mlp_ratio, dpr[i]) for i in range(depths[0]))
        self.blocks2 = nn.ModuleList(CBlock(dims[1], mlp_ratio, dpr[depths[0] + i])
                                     for i in range(depths[1]))
        norm = functools.partial(nn.LayerNorm, eps=1e-6)
        self.blocks3 = nn.Sequential(*[
            Block(dims[2], num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                  drop_path=dpr[depths[0] + depths[1] + i],
                  norm_layer=norm)  # type: ignore[arg-type]
            for i in range(depths[2])])
        self.norm = norm(dims[2])
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    def _grid_of(self, x: Tensor) -> tuple[int, int]:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise DataError(f"ConvViT expects images [B, {self.in_chans}, H, W], got "
                            f"{tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise DataError(f"ConvViT: image sides {h}x{w} must be multiples of the total "
                            f"stride {self.patch_size} (strides {self.strides})")
        return h // self.patch_size, w // self.patch_size

    def _pos(self, h: int, w: int) -> Tensor:
        """``[1, h w, D]`` position embeddings, resampled bicubically off the configured grid."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        p = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        p = F.interpolate(p, size=(h, w), mode="bicubic", align_corners=False)
        return p.flatten(2).transpose(1, 2)

    def conv_stages(self, x: Tensor, mask: Tensor | None = None,
                    mask_token: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Stages 1-2 and the stage-3 embedding.

        Args:
            x: images ``[B, in_chans, H, W]``, sides multiples of ``patch_size``.
            mask: optional ``[B, N]`` (bool or 0/1, 1 = masked) on the stage-3 grid (the
                configured ``grid x grid``); upsampled to stages 1 and 2 and applied in every
                ``CBlock`` (masked convolution, ConvMAE), or, with ``mask_token``, used as
                SimMIM's (below).
            mask_token: ``[C1]`` learned token: the masked positions of the stage-1 embedding
                are replaced by it and every block sees them (SimMIM's hierarchical encoder,
                ``SwinTransformerForSimMIM``: the token right after the patch embedding); no
                masked convolution then. The patch embedding's kernel equals its stride, so
                masked pixels reach nothing.

        Returns:
            ``(stage 1 map [B, C1, H/s1, W/s1], stage 2 map [B, C2, H/(s1 s2), W/(s1 s2)],
            tokens [B, N, D])``: the tokens with position embeddings, before the transformer.

        Raises:
            DataError: for images of another channel count or a side not divisible by
                ``patch_size``.
            ValueError: if ``mask`` is not ``[B, grid * grid]`` for the configured grid.
        """
        h, w = self._grid_of(x)
        vis1 = vis2 = None
        replace = None
        if mask is not None and mask_token is not None:
            if mask.shape != (x.shape[0], self.num_patches) or (h, w) != (self.grid,) * 2:
                raise ValueError(f"mask must be [B={x.shape[0]}, N={self.num_patches}] for "
                                 f"{self.image_size} px images, got {tuple(mask.shape)} for "
                                 f"{tuple(x.shape[-2:])}")
            replace = upsample_mask(mask.to(x.dtype), self.grid,
                                    self.strides[1] * self.strides[2])  # [B, 1, H/s1, W/s1]
        elif mask is not None:
            if mask.shape != (x.shape[0], self.num_patches) or (h, w) != (self.grid,) * 2:
                raise ValueError(f"mask must be [B={x.shape[0]}, N={self.num_patches}] for "
                                 f"{self.image_size} px images, got {tuple(mask.shape)} for "
                                 f"{tuple(x.shape[-2:])}")
            visible = 1.0 - mask.to(x.dtype)
            s2, s3 = self.strides[1], self.strides[2]
            vis1 = upsample_mask(visible, self.grid, s2 * s3)  # [B, 1, H/s1, W/s1]
            vis2 = upsample_mask(visible, self.grid, s3)  # [B, 1, H/(s1 s2), W/(s1 s2)]
        x = self.patch_embed1(x)
        if replace is not None and mask_token is not None:
            x = x * (1 - replace) + mask_token.to(x.dtype).reshape(1, -1, 1, 1) * replace
        for blk in self.blocks1:
            x = blk(x, vis1)
        stage1 = x
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = blk(x, vis2)
        stage2 = x
        tokens = self.patch_embed4(self.patch_embed3(x).flatten(2).transpose(1, 2))  # [B, N, D]
        return stage1, stage2, tokens + self._pos(h, w).to(tokens.dtype)

    def forward_masked(self, x: Tensor, keep: Tensor, mask: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """ConvMAE's masked encoder up to (not including) the final LayerNorm.

        Args:
            x: images ``[B, in_chans, image_size, image_size]``.
            keep: ``[B, K]`` int64 indices of the visible stage-3 tokens (MAE's ``ids_keep``).
            mask: ``[B, N]`` the same mask, 1/True where a token is removed.

        Returns:
            ``(tokens [B, K, D] after the transformer blocks (not normalised), stage 1 map,
            stage 2 map)``; the stage maps are masked-convolution features whose visible
            positions depend only on visible pixels.

        Raises:
            ValueError: if ``keep`` or ``mask`` do not fit the grid (see :meth:`conv_stages`).
        """
        stage1, stage2, tokens = self.conv_stages(x, mask)
        if keep.dim() != 2 or keep.shape[0] != x.shape[0] or keep.is_floating_point():
            raise ValueError(f"keep must be an integer tensor [B={x.shape[0]}, K], got "
                             f"{keep.dtype} {tuple(keep.shape)}")
        tokens = gather_tokens(tokens, keep)
        out: Tensor = self.blocks3(tokens)
        return out, stage1, stage2

    def forward_tokens(self, x: Tensor, mask: Tensor | None = None,
                       mask_token: Tensor | None = None) -> Tensor:
        """``[B, in_chans, H, W]`` -> all normalised stage-3 tokens ``[B, h w, D]``; with
        ``mask`` ``[B, N]`` and ``mask_token`` ``[C1]``, SimMIM's masked encoder (see
        :meth:`conv_stages`)."""
        if (mask is None) != (mask_token is None):
            raise ValueError("forward_tokens: pass mask and mask_token together")
        out: Tensor = self.norm(self.blocks3(self.conv_stages(x, mask, mask_token)[2]))
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> the normalised stage-3 tokens as a map ``[B, D, h, w]``."""
        h, w = self._grid_of(x)
        return self.forward_tokens(x).transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> mean of the normalised stage-3 tokens ``[B, D]``."""
        return self.forward_tokens(x).mean(dim=1)


def gather_tokens(tokens: Tensor, keep: Tensor) -> Tensor:
    """``tokens [B, N, D]``, ``keep [B, K]`` -> ``[B, K, D]`` (MAE's gather of the visible)."""
    return torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _init_weights(m: nn.Module) -> None:
    """The reference ``ConvViT._init_weights``: Linear trunc-normal(0.02) with zero bias,
    LayerNorm (1, 0); convolutions keep PyTorch's default."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _check_strides(name: str, image_size: int, strides: Sequence[int] | None
                   ) -> tuple[int, int, int]:
    s = default_strides(image_size) if strides is None else tuple(strides)
    if len(s) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in s):
        raise ConfigError(f"backbone '{name}': strides must be three positive integers "
                          f"(s1, s2, s3), got {strides!r}")
    total = math.prod(s)
    if image_size % total:
        raise ConfigError(f"backbone '{name}': image_size {image_size} is not divisible by the "
                          f"total stride {total} of strides {s}; set backbone.kwargs.strides "
                          f"(e.g. [1, 2, 2] for 16-32 px) or resize with data.image_size")
    return s[0], s[1], s[2]


# name: (stage widths, stage-3 heads, note)
_VARIANTS: dict[str, tuple[tuple[int, int, int], int, str]] = {
    "convvit_tiny": ((64, 128, 192), 3, "a small width for CPU runs (not in the paper)"),
    "convvit_base": ((256, 384, 768), 12, "the paper's ConvViT-B"),
}


def _factory(name: str) -> Callable[..., ConvViT]:
    dims, heads, note = _VARIANTS[name]

    def build(in_chans: int = 3, image_size: int = 224, strides: Sequence[int] | None = None,
              depth: int = 11, conv_depth: int = 2, drop_path_rate: float = 0.0) -> ConvViT:
        for key, v in (("depth", depth), ("conv_depth", conv_depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"backbone '{name}': {key} must be a positive integer, got "
                                  f"{v!r}")
        return ConvViT(name=name, dims=dims, depths=(conv_depth, conv_depth, depth),
                       num_heads=heads, in_chans=in_chans, image_size=image_size,
                       strides=strides, drop_path_rate=drop_path_rate)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"""{name}: stage widths {dims}, {heads} heads ({note}).

    Args:
        in_chans: input channels.
        image_size: input side length.
        strides: ``(s1, s2, s3)``; None = :func:`default_strides` (the paper's ``(4, 2, 2)``
            from 128 px up). Their product must divide ``image_size``.
        depth: transformer blocks of stage 3 (11 as the paper's).
        conv_depth: ``CBlock``\\ s in each of stages 1 and 2 (2 as the paper's).
        drop_path_rate: stochastic-depth rate of the last block (linear over all blocks).

    Raises:
        ConfigError: for invalid strides or options.
    """
    return build


for _name, _variant in _VARIANTS.items():
    register("backbone", _name, description=f"{_name}: ConvMAE's hybrid conv-transformer, "
             f"{_variant[0][2]} features", reference=_REFERENCE)(_factory(_name))
