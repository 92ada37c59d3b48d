"""CPC v2: contrastive predictive coding over a grid of overlapping image patches.

Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding" (sec. 3.2, images)
and Hénaff et al. 2020, "Data-Efficient Image Recognition with Contrastive Predictive Coding"
(sec. 3, app. A.2 pseudo-code). The image is cut into a ``G x G`` grid of overlapping patches
(paper: 7x7 patches of 64 px with stride 32 on 256-px images; here by default patch = side / 4,
stride = patch / 2, also a 7x7 grid). The backbone encodes every patch: ``z_ij = f(x_ij)`` (one
pass over ``B*G*G`` patches). A masked (top-to-bottom causal) convolutional context network turns
the grid into ``c_ij`` that only sees rows ``<= i``; for ``k = 1..K`` a separate linear head
predicts ``z_{i+d_k, j}`` from ``c_ij`` and the InfoNCE loss (Oord eq. 4) asks each prediction to
pick its target among all patches of all images in the (global) batch.

What keeps the task honest (nothing of a target may reach its context):

- **No batch statistics in the patch encoder** (Hénaff sec. 3, "layer normalization": BatchNorm
  lets the network pass information between the patches of one batch and bypass the causal
  mask). The given backbone is converted: every BatchNorm becomes ``GroupNorm(1, C)``, LayerNorm
  over ``(C, H, W)`` of each patch (:func:`selfsup.nn.backbones.norm.replace_batchnorm`;
  ``norm="batch"`` keeps BN, which leaks rows below ``i`` into ``c_i`` in training mode). The
  exported encoder is this LayerNorm variant (:meth:`CPCv2.build_encoder` rebuilds it for
  checkpoints and exports).
- **Targets disjoint from the context.** ``c_i`` sees patch rows ``0..i``, i.e. pixel rows
  ``[0, i*s + p)`` for patch ``p`` and stride ``s``; target row ``t`` covers ``[t*s, t*s + p)``.
  They are disjoint iff ``t - i >= gap = ceil(p / s)``, so step ``k`` predicts row
  ``i + d_k`` with ``d_k = gap + k - 1`` (:func:`step_offsets`): at the default ``s = p / 2`` the
  50%-overlapping row ``i + 1`` is skipped and steps ``1..5`` predict rows ``i+2..i+6``, as
  Lightning-Universe/lightning-bolts ``pl_bolts/losses/self_supervised_learning.py``
  (``CPCTask.compute_loss_h``: label row ``i + 1`` for ``i >= 1``) does. Hénaff's pseudo-code
  (``steps_to_ignore=2``; wilson1yan/cs294-158-ssl ``deepul_helper/tasks/cpc.py``) skips the
  first disjoint row too (first target 3 rows below); we do not, so the 3-row CPU grid keeps one
  prediction per column.
  Steps whose row falls off the grid are dropped (their heads get a zero gradient, so DDP sees
  every parameter used).
- **Per-patch augmentation** in training mode (Hénaff sec. 3, "patch-based augmentation", after
  Doersch et al. 2015; :func:`augment_patches`): each patch independently gets a random crop
  ``patch_jitter`` smaller than the patch inside its own box (the spatial jitter of
  cs294-158-ssl's ``CPC.forward``: 60 of 64 px), a random horizontal flip and, for 3-channel
  images, colour dropping (two of the three channels replaced by Gaussian noise of 1/100 the
  kept channel's std, Doersch sec. 3.1). Left out: the paper's per-patch AutoAugment-style ops,
  elastic deformation / shearing / colour-histogram changes and colour jitter (app. A); and
  predictions in other directions than top-to-bottom (Hénaff sec. 3, "prediction lengths and
  directions").

Evaluation: :meth:`encoder` is the (LayerNorm) backbone applied to the whole image (global average
pooling), so checkpoints and exports are plain backbones. Hénaff et al. instead mean-pool the
patch features; with convolutional backbones the whole-image pass pools over the same receptive
fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.nce import cpc_info_nce
from selfsup.methods.base import Method
from selfsup.nn.backbones.norm import NORMS, replace_batchnorm
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist


@dataclass
class CPCv2Config:
    """CPC v2 hyper-parameters (``selfsup.methods.cpc_v2.Config``)."""

    # patch side in pixels; 0 = image side // 4 (Hénaff sec. 3 / Oord sec. 3.2: 64 of 256 px)
    patch_size: int = 0
    patch_stride: int = 0  # 0 = patch_size // 2 (50% overlap, Oord sec. 3.2)
    # K prediction steps; step k predicts the k-th row below whose patches share no pixel with
    # the context (Oord sec. 3.2: up to 5 rows below)
    prediction_steps: int = 5
    context_dim: int = 0  # width of the context network; 0 = the backbone's num_features
    # masked residual blocks of the context network (Hénaff app. A: a deeper PixelCNN-style
    # ResNet; 3 blocks keep small runs fast)
    context_blocks: int = 3
    # the patch encoder's normalisation (Hénaff sec. 3: layer norm): "layer" converts every
    # BatchNorm to GroupNorm(1, C); "batch" keeps BN (leaks other rows through batch statistics)
    norm: str = "layer"
    # per-patch random crop + flip + colour dropping in training (Hénaff sec. 3, "patch-based
    # augmentation")
    patch_aug: bool = True
    # the per-patch crop is this fraction of the patch side smaller (cs294-158-ssl: 4 of 64 px)
    patch_jitter: float = 0.0625


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


def step_offsets(patch: int, stride: int, steps: int, grid: int) -> list[int]:
    """Row offsets ``d_k`` of the targets of steps ``k = 1..steps`` that fit a ``grid``-row grid.

    ``d_k = ceil(patch / stride) + k - 1``: the context of row ``i`` covers pixel rows
    ``[0, i*stride + patch)``, a target row ``i + d`` covers ``[(i+d)*stride, (i+d)*stride +
    patch)``, and ``ceil(patch / stride)`` is the smallest ``d`` for which they are disjoint.
    """
    gap = -(-patch // stride)
    return [gap + k for k in range(steps) if gap + k < grid]


def augment_patches(p: Tensor, jitter: int) -> Tensor:
    """Independent random augmentation of every patch ``[N, C, P, P]`` (Hénaff sec. 3, "PA").

    Each patch gets a random ``(P - jitter)``-px crop at a uniform offset inside its own box, a
    horizontal flip with probability 1/2 and, if ``C == 3``, colour dropping (Doersch et al. 2015,
    sec. 3.1): one uniformly chosen channel is kept, the other two are replaced by Gaussian noise
    with 1/100 of the kept channel's standard deviation over that patch. Randomness comes from
    torch's global RNG on ``p``'s device and does not depend on pixel values, so a patch's output
    depends on its own pixels only.

    Returns:
        ``[N, C, P - jitter, P - jitter]``.

    Raises:
        DataError: if ``p`` is not ``[N, C, P, P]`` or ``jitter`` is not in ``[0, P)``.
    """
    if p.dim() != 4 or p.shape[-1] != p.shape[-2] or not 0 <= jitter < p.shape[-1]:
        raise DataError(f"cpc_v2: cannot jitter patches {tuple(p.shape)} by {jitter} px "
                        "(method_args.patch_jitter must be in [0, 1))")
    n, ch, size, dev = p.shape[0], p.shape[1], p.shape[-1], p.device
    if jitter > 0:
        q = torch.arange(size - jitter, device=dev)
        rows = torch.randint(0, jitter + 1, (n, 1), device=dev) + q  # [N, P - jitter]
        cols = torch.randint(0, jitter + 1, (n, 1), device=dev) + q
        pick = torch.arange(n, device=dev)[:, None, None]
        p = p[pick, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [N, C, q, q]
    flip = torch.rand(n, device=dev) < 0.5
    p = torch.where(flip[:, None, None, None], p.flip(-1), p)
    if ch == 3:
        keep = F.one_hot(torch.randint(0, 3, (n,), device=dev), 3).to(p.dtype)[:, :, None, None]
        std = (p * keep).sum(1).flatten(1).std(dim=1, correction=0)  # [N], kept channel
        noise = torch.randn_like(p) * (0.01 * std)[:, None, None, None]
        p = p * keep + noise * (1 - keep)
    return p.contiguous()


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

    The backbone is converted in place to its LayerNorm variant (``norm="layer"``, see the module
    docstring), so the module passed in no longer has BatchNorm layers afterwards.

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
        if getattr(backbone, "patch_size", None) is not None:
            raise ConfigError(
                "cpc_v2 encodes image patches, so it needs a convolutional backbone that accepts "
                "any input size (resnet*, small_cnn), not a ViT"
            )
        self.backbone = self.build_encoder(backbone, cfg)
        num_features = self.feature_dim()
        for key in ("patch_size", "patch_stride", "context_dim", "context_blocks"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"method_args.{key} must be >= 0, got {getattr(cfg, key)}")
        if cfg.prediction_steps < 1:
            raise ConfigError(
                f"method_args.prediction_steps must be >= 1, got {cfg.prediction_steps}"
            )
        if not 0.0 <= cfg.patch_jitter < 1.0:
            raise ConfigError(f"method_args.patch_jitter must be in [0, 1), got "
                              f"{cfg.patch_jitter}")
        dim = cfg.context_dim or num_features
        self.context = ContextNetwork(num_features, dim, cfg.context_blocks)
        self.predictors = nn.ModuleList(
            nn.Linear(dim, num_features, bias=False) for _ in range(cfg.prediction_steps)
        )

    @classmethod
    def build_encoder(cls, backbone: nn.Module, cfg: Any) -> nn.Module:
        """The patch encoder and evaluated encoder: ``backbone`` with every BatchNorm replaced by
        ``GroupNorm(1, C)`` for ``cfg.norm == "layer"`` (in place; also used to rebuild it from a
        checkpoint or an export), unchanged for ``"batch"``.

        Raises:
            ConfigError: for another ``method_args.norm``.
        """
        norm = getattr(cfg, "norm", "layer")
        if norm not in NORMS:
            raise ConfigError(f"method_args.norm must be one of {', '.join(NORMS)}, got {norm!r}")
        return replace_batchnorm(backbone, norm)

    def patch_geometry(self, side: int) -> tuple[int, int, int]:
        """``(patch, stride, grid)`` for square images of ``side`` pixels."""
        patch = self.cfg.patch_size or max(side // 4, 1)
        stride = self.cfg.patch_stride or max(patch // 2, 1)
        return patch, stride, (side - patch) // stride + 1 if patch <= side else 0

    def patch_features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> patch feature grid ``[B, F, G, G]`` (one backbone pass; in
        training mode with ``patch_aug`` every patch is augmented by :func:`augment_patches`)."""
        patch, stride, _ = self.patch_geometry(min(x.shape[-2:]))
        p = extract_patches(x, patch, stride)  # [B, G, G, C, p, p]
        b, gh, gw = p.shape[:3]
        p = p.flatten(0, 2)  # [B*G*G, C, p, p]
        if self.training and self.cfg.patch_aug:
            p = augment_patches(p, int(patch * self.cfg.patch_jitter))
        z = self.backbone(p)  # [B*G*G, F]
        return z.view(b, gh, gw, -1).permute(0, 3, 1, 2)  # [B, F, G, G]

    def training_step(self, batch: Batch) -> StepOutput:
        """InfoNCE of the row-ahead predictions on ``views[0]``.

        Raises:
            DataError: with no view, or a patch grid too short for one target row that shares
                no pixel with its context.
        """
        if not batch.views:
            raise DataError("cpc_v2 needs one view per image, got none")
        x = batch.views[0]
        patch, stride, _ = self.patch_geometry(min(x.shape[-2:]))
        z = self.patch_features(x)  # [B, F, G, G]
        b, f, g, gw = z.shape
        offsets = step_offsets(patch, stride, len(self.predictors), g)
        if not offsets:
            raise DataError(
                f"cpc_v2: images {tuple(x.shape)} give a patch grid of {g} row(s), but a target "
                f"must lie {-(-patch // stride)} rows below its context to share no pixel with "
                "it (reduce method_args.patch_size / patch_stride)"
            )
        c = self.context(z)  # [B, C, G, G], row i sees rows <= i
        targets = z.permute(0, 2, 3, 1).reshape(b * g * gw, f)  # row (b*G + i)*Gw + j
        offset = dist.rank() * b * g * gw if dist.world_size() > 1 else 0
        pool = dist.all_gather_grad(targets)  # negatives from all images of all ranks
        flat = torch.arange(b * g * gw, device=x.device).view(b, g, gw) + offset
        preds, index = [], []
        for head, d in zip(self.predictors, offsets):
            ctx = c[:, :, : g - d].permute(0, 2, 3, 1).reshape(-1, c.shape[1])  # rows 0..G-d-1
            preds.append(head(ctx))  # [B*(G-d)*Gw, F]
            index.append(flat[:, d:].reshape(-1))  # the patch d rows below
        loss = cpc_info_nce(torch.cat(preds), pool, torch.cat(index))
        unused = [w for head in self.predictors[len(offsets):] for w in head.parameters()]
        if unused:  # heads of steps past the grid: a zero gradient, so DDP sees them used
            loss = loss + 0.0 * sum(w.sum() for w in unused)
        emb = z.mean(dim=(2, 3))  # mean-pooled patch features [B, F]
        return StepOutput(loss=loss, logs={}, embeddings=emb.detach())
