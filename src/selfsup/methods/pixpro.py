"""PixPro: pixel-to-propagation consistency between overlapping crops, with a momentum encoder.

Xie et al. 2021, "Propagate Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual
Representation Learning". Two crops of an image go through a regular encoder (backbone feature map
``[B, D, h, w]`` + a per-pixel projector: 1x1 conv - BN - ReLU - 1x1 conv, sec. 3.2 / 4.1) followed
by the pixel propagation module (eqs. 3-4: ``y_i = sum_j max(cos(x_i, x_j), 0)^gamma g(x_j)``),
and through a momentum encoder (an EMA of backbone and projector, no PPM) giving ``x'``. Pixels
of the two views whose source-image positions are closer than ``T = 0.7`` feature-map bins
(eq. 1, from the crop boxes the augmentation records, flips included) must agree:
``L_PixPro = -cos(y_i, x'_j) - cos(y_j, x'_i)`` (eq. 5), symmetrised over the views
(:func:`selfsup.losses.dense.pixpro_loss`). The momentum ``m`` goes from 0.99 to 1 by cosine
(sec. 4.1; ``m = 1 - (1 - m_base)(cos(pi k / K) + 1) / 2``).

The optional instance branch (sec. 3.3, "PixPro + instance"; ``instance_weight > 0``) adds BYOL on
pooled features: a per-pixel instance projector and predictor averaged over the map, regressing
the momentum instance projector's pooled output of the other view (:func:`byol_loss`, equal to the
authors' ``-2 cos`` up to a constant), weighted by ``instance_weight``. No negatives are used; as in
BYOL, collapse is avoided by the asymmetric (PPM-only) online branch and the slow momentum encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.dense import pixpro_loss, positive_pairs
from selfsup.losses.distillation import byol_loss
from selfsup.methods.base import Method
from selfsup.nn.ema import EMA
from selfsup.nn.heads import mlp
from selfsup.nn.ppm import PixelPropagation, per_pixel
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils.schedules import cosine


@dataclass
class PixProConfig:
    """PixPro hyper-parameters; defaults are the paper's (``selfsup.methods.pixpro.Config``)."""

    proj_hidden_dim: int = 4096  # hidden width of the per-pixel projector (sec. 4.1, code MLP2d)
    proj_out_dim: int = 256  # pixel feature size after projection (sec. 4.1)
    gamma: float = 2.0  # sharpness exponent of the PPM similarity (eq. 4, table 3: 2 best)
    transform_layers: int = 1  # linear layers of the PPM transform g; 0 = identity (table 3: 1)
    pos_threshold: float = 0.7  # T: positive pixel pairs closer than T bins (eq. 1, table 2)
    momentum_base: float = 0.99  # momentum of the EMA encoder at step 0 (sec. 4.1)
    momentum_end: float = 1.0  # momentum at the end, reached by cosine (sec. 4.1)
    instance_weight: float = 0.0  # weight of the instance branch (sec. 3.3); 0 = off (code default)
    pred_hidden_dim: int = 4096  # hidden width of the instance predictor (sec. 3.3, BYOL-style)


Config = PixProConfig


def _pool(x: Tensor) -> Tensor:
    """``[B, C, h, w] -> [B, C]`` global average."""
    return x.mean(dim=(2, 3))


