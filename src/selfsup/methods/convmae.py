"""ConvMAE: MAE with a hybrid convolution-transformer encoder and masked convolution.

Gao et al. 2022, "ConvMAE: Masked Convolution Meets Masked Autoencoders". Reference code:
Alpha-VL/ConvMAE ``models_convmae.py`` (``MaskedAutoencoderConvViT``: ``forward_encoder``,
``forward_decoder``, ``forward_loss``, ``initialize_weights``), ``vision_transformer.py``
(``CBlock``, ``PatchEmbed``), ``main_pretrain.py`` and ``PRETRAIN.md`` (the recipe).

- Encoder (sec. 3.1): :class:`~selfsup.nn.backbones.convvit.ConvViT`, two stages of
  convolutional ``CBlock``\\ s at 1/4 and 1/8 resolution and transformer blocks at 1/16 (strides
  ``(4, 2, 2)``; scaled for 16-32 px images to ``(1, 2, 2)``, see the backbone). The patch of
  masked modeling is the total stride ``p = s1 s2 s3`` (16 in the paper).
- Masking (sec. 3.2, "masked convolution"): MAE's per-sample random mask of ``mask_ratio`` (75%)
  of the stage-3 tokens (:func:`selfsup.nn.masking.random_masking`), upsampled (nearest) to the
  stage-1 and stage-2 grids and multiplied into the input of every ``CBlock``'s depthwise 5 x 5
  convolution, so no visible feature reads a masked pixel; the transformer runs on the visible
  stage-3 tokens only (``ids_keep`` gathered after the fixed sine-cosine position embeddings).
- Multi-scale fusion (sec. 3.3): the stage-1 and stage-2 maps are downsampled to the stage-3
  grid by strided convolutions (``stage1_output_decode``: kernel and stride ``s2 s3``,
  ``stage2_output_decode``: ``s3``; 4 and 2 in the paper), gathered at the visible tokens and
  added to the transformer's output before the encoder's final LayerNorm, as the reference's
  ``x = x + stage1_embed + stage2_embed; x = self.norm(x)``. These two layers are pre-training
  only: the evaluated encoder is the backbone alone, as the reference's fine-tuning model
  (``models_convvit.py`` has no fusion).
- Decoder (sec. 3.3, as MAE's): linear map to ``decoder_dim`` (512), a learned mask token per
  removed token, unshuffle with ``ids_restore``, fixed sine-cosine position embeddings (no class
  token: the encoder has none), ``decoder_depth`` (8) timm blocks with ``decoder_heads`` (16)
  heads and MLP ratio 4, LayerNorm, linear to the ``p*p*C`` pixels of each patch.
- Target and loss: per-patch normalised pixels (``--norm_pix_loss`` in ``PRETRAIN.md``), MSE
  averaged over the masked patches (:func:`selfsup.losses.reconstruction.mae_loss`), patchified
  at ``p`` (the reference hard-codes 16 and 3 channels; here any ``p`` and channel count).
- Initialisation (``mae_init``, the reference's ``initialize_weights``): the encoder's position
  embedding sine-cosine and frozen (always), ``patch_embed3``'s projection Xavier-uniform as a
  linear layer, the mask token normal(0.02), every Linear (encoder's and decoder's) Xavier-uniform
  with zero bias, every LayerNorm (1, 0); convolutions keep PyTorch's default.
- Optimiser (``PRETRAIN.md``, ``main_pretrain.py``): AdamW, lr 1.5e-4 x B / 256, betas
  (0.9, 0.95), weight decay 0.05 without biases and 1-D parameters (timm's
  ``add_weight_decay``), 40 warm-up epochs then cosine to 0 (1600 epochs there), no clipping.
- Augmentation: random resized crop (scale 0.2-1) and horizontal flip (the ``mae`` preset; the
  reference's crop is bicubic, the library's bilinear).
- Features for evaluation: the backbone's forward, the mean of the normalised stage-3 tokens
  (the reference fine-tunes on the mean token; its linear probe reads the first token after the
  norm, ``global_pool`` off, which without a class token is one corner patch: not followed).

Departures: masks can come from ``Batch.masks`` (data side) as MAE's; the visualiser shows only
the patch-feature PCA for this method (its reconstruction rows call a ViT's ``forward_tokens``
with ``keep``, which the hybrid encoder does not take: the conv stages need the mask itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.reconstruction import mae_loss
from selfsup.methods.base import Method
from selfsup.nn.backbones.convvit import ConvViT, gather_tokens
from selfsup.nn.backbones.vit import first_view
from selfsup.nn.mae_decoder import decoder_blocks, mae_init_
from selfsup.nn.masking import random_masking
from selfsup.nn.patches import patchify, sincos_2d
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput


@dataclass
class ConvMAEConfig:
    """ConvMAE hyper-parameters; defaults are the paper's (``selfsup.methods.convmae.Config``)."""

    mask_ratio: float = 0.75  # fraction of stage-3 tokens removed (sec. 4.1; PRETRAIN.md)
    decoder_dim: int = 512  # decoder width (sec. 4.1; models_convmae.py decoder_embed_dim)
    decoder_depth: int = 8  # decoder blocks (models_convmae.py ..._dec512d8b)
    decoder_heads: int = 16  # decoder attention heads (models_convmae.py decoder_num_heads)
    decoder_mlp_ratio: float = 4.0  # decoder MLP width / decoder_dim (models_convmae.py mlp_ratio)
    norm_pix_loss: bool = True  # per-patch normalised pixel target (PRETRAIN.md --norm_pix_loss)
    mae_init: bool = True  # models_convmae.py initialize_weights over encoder and decoder


