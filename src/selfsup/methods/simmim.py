"""SimMIM: masked patches replaced by a learned token, raw pixels regressed by a linear head.

Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling". Reference code:
microsoft/SimMIM ``models/simmim.py`` (``VisionTransformerForSimMIM``, ``SimMIM``),
``data/data_simmim.py`` (``MaskGenerator``, ``SimMIMTransform``) and
``configs/vit_base__800ep/simmim_pretrain__vit_base__img224__800ep.yaml``.

- Masking (sec. 3.1, table 1): random masking of *mask patches* larger than the model's patches
  (32 px over 16-px ViT patches), ratio 0.6 (:func:`selfsup.nn.masking.simmim_mask`). For small
  images ``mask_patch_size = 0`` takes twice the ViT's patch, the paper's 32 / 16 ratio (e.g.
  8-px mask patches over 4-px patches at 32 px).
- Encoder (sec. 3.1): every patch goes through the ViT; a masked patch's embedding is replaced by
  one learned ``mask_token`` before the position embedding is added
  (:meth:`selfsup.nn.backbones.vit.ViT.forward_tokens` with ``mask``).
- Prediction head (sec. 3.2, table 3): one linear layer per patch token (a 1x1 convolution to
  ``p*p*C`` values and a pixel shuffle, as the code), predicting the raw (normalised input)
  pixels.
- Loss (sec. 3.3, eq. 1): L1 on the masked pixels, ``sum(|x - y| m) / (sum(m) + 1e-5) / C``
  (:func:`selfsup.losses.reconstruction.simmim_loss`).
- Optimiser (config file, ``config.py``, ``optimizer.py``): AdamW, base lr 1e-4 at batch 512
  (5e-5 x B / 256 here), betas (0.9, 0.999), weight decay 0.05 not on biases and 1-D
  parameters, 10 warm-up epochs, gradient clipping at norm 5.0.
- Augmentation: random resized crop (scale 0.67-1) and flip (the ``simmim`` preset).

Departures, mostly from the ViT the library shares: the reference's ViT-B uses a shared
relative position bias and layer scale 0.1 with no absolute position embedding, truncated
normal(0.02) initialisation of every linear layer, the patch projection and the class token
with ``fix_init_weight``'s depth rescaling, and stochastic depth 0.1; the library's timm ViT has
learned absolute position embeddings, no layer scale, timm's initialisation, and drop path only
when asked (``--set backbone.kwargs.drop_path_rate=0.1`` for the reference's). The reference
exempts the class token from weight decay (``no_weight_decay``; the mask token is decayed for
ViTs, as here); the library's decay groups exempt parameters with fewer than 2 dimensions only,
so the class token and the absolute position embedding are decayed. Its schedule is multi-step
(x0.1 at epoch 700 of 800) with warm-up from 5e-7; cosine here, warm-up from lr / steps.

Hierarchical encoder (sec. 3.1 and the reference's ``SwinTransformerForSimMIM``): with
``--backbone convvit_tiny`` / ``convvit_base`` (ConvMAE's conv-transformer; Swin itself is not
in the library) the mask token replaces the masked positions right after the first patch
embedding, every convolution and transformer block then sees it (no masked convolution), and
the head predicts each final token's ``total stride x total stride`` pixels; mask patches default
to the total stride (the reference's 32-px mask patches over Swin's stride 32). The patch
embedding's kernel equals its stride, so masked pixels reach nothing (tested). The mask token
there has the first stage's width.

Features for evaluation: the mean of the patch tokens (``eval_pool = "avg"`` fills
``backbone.kwargs.global_pool=avg`` unless the user sets it): no loss reaches the class token,
and the reference fine-tunes on mean-pooled patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.reconstruction import simmim_loss
from selfsup.methods.base import Method
from selfsup.nn.backbones.vit import check_vit, first_view
from selfsup.nn.masking import simmim_mask
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput


@dataclass
class SimMIMConfig:
    """SimMIM hyper-parameters; defaults are the paper's (``selfsup.methods.simmim.Config``)."""

    mask_ratio: float = 0.6  # fraction of mask patches masked (table 1: 0.6 with 32-px patches)
    mask_patch_size: int = 0  # mask patch side in px (sec. 3.1: 32 over 16-px model patches);
    # 0 = twice the ViT's patch size, the paper's ratio, for any image size


Config = SimMIMConfig


