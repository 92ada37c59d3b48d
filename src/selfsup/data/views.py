"""Multi-view augmentation of a batch (:class:`MultiView`), named view presets and the
deterministic evaluation transform.

A preset is a list of :class:`~selfsup.config.ViewConfig` groups; :class:`MultiView` draws
``group.n`` views from each group, group by group, with per-sample random parameters on the
batch's device, and normalises them with the dataset's mean/std. Presets scale the papers'
224-pixel recipes to the dataset's image size (see each preset's docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import registry
from selfsup.config import ViewConfig, replace
from selfsup.data import (
    mim_views,  # noqa: F401  (registers the masked-modeling presets)
    pretext_views,  # noqa: F401  (registers the pretext-task presets)
)
from selfsup.data.augment import Augment
from selfsup.types import ConfigError, DataError

_REF = 224  # the papers' image side; presets scale view sizes relative to it


def _stats(mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, channels: int) -> Tensor:
    """``[2, C]`` float tensor of (mean, std), validated against ``channels``."""
    m = torch.as_tensor(mean, dtype=torch.float32).flatten()
    s = torch.as_tensor(std, dtype=torch.float32).flatten()
    if m.numel() != channels or s.numel() != channels:
        raise ConfigError(
            f"data.mean/data.std must have one value per channel ({channels}), "
            f"got {m.numel()} and {s.numel()}"
        )
    if not bool((s > 0).all()):
        raise ConfigError(f"data.std must be positive, got {s.tolist()}")
    return torch.stack([m, s])


def _normalize(x: Tensor, scale: Tensor, shift: Tensor, inplace: bool = False) -> Tensor:
    """``(x - mean) / std`` as ``x * scale + shift`` with ``[C]`` scale/shift (a broadcast
    ``addcmul`` is several times slower on CPU); ``inplace`` overwrites ``x``."""
    c = x.shape[1]
    out = x.mul_(scale.to(x).view(1, c, 1, 1)) if inplace else x * scale.to(x).view(1, c, 1, 1)
    return out.add_(shift.to(x).view(1, c, 1, 1))


class MultiView(nn.Module):
    """Augmented, normalised views of a unit-range batch (no parameters, no state).

    Each group's ``n`` views are augmented together in one batched pass
    (:meth:`Augment.sample`), then normalised with ``(x - mean) / std``.

    Args:
        groups: the view groups (a preset from :func:`get_preset`).
        channels: image channel count.
        mean: per-channel mean in unit range.
        std: per-channel std in unit range (positive).

    Attributes:
        num_views: total number of views, ``sum(g.n for g in groups)``.

    Raises:
        ConfigError: for an empty ``groups``, an invalid group option, or mean/std of the wrong
            length or non-positive std.
    """

    scale: Tensor  # 1 / std, [C]
    shift: Tensor  # -mean / std, [C]

    def __init__(
        self,
        groups: list[ViewConfig],
        channels: int,
        mean: Sequence[float] | Tensor,
        std: Sequence[float] | Tensor,
    ) -> None:
        super().__init__()
        if not groups:
            raise ConfigError("a view preset needs at least one ViewConfig group")
        self.groups = list(groups)
        self._augments = [Augment(g, channels) for g in self.groups]  # typed view of the modules
        self.augments = nn.ModuleList(self._augments)
        self.channels = channels
        self.num_views = sum(g.n for g in self.groups)
        ms = _stats(mean, std, channels)
        # Non-persistent buffers: follow .to(device) but stay out of state_dict().
        self.register_buffer("scale", 1.0 / ms[1], persistent=False)
        self.register_buffer("shift", -ms[0] / ms[1], persistent=False)

    def forward(self, x_unit: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Views and crop boxes of ``x_unit``.

        Args:
            x_unit: ``[B, C, H, W]`` float images in [0, 1].

        Returns:
            ``(views, boxes)``: ``num_views`` normalised views ``[B, C, g.size, g.size]`` and
            their crop boxes ``[B, 4]`` ``(y0, x0, y1, x1)`` in normalised source coordinates,
            group by group in the order of ``groups``.

        Raises:
            DataError: if ``x_unit`` is not a float ``[B, C, H, W]`` batch with ``channels``
                channels.
        """
        views: list[Tensor] = []
        boxes: list[Tensor] = []
        for aug, g in zip(self._augments, self.groups):
            v, b = aug.sample(x_unit, g.n)  # [n*B, C, S, S], view-major
            views.extend(_normalize(v, self.scale, self.shift, inplace=True).chunk(g.n))
            boxes.extend(b.chunk(g.n))
        return views, boxes


