"""DINO: self-distillation with no labels; a student matches a momentum teacher's centred and
sharpened distribution over prototypes, across multi-crop views.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers". Student and
teacher are backbone + :class:`~selfsup.nn.heads.DINOHead` (MLP, L2-normalised bottleneck,
weight-normalised last layer to ``K`` logits). For crops ``x`` the student gives
``P_s(x) = softmax(g_s(x) / tau_s)`` and the teacher ``P_t(x) = softmax((g_t(x) - c) / tau_t)``
(eq. 1 with the centering of eq. 4). The teacher sees only the global crops, the student all
crops, and the loss is ``sum_{x in global} sum_{x' != x} H(P_t(x), P_s(x'))`` (eq. 3), averaged
over the pairs (:func:`~selfsup.losses.dino.dino_loss`). Only the student is trained; after each
optimiser step the teacher follows it, ``theta_t <- lambda theta_t + (1 - lambda) theta_s`` with
``lambda`` from 0.996 to 1 by cosine (sec. 3.1), and the center
``c <- m c + (1 - m) mean_batch g_t`` with ``m = 0.9`` (eq. 4, over the global batch).

Collapse (sec. 5.3, figure 7) is avoided by balancing two operations: centering alone drives the
teacher towards the uniform distribution, sharpening (``tau_t < tau_s``) alone towards one
dominating prototype. ``centering=False`` collapses to one dimension, ``sharpening=False``
(``tau_t = tau_s``) to uniform; the logged ``teacher_entropy`` (per sample) and
``teacher_marginal_entropy`` (of the batch mean) show which (see
:func:`~selfsup.losses.dino.teacher_entropies`).

Appendix/code details kept (facebookresearch/dino ``main_dino.py`` ``train_one_epoch`` and
``utils.py``): the last layer frozen during the first epoch with its gradient dropped
(``cancel_gradients_last_layer``: ``p.grad = None``, see :meth:`DINO.before_optimizer_step`),
teacher temperature warm-up (linear over ``warmup_teacher_temp_epochs``), each parameter's
gradient clipped to norm 3.0 on its own (``clip_gradients``; ``optim.clip_mode=per_param``),
AdamW with no weight decay on biases and 1-d parameters (``get_params_groups``), and a teacher
EMA over parameters only (the teacher's BatchNorm runs in training mode on the global crops and
keeps its own running statistics). Crops of one size take one backbone pass
(``MultiCropWrapper``, ``crop_passes=grouped``) or one pass per crop (``per_crop``, faster on a
CPU; BatchNorm statistics are then per crop); ``auto`` picks by device. Optional DINOv2
additions (Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision",
sec. 4): the KoLeo regulariser on the student's global-crop backbone features (``koleo_weight``)
and Sinkhorn-Knopp centering (``sinkhorn_centering``): the teacher targets are SwAV's
equipartitioned codes of the teacher logits at ``eps = tau_t`` (3 iterations, over the global
batch of all global crops, :func:`~selfsup.nn.sinkhorn.sinkhorn`) instead of
``softmax((g_t - c) / tau_t)``; the center is then not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.config import Recipe
from selfsup.losses.dino import dino_cross_entropy, koleo_loss, teacher_entropies, teacher_probs
from selfsup.methods.base import LIGHTLY_CIFAR10_SGD, LIGHTLY_CIFAR10_SOURCE, Method
from selfsup.nn.center import Center
from selfsup.nn.ema import EMA, disable_drop_path
from selfsup.nn.heads import DINOHead
from selfsup.nn.multicrop import CROP_PASSES, encode_by_resolution
from selfsup.nn.sinkhorn import sinkhorn
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils.schedules import cosine, linear


@dataclass
class DINOConfig:
    """DINO hyper-parameters; defaults are the paper's (``selfsup.methods.dino.Config``)."""

    out_dim: int = 65536  # K, the head's output dimension (appendix, table 9; 65536 in the code)
    hidden_dim: int = 2048  # hidden width of the 3-layer head MLP (sec. 3.1, appendix)
    bottleneck_dim: int = 256  # L2-normalised bottleneck before the last layer (appendix)
    head_layers: int = 3  # linear layers of the head MLP (sec. 3.1)
    use_bn_in_head: bool = False  # BN in the head MLP: none for ViTs (sec. 3.1 "BN-free")
    norm_last_layer: bool = True  # weight-norm g fixed to 1 (appendix; code's norm_last_layer)
    global_crops: int = 2  # leading views the teacher sees (sec. 3.1: two global views)
    student_temp: float = 0.1  # tau_s (sec. 3.1)
    teacher_temp: float = 0.04  # tau_t after warm-up (sec. 3.1; 0.07 in the ViT-S/16 recipe)
    warmup_teacher_temp: float = 0.04  # tau_t at step 0 (sec. 3.1 / appendix: 0.04)
    warmup_teacher_temp_epochs: float = 0.0  # linear warm-up of tau_t (appendix: 30 for ViTs)
    center_momentum: float = 0.9  # m of the center EMA (sec. 3.1, eq. 4)
    momentum_base: float = 0.996  # teacher EMA lambda at step 0 (sec. 3.1)
    momentum_end: float = 1.0  # lambda at the end, reached by cosine (sec. 3.1)
    freeze_last_layer: float = 1.0  # epochs with the last layer frozen (appendix; code default 1)
    centering: bool = True  # subtract the center (sec. 3.1); False: ablation of sec. 5.3/fig. 7
    sharpening: bool = True  # tau_t as set; False: tau_t = tau_s (ablation of sec. 5.3/fig. 7)
    koleo_weight: float = 0.0  # DINOv2's KoLeo on global-crop features (Oquab et al. sec. 4: 0.1)
    sinkhorn_centering: bool = False  # DINOv2's Sinkhorn-Knopp teacher targets (Oquab et al. sec. 4)
    sinkhorn_iters: int = 3  # Sinkhorn-Knopp iterations (DINOv2 code: 3)
    # backbone passes over the crops (student and teacher): grouped = one per crop size, as the
    # reference MultiCropWrapper; per_crop = one per crop (per-crop BN statistics, as lightly);
    # auto = per_crop on a CPU, grouped on an accelerator (selfsup.nn.multicrop)
    crop_passes: str = "auto"