@register(
    "method",
    "simmim",
    description="masked patches replaced by a learned token, raw pixels regressed by a linear "
    "head with L1 on the masked pixels",
    reference="Xie et al. 2022, SimMIM: A Simple Framework for Masked Image Modeling",
)
class SimMIM(Method):
    """SimMIM around a ViT backbone.

    Attributes:
        backbone: the ViT encoder (evaluated and exported).
        mask_token: learned ``[1, 1, D]`` embedding of a masked patch.
        decoder: ``Conv2d(D, p*p*C, 1)`` + ``PixelShuffle(p)``: ``[B, D, h, w] -> [B, C, H, W]``.

    Raises:
        ConfigError: for a backbone that is not a ViT, or a mask patch size that does not tile
            the image in whole ViT patches.
    """

    Config: ClassVar[type] = SimMIMConfig
    default_views: ClassVar[str] = "simmim"
    backbone_kind: ClassVar[str] = "vit"  # or ConvMAE's hierarchical ConvViT
    # no loss reaches the class token; SimMIM's ViT is fine-tuned on the mean patch token
    # (use_mean_pooling in the reference's finetune configs), so kNN / linear probes read that
    eval_pool: ClassVar[str | None] = "avg"
    # simmim_pretrain__vit_base__img224__800ep.yaml + config.py defaults: BASE_LR 1e-4 scaled by
    # B / 512, WEIGHT_DECAY 0.05, WARMUP_EPOCHS 10, CLIP_GRAD 5.0, AdamW betas (0.9, 0.999)
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adamw",
        "lr": 5e-5,
        "lr_scaling": "linear",
        "weight_decay": 0.05,
        "betas": (0.9, 0.999),
        "warmup_epochs": 10,
        "min_lr_ratio": 0.0,
        "clip_grad": 5.0,
        "decay_norm_bias": False,
    }

    def __init__(self, backbone: nn.Module, cfg: SimMIMConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        # a hierarchical encoder (ConvMAE's ConvViT): the mask token enters after the first
        # patch embedding and the head predicts each final token's total-stride patch, as the
        # reference's SwinTransformerForSimMIM (encoder_stride 32 over 4-px patch embedding)
        self.hierarchical = callable(getattr(backbone, "conv_stages", None)) and isinstance(
            getattr(backbone, "dims", None), tuple)
        if self.hierarchical:
            bb: Any = backbone
            self.patch, self.in_chans = int(bb.patch_size), int(bb.in_chans)
            token_dim = int(bb.dims[0])
        else:
            self.patch, self.in_chans = check_vit(backbone, "simmim")
            token_dim = dim
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method_args.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        image_size = int(self._vit.image_size)
        self.grid = image_size // self.patch
        # ViT: twice the patch (the paper's 32 over 16 px); hierarchical: the total stride (32
        # over Swin's stride 32)
        self.mask_patch = cfg.mask_patch_size or (self.patch if self.hierarchical
                                                  else 2 * self.patch)
        if self.mask_patch % self.patch or image_size % self.mask_patch:
            fits = [m for m in range(self.patch, image_size + 1, self.patch)
                    if image_size % m == 0]
            raise ConfigError(f"simmim: method_args.mask_patch_size={self.mask_patch} must be a "
                              f"multiple of the ViT's patch size {self.patch} that divides the "
                              f"image size {image_size} (e.g. {fits[:5]})")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, token_dim))
        # VisionTransformerForSimMIM: trunc_normal_(std=.02, a=-std, b=std)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(dim, self.patch ** 2 * self.in_chans, kernel_size=1),
            nn.PixelShuffle(self.patch))

    @property
    def _vit(self) -> Any:
        """The backbone as the ViT :func:`~selfsup.nn.backbones.vit.check_vit` accepted."""
        return self.backbone

    def sample_masks(self, batch_size: int, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """SimMIM's masks for ``batch_size`` images: ``mask`` ``[B, N]`` bool over the ViT's
        patch grid (True = masked), unions of aligned mask patches; what ``Batch.masks`` may
        carry."""
        mask = simmim_mask(batch_size, self.grid, self.mask_patch, self.patch,
                           self.cfg.mask_ratio, device=device, generator=generator)
        return {"mask": mask}

    def reconstruct(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``x`` ``[B, C, H, W]`` with patches ``mask`` ``[B, N]`` masked ->
        ``(reconstructed images [B, C, H, W], encoder patch tokens [B, N, D])``."""
        tokens = self._vit.forward_tokens(x, mask=mask, mask_token=self.mask_token)
        tokens = tokens if self.hierarchical else tokens[:, 1:]  # [B, N, D], no class token
        z = tokens.transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid)
        out: Tensor = self.decoder(z)
        return out, tokens

    def training_step(self, batch: Batch) -> StepOutput:
        """Mask ``batch.views[0]`` ``[B, C, S, S]`` (``S`` = the ViT's image size), reconstruct
        it and score the masked pixels.

        Raises:
            DataError: without a view, or for a view of another size or channel count.
        """
        x = first_view(batch.views, "simmim", self.in_chans, self.grid * self.patch)
        ms = batch.masks if batch.masks is not None else self.sample_masks(x.shape[0], x.device)
        mask = ms["mask"].to(x.device)
        if mask.shape != (x.shape[0], self.grid * self.grid):
            raise DataError(f"simmim: batch.masks['mask'] must be [{x.shape[0]}, "
                            f"{self.grid * self.grid}], got {tuple(mask.shape)}")
        rec, tokens = self.reconstruct(x, mask)
        pixel_mask = mask.reshape(-1, 1, self.grid, self.grid).to(x.dtype)
        pixel_mask = pixel_mask.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)
        loss = simmim_loss(rec, x, pixel_mask)
        # the collapse monitor reads the mean patch token of the masked pass
        return StepOutput(loss=loss, logs={"masked": mask.float().mean().detach()},
                          embeddings=tokens.mean(dim=1).detach())