def eval_transform(
    x_unit: Tensor, size: int, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor
) -> Tensor:
    """Deterministic evaluation input: resize (if needed), centre-crop, normalise.

    A batch already ``size x size`` is only normalised. Otherwise the shorter side is resized to
    ``size`` (bilinear, antialiased) and the centre ``size x size`` is kept, as in the usual
    ``Resize(size) + CenterCrop(size)`` evaluation pipeline.

    Args:
        x_unit: ``[B, C, H, W]`` float images in [0, 1].
        size: output side length.
        mean: per-channel mean; std: per-channel std (unit range).

    Returns:
        ``[B, C, size, size]`` normalised images.

    Raises:
        DataError: if ``x_unit`` is not a float ``[B, C, H, W]`` batch.
        ConfigError: if ``size`` < 1 or mean/std do not match the channel count.
    """
    if x_unit.dim() != 4 or not x_unit.is_floating_point():
        raise DataError(
            f"eval_transform: expected a float batch [B, C, H, W], got "
            f"{tuple(x_unit.shape)} {x_unit.dtype}"
        )
    if size < 1:
        raise ConfigError(f"data.image_size must be >= 1, got {size}")
    ms = _stats(mean, std, x_unit.shape[1])
    h, w = x_unit.shape[-2:]
    if (h, w) != (size, size):
        nh, nw = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
        if (nh, nw) != (h, w):
            x_unit = F.interpolate(
                x_unit, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
            )
        top, left = (nh - size) // 2, (nw - size) // 2
        x_unit = x_unit[:, :, top : top + size, left : left + size]
    return _normalize(x_unit, 1.0 / ms[1], -ms[0] / ms[1])


def get_preset(name: str, image_size: int, **overrides: Any) -> list[ViewConfig]:
    """The view groups of preset ``name`` for ``image_size`` images, with ``overrides``.

    Args:
        name: a registered preset (``selfsup list presets``).
        image_size: the square side of the encoder's input.
        **overrides: :class:`~selfsup.config.ViewConfig` fields set on every group (``None``
            values are ignored), e.g. ``blur_p=0``.

    Raises:
        UnknownNameError: for an unknown preset (lists the valid ones).
        ConfigError: for ``image_size`` < 1 or an unknown/ill-typed override.
    """
    entry = registry.get("preset", name)
    if image_size < 1:
        raise ConfigError(f"data.image_size must be >= 1, got {image_size}")
    groups: list[ViewConfig] = entry.obj(image_size)
    return [replace(g, **overrides) for g in groups]


# --------------------------------------------------------------------------- presets


def _local_size(image_size: int) -> int:
    """DINO's local crop side: ``image_size * 96 / 224`` rounded to the nearest multiple of 8
    below 128 px and of 16 from 128 px (at least one multiple), so local crops tile into whole
    patches of the ViT's default patch sizes (4 or 8 below 128 px, 16 from 128 px)."""
    m = 8 if image_size < 128 else 16
    return max(m, m * round(image_size * 96 / _REF / m))


@registry.register(
    "preset",
    "simclr",
    description="two symmetric views: crop, flip, strong colour jitter, grayscale, blur",
    reference="Chen et al. 2020, A Simple Framework for Contrastive Learning (SimCLR), app. A",
)
def simclr_views(image_size: int) -> list[ViewConfig]:
    """SimCLR appendix A: one group of 2 views.

    Crop scale (0.08, 1), flip 0.5, colour jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2,
    Gaussian blur p 0.5. Scaling rule: views have the image's size; for images <= 64 px blur is
    off and the crop scale stays (0.08, 1), as in the paper's CIFAR-10 experiments. Blur
    kernel = 10% of the view side (odd, >= 3); sigma U(0.1, 2.0) * size / 224 pixels (applied by
    :class:`~selfsup.data.augment.Augment`).
    """
    blur = 0.0 if image_size <= 64 else 0.5
    return [ViewConfig(n=2, size=image_size, blur_p=blur)]


