"""CPC v2: contrastive predictive coding over a grid of overlapping image patches.

Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding" (sec. 3.2, images)
and Hénaff et al. 2020, "Data-Efficient Image Recognition with Contrastive Predictive Coding"
(sec. 3). The image is cut into a ``G x G`` grid of overlapping patches (paper: 7x7 patches of
64 px with stride 32 on 256-px images; here by default patch = side / 4, stride = patch / 2, also
a 7x7 grid). The backbone encodes every patch: ``z_ij = f(x_ij)`` (one pass over ``B*G*G``
patches). A masked (top-to-bottom causal) convolutional context network turns the grid into
``c_ij`` that only sees rows ``<= i``; for ``k = 1..K`` a separate linear head predicts
``z_{i+k, j}`` from ``c_ij`` and the InfoNCE loss (Oord eq. 4) asks each prediction to pick its
target among all patches of all images in the (global) batch.

Evaluation: :meth:`encoder` is the backbone applied to the whole image (global average pooling),
so checkpoints and exports are plain backbones. Hénaff et al. instead mean-pool the patch
features; with convolutional backbones the whole-image pass pools over the same receptive fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.nce import cpc_info_nce
from selfsup.methods.base import Method
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist


@dataclass
class CPCv2Config:
    """CPC v2 hyper-parameters (``selfsup.methods.cpc_v2.Config``)."""

    # patch side in pixels; 0 = image side // 4 (Hénaff sec. 3 / Oord sec. 3.2: 64 of 256 px)
    patch_size: int = 0
    patch_stride: int = 0  # 0 = patch_size // 2 (50% overlap, Oord sec. 3.2)
    prediction_steps: int = 5  # predict up to K rows ahead (Oord sec. 3.2: up to 5 rows below)
    context_dim: int = 0  # width of the context network; 0 = the backbone's num_features
    # masked residual blocks of the context network (Hénaff app. A: a deeper PixelCNN-style
    # ResNet; 3 blocks keep small runs fast)
    context_blocks: int = 3


Config = CPCv2Config


class CausalConv2d(nn.Conv2d):
    """Convolution whose output row ``i`` sees input rows ``i - kernel + 1 .. i`` only (all
    columns within ``kernel // 2``): the top-to-bottom mask of a PixelCNN-style context network,
    implemented by padding ``kernel - 1`` rows on top and none below. ``[B, C, H, W]`` in and out.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__(c_in, c_out, kernel, padding=0)
        self.pad = (kernel // 2, kernel // 2, kernel - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class ContextNetwork(nn.Module):
    """``[B, F, G, G]`` patch features -> ``[B, C, G, G]`` context, causal over rows.

    A 1x1 input projection and ``blocks`` residual blocks ``x + 1x1(ReLU(causal3x3(ReLU(1x1(
    ReLU(x))))))``. No normalisation layer: batch statistics would mix rows (Hénaff et al. avoid
    BatchNorm for the same reason). Row ``i`` of the output depends only on rows ``<= i``.
    """

    def __init__(self, in_dim: int, dim: int, blocks: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, 1)
        hidden = max(dim // 2, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(), nn.Conv2d(dim, hidden, 1), nn.ReLU(), CausalConv2d(hidden, hidden),
                nn.ReLU(), nn.Conv2d(hidden, dim, 1),
            )
            for _ in range(blocks)
        )

    def forward(self, z: Tensor) -> Tensor:
        c = self.proj(z)
        for block in self.blocks:
            c = c + block(c)
        return c


def extract_patches(x: Tensor, size: int, stride: int) -> Tensor:
    """Cut ``[B, C, H, W]`` images into a grid of overlapping square patches.

    Returns:
        ``[B, Gh, Gw, C, size, size]`` with ``Gh = (H - size) // stride + 1`` (likewise ``Gw``);
        rows/columns that do not fit a whole patch at the bottom/right are dropped.

    Raises:
        DataError: if the patch does not fit the image.
    """
    if x.dim() != 4 or size > min(x.shape[-2:]) or size < 1 or stride < 1:
        raise DataError(
            f"cpc_v2: cannot cut patches of {size} px (stride {stride}) from images "
            f"{tuple(x.shape)}; set method_args.patch_size to at most the image side"
        )
    p = x.unfold(2, size, stride).unfold(3, size, stride)  # [B, C, Gh, Gw, s, s]
    return p.permute(0, 2, 3, 1, 4, 5).contiguous()


@register(
    "method",
    "cpc_v2",
    description="contrastive predictive coding: predict patch features rows ahead (InfoNCE)",
    reference="Hénaff et al. 2020, Data-Efficient Image Recognition with Contrastive Predictive "
    "Coding (CPC v2); Oord et al. 2018, Representation Learning with Contrastive Predictive "
    "Coding",
)
class CPCv2(Method):
    """CPC v2 around a convolutional backbone (any input size; ViTs are rejected).

    Attributes:
        backbone: the patch encoder ``f`` (evaluated on whole images and exported).
        context: :class:`ContextNetwork` over the ``G x G`` feature grid.
        predictors: ``K`` linear heads ``W_k`` ``[context_dim] -> [num_features]`` (no bias).

    Raises:
        ConfigError: for a backbone without ``num_features``, a ViT backbone (fixed input size)
            or an invalid Config value.
    """

    Config: ClassVar[type] = CPCv2Config
    default_views: ClassVar[str] = "simclr"  # only views[0] is used
    # Oord et al. 2018 / Hénaff et al. 2020: Adam, lr 2e-4 (Oord sec. 3), no weight decay.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adamw",
        "lr": 2e-4,
        "lr_scaling": "none",
        "weight_decay": 0.0,
        "betas": (0.9, 0.999),
        "warmup_epochs": 0,
        "min_lr_ratio": 0.0,
    }

    def __init__(self, backbone: nn.Module, cfg: CPCv2Config) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        if getattr(backbone, "patch_size", None) is not None:
            raise ConfigError(
                "cpc_v2 encodes image patches, so it needs a convolutional backbone that accepts "
                "any input size (resnet*, small_cnn), not a ViT"
            )
        for key in ("patch_size", "patch_stride", "context_dim", "context_blocks"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"method_args.{key} must be >= 0, got {getattr(cfg, key)}")
        if cfg.prediction_steps < 1:
            raise ConfigError(
                f"method_args.prediction_steps must be >= 1, got {cfg.prediction_steps}"
            )
        dim = cfg.context_dim or num_features
        self.context = ContextNetwork(num_features, dim, cfg.context_blocks)
        self.predictors = nn.ModuleList(
            nn.Linear(dim, num_features, bias=False) for _ in range(cfg.prediction_steps)
        )

    def patch_geometry(self, side: int) -> tuple[int, int, int]:
        """``(patch, stride, grid)`` for square images of ``side`` pixels."""
        patch = self.cfg.patch_size or max(side // 4, 1)
        stride = self.cfg.patch_stride or max(patch // 2, 1)
        return patch, stride, (side - patch) // stride + 1 if patch <= side else 0

    def patch_features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> patch feature grid ``[B, F, G, G]`` (one backbone pass)."""
        patch, stride, _ = self.patch_geometry(min(x.shape[-2:]))
        p = extract_patches(x, patch, stride)  # [B, G, G, C, p, p]
        b, gh, gw = p.shape[:3]
        z = self.backbone(p.flatten(0, 2))  # [B*G*G, F]
        return z.view(b, gh, gw, -1).permute(0, 3, 1, 2)  # [B, F, G, G]

    def training_step(self, batch: Batch) -> StepOutput:
        """InfoNCE of the row-ahead predictions on ``views[0]``.

        Raises:
            DataError: with no view, or images too small for a grid of at least 2 rows.
        """
        if not batch.views:
            raise DataError("cpc_v2 needs one view per image, got none")
        x = batch.views[0]
        z = self.patch_features(x)  # [B, F, G, G]
        b, f, g, gw = z.shape
        if g < 2:
            raise DataError(
                f"cpc_v2: images {tuple(x.shape)} give a patch grid of {g} row(s); need >= 2 "
                "(reduce method_args.patch_size / patch_stride)"
            )
        c = self.context(z)  # [B, C, G, G], row i sees rows <= i
        targets = z.permute(0, 2, 3, 1).reshape(b * g * gw, f)  # row (b*G + i)*Gw + j
        offset = dist.rank() * b * g * gw if dist.world_size() > 1 else 0
        pool = dist.all_gather_grad(targets)  # negatives from all images of all ranks
        flat = torch.arange(b * g * gw, device=x.device).view(b, g, gw) + offset
        preds, index = [], []
        for k, head in enumerate(self.predictors[: g - 1], start=1):
            ctx = c[:, :, : g - k].permute(0, 2, 3, 1).reshape(-1, c.shape[1])  # rows 0..G-k-1
            preds.append(head(ctx))  # [B*(G-k)*Gw, F]
            index.append(flat[:, k:].reshape(-1))  # the patch k rows below
        loss = cpc_info_nce(torch.cat(preds), pool, torch.cat(index))
        emb = z.mean(dim=(2, 3))  # mean-pooled patch features [B, F]
        return StepOutput(loss=loss, logs={}, embeddings=emb.detach())
