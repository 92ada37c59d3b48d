"""Fine-tuning on few labels and self-distillation on unlabeled images (semi-supervised evaluation).

Fine-tuning (Chen et al. 2020a, SimCLR, appendix B.5): a new linear layer on top of the pretrained
encoder and the whole network trained with cross-entropy on the labeled images only; Nesterov
momentum 0.9, lr ``0.05 x B / 256``, no warm-up, no regularisation (no weight decay), random
resized crop + horizontal flip as the only augmentation. SimCLR v2 (Chen et al. 2020b, sec. 2.2)
fine-tunes from the first layer of the projection head instead of the backbone output: pass that
``HeadEncoder`` (``SimCLRv2.encoder_with_head()``) as the encoder.

Self-distillation (SimCLR v2, sec. 2.3): the fine-tuned network is a fixed *teacher*; a *student*
of the same architecture is trained on the unlabeled images to match the teacher's predictions,

    L = -(1 - a) sum_{labeled} log P_S(y_i | x_i) - a sum_{unlabeled} sum_y P_T(y | x; t) log P_S(y | x; t)

(eq. 3; ``a = 1`` is eq. 2, the paper's default: no labels used), with
``P(y | x; t) = softmax(logits / t)`` and ``t = 1``. Teacher and student see the same augmented
view. The paper's epoch counts (60 epochs with 1% of the labels, 30 with 10%; 400 for distillation)
are ImageNet's; :class:`FinetuneConfig` keeps the optimiser and scales the epochs down.

MAE's fine-tuning recipe for ViTs (He et al. 2022, appendix A.2; :func:`mae_recipe`): AdamW with
layer-wise lr decay (:func:`param_groups`), stochastic depth (:func:`set_drop_path`), label
smoothing and a warm-up, chosen by ``selfsup eval finetune --recipe`` (``auto``: MAE's for the
masked-modeling methods, SimCLR's otherwise).

Everything here takes encoders and batch sources (see :mod:`selfsup.eval.features`), never a
``Method``; ``selfsup.engine.evaluate.finetune_checkpoint`` wires it to checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ViewConfig
from selfsup.data.augment import Augment
from selfsup.data.stats import Normalization
from selfsup.eval.features import Preprocess, _fetch, encoder_device
from selfsup.types import ConfigError, DataError

LossFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (logits, x_in, labels, index)


@dataclass
class FinetuneConfig:
    """Fine-tuning / distillation hyper-parameters (SimCLR appendix B.5; SimCLR v2 sec. 2.3)."""

    epochs: int = 30  # B.5: 30 epochs with 10% of the labels (60 with 1%)
    batch_size: int = 256  # capped at the number of training images
    lr: float = 0.05  # x batch_size / 256 (B.5: 0.05 x B / 256), cosine decay to 0, no warm-up
    momentum: float = 0.9  # Nesterov (B.5)
    weight_decay: float = 0.0  # B.5: no regularisation
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random resized crop area (B.5: crop + flip only)
    hflip_p: float = 0.5  # horizontal flip probability (0 for digits / text-like images)
    temperature: float = 1.0  # distillation t of eq. 2 (sec. 2.3: t = 1)
    alpha: float = 1.0  # weight a of the distillation term (eq. 3); 1 = unlabeled only (eq. 2)
    seed: int = 0
    # MAE's fine-tuning recipe (:func:`mae_recipe`) sets the fields below; SimCLR's leaves them
    optimizer: str = "sgd"  # sgd (Nesterov, SimCLR B.5) | adamw (MAE main_finetune.py)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    layer_decay: float = 1.0  # ViT layer-wise lr decay: block i's lr x decay^(L + 1 - (i + 1))
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    drop_path: float = 0.0  # ViT stochastic depth, linear over the blocks up to this rate
    warmup_epochs: float = 0.0  # linear warm-up, then the half-cycle cosine

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"finetune optimizer must be sgd or adamw, got {self.optimizer!r}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"finetune layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.drop_path < 1.0:
            raise ConfigError("finetune label_smoothing and drop_path must be in [0, 1)")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"finetune {key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "temperature"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"finetune {key} must be > 0, got {getattr(self, key)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"finetune alpha must be in [0, 1], got {self.alpha}")


def mae_recipe(**overrides: Any) -> FinetuneConfig:
    """MAE's fine-tuning recipe (He et al. 2022, appendix A.2; facebookresearch/mae
    ``main_finetune.py`` defaults): AdamW, lr ``1e-3 x B / 256``, weight decay 0.05 (not on
    biases, norms, the class token and position embedding), layer-wise lr decay 0.75, drop path
    0.1, label smoothing 0.1, 5 warm-up epochs then cosine, crop 0.08-1 + flip. Not included:
    RandAugment, random erasing, mixup and cutmix of the reference. ``overrides`` set any
    :class:`FinetuneConfig` field (e.g. ``epochs``)."""
    base: dict[str, Any] = dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75,
                                drop_path=0.1, label_smoothing=0.1, warmup_epochs=5.0,
                                momentum=0.0)
    return FinetuneConfig(**{**base, **overrides})


def _vit_layers(encoder: nn.Module) -> int | None:
    """Number of transformer blocks of a ViT (``blocks`` + ``patch_embed``) or of ConvMAE's
    ConvViT (``blocks3``), else None."""
    blocks = getattr(encoder, "blocks", None)
    if isinstance(blocks, nn.Sequential) and hasattr(encoder, "patch_embed"):
        return len(blocks)
    blocks3 = getattr(encoder, "blocks3", None)
    if isinstance(blocks3, nn.Sequential) and hasattr(encoder, "blocks1"):
        return len(blocks3)
    return None


def _layer_id(sub: str, n: int) -> int:
    """MAE's ``get_layer_id_for_vit`` (and ConvMAE's ``util/lr_decay.py`` for a ConvViT: its
    patch embeddings, position embedding and convolution stages ``blocks1``/``blocks2`` are
    layer 0, ``blocks3.i`` is ``i + 1``); everything else ``n + 1``."""
    if sub in ("cls_token", "pos_embed") or sub.startswith(("patch_embed", "blocks1.",
                                                            "blocks2.")):
        return 0
    for prefix in ("blocks.", "blocks3."):
        if sub.startswith(prefix):
            return int(sub.split(".")[1]) + 1
    return n + 1


def set_drop_path(encoder: nn.Module, rate: float) -> None:
    """Stochastic depth linear from 0 to ``rate`` over a ViT's blocks (timm's rule, as MAE's
    ``drop_path_rate``), or over all blocks of a ConvViT's three stages (ConvMAE's ``dpr``); a
    no-op for other encoders or ``rate`` 0."""
    from timm.layers import DropPath

    if _vit_layers(encoder) is None or rate <= 0:
        return
    blocks = list(cast(nn.Sequential, encoder.blocks)) if hasattr(encoder, "blocks") else [
        *cast(nn.ModuleList, encoder.blocks1), *cast(nn.ModuleList, encoder.blocks2),
        *cast(nn.Sequential, encoder.blocks3)]
    for i, blk in enumerate(blocks):
        r = rate * i / max(len(blocks) - 1, 1)
        for name in ("drop_path1", "drop_path2", "drop_path"):
            if hasattr(blk, name):
                setattr(blk, name, DropPath(r) if r > 0 else nn.Identity())


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float
                 ) -> list[dict[str, Any]]:
    """Optimiser groups with an ``lr_scale`` each: MAE's ``param_groups_lrd``. For a ViT encoder
    (``model.encoder``), layer id 0 = class token, position embedding and patch embedding,
    ``i + 1`` = block ``i``, ``L + 1`` = everything after (final norm, the new linear layer);
    ``lr_scale = layer_decay ** (L + 1 - id)``; a ConvViT as ConvMAE's fine-tuning
    (:func:`_layer_id`). No weight decay on 1-D parameters and on the class token / position
    embedding (timm's ``no_weight_decay``)."""
    enc = getattr(model, "encoder", model)
    n = _vit_layers(enc)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        sub = name[len("encoder."):] if name.startswith("encoder.") else None
        lid = 0 if n is None else n + 1
        if n is not None and sub is not None:
            lid = _layer_id(sub, n)
        no_wd = p.ndim == 1 or (sub in ("cls_token", "pos_embed"))
        top = 0 if n is None else n + 1
        key = (lid, no_wd)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_wd else weight_decay,
                           "lr_scale": layer_decay ** (top - lid)}
        groups[key]["params"].append(p)
    return list(groups.values())