@registry.register(
    "preset",
    "moco_v1",
    description="two symmetric views: crop 0.2-1, flip, colour jitter 0.4 always, grayscale",
    reference="He et al. 2020, Momentum Contrast (MoCo v1), sec. 4.1; InstDisc's augmentation",
)
def moco_v1_views(image_size: int) -> list[ViewConfig]:
    """MoCo v1 (sec. 4.1; facebookresearch/moco ``main_moco.py``, the augmentation without
    ``--aug-plus``, "the same as InstDisc"): one group of 2 views.

    Crop scale (0.2, 1), flip 0.5, colour jitter (0.4, 0.4, 0.4, 0.4) on every view (a bare
    ``ColorJitter``, no ``RandomApply``: ``jitter_p`` 1), grayscale 0.2, no blur. The reference
    applies grayscale before the jitter; :class:`~selfsup.data.augment.Augment` has one fixed
    order (jitter, then grayscale), so a grayscale view here is never re-coloured by the jitter's
    brightness/contrast afterwards (saturation and hue leave a grey image unchanged either way).
    Scaling rule: views have the image's size.
    """
    return [ViewConfig(n=2, size=image_size, scale=(0.2, 1.0), jitter_p=1.0, brightness=0.4,
                       contrast=0.4, saturation=0.4, hue=0.4, grayscale_p=0.2, blur_p=0.0)]


@registry.register(
    "preset",
    "moco_v2",
    description="two symmetric views: crop 0.2-1, flip, colour jitter 0.4 (p 0.8), grayscale, "
    "blur",
    reference="Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning (MoCo "
    "v2), sec. 2; also SimSiam's",
)
def moco_v2_views(image_size: int) -> list[ViewConfig]:
    """MoCo v2 (sec. 2; facebookresearch/moco ``main_moco.py`` with ``--aug-plus``, and
    facebookresearch/simsiam ``main_simsiam.py``): one group of 2 views.

    Crop scale (0.2, 1), flip 0.5, colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8 ("not
    strengthened"), grayscale 0.2, Gaussian blur p 0.5 with sigma U(0.1, 2.0). Scaling rule:
    views have the image's size; blur kernel = 10% of the view side (odd, >= 3) and sigma
    U(0.1, 2.0) * size / 224 pixels, so blur stays on (the papers give no small-image recipe)
    but is nearly the identity on 32-pixel images.
    """
    return [ViewConfig(n=2, size=image_size, scale=(0.2, 1.0), jitter_p=0.8, brightness=0.4,
                       contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.2, blur_p=0.5)]


# BYOL table 6 colour settings, shared by BYOL's views and all DINO crops.
_BYOL_COLOR: dict[str, Any] = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                                   jitter_p=0.8, grayscale_p=0.2)  # fmt: skip


def _byol_pair(image_size: int, scale: tuple[float, float]) -> list[ViewConfig]:
    common: dict[str, Any] = dict(n=1, size=image_size, scale=scale, **_BYOL_COLOR)
    return [
        ViewConfig(**common, blur_p=1.0, solarize_p=0.0),
        ViewConfig(**common, blur_p=0.1, solarize_p=0.2),
    ]


@registry.register(
    "preset",
    "byol",
    description="two asymmetric views: view 1 always blurred, view 2 rarely blurred + solarised",
    reference="Grill et al. 2020, Bootstrap Your Own Latent (BYOL), table 6",
)
def byol_views(image_size: int) -> list[ViewConfig]:
    """BYOL table 6: two groups of 1 view each.

    Both: crop scale (0.08, 1), flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
    grayscale 0.2. View 1: blur p 1.0, no solarisation; view 2: blur p 0.1, solarise p 0.2.
    Scaling rule: views have the image's size; blur kernel = 10% of the view side (odd, >= 3)
    and sigma U(0.1, 2.0) * size / 224 pixels, so blur is nearly the identity on tiny images.
    """
    return _byol_pair(image_size, (0.08, 1.0))


