"""Exemplar-CNN: every training image is its own surrogate class, learned from many randomly
transformed copies of one patch of it.

Dosovitskiy, Springenberg, Riedmiller & Brox 2014, "Discriminative Unsupervised Feature Learning
with Convolutional Neural Networks" (NIPS), and the TPAMI 2016 version ("... with Exemplar
Convolutional Neural Networks", with Fischer). Sec. 2.1: ``N`` "seed" patches of 32 x 32 px are
sampled from different images where there are considerable gradients (probability proportional to
the mean squared gradient magnitude within the patch); each is transformed ``K`` times by a random
composition of the elementary transformations below, and a ConvNet is trained to tell the ``N``
surrogate classes apart with a softmax over them (sec. 2). The official code (MATLAB + Caffe,
from the authors' site) is not on GitHub; the numbers here follow the paper's text.

Transformations (sec. 2; :mod:`selfsup.nn.exemplar_patches`), the same for all pixels of a copy:

- translation by up to ``translate`` = 0.2 of the patch side, vertically and horizontally (the
  two drawn independently);
- scaling of the patch by a factor in [0.7, 1.4] (drawn log-uniformly: the range is symmetric in
  log scale, 0.7 ~ 1 / 1.4; the paper does not give the distribution);
- rotation by up to ``rotate`` = 20 degrees (uniform);
- "contrast 1": the projection of every pixel onto each principal component of the set of all
  pixels multiplied by a factor in [0.5, 2] (log-uniform, one per component); the components are
  those of the current global batch's pixels (all-reduced over ranks), standing for the
  dataset's;
- "contrast 2": saturation and value (HSV) raised to a power in [0.25, 4], multiplied by a factor
  in [0.7, 1.4] (both log-uniform) and shifted by a value in [-0.1, 0.1] (uniform), drawn
  independently for S and V;
- "color": a hue shift in [-0.1, 0.1] (turns). Grey images have only V (and one principal
  component, i.e. a contrast change about the mean); other channel counts get contrast 1 only.

On this spine (the surrogate dataset is generated on the fly, not offline):

- A surrogate class is one training image (``num_samples``, filled in by the trainer with the
  dataset size; ``batch.index`` is the class). The paper's ``N`` is capped by ``max_classes``
  (its largest ``N``, 32000): a larger dataset raises a ConfigError (use ``data.limit``).
- Each image's seed patch is fixed: its location is drawn once, with probability proportional to
  the patch's mean squared gradient magnitude, by a uniform keyed on ``patch_seed`` and the
  dataset index (:mod:`selfsup.nn.keyed_random`), so it is the same at every visit, on every
  rank and after ``--resume`` with no state to store. This needs the un-augmented image, which the
  ``exemplar`` view preset gives (identity); augmenting views (``view_args``) moves the patch with
  the view.
- Instead of the paper's fixed set of ``K`` (up to 300) pre-generated copies per class, every
  step draws ``copies`` fresh transformations of each image's patch (an endless stream, the
  paper's ``K -> infinity``; its fig. 4 finds more copies better); all ``copies * B`` are
  classified. Transformation parameters are keyed per (step, image, copy), not per row.
- Scaling to small images: the seed patch is ``patch_fraction`` of the image side (32 of STL-10's
  96 px = 1/3) at its own resolution (the network trains on patches and is evaluated on whole
  images, as the paper applies it to full STL-10 images); translation is relative to the patch,
  the other ranges are scale-free. Patches must be >= 2 px.
- The paper subtracts the per-pixel mean of the surrogate set; here patches are normalised with
  the data's per-channel mean/std (``input_mean``/``input_std``, filled in by the trainer, which
  are also used to undo the input normalisation before the colour transformations).
- The head is the paper's fully connected layer with dropout and the N-way softmax:
  ``Linear(num_features, hidden_dim) - ReLU - Dropout - Linear(hidden_dim, N)``, ``hidden_dim``
  512 as its 64c5-128c5-256c5-512f network; the convolutional layers are the backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.methods.base import Method
from selfsup.nn import exemplar_patches as xp
from selfsup.nn.input_stats import input_stats
from selfsup.nn.keyed_random import draw_key, keyed_uniform, seed_key
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

# keyed-draw slots of one copy: shift y/x, scale, angle, S and V (power, factor, shift), hue;
# contrast-1 factors from _PCA_SLOT + channel
_SLOTS = {"dy": 0, "dx": 1, "scale": 2, "angle": 3, "s_pow": 4, "s_mul": 5, "s_add": 6,
          "v_pow": 7, "v_mul": 8, "v_add": 9, "hue": 10}
_PCA_SLOT = 16


@dataclass
class ExemplarConfig:
    """Exemplar-CNN hyper-parameters; defaults are the paper's (``selfsup.methods.exemplar.Config``)."""

    # surrogate classes = training images (set by the trainer to len(train set)); sec. 2
    num_samples: int = 4096
    # the most surrogate classes the head holds: the paper's largest N (sec. 2: N in [50, 32000])
    max_classes: int = 32000
    # K: transformed copies of each image's patch per step, all classified (sec. 2 uses a fixed
    # set of K in [1, 300] per class; here fresh ones every step, see the module docstring)
    copies: int = 4
    # seed patch side / image side: 32 px patches of 96 px STL-10 images (sec. 2, experiments)
    patch_fraction: float = 1 / 3
    translate: float = 0.2  # shift up to this fraction of the patch side, per axis (sec. 2)
    scale: tuple[float, float] = (0.7, 1.4)  # patch scale factor range, log-uniform (sec. 2)
    rotate: float = 20.0  # rotation up to this many degrees either way (sec. 2)
    pca_factor: tuple[float, float] = (0.5, 2.0)  # contrast 1: per-component factor (sec. 2)
    sv_power: tuple[float, float] = (0.25, 4.0)  # contrast 2: power of S and V (sec. 2)
    sv_factor: tuple[float, float] = (0.7, 1.4)  # contrast 2: factor of S and V (sec. 2)
    sv_shift: float = 0.1  # contrast 2: S and V shifted by up to this (sec. 2)
    hue_shift: float = 0.1  # color: hue shifted by up to this many turns (sec. 2)
    hidden_dim: int = 512  # the fully connected layer (the experiments' 64c5-128c5-256c5-512f)
    dropout: float = 0.5  # dropout on the fully connected layer (the experiments; rate: the usual 0.5)
    patch_seed: int = 0  # fixes every image's seed-patch location (module docstring)
    # per-channel mean/std the views were normalised with (set by the trainer)
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)


