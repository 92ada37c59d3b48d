"""MaskFeat: a ViT sees block-masked images and regresses the HOG features of the masked patches.

Wei et al. 2022, "Masked Feature Prediction for Self-Supervised Visual Pre-Training". Reference
code: facebookresearch/SlowFast ``slowfast/models/masked.py`` (``MaskMViT._maskfeat_forward``,
``_get_hog_label_2d``), ``slowfast/models/operators.py`` (``HOGLayerC``),
``slowfast/models/head_helper.py`` (``MSSeparateHead``), ``slowfast/datasets/imagenet.py`` and
``transform.py`` (``MaskingGenerator``) and ``configs/masked_ssl/in1k_VIT_B_MaskFeat_PT.yaml``.

- Masking (the paper's image experiments; the reference's loader ``MaskingGenerator`` with
  ``AUG.MASK_RATIO: 0.4``): BEiT's block-wise masking at ratio 0.4: ``round(0.4 N)`` patches per image, blocks of at least
  ``round(0.4 N) // 5`` patches (78 and 15 on ViT-B's 14 x 14 grid; 6 and 1 on a 4 x 4 grid),
  aspect 0.3-1/0.3 (:func:`selfsup.nn.block_masks.block_mask`).
- Encoder (sec. 3): every patch goes through the ViT; a masked patch's embedding is replaced by
  one learned ``mask_token`` (truncated normal, std 0.02) before the position embedding is
  added (:meth:`selfsup.nn.backbones.vit.ViT.forward_tokens` with ``mask``), as
  ``x (1 - m) + token m`` in ``_maskfeat_forward``.
- Target (sec. 3, "Target features": HOG): the HOG of the encoder's input image (the normalised view),
  computed on the fly on the batch's device (:func:`selfsup.nn.hog.hog_patches`): Sobel
  gradients, 9 unsigned orientation bins with hard binning weighted by the magnitude, sums over
  8 x 8-px cells, L2 normalisation of every cell's histogram per channel, the cells of a patch
  concatenated over the channels (108 values for RGB 16-px patches). Any channel count: one
  histogram per band.
- Head (``MSSeparateHead``): a LayerNorm and one linear layer (truncated normal 0.02, zero bias)
  on every patch token of the last block; here the ViT's own final LayerNorm is that norm (the
  reference deletes the encoder's ``norm`` and puts one in the head), then ``head``.
- Loss (sec. 3, ``MultipleMSELoss``): mean squared error over the masked patches only, averaged
  over masked patches and target dimensions (:func:`selfsup.losses.reconstruction.mae_loss`
  with ``norm_pix=False``: the same number as ``nn.MSELoss`` on the masked rows).
- Optimiser (``in1k_VIT_B_MaskFeat_PT.yaml``; mmpretrain's ``lr=2e-4 * 8`` at batch 2048):
  AdamW, lr 2e-4 x B / 256, betas (0.9, 0.999) (SlowFast's ``SOLVER.BETAS``), weight decay 0.05
  not on 1-D parameters (``ZERO_WD_1D_PARAM``), 30 warm-up epochs of 300 then cosine, gradient
  clipping at L2 norm 0.02 (``CLIP_GRAD_L2NORM``).
- Augmentation (``TRAIN_JITTER_SCALES_RELATIVE``, ``transforms_imagenet_train``): random resized
  crop (scale 0.5-1, aspect 3/4-4/3) and horizontal flip, no colour jitter (the ``maskfeat``
  preset).
- Features for evaluation: no loss reaches the class token; the reference fine-tunes on the mean
  patch token (``USE_MEAN_POOLING`` in ``in1k_VIT_B_MaskFeat_FT.yaml``), so ``eval_pool =
  "avg"``.

Small images: the paper's 8-px cells in 16-px patches (2 x 2 cells per patch) keep their ratio:
``cell_size = 0`` takes half the ViT's patch (2-px cells for the 4-px patches of 16-32 px
images), or the ViT's patch when it is odd; any divisor of the patch may be set.

Departures: the reference's ViT-B is SlowFast's MViT in ViT mode (learned absolute position
embedding, no layer scale, truncated-normal init); the library's timm ViT has timm's
initialisation. The reference's warm-up starts at 1e-6 and its cosine ends at 1e-6 (absolute);
here warm-up starts at lr / steps and the cosine ends at 0. Its Sobel filter is a ``conv2d``;
here the same filter is computed separably so that flat image regions give exactly zero HOG
(a float32 ``conv2d`` leaves ~1e-8 there, which the L2 normalisation turns into a unit
histogram of rounding noise). The reference bicubically resizes crops; the library's batched
crop is bilinear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.reconstruction import mae_loss
from selfsup.methods.base import Method
from selfsup.nn.backbones.vit import check_vit, first_view
from selfsup.nn.block_masks import block_mask
from selfsup.nn.hog import hog_dim, hog_patches
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput


@dataclass
class MaskFeatConfig:
    """MaskFeat hyper-parameters; defaults are the paper's (``selfsup.methods.maskfeat.Config``)."""

    mask_ratio: float = 0.4  # share of patches masked (image experiments: BEiT block-wise
    # masking at 40%; in1k_VIT_B_MaskFeat_PT.yaml AUG.MASK_RATIO)
    min_num_patches: int = 0  # smallest mask block (0 = round(ratio N) // 5 as the reference's
    # imagenet.py; at least 1)
    max_num_patches: int = 0  # largest mask block (0 = no limit: MAX_MASK_PATCHES_PER_BLOCK None)
    min_aspect: float = 0.3  # block aspect range 0.3-1/0.3 (BEiT's MaskingGenerator default)
    nbins: int = 9  # HOG orientation bins over [0, pi) (sec. 3: 9; masked.py nbins)
    cell_size: int = 0  # HOG cell side in px (sec. 3: 8 x 8 cells, 16-px patches); 0 = half the
    # ViT's patch, the paper's 2 x 2 cells per patch at any image size