@registry.register(
    "preset",
    "dino",
    description="multi-crop: 2 asymmetric global crops + 6 small local crops",
    reference="Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers",
)
def dino_views(image_size: int) -> list[ViewConfig]:
    """DINO multi-crop (Caron et al. 2021, sec. 3 and appendix): 2 global + 6 local crops.

    Global crops: scale (0.4, 1), BYOL's colour/grayscale, view 1 blur p 1.0, view 2 blur 0.1 and
    solarise 0.2 (two groups of one view). Local crops: 6 views, scale (0.05, 0.4), blur p 0.5.
    Scaling rule: global size = image_size; local size = image_size * 96 / 224 rounded to a
    multiple of the ViT's default patch size range (8 below 128 px, 16 from 128 px; at least one
    multiple): 96 px at 224, 24 at 64, 16 at 32, 8 at 16, so a ``vit_*`` backbone sees whole
    patches in every crop. Blur kernel = 10% of each view's side (odd, >= 3); sigma is
    U(0.1, 2.0) * image_size / 224 pixels in every view (DINO blurs local crops with the same
    pixel sigma as global ones), so the local group stores ``blur_sigma`` multiplied by
    ``image_size / local_size`` to undo :class:`~selfsup.data.augment.Augment`'s scaling by its
    smaller view size.
    """
    local = _local_size(image_size)
    k = image_size / local
    return [
        *_byol_pair(image_size, (0.4, 1.0)),
        ViewConfig(n=6, size=local, scale=(0.05, 0.4), **_BYOL_COLOR, blur_p=0.5,
                   blur_sigma=(0.1 * k, 2.0 * k)),
    ]


@registry.register(
    "preset",
    "ibot",
    description="multi-crop: 2 asymmetric global crops (0.25-1) + 10 local crops (0.05-0.25)",
    reference="Zhou et al. 2022, iBOT: Image BERT Pre-Training with Online Tokenizer; "
    "bytedance/ibot README ViT-S/16 command",
)
def ibot_views(image_size: int) -> list[ViewConfig]:
    """iBOT multi-crop (bytedance/ibot ``DataAugmentationiBOT``, DINO's augmentation, with the
    README's ViT-S/16 arguments ``--global_crops_scale 0.25 1 --local_crops_number 10
    --local_crops_scale 0.05 0.25``): the ``dino`` preset's groups and scaling rule with global
    crops at scale (0.25, 1) and 10 local crops at (0.05, 0.25)."""
    local = dino_views(image_size)[2]
    return [*_byol_pair(image_size, (0.25, 1.0)), replace(local, n=10, scale=(0.05, 0.25))]


@registry.register(
    "preset",
    "swav",
    description="multi-crop: 2 global crops + 6 small crops, SimCLR colour distortion",
    reference="Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting "
    "Cluster Assignments (SwAV), sec. 3.2 and appendix A",
)
def swav_views(image_size: int) -> list[ViewConfig]:
    """SwAV multi-crop (sec. 3.2, ``main_swav.py``): 2 crops at scale (0.14, 1) + 6 at (0.05, 0.14).

    Every crop: flip 0.5, SimCLR colour jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2,
    Gaussian blur p 0.5. Scaling rule: global size = image_size; small size = the ``dino``
    preset's local crop size (96 px at 224). As in the ``dino`` preset, the small group's
    ``blur_sigma`` is multiplied by ``image_size / small_size`` so every crop is blurred with the
    same pixel sigma, U(0.1, 2.0) * image_size / 224.
    """
    local = _local_size(image_size)
    k = image_size / local
    return [
        ViewConfig(n=2, size=image_size, scale=(0.14, 1.0)),
        ViewConfig(n=6, size=local, scale=(0.05, 0.14), blur_sigma=(0.1 * k, 2.0 * k)),
    ]


@registry.register(
    "preset",
    "deepcluster",
    description="one view: random resized crop and horizontal flip, no colour distortion",
    reference="Caron et al. 2018, Deep Clustering for Unsupervised Learning of Visual Features, "
    "sec. 4.1",
)
def deepcluster_views(image_size: int) -> list[ViewConfig]:
    """DeepCluster (sec. 4.1): one view per image, a random resized crop (scale (0.08, 1)) and a
    horizontal flip (p 0.5); no colour jitter, grayscale nor blur (the paper removes colour with
    a fixed Sobel filter instead, which this library does not apply). The view has the image's
    size."""
    return [ViewConfig(n=1, size=image_size, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)]
