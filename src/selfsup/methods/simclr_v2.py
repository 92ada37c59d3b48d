"""SimCLR v2: SimCLR with a deeper (3-layer) projection head whose first layer is kept for
fine-tuning.

Chen, Kornblith, Swersky, Norouzi & Hinton 2020, "Big Self-Supervised Models are Strong
Semi-Supervised Learners", sec. 2.1: the NT-Xent loss of SimCLR (Chen et al. 2020a, eq. 1) on a
projection head ``g`` with 3 layers instead of 2, and fine-tuning starts from the first layer of
``g`` (the "middle layer" of the head, ``h' = ReLU(BN(W1 h))``) rather than from the backbone
output. Fine-tuning from that layer and the self-distillation stage (sec. 2.3) are evaluation
steps: ``selfsup eval finetune --distill`` (:mod:`selfsup.eval.finetune`) uses
:meth:`SimCLRv2.encoder_with_head`. Not implemented: the MoCo-style memory of 65536 negatives
(sec. 2.1 reports a ~1% gain at most, with large batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

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

__all__ = ["HeadEncoder", "SimCLRv2", "SimCLRv2Config"]


@dataclass
class SimCLRv2Config:
    """SimCLR v2 hyper-parameters (``selfsup.methods.simclr_v2.Config``)."""

    temperature: float = 0.1  # NT-Xent t (sec. 2.1 / official v2 runs: 0.1)
    proj_hidden_dim: int = 2048  # hidden width of g (= ResNet-50's 2048 features, as v1)
    proj_out_dim: int = 128  # output of g where the loss is taken (as SimCLR v1)
    proj_layers: int = 3  # linear layers in g (sec. 2.1: 3-layer projection head)
    finetune_layers: int = 1  # head layers kept by encoder_with_head() (sec. 2.1: the 1st)


Config = SimCLRv2Config


class HeadEncoder(nn.Module):
    """The backbone followed by the first layers of a projection head: ``[B, C, H, W] ->
    [B, num_features]``, sharing (not copying) the method's parameters.

    Attributes:
        num_features: output width (the last kept head layer's width).
        in_chans, image_size: copied from the backbone when it has them.
    """

    def __init__(self, backbone: nn.Module, head: nn.Sequential, num_features: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_features = num_features
        self.in_chans = getattr(backbone, "in_chans", None)
        self.image_size = getattr(backbone, "image_size", None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.backbone(x))
        assert isinstance(out, Tensor)
        return out


@register(
    "method",
    "simclr_v2",
    description="SimCLR with a 3-layer projection head, fine-tuned from its first layer",
    reference="Chen et al. 2020, Big Self-Supervised Models are Strong Semi-Supervised Learners",
)
class SimCLRv2(Method):
    """SimCLR v2 around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the encoder ``f`` (evaluated and exported by default).
        projector: the head ``g``: ``proj_layers`` linear layers, Linear-BN-ReLU hidden layers and
            a final Linear-BN (``[B, num_features] -> [B, proj_out_dim]``).
        criterion: :class:`~selfsup.losses.contrastive.NTXentLoss` gathering over ranks.

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = SimCLRv2Config
    default_views: ClassVar[str] = "simclr"  # same augmentation as SimCLR (sec. 2.1)
    # Sec. 2.1 / appendix: LARS, peak lr 6.4 = 0.1 x sqrt(4096), i.e. 1.6 x sqrt(B / 256),
    # weight decay 1e-4, momentum 0.9, warm-up over the first 5% of the epochs (40 of 800; 5 of
    # this library's default 100 epochs), then cosine decay.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 1.6,
        "lr_scaling": "sqrt",
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "warmup_epochs": 5,
        "min_lr_ratio": 0.0,
        "decay_norm_bias": False,  # LARS exclude_from_weight_decay: batch_normalization, bias
    }
    # lightly's CIFAR-10 benchmark has no SimCLR v2 model: its SimCLRModel's settings (SGD,
    # 512-wide head, t = 0.5, jitter strength 0.5, no blur) with v2's 3-layer projector kept
    small_recipe: ClassVar[Recipe | None] = Recipe(
        source=f"{LIGHTLY_CIFAR10_SOURCE} SimCLRModel", optim=dict(LIGHTLY_CIFAR10_SGD),
        method_args={"proj_hidden_dim": 512, "proj_out_dim": 128, "temperature": 0.5},
        view_args=dict(LIGHTLY_CIFAR10_COLOR),
        note="SimCLR's small recipe with SimCLR v2's 3-layer projector (lightly publishes no "
        "CIFAR-10 SimCLR v2 setting); kNN 91.92 vs the paper recipe's 92.20 (digits 16 px, "
        "small CNN, 150 steps of batch 128, one run)",
        auto=False)

    def __init__(self, backbone: nn.Module, cfg: SimCLRv2Config) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("proj_hidden_dim", "proj_out_dim", "proj_layers"))
        if not 0 <= cfg.finetune_layers < cfg.proj_layers:
            raise ConfigError(
                f"method_args.finetune_layers must be in [0, proj_layers - 1] = "
                f"[0, {cfg.proj_layers - 1}], got {cfg.finetune_layers}"
            )
        if not cfg.temperature > 0:
            raise ConfigError(f"method_args.temperature must be > 0, got {cfg.temperature}")
        dims = [num_features] + [cfg.proj_hidden_dim] * (cfg.proj_layers - 1) + [cfg.proj_out_dim]
        self.projector = mlp(dims, batch_norm=True, last_bn=True)
        self.num_features = num_features
        self.criterion = NTXentLoss(cfg.temperature, gather=True)

    def encoder_with_head(self, layers: int | None = None) -> HeadEncoder:
        """The backbone plus the first ``layers`` hidden layers of the projector (Linear-BN-ReLU
        each), the network SimCLR v2 fine-tunes (sec. 2.1: ``layers = 1``).

        Args:
            layers: head layers to keep, ``0 <= layers < proj_layers``; None = Config's
                ``finetune_layers``.

        Raises:
            ConfigError: if ``layers`` is out of range.
        """
        layers = self.cfg.finetune_layers if layers is None else layers
        if not 0 <= layers < self.cfg.proj_layers:
            raise ConfigError(
                f"simclr_v2: can keep 0 to {self.cfg.proj_layers - 1} head layers, got {layers}"
            )
        width = self.cfg.proj_hidden_dim if layers > 0 else self.num_features
        return HeadEncoder(self.backbone, self.projector[: 3 * layers], width)

    def training_step(self, batch: Batch) -> StepOutput:
        """NT-Xent between the projections of ``batch.views[0]`` and ``batch.views[1]``.

        Raises:
            DataError: if there are fewer than two views or the first two differ in shape.
        """
        if len(batch.views) < 2:
            raise DataError(f"simclr_v2 needs 2 views per image, got {len(batch.views)}")
        x1, x2 = batch.views[0], batch.views[1]
        if x1.shape != x2.shape:
            raise DataError(
                f"simclr_v2 needs two views of the same shape, got {tuple(x1.shape)} and "
                f"{tuple(x2.shape)}"
            )
        b = x1.shape[0]
        z = self.projector(self.backbone(torch.cat([x1, x2], dim=0)))  # [2B, proj_out_dim]
        loss = self.criterion(z[:b], z[b:])
        return StepOutput(loss=loss, logs={}, embeddings=z[:b].detach())
