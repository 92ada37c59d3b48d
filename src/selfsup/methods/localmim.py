"""LocalMIM: local multi-scale reconstruction, a decoder per encoder layer and scale.

Wang et al. 2023, "Masked Image Modeling with Local Multi-Scale Reconstruction" (CVPR 2023).
Reference code: Haoqing-Wang/LocalMIM ``ViT/models_mim.py`` (``MaskedAutoencoderViT``: ``ID``,
``scale``, ``forward_encoder``, ``recal_mask``, ``forward_loss``; ``MAE_Decoder``; ``HOGLayer``)
and ``ViT/run_pretrain.py`` / ``ViT/README.md`` (optimiser, augmentation).

- Masking (sec. 3.1, as MAE): per image a uniformly random ``mask_ratio`` (75%) of the patches is
  removed (:func:`selfsup.nn.masking.random_masking`); the ViT encoder sees the visible patches
  and its class token (:meth:`selfsup.nn.backbones.vit.ViT.forward_layers` with ``keep``).
- Multi-scale supervision (sec. 3.2, fig. 2): the tokens after blocks ``ID = [1, 3, depth-3,
  depth-1]`` (0-indexed; blocks 2, 4, 10, 12 of ViT-B's 12) are each normalised by a LayerNorm of
  their own (the last by the ViT's final norm, which is the reference's ``norm[3]``: it has no
  other) and decoded at grid scales ``[4, 2, 1, 0.5]``: lower layers predict finer regions. For
  depth ``d >= 6`` the blocks are the reference's ``[2, 4, d - 2, d]``; for shallower ViTs,
  where those repeat or fall outside, ``ceil(l d / 12)`` of (2, 4, 10, 12) (d = 4: 1, 2, 4, 4;
  d = 2: 1, 1, 2, 2), or ``layers`` as given.
- Decoders (``MAE_Decoder``): per scale an MAE decoder (:class:`selfsup.nn.mae_decoder.MAEDecoder`
  without its prediction layer: linear to ``decoder_dim`` 256, own mask token, sine-cosine
  positions, ``decoder_depth`` 1 block of 8 heads with qkv bias, LayerNorm), then the patch
  tokens as a ``grid x grid`` map and a head that resamples to the scale's grid: scale 4 = two
  stride-2 transposed convolutions (``dim -> dim/2``, LayerNorm2d, GELU, ``-> dim/4``), scale 2
  = one (``-> dim/2``), scale 1 = none, scale 0.5 = 2x2 average pooling; then a 1x1 convolution
  to the target's size.
- Local targets (sec. 3.3): at scale ``s`` a region is ``patch / s`` pixels square (ViT-B's
  16-px patches: 4, 8, 16, 32 px; here 4-px patches: 1, 2, 4, 8 px). ``target="hog"``, the
  reference's ViT setting: per colour channel, the region's histogram of oriented gradients
  (``nbins`` 9 unsigned bins, Sobel gradients, magnitudes pooled over the region) L2-normalised
  within the region, channels concatenated (:func:`selfsup.nn.hog.hog_cells`, whose formula is
  ``HOGLayer``'s: the reference average-pools where that sums, equal after the L2 norm).
  ``target="pixel"``, the paper's other target: the region's pixels normalised by the region's
  own mean and variance (:func:`selfsup.losses.reconstruction.local_pixel_targets`).
- Loss (``forward_loss``): per scale, MSE per region (mean over the target's features) weighted
  by the region's masked fraction (``recal_mask``: a finer region inherits its patch's mask, a
  coarser one averages its patches'), normalised by the weights' sum; the scales' losses are
  summed with ``weights`` (all 1 there) (:func:`selfsup.losses.reconstruction.localmim_loss`).
  Logged per scale as ``loss_s<scale>``.
- Initialisation (``initialize_weights``): sine-cosine encoder positions, frozen; patch
  projection Xavier as a linear layer; class and mask tokens normal(0.02); every linear layer
  Xavier uniform, LayerNorms (1, 0); the heads' convolutions keep PyTorch's default, as there.
- Optimiser (``run_pretrain.py``, README ViT-B command): AdamW, lr 2e-4 x B / 256, betas (0.9,
  0.95), weight decay 0.05 not on biases and norms, 40 warm-up epochs, cosine to min_lr 1e-6
  (``min_lr_ratio`` 6.25e-4 = 1e-6 / 1.6e-3, the peak at the README's batch 2048), no clipping.
  Augmentation: random resized crop (0.2-1) and flip (the ``mae`` preset).
- Features for evaluation: the ViT's pooled output as configured (class token), as MAE.

Scaling for 16-32 px images with 4-px patches: the region sizes follow from the patch (1-8 px),
the 0.5 scale needs an even patch grid (16 or 32 px; 28 px gives 7 x 7: drop the scale with
``scales=[4, 2, 1]`` and ``layers``), a 1-px region's HOG is the pixel's orientation bin, and
``target="pixel"`` needs regions of at least 2 values. Departure: the reference's encoder norms
are all separate modules; here the last one is the ViT's own final norm (the same computation,
and it is the norm the evaluated features use).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from selfsup.losses.reconstruction import local_pixel_targets, localmim_loss, multiscale_masks
from selfsup.methods.base import Method
from selfsup.nn.backbones.vit import check_vit, first_view
from selfsup.nn.hog import hog_cells
from selfsup.nn.mae_decoder import MAEDecoder, fixed_sincos_pos_, mae_encoder_init_, mae_init_
from selfsup.nn.masking import random_masking
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

_REF_LAYERS = (2, 4, 10, 12)  # models_mim.py ID = [1, 3, depth-3, depth-1], 1-indexed, depth 12
_SCALES = (4.0, 2.0, 1.0, 0.5)  # the scales MAE_Decoder implements


def localmim_layers(depth: int, n_scales: int, layers: Sequence[int] | None = None) -> list[int]:
    """The block (1-indexed) decoded at each scale: ``layers`` as given, else the reference's
    ``[2, 4, depth - 2, depth]`` for ``depth >= 6`` and ``ceil(l * depth / 12)`` of
    (2, 4, 10, 12) below.

    Raises:
        ConfigError: for a block outside ``[1, depth]``, a count other than the scales', or no
            scale on the last block.
    """
    if layers is None:
        if n_scales != len(_REF_LAYERS):
            raise ConfigError(f"method_args.layers must be set (one block per scale) for "
                              f"{n_scales} scales")
        layers = ([2, 4, depth - 2, depth] if depth >= 6
                  else [math.ceil(x * depth / 12) for x in _REF_LAYERS])
    out = [int(x) for x in layers]
    if len(out) != n_scales or not all(1 <= x <= depth for x in out) or max(out) != depth:
        raise ConfigError(f"method_args.layers must hold one block in [1, {depth}] per scale "
                          f"({n_scales}), the last block {depth} among them, got {list(layers)}")
    return out


class ScaleHead(nn.Module):
    """``MAE_Decoder.pred``: decoder patch tokens ``[B, g*g, dim]`` -> ``[B, (g s)^2, out_dim]``
    at grid scale ``s`` in {4, 2, 1, 0.5} (transposed convolutions up, average pooling down,
    then a 1x1 convolution)."""

    def __init__(self, dim: int, out_dim: int, scale: float, grid: int) -> None:
        super().__init__()
        self.grid = grid
        layers: list[nn.Module]
        if scale == 4.0:
            layers = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2, eps=1e-6),
                      nn.GELU(), nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)]
            hidden = dim // 4
        elif scale == 2.0:
            layers, hidden = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
        elif scale == 1.0:
            layers, hidden = [], dim
        elif scale == 0.5:
            layers, hidden = [nn.AvgPool2d(2, stride=2)], dim
        else:
            raise ConfigError(f"method_args.scales: each must be one of {list(_SCALES)}, got "
                              f"{scale}")
        self.net = nn.Sequential(*layers, nn.Conv2d(hidden, out_dim, 1))

    def forward(self, tokens: Tensor) -> Tensor:
        b, n, d = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        out: Tensor = self.net(x).flatten(2).transpose(1, 2)  # [B, (g s)^2, out]
        return out


@dataclass
class LocalMIMConfig:
    """LocalMIM hyper-parameters; defaults are the reference's (``selfsup.methods.localmim.Config``)."""

    mask_ratio: float = 0.75  # fraction of patches removed (README --mask_ratio 0.75)
    scales: list[float] = field(default_factory=lambda: list(_SCALES))  # grid scales (sec. 3.2)
    layers: list[int] | None = None  # block per scale; None = models_mim.py ID scaled (sec. 3.2)
    weights: list[float] | None = None  # per-scale loss weights; None = all 1 (forward_loss)
    target: str = "hog"  # "hog" (the ViT code's, sec. 3.3) or "pixel" (per-region normalised)
    hog_nbins: int = 9  # HOG orientation bins (README ViT-B --hog_nbins 9)
    decoder_dim: int = 256  # decoder width (MIM_vit_base_patch16 decoder_embed_dim)
    decoder_depth: int = 1  # blocks per decoder (decoder_depth=1)
    decoder_heads: int = 8  # decoder attention heads (decoder_num_heads=8)
    decoder_mlp_ratio: float = 4.0  # MLP width / decoder_dim (mlp_ratio=4)
    mae_init: bool = True  # models_mim.py initialize_weights (encoder) and MAE_Decoder's