Config = ExemplarConfig


def _check(cfg: ExemplarConfig) -> None:
    Method.require_positive(cfg, ("copies", "hidden_dim"))
    ranges = {"scale": cfg.scale, "pca_factor": cfg.pca_factor, "sv_power": cfg.sv_power,
              "sv_factor": cfg.sv_factor}
    for key, (lo, hi) in ranges.items():
        if not 0 < lo <= hi:
            raise ConfigError(f"method_args.{key} must be a range 0 < low <= high, got "
                              f"{list(ranges[key])}")
    checks = {"patch_fraction": 0 < cfg.patch_fraction <= 1, "translate": cfg.translate >= 0,
              "rotate": 0 <= cfg.rotate <= 180, "sv_shift": cfg.sv_shift >= 0,
              "hue_shift": 0 <= cfg.hue_shift <= 0.5, "dropout": 0 <= cfg.dropout < 1,
              "max_classes": cfg.max_classes >= 2}
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(
                f"method_args.{key}={getattr(cfg, key)!r} is invalid for exemplar "
                "(patch_fraction in (0, 1], translate >= 0, rotate in [0, 180] degrees, sv_shift "
                ">= 0, hue_shift in [0, 0.5] turns, dropout in [0, 1), max_classes >= 2)")
    if not 2 <= cfg.num_samples <= cfg.max_classes:
        raise ConfigError(
            f"method_args.num_samples={cfg.num_samples} (the dataset size: one surrogate class "
            f"per image) must be in [2, method_args.max_classes={cfg.max_classes}] (the paper "
            "uses N <= 32000 classes); train on a subset (data.limit) or raise max_classes")


