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

Everything here takes encoders and batch sources (see :mod:`selfsup.eval.features`), never a
``Method``; ``selfsup.engine.evaluate.finetune_checkpoint`` wires it to checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"finetune {key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "temperature"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"finetune {key} must be > 0, got {getattr(self, key)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"finetune alpha must be in [0, 1], got {self.alpha}")


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
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=peak, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    history: list[float] = []
    step = 0
    model.train()
    for _ in range(cfg.epochs):
        losses = []
        for chunk in index[torch.randperm(n, generator=g)].split(bs):
            for group in opt.param_groups:
                group["lr"] = 0.5 * peak * (1 + math.cos(math.pi * step / total))
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
    model = Classifier(encoder, num_classes).to(encoder_device(encoder))

    def ce(logits: Tensor, x_in: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        if (y < 0).any():
            raise DataError("fine-tuning selected unlabeled images (label -1); pass only labeled "
                            "indices")
        return F.cross_entropy(logits, y)

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

