"""MoCo v3: symmetric in-batch InfoNCE between a predictor-headed query encoder and a momentum
encoder, without a queue; for ResNets and Vision Transformers.

Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers",
sec. 3 (Algorithm 1). The query encoder is ``backbone -> projector -> predictor``; the momentum
encoder is an EMA of ``backbone -> projector`` whose momentum follows a cosine schedule from ``m``
to 1. For two views, ``loss = ctr(q1, k2) + ctr(q2, k1)`` with ``ctr(q, k) = 2 tau *
CE(q k^T / tau, diag)``: the keys of the whole (global) batch are the candidates, the key of the
same image is the positive (Algorithm 1; the factor ``2 tau`` is the official code's, making the
gradient scale insensitive to ``tau``). sec. 4 / 5: for ViT the patch projection can be frozen at
its random initialisation ("random patch projection"), which stabilises training.

Reference choices (facebookresearch/moco-v3): the momentum update touches parameters only
(``moco/builder.py``, ``_update_momentum_encoder``), so the momentum encoder's BatchNorm keeps
statistics of its own forward passes (``EMA(copy_buffers=False)``). The default recipe is the
ResNet one, LARS from ``moco/optimizer.py``, which skips weight decay and the trust ratio for
every parameter with ``ndim <= 1`` (``decay_norm_bias=False``, as this library's LARS does). The
ViT recipe's AdamW (``main_moco.py``) decays every parameter: add ``optim.decay_norm_bias=true``
to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.contrastive import info_nce
from selfsup.methods.base import Method
from selfsup.nn.ema import EMA
from selfsup.nn.heads import mlp
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils.schedules import cosine

__all__ = ["MoCoV3", "MoCoV3Config"]


@dataclass
class MoCoV3Config:
    """MoCo v3 hyper-parameters (``selfsup.methods.moco_v3.Config``); ``None`` = by backbone."""

    temperature: float | None = None  # tau (sec. 4 / official code): 1.0 ResNet, 0.2 ViT
    momentum: float = 0.99  # base EMA momentum m (official code: 0.99; 0.996 for 300+ ep R50)
    momentum_cosine: bool = True  # m -> 1 by a half-cycle cosine (code's --moco-m-cos)
    proj_hidden_dim: int = 4096  # hidden width of projector and predictor (sec. 4: 4096)
    proj_dim: int = 256  # output width of projector and predictor (sec. 4: 256)
    proj_layers: int | None = None  # projector depth (official code): 2 ResNet, 3 ViT
    pred_layers: int = 2  # predictor depth (sec. 4: 2-layer MLP)
    freeze_patch_embed: bool | None = None  # random patch projection (sec. 5); None: on for ViT


Config = MoCoV3Config


def _is_vit(backbone: nn.Module) -> bool:
    return hasattr(backbone, "patch_embed")


@register(
    "method",
    "moco_v3",
    description="momentum encoder + predictor, symmetric in-batch InfoNCE, no queue (ResNet/ViT)",
    reference="Chen, Xie & He 2021, An Empirical Study of Training Self-Supervised Vision "
    "Transformers",
)
class MoCoV3(Method):
    """MoCo v3 around a ResNet-style (``num_features``) or ViT (``patch_embed``) backbone.

    Attributes:
        backbone: the encoder (evaluated and exported).
        projector: ``mlp`` of ``proj_layers`` Linear(no bias)-BN-ReLU layers ending in a
            non-affine BN (official code, after SimCLR).
        predictor: ``mlp`` of ``pred_layers`` layers; its output BN only for ViT (official code).
        momentum_encoder: :class:`~selfsup.nn.ema.EMA` of ``(backbone, projector)``.

    Raises:
        ConfigError: if the backbone has no ``num_features``, a Config value is invalid, or
            ``freeze_patch_embed=true`` is set for a backbone without ``patch_embed``.
    """

    Config: ClassVar[type] = MoCoV3Config
    default_views: ClassVar[str] = "byol"  # sec. 4: BYOL's augmentation (asymmetric blur/solar.)
    # Official ResNet-50 recipe (the default backbone is a ResNet): LARS, lr 0.6 x B / 256,
    # weight decay 1e-6, momentum 0.9, 10 warm-up epochs, cosine to 0. ViT recipe (sec. 4):
    # optim.name=adamw optim.lr=1.5e-4 optim.weight_decay=0.1 optim.warmup_epochs=40
    # optim.decay_norm_bias=true (AdamW over model.parameters() decays norms and biases too).
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.6,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "warmup_epochs": 10,
        "min_lr_ratio": 0.0,
        "decay_norm_bias": False,  # moco/optimizer.py LARS: no decay for ndim <= 1
    }

    def __init__(self, backbone: nn.Module, cfg: MoCoV3Config) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        vit = _is_vit(backbone)
        self.temperature = cfg.temperature if cfg.temperature is not None else (
            0.2 if vit else 1.0)
        proj_layers = cfg.proj_layers if cfg.proj_layers is not None else (3 if vit else 2)
        checks = {
            "temperature": self.temperature > 0,
            "momentum": 0.0 <= cfg.momentum <= 1.0,
            "proj_hidden_dim": cfg.proj_hidden_dim >= 1,
            "proj_dim": cfg.proj_dim >= 1,
            "proj_layers": proj_layers >= 1,
            "pred_layers": cfg.pred_layers >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"method_args.{key}={getattr(cfg, key)} is invalid for moco_v3 (temperature "
                    "> 0, momentum in [0, 1], widths and layer counts >= 1)"
                )
        freeze = cfg.freeze_patch_embed if cfg.freeze_patch_embed is not None else vit
        if freeze:
            if not vit:
                raise ConfigError(
                    "method_args.freeze_patch_embed=true needs a ViT backbone (with a "
                    "'patch_embed' module); this backbone has none"
                )
            patch_embed = backbone.patch_embed
            assert isinstance(patch_embed, nn.Module)
            for p in patch_embed.parameters():
                p.requires_grad_(False)
        self.frozen_patch_embed = bool(freeze)
        hid, out = cfg.proj_hidden_dim, cfg.proj_dim
        self.projector = mlp([num_features] + [hid] * (proj_layers - 1) + [out], bias=False,
                             last_bn=True, last_bn_affine=False)
        self.predictor = mlp([out] + [hid] * (cfg.pred_layers - 1) + [out], bias=False,
                             last_bn=vit, last_bn_affine=False)
        # parameters-only momentum update (builder.py): BN running stats stay its own
        self.momentum_encoder = EMA(nn.Sequential(self.backbone, self.projector),
                                    copy_buffers=False)

    def momentum_at(self, step: int, total: int) -> float:
        """EMA momentum after step ``step`` of ``total``: ``1 - (1 - m)(cos(pi step/total) + 1)/2``
        with ``momentum_cosine`` (official code), else the constant ``m``."""
        if not self.cfg.momentum_cosine:
            return float(self.cfg.momentum)
        return cosine(step, total, self.cfg.momentum, 1.0)

    def _ctr(self, q: Tensor, k: Tensor) -> Tensor:
        """``2 tau * InfoNCE(q, k)``, keys of all ranks as candidates (positive: same image)."""
        eye = torch.eye(q.shape[0], dtype=torch.bool, device=q.device)
        t = self.temperature
        return 2 * t * info_nce(q, k, eye, t, gather=True)

    def training_step(self, batch: Batch) -> StepOutput:
        """``ctr(q1, k2) + ctr(q2, k1)`` on ``views[0]``, ``views[1]`` (Algorithm 1).

        Raises:
            DataError: if there are fewer than two views.
        """
        if len(batch.views) < 2:
            raise DataError(f"moco_v3 needs 2 views per image, got {len(batch.views)}")
        x1, x2 = batch.views[0], batch.views[1]
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1, k2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        loss = self._ctr(q1, k2) + self._ctr(q2, k1)
        return StepOutput(loss=loss, logs={}, embeddings=z1.detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """EMA update of the momentum encoder with the scheduled momentum."""
        student = nn.Sequential(self.backbone, self.projector)
        self.momentum_encoder.update(student, self.momentum_at(step, total))
