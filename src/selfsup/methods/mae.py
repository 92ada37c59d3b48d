"""MAE: masked autoencoders reconstruct the pixels of randomly masked patches.

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners". Reference code:
facebookresearch/mae ``models_mae.py`` (``MaskedAutoencoderViT``: ``random_masking``,
``forward_encoder``, ``forward_decoder``, ``forward_loss``, ``initialize_weights``) and
``main_pretrain.py`` (optimiser, augmentation).

- Masking (sec. 3): per image, a uniformly random ``mask_ratio`` (75%) of the patches is removed
  by argsorting per-sample noise (:func:`selfsup.nn.masking.random_masking`); the encoder, a ViT,
  sees only the visible patches (plus its class token), with their position embeddings added
  before the removal (:meth:`selfsup.nn.backbones.vit.ViT.forward_tokens` with ``keep``).
- Decoder (sec. 3, table 1a-b; :mod:`selfsup.nn.mae_decoder`, its parts kept here as this
  module's own attributes): a linear map to ``decoder_dim`` (512), a learned mask token for
  every removed patch, the tokens put back in the original order (``ids_restore``), fixed 2-D
  sine-cosine position embeddings, ``decoder_depth`` (8) transformer blocks with
  ``decoder_heads`` (16) heads, LayerNorm and a linear prediction of the ``p*p*C`` pixels of
  every patch. The decoder is used for pre-training only; the encoder is what is evaluated.
- Target and loss (sec. 3, table 1c): the normalised input's pixels per patch, each patch
  normalised by its own mean and variance (``norm_pix_loss``, on in the paper's recipe), MSE
  averaged over the masked patches only (:func:`selfsup.losses.reconstruction.mae_loss`).
- Position embeddings: fixed sine-cosine in the encoder too (the reference builds ``pos_embed``
  with ``requires_grad=False``); this file writes them into the ViT's ``pos_embed`` and freezes
  it (always, also with ``mae_init`` off: a pre-trained ViT loses its learned embedding).
  ``mae_init`` applies the reference's ``initialize_weights`` to encoder and decoder (Xavier
  uniform for every linear layer and the patch projection, normal(0.02) for the class and mask
  tokens); off, every other weight keeps its initialisation (the backbone's own, PyTorch's
  default for the decoder's linear layers).
- Optimiser (``main_pretrain.py``, appendix A.1): AdamW, lr 1.5e-4 x B / 256, betas (0.9, 0.95),
  weight decay 0.05 on weights only (timm's ``add_weight_decay``: no decay for biases and 1-D
  parameters; the class and mask tokens are 3-D and decayed, as there), cosine schedule with 40
  warm-up epochs of 800 (here capped at half a short run by the trainer), no gradient clipping.
- Augmentation: random resized crop (scale 0.2-1) and horizontal flip only (the ``mae`` preset;
  the reference resizes bicubically, the library's batched crop bilinearly).
- Features for evaluation: the ViT's pooled output as configured (``global_pool="token"``, the
  class token, is what MAE's linear probe reads, there behind a ``BatchNorm1d`` without affine
  parameters: the library's linear probe standardises every feature with the train set's mean
  and std, which is what that BatchNorm computes at evaluation). MAE's fine-tuning averages the
  patch tokens and then normalises (``fc_norm``), where the library's ``global_pool="avg"``
  normalises every token and then averages. ``selfsup eval finetune`` takes MAE's recipe
  (``--recipe mae``: AdamW, layer-wise lr decay 0.75, drop path, label smoothing; without
  RandAugment, mixup and cutmix) by default for this family. MAE features are weak under linear
  probes and strong under fine-tuning (sec. 4, fig. 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.reconstruction import mae_loss
from selfsup.methods.base import Method
from selfsup.nn.backbones.vit import check_vit, first_view
from selfsup.nn.mae_decoder import (
    decoder_blocks,
    fixed_sincos_pos_,
    mae_decode,
    mae_encoder_init_,
    mae_init_,
)
from selfsup.nn.masking import random_masking
from selfsup.nn.patches import patchify, sincos_2d
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput


@dataclass
class MAEConfig:
    """MAE hyper-parameters; defaults are the paper's (``selfsup.methods.mae.Config``)."""

    mask_ratio: float = 0.75  # fraction of patches removed (sec. 4, fig. 5: 75% is best)
    decoder_dim: int = 512  # decoder width (table 1b; models_mae.py decoder_embed_dim)
    decoder_depth: int = 8  # decoder blocks (table 1a)
    decoder_heads: int = 16  # decoder attention heads (models_mae.py decoder_num_heads)
    decoder_mlp_ratio: float = 4.0  # MLP width / decoder_dim in every decoder block
    norm_pix_loss: bool = True  # per-patch normalised pixel target (table 1c, the recipe's flag)
    mae_init: bool = True  # models_mae.py initialize_weights over encoder and decoder


