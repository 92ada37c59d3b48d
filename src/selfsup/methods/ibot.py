"""iBOT: masked image modeling with an online tokenizer, DINO on [CLS] + self-distillation on
masked patch tokens.

Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer". Reference code:
bytedance/ibot ``main_ibot.py`` (``iBOTLoss``, ``train_one_epoch``, the schedules),
``models/head.py`` (``iBOTHead``), ``loader.py`` (``ImageFolderMask``),
``models/vision_transformer.py`` (``masked_embed``) and the README's ViT-S/16 command (the
arguments of the released models).

- Views (the ``ibot`` preset, README ViT-S/16): 2 global crops (scale 0.25-1) and 10 local
  crops (0.05-0.25) with DINO's colour, blur and solarisation.
- Masks (sec. 3.3, appendix; ``ImageFolderMask``): for each global crop of each image a
  prediction ratio ``r``: one of the ``pred_ratio`` entries (each ``U(r_i - var_i, r_i +
  var_i)``, or ``r_i`` when ``var_i = 0``) picked uniformly, so the default ``(0, 0.3) +- (0,
  0.2)`` leaves half of the crops unmasked and masks the others at ``r ~ U(0.1, 0.5)``. The
  mask is BEiT's blockwise one (:func:`selfsup.nn.block_masks.block_mask`) with up to
  ``int(r N)`` patches, block areas from ``(min(h, w) // 3)^2``, aspect 0.3-3.3
  (``pred_shape="rand"``: ``int(r N)`` uniform patches). No masks during the first
  ``pred_start_epoch`` epochs.
- Student (the backbone, evaluated and exported): a ViT; on the global crops a masked patch's
  embedding is replaced by the learned ``mask_token`` before the position embedding
  (``forward_tokens(x, mask=, mask_token=)``; zero-initialised as ``masked_embed``); local
  crops are not masked. Head: :class:`~selfsup.nn.heads.IBOTHead` on every token (DINO's MLP,
  L2-normalised bottleneck, weight-normalised last layer), one last layer for [CLS] and patch
  tokens (``shared_head``, the README's recipes) or a second one to ``patch_out_dim``.
- Teacher: EMA of the student's backbone and head (no mask token, no drop path) on the unmasked
  global crops; momentum cosine 0.996 -> 1 (``momentum_schedule``).
- Loss (sec. 3.2, eqs. 1-2): ``lambda1 L_[CLS] + lambda2 L_MIM``. ``L_[CLS]``: DINO's
  cross-entropy between the teacher's [CLS] distribution of each global crop and the student's of
  every other crop, local crops included, the student's global crops masked
  (:func:`~selfsup.losses.dino.dino_cross_entropy`). ``L_MIM``: per global crop, the teacher's
  patch distributions against the student's at the same patches of the masked crop, averaged
  over the masked patches of each image, then over images and crops
  (:func:`~selfsup.losses.ibot.ibot_patch_loss`, computed from the masked patches only:
  :func:`~selfsup.losses.ibot.ibot_patch_loss_masked`). Teacher targets
  ``softmax((g_t - c) / tau_t)`` with a [CLS] center and a patch center (EMA 0.9 of the batch
  mean over global crops, the patch one of each image's mean patch output; all patches, over
  all ranks), ``tau_s = 0.1``, ``tau_t`` and ``tau_t'`` linear 0.04 -> 0.07 over 30 epochs (the
  patch warm-up starts at ``pred_start_epoch``).
- As DINO: the last layers frozen during the first epoch (gradients dropped,
  ``cancel_gradients_last_layer``), each parameter's gradient clipped to norm 3.0
  (``clip_gradients``; ``optim.clip_mode=per_param``), AdamW lr 5e-4 x B / 256 after 10
  warm-up epochs, cosine to 1e-6, weight decay cosine 0.04 -> 0.4 on all but biases and 1-D
  parameters (``get_params_groups``).
- Features evaluated: the student's [CLS] token (the ViT's default pooling; the paper's kNN and
  linear probes of ViT-S read [CLS]).

Departures: with ``shared_head=False`` the teacher here has its own patch layer (an EMA of the
student's); the reference's default ``shared_head_teacher=True`` scores the student's separate
patch layer against the teacher's [CLS] layer. The reference's student has drop path 0.1
(``--drop_path``): set ``--set backbone.kwargs.drop_path_rate=0.1`` (the library's ViT default
is 0; the teacher never has it). The block mask's budget is ``int(r N)`` patches (the reference
compares with the float ``r N``: the same masks up to the draws of the block areas), and its
smallest block area is capped at that budget on small grids. Schedules stated in epochs run per
step. Hierarchical (Swin) backbones are not supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.dino import dino_cross_entropy, teacher_entropies, teacher_probs
from selfsup.losses.ibot import ibot_patch_loss_masked
from selfsup.methods.base import Method
from selfsup.nn.backbones.vit import check_vit, first_view
from selfsup.nn.block_masks import block_mask
from selfsup.nn.center import Center
from selfsup.nn.ema import EMA, disable_drop_path
from selfsup.nn.heads import IBOTHead
from selfsup.nn.multicrop import CROP_PASSES, encode_by_resolution
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils.schedules import cosine, linear

PRED_SHAPES = ("block", "rand")


@dataclass
class IBOTConfig:
    """iBOT hyper-parameters; defaults are the paper's (``selfsup.methods.ibot.Config``)."""

    out_dim: int = 8192  # K of the [CLS] head (sec. 4.1 / appendix; README: --out_dim 8192)
    patch_out_dim: int = 8192  # K' of a separate patch layer (main_ibot.py --patch_out_dim)
    shared_head: bool = True  # one last layer for [CLS] and patches (README: --shared_head true)
    hidden_dim: int = 2048  # hidden width of the 3-layer head MLP (DINO's, models/head.py)
    bottleneck_dim: int = 256  # L2-normalised bottleneck (models/head.py)
    head_layers: int = 3  # linear layers of the head MLP (models/head.py nlayers)
    norm_last_layer: bool = True  # g fixed to 1 (code default, ViT-B; ViT-S recipe: false)
    global_crops: int = 2  # leading views the teacher sees and the student masks (sec. 3.2)
    student_temp: float = 0.1  # tau_s (appendix; iBOTLoss student_temp)
    teacher_temp: float = 0.07  # [CLS] tau_t after warm-up (appendix; ViT-S recipe 0.07)
    warmup_teacher_temp: float = 0.04  # [CLS] tau_t at step 0 (appendix)
    teacher_patch_temp: float = 0.07  # patch tau_t' after warm-up (--teacher_patch_temp)
    warmup_teacher_patch_temp: float = 0.04  # patch tau_t' at the warm-up start
    warmup_teacher_temp_epochs: float = 30.0  # linear warm-up of both (appendix: 30 epochs)
    center_momentum: float = 0.9  # [CLS] center EMA (DINO's eq. 4; iBOTLoss center_momentum)
    center_momentum_patch: float = 0.9  # patch center EMA (iBOTLoss center_momentum2)
    momentum_base: float = 0.996  # teacher EMA at step 0, cosine to momentum_end (appendix)
    momentum_end: float = 1.0  # teacher EMA at the end (momentum_schedule)
    freeze_last_layer: float = 1.0  # epochs with the last layers frozen (--freeze_last_layer 1)
    lambda1: float = 1.0  # weight of L_[CLS] (sec. 3.2; --lambda1)
    lambda2: float = 1.0  # weight of L_MIM (sec. 3.2; --lambda2)
    # prediction ratios, one picked per crop, each drawn in r_i +- var_i (appendix: r = 0 with
    # p 0.5, else U(0.1, 0.5); README: --pred_ratio 0 0.3 --pred_ratio_var 0 0.2)
    pred_ratio: list[float] = field(default_factory=lambda: [0.0, 0.3])
    pred_ratio_var: list[float] = field(default_factory=lambda: [0.0, 0.2])
    pred_shape: str = "block"  # blockwise masks as BEiT (sec. 3.3, table 7); or "rand"
    pred_aspect: tuple[float, float] = (0.3, 1 / 0.3)  # block aspect range (pred_aspect_ratio)
    pred_start_epoch: float = 0.0  # epochs before masking starts (--pred_start_epoch; ViT 0)
    # backbone passes over the local crops: grouped (one per crop size, MultiCropWrapper),
    # per_crop, or auto (per_crop on a CPU); a ViT has no batch statistics, so only speed differs
    crop_passes: str = "auto"


