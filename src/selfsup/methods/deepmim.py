"""DeepMIM: MAE with deep supervision, a decoder on several encoder layers.

Ren et al. 2023, "DeepMIM: Deep Supervision for Masked Image Modeling" (arXiv 2303.08817).
Reference code: OliverRensu/DeepMIM ``models_mae.py`` (``forward_encoder`` returning the tokens
after blocks 6, 8, 10 and the normalised output of block 12, ``forward_decoder1``-``4``,
``forward_loss``), ``engine_pretrain.py`` (``loss = loss1 + loss2 + loss3 + loss4``) and
``main_pretrain.py`` / ``README.md`` (optimiser, augmentation).

- Masking (sec. 3.1, as MAE): per image a uniformly random ``mask_ratio`` (75%) of the patches is
  removed (:func:`selfsup.nn.masking.random_masking`); the ViT encoder sees the visible patches
  and its class token (:meth:`selfsup.nn.backbones.vit.ViT.forward_layers` with ``keep``).
- Deep supervision (sec. 3.2, fig. 2): besides the last block, the tokens after intermediate
  blocks feed decoders of their own. The reference taps blocks 6, 8, 10 and 12 of ViT-B's 12;
  the intermediate tokens go to their decoder **unnormalised** (the raw block output, as the
  reference's ``f.append(x)``), the last one after the encoder's final LayerNorm. For other
  depths ``d`` the blocks are ``ceil(l d / 12)`` of (6, 8, 10, 12), repeats dropped (d = 4:
  blocks 2, 3, 4; d = 2: blocks 1, 2), or ``layers`` as given.
- Decoders (``models_mae.py``): one MAE decoder per tapped layer, no weight sharing
  (:class:`selfsup.nn.mae_decoder.MAEDecoder`: linear to ``decoder_dim`` 512, own mask token,
  fixed sine-cosine positions, ``decoder_depth`` blocks with 16 heads, LayerNorm, linear
  prediction). The reference's ViT-B factory builds them with ``decoder_depth=4`` (its name says
  8; 4 is what runs), the default here.
- Target and loss (sec. 3.2-3.3): every decoder reconstructs the per-patch normalised pixels of
  the masked patches (MAE's ``norm_pix_loss``, :func:`selfsup.losses.reconstruction.mae_loss`),
  and the total is the plain sum over the decoders (``weights`` all 1, as ``engine_pretrain.py``;
  :func:`selfsup.losses.reconstruction.deep_supervision_loss`). The per-layer losses are logged
  as ``loss_l<block>``.
- Initialisation (``initialize_weights``): sine-cosine encoder positions, frozen; patch
  projection Xavier as a linear layer; class and mask tokens normal(0.02); every linear layer
  Xavier uniform, LayerNorms (1, 0) (``mae_init``, as :mod:`selfsup.methods.mae`).
- Optimiser (``main_pretrain.py``, README command): AdamW, lr 1.5e-4 x B / 256, betas (0.9,
  0.95), weight decay 0.05 not on biases and norms, 40 warm-up epochs then cosine to 0, no
  clipping. Augmentation: random resized crop (0.2-1) and flip (the ``mae`` preset).
- Features for evaluation: the ViT's pooled output (class token after the final norm), as MAE.

Departure: the released code's target is the output of a frozen CLIP ViT-B/16 (512-d per token,
loss ``2 - 2 cos`` on the masked tokens; "DeepMIM-CLIP" of the paper's tables). No CLIP weights
ship with the library, so this file implements the paper's pixel-target variant (DeepMIM on MAE,
sec. 4 "compatible with many MIM models across reconstruction targets"), whose loss per decoder
is MAE's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.reconstruction import deep_supervision_loss
from selfsup.methods.base import Method
from selfsup.nn.backbones.vit import check_vit, first_view
from selfsup.nn.mae_decoder import MAEDecoder, fixed_sincos_pos_, mae_encoder_init_, mae_init_
from selfsup.nn.masking import random_masking
from selfsup.nn.patches import patchify
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

_REF_LAYERS = (6, 8, 10, 12)  # models_mae.py forward_encoder: count == 6, 8, 10 and the output


def deepmim_layers(depth: int, layers: Sequence[int] | None = None) -> list[int]:
    """The supervised blocks (1-indexed, ascending, distinct) of a ``depth``-block ViT: the
    given ``layers``, or the reference's (6, 8, 10, 12) of 12 scaled as ``ceil(l * depth / 12)``.

    Raises:
        ConfigError: for a block outside ``[1, depth]`` or a last block that is not ``depth``.
    """
    chosen = (sorted({math.ceil(x * depth / 12) for x in _REF_LAYERS}) if layers is None
              else sorted(set(layers)))
    if not chosen or chosen[0] < 1 or chosen[-1] != depth:
        raise ConfigError(f"method_args.layers must be blocks in [1, {depth}] ending with the "
                          f"last block {depth}, got {layers}")
    return chosen


@dataclass
class DeepMIMConfig:
    """DeepMIM hyper-parameters; defaults are the reference's (``selfsup.methods.deepmim.Config``)."""

    mask_ratio: float = 0.75  # fraction of patches removed (README --mask_ratio 0.75, as MAE)
    layers: list[int] | None = None  # supervised blocks; None = [6, 8, 10, 12] of 12 scaled (sec. 3.2)
    weights: list[float] | None = None  # per-layer loss weights; None = all 1 (engine_pretrain.py)
    decoder_dim: int = 512  # decoder width (models_mae.py decoder_embed_dim)
    decoder_depth: int = 4  # blocks per decoder (mae_vit_base_patch16_dec512d8b: depth 4)
    decoder_heads: int = 16  # decoder attention heads (decoder_num_heads)
    decoder_mlp_ratio: float = 4.0  # MLP width / decoder_dim (mlp_ratio=4)
    norm_pix_loss: bool = True  # per-patch normalised pixel target (README --norm_pix_loss)
    mae_init: bool = True  # models_mae.py initialize_weights over encoder and decoders


