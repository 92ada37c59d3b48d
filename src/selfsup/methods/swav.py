"""SwAV: online clustering of the embeddings into equipartitioned codes, predicted across views.

Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments".
Every crop ``t`` of an image is encoded, projected and L2-normalised to ``z_t`` and scored
against ``K`` unit prototypes ``C`` (sec. 3.1). For the two global crops the codes ``q`` are
computed online by Sinkhorn-Knopp (eq. 3-5: the batch is spread equally over the prototypes,
which prevents the trivial solution of one cluster), and every other crop, multi-crop included,
predicts them (the "swapped" prediction, eq. 1-2, 6) through ``softmax(z^T C / tau)``.
Prototypes are re-normalised after each step and frozen during the first epoch (appendix A;
facebookresearch/swav ``main_swav.py`` ``train`` sets their ``p.grad = None`` for the first
``freeze_prototypes_niters`` iterations, see :meth:`SwAV.before_optimizer_step`).
With small batches a queue of the embeddings of the last batches is scored too, so Sinkhorn
equipartitions over more samples (sec. 4 / appendix A: 3840 features, from epoch 15).
Crops of one size take one backbone pass (``src/resnet50.py`` ``ResNet.forward``,
``crop_passes=grouped``) or one pass per crop (``per_crop``, faster on a CPU; BatchNorm
statistics are then per crop); ``auto`` picks by device (:mod:`selfsup.nn.multicrop`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import Recipe
from selfsup.losses.clustering import swapped_prediction_loss
from selfsup.methods.base import LIGHTLY_CIFAR10_COLOR, LIGHTLY_CIFAR10_SOURCE, Method
from selfsup.nn.heads import mlp
from selfsup.nn.multicrop import CROP_PASSES, encode_by_resolution
from selfsup.nn.prototypes import Prototypes
from selfsup.nn.sinkhorn import sinkhorn
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist

logger = logging.getLogger(__name__)


@dataclass
class SwAVConfig:
    """SwAV hyper-parameters; defaults are the paper's (``selfsup.methods.swav.Config``)."""

    proj_hidden_dim: int = 2048  # projection head hidden width (appendix A, code: hidden_mlp)
    proj_out_dim: int = 128  # embedding size of z and the prototypes (appendix A: feat_dim)
    num_prototypes: int = 3000  # K prototypes on ImageNet (sec. 4, appendix A)
    temperature: float = 0.1  # tau of the swapped prediction softmax (sec. 3.1, appendix A)
    epsilon: float = 0.05  # Sinkhorn entropic regularisation (sec. 3.1, appendix A)
    sinkhorn_iters: int = 3  # Sinkhorn-Knopp iterations (sec. 3.1)
    # crops whose codes are predicted: the 2 global crops (sec. 3.2)
    assign_crops: list[int] = field(default_factory=lambda: [0, 1])
    freeze_prototypes_epochs: float = 1.0  # prototypes frozen for this many epochs (appendix A)
    queue_length: int = 3840  # queued embeddings, small-batch setting (batch 256); 0: no queue
    epoch_queue_starts: int = 15  # the queue is filled from this epoch on (appendix A)
    # backbone passes over the crops: grouped = one per crop size, as the reference's
    # ResNet.forward; per_crop = one per crop (per-crop BN statistics, as lightly); auto =
    # per_crop on a CPU, grouped on an accelerator (selfsup.nn.multicrop)
    crop_passes: str = "auto"


Config = SwAVConfig


