"""Barlow Twins: make the cross-correlation of the two views' embeddings the identity matrix.

Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction".
Both views go through the same backbone and projector ("expander"); the embeddings are
standardised along the (global) batch and their cross-correlation ``C`` ``[D, D]`` enters
``L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2`` (eqs. 1-2): the diagonal term makes the
embedding invariant to the augmentations, the off-diagonal term decorrelates its dimensions, which
is what prevents collapse (a constant embedding has ``C = 0`` and loss ``D``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from selfsup.config import Recipe
from selfsup.losses.redundancy import BarlowTwinsLoss
from selfsup.methods.base import LIGHTLY_CIFAR10_SGD, LIGHTLY_CIFAR10_SOURCE, Method
from selfsup.nn.heads import mlp
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput


@dataclass
class BarlowTwinsConfig:
    """Barlow Twins hyper-parameters (``selfsup.methods.barlow_twins.Config``).

    The paper's projector is 3 layers of 8192 units on ImageNet (sec. 2, 4; figure 4 shows
    accuracy growing with the width). The default here is scaled to 2048 so that small-image /
    CPU runs stay fast; pass ``proj_hidden_dim=8192 proj_out_dim=8192`` for the paper's setting.
    With a projector narrower than 8192, scale ``lambd`` up as ``5e-3 x 8192 / proj_out_dim``
    (the off-diagonal sum has ``D (D - 1)`` terms); the default stays the paper's 5e-3.
    """

    proj_hidden_dim: int = 2048  # paper: 8192 (sec. 4 "Implementation details"); scaled
    proj_out_dim: int = 2048  # paper: 8192; scaled (the output size is D of C [D, D])
    proj_layers: int = 3  # linear layers of the projector (sec. 4)
    lambd: float = 5e-3  # weight of the redundancy-reduction term (sec. 2, sec. 4)
    eps: float = 1e-5  # variance epsilon of the batch normalisation (BatchNorm1d's)
    bias_lr_ratio: float = 0.024  # lr of biases and BN over the weights' lr: 0.0048 / 0.2 (sec. 4)


Config = BarlowTwinsConfig


class _Scale:
    """Gradient hook ``g -> factor * g`` (a class, so the method stays deep-copyable)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, grad: Tensor) -> Tensor:
        return grad * self.factor


@register(
    "method",
    "barlow_twins",
    description="redundancy reduction: cross-correlation of the two views' embeddings -> I",
    reference="Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy "
    "Reduction",
)
class BarlowTwins(Method):
    """Barlow Twins around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the encoder (evaluated and exported).
        projector: ``[B, num_features] -> [B, proj_out_dim]``: Linear-BN-ReLU hidden layers and a
            final Linear, no biases (as in the authors' code; the loss's batch normalisation
            removes any constant shift anyway).
        criterion: :class:`~selfsup.losses.redundancy.BarlowTwinsLoss` with statistics over the
            global batch when running distributed.

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = BarlowTwinsConfig
    default_views: ClassVar[str] = "byol"  # sec. 4: BYOL's augmentations
    # Barlow Twins sec. 4: LARS, lr = 0.2 x B / 256 for the weights and 0.0048 x B / 256 for
    # biases and BN (Config.bias_lr_ratio scales their gradients, see __init__), weight decay
    # 1.5e-6, 10 warm-up epochs, cosine decay to 1/1000 of the peak (authors' code). Biases and
    # BN (1-D parameters) get no weight decay and no LARS adaptation: facebookresearch/barlowtwins
    # main.py builds LARS with `weight_decay_filter=True, lars_adaptation_filter=True`, which
    # `LARS.exclude_bias_and_norm` (`p.ndim == 1`) applies.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.2,
        "lr_scaling": "linear",
        "weight_decay": 1.5e-6,
        "momentum": 0.9,
        "warmup_epochs": 10,
        "min_lr_ratio": 0.001,
        "decay_norm_bias": False,
    }
    # lightly's CIFAR-10 benchmark, BarlowTwinsModel: projector 512-2048 (BN, ReLU)-2048,
    # BarlowTwinsLoss (lambda 5e-3), its shared SGD (one lr for every parameter: bias_lr_ratio 1),
    # BYOL's transforms without blur
    small_recipe: ClassVar[Recipe | None] = Recipe(
        source=f"{LIGHTLY_CIFAR10_SOURCE} BarlowTwinsModel", optim=dict(LIGHTLY_CIFAR10_SGD),
        method_args={"proj_hidden_dim": 2048, "proj_out_dim": 2048, "proj_layers": 2,
                     "bias_lr_ratio": 1.0},
        view_args={"blur_p": 0.0}, auto=False,
        note="collapsed: kNN 49.58 vs the paper recipe's 85.52 (digits 16 px, small CNN, 150 "
        "steps of batch 128, one run); not yet understood")

    def __init__(self, backbone: nn.Module, cfg: BarlowTwinsConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("proj_hidden_dim", "proj_out_dim", "proj_layers"))
        for key in ("lambd", "eps", "bias_lr_ratio"):
            if not getattr(cfg, key) >= 0:
                raise ConfigError(f"method_args.{key} must be >= 0, got {getattr(cfg, key)}")
        dims = [num_features] + [cfg.proj_hidden_dim] * (cfg.proj_layers - 1) + [cfg.proj_out_dim]
        self.projector = mlp(dims, bias=False)
        self.criterion = BarlowTwinsLoss(cfg.lambd, cfg.eps, gather=True)
        if cfg.bias_lr_ratio != 1.0:
            # The paper trains biases and BN parameters with a 0.0048 / 0.2 = 0.024 times smaller
            # learning rate than the weights. Those parameters get no weight decay and no LARS
            # adaptation (engine/optim.py), so their SGD update is lr x gradient and scaling the
            # gradient is exactly scaling their learning rate. Without it they move ~40x faster
            # than in the paper: the loss is a sum over D (thousands) and BN gains and shifts
            # take steps of that size.
            for param in self.parameters():
                if param.requires_grad and param.dim() < 2:
                    param.register_hook(_Scale(cfg.bias_lr_ratio))

    def training_step(self, batch: Batch) -> StepOutput:
        """Barlow Twins loss between ``batch.views[0]`` and ``batch.views[1]`` (``[B, C, H, W]``
        each, one pass per view as in the paper's code).

        Raises:
            DataError: if there are fewer than two views, or the global batch is below 2.
        """
        if len(batch.views) < 2:
            raise DataError(f"barlow_twins needs 2 views per image, got {len(batch.views)}")
        z1 = self.projector(self.backbone(batch.views[0]))  # [B, proj_out_dim]
        z2 = self.projector(self.backbone(batch.views[1]))
        terms = self.criterion.terms(z1, z2)
        loss = self.criterion.combine(terms)
        logs: dict[str, Tensor | float] = {"on_diag": terms.on_diag.detach(), "off_diag": terms.off_diag.detach()}
        return StepOutput(loss=loss, logs=logs, embeddings=z1.detach())