@register(
    "method",
    "exemplar",
    description="Exemplar-CNN: each image a surrogate class; classify randomly transformed "
    "copies of its high-gradient seed patch",
    reference="Dosovitskiy, Springenberg, Riedmiller & Brox 2014, Discriminative Unsupervised "
    "Feature Learning with Convolutional Neural Networks (NIPS; TPAMI 2016)",
)
class Exemplar(Method):
    """Exemplar-CNN around any backbone with ``num_features``.

    Attributes:
        backbone: the ConvNet (evaluated and exported, on whole images).
        head: ``Linear - ReLU - Dropout - Linear`` to ``num_samples`` surrogate classes.

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid (the
            dataset larger than ``max_classes`` included).
    """

    Config: ClassVar[type] = ExemplarConfig
    default_views: ClassVar[str] = "exemplar"
    # the experiments (NIPS 2014): SGD with a fixed momentum of 0.9, learning rate 0.01 (at the
    # paper's mini-batch of 128: 0.02 x B / 256). Weight decay: not in the paper's text as read
    # here; 5e-4 on every parameter is this library's choice. No warm-up.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd", "lr": 0.02, "lr_scaling": "linear", "momentum": 0.9, "weight_decay": 5e-4,
        "decay_norm_bias": True, "warmup_epochs": 0, "min_lr_ratio": 0.0,
    }

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, cfg: ExemplarConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        _check(cfg)
        mean, std = input_stats(cfg.input_mean, cfg.input_std,
                                int(getattr(backbone, "in_chans", 0) or 0))
        self.head = nn.Sequential(nn.Linear(num_features, cfg.hidden_dim), nn.ReLU(inplace=True),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, cfg.num_samples))
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def patch_side(self, x: Tensor) -> int:
        """The seed patch side for views ``x`` ``[B, C, H, W]``.

        Raises:
            DataError: if the patch would be under 2 px.
        """
        size = min(x.shape[-2:])
        side = min(size, round(self.cfg.patch_fraction * size))
        if side < 2:
            raise DataError(
                f"exemplar: method_args.patch_fraction={self.cfg.patch_fraction:.3g} of {size}-px "
                f"views gives {side}-px seed patches; need >= 2 px (raise patch_fraction or "
                "data.image_size)")
        return side

    def seed_corners(self, unit: Tensor, index: Tensor, side: int) -> Tensor:
        """Top-left corners ``[B, 2]`` of the images' seed patches: drawn with probability
        proportional to the mean squared gradient magnitude of the ``side x side`` window, by a
        uniform keyed on ``patch_seed`` and the dataset index (the same at every visit)."""
        scores = xp.patch_scores(xp.gradient_energy(unit), side)
        u = keyed_uniform(seed_key(self.cfg.patch_seed, unit.device), index)
        return xp.sample_corners(scores, u)

    def draw(self, key: Tensor, index: Tensor, copies: int, chans: int) -> dict[str, Tensor]:
        """The transformation parameters of every copy, ``[copies * B]`` each (copy-major; the
        ``pca`` factors ``[copies * B, C]``), keyed by ``(key, dataset index, copy)``."""
        cfg, dev = self.cfg, index.device
        slots = torch.tensor([*_SLOTS.values(), *range(_PCA_SLOT, _PCA_SLOT + chans)], device=dev)
        u = keyed_uniform(key, index.view(1, -1, 1), torch.arange(copies, device=dev).view(-1, 1, 1),
                          slots.view(1, 1, -1)).flatten(0, 1)  # [K*B, P]
        col = {name: u[:, i] for i, name in enumerate(_SLOTS)}

        def sym(v: Tensor, amp: float) -> Tensor:
            return (2 * v - 1) * amp

        p = {"shift": torch.stack([sym(col["dy"], 1.0), sym(col["dx"], 1.0)], dim=1),
             "scale": xp.log_uniform(col["scale"], *cfg.scale),
             "angle": sym(col["angle"], math.radians(cfg.rotate)),
             "pca": xp.log_uniform(u[:, len(_SLOTS):], *cfg.pca_factor),
             "hue": sym(col["hue"], cfg.hue_shift)}
        for c in ("s", "v"):
            p[f"{c}_pow"] = xp.log_uniform(col[f"{c}_pow"], *cfg.sv_power)
            p[f"{c}_mul"] = xp.log_uniform(col[f"{c}_mul"], *cfg.sv_factor)
            p[f"{c}_add"] = sym(col[f"{c}_add"], cfg.sv_shift)
        return p

    def make_patches(self, x: Tensor, index: Tensor, key: Tensor, copies: int) -> Tensor:
        """The surrogate samples of normalised views ``x`` ``[B, C, H, W]``: ``copies``
        transformed copies of each image's seed patch, normalised, ``[copies * B, C, s, s]``
        copy-major (row ``k * B + b`` belongs to image ``b``)."""
        c = x.shape[1]
        mean, std = self.mean.to(x), self.std.to(x)
        unit = x * std + mean
        side = self.patch_side(x)
        corners = self.seed_corners(unit, index, side)
        p = self.draw(key, index, copies, c)
        shift = p["shift"] * (self.cfg.translate * side)
        out = xp.transform_patches(unit, corners, side, shift.to(x), p["scale"].to(x),
                                   p["angle"].to(x))
        pix_mean, axes = xp.pixel_principal_axes(unit)
        out = xp.pca_contrast(out, pix_mean, axes, p["pca"].to(x)).clamp_(0, 1)
        out = xp.hsv_transform(out, *(p[k].to(x) for k in ("s_pow", "s_mul", "s_add", "v_pow",
                                                             "v_mul", "v_add", "hue")))
        return (out - mean) / std

    def training_step(self, batch: Batch) -> StepOutput:
        """Cross entropy of the surrogate-class softmax over ``copies`` transformed patches of
        every image of ``batch.views[0]``, the class being the image's dataset index; logs
        ``exemplar_acc``, the pretext top-1 accuracy.

        Raises:
            DataError: for a missing view, seed patches under 2 px, or a dataset index outside
                ``[0, num_samples)``.
        """
        if not batch.views:
            raise DataError("exemplar needs one view per image, got none")
        x = batch.views[0]
        index = batch.index.to(x.device)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.cfg.num_samples):
            raise DataError(f"exemplar: dataset index {int(index.max())} is outside the "
                            f"{self.cfg.num_samples} surrogate classes (method_args.num_samples "
                            "must be the dataset size)")
        k = self.cfg.copies
        # the surrogate samples are data, built in float32 outside any autocast region
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            inputs = self.make_patches(x.float(), index, draw_key(x.device), k).to(x.dtype)
        feats = self.backbone(inputs)  # [K*B, F]
        logits = self.head(feats)
        target = index.repeat(k)
        loss = F.cross_entropy(logits, target)
        acc = (logits.detach().argmax(1) == target).float().mean()
        return StepOutput(loss=loss, logs={"exemplar_acc": acc},
                          embeddings=feats[: x.shape[0]].detach())

    @torch.no_grad()
    def picture_rows(self, x: Tensor, mean: Tensor, std: Tensor,
                     generator: torch.Generator) -> list[tuple[str, Tensor]]:
        """``selfsup visualize``: the seed patch of every image and three transformed copies,
        each shown at the image's size (nearest-neighbour)."""
        index = torch.arange(x.shape[0], device=x.device)  # the first images of the data
        unit = x * std.to(x) + mean.to(x)
        side = self.patch_side(x)
        corners = self.seed_corners(unit, index, side)
        seed = torch.stack([unit[b, :, int(r):int(r) + side, int(c):int(c) + side]
                            for b, (r, c) in enumerate(corners.tolist())])
        key = torch.randint(2**62, (), generator=generator).to(x.device)
        copies = self.make_patches(x, index, key, 3) * std.to(x) + mean.to(x)
        rows = [("seed patch", seed)] + [(f"transformed copy {i + 1}", part)
                                         for i, part in enumerate(copies.chunk(3))]

        def show(t: Tensor) -> Tensor:
            t = F.interpolate(t, size=tuple(x.shape[-2:]), mode="nearest").clamp(0, 1)
            return t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t[:, :3]

        return [(name, show(t)) for name, t in rows]
