"""Vision Transformers (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") built directly
from timm's ``VisionTransformer`` with random weights, for any image size and channel count.

Sizes follow DeiT (Touvron et al. 2021): tiny = 192-dim / 3 heads, small = 384 / 6,
base = 768 / 12, all 12 blocks deep with MLP ratio 4. The forward returns the pooled feature
``[B, D]``: the CLS token after the final LayerNorm (``global_pool="token"``, as in DINO and
MoCo v3) or the mean of the normalised patch tokens (``global_pool="avg"``).
:meth:`ViT.forward_tokens` returns all normalised tokens ``[B, 1 + N, D]`` and can drop patches
first (MAE's encoder runs on the visible patches only); :meth:`ViT.forward_layers` returns the
unnormalised tokens after chosen blocks (DeepMIM, LocalMIM); :meth:`ViT.forward_features`
returns the normalised patch tokens as a map ``[B, D, h, w]`` like a CNN's (dense methods such as PixPro).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from selfsup.registry import register
from selfsup.types import ConfigError, DataError

__all__ = ["ViT", "check_vit", "default_patch_size", "first_view"]

_REFERENCE = "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words: Transformers for Image " \
    "Recognition at Scale"


def default_patch_size(image_size: int) -> int:
    """Patch size used when none is given: 16 from 128 px up (ImageNet-style), 4 up to 32 px
    (CIFAR/MNIST: 8x8 or 7x7 tokens), 8 in between (e.g. 64 px EuroSAT: 8x8 tokens)."""
    if image_size >= 128:
        return 16
    if image_size <= 32:
        return 4
    return 8


class ViT(VisionTransformer):
    """timm's VisionTransformer without a classifier, with backbone attributes and token access.

    Attributes:
        num_features: embedding width ``D``.
        in_chans: number of input channels.
        image_size: input side length the position embeddings are laid out for; other sizes
            are accepted (embeddings resampled to the input's grid, sides padded up to a
            multiple of ``patch_size``), e.g. DINO's smaller local crops.
        patch_size: side length of a patch; ``image_size // patch_size`` patches per side.
        num_patches: ``N = (image_size // patch_size) ** 2``.
    """

    def __init__(
        self,
        *,
        name: str,
        embed_dim: int,
        depth: int,
        num_heads: int,
        in_chans: int,
        image_size: int,
        patch_size: int | None,
        global_pool: str,
        drop_path_rate: float,
    ) -> None:
        if patch_size is None:
            patch_size = default_patch_size(image_size)
            if image_size % patch_size:
                divisors = [d for d in range(2, min(image_size, 32) + 1) if image_size % d == 0]
                raise ConfigError(
                    f"backbone '{name}': image_size {image_size} is not divisible by the default "
                    f"patch size {patch_size}; set backbone.patch_size to a divisor of "
                    f"{image_size} (e.g. {divisors[:4]}) or resize the images with data.image_size"
                )
        if patch_size < 1 or image_size % patch_size:
            raise ConfigError(
                f"backbone '{name}': backbone.patch_size={patch_size} must be a positive divisor "
                f"of image_size {image_size}"
            )
        if global_pool not in ("token", "avg"):
            raise ConfigError(
                f"backbone '{name}': global_pool must be 'token' or 'avg', got {global_pool!r}"
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(
                f"backbone '{name}': drop_path_rate must be in [0, 1), got {drop_path_rate!r}"
            )
        pool: Literal["token", "avg"] = "token" if global_pool == "token" else "avg"
        super().__init__(
            img_size=image_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool=pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            fc_norm=False,  # keep the final norm on the tokens, also when average-pooling
            drop_path_rate=drop_path_rate,
            # any input size: position embeddings are resampled (bicubic) to the input's patch
            # grid, as DINO's interpolate_pos_encoding does for multi-crop local crops; a side
            # that is not a multiple of the patch size is zero-padded at the bottom/right
            dynamic_img_size=True,
            dynamic_img_pad=True,
        )
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_patches = (image_size // patch_size) ** 2

    def forward_tokens(self, x: Tensor, keep: Tensor | None = None, mask: Tensor | None = None,
                       mask_token: Tensor | None = None) -> Tensor:
        """All tokens after the final LayerNorm.

        Args:
            x: images ``[B, in_chans, image_size, image_size]``.
            keep: optional patch indices ``[B, K]`` (int64, values in ``[0, N)``) to keep after
                adding the position embeddings; the others are dropped before the blocks
                (MAE's masked encoder, He et al. 2022 sec. 3).
            mask: optional ``[B, N]`` (bool or 0/1) patches whose embedding is replaced by
                ``mask_token`` ``[D]`` before the position embeddings are added (SimMIM's
                encoder, Xie et al. 2022 sec. 3.1; ``x (1 - w) + token w`` as its code).
            mask_token: the learned token for ``mask``.

        Returns:
            ``[B, 1 + N, D]`` (CLS token first), or ``[B, 1 + K, D]`` when ``keep`` is given.

        Raises:
            ValueError: if ``keep`` is not a ``[B, K]`` integer tensor, or ``mask`` does not
                fit the patch grid or comes without ``mask_token``.
        """
        x = self.norm_pre(self._input_tokens(x, keep, mask, mask_token))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        out: Tensor = self.norm(x)
        return out

    def forward_layers(self, x: Tensor, layers: Sequence[int], keep: Tensor | None = None
                       ) -> list[Tensor]:
        """The tokens after each of the given blocks, before any final LayerNorm (deep
        supervision and multi-scale targets on intermediate layers: DeepMIM, Ren et al. 2023;
        LocalMIM, Wang et al. 2023). ``self.norm(out[-1])`` with ``layers[-1] == depth`` is
        :meth:`forward_tokens`' output.

        Args:
            x: images ``[B, in_chans, image_size, image_size]``.
            layers: 1-indexed block numbers in ``[1, depth]`` (repeats allowed), in any order;
                the blocks run up to the largest only.
            keep: optional patch indices ``[B, K]`` to keep, as in :meth:`forward_tokens`.

        Returns:
            One ``[B, 1 + K, D]`` (``[B, 1 + N, D]`` without ``keep``) tensor per entry of
            ``layers``, in that order, unnormalised.

        Raises:
            ValueError: for an empty ``layers`` or a block number outside ``[1, depth]``, or a
                bad ``keep`` (as :meth:`forward_tokens`).
        """
        depth = len(self.blocks)
        if not layers or any(isinstance(i, bool) or not 1 <= int(i) <= depth for i in layers):
            raise ValueError(f"layers must be block numbers in [1, {depth}], got {list(layers)}")
        x = self.norm_pre(self._input_tokens(x, keep))
        found: dict[int, Tensor] = {}
        for i, blk in enumerate(self.blocks[:max(layers)], start=1):
            x = blk(x)
            found[i] = x
        return [found[int(i)] for i in layers]

    def _input_tokens(self, x: Tensor, keep: Tensor | None, mask: Tensor | None = None,
                      mask_token: Tensor | None = None) -> Tensor:
        """Patch embedding (masked patches replaced by ``mask_token``), class token and
        position embedding, then the ``keep`` patches: the blocks' input ``[B, 1 + K, D]``."""
        x = self.patch_embed(x)  # [B, N, D]
        if mask is not None:
            grid = x.shape[1:-1]  # [B, h, w, D] with dynamic image sizes, else [B, N, D]
            n = int(torch.tensor(grid).prod())
            if mask_token is None or mask.shape != (x.shape[0], n):
                raise ValueError(f"mask must be [B={x.shape[0]}, N={n}] with a mask_token, got "
                                 f"{tuple(mask.shape)}")
            w = mask.to(x.dtype).reshape(x.shape[0], *grid, 1)
            x = x * (1 - w) + mask_token.to(x.dtype).reshape(-1) * w
        x = self._pos_embed(x)  # [B, 1 + N, D]
        if keep is not None:
            if keep.dim() != 2 or keep.shape[0] != x.shape[0] or keep.is_floating_point():
                raise ValueError(
                    f"keep must be an integer tensor [B={x.shape[0]}, K], got "
                    f"{keep.dtype} {tuple(keep.shape)}"
                )
            idx = keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])  # [B, K, D]
            x = torch.cat([x[:, :1], torch.gather(x[:, 1:], 1, idx)], dim=1)  # [B, 1 + K, D]
        return x

    def forward_features(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """``[B, in_chans, H, W]`` -> the normalised patch tokens as a map ``[B, D, h, w]``,
        ``h, w`` = the input's patch grid (``ceil(H / patch_size)``, as inputs are padded to
        whole patches; ``image_size // patch_size`` at the configured size). The CLS token is
        dropped. Replaces timm's ``forward_features`` (which returns the token sequence; use
        :meth:`forward_tokens`)."""
        tokens = self.forward_tokens(x)[:, self.num_prefix_tokens:]  # [B, N, D]
        h, w = self.patch_embed.dynamic_feat_size((x.shape[-2], x.shape[-1]))
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """``[B, in_chans, H, W]`` -> pooled features ``[B, num_features]``."""
        out: Tensor = self.forward_head(self.forward_tokens(x), pre_logits=True)
        return out


def check_vit(backbone: nn.Module, who: str) -> tuple[int, int]:
    """``(patch size, input channels)`` of a ViT backbone with token access
    (:meth:`ViT.forward_tokens`) and a class token, as masked image modeling needs.

    Raises:
        ConfigError: naming ``who`` and the backbones that work, for any other backbone.
    """
    patch = getattr(backbone, "patch_size", None)
    proj = getattr(getattr(backbone, "patch_embed", None), "proj", None)
    if not (hasattr(backbone, "forward_tokens") and isinstance(patch, int)
            and isinstance(proj, nn.Conv2d) and getattr(backbone, "cls_token", None) is not None):
        raise ConfigError(f"{who} needs a ViT backbone with a class token (--backbone vit_tiny, "
                          f"vit_small or vit_base), got {type(backbone).__name__}")
    return patch, int(proj.in_channels)


def first_view(views: list[Tensor], who: str, in_chans: int, side: int) -> Tensor:
    """``views[0]``, checked to be ``[B, in_chans, side, side]`` (the ViT's configured input,
    which masked-modeling methods' fixed patch grids assume).

    Raises:
        DataError: naming ``who``, without a view or for another size or channel count.
    """
    if not views:
        raise DataError(f"{who} needs one view per image, got none")
    x = views[0]
    if x.dim() != 4 or x.shape[1] != in_chans or x.shape[-2:] != (side, side):
        raise DataError(f"{who} expects views [B, {in_chans}, {side}, {side}] (the ViT's image "
                        f"size), got {tuple(x.shape)}")
    return x


# name: (embedding width, heads, parameters at patch 16 / 224 px); all 12 blocks deep
_VARIANTS: dict[str, tuple[int, int, str]] = {
    "vit_tiny": (192, 3, "5.5M"),
    "vit_small": (384, 6, "21.7M"),
    "vit_base": (768, 12, "85.8M"),
}


def _factory(name: str) -> Callable[..., ViT]:
    dim, heads, params = _VARIANTS[name]

    def build(
        in_chans: int = 3,
        image_size: int = 224,
        patch_size: int | None = None,
        global_pool: str = "token",
        drop_path_rate: float = 0.0,
        depth: int = 12,
    ) -> ViT:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"backbone '{name}': depth must be a positive integer, got "
                              f"{depth!r}")
        return ViT(name=name, embed_dim=dim, depth=depth, num_heads=heads, in_chans=in_chans,
                   image_size=image_size, patch_size=patch_size, global_pool=global_pool,
                   drop_path_rate=drop_path_rate)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"""{name}: {dim}-dim, 12 blocks, {heads} heads ({params} parameters at depth 12).

    Args:
        in_chans: input channels.
        image_size: input side length.
        patch_size: patch side; None = :func:`default_patch_size`. Must divide ``image_size``.
        global_pool: ``"token"`` (CLS) or ``"avg"`` (mean of patch tokens).
        drop_path_rate: stochastic-depth rate of the last block (linearly increasing).
        depth: transformer blocks (12 as DeiT; fewer for quick experiments and tests).

    Raises:
        ConfigError: if the patch size does not divide ``image_size`` or an option is invalid.
    """
    return build


for _name, _variant in _VARIANTS.items():
    register("backbone", _name, description=f"{_name} (timm), {_variant[0]} features",
             reference=_REFERENCE)(_factory(_name))