Config = MaskFeatConfig


@register(
    "method",
    "maskfeat",
    description="block-masked patches replaced by a learned token, a linear head regresses the "
    "HOG features of the masked patches (MSE)",
    reference="Wei et al. 2022, Masked Feature Prediction for Self-Supervised Visual "
    "Pre-Training",
)
class MaskFeat(Method):
    """MaskFeat around a ViT backbone.

    Attributes:
        backbone: the ViT encoder (evaluated and exported).
        mask_token: learned ``[1, 1, D]`` embedding of a masked patch.
        head: linear ``[B, N, D] -> [B, N, C * nbins * (p / cell)^2]`` HOG prediction.

    Raises:
        ConfigError: for a backbone that is not a ViT, or an invalid Config value.
    """

    Config: ClassVar[type] = MaskFeatConfig
    default_views: ClassVar[str] = "maskfeat"
    backbone_kind: ClassVar[str] = "vit"
    # no loss reaches the class token; the reference fine-tunes on the mean patch token
    eval_pool: ClassVar[str | None] = "avg"
    # in1k_VIT_B_MaskFeat_PT.yaml: BASE_LR 2e-4 (per 256, scaled by the shards of a 2048 batch),
    # WEIGHT_DECAY 0.05, ZERO_WD_1D_PARAM, WARMUP_EPOCHS 30 of 300, cosine, CLIP_GRAD_L2NORM
    # 0.02, AdamW betas (0.9, 0.999)
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adamw",
        "lr": 2e-4,
        "lr_scaling": "linear",
        "weight_decay": 0.05,
        "betas": (0.9, 0.999),
        "warmup_epochs": 30,
        "min_lr_ratio": 0.0,
        "clip_grad": 0.02,
        "decay_norm_bias": False,
    }

    def __init__(self, backbone: nn.Module, cfg: MaskFeatConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        self.patch, self.in_chans = check_vit(backbone, "maskfeat")
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method_args.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        self.require_positive(cfg, ("nbins",))
        if cfg.min_num_patches < 0 or cfg.max_num_patches < 0 or cfg.cell_size < 0:
            raise ConfigError("maskfeat: method_args.min_num_patches, max_num_patches and "
                              "cell_size must be >= 0 (0 = the reference's rule)")
        self.grid = int(self._vit.image_size) // self.patch
        self.num_masked = round(self.grid * self.grid * cfg.mask_ratio)
        if self.num_masked < 1:
            raise ConfigError(f"maskfeat: method_args.mask_ratio={cfg.mask_ratio} masks no patch "
                              f"of the {self.grid} x {self.grid} grid")
        self.min_block = cfg.min_num_patches or max(1, self.num_masked // 5)
        self.cell = cfg.cell_size or (self.patch // 2 if self.patch % 2 == 0 else self.patch)
        if self.patch % self.cell:
            divisors = [d for d in range(1, self.patch + 1) if self.patch % d == 0]
            raise ConfigError(f"maskfeat: method_args.cell_size={self.cell} must divide the "
                              f"ViT's patch size {self.patch} (e.g. {divisors})")
        self.target_dim = hog_dim(self.in_chans, self.patch, self.cell, cfg.nbins)
        # fail at construction, not at the first step, on block settings block_mask rejects
        self.sample_masks(1, generator=torch.Generator().manual_seed(0))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # masked.py: trunc_normal_(std=0.02)
        self.head = nn.Linear(dim, self.target_dim)
        nn.init.trunc_normal_(self.head.weight, std=0.02)  # MSSeparateHead._init_weights
        nn.init.zeros_(self.head.bias)

    @property
    def _vit(self) -> Any:
        """The backbone as the ViT :func:`~selfsup.nn.backbones.vit.check_vit` accepted."""
        return self.backbone

    def sample_masks(self, batch_size: int, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """MaskFeat's block-wise masks for ``batch_size`` images: ``mask`` ``[B, N]`` bool over
        the ViT's patch grid (True = masked), at most ``round(mask_ratio N)`` patches each;
        what ``Batch.masks`` may carry.

        Raises:
            ConfigError: for block settings :func:`~selfsup.nn.block_masks.block_mask` rejects.
        """
        cfg = self.cfg
        mask = block_mask(batch_size, self.grid, self.grid, self.num_masked,
                          min_num_patches=self.min_block,
                          max_num_patches=cfg.max_num_patches or None,
                          min_aspect=cfg.min_aspect, device=device, generator=generator)
        return {"mask": mask}

    def targets(self, x: Tensor) -> Tensor:
        """HOG targets of images ``x`` ``[B, C, S, S]``: ``[B, N, target_dim]`` (no gradient)."""
        return hog_patches(x, self.patch, self.cell, self.cfg.nbins)

    def predict(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``x`` with patches ``mask`` ``[B, N]`` masked -> ``(predicted HOG
        [B, N, target_dim], encoder patch tokens [B, N, D])``."""
        tokens = self._vit.forward_tokens(x, mask=mask, mask_token=self.mask_token)[:, 1:]
        return self.head(tokens), tokens

    def training_step(self, batch: Batch) -> StepOutput:
        """Mask ``batch.views[0]`` ``[B, C, S, S]`` (``S`` = the ViT's image size), predict the
        HOG of every patch and score the masked ones.

        Raises:
            DataError: without a view, for a view of another size or channel count, or for
                ``batch.masks['mask']`` of the wrong shape or with no masked patch.
        """
        x = first_view(batch.views, "maskfeat", self.in_chans, self.grid * self.patch)
        ms = batch.masks if batch.masks is not None else self.sample_masks(x.shape[0], x.device)
        mask = ms["mask"].to(x.device)
        if mask.shape != (x.shape[0], self.grid * self.grid):
            raise DataError(f"maskfeat: batch.masks['mask'] must be [{x.shape[0]}, "
                            f"{self.grid * self.grid}], got {tuple(mask.shape)}")
        pred, tokens = self.predict(x, mask)
        loss = mae_loss(pred, self.targets(x), mask, norm_pix=False)
        # the collapse monitor reads the mean patch token of the masked pass
        return StepOutput(loss=loss, logs={"masked": mask.float().mean().detach()},
                          embeddings=tokens.mean(dim=1).detach())