Config = LocalMIMConfig


@register(
    "method",
    "localmim",
    description="local multi-scale reconstruction: decoders on several encoder layers predict "
    "region-normalised HOG (or pixels) of the masked regions, finer scales from lower layers",
    reference="Wang et al. 2023, Masked Image Modeling with Local Multi-Scale Reconstruction",
)
class LocalMIM(Method):
    """LocalMIM around a ViT backbone (``vit_tiny``, ``vit_small``, ``vit_base``).

    Attributes:
        backbone: the ViT encoder (evaluated and exported); ``pos_embed`` frozen sine-cosine.
        norms: per scale the LayerNorm of its block's tokens (Identity where the ViT's final
            norm serves, on the last block).
        decoders, heads: per scale an :class:`~selfsup.nn.mae_decoder.MAEDecoder` body and a
            :class:`ScaleHead`.
        layers, scales, regions: per scale the block, the grid scale, the region side in px.

    Raises:
        ConfigError: for a backbone that is not a ViT, or an invalid Config value.
    """

    Config: ClassVar[type] = LocalMIMConfig
    default_views: ClassVar[str] = "mae"
    backbone_kind: ClassVar[str] = "vit"
    # run_pretrain.py: AdamW(add_weight_decay(model, 0.05), betas=(0.9, 0.95)); README ViT-B:
    # blr 2e-4 scaled by B / 256, 40 warm-up epochs, min_lr 1e-6 (6.25e-4 of the peak at
    # batch 2048); no clipping
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adamw",
        "lr": 2e-4,
        "lr_scaling": "linear",
        "weight_decay": 0.05,
        "betas": (0.9, 0.95),
        "warmup_epochs": 40,
        "min_lr_ratio": 6.25e-4,
        "clip_grad": 0.0,
        "decay_norm_bias": False,
    }

    def __init__(self, backbone: nn.Module, cfg: LocalMIMConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        self.patch, self.in_chans = check_vit(backbone, "localmim")
        self.require_positive(cfg, ("decoder_dim", "decoder_depth", "decoder_heads", "hog_nbins"))
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method_args.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        if cfg.target not in ("hog", "pixel"):
            raise ConfigError(f"method_args.target must be 'hog' or 'pixel', got {cfg.target!r}")
        self.grid = int(self._vit.image_size) // self.patch
        self.num_patches = self.grid * self.grid
        self.depth = len(self._vit.blocks)
        self.scales = [float(s) for s in cfg.scales]
        self.layers = localmim_layers(self.depth, len(self.scales), cfg.layers)
        if cfg.weights is not None and len(cfg.weights) != len(self.scales):
            raise ConfigError(f"method_args.weights needs one weight per scale {self.scales}, "
                              f"got {cfg.weights}")
        self.regions = [self._region(s) for s in self.scales]
        fixed_sincos_pos_(self._vit, self.grid, "localmim")
        self.norms = nn.ModuleList([
            nn.Identity() if layer == self.depth else nn.LayerNorm(dim, eps=1e-6)
            for layer in self.layers])
        try:
            self.decoders = nn.ModuleList([
                MAEDecoder(dim, self.grid, None, cfg.decoder_dim, cfg.decoder_depth,
                           cfg.decoder_heads, cfg.decoder_mlp_ratio) for _ in self.scales])
        except ConfigError as e:
            raise ConfigError(f"method_args.decoder_dim / decoder_heads: {e}") from None
        self.heads = nn.ModuleList([
            ScaleHead(cfg.decoder_dim, self._target_dim(r), s, self.grid)
            for s, r in zip(self.scales, self.regions, strict=True)])
        tokens: list[Tensor] = [d.mask_token for d in self.decoders if isinstance(d, MAEDecoder)]
        if cfg.mae_init:
            mae_encoder_init_(self._vit)
            mae_init_(self, tokens)
        else:
            for t in tokens:
                nn.init.normal_(t, std=0.02)

    @property
    def _vit(self) -> Any:
        """The backbone as the ViT :func:`~selfsup.nn.backbones.vit.check_vit` accepted."""
        return self.backbone

    def _region(self, s: float) -> int:
        """Region side in pixels at grid scale ``s`` (``patch / s``), checked."""
        if s not in _SCALES:
            raise ConfigError(f"method_args.scales: each must be one of {list(_SCALES)}, got {s}")
        if (s >= 1 and self.patch % int(s)) or (s < 1 and self.grid % 2):
            raise ConfigError(f"method_args.scales: scale {s} needs a patch size divisible by "
                              f"{int(s)} and an even patch grid, got patch {self.patch}, grid "
                              f"{self.grid}")
        region = int(self.patch / s)
        if self.cfg.target == "pixel" and region * region * self.in_chans < 2:
            raise ConfigError(f"method_args.target='pixel' at scale {s}: a {region}-px region of "
                              f"{self.in_chans} channel(s) holds one value, nothing to normalise;"
                              f" use target='hog' or drop the scale")
        return region

    def _target_dim(self, region: int) -> int:
        if self.cfg.target == "hog":
            return self.in_chans * int(self.cfg.hog_nbins)
        return region * region * self.in_chans

    def targets(self, x: Tensor) -> list[Tensor]:
        """Per scale the local target ``[B, (g s)^2, D_s]`` of images ``x`` ``[B, C, S, S]``."""
        out = []
        for r in self.regions:
            if self.cfg.target == "hog":
                h = hog_cells(x, cell_size=r, nbins=int(self.cfg.hog_nbins))  # [B, C, K, h, w]
                out.append(h.flatten(1, 2).flatten(2).transpose(1, 2))  # [B, hw, C*K]
            else:
                out.append(local_pixel_targets(x, r))
        return out

    def encode(self, x: Tensor, keep: Tensor) -> list[Tensor]:
        """Per scale its block's tokens ``[B, 1 + K, D]`` on the visible patches ``keep``, each
        after its LayerNorm (the ViT's final norm on the last block)."""
        outs = self._vit.forward_layers(x, self.layers, keep=keep)  # raw, [B, 1 + K, D] each
        return [self._vit.norm(z) if layer == self.depth else norm(z)
                for layer, z, norm in zip(self.layers, outs, self.norms, strict=True)]

    def training_step(self, batch: Batch) -> StepOutput:
        """Mask ``batch.views[0]`` ``[B, C, S, S]``, encode the visible patches, predict every
        scale's local targets and score the masked regions.

        Raises:
            DataError: without a view, for a view of another size or channel count, or for
                ``batch.masks`` that do not fit.
        """
        x = first_view(batch.views, "localmim", self.in_chans, self.grid * self.patch)
        ms = batch.masks if batch.masks is not None else self.sample_masks(x.shape[0], x.device)
        keep, mask, restore = (ms[k].to(x.device) for k in ("keep", "mask", "ids_restore"))
        if keep.shape[0] != x.shape[0] or mask.shape != (x.shape[0], self.num_patches):
            raise DataError(f"localmim: batch.masks do not fit {x.shape[0]} images of "
                            f"{self.num_patches} patches (keep {tuple(keep.shape)}, mask "
                            f"{tuple(mask.shape)})")
        latents = self.encode(x, keep)
        preds = [head(dec(z, restore))  # [B, (g s)^2, D_s] per scale
                 for z, dec, head in zip(latents, self.decoders, self.heads, strict=True)]
        masks = multiscale_masks(mask, self.grid, self.scales)
        loss, parts = localmim_loss(preds, self.targets(x), masks, self.cfg.weights)
        logs = {f"loss_s{s:g}": p.detach() for s, p in zip(self.scales, parts, strict=True)}
        last = latents[self.layers.index(self.depth)]  # the final normalised tokens
        return StepOutput(loss=loss, logs={**logs, "visible": float(keep.shape[1])},
                          embeddings=last[:, 1:].mean(dim=1).detach())

    def sample_masks(self, batch_size: int, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """MAE's per-sample random masks (:func:`~selfsup.nn.masking.random_masking`):
        ``keep`` ``[B, K]``, ``mask`` ``[B, N]`` (True = removed), ``ids_restore`` ``[B, N]``."""
        ms = random_masking(batch_size, self.num_patches, self.cfg.mask_ratio, device=device,
                            generator=generator)
        return {"keep": ms.keep, "mask": ms.mask, "ids_restore": ms.ids_restore}

    def extra_repr(self) -> str:
        return (f"patch={self.patch}, grid={self.grid}x{self.grid}, layers={self.layers}, "
                f"scales={self.scales}, regions={self.regions}px, target={self.cfg.target}")
