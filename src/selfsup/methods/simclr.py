"""SimCLR: contrastive learning of two augmented views with in-batch negatives.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations".
Two views ``x1, x2`` of each image go through the backbone ``f`` (``h = f(x)``, sec. 2.1) and the
MLP projector ``g`` (``z = g(h)``); the NT-Xent loss (eq. 1) pulls the two views of an image
together and pushes away the other ``2N - 2`` views of the (global) batch. ``h`` is the
representation that is evaluated; ``g`` is discarded after pretraining.

Reference choices (google-research/simclr): both views go through backbone and projector in one
pass (``model.py``: the views are stacked on the channel axis, split and concatenated into a
``2N`` batch before the ResNet), so BatchNorm normalises the two views with shared statistics of
all ``2N`` images (the paper's global BN aggregates them over all cores, sec. 2.3; here they
cover each rank's ``2N`` images, no SyncBN). ``single_pass=False`` runs one pass per view
instead (per-view BN statistics, as lightly's examples do): 288 vs 372 ms per forward+backward
on 2 CPU cores (small_cnn, 2 x 256 MNIST-sized views), about equal for a CIFAR ResNet-18. LARS
excludes biases and BatchNorm parameters from weight decay (``exclude_from_weight_decay``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from selfsup.config import Recipe
from selfsup.losses.contrastive import NTXentLoss
from selfsup.methods.base import (
    LIGHTLY_CIFAR10_COLOR,
    LIGHTLY_CIFAR10_SGD,
    LIGHTLY_CIFAR10_SOURCE,
    Method,
)
from selfsup.nn.heads import mlp
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput


@dataclass
class SimCLRConfig:
    """SimCLR hyper-parameters; defaults are the paper's (``selfsup.methods.simclr.Config``)."""

    temperature: float = 0.5  # NT-Xent t: CIFAR-10 setting (B.9); ImageNet: 0.1 at B=4096 (Tab. 5)
    proj_hidden_dim: int = 2048  # hidden width of g (sec. 2.1: ResNet-50's 2048 features)
    proj_out_dim: int = 128  # output size of g, where the loss is taken (sec. 4.2, Figure 8)
    proj_layers: int = 2  # linear layers in g: 2 = SimCLR (sec. 2.1); 3 = SimCLRv2 (Chen 2020b)
    single_pass: bool = True  # both views in one [2B] pass, BN over 2B (official model.py)


Config = SimCLRConfig


@register(
    "method",
    "simclr",
    description="contrastive learning with NT-Xent over in-batch negatives",
    reference="Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual "
    "Representations",
)
class SimCLR(Method):
    """SimCLR around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the encoder ``f`` (evaluated and exported).
        projector: the MLP ``g`` ``[B, num_features] -> [B, proj_out_dim]``: Linear-BN-ReLU hidden
            layers and a final Linear-BN, as in SimCLR's code (its final BN has a scale but no
            shift; here the final BN is fully affine).
        criterion: :class:`~selfsup.losses.contrastive.NTXentLoss` gathering negatives over ranks.

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = SimCLRConfig
    default_views: ClassVar[str] = "simclr"
    # SimCLR sec. 2.3 / appendix B.1: LARS, lr = 0.3 x B / 256, weight decay 1e-6, momentum 0.9,
    # 10 warm-up epochs, then cosine decay to 0.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.3,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "warmup_epochs": 10,
        "min_lr_ratio": 0.0,
        "decay_norm_bias": False,  # lars_optimizer exclude_from_weight_decay: BN, bias
    }
    # lightly's CIFAR-10 benchmark, SimCLRModel: SimCLRProjectionHead(512, 512, 128),
    # NTXentLoss() (t = 0.5), its shared SGD and SimCLRTransform(cj_strength=0.5, no blur)
    small_recipe: ClassVar[Recipe | None] = Recipe(
        source=f"{LIGHTLY_CIFAR10_SOURCE} SimCLRModel", optim=dict(LIGHTLY_CIFAR10_SGD),
        method_args={"proj_hidden_dim": 512, "proj_out_dim": 128, "temperature": 0.5},
        view_args=dict(LIGHTLY_CIFAR10_COLOR))

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("proj_hidden_dim", "proj_out_dim", "proj_layers"))
        if not cfg.temperature > 0:
            raise ConfigError(f"method_args.temperature must be > 0, got {cfg.temperature}")
        dims = [num_features] + [cfg.proj_hidden_dim] * (cfg.proj_layers - 1) + [cfg.proj_out_dim]
        self.projector = mlp(dims, batch_norm=True, last_bn=True)
        self.criterion = NTXentLoss(cfg.temperature, gather=True)

    def training_step(self, batch: Batch) -> StepOutput:
        """NT-Xent between the projections of ``batch.views[0]`` and ``batch.views[1]``.

        With ``single_pass`` the views (``[B, C, H, W]`` each) go through backbone and
        projector as one ``[2B]`` batch, so BatchNorm statistics cover both views (official
        code); otherwise each view is its own pass. Further views are not used.

        Raises:
            DataError: if there are fewer than two views or the first two differ in shape.
        """
        if len(batch.views) < 2:
            raise DataError(f"simclr needs 2 views per image, got {len(batch.views)}")
        x1, x2 = batch.views[0], batch.views[1]
        if x1.shape != x2.shape:
            raise DataError(
                f"simclr needs two views of the same shape, got {tuple(x1.shape)} and "
                f"{tuple(x2.shape)}"
            )
        if self.cfg.single_pass:
            z1, z2 = self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)  # [B, out] each
        else:
            z1 = self.projector(self.backbone(x1))  # [B, proj_out_dim], BN per view
            z2 = self.projector(self.backbone(x2))
        loss = self.criterion(z1, z2)
        return StepOutput(loss=loss, logs={}, embeddings=z1.detach())
