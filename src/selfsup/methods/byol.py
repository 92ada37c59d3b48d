"""BYOL: an online network predicts a slowly moving (EMA) target network's projection of another
view; no negatives.

Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning".
The online network (backbone ``f_theta``, projector ``g_theta``, predictor ``q_theta``) maps view
``v`` to ``q_theta(z_theta)``; the target network (``f_xi``, ``g_xi``, an exponential moving
average of the online backbone and projector) maps view ``v'`` to ``z'_xi``. The loss is the
normalised MSE ``2 - 2 cos(q, z')`` symmetrised over the two views (eq. 2) and only the online
network is trained; after each optimiser step ``xi <- tau xi + (1 - tau) theta`` (sec. 3.1) with
``tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` (sec. 3.2). Collapse is avoided by the
predictor together with the slowly moving target (sec. 3.2, table 5): without the predictor and
with ``tau = 0`` (target = a copy of the online network) the representation collapses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.config import Recipe
from selfsup.losses.distillation import byol_loss
from selfsup.methods.base import LIGHTLY_CIFAR10_SGD, LIGHTLY_CIFAR10_SOURCE, Method
from selfsup.nn.ema import EMA
from selfsup.nn.heads import mlp
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils.schedules import cosine


@dataclass
class BYOLConfig:
    """BYOL hyper-parameters; defaults are the paper's (``selfsup.methods.byol.Config``)."""

    proj_hidden_dim: int = 4096  # hidden width of projector and predictor (sec. 3.3)
    proj_out_dim: int = 256  # projection / prediction size (sec. 3.3)
    pred_hidden_dim: int = 4096  # predictor hidden width: same MLP shape as g (sec. 3.3)
    momentum_base: float = 0.996  # tau_base of the EMA target (sec. 3.2); 0: target = online
    momentum_end: float = 1.0  # tau at the end of training, reached by cosine (sec. 3.2)
    use_predictor: bool = True  # q_theta (sec. 3.1); False is the collapsing ablation (table 5b)


Config = BYOLConfig


@register(
    "method",
    "byol",
    description="online network predicts an EMA target network's projection (no negatives)",
    reference="Grill et al. 2020, Bootstrap Your Own Latent: A New Approach to Self-Supervised "
    "Learning",
)
class BYOL(Method):
    """BYOL around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the online encoder ``f_theta`` (evaluated and exported).
        projector: ``g_theta`` ``[B, num_features] -> [B, proj_out_dim]``: Linear-BN-ReLU-Linear.
        predictor: ``q_theta`` ``[B, proj_out_dim] -> [B, proj_out_dim]``, same shape; an
            ``nn.Identity`` when ``use_predictor`` is False.
        target_backbone, target_projector: :class:`~selfsup.nn.ema.EMA` copies ``f_xi, g_xi``
            (no gradients; updated in :meth:`on_step_end`).

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = BYOLConfig
    default_views: ClassVar[str] = "byol"
    # BYOL sec. 3.3 / appendix C: LARS, lr = 0.2 x B / 256, weight decay 1.5e-6, momentum 0.9,
    # 10 warm-up epochs, cosine decay to 0. Biases and BN get neither weight decay nor LARS
    # adaptation: deepmind-research byol/byol_experiment.py `_optimizer` passes
    # `weight_decay_filter` and `lars_adaptation_filter` = utils/optimizers.exclude_bias_and_norm.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.2,
        "lr_scaling": "linear",
        "weight_decay": 1.5e-6,
        "momentum": 0.9,
        "warmup_epochs": 10,
        "min_lr_ratio": 0.0,
        "decay_norm_bias": False,
    }
    # lightly's CIFAR-10 benchmark, BYOLModel: BYOLProjectionHead(512, 1024, 256),
    # BYOLPredictionHead(256, 1024, 256), update_momentum(m=0.99) every step (no cosine), its
    # shared SGD, BYOLView1/2Transform(input_size=32, gaussian_blur=0.0) (view 2 keeps solarise)
    small_recipe: ClassVar[Recipe | None] = Recipe(
        source=f"{LIGHTLY_CIFAR10_SOURCE} BYOLModel", optim=dict(LIGHTLY_CIFAR10_SGD),
        method_args={"proj_hidden_dim": 1024, "proj_out_dim": 256, "pred_hidden_dim": 1024,
                     "momentum_base": 0.99, "momentum_end": 0.99},
        view_args={"blur_p": 0.0}, auto=False,
        note="kNN 86.35 vs the paper recipe's 88.58 (digits 16 px, small CNN, 150 steps of batch "
        "128, one run)")

    momentum: Tensor

    def __init__(self, backbone: nn.Module, cfg: BYOLConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("proj_hidden_dim", "proj_out_dim", "pred_hidden_dim"))
        for key in ("momentum_base", "momentum_end"):
            if not 0.0 <= getattr(cfg, key) <= 1.0:
                raise ConfigError(f"method_args.{key} must be in [0, 1], got {getattr(cfg, key)}")
        self.projector = mlp([num_features, cfg.proj_hidden_dim, cfg.proj_out_dim])
        self.predictor: nn.Module = (
            mlp([cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim])
            if cfg.use_predictor else nn.Identity()
        )
        # Parameters-only EMA: in byol_experiment.py `_update_fn` averages `target_params` only;
        # `target_state` (the target's BN moving averages) is what the target's own forward pass
        # (`is_training=True`, batch statistics) returns, never the online network's state.
        self.target_backbone = EMA(backbone, copy_buffers=False)
        self.target_projector = EMA(self.projector, copy_buffers=False)
        # tau of the last on_step_end, logged by training_step; a buffer so a resumed run logs
        # what the uninterrupted one does
        self.register_buffer("momentum", torch.tensor(float(cfg.momentum_base)))

    def training_step(self, batch: Batch) -> StepOutput:
        """Symmetric BYOL loss between ``batch.views[0]`` and ``batch.views[1]`` (``[B, C, H, W]``).

        Each view takes its own pass through the online and the target network, as in the
        paper's code, so BatchNorm statistics are per view.

        Raises:
            DataError: if there are fewer than two views.
        """
        if len(batch.views) < 2:
            raise DataError(f"byol needs 2 views per image, got {len(batch.views)}")
        x1, x2 = batch.views[0], batch.views[1]
        z1 = self.projector(self.backbone(x1))  # [B, proj_out_dim]
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(x1))  # [B, proj_out_dim]
            t2 = self.target_projector(self.target_backbone(x2))
        loss = byol_loss(p1, p2, t1, t2)
        return StepOutput(loss=loss, logs={"tau": self.momentum}, embeddings=z1.detach())

    def momentum_at(self, step: int, total: int) -> float:
        """``tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2`` (sec. 3.2), generalised to end at
        ``momentum_end`` instead of 1."""
        return cosine(step, total, self.cfg.momentum_base, self.cfg.momentum_end)

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """``xi <- tau xi + (1 - tau) theta`` for the parameters of backbone and projector
        (sec. 3.1); the target's BN running statistics stay those of its own forward passes."""
        m = self.momentum_at(step, total)
        self.momentum.fill_(m)
        self.target_backbone.update(self.backbone, m)
        self.target_projector.update(self.projector, m)