@register(
    "method",
    "swav",
    description="swapped prediction of online Sinkhorn cluster codes across (multi-)crops",
    reference="Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting "
    "Cluster Assignments",
)
class SwAV(Method):
    """SwAV around any backbone with a ``num_features`` attribute.

    Attributes:
        projector: ``[B, num_features] -> [B, proj_out_dim]``, Linear-BN-ReLU-Linear.
        prototypes: :class:`~selfsup.nn.prototypes.Prototypes` ``[K, proj_out_dim]``.
        queue: buffer ``[len(assign_crops), L, proj_out_dim]`` of past embeddings of the assigned
            crops, newest first, ``L = queue_length // world_size`` per rank (as the reference).
        queue_filled: buffer ``[]``, rows of the queue holding real embeddings.
        num_updates: buffer ``[]``, optimiser steps taken (for the frozen-prototype epoch).

    Raises:
        ConfigError: for a backbone without ``num_features`` or an invalid Config value.
    """

    Config: ClassVar[type] = SwAVConfig
    default_views: ClassVar[str] = "swav"
    # Appendix A / main_swav.py: LARS (trust 0.001), lr 4.8 at batch 4096 = 0.3 x B / 256,
    # cosine decay to 0.0048 (ratio 0.001), weight decay 1e-6, momentum 0.9, 10 warm-up epochs.
    # main_swav.py builds SGD over model.parameters() with one weight_decay (then LARC), so
    # biases and BatchNorm parameters are decayed too.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.3,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "warmup_epochs": 10,
        "min_lr_ratio": 0.001,
        "decay_norm_bias": True,
    }
    # lightly's CIFAR-10 benchmark, SwaVModel: SwaVProjectionHead(512, 512, 128), 512
    # prototypes, never frozen, no queue; Adam lr 1e-3 x B / 128 (= 2e-3 x B / 256), weight decay
    # 1e-6 (L2, every parameter), cosine, no warm-up; SwaVTransform(crop_sizes=[32],
    # crop_counts=[2], crop_min_scales=[0.14], cj_strength=0.5, gaussian_blur=0): two crops only
    small_recipe: ClassVar[Recipe | None] = Recipe(
        source=f"{LIGHTLY_CIFAR10_SOURCE} SwaVModel",
        optim={"name": "adam", "lr": 2e-3, "lr_scaling": "linear", "weight_decay": 1e-6,
               "betas": (0.9, 0.999), "decay_norm_bias": True, "warmup_epochs": 0,
               "min_lr_ratio": 0.0, "clip_grad": 0.0},
        method_args={"proj_hidden_dim": 512, "proj_out_dim": 128, "num_prototypes": 512,
                     "queue_length": 0, "freeze_prototypes_epochs": 0.0},
        views="simclr", view_args={**LIGHTLY_CIFAR10_COLOR, "scale": (0.14, 1.0)})

    queue: Tensor
    queue_filled: Tensor
    num_updates: Tensor

    def __init__(self, backbone: nn.Module, cfg: SwAVConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("proj_hidden_dim", "proj_out_dim", "num_prototypes",
                                    "sinkhorn_iters"))
        for key in ("temperature", "epsilon"):
            if getattr(cfg, key) <= 0:
                raise ConfigError(f"method_args.{key} must be > 0, got {getattr(cfg, key)}")
        if not cfg.assign_crops or len(set(cfg.assign_crops)) != len(cfg.assign_crops) or \
                min(cfg.assign_crops) < 0:
            raise ConfigError("method_args.assign_crops must be distinct crop indices >= 0, got "
                              f"{cfg.assign_crops}")
        for key in ("queue_length", "epoch_queue_starts", "freeze_prototypes_epochs"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"method_args.{key} must be >= 0, got {getattr(cfg, key)}")
        if cfg.crop_passes not in CROP_PASSES:
            raise ConfigError(f"method_args.crop_passes must be one of {', '.join(CROP_PASSES)}, "
                              f"got {cfg.crop_passes!r}")
        if cfg.num_prototypes < cfg.proj_out_dim:
            logger.warning(
                "swav: num_prototypes=%d < proj_out_dim=%d: the prototypes span only part of the "
                "embedding space, and embeddings orthogonal to all of them give uniform "
                "predictions (loss = log K) with no gradient to leave; measured on MNIST "
                "(docs/methods/negative_free.md). Use num_prototypes >= proj_out_dim.",
                cfg.num_prototypes, cfg.proj_out_dim)
        self.projector = mlp([num_features, cfg.proj_hidden_dim, cfg.proj_out_dim])
        self.prototypes = Prototypes(cfg.proj_out_dim, cfg.num_prototypes)
        local = cfg.queue_length // dist.world_size()
        self.register_buffer("queue", torch.zeros(len(cfg.assign_crops), local, cfg.proj_out_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None  # [A, B, D] embeddings to enqueue after the step

    def prototypes_frozen(self) -> bool:
        """True during the first ``freeze_prototypes_epochs`` epochs (appendix A)."""
        return int(self.num_updates) < round(self.cfg.freeze_prototypes_epochs *
                                             self.steps_per_epoch)

    def before_optimizer_step(self, step: int) -> None:
        """Drop the prototypes' gradient (``p.grad = None``) while they are frozen, as
        ``main_swav.py`` does between backward and ``optimizer.step()``: the optimiser then
        skips them (no weight decay, no momentum buffer). Called by the trainer after DDP has
        reduced the zero gradient that keeps them in the graph (``grad_scale=0``)."""
        if self.prototypes_frozen():
            self.prototypes.weight.grad = None

    def queue_in_use(self) -> bool:
        """The queue joins the Sinkhorn batch once it is full (as the reference code)."""
        return self.queue.shape[1] > 0 and int(self.queue_filled) >= self.queue.shape[1]

    def training_step(self, batch: Batch) -> StepOutput:
        """Swapped-prediction loss over ``batch.views`` (global crops first, then local crops).

        Raises:
            DataError: for fewer than 2 views or an assigned crop the batch does not have.
        """
        views, cfg = batch.views, self.cfg
        if len(views) < 2:
            raise DataError(f"swav needs at least 2 views per image, got {len(views)}")
        if max(cfg.assign_crops) >= len(views):
            raise DataError(f"swav assigns codes to crops {cfg.assign_crops} but the batch has "
                            f"{len(views)} views")
        b = views[0].shape[0]
        feats = encode_by_resolution(self.backbone, views, cfg.crop_passes)  # [V*B, F]
        z = F.normalize(self.projector(feats), dim=1)
        scores = self.prototypes(z, grad_scale=0.0 if self.prototypes_frozen() else 1.0)
        per_crop = list(scores.chunk(len(views)))  # V x [B, K]
        use_queue = self.queue_in_use()
        codes = []
        with torch.no_grad():
            for i, crop in enumerate(cfg.assign_crops):
                s = per_crop[crop].detach()
                if use_queue:
                    s = torch.cat([self.queue[i] @ self.prototypes.weight.detach().t(), s])
                codes.append(sinkhorn(s, cfg.epsilon, cfg.sinkhorn_iters)[-b:])  # [B, K]
        loss = swapped_prediction_loss(per_crop, codes, cfg.assign_crops, cfg.temperature)
        zs = z.detach().chunk(len(views))
        self._pending = torch.stack([zs[c] for c in cfg.assign_crops])
        return StepOutput(loss=loss, logs={"queue": float(use_queue),
                                           "frozen": float(self.prototypes_frozen())},
                          embeddings=zs[0])

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """Re-normalise the prototypes; enqueue this step's embeddings once the queue epoch came."""
        self.prototypes.normalize_()
        self.num_updates.fill_(step + 1)
        pending, self._pending = self._pending, None
        length = self.queue.shape[1]
        if pending is None or length == 0 or step // self.steps_per_epoch < \
                self.cfg.epoch_queue_starts:
            return
        new = pending[:, :length].to(self.queue.dtype)
        n = new.shape[1]
        self.queue.copy_(torch.cat([new, self.queue[:, : length - n]], dim=1))
        self.queue_filled.fill_(min(int(self.queue_filled) + n, length))