Config = IBOTConfig


@register(
    "method",
    "ibot",
    description="DINO on [CLS] across multi-crops + self-distillation of masked patch tokens "
    "from the EMA teacher (online tokenizer), blockwise masks",
    reference="Zhou et al. 2022, iBOT: Image BERT Pre-Training with Online Tokenizer",
)
class IBOT(Method):
    """iBOT around a ViT backbone.

    Attributes:
        backbone: the student ViT (evaluated and exported).
        mask_token: learned ``[1, 1, D]`` embedding of a masked patch (student only).
        head: the student :class:`~selfsup.nn.heads.IBOTHead`.
        teacher_backbone, teacher_head: :class:`~selfsup.nn.ema.EMA` copies (no gradients).
        center, patch_center: :class:`~selfsup.nn.center.Center` ``[1, K]`` and ``[1, K']``.
        steps_done: optimiser steps taken (a checkpointed buffer) for the epoch schedules.

    Raises:
        ConfigError: for a backbone that is not a ViT or an invalid Config value.
    """

    Config: ClassVar[type] = IBOTConfig
    default_views: ClassVar[str] = "ibot"
    backbone_kind: ClassVar[str] = "vit"
    # main_ibot.py defaults: AdamW, lr 0.0005 x B / 256 after 10 warm-up epochs, cosine to min_lr
    # 1e-6 (0.002 x lr), weight decay cosine 0.04 -> 0.4 (wd_schedule) on the first group only
    # (get_params_groups: not biases nor 1-d parameters), clip_gradients(3.0) per parameter
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adamw", "lr": 0.0005, "lr_scaling": "linear", "weight_decay": 0.04,
        "weight_decay_end": 0.4, "betas": (0.9, 0.999), "warmup_epochs": 10,
        "min_lr_ratio": 0.002, "clip_grad": 3.0, "clip_mode": "per_param",
        "decay_norm_bias": False,
    }

    steps_done: Tensor
    momentum: Tensor

    def __init__(self, backbone: nn.Module, cfg: IBOTConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        self.patch, self.in_chans = check_vit(backbone, "ibot")
        self._check(cfg)
        self.grid = int(getattr(backbone, "image_size")) // self.patch  # noqa: B009
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # masked_embed: zeros
        self.head = IBOTHead(dim, cfg.out_dim, patch_out_dim=cfg.patch_out_dim,
                             shared=cfg.shared_head, hidden_dim=cfg.hidden_dim,
                             bottleneck_dim=cfg.bottleneck_dim, num_layers=cfg.head_layers,
                             norm_last_layer=cfg.norm_last_layer)
        self.teacher_backbone = EMA(backbone, copy_buffers=False)
        self.teacher_head = EMA(self.head, copy_buffers=False)
        disable_drop_path(self.teacher_backbone)  # the reference's teacher has no drop path
        self.center = Center(cfg.out_dim, cfg.center_momentum)
        self.patch_center = Center(self.head.patch_out_dim, cfg.center_momentum_patch)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("momentum", torch.tensor(float(cfg.momentum_base)))

    @staticmethod
    def _check(cfg: IBOTConfig) -> None:
        Method.require_positive(cfg, ("out_dim", "patch_out_dim", "hidden_dim",
                                      "bottleneck_dim", "head_layers", "global_crops"))
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp", "teacher_patch_temp",
                    "warmup_teacher_patch_temp"):
            if getattr(cfg, key) <= 0:
                raise ConfigError(f"method_args.{key} must be > 0, got {getattr(cfg, key)}")
        for key in ("center_momentum", "center_momentum_patch", "momentum_base", "momentum_end"):
            if not 0.0 <= getattr(cfg, key) <= 1.0:
                raise ConfigError(f"method_args.{key} must be in [0, 1], got {getattr(cfg, key)}")
        for key in ("warmup_teacher_temp_epochs", "freeze_last_layer", "lambda1", "lambda2",
                    "pred_start_epoch"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"method_args.{key} must be >= 0, got {getattr(cfg, key)}")
        ratios, var = list(cfg.pred_ratio), list(cfg.pred_ratio_var)
        if len(var) == 1:
            var = var * len(ratios)
        if not ratios or len(var) != len(ratios) or any(
                not (0.0 <= v <= r and r + v <= 1.0) for r, v in zip(ratios, var)):
            raise ConfigError("method_args.pred_ratio / pred_ratio_var must be lists of one "
                              "length (or one var) with 0 <= var <= ratio and ratio + var <= 1, "
                              f"got {cfg.pred_ratio} and {cfg.pred_ratio_var}")
        if cfg.pred_shape not in PRED_SHAPES:
            raise ConfigError(f"method_args.pred_shape must be one of {', '.join(PRED_SHAPES)}, "
                              f"got {cfg.pred_shape!r}")
        lo, hi = cfg.pred_aspect
        if not 0 < lo <= hi:
            raise ConfigError(f"method_args.pred_aspect must be (lo, hi) with 0 < lo <= hi, got "
                              f"{cfg.pred_aspect}")
        if cfg.crop_passes not in CROP_PASSES:
            raise ConfigError(f"method_args.crop_passes must be one of {', '.join(CROP_PASSES)}, "
                              f"got {cfg.crop_passes!r}")

    # ------------------------------------------------------------------ schedules (pure)

    def _epochs(self, epochs: float) -> int:
        return round(epochs * self.steps_per_epoch)

    def teacher_temps_at(self, step: int) -> tuple[float, float]:
        """``(tau_t, tau_t')`` at ``step``: linear warm-up over ``warmup_teacher_temp_epochs``,
        the patch one starting after ``pred_start_epoch`` (``iBOTLoss``'s schedules, per step)."""
        cfg = self.cfg
        warm = self._epochs(cfg.warmup_teacher_temp_epochs)
        start = self._epochs(cfg.pred_start_epoch)
        return (linear(step, warm, cfg.warmup_teacher_temp, cfg.teacher_temp),
                linear(step - start, warm, cfg.warmup_teacher_patch_temp,
                       cfg.teacher_patch_temp))

    def last_layer_frozen_at(self, step: int) -> bool:
        """True during the first ``freeze_last_layer`` epochs."""
        return step < self._epochs(self.cfg.freeze_last_layer)

    def before_optimizer_step(self, step: int) -> None:
        """Drop the last layers' gradients while frozen (``cancel_gradients_last_layer``)."""
        if self.last_layer_frozen_at(step):
            for layer in self.head.last_layers():
                for p in layer.parameters():
                    p.grad = None

    # ------------------------------------------------------------------ masks

    def sample_masks(self, batch_size: int, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """iBOT's masks for ``batch_size`` images: ``mask_i`` ``[B, N]`` bool (True = masked)
        for each global crop ``i``, a prediction ratio drawn per crop and image
        (``ImageFolderMask.get_pred_ratio``); all False before ``pred_start_epoch``. What
        ``Batch.masks`` may carry."""
        cfg, n = self.cfg, self.grid * self.grid
        out = torch.zeros(cfg.global_crops, batch_size, n, dtype=torch.bool)
        if int(self.steps_done) < self._epochs(cfg.pred_start_epoch):
            return {f"mask_{i}": out[i].to(device) for i in range(cfg.global_crops)}
        ratios = torch.tensor(list(cfg.pred_ratio), dtype=torch.float64)
        var = torch.tensor(list(cfg.pred_ratio_var), dtype=torch.float64).expand_as(ratios)
        dev = generator.device if generator is not None else "cpu"
        u = torch.rand(cfg.global_crops, batch_size, len(ratios), generator=generator,
                       device=dev, dtype=torch.float64).cpu()
        pick = torch.randint(len(ratios), (cfg.global_crops, batch_size), generator=generator,
                             device=dev).cpu()
        r = (ratios - var + 2 * var * u).gather(2, pick.unsqueeze(-1)).squeeze(-1)  # [T, B]
        low = (self.grid // 3) ** 2  # ImageFolderMask: (min(H, W) // 3) ** 2
        for i in range(cfg.global_crops):
            for b in range(batch_size):
                k = int(float(r[i, b]) * n)
                if k == 0:
                    continue
                if cfg.pred_shape == "rand":
                    noise = torch.rand(n, generator=generator, device=dev).cpu()
                    out[i, b, noise.argsort()[:k]] = True
                else:
                    out[i, b] = block_mask(1, self.grid, self.grid, k,
                                           min_num_patches=max(1, min(low, k)),
                                           min_aspect=cfg.pred_aspect[0],
                                           max_aspect=cfg.pred_aspect[1],
                                           generator=generator)[0]
        return {f"mask_{i}": out[i].to(device) for i in range(cfg.global_crops)}

    # ------------------------------------------------------------------ training

    def _cls_token(self, x: Tensor) -> Tensor:
        """The student's [CLS] token ``[B, D]`` of unmasked crops (any size)."""
        return self.backbone.forward_tokens(x)[:, 0]  # type: ignore[operator,no-any-return]

    def training_step(self, batch: Batch) -> StepOutput:
        """``lambda1 L_[CLS] + lambda2 L_MIM`` on ``batch.views``: the ``global_crops`` global
        crops ``[B, C, S, S]`` first (``S`` = the ViT's image size), then any local crops.

        Raises:
            DataError: with fewer than 2 (or ``global_crops``) views, a global crop of another
                size, or masks that do not fit.
        """
        cfg = self.cfg
        views, n_g = batch.views, cfg.global_crops
        if len(views) < max(2, n_g):
            raise DataError(f"ibot needs at least {max(2, n_g)} views (global crops first), got "
                            f"{len(views)}")
        side, n = self.grid * self.patch, self.grid * self.grid
        x = torch.cat([first_view([v], "ibot", self.in_chans, side) for v in views[:n_g]])
        b = views[0].shape[0]
        ms = batch.masks if batch.masks is not None else self.sample_masks(b, x.device)
        try:
            masks = torch.stack([ms[f"mask_{i}"].to(x.device, torch.bool) for i in range(n_g)])
        except (KeyError, RuntimeError) as e:
            raise DataError(f"ibot: batch.masks needs mask_0..mask_{n_g - 1} of shape [{b}, {n}]"
                            f", got {({k: tuple(v.shape) for k, v in ms.items()})}") from e
        if masks.shape != (n_g, b, n):
            raise DataError(f"ibot: batch.masks['mask_i'] must be [{b}, {n}], got "
                            f"{tuple(masks.shape[1:])}")
        step = int(self.steps_done)
        frozen = self.last_layer_frozen_at(step)
        tau, tau_patch = self.teacher_temps_at(step)

        vit: Any = self.backbone
        tokens = vit.forward_tokens(x, mask=masks.flatten(0, 1), mask_token=self.mask_token)
        # the student head on [CLS] and the masked patches only: the loss sees no other patch
        # (the reference runs it on all tokens; the head is token-wise, so this is the same
        # loss and gradient, tested, at a fraction of the head's cost)
        s_cls, s_patch = self.head.forward_tokens(tokens, frozen, patch_mask=masks.flatten(0, 1))
        if len(views) > n_g:  # local crops: unmasked, [CLS] only
            local = encode_by_resolution(self._cls_token, views[n_g:], cfg.crop_passes)
            s_cls = torch.cat([s_cls, self.head(local, freeze_last_layer=frozen)])
        with torch.no_grad():
            t_tokens = self.teacher_backbone.module.forward_tokens(x)  # type: ignore[operator]
            t_cls, t_patch = self.teacher_head.module.forward_tokens(t_tokens)  # type: ignore[operator]
            self.center.add(t_cls)
            self.patch_center.add(t_patch.mean(dim=1))  # each image's mean patch output
            q_cls = teacher_probs(t_cls.view(n_g, b, -1), self.center.value, tau)
            q_patch = teacher_probs(t_patch.view(n_g, b, n, -1), self.patch_center.value,
                                    tau_patch)
        loss_cls = dino_cross_entropy(s_cls.view(len(views), b, -1), q_cls, cfg.student_temp)
        loss_patch = ibot_patch_loss_masked(s_patch, q_patch, masks, cfg.student_temp)
        loss = cfg.lambda1 * loss_cls + cfg.lambda2 * loss_patch
        h_sample, h_marginal = teacher_entropies(q_cls[0])
        logs: dict[str, Tensor | float] = {
            "cls": loss_cls.detach(), "patch": loss_patch.detach(),
            "masked": masks.float().mean().detach(), "teacher_temp": tau,
            "teacher_patch_temp": tau_patch, "momentum": self.momentum,
            "teacher_entropy": h_sample, "teacher_marginal_entropy": h_marginal}
        return StepOutput(loss=loss, logs=logs, embeddings=tokens[:b, 0].detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """Teacher EMA with the cosine momentum at ``step``, both center updates with this
        step's teacher outputs, then advance the step counter."""
        m = cosine(step, total, self.cfg.momentum_base, self.cfg.momentum_end)
        self.momentum.fill_(m)
        self.teacher_backbone.update(self.backbone, m)
        self.teacher_head.update(self.head, m)
        self.center.update()
        self.patch_center.update()
        self.steps_done.fill_(step + 1)
