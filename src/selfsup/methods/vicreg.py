"""VICReg: variance, invariance and covariance regularisation of the two views' embeddings.

Bardes et al. 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning" (ICLR). Both views go through the same backbone and expander; the loss (eq. 6) is
``25 * MSE(Z, Z') + 25 * [v(Z) + v(Z')] / 2 + 1 * [c(Z) + c(Z')]``. The variance hinge keeps the
standard deviation of every embedding dimension above ``gamma = 1`` over the batch, which by
itself prevents collapse to a constant; the covariance term decorrelates the dimensions (prevents
dimensional collapse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from selfsup.losses.vicreg import VICRegLoss
from selfsup.methods.base import Method
from selfsup.nn.heads import mlp
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput


@dataclass
class VICRegConfig:
    """VICReg hyper-parameters (``selfsup.methods.vicreg.Config``).

    The paper's expander is 3 layers of 8192 units on ImageNet (sec. 4.1; table 8 shows accuracy
    growing with the width). The default here is scaled to 2048 so that small-image / CPU runs
    stay fast; pass ``proj_hidden_dim=8192 proj_out_dim=8192`` for the paper's setting.
    """

    proj_hidden_dim: int = 2048  # paper: 8192 (sec. 4.1); scaled
    proj_out_dim: int = 2048  # paper: 8192 (sec. 4.1); scaled
    proj_layers: int = 3  # linear layers of the expander (sec. 4.1)
    sim_coeff: float = 25.0  # lambda, invariance weight (sec. 4.1)
    std_coeff: float = 25.0  # mu, variance weight (sec. 4.1)
    cov_coeff: float = 1.0  # nu, covariance weight (sec. 4.1)
    gamma: float = 1.0  # target standard deviation of the variance hinge (eq. 1)
    eps: float = 1e-4  # epsilon inside the standard deviation (eq. 2)


Config = VICRegConfig


@register(
    "method",
    "vicreg",
    description="variance-invariance-covariance regularisation of the two views' embeddings",
    reference="Bardes et al. 2022, VICReg: Variance-Invariance-Covariance Regularization for "
    "Self-Supervised Learning",
)
class VICReg(Method):
    """VICReg around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the encoder (evaluated and exported).
        projector: the expander ``[B, num_features] -> [B, proj_out_dim]``: Linear-BN-ReLU hidden
            layers and a final Linear without bias (as in the authors' code).
        criterion: :class:`~selfsup.losses.vicreg.VICRegLoss`; variance and covariance over
            the batch gathered from all ranks when running distributed.

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = VICRegConfig
    default_views: ClassVar[str] = "byol"  # sec. 4.1 / appendix C.1: BYOL's augmentations
    # VICReg sec. 4.1 / appendix C: LARS, lr = 0.2 x B / 256 (base_lr 0.2 in the authors' code),
    # weight decay 1e-6, 10 warm-up epochs, cosine decay to 1/1000 of the peak (authors' code).
    # Biases and BN (1-D parameters) get no weight decay and no LARS adaptation:
    # facebookresearch/vicreg main_vicreg.py passes `exclude_bias_and_norm` (`p.ndim == 1`) as
    # LARS's `weight_decay_filter` and `lars_adaptation_filter`.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.2,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "warmup_epochs": 10,
        "min_lr_ratio": 0.001,
        "decay_norm_bias": False,
    }

    def __init__(self, backbone: nn.Module, cfg: VICRegConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("proj_hidden_dim", "proj_out_dim", "proj_layers"))
        for key in ("sim_coeff", "std_coeff", "cov_coeff", "gamma", "eps"):
            if not getattr(cfg, key) >= 0:
                raise ConfigError(f"method_args.{key} must be >= 0, got {getattr(cfg, key)}")
        dims = [num_features] + [cfg.proj_hidden_dim] * (cfg.proj_layers - 1) + [cfg.proj_out_dim]
        self.projector = mlp(dims, bias=False)
        self.criterion = VICRegLoss(cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff, cfg.gamma,
                                    cfg.eps, gather=True)

    def training_step(self, batch: Batch) -> StepOutput:
        """VICReg loss between ``batch.views[0]`` and ``batch.views[1]`` (``[B, C, H, W]`` each,
        one pass per view as in the paper's code).

        Raises:
            DataError: if there are fewer than two views, or the global batch is below 2.
        """
        if len(batch.views) < 2:
            raise DataError(f"vicreg needs 2 views per image, got {len(batch.views)}")
        z1 = self.projector(self.backbone(batch.views[0]))  # [B, proj_out_dim]
        z2 = self.projector(self.backbone(batch.views[1]))
        terms = self.criterion.terms(z1, z2)
        loss = self.criterion.combine(terms)
        logs: dict[str, Tensor | float] = {"invariance": terms.invariance.detach(), "variance": terms.variance.detach(),
                "covariance": terms.covariance.detach()}
        return StepOutput(loss=loss, logs=logs, embeddings=z1.detach())