Config = DeepMIMConfig


@register(
    "method",
    "deepmim",
    description="MAE with deep supervision: decoders on several encoder layers each "
    "reconstruct the normalised pixels of the masked patches; losses summed",
    reference="Ren et al. 2023, DeepMIM: Deep Supervision for Masked Image Modeling",
)
class DeepMIM(Method):
    """DeepMIM around a ViT backbone (``vit_tiny``, ``vit_small``, ``vit_base``).

    Attributes:
        backbone: the ViT encoder (evaluated and exported); ``pos_embed`` frozen sine-cosine.
        decoders: one :class:`~selfsup.nn.mae_decoder.MAEDecoder` per supervised block.
        layers: the supervised blocks, 1-indexed, ascending; the last is the final block.

    Raises:
        ConfigError: for a backbone that is not a ViT, or an invalid Config value.
    """

    Config: ClassVar[type] = DeepMIMConfig
    default_views: ClassVar[str] = "mae"
    backbone_kind: ClassVar[str] = "vit"
    # main_pretrain.py: AdamW(add_weight_decay(model, 0.05), betas=(0.9, 0.95)), blr 1.5e-4
    # scaled by B / 256, min_lr 0, 40 warm-up epochs (README command), no clipping
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adamw",
        "lr": 1.5e-4,
        "lr_scaling": "linear",
        "weight_decay": 0.05,
        "betas": (0.9, 0.95),
        "warmup_epochs": 40,
        "min_lr_ratio": 0.0,
        "clip_grad": 0.0,
        "decay_norm_bias": False,
    }

    def __init__(self, backbone: nn.Module, cfg: DeepMIMConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        self.patch, self.in_chans = check_vit(backbone, "deepmim")
        self.require_positive(cfg, ("decoder_dim", "decoder_depth", "decoder_heads"))
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method_args.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        self.layers = deepmim_layers(len(self._vit.blocks), cfg.layers)
        if cfg.weights is not None and len(cfg.weights) != len(self.layers):
            raise ConfigError(f"method_args.weights needs one weight per supervised block "
                              f"{self.layers}, got {cfg.weights}")
        self.grid = int(self._vit.image_size) // self.patch
        self.num_patches = self.grid * self.grid
        fixed_sincos_pos_(self._vit, self.grid, "deepmim")
        try:
            self.decoders = nn.ModuleList([
                MAEDecoder(dim, self.grid, self.patch ** 2 * self.in_chans, cfg.decoder_dim,
                           cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_mlp_ratio)
                for _ in self.layers])
        except ConfigError as e:
            raise ConfigError(f"method_args.decoder_dim / decoder_heads: {e}") from None
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

    def encode(self, x: Tensor, keep: Tensor) -> list[Tensor]:
        """``[B, C, S, S]`` images, ``[B, K]`` visible patches -> one ``[B, 1 + K, D]`` per
        supervised block: the raw block output, the final block's after the encoder's norm."""
        outs = self._vit.forward_layers(x, self.layers, keep=keep)
        return [*outs[:-1], self._vit.norm(outs[-1])]

    def training_step(self, batch: Batch) -> StepOutput:
        """Mask ``batch.views[0]`` ``[B, C, S, S]``, encode the visible patches, reconstruct
        every patch from every supervised block and sum the masked-patch losses.

        Raises:
            DataError: without a view, for a view of another size or channel count, or for
                ``batch.masks`` that do not fit.
        """
        x = first_view(batch.views, "deepmim", self.in_chans, self.grid * self.patch)
        ms = batch.masks if batch.masks is not None else self.sample_masks(x.shape[0], x.device)
        keep, mask, restore = (ms[k].to(x.device) for k in ("keep", "mask", "ids_restore"))
        if keep.shape[0] != x.shape[0] or mask.shape != (x.shape[0], self.num_patches):
            raise DataError(f"deepmim: batch.masks do not fit {x.shape[0]} images of "
                            f"{self.num_patches} patches (keep {tuple(keep.shape)}, mask "
                            f"{tuple(mask.shape)})")
        latents = self.encode(x, keep)
        preds = [dec(z, restore) for dec, z in zip(self.decoders, latents, strict=True)]
        loss, parts = deep_supervision_loss(preds, patchify(x, self.patch), mask,
                                            self.cfg.weights, self.cfg.norm_pix_loss)
        logs = {f"loss_l{i}": p.detach() for i, p in zip(self.layers, parts, strict=True)}
        return StepOutput(loss=loss, logs={**logs, "visible": float(keep.shape[1])},
                          embeddings=latents[-1][:, 1:].mean(dim=1).detach())

    def sample_masks(self, batch_size: int, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """MAE's per-sample random masks (:func:`~selfsup.nn.masking.random_masking`):
        ``keep`` ``[B, K]``, ``mask`` ``[B, N]`` (True = removed), ``ids_restore`` ``[B, N]``."""
        ms = random_masking(batch_size, self.num_patches, self.cfg.mask_ratio, device=device,
                            generator=generator)
        return {"keep": ms.keep, "mask": ms.mask, "ids_restore": ms.ids_restore}

    def extra_repr(self) -> str:
        return (f"patch={self.patch}, grid={self.grid}x{self.grid}, layers={self.layers}, "
                f"mask_ratio={self.cfg.mask_ratio}")
