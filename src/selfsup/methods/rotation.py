"""RotNet: learn features by recognising which of four rotations was applied to an image.

Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by Predicting Image
Rotations" (ICLR); official code gidariss/FeatureLearningRotNet. Every image ``X`` is rotated by
each of the ``K = 4`` multiples of 90 degrees, ``X^y = Rot(X, 90 y)``, and a classifier on the
ConvNet's features predicts ``y`` (sec. 2: the loss is the cross entropy of the right rotation,
averaged over the K rotated copies). Multiples of 90 degrees are exact (a transpose and a flip,
no interpolation artefacts a network could read the angle from, sec. 2.2); here ``torch.rot90``
over ``(H, W)``, ``y = 1`` being 90 degrees counter-clockwise as the reference's ``rotate_img``
(``flipud(transpose(img))``).

Following the reference (``dataloader.py``, ``_load_function``): each image is augmented once
and **all four rotated copies** enter the same batch (the paper's implementation details: better
than one random rotation per image; ``all_rotations=False`` is that variant), so the backbone
sees ``4 B`` images in one pass (BatchNorm statistics over all of them, as the reference's
collated ``[4 B, C, H, W]`` batch).

The classifier is the reference CIFAR model's (``config/CIFAR10_RotNet_NIN4blocks.py``,
``architectures/NetworkInNetwork.py``): global average pooling of the last block and one linear
layer to the 4 rotations, i.e. ``Linear(num_features, 4)`` on the backbone's pooled features.

Augmentation (the CIFAR ``dataloader.py``): ``RandomCrop(32, padding=4)`` and a horizontal flip
before the rotations. The flip is the ``rotation`` view preset's; the padded crop has no
:class:`~selfsup.config.ViewConfig` counterpart, so the method does it (``crop_padding``, a fraction
of the side: 4 px at 32, 2 px at 16), padding with black as the reference pads the PIL image
before normalising: it undoes the normalisation with ``input_mean``/``input_std`` (filled in by
the trainer; unset, the padding is the normalised value 0, the data's mean colour). The crop
offsets are per-image draws keyed by the dataset index (:mod:`selfsup.nn.keyed_random`), so a
batch sharded over ranks draws what one process draws.

Differences from the reference, all from the library's shared optimiser and evaluation:
the reference's SGD is Nesterov (``nesterov: True``), the library's SGD has no Nesterov option,
so plain momentum is used; the reference steps the lr down (0.1, 0.02, 0.004, 0.0008 at epochs
60/120/160 of 200), here cosine from 0.1 to the same final 0.0008 (``min_lr_ratio`` 0.008); the
paper evaluates CIFAR features of conv block 2 (its best), the library evaluates the backbone's
pooled output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.methods.base import Method
from selfsup.nn.input_stats import input_stats
from selfsup.nn.keyed_random import draw_key, keyed_uniform
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

_SLOT_CROP, _SLOT_ROT = 0, 2  # keyed-draw slots: crop offsets (y, x) use 0 and 1


@dataclass
class RotationConfig:
    """RotNet hyper-parameters; defaults are the paper's CIFAR-10 setting
    (``selfsup.methods.rotation.Config``)."""

    # the rotations to recognise, degrees (sec. 2.2: 0/90/180/270; its CIFAR-10 study of the
    # number of rotations also runs [0, 180] and [90, 270]; its 8 rotations of 45 degrees need
    # interpolation and are not offered)
    rotations: list[int] = field(default_factory=lambda: [0, 90, 180, 270])
    # all rotated copies of every image in one batch (implementation details; dataloader.py
    # _load_function); False: one random rotation per image (the variant the paper found worse)
    all_rotations: bool = True
    # RandomCrop(32, padding=4) of dataloader.py as a fraction of the image side: round(0.125 x
    # side) px of black padding, then a crop at a uniform offset (4 px at 32, 2 at 16); 0 = off
    crop_padding: float = 0.125
    # per-channel mean/std the views were normalised with (set by the trainer), to pad with black
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)


Config = RotationConfig


def rotate_batch(x: Tensor, rotations: list[int]) -> tuple[Tensor, Tensor]:
    """Every image of ``x`` ``[B, C, S, S]`` under every rotation: ``(rotated [R*B, C, S, S],
    labels [R*B])``, rotation-major (row ``r*B + b`` is image ``b`` rotated by ``rotations[r]``
    degrees counter-clockwise, label ``r``)."""
    b = x.shape[0]
    out = torch.cat([torch.rot90(x, deg // 90, dims=(2, 3)) for deg in rotations])
    labels = torch.arange(len(rotations), device=x.device).repeat_interleave(b)
    return out, labels


def rotate_each(x: Tensor, rotations: list[int], labels: Tensor) -> Tensor:
    """Image ``b`` of ``x`` ``[B, C, S, S]`` rotated by ``rotations[labels[b]]`` degrees."""
    out = torch.empty_like(x)
    for r, deg in enumerate(rotations):
        out = torch.where((labels == r).view(-1, 1, 1, 1), torch.rot90(x, deg // 90, dims=(2, 3)),
                          out)
    return out


def pad_crop(x: Tensor, padding: int, fill: Tensor, offsets: Tensor) -> Tensor:
    """torchvision ``RandomCrop(size, padding)`` with given offsets: ``x`` ``[B, C, H, W]``
    padded by ``padding`` px of ``fill`` (``[C]``) on every side, then the ``H x W`` window at
    ``offsets`` ``[B, 2]`` (top, left; integers in ``[0, 2 padding]``) of each image."""
    b, c, h, w = x.shape
    canvas = fill.to(x).view(1, c, 1, 1).expand(b, c, h + 2 * padding, w + 2 * padding).clone()
    canvas[:, :, padding:padding + h, padding:padding + w] = x
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # [B, W]
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    out = canvas.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


@register(
    "method",
    "rotation",
    description="RotNet: 4-way classification of 0/90/180/270-degree rotations, all four "
    "rotated copies of each image in the batch",
    reference="Gidaris, Singh & Komodakis 2018, Unsupervised Representation Learning by "
    "Predicting Image Rotations (ICLR)",
)
class Rotation(Method):
    """RotNet around any backbone with ``num_features``.

    Attributes:
        backbone: the ConvNet (evaluated and exported).
        head: ``Linear(num_features, len(rotations))``, the reference's classifier after global
            average pooling.

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = RotationConfig
    default_views: ClassVar[str] = "rotation"
    # config/CIFAR10_RotNet_NIN4blocks.py: SGD lr 0.1 at batch 128 (-> 0.2 x B / 256), momentum
    # 0.9, weight decay 5e-4 on every parameter (algorithms/Algorithm.py init_optimizer passes all
    # of them), no warm-up; LUT_lr ends at 0.0008 = 0.008 x 0.1. Nesterov: not available (above).
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd", "lr": 0.2, "lr_scaling": "linear", "momentum": 0.9, "weight_decay": 5e-4,
        "decay_norm_bias": True, "warmup_epochs": 0, "min_lr_ratio": 0.008,
    }

    fill: Tensor

    def __init__(self, backbone: nn.Module, cfg: RotationConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        rot = list(cfg.rotations)
        if (len(rot) < 2 or len(set(rot)) != len(rot)
                or any(not isinstance(d, int) or d % 90 or not 0 <= d < 360 for d in rot)):
            raise ConfigError(f"method_args.rotations must be >= 2 distinct multiples of 90 in "
                              f"[0, 360) (the paper's [0, 90, 180, 270]), got {cfg.rotations}")
        if not 0 <= cfg.crop_padding < 1:
            raise ConfigError(f"method_args.crop_padding must be in [0, 1) (a fraction of the "
                              f"image side; the paper's 4 px of 32 = 0.125), got {cfg.crop_padding}")
        chans = int(getattr(backbone, "in_chans", 0) or 0)
        mean, std = input_stats(cfg.input_mean, cfg.input_std, chans)
        self.head = nn.Linear(num_features, len(rot))
        nn.init.zeros_(self.head.bias)  # NetworkInNetwork.weight_initialization
        self.register_buffer("fill", (-mean / std).flatten(), persistent=False)  # black

    def prepare(self, x: Tensor, index: Tensor) -> Tensor:
        """The reference's padded random crop of normalised views ``x`` ``[B, C, S, S]`` (offsets
        keyed by the dataset ``index``), or ``x`` itself with ``crop_padding`` 0."""
        side = x.shape[-1]
        pad = round(self.cfg.crop_padding * side)
        if pad == 0:
            return x
        key = draw_key(x.device)
        u = keyed_uniform(key, index.view(-1, 1), torch.tensor([_SLOT_CROP, _SLOT_CROP + 1],
                                                               device=x.device))  # [B, 2]
        offsets = (u * (2 * pad + 1)).long().clamp_(max=2 * pad)
        fill = self.fill.expand(x.shape[1]) if self.fill.numel() == 1 else self.fill
        return pad_crop(x, pad, fill, offsets)

    def training_step(self, batch: Batch) -> StepOutput:
        """Cross entropy of the rotation classifier on the rotated copies of ``batch.views[0]``
        (``[B, C, S, S]``); logs ``rot_acc``, the pretext top-1 accuracy on them.

        Raises:
            DataError: if there is no view or the view is not square and at least 2 px.
        """
        if not batch.views:
            raise DataError("rotation needs one view per image, got none")
        x = batch.views[0]
        if x.dim() != 4 or x.shape[-1] != x.shape[-2] or x.shape[-1] < 2:
            raise DataError(f"rotation needs square views of at least 2 x 2 px (a rotated image "
                            f"must keep its shape), got {tuple(x.shape)}")
        index = batch.index.to(x.device)
        x = self.prepare(x, index)
        rot = list(self.cfg.rotations)
        if self.cfg.all_rotations:
            inputs, labels = rotate_batch(x, rot)  # [R*B, C, S, S], rotation-major
        else:
            u = keyed_uniform(draw_key(x.device), index, _SLOT_ROT)
            labels = (u * len(rot)).long().clamp_(max=len(rot) - 1)
            inputs = rotate_each(x, rot, labels)
        feats = self.backbone(inputs)  # [R*B, F]
        logits = self.head(feats)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return StepOutput(loss=loss, logs={"rot_acc": acc},
                          embeddings=feats[: x.shape[0]].detach())

    @torch.no_grad()
    def picture_rows(self, x: Tensor, mean: Tensor, std: Tensor,
                     generator: torch.Generator) -> list[tuple[str, Tensor]]:
        """``selfsup visualize``: each rotated copy of the images, titled with the rotation and
        the classifier's prediction accuracy over the shown images."""
        rot = list(self.cfg.rotations)
        inputs, labels = rotate_batch(x, rot)
        pred = self.head(self.backbone(inputs)).argmax(1)
        unit = (inputs * std.to(x) + mean.to(x)).clamp(0, 1)
        unit = unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit[:, :3]
        b = x.shape[0]
        return [(f"rotated {deg}: predicted right {int((pred[r*b:(r+1)*b] == r).sum())}/{b}",
                 unit[r * b:(r + 1) * b]) for r, deg in enumerate(rot)]
