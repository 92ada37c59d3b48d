"""InvaSpread: invariant and spreading instance features with in-batch instance softmax.

Ye et al. 2019, "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature".
The backbone and a linear layer map each image to a 128-d unit vector (sec. 3.2). Within a batch
of ``m`` instances, the features ``f_i`` of the original images are the weights of an instance
classifier: the augmented image ``x_hat_i`` must be recognised as instance ``i`` (invariance)
and every other original ``x_j`` must not (spreading), sec. 3.1. No memory bank: everything is
computed in the batch.

Loss (``loss``). The default ``"batch"`` is what the official code optimises
(mangye16/Unsupervised_Embedding_Learning, ``BatchAverage.py``, ``BatchCriterion``; see
:func:`selfsup.losses.nce.invaspread_batch_loss`): the two views' ``2m`` embeddings all act as
anchors, each classified among the ``2m - 1`` others (weights under a stop-gradient), the sum
divided by ``2m``. ``"paper"`` is the one-sided formula of sec. 3.1
(:func:`selfsup.losses.nce.invaspread_loss`: ``views[0]`` are the weights and the originals,
``views[1]`` the augmented images, gradients through both); ``symmetric=True`` averages it with
the roles swapped. The paper pairs an un-augmented original with one augmented copy; here both
are augmented views of the trainer's pipeline, as the official code feeds its Siamese batch
(``CIFAR10Instance`` applies the training transform twice). Both views go through one backbone
pass (``net(torch.cat((inputs1, inputs2)))`` in ``demo_seen.py``), so BatchNorm statistics are
those of the ``2m`` images. Optimiser: SGD over ``net.parameters()`` with weight decay 5e-4, so
biases and BatchNorm parameters are decayed too (``decay_norm_bias``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.losses.nce import invaspread_batch_loss, invaspread_loss
from selfsup.methods.base import Method
from selfsup.nn.heads import mlp
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist


@dataclass
class InvaSpreadConfig:
    """InvaSpread hyper-parameters; paper defaults (``selfsup.methods.invaspread.Config``)."""

    embed_dim: int = 128  # dimension of the normalised embedding (sec. 4: 128-d FC layer)
    temperature: float = 0.1  # tau of the instance softmax (sec. 4: 0.1)
    loss: str = "batch"  # "batch": official BatchCriterion (2m anchors); "paper": sec. 3.1 eq.
    symmetric: bool = False  # loss="paper" only: also views[1] as the originals, averaged


Config = InvaSpreadConfig


@register(
    "method",
    "invaspread",
    description="in-batch instance softmax: augmentation invariance + instance spreading",
    reference="Ye et al. 2019, Unsupervised Embedding Learning via Invariant and Spreading "
    "Instance Feature",
)
class InvaSpread(Method):
    """InvaSpread around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the encoder (evaluated and exported).
        head: linear ``[B, num_features] -> [B, embed_dim]`` (then L2-normalised).

    Raises:
        ConfigError: for a backbone without ``num_features`` or an invalid Config value.
    """

    Config: ClassVar[type] = InvaSpreadConfig
    default_views: ClassVar[str] = "simclr"
    # sec. 4 / official code: SGD, lr 0.03 at batch 128 (= 0.06 at 256 with linear scaling),
    # momentum 0.9, weight decay 5e-4 on every parameter (SGD over net.parameters() in
    # demo_seen.py); step decay in the paper, cosine here.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.06,
        "lr_scaling": "linear",
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "warmup_epochs": 0,
        "min_lr_ratio": 0.0,
        "decay_norm_bias": True,
    }

    def __init__(self, backbone: nn.Module, cfg: InvaSpreadConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        if cfg.embed_dim < 1:
            raise ConfigError(f"method_args.embed_dim must be >= 1, got {cfg.embed_dim}")
        if not cfg.temperature > 0:
            raise ConfigError(f"method_args.temperature must be > 0, got {cfg.temperature}")
        if cfg.loss not in ("batch", "paper"):
            raise ConfigError(f"method_args.loss must be 'batch' or 'paper', got {cfg.loss!r}")
        if cfg.symmetric and cfg.loss != "paper":
            raise ConfigError(
                "method_args.symmetric=true applies to method_args.loss='paper' only (the "
                "'batch' loss already uses both views as anchors)"
            )
        self.head = mlp([num_features, cfg.embed_dim], batch_norm=False, bias=True)

    def training_step(self, batch: Batch) -> StepOutput:
        """Invariance + spreading loss of ``views[0]`` and ``views[1]`` (``cfg.loss``).

        Raises:
            DataError: with fewer than two views, views of different shapes, or a batch of one.
        """
        if len(batch.views) < 2:
            raise DataError(f"invaspread needs 2 views per image, got {len(batch.views)}")
        x1, x2 = batch.views[0], batch.views[1]
        if x1.shape != x2.shape or x1.shape[0] < 2:
            raise DataError(
                f"invaspread needs two views of the same shape and >= 2 images per batch, got "
                f"{tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        b = x1.shape[0]
        f = F.normalize(self.head(self.backbone(torch.cat([x1, x2]))), dim=1)  # [2B, D]
        local = f[:b].detach()
        # Under DDP the criterion runs over the global batch: every rank gathers all ranks'
        # embeddings (gradients flow back to their own rank, utils.dist.all_gather_grad) and
        # computes the same loss, so 2 ranks of B equal one process of 2B. The official code is
        # single-GPU (one BatchCriterion over the whole batch); per-rank criteria would shrink
        # each denominator to the local 2B - 1 others.
        f1, f2 = dist.all_gather_grad(f[:b]), dist.all_gather_grad(f[b:])
        t = self.cfg.temperature
        if self.cfg.loss == "batch":
            loss = invaspread_batch_loss(f1, f2, t)
        else:
            loss = invaspread_loss(f1, f2, t)
            if self.cfg.symmetric:
                loss = 0.5 * (loss + invaspread_loss(f2, f1, t))
        return StepOutput(loss=loss, logs={}, embeddings=local)