Config = DINOConfig


@register(
    "method",
    "dino",
    description="student matches an EMA teacher's centred, sharpened output across multi-crops",
    reference="Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers",
)
class DINO(Method):
    """DINO around any backbone with a ``num_features`` attribute (ResNet, ViT, small CNN).

    Attributes:
        backbone: the student backbone (evaluated and exported).
        head: the student :class:`~selfsup.nn.heads.DINOHead` ``[N, num_features] -> [N, out_dim]``.
        teacher_backbone, teacher_head: :class:`~selfsup.nn.ema.EMA` copies (no gradients).
        center: :class:`~selfsup.nn.center.Center` ``c`` ``[1, out_dim]``.
        steps_done: optimiser steps taken (a checkpointed buffer), for the epoch-stated
            schedules (last-layer freezing, teacher temperature warm-up).

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = DINOConfig
    default_views: ClassVar[str] = "dino"
    # Appendix / main_dino.py: AdamW, lr 0.0005 x B / 256 with 10 warm-up epochs then cosine to
    # min_lr 1e-6 (= 0.002 x the base lr at batch 256), each parameter's gradient clipped to
    # norm 3.0 (utils.clip_gradients), weight decay raised from 0.04 to 0.4 by cosine over the
    # run (wd_scheduler) on all but biases and 1-d parameters (utils.get_params_groups).
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adamw",
        "lr": 0.0005,
        "lr_scaling": "linear",
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "betas": (0.9, 0.999),
        "warmup_epochs": 10,
        "min_lr_ratio": 0.002,
        "clip_grad": 3.0,
        "clip_mode": "per_param",
        "decay_norm_bias": False,
    }
    # lightly's CIFAR-10 benchmark, DINOModel: DINOProjectionHead(512, 2048, 256, 2048,
    # batch_norm=True) with "only 2 layers for cifar10" (512-2048 BN GELU-256), no last-layer
    # freeze, update_momentum(m=0.99) every step, DINOLoss(output_dim=2048) (teacher t 0.04),
    # its shared SGD (no clipping), DINOTransform(global_crop_size=32, n_local_views=0,
    # cj_strength=0.5, no blur): two global crops at scale 0.4-1 with BYOL's colour, the second
    # solarised with p 0.2 (= the byol preset at that scale)
    small_recipe: ClassVar[Recipe | None] = Recipe(
        source=f"{LIGHTLY_CIFAR10_SOURCE} DINOModel", optim=dict(LIGHTLY_CIFAR10_SGD),
        method_args={"out_dim": 2048, "hidden_dim": 2048, "bottleneck_dim": 256,
                     "head_layers": 2, "use_bn_in_head": True, "freeze_last_layer": 0.0,
                     "momentum_base": 0.99, "momentum_end": 0.99, "teacher_temp": 0.04,
                     "warmup_teacher_temp": 0.04},
        views="byol", view_args={"scale": (0.4, 1.0), "blur_p": 0.0})

    steps_done: Tensor
    momentum: Tensor

    def __init__(self, backbone: nn.Module, cfg: DINOConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("out_dim", "hidden_dim", "bottleneck_dim", "head_layers",
                                    "global_crops", "sinkhorn_iters"))
        if cfg.sinkhorn_centering and not cfg.centering:
            raise ConfigError("method_args.sinkhorn_centering=true is a way of centering; it "
                              "cannot be combined with centering=false")
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(cfg, key) <= 0:
                raise ConfigError(f"method_args.{key} must be > 0, got {getattr(cfg, key)}")
        for key in ("center_momentum", "momentum_base", "momentum_end"):
            if not 0.0 <= getattr(cfg, key) <= 1.0:
                raise ConfigError(f"method_args.{key} must be in [0, 1], got {getattr(cfg, key)}")
        for key in ("warmup_teacher_temp_epochs", "freeze_last_layer", "koleo_weight"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"method_args.{key} must be >= 0, got {getattr(cfg, key)}")
        if cfg.crop_passes not in CROP_PASSES:
            raise ConfigError(f"method_args.crop_passes must be one of {', '.join(CROP_PASSES)}, "
                              f"got {cfg.crop_passes!r}")
        self.head = DINOHead(num_features, cfg.out_dim, hidden_dim=cfg.hidden_dim,
                             bottleneck_dim=cfg.bottleneck_dim, num_layers=cfg.head_layers,
                             use_bn=cfg.use_bn_in_head, norm_last_layer=cfg.norm_last_layer)
        # main_dino.py moves the teacher's parameters only; its BatchNorm (ResNets, use_bn_in_head)
        # keeps the statistics of its own training-mode passes over the global crops
        self.teacher_backbone = EMA(backbone, copy_buffers=False)
        self.teacher_head = EMA(self.head, copy_buffers=False)
        disable_drop_path(self.teacher_backbone)  # the authors' teacher has no drop path
        self.center = Center(cfg.out_dim, cfg.center_momentum)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # lambda of the last on_step_end, logged by training_step; a buffer so a resumed run logs
        # what the uninterrupted one does
        self.register_buffer("momentum", torch.tensor(float(cfg.momentum_base)))

    # ------------------------------------------------------------------ schedules (pure)

    def teacher_temp_at(self, step: int) -> float:
        """``tau_t`` at optimiser step ``step``: linear from ``warmup_teacher_temp`` to
        ``teacher_temp`` over ``warmup_teacher_temp_epochs`` epochs (the authors' per-epoch
        ``np.linspace``, here per step), then constant; ``tau_s`` when ``sharpening`` is off."""
        cfg = self.cfg
        if not cfg.sharpening:
            return float(cfg.student_temp)
        warm = round(cfg.warmup_teacher_temp_epochs * self.steps_per_epoch)
        return linear(step, warm, cfg.warmup_teacher_temp, cfg.teacher_temp)

    def last_layer_frozen_at(self, step: int) -> bool:
        """True during the first ``freeze_last_layer`` epochs (appendix; the code's
        ``cancel_gradients_last_layer``)."""
        return step < round(self.cfg.freeze_last_layer * self.steps_per_epoch)

    def before_optimizer_step(self, step: int) -> None:
        """Drop the last layer's gradients (``p.grad = None``) while it is frozen, as the
        reference's ``cancel_gradients_last_layer`` between backward (and clipping) and
        ``optimizer.step()``: AdamW then skips the layer entirely (no step count, no moments, no
        weight decay), so its first update after the freeze is Adam's first step. Called by the
        trainer after the last micro-batch's backward, once DDP has reduced the (zero) gradients
        that keep the layer in the graph (:meth:`~selfsup.nn.heads.DINOHead.forward`)."""
        if self.last_layer_frozen_at(step):
            for p in self.head.last_layer.parameters():
                p.grad = None

    def momentum_at(self, step: int, total: int) -> float:
        """Teacher EMA ``lambda``: cosine from ``momentum_base`` to ``momentum_end`` (sec. 3.1)."""
        return cosine(step, total, self.cfg.momentum_base, self.cfg.momentum_end)

    # ------------------------------------------------------------------ training

    def _teacher_logits(self, x: Tensor) -> Tensor:
        return self.teacher_head(self.teacher_backbone(x))

    def training_step(self, batch: Batch) -> StepOutput:
        """DINO loss over all (teacher global crop, other student crop) pairs.

        ``batch.views``: the global crops first (``global_crops`` views ``[B, C, H, W]`` of one
        size), then any local crops ``[B, C, h, w]``; the backbone passes follow
        ``crop_passes``.

        Raises:
            DataError: with fewer than 2 views, fewer views than ``global_crops``, or global
                crops of different shapes.
        """
        cfg = self.cfg
        views = batch.views
        n_g = cfg.global_crops
        if len(views) < max(2, n_g):
            raise DataError(f"dino needs at least {max(2, n_g)} views (global crops first), got "
                            f"{len(views)}")
        if any(v.shape != views[0].shape for v in views[:n_g]):
            raise DataError(f"dino: the {n_g} global crops must have one shape, got "
                            f"{[tuple(v.shape) for v in views[:n_g]]}")
        b = views[0].shape[0]
        step = int(self.steps_done)
        frozen = self.last_layer_frozen_at(step)
        tau_t = self.teacher_temp_at(step)

        passes = cfg.crop_passes
        feats = encode_by_resolution(self.backbone, views, passes)  # [V*B, num_features]
        student = self.head(feats, freeze_last_layer=frozen).view(len(views), b, -1)  # [V, B, K]
        with torch.no_grad():
            teacher = self.teacher_head(  # [T*B, K]
                encode_by_resolution(self.teacher_backbone, views[:n_g], passes))
            if not cfg.sinkhorn_centering:  # the Sinkhorn targets do not use the center
                self.center.add(teacher)
            teacher = teacher.view(n_g, b, -1)  # [T, B, K]
            targets = self.teacher_targets(teacher, tau_t)  # [T, B, K]
        loss = dino_cross_entropy(student, targets, cfg.student_temp)
        logs: dict[str, Tensor | float] = {"teacher_temp": tau_t, "momentum": self.momentum}
        if cfg.koleo_weight > 0:
            koleo = sum(koleo_loss(f) for f in feats[: n_g * b].chunk(n_g))
            assert isinstance(koleo, Tensor)
            loss = loss + cfg.koleo_weight * koleo
            logs["koleo"] = koleo.detach()
        h_sample, h_marginal = teacher_entropies(targets[0])
        logs.update(teacher_entropy=h_sample, teacher_marginal_entropy=h_marginal)
        return StepOutput(loss=loss, logs=logs, embeddings=feats[:b].detach())

    @torch.no_grad()
    def teacher_targets(self, logits: Tensor, tau_t: float) -> Tensor:
        """Teacher distributions ``[..., K]`` of teacher logits ``[..., K]``: Sinkhorn-Knopp codes
        at ``eps = tau_t`` over all rows (and ranks) with ``sinkhorn_centering``, else
        ``softmax((g_t - c) / tau_t)`` (no ``c`` when ``centering`` is off)."""
        if self.cfg.sinkhorn_centering:
            flat = logits.reshape(-1, logits.shape[-1])
            return sinkhorn(flat, eps=tau_t, iters=self.cfg.sinkhorn_iters).view(logits.shape)
        center = self.center.value if self.cfg.centering else None
        return teacher_probs(logits, center, tau_t)

    @torch.no_grad()
    def teacher_distribution(self, x: Tensor) -> Tensor:
        """The teacher's target ``P_t`` ``[B, out_dim]`` for images ``x`` as the loss uses it now
        (centred as configured, at the current teacher temperature)."""
        return self.teacher_targets(self._teacher_logits(x),
                                    self.teacher_temp_at(int(self.steps_done)))

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """Teacher EMA (sec. 3.1) with ``lambda`` at ``step``, then the center update (eq. 4)
        with the teacher outputs of this step, then advance the step counter."""
        m = self.momentum_at(step, total)
        self.momentum.fill_(m)
        self.teacher_backbone.update(self.backbone, m)
        self.teacher_head.update(self.head, m)
        if not self.cfg.sinkhorn_centering:
            self.center.update()
        self.steps_done.fill_(step + 1)