class Classifier(nn.Module):
    """``encoder`` followed by a linear layer: ``[B, C, H, W] -> [B, num_classes]`` logits."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        d = getattr(encoder, "num_features", None)
        if not isinstance(d, int) or d < 1:
            raise ConfigError(f"{type(encoder).__name__} has no positive integer 'num_features'; "
                              "fine-tuning needs the encoder's output width")
        if num_classes < 2:
            raise DataError(f"fine-tuning needs at least 2 classes, got {num_classes}")
        self.encoder = encoder
        self.fc = nn.Linear(d, num_classes)
        nn.init.zeros_(self.fc.weight)  # start from uniform predictions, as a fresh probe
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.encoder(x))  # type: ignore[no-any-return]


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
                 ) -> Tensor:
    """SimCLR v2 eq. 2 per batch: ``mean_i -sum_y P_T(y|x_i; t) log P_S(y|x_i; t)``.

    Args:
        student_logits, teacher_logits: ``[B, K]``.
        temperature: ``t`` > 0, applied to both.

    Raises:
        DataError: if the shapes differ or are not ``[B, K]``.
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise DataError(f"distill_loss needs two [B, K] logits of one shape, got "
                        f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    p_t = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return -(p_t * log_p_s).sum(dim=1).mean()


class _TrainAugment:
    """Raw batch -> randomly cropped / flipped, normalised input (the fine-tuning augmentation)."""

    def __init__(self, norm: Normalization, size: int, cfg: FinetuneConfig) -> None:
        view = ViewConfig(n=1, size=size, scale=cfg.crop_scale, hflip_p=cfg.hflip_p, jitter_p=0.0,
                          grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        self.augment = Augment(view, norm.channels)
        self.norm = norm

    def __call__(self, x: Tensor) -> Tensor:
        v, _ = self.augment(self.norm.to_unit(x))
        return self.norm.normalize(v)


def _fit(model: nn.Module, source: Any, index: Tensor, augment: Callable[[Tensor], Tensor],
         loss_fn: LossFn, cfg: FinetuneConfig) -> list[float]:
    """Train ``model`` on the samples ``index`` of ``source``; returns the mean loss per epoch."""
    dev = encoder_device(model)
    n = len(index)
    if n == 0:
        raise DataError("fine-tuning got no training images")
    bs = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = cfg.epochs * steps_per_epoch
    peak = cfg.lr * bs / 256
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=peak, betas=cfg.betas)
    else:
        opt = torch.optim.SGD(groups, lr=peak, momentum=cfg.momentum,
                              nesterov=cfg.momentum > 0)
    g = torch.Generator().manual_seed(cfg.seed)
    history: list[float] = []
    step = 0
    model.train()
    for _ in range(cfg.epochs):
        losses = []
        for chunk in index[torch.randperm(n, generator=g)].split(bs):
            lr = (peak * (step + 1) / warm if step < warm else 0.5 * peak * (
                1 + math.cos(math.pi * (step - warm) / max(total - warm, 1))))
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            x, y = _fetch(source, chunk)
            x_in = augment(x.to(dev, non_blocking=True))
            loss = loss_fn(model(x_in), x_in, y.to(dev), chunk)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss became {loss.item()} at step {step}; "
                                         "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        history.append(sum(losses) / len(losses))
    model.eval()
    return history


def finetune(encoder: nn.Module, source: Any, index: Tensor, num_classes: int,
             norm: Normalization, image_size: int, cfg: FinetuneConfig | None = None
             ) -> tuple[Classifier, list[float]]:
    """Fine-tune ``encoder`` + a new linear layer with cross-entropy on the labeled samples
    ``index`` of ``source`` (SimCLR appendix B.5). The encoder is trained in place.

    Returns:
        ``(classifier, mean training loss per epoch)``; the classifier is in eval mode.

    Raises:
        DataError: if a selected sample is unlabeled (label < 0) or there are < 2 classes.
    """
    cfg = cfg or FinetuneConfig()
    set_drop_path(encoder, cfg.drop_path)
    model = Classifier(encoder, num_classes).to(encoder_device(encoder))

    def ce(logits: Tensor, x_in: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        if (y < 0).any():
            raise DataError("fine-tuning selected unlabeled images (label -1); pass only labeled "
                            "indices")
        return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)

    history = _fit(model, source, index, _TrainAugment(norm, image_size, cfg), ce, cfg)
    return model, history


def self_distill(teacher: nn.Module, student: Classifier, source: Any, index: Tensor,
                 norm: Normalization, image_size: int, cfg: FinetuneConfig | None = None
                 ) -> list[float]:
    """Train ``student`` on the teacher's soft labels over the samples ``index`` of ``source``
    (SimCLR v2 eq. 3; labels are used only where ``cfg.alpha < 1`` and the sample has one).

    The teacher (a fixed classifier, e.g. from :func:`finetune`) stays in eval mode and gets no
    gradient. Returns the mean training loss per epoch; the student ends in eval mode.
    """
    cfg = cfg or FinetuneConfig()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(logits: Tensor, x_in: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        with torch.no_grad():
            t_logits = teacher(x_in)
        out = distill_loss(logits, t_logits, cfg.temperature)
        labeled = y >= 0
        if cfg.alpha < 1.0 and labeled.any():
            out = cfg.alpha * out + (1 - cfg.alpha) * F.cross_entropy(logits[labeled], y[labeled])
        return out

    return _fit(student, source, index, _TrainAugment(norm, image_size, cfg), loss, cfg)


@torch.no_grad()
def classify(model: nn.Module, source: Any, preprocess: Preprocess, batch_size: int = 256
             ) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of ``model`` on a labeled batch source, in eval mode."""
    model.eval()
    dev = encoder_device(model)
    n = len(source)
    correct1 = correct5 = 0
    for chunk in torch.arange(n).split(batch_size):
        x, y = _fetch(source, chunk)
        logits = model(preprocess(x.to(dev))).float()
        y = y.to(dev)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
    return {"top1": 100.0 * correct1 / max(n, 1), "top5": 100.0 * correct5 / max(n, 1)}

