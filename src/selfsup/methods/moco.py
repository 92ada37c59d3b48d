"""MoCo v1 and v2: contrastive learning against a queue of keys from a momentum encoder.

He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning" (MoCo v1) and
Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning" (MoCo v2). A query
``q = g(f(x1))`` from the query encoder (backbone ``f`` + head ``g``, trained by SGD) is matched
to its key ``k+ = g'(f'(x2))`` from the key encoder, an exponential moving average of the query
encoder (eq. 2: ``theta_k <- m theta_k + (1 - m) theta_q``); the negatives are the ``K`` keys of
earlier batches kept in a FIFO queue (sec. 3.2). The loss is InfoNCE (eq. 1) with temperature
``tau``. v2 changes three things (v2 sec. 2): an MLP head, blur in the augmentation and a cosine
learning-rate schedule, with ``tau = 0.2``.

Shuffling BN (v1 sec. 3.3) on one device: MoCo computes BatchNorm statistics per GPU and shuffles
the key batch across GPUs, so a query and its positive key are never normalised with statistics
of the same sub-batch (otherwise the model "cheats" through the statistics). Here both encoders
run over ``G`` sub-batches (``shuffle_bn_groups``): the queries in their original order, the keys
after a random permutation (undone on the outputs), which reproduces per-GPU statistics with the
cross-GPU shuffle on a single device, and on every rank of a multi-GPU run.

Reference choices (facebookresearch/moco): the momentum update touches parameters only
(``moco/builder.py``, ``_momentum_update_key_encoder``), so the key encoder's BatchNorm keeps
running statistics of its own (shuffled) key batches (``EMA(copy_buffers=False)``); SGD runs over
``model.parameters()`` with one weight decay (``main_moco.py``), so biases and BatchNorm
parameters are decayed too (``decay_norm_bias``); the views are the papers' augmentations
(presets ``moco_v1``: InstDisc's, ``moco_v2``: ``--aug-plus``).

Fresh negatives (``batch_negatives``, off by default as eq. 1): the keys of the current batch's
other images join the queue as negatives. MoCo's reference uses queued keys only; but in short,
small-data runs the queue starts as random vectors and then holds keys a few steps stale, and
lightly's CIFAR-10 benchmark, whose recipe the small recipe follows, gets fresh negatives as a
side effect: its symmetric loss calls ``NTXentLoss(memory_bank_size=...)`` twice and the memory
bank enqueues the first call's keys before the second call reads it, so the second half's
negatives include this batch's keys (the query's own view among them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import Recipe
from selfsup.losses.contrastive import info_nce
from selfsup.methods.base import (
    LIGHTLY_CIFAR10_COLOR,
    LIGHTLY_CIFAR10_SGD,
    LIGHTLY_CIFAR10_SOURCE,
    Method,
)
from selfsup.nn.ema import EMA
from selfsup.nn.heads import mlp
from selfsup.nn.queue import Queue
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

__all__ = ["MoCoV1", "MoCoV1Config", "MoCoV2", "MoCoV2Config", "grouped_forward"]


@dataclass
class MoCoV1Config:
    """MoCo v1 hyper-parameters (``selfsup.methods.moco.MoCoV1Config``)."""

    temperature: float = 0.07  # tau of eq. 1 (sec. 3.3 / 4.1: 0.07)
    queue_size: int = 4096  # K; paper 65536 (sec. 4.1). Scaled default for small data (doc)
    momentum: float = 0.999  # m of eq. 2 (sec. 4.1: 0.999)
    proj_dim: int = 128  # L2-normalised output of the fc head (sec. 4.1: 128-D)
    proj_hidden_dim: int = 0  # 0 = linear fc head (v1 sec. 4.1); v2 sec. 2: 2048-d MLP
    shuffle_bn_groups: int = 8  # sub-batches for BN statistics (sec. 3.3: 8 GPUs); 1 = off
    symmetric: bool = False  # False as the paper; True adds the swapped loss (MoCo CIFAR demo)
    mask_same_image: bool = True  # small-data fix: queued keys of the query's image not negative
    # the current batch's keys of the other images as extra negatives (eq. 1 and the reference:
    # False, queue only); see "Fresh negatives" in the module doc
    batch_negatives: bool = False


@dataclass
class MoCoV2Config(MoCoV1Config):
    """MoCo v2 hyper-parameters (``selfsup.methods.moco.MoCoV2Config``)."""

    temperature: float = 0.2  # tau (v2 sec. 2 / table 1: 0.2 with the MLP head)
    proj_hidden_dim: int = 2048  # MLP head with a 2048-d hidden layer and ReLU (v2 sec. 2)


def grouped_forward(
    net: Callable[[Tensor], Tensor], x: Tensor, groups: int, perm: Tensor | None = None
) -> Tensor:
    """``net`` over ``groups`` sub-batches of ``x`` ``[B, ...]`` (per-sub-batch BatchNorm).

    With ``perm`` (a permutation of ``range(B)``) the sub-batches are taken from ``x[perm]`` and
    the outputs are put back in the order of ``x``, so row ``i`` of the result always belongs to
    row ``i`` of ``x``. ``groups`` is reduced so every sub-batch has at least 2 samples.

    Returns:
        ``net``'s output for every row of ``x``, ``[B, ...]``.
    """
    groups = max(1, min(groups, x.shape[0] // 2))
    if perm is not None:
        x = x[perm]
    out = net(x) if groups == 1 else torch.cat([net(c) for c in x.tensor_split(groups)])
    if perm is not None:
        out = out[torch.argsort(perm)]
    return out


class _MoCo(Method):
    """Shared implementation of MoCo v1/v2 (the registered classes differ in Config only).

    Attributes:
        backbone: the query encoder ``f`` (evaluated and exported).
        projector: the head ``g``: ``Linear(num_features, proj_dim)`` (v1) or
            ``Linear-ReLU-Linear`` with ``proj_hidden_dim`` hidden units (v2), no BatchNorm.
        key_encoder: :class:`~selfsup.nn.ema.EMA` copy of ``(backbone, projector)``.
        queue: :class:`~selfsup.nn.queue.Queue` of ``queue_size`` normalised keys with the
            dataset index of their image.

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = MoCoV1Config
    default_views: ClassVar[str] = "moco_v1"

    def __init__(self, backbone: nn.Module, cfg: MoCoV1Config) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        checks = {
            "temperature": cfg.temperature > 0,
            "queue_size": cfg.queue_size >= 1,
            "momentum": 0.0 <= cfg.momentum <= 1.0,
            "proj_dim": cfg.proj_dim >= 1,
            "proj_hidden_dim": cfg.proj_hidden_dim >= 0,
            "shuffle_bn_groups": cfg.shuffle_bn_groups >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"method_args.{key}={getattr(cfg, key)} is invalid for {self.name} "
                    "(temperature > 0, queue_size >= 1, momentum in [0, 1], proj_dim >= 1, "
                    "proj_hidden_dim >= 0, shuffle_bn_groups >= 1)"
                )
        hidden = [cfg.proj_hidden_dim] if cfg.proj_hidden_dim > 0 else []
        self.projector = mlp([num_features, *hidden, cfg.proj_dim], batch_norm=False, bias=True)
        # parameters-only momentum update (builder.py): BN running stats are the key encoder's
        self.key_encoder = EMA(nn.Sequential(self.backbone, self.projector), copy_buffers=False)
        self.queue = Queue(cfg.queue_size, cfg.proj_dim)
        self._pending: list[tuple[Tensor, Tensor]] = []  # (keys, index) to enqueue after step

    def _query(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))

    def _contrast(self, q: Tensor, k: Tensor, index: Tensor) -> Tensor:
        """InfoNCE of queries ``q`` ``[B, D]`` against their keys ``k`` ``[B, D]`` (positives)
        and the queue (negatives); the other keys of the batch are negatives only with
        ``batch_negatives`` (eq. 1: they are not)."""
        b, queue = q.shape[0], self.queue.get().to(q.dtype)
        eye = torch.eye(b, dtype=torch.bool, device=q.device)
        pos = torch.cat([eye, eye.new_zeros(b, queue.shape[0])], dim=1)  # [B, B + K]
        same = self.queue.get_ids()[None, :] == index[:, None]  # [B, K]
        if not self.cfg.mask_same_image:
            same = torch.zeros_like(same)
        others = torch.zeros_like(eye) if self.cfg.batch_negatives else ~eye
        self_mask = torch.cat([others, same], dim=1)  # excluded: other batch keys, stale own keys
        return info_nce(q, torch.cat([k, queue]), pos, self.cfg.temperature, self_mask=self_mask)

    def training_step(self, batch: Batch) -> StepOutput:
        """InfoNCE of ``views[0]`` (queries) against ``views[1]`` (keys) and the queue; with
        ``symmetric`` also of ``views[1]`` against ``views[0]``, averaged.

        Raises:
            DataError: if there are fewer than two views or the first two differ in shape.
        """
        if len(batch.views) < 2:
            raise DataError(f"{self.name} needs 2 views per image, got {len(batch.views)}")
        x1, x2 = batch.views[0], batch.views[1]
        if x1.shape != x2.shape:
            raise DataError(
                f"{self.name} needs two views of the same shape, got {tuple(x1.shape)} and "
                f"{tuple(x2.shape)}"
            )
        groups, index = self.cfg.shuffle_bn_groups, batch.index.to(x1.device)
        q1 = F.normalize(grouped_forward(self._query, x1, groups), dim=1)
        with torch.no_grad():
            perm = torch.randperm(x1.shape[0], device=x1.device)
            k2 = F.normalize(grouped_forward(self.key_encoder, x2, groups, perm), dim=1)
        loss = self._contrast(q1, k2, index)
        keys = [k2]
        if self.cfg.symmetric:
            q2 = F.normalize(grouped_forward(self._query, x2, groups), dim=1)
            with torch.no_grad():
                perm = torch.randperm(x1.shape[0], device=x1.device)
                k1 = F.normalize(grouped_forward(self.key_encoder, x1, groups, perm), dim=1)
            loss = (loss + self._contrast(q2, k1, index)) / 2
            keys.append(k1)
        if self.training:
            self._pending += [(k, index) for k in keys]
        logs: dict[str, Tensor | float] = {"pos_sim": (q1.detach() * k2).sum(dim=1).mean()}
        return StepOutput(loss=loss, logs=logs, embeddings=q1.detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """Momentum update of the key encoder (eq. 2), then enqueue this step's keys."""
        self.key_encoder.update(nn.Sequential(self.backbone, self.projector), self.cfg.momentum)
        for keys, index in self._pending:
            self.queue.push(keys, ids=index)
        self._pending = []


# v1 sec. 4.1: SGD, lr 0.03 at batch 256, weight decay 1e-4, momentum 0.9 (v1 decays the lr by
# 10x at epochs 120 and 160 of 200; this library's schedule is cosine, v2's choice). main_moco.py
# passes model.parameters() whole to SGD: every parameter is decayed, BN and biases included.
_SGD: dict[str, Any] = {"name": "sgd", "lr": 0.03, "lr_scaling": "linear", "weight_decay": 1e-4,
                        "momentum": 0.9, "warmup_epochs": 0, "min_lr_ratio": 0.0,
                        "decay_norm_bias": True}


@register(
    "method",
    "moco_v1",
    description="momentum encoder + queue of negative keys, linear head, tau 0.07",
    reference="He et al. 2020, Momentum Contrast for Unsupervised Visual Representation Learning",
)
class MoCoV1(_MoCo):
    """MoCo v1 (He et al. 2020): linear 128-d head, ``tau = 0.07``. See :class:`_MoCo`."""

    Config: ClassVar[type] = MoCoV1Config
    default_views: ClassVar[str] = "moco_v1"  # sec. 4.1: InstDisc's augmentation
    default_optim: ClassVar[dict[str, Any]] = dict(_SGD)


@register(
    "method",
    "moco_v2",
    description="MoCo with an MLP head, blur augmentation, cosine lr and tau 0.2",
    reference="Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning",
)
class MoCoV2(_MoCo):
    """MoCo v2 (Chen et al. 2020): 2048-d MLP head, ``tau = 0.2``, cosine lr (v2 sec. 2)."""

    Config: ClassVar[type] = MoCoV2Config
    default_views: ClassVar[str] = "moco_v2"  # v2 sec. 2: + blur, jitter p 0.8 (--aug-plus)
    default_optim: ClassVar[dict[str, Any]] = dict(_SGD)
    # lightly's CIFAR-10 benchmark, MocoModel: MoCoProjectionHead(512, 512, 128) (an MLP head),
    # NTXentLoss(temperature=0.1, memory_bank_size=4096), update_momentum(m=0.99), the symmetric
    # loss of the MoCo CIFAR demo, its shared SGD, SimCLRTransform(cj_strength=0.5, no blur);
    # batch_negatives: the fresh keys its memory bank hands the second half of the loss (module
    # doc, "Fresh negatives"; CIFAR-10 small CNN kNN 34.34 -> 39.02, lightly 39.11)
    small_recipe: ClassVar[Recipe | None] = Recipe(
        source=f"{LIGHTLY_CIFAR10_SOURCE} MocoModel", optim=dict(LIGHTLY_CIFAR10_SGD),
        method_args={"proj_hidden_dim": 512, "proj_dim": 128, "temperature": 0.1,
                     "queue_size": 4096, "momentum": 0.99, "symmetric": True,
                     "batch_negatives": True},
        views="simclr", view_args=dict(LIGHTLY_CIFAR10_COLOR))