Config = MAEConfig


@register(
    "method",
    "mae",
    description="masked autoencoder: ViT encoder on 25% visible patches, light decoder "
    "reconstructs the normalised pixels of the masked ones",
    reference="He et al. 2022, Masked Autoencoders Are Scalable Vision Learners",
)
class MAE(Method):
    """MAE around a ViT backbone (``vit_tiny``, ``vit_small``, ``vit_base``).

    Attributes:
        backbone: the ViT encoder (evaluated and exported); its ``pos_embed`` is frozen sine-cosine.
        decoder_embed: linear ``[B, 1 + K, D] -> [B, 1 + K, decoder_dim]``.
        mask_token: learned ``[1, 1, decoder_dim]`` token standing for every removed patch.
        decoder_blocks: ``decoder_depth`` timm transformer blocks.
        decoder_norm, decoder_pred: LayerNorm, then linear to ``p*p*C`` pixels per patch.
        decoder_pos_embed: fixed ``[1, 1 + N, decoder_dim]`` sine-cosine buffer.

    Raises:
        ConfigError: for a backbone that is not a ViT, or an invalid Config value.
    """

    Config: ClassVar[type] = MAEConfig
    default_views: ClassVar[str] = "mae"
    backbone_kind: ClassVar[str] = "vit"
    # main_pretrain.py: AdamW(param_groups, lr, betas=(0.9, 0.95)), blr 1.5e-4 scaled by
    # B / 256, weight decay 0.05 (not on biases / norms), 40 warm-up epochs then half-cycle
    # cosine to min_lr 0 (util/lr_sched.py); no clipping in pre-training
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

    decoder_pos_embed: Tensor

    def __init__(self, backbone: nn.Module, cfg: MAEConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        self.patch, self.in_chans = check_vit(backbone, "mae")
        self.require_positive(cfg, ("decoder_dim", "decoder_depth", "decoder_heads"))
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method_args.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        if cfg.decoder_dim % cfg.decoder_heads or cfg.decoder_dim % 4:
            raise ConfigError(f"method_args.decoder_dim={cfg.decoder_dim} must be a multiple of 4 "
                              f"and of method_args.decoder_heads={cfg.decoder_heads}")
        image_size = int(self._vit.image_size)
        self.grid = image_size // self.patch
        self.num_patches = self.grid * self.grid
        fixed_sincos_pos_(self._vit, self.grid, "mae")
        self.decoder_embed = nn.Linear(dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(
            cfg.decoder_dim, self.grid, cls_token=True).unsqueeze(0), persistent=False)
        self.decoder_blocks = decoder_blocks(cfg.decoder_dim, cfg.decoder_depth,
                                             cfg.decoder_heads, cfg.decoder_mlp_ratio)
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch ** 2 * self.in_chans)
        if cfg.mae_init:
            self._initialize_weights()
        else:
            nn.init.normal_(self.mask_token, std=0.02)

    @property
    def _vit(self) -> Any:
        """The backbone as the ViT :func:`~selfsup.nn.backbones.vit.check_vit` accepted (token access, patch embedding)."""
        return self.backbone

    @torch.no_grad()
    def _initialize_weights(self) -> None:
        """models_mae.py ``initialize_weights``: patch projection as a linear layer (Xavier
        uniform), class and mask tokens normal(0.02), every Linear Xavier uniform with zero bias,
        every LayerNorm (1, 0)."""
        mae_encoder_init_(self._vit)
        mae_init_(self, [self.mask_token])

    def decode(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``[B, 1 + K, D]`` encoder tokens (class token first, visible patches in ``keep``
        order) -> predicted pixels ``[B, N, p*p*C]`` of every patch in the original order."""
        return mae_decode(latent, ids_restore, embed=self.decoder_embed,
                          mask_token=self.mask_token, pos_embed=self.decoder_pos_embed,
                          blocks=self.decoder_blocks, norm=self.decoder_norm,
                          pred=self.decoder_pred)

    def training_step(self, batch: Batch) -> StepOutput:
        """Mask ``batch.views[0]`` ``[B, C, S, S]`` (``S`` = the ViT's image size), encode the
        visible patches, reconstruct all and score the masked ones.

        Raises:
            DataError: without a view, or for a view of another size or channel count.
        """
        x = first_view(batch.views, "mae", self.in_chans, self.grid * self.patch)
        ms = batch.masks if batch.masks is not None else self.sample_masks(x.shape[0], x.device)
        keep, mask, restore = (ms[k].to(x.device) for k in ("keep", "mask", "ids_restore"))
        if keep.shape[0] != x.shape[0] or mask.shape != (x.shape[0], self.num_patches):
            raise DataError(f"mae: batch.masks do not fit {x.shape[0]} images of "
                            f"{self.num_patches} patches (keep {tuple(keep.shape)}, mask "
                            f"{tuple(mask.shape)})")
        latent = self._vit.forward_tokens(x, keep=keep)  # [B, 1 + K, D]
        pred = self.decode(latent, restore)  # [B, N, p*p*C]
        loss = mae_loss(pred, patchify(x, self.patch), mask, self.cfg.norm_pix_loss)
        # the collapse monitor reads the mean visible patch token: no loss acts on the class
        # token directly, and its low rank early in MAE training is no sign of collapse
        return StepOutput(loss=loss, logs={"visible": float(keep.shape[1])},
                          embeddings=latent[:, 1:].mean(dim=1).detach())

    def sample_masks(self, batch_size: int, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """MAE's per-sample random masks for ``batch_size`` images
        (:func:`~selfsup.nn.masking.random_masking`): ``keep`` ``[B, K]``, ``mask`` ``[B, N]``
        (True = removed), ``ids_restore`` ``[B, N]``; what ``Batch.masks`` may carry."""
        ms = random_masking(batch_size, self.num_patches, self.cfg.mask_ratio, device=device,
                            generator=generator)
        return {"keep": ms.keep, "mask": ms.mask, "ids_restore": ms.ids_restore}

    @torch.no_grad()
    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
        """``(predicted patches [B, N, p*p*C], mask [B, N])`` of images ``x`` under a fresh
        random mask (for visualisation; a normalised target is predicted when
        ``norm_pix_loss``)."""
        ms = self.sample_masks(x.shape[0], x.device, generator)
        latent = self._vit.forward_tokens(x, keep=ms["keep"])
        return self.decode(latent, ms["ids_restore"]), ms["mask"]

    def extra_repr(self) -> str:
        visible = int(self.num_patches * (1 - self.cfg.mask_ratio))
        return (f"patch={self.patch}, grid={self.grid}x{self.grid}, "
                f"mask_ratio={self.cfg.mask_ratio}, visible={visible}")