Config = ConvMAEConfig


def check_convvit(backbone: nn.Module, who: str) -> ConvViT:
    """The backbone as a :class:`ConvViT`.

    Raises:
        ConfigError: naming ``who`` and the backbones that work, for any other backbone.
    """
    if not isinstance(backbone, ConvViT):
        raise ConfigError(f"{who} needs the hybrid ConvViT backbone (--backbone convvit_tiny or "
                          f"convvit_base), got {type(backbone).__name__}")
    return backbone


@register(
    "method",
    "convmae",
    description="ConvMAE: hybrid conv-transformer encoder with masked convolution on 25% "
    "visible tokens, multi-scale fusion, MAE decoder on normalised pixels",
    reference="Gao et al. 2022, ConvMAE: Masked Convolution Meets Masked Autoencoders",
)
class ConvMAE(Method):
    """ConvMAE around a ConvViT backbone (``convvit_tiny``, ``convvit_base``).

    Attributes:
        backbone: the ConvViT encoder (evaluated and exported); its ``pos_embed`` is frozen
            sine-cosine.
        stage1_output_decode: ``Conv2d(C1, D, s2 s3, stride s2 s3)``, stage 1 -> stage-3 grid.
        stage2_output_decode: ``Conv2d(C2, D, s3, stride s3)``, stage 2 -> stage-3 grid.
        decoder_embed, mask_token, decoder_blocks, decoder_norm, decoder_pred: MAE's decoder
            (``decoder_pred`` to ``p*p*C`` pixels); decoder_pos_embed: ``[1, N, decoder_dim]``.

    Raises:
        ConfigError: for a backbone that is not a ConvViT, or an invalid Config value.
    """

    Config: ClassVar[type] = ConvMAEConfig
    default_views: ClassVar[str] = "mae"
    backbone_kind: ClassVar[str] = "convvit"
    # PRETRAIN.md: --blr 1.5e-4 (x B / 256) --weight_decay 0.05 --warmup_epochs 40;
    # main_pretrain.py: AdamW(add_weight_decay(...), betas=(0.9, 0.95)), min_lr 0, no clipping
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

    def __init__(self, backbone: nn.Module, cfg: ConvMAEConfig) -> None:
        super().__init__(backbone, cfg)
        enc = check_convvit(backbone, "convmae")
        self.require_positive(cfg, ("decoder_dim", "decoder_depth", "decoder_heads"))
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method_args.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        if cfg.decoder_dim % cfg.decoder_heads or cfg.decoder_dim % 4:
            raise ConfigError(f"method_args.decoder_dim={cfg.decoder_dim} must be a multiple of 4 "
                              f"and of method_args.decoder_heads={cfg.decoder_heads}")
        dim, (c1, c2, _) = enc.num_features, enc.dims
        if dim % 4:
            raise ConfigError(f"convmae: the stage-3 width {dim} must be a multiple of 4 (2-D "
                              "sine-cosine position embeddings)")
        self.patch, self.in_chans, self.grid = enc.patch_size, enc.in_chans, enc.grid
        self.num_patches = enc.num_patches
        s2, s3 = enc.strides[1], enc.strides[2]
        with torch.no_grad():
            enc.pos_embed.copy_(sincos_2d(dim, self.grid).unsqueeze(0))
        enc.pos_embed.requires_grad_(False)
        self.stage1_output_decode = nn.Conv2d(c1, dim, s2 * s3, stride=s2 * s3)
        self.stage2_output_decode = nn.Conv2d(c2, dim, s3, stride=s3)
        self.decoder_embed = nn.Linear(dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(cfg.decoder_dim, self.grid)
                             .unsqueeze(0), persistent=False)
        self.decoder_blocks = decoder_blocks(cfg.decoder_dim, cfg.decoder_depth,
                                             cfg.decoder_heads, cfg.decoder_mlp_ratio)
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch ** 2 * self.in_chans)
        if cfg.mae_init:
            with torch.no_grad():
                w = enc.patch_embed3.proj.weight
                nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            mae_init_(self, [self.mask_token])
        else:
            nn.init.normal_(self.mask_token, std=0.02)

    @property
    def _enc(self) -> ConvViT:
        return check_convvit(self.backbone, "convmae")

    def forward_encoder(self, x: Tensor, keep: Tensor, mask: Tensor) -> Tensor:
        """Masked encoder with multi-scale fusion (reference ``forward_encoder``).

        Args:
            x: images ``[B, C, S, S]``.
            keep: ``[B, K]`` visible stage-3 tokens; mask: ``[B, N]``, True where removed.

        Returns:
            ``[B, K, D]``: ``LN(transformer(tokens) + E1 + E2)`` at the visible tokens, ``E1``,
            ``E2`` the downsampled stage-1/2 maps.
        """
        tokens, stage1, stage2 = self._enc.forward_masked(x, keep, mask)
        e1 = self.stage1_output_decode(stage1).flatten(2).transpose(1, 2)  # [B, N, D]
        e2 = self.stage2_output_decode(stage2).flatten(2).transpose(1, 2)  # [B, N, D]
        fused = tokens + gather_tokens(e1, keep) + gather_tokens(e2, keep)
        out: Tensor = self._enc.norm(fused)
        return out

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``[B, K, D]`` visible tokens (``keep`` order) -> predicted pixels ``[B, N, p*p*C]``
        of every patch in the original order (reference ``forward_decoder``, no class token)."""
        x = self.decoder_embed(latent)  # [B, K, Dd]
        b, k, d = x.shape
        masks = self.mask_token.to(x.dtype).expand(b, ids_restore.shape[1] - k, d)
        x = torch.cat([x, masks], dim=1)  # [B, N, Dd], visible first
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # unshuffle
        x = self.decoder_norm(self.decoder_blocks(x + self.decoder_pos_embed.to(x.dtype)))
        out: Tensor = self.decoder_pred(x)
        return out

    def training_step(self, batch: Batch) -> StepOutput:
        """Mask ``batch.views[0]`` ``[B, C, S, S]`` (``S`` = the backbone's image size), encode
        the visible tokens with masked convolution, reconstruct all patches, score the masked.

        Raises:
            DataError: without a view, for a view of another size or channel count, or for
                ``batch.masks`` that do not fit the stage-3 grid.
        """
        x = first_view(batch.views, "convmae", self.in_chans, self.grid * self.patch)
        ms = batch.masks if batch.masks is not None else self.sample_masks(x.shape[0], x.device)
        keep, mask, restore = (ms[k].to(x.device) for k in ("keep", "mask", "ids_restore"))
        if keep.shape[0] != x.shape[0] or mask.shape != (x.shape[0], self.num_patches):
            raise DataError(f"convmae: batch.masks do not fit {x.shape[0]} images of "
                            f"{self.num_patches} tokens (keep {tuple(keep.shape)}, mask "
                            f"{tuple(mask.shape)})")
        latent = self.forward_encoder(x, keep, mask)  # [B, K, D]
        pred = self.forward_decoder(latent, restore)  # [B, N, p*p*C]
        loss = mae_loss(pred, patchify(x, self.patch), mask, self.cfg.norm_pix_loss)
        return StepOutput(loss=loss, logs={"visible": float(keep.shape[1])},
                          embeddings=latent.mean(dim=1).detach())

    def sample_masks(self, batch_size: int, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """MAE's random masks on the stage-3 grid: ``keep`` ``[B, K]``, ``mask`` ``[B, N]``
        (True = removed), ``ids_restore`` ``[B, N]``; what ``Batch.masks`` may carry."""
        ms = random_masking(batch_size, self.num_patches, self.cfg.mask_ratio, device=device,
                            generator=generator)
        return {"keep": ms.keep, "mask": ms.mask, "ids_restore": ms.ids_restore}

    def extra_repr(self) -> str:
        visible = max(1, int(self.num_patches * (1 - self.cfg.mask_ratio)))
        return (f"patch={self.patch}, strides={self._enc.strides}, grid={self.grid}x{self.grid}, "
                f"mask_ratio={self.cfg.mask_ratio}, visible={visible}")