@register(
    "method",
    "pixpro",
    description="pixel propagation consistency between overlapping crops (momentum encoder, PPM)",
    reference="Xie et al. 2021, Propagate Yourself: Exploring Pixel-Level Consistency for "
    "Unsupervised Visual Representation Learning",
)
class PixPro(Method):
    """PixPro around a backbone with ``num_features`` and ``forward_features(x) -> [B, D, h, w]``.

    Attributes:
        backbone: the online encoder (evaluated and exported; its pooled ``forward`` is what the
            kNN/linear probes see).
        projector: per-pixel ``[B, D, h, w] -> [B, proj_out_dim, h, w]`` (Linear-BN-ReLU-Linear
            applied at every pixel, i.e. the paper's 1x1 convolutions).
        ppm: :class:`~selfsup.nn.ppm.PixelPropagation` on the projected map.
        target_backbone, target_projector: :class:`~selfsup.nn.ema.EMA` copies (no gradients).
        instance_projector, instance_predictor, target_instance_projector: the instance branch,
            present only when ``instance_weight > 0``.

    Raises:
        ConfigError: if the backbone lacks ``num_features``/``forward_features`` or a Config
            value is invalid.
    """

    Config: ClassVar[type] = PixProConfig
    default_views: ClassVar[str] = "byol"  # sec. 4.1: BYOL's augmentations, crop scale (0.08, 1)
    # Sec. 4.1 / authors' script tools/pixpro_base_r50_100ep.sh: LARS, lr = 1.0 x B / 256 (batch
    # 1024, lr 4), weight decay 1e-5, momentum 0.9, 5 warm-up epochs, cosine decay to ~0. Biases
    # and BN (every 1-D parameter) get no weight decay and no LARS adaptation: zdaxie/PixPro
    # contrast/lars.py `add_weight_decay` (group with weight_decay 0, `ignore=True`).
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 1.0,
        "lr_scaling": "linear",
        "weight_decay": 1e-5,
        "momentum": 0.9,
        "warmup_epochs": 5,
        "min_lr_ratio": 0.0,
        "decay_norm_bias": False,
    }

    momentum: Tensor

    def __init__(self, backbone: nn.Module, cfg: PixProConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        if not callable(getattr(backbone, "forward_features", None)):
            raise ConfigError("pixpro: the backbone must have forward_features(x) -> [B, D, h, w]")
        self.require_positive(cfg, ("proj_hidden_dim", "proj_out_dim", "pred_hidden_dim"))
        if cfg.transform_layers < 0:
            raise ConfigError(f"method_args.transform_layers must be >= 0, got "
                              f"{cfg.transform_layers}")
        for key in ("gamma", "pos_threshold"):
            if not getattr(cfg, key) > 0:
                raise ConfigError(f"method_args.{key} must be > 0, got {getattr(cfg, key)}")
        for key in ("momentum_base", "momentum_end"):
            if not 0.0 <= getattr(cfg, key) <= 1.0:
                raise ConfigError(f"method_args.{key} must be in [0, 1], got {getattr(cfg, key)}")
        if not cfg.instance_weight >= 0:
            raise ConfigError(f"method_args.instance_weight must be >= 0, got "
                              f"{cfg.instance_weight}")
        self.projector = mlp([num_features, cfg.proj_hidden_dim, cfg.proj_out_dim])
        self.ppm = PixelPropagation(cfg.proj_out_dim, cfg.transform_layers, cfg.gamma)
        # Parameters-only EMA, as zdaxie/PixPro contrast/models/PixPro.py
        # `_momentum_update_key_encoder` (loops over `.parameters()`): the momentum encoder's BN
        # running statistics are those of its own forward passes.
        self.target_backbone = EMA(backbone, copy_buffers=False)
        self.target_projector = EMA(self.projector, copy_buffers=False)
        self.instance_projector: nn.Module | None = None
        self.instance_predictor: nn.Module | None = None
        self.target_instance_projector: EMA | None = None
        if cfg.instance_weight > 0:
            self.instance_projector = mlp([num_features, cfg.proj_hidden_dim, cfg.proj_out_dim])
            self.instance_predictor = mlp([cfg.proj_out_dim, cfg.pred_hidden_dim,
                                           cfg.proj_out_dim])
            self.target_instance_projector = EMA(self.instance_projector, copy_buffers=False)
        # m of the last on_step_end, logged by training_step; a buffer so a resumed run logs
        # what the uninterrupted one does
        self.register_buffer("momentum", torch.tensor(float(cfg.momentum_base)))

    def _features(self, x: Tensor) -> Tensor:
        out: Tensor = self.backbone.forward_features(x)  # type: ignore[operator]
        return out

    @torch.no_grad()
    def _target(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Momentum pixel features ``[B, proj_out_dim, h, w]`` and, with the instance branch, the
        momentum instance projection pooled to ``[B, proj_out_dim]``."""
        feat = self.target_backbone.module.forward_features(x)  # type: ignore[operator]
        pix = per_pixel(self.target_projector, feat)
        inst = None
        if self.target_instance_projector is not None:
            inst = _pool(per_pixel(self.target_instance_projector, feat))
        return pix, inst

    def _instance(self, feat: Tensor) -> Tensor:
        """Online instance prediction: per-pixel projector and predictor, then pooled (the
        authors' order) ``[B, proj_out_dim]``."""
        assert self.instance_projector is not None and self.instance_predictor is not None
        return _pool(per_pixel(self.instance_predictor, per_pixel(self.instance_projector, feat)))

    def training_step(self, batch: Batch) -> StepOutput:
        """Symmetric PixPro loss between ``batch.views[0]`` and ``batch.views[1]`` (``[B, C, H, W]``
        each, one pass per view), using ``batch.boxes[0]`` and ``batch.boxes[1]`` (``[B, 4]``).

        Raises:
            DataError: if there are fewer than two views or the crop boxes are missing.
        """
        if len(batch.views) < 2:
            raise DataError(f"pixpro needs 2 views per image, got {len(batch.views)}")
        if batch.boxes is None or len(batch.boxes) < 2:
            raise DataError("pixpro needs the crop boxes of both views (Batch.boxes)")
        x1, x2 = batch.views[0], batch.views[1]
        b1, b2 = batch.boxes[0].to(x1.device), batch.boxes[1].to(x1.device)
        f1, f2 = self._features(x1), self._features(x2)  # [B, D, h, w]
        z1, z2 = per_pixel(self.projector, f1), per_pixel(self.projector, f2)  # [B, P, h, w]
        y1, y2 = self.ppm(z1), self.ppm(z2)
        t1, i1 = self._target(x1)
        t2, i2 = self._target(x2)
        loss_pix = pixpro_loss(y1, y2, t1, t2, b1, b2, self.cfg.pos_threshold)
        loss = loss_pix
        with torch.no_grad():
            pairs = positive_pairs(b1, b2, (z1.shape[2], z1.shape[3]), (z2.shape[2], z2.shape[3]),
                                   self.cfg.pos_threshold)
        logs: dict[str, Tensor | float] = {
            "tau": self.momentum, "loss_pix": loss_pix.detach(),
            "pos_pairs": pairs.float().sum(dim=(1, 2)).mean(),  # positive pairs per image
        }
        if i1 is not None and i2 is not None:
            loss_ins = byol_loss(self._instance(f1), self._instance(f2), i1, i2)
            loss = loss + self.cfg.instance_weight * loss_ins
            logs["loss_ins"] = loss_ins.detach()
        return StepOutput(loss=loss, logs=logs, embeddings=_pool(z1).detach())

    def momentum_at(self, step: int, total: int) -> float:
        """``m_k = 1 - (1 - m_base)(cos(pi k / K) + 1) / 2`` (sec. 4.1), ending at ``momentum_end``."""
        return cosine(step, total, self.cfg.momentum_base, self.cfg.momentum_end)

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """EMA update of the parameters of the momentum backbone and projector(s) with ``m_k``
        (buffers untouched, as the reference)."""
        m = self.momentum_at(step, total)
        self.momentum.fill_(m)
        self.target_backbone.update(self.backbone, m)
        self.target_projector.update(self.projector, m)
        if self.target_instance_projector is not None and self.instance_projector is not None:
            self.target_instance_projector.update(self.instance_projector, m)
