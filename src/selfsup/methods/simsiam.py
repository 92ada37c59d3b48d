"""SimSiam: a siamese network whose predictor regresses the other view's projection through a
stop-gradient; no negatives, no momentum encoder.

Chen & He 2021, "Exploring Simple Siamese Representation Learning". Both views go through the
same encoder ``f`` (backbone + projection MLP): ``z = f(x)``; a prediction MLP ``h`` gives
``p = h(z)``. The loss is ``D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2`` with
``D(p, z) = -cos(p, z)`` (eqs. 1-4). The stop-gradient is what prevents collapse (sec. 4.1,
figure 2): without it the outputs collapse to a constant within a few steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from selfsup.config import Recipe
from selfsup.losses.distillation import simsiam_loss
from selfsup.methods.base import LIGHTLY_CIFAR10_SGD, LIGHTLY_CIFAR10_SOURCE, Method
from selfsup.nn.heads import mlp
from selfsup.registry import register
from selfsup.types import Batch, DataError, StepOutput


@dataclass
class SimSiamConfig:
    """SimSiam hyper-parameters; defaults are the paper's (``selfsup.methods.simsiam.Config``)."""

    proj_hidden_dim: int = 2048  # projection MLP hidden width (sec. 3, "Projection MLP")
    proj_out_dim: int = 2048  # projection output size, BN on the output fc (sec. 3)
    proj_layers: int = 3  # linear layers of the projection MLP (sec. 3; table 4 ablates it)
    pred_hidden_dim: int = 512  # bottleneck of the prediction MLP (sec. 3, table 4 / B.1)
    stop_gradient: bool = True  # stop-gradient on z (eq. 3); False is the collapsing ablation


Config = SimSiamConfig


@register(
    "method",
    "simsiam",
    description="siamese network with a predictor and stop-gradient (no negatives, no EMA)",
    reference="Chen & He 2021, Exploring Simple Siamese Representation Learning",
)
class SimSiam(Method):
    """SimSiam around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the encoder's backbone (evaluated and exported).
        projector: the projection MLP ``[B, num_features] -> [B, proj_out_dim]``: BN after every
            linear layer, ReLU after all but the last, and the output BN without affine
            parameters, as in the authors' code.
        predictor: the bottleneck prediction MLP ``[B, proj_out_dim] -> [B, proj_out_dim]``:
            Linear-BN-ReLU-Linear with hidden width ``pred_hidden_dim`` (no BN on its output).

    The paper keeps the predictor's learning rate fixed (not decayed, sec. 4.2); the library's
    optimiser applies one schedule to every parameter, so here the predictor's lr is decayed too
    (the paper reports a small gain from the fixed lr, 68.1 vs 67.7% top-1 on ImageNet).

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = SimSiamConfig
    # appendix A / main_simsiam.py ("MoCo v2's aug"): crop 0.2-1, jitter 0.4 p 0.8, blur p 0.5
    default_views: ClassVar[str] = "moco_v2"
    # SimSiam sec. 3 ("Optimizer"): SGD, lr = 0.05 x B / 256, weight decay 1e-4, momentum 0.9,
    # cosine decay, no warm-up (batch 512). main_simsiam.py hands model.parameters() (or the
    # encoder's and predictor's, all of them) to SGD with one weight decay: every parameter,
    # BN and biases included, is decayed.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.05,
        "lr_scaling": "linear",
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "warmup_epochs": 0,
        "min_lr_ratio": 0.0,
        "decay_norm_bias": True,
    }
    # lightly's CIFAR-10 benchmark, SimSiamModel: a 2-layer projector 512-2048-2048 (BN on
    # both), SimSiamPredictionHead(2048, 512, 2048), SGD lr 0.06 without batch scaling ("results
    # in better training stability"), momentum 0.9, weight decay 5e-4, SimSiamTransform (= the
    # moco_v2 preset) without blur
    small_recipe: ClassVar[Recipe | None] = Recipe(
        source=f"{LIGHTLY_CIFAR10_SOURCE} SimSiamModel",
        optim={**LIGHTLY_CIFAR10_SGD, "lr": 0.06, "lr_scaling": "none"},
        method_args={"proj_hidden_dim": 2048, "proj_out_dim": 2048, "proj_layers": 2,
                     "pred_hidden_dim": 512},
        view_args={"blur_p": 0.0}, auto=False,
        note="kNN 87.19 vs the paper recipe's 89.97 (digits 16 px, small CNN, 150 steps of batch "
        "128, one run)")

    def __init__(self, backbone: nn.Module, cfg: SimSiamConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("proj_hidden_dim", "proj_out_dim", "proj_layers", "pred_hidden_dim"))
        dims = [num_features] + [cfg.proj_hidden_dim] * (cfg.proj_layers - 1) + [cfg.proj_out_dim]
        self.projector = mlp(dims, last_bn=True, last_bn_affine=False)
        self.predictor = mlp([cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim])

    def training_step(self, batch: Batch) -> StepOutput:
        """Symmetric SimSiam loss between ``batch.views[0]`` and ``batch.views[1]``
        (``[B, C, H, W]`` each, one encoder pass per view as in the paper's code).

        Raises:
            DataError: if there are fewer than two views.
        """
        if len(batch.views) < 2:
            raise DataError(f"simsiam needs 2 views per image, got {len(batch.views)}")
        z1 = self.projector(self.backbone(batch.views[0]))  # [B, proj_out_dim]
        z2 = self.projector(self.backbone(batch.views[1]))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = simsiam_loss(p1, p2, z1, z2, stop_gradient=self.cfg.stop_gradient)
        return StepOutput(loss=loss, logs={}, embeddings=z1.detach())
