"""Colorization: predict the ab colour channels of CIE Lab from the lightness L, as a per-pixel
classification over quantised ab bins with class rebalancing.

Zhang, Isola & Efros 2016, "Colorful Image Colorization" (ECCV). Reference: richzhang/colorization
(caffe branch) ``models/colorization_train_val_v2.prototxt`` (the network and loss),
``resources/caffe_traininglayers.py`` (soft encoding, prior boost, grey mask) and
``train/solver.prototxt`` (optimiser).

- Task (sec. 2): the view is converted to Lab (the normalisation the trainer applied is undone
  first, with ``input_mean``/``input_std``, which the trainer fills in); the network sees ``L``
  only, centred as the prototxt's ``data_l_meansub`` (``L - 50``) and divided by 50 so the
  backbone gets the [-1, 1] range its initialisation expects (the reference instead relies on a
  data-dependent k-means initialisation, ``init_v2.caffemodel``); ``ab`` is the target.
- Output space (sec. 2.1): the ab plane quantised with grid size 10, keeping the in-gamut bins
  (:func:`selfsup.data.color.srgb_ab_bins`, computed from the sRGB gamut: 261 bins, where the
  paper's file has 313; see there why the difference does not change any hard target).
- Network: the backbone (copied for 1 input channel, :func:`~selfsup.nn.channels.with_in_chans`)
  plays conv1-conv7 (stride 8 in the reference, as ``small_cnn`` and the CIFAR-stem ResNets);
  :func:`conv8_head` is conv8 (a 4x4 stride-2 transposed convolution and two 3x3 convolutions,
  256 wide, ReLU) and the 1x1 convolution to the bins (``conv8_313``), on the backbone's spatial
  map (``forward_features``). The prediction is at 1/4 of the view's resolution, as in the paper
  (44 x 44 from 176-px crops); on small images that is tiny: 16-px images give 11-px crops, a 2 x 2
  map and 4 x 4 predictions, 32-px images 22-px crops, 3 x 3 and 6 x 6.
  ``decoder_layers=0`` puts the 1x1 classifier straight on the backbone's map.
- Targets (sec. 2.1): the ab map is brought to the prediction's resolution by keeping one pixel
  per cell (``target_downsample="subsample"``: the prototxt's fixed 1x1 stride-4 convolution
  ``data_ab_ss``; ``"area"`` averages instead) and soft-encoded over its 5 nearest bins with a
  Gaussian kernel of sigma 5 (:func:`~selfsup.losses.colorization.soft_encode`; the released
  layer uses 10 neighbours).
- Class rebalancing (sec. 2.2): every pixel's loss is weighted by the weight of its nearest bin,
  ``w ~ ((1 - lambda) p~ + lambda / Q) ^ -1`` with ``E_p~[w] = 1`` and lambda 0.5, where ``p~`` is
  the empirical distribution of the quantised colours smoothed with a Gaussian (sigma 5). The
  paper takes ``p`` from all of ImageNet before training; here it is gathered from the user's
  training data during the first epoch (:class:`~selfsup.nn.ab_prior.ABPrior`: the nearest bins
  of the target pixels of the first ``num_samples`` images, which the trainer sets to the
  dataset size, summed over ranks; then frozen). Every step uses the prior counted so far
  (including the current batch, so a target's bin never has an empty prior). The counts are
  buffers, so checkpoints and ``--resume`` carry them.
- Grey images (``NonGrayMaskLayer``): an image whose target ab never exceeds 5 in absolute value
  gets no loss (and does not enter the prior); ``gray_threshold <= 0`` keeps every image.
- Loss (eq. 2): the rebalanced multinomial cross-entropy summed over the prediction's pixels and
  averaged over the images (:func:`~selfsup.losses.colorization.rebalanced_cross_entropy`).
- Pictures (sec. 2.3): :meth:`Colorization.picture_rows` decodes the annealed mean (T = 0.38) of
  the predicted distribution, upsampled bilinearly to the image and joined with its own L.
- Optimiser (``train/solver.prototxt``, sec. 3): Adam with betas (0.9, 0.99), lr 3e-5 at batch
  40 (not scaled with the batch), L2 weight decay 1e-3 on every parameter (caffe's), step decay x
  0.1 halfway through 450k iterations; here cosine from 3e-5 to 3e-6 (the reference's two lrs),
  no warm-up. The reference lr suits its k-means-initialised VGG-style network and 450k steps;
  short runs from a random init need a larger one (the learning test uses 3e-3).
- Views (``colorization`` preset): the prototxt's random 176-px crops of 256-px images with
  mirroring, no colour augmentation, at native scale: a square crop of 11/16 of the side.
- Evaluation: the encoder (``self.backbone``, :class:`LightnessEncoder`) takes the dataset's
  normalised RGB images and converts them to L itself, so kNN / linear probes and ``export``
  work on RGB data. RGB only: grey data raises a ConfigError (there is no colour to predict).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.color import lab_to_rgb, rgb_to_lab, srgb_ab_bins
from selfsup.losses.colorization import (
    annealed_mean,
    mode_ab,
    rebalance_weights,
    rebalanced_cross_entropy,
    smooth_prior,
    soft_cross_entropy,
    soft_encode,
)
from selfsup.methods.base import Method
from selfsup.nn.ab_prior import ABPrior
from selfsup.nn.channels import with_in_chans
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

DOWNSAMPLES = ("subsample", "area")


@dataclass
class ColorizationConfig:
    """Colorization hyper-parameters; paper defaults (``selfsup.methods.colorization.Config``)."""

    grid: float = 10.0  # ab bin size (sec. 2.1, "grid size 10"; fig. 3: the in-gamut bins)
    neighbors: int = 5  # nearest bins of the soft encoding (sec. 2.1; released layer: 10)
    sigma: float = 5.0  # Gaussian kernel of the soft encoding, ab units (sec. 2.1)
    rebalance: bool = True  # class rebalancing (sec. 2.2); False: release_v2_norebal's loss
    rebalance_lambda: float = 0.5  # lambda mixing the prior with the uniform (sec. 2.2, eq. 4)
    prior_sigma: float = 5.0  # Gaussian smoothing of the empirical prior (sec. 2.2)
    # images the prior is gathered from, then frozen: one epoch (the trainer sets the dataset
    # size; the paper's prior is over the full ImageNet training set, 1.28M images)
    num_samples: int = 1281167
    temperature: float = 0.38  # annealed-mean temperature T of the pictures (sec. 2.3, eq. 5)
    # NonGrayMaskLayer: images whose target |a|, |b| never exceed this get no loss; <= 0: off
    gray_threshold: float = 5.0
    decoder_dim: int = 256  # conv8 width (prototxt conv8_1-conv8_3: 256 channels)
    # conv8 layers: a 4x4 stride-2 transposed conv (2x upsampling), then 3x3 convs (prototxt: 3)
    decoder_layers: int = 3
    # ab target at the prediction's size: subsample (prototxt data_ab_ss, one pixel per cell)
    # | area (average over each cell, the prototxt's commented-out pooling)
    target_downsample: str = "subsample"
    # per-channel mean/std the inputs were normalised with (set by the trainer; undone for Lab)
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)


Config = ColorizationConfig


def conv8_head(in_dim: int, width: int, layers: int, num_bins: int) -> nn.Sequential:
    """conv8 and the bin classifier: ``[B, in_dim, h, w] -> [B, num_bins, 2h, 2w]`` (``layers``
    >= 1: ConvTranspose 4x4 stride 2 + ReLU, then ``layers - 1`` Conv 3x3 + ReLU, all ``width``
    wide, then a 1x1 conv), or a 1x1 conv at ``[h, w]`` for ``layers = 0``."""
    mods: list[nn.Module] = []
    dim = in_dim
    for i in range(layers):
        mods.append(nn.ConvTranspose2d(dim, width, 4, stride=2, padding=1) if i == 0
                    else nn.Conv2d(dim, width, 3, padding=1))
        mods.append(nn.ReLU(inplace=True))
        dim = width
    mods.append(nn.Conv2d(dim, num_bins, 1))
    return nn.Sequential(*mods)


class LightnessEncoder(nn.Module):
    """Normalised RGB images ``[B, 3, H, W]`` -> features of their lightness: the evaluated and
    exported encoder.

    Attributes:
        net: the trained backbone, ``in_chans`` 1, fed ``(L - 50) / 50``.
        num_features: the backbone's; ``in_chans``: 3, what the encoder is fed.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        c = int(getattr(backbone, "in_chans", 0))
        if c != 3:
            raise ConfigError(f"colorization predicts the colour (ab) of RGB images from their "
                              f"lightness and needs 3-channel data, got {c} channel(s)")
        for key, values in (("input_mean", mean), ("input_std", std)):
            if values and len(values) != 3:
                raise ConfigError(f"method_args.{key} needs 3 values, got {values}")
        self.net = with_in_chans(backbone, 1)
        self.in_chans = 3
        self.num_features = int(getattr(self.net, "num_features", 0))
        self.image_size = getattr(backbone, "image_size", None)
        self.register_buffer("mean", torch.tensor(mean or [0.0] * 3).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0] * 3).view(1, 3, 1, 1),
                             persistent=False)

    def lab(self, x: Tensor) -> Tensor:
        """Lab ``[B, 3, H, W]`` (float32, outside autocast) of normalised RGB images ``x``.

        Raises:
            DataError: if ``x`` is not ``[B, 3, H, W]``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise DataError(f"colorization encoder expects RGB images [B, 3, H, W], got "
                            f"{tuple(x.shape)}")
        unit = x.float() * self.std + self.mean
        if torch.is_autocast_enabled(x.device.type):  # keep the conversion in float32
            with torch.autocast(device_type=x.device.type, enabled=False):
                return rgb_to_lab(unit)
        return rgb_to_lab(unit)  # no autocast context: torch.export traces this path

    @staticmethod
    def lightness(lab: Tensor) -> Tensor:
        """The network's input ``(L - 50) / 50`` ``[B, 1, H, W]`` of a Lab batch."""
        return (lab[:, :1] - 50.0) / 50.0

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(self.lightness(self.lab(x)))
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """The backbone's spatial map ``[B, D, h, w]`` of the images' lightness."""
        out: Tensor = self.net.forward_features(self.lightness(self.lab(x)))  # type: ignore[operator]
        return out


@register(
    "method",
    "colorization",
    description="predict the ab colours of Lab from L: per-pixel classification over quantised "
    "in-gamut ab bins, soft-encoded targets, class-rebalanced cross-entropy (RGB only)",
    reference="Zhang, Isola & Efros 2016, Colorful Image Colorization",
)
class Colorization(Method):
    """Colorization around any backbone with ``num_features``, ``in_chans`` 3 and a spatial map
    (``forward_features -> [B, num_features, h, w]``: small_cnn, ResNets).

    Attributes:
        backbone: :class:`LightnessEncoder` (evaluated and exported).
        head: :func:`conv8_head`, the backbone's map -> ``[B, Q, h', w']`` bin scores.
        prior: :class:`~selfsup.nn.ab_prior.ABPrior`, the colour counts of the first epoch.
        bins: ``[Q, 2]`` ab bin centres (a non-persistent buffer, rebuilt from ``grid``).

    Raises:
        ConfigError: for grey (or other non-RGB) data, a backbone without a spatial map or an
            invalid Config value (naming ``method_args.<field>``).
    """

    Config: ClassVar[type] = ColorizationConfig
    default_views: ClassVar[str] = "colorization"
    # train/solver.prototxt: Adam(momentum 0.9, momentum2 0.99), base_lr 3e-5 at batch 40 (not
    # scaled), weight_decay 1e-3 (L2 on every parameter, caffe's decay_mult 1), step x0.1 at
    # 225k of ~450k iterations: cosine from 3e-5 to 3e-6 here, no warm-up, no clipping
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adam", "lr": 3e-5, "lr_scaling": "none", "betas": (0.9, 0.99),
        "weight_decay": 1e-3, "decay_norm_bias": True, "warmup_epochs": 0, "min_lr_ratio": 0.1,
        "clip_grad": 0.0,
    }
    input_channels: ClassVar[tuple[int, ...]] = (3,)  # RGB only (grey data: ConfigError)

    bins: Tensor

    def __init__(self, backbone: nn.Module, cfg: ColorizationConfig) -> None:
        super().__init__(backbone, cfg)
        self.feature_dim()
        if not callable(getattr(backbone, "forward_features", None)):
            raise ConfigError(f"colorization needs a backbone with a spatial feature map "
                              f"(forward_features -> [B, D, h, w], e.g. small_cnn or resnet18), "
                              f"got {type(backbone).__name__}")
        self._check(cfg)
        self.backbone = self.build_encoder(backbone, cfg)
        bins = srgb_ab_bins(cfg.grid)
        if not 1 <= cfg.neighbors <= len(bins):
            raise ConfigError(f"method_args.neighbors must be in [1, {len(bins)}] (the bins of "
                              f"grid {cfg.grid}), got {cfg.neighbors}")
        self.register_buffer("bins", bins, persistent=False)
        enc = self.backbone
        assert isinstance(enc, LightnessEncoder)
        self.head = conv8_head(enc.num_features, cfg.decoder_dim, cfg.decoder_layers, len(bins))
        self.prior = ABPrior(len(bins), cfg.num_samples)

    @staticmethod
    def _check(cfg: ColorizationConfig) -> None:
        Method.require_positive(cfg, ("neighbors", "num_samples", "decoder_dim"))
        checks = {"grid": 0 < cfg.grid <= 100, "sigma": cfg.sigma > 0,
                  "prior_sigma": cfg.prior_sigma >= 0,
                  "rebalance_lambda": 0 < cfg.rebalance_lambda <= 1,
                  "temperature": cfg.temperature > 0, "decoder_layers": cfg.decoder_layers >= 0,
                  "target_downsample": cfg.target_downsample in DOWNSAMPLES}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"method_args.{key}={getattr(cfg, key)!r} is invalid for colorization (grid "
                    "in (0, 100], sigma > 0, prior_sigma >= 0, rebalance_lambda in (0, 1], "
                    "temperature > 0, decoder_layers >= 0, target_downsample subsample|area)")

    @classmethod
    def build_encoder(cls, backbone: nn.Module, cfg: Any) -> LightnessEncoder:
        """The evaluated encoder for ``backbone`` (also used to rebuild it from a checkpoint or
        an export): a 1-channel copy of it behind the RGB -> L conversion.

        Raises:
            ConfigError: for a backbone that does not take 3 channels, or input_mean/input_std
                without 3 values.
        """
        return LightnessEncoder(backbone, list(cfg.input_mean), list(cfg.input_std))

    def _encoder(self) -> LightnessEncoder:
        enc = self.backbone
        assert isinstance(enc, LightnessEncoder)
        return enc

    def logits(self, lab: Tensor) -> tuple[Tensor, Tensor]:
        """Bin scores ``[B, Q, h, w]`` and the backbone's map ``[B, D, h0, w0]`` of a Lab batch.

        Raises:
            ConfigError: if the backbone's map is not ``[B, num_features, h0, w0]``.
        """
        enc = self._encoder()
        feats = enc.net.forward_features(enc.lightness(lab))  # type: ignore[operator]
        if feats.dim() != 4 or feats.shape[1] != enc.num_features:
            raise ConfigError(f"colorization needs the backbone's spatial map [B, "
                              f"{enc.num_features}, h, w] from forward_features, got "
                              f"{tuple(feats.shape)}")
        return self.head(feats), feats

    def targets(self, ab: Tensor, size: tuple[int, int]) -> Tensor:
        """The ab map ``[B, 2, H, W]`` at the prediction's ``size`` ``(h, w)``.

        Raises:
            DataError: if the prediction is larger than the view.
        """
        h, w = size
        if h > ab.shape[2] or w > ab.shape[3]:
            raise DataError(f"colorization: {ab.shape[2]}x{ab.shape[3]} views give a {h}x{w} "
                            "prediction, larger than the view; use larger images or "
                            "method_args.decoder_layers=0")
        if self.cfg.target_downsample == "area":
            return F.adaptive_avg_pool2d(ab, size)
        return F.interpolate(ab, size=size, mode="nearest")  # integer ratios: one pixel per cell

    def pixel_weights(self, nearest: Tensor) -> Tensor:
        """The rebalancing weight ``[B, h, w]`` of every pixel's nearest bin (eq. 3), from the
        prior counted so far; ones without rebalancing."""
        if not self.cfg.rebalance:
            return torch.ones(nearest.shape, device=nearest.device)
        prior = smooth_prior(self.prior.counts, self.bins, self.cfg.prior_sigma)
        w = rebalance_weights(prior, self.cfg.rebalance_lambda).float()
        return w[nearest]

    def training_step(self, batch: Batch) -> StepOutput:
        """Rebalanced cross-entropy of the ab bins of ``batch.views[0]`` (``[B, 3, H, W]``,
        normalised RGB) predicted from its lightness; counts the prior while it gathers.

        Raises:
            DataError: if there is no view, the view is not RGB, or it is too small.
        """
        if not batch.views:
            raise DataError("colorization needs one view per image, got none")
        cfg = self.cfg
        lab = self._encoder().lab(batch.views[0])  # [B, 3, H, W] float32
        logits, feats = self.logits(lab)  # [B, Q, h, w]
        b, _, h, w = logits.shape
        with torch.no_grad():
            ab = self.targets(lab[:, 1:], (h, w))  # [B, 2, h, w]
            flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
            index, weight = soft_encode(flat, self.bins, cfg.neighbors, cfg.sigma)  # [P, k]
            index, weight = index.view(b, h, w, -1), weight.view(b, h, w, -1)
            nearest = index[..., 0]  # the hard quantisation q* = argmax_q Z_q, [B, h, w]
            if cfg.gray_threshold > 0:
                colourful = (ab.abs() > cfg.gray_threshold).flatten(1).any(1)  # [B]
            else:
                colourful = torch.ones(b, dtype=torch.bool, device=ab.device)
            if self.training:
                self.prior.update(nearest, colourful)
            v = self.pixel_weights(nearest) * colourful.view(b, 1, 1)
        loss = rebalanced_cross_entropy(logits, index, weight, v)
        with torch.no_grad():
            ce = soft_cross_entropy(logits.detach(), index, weight).mean()
        logs: dict[str, Tensor | float] = {"ce": ce, "gray_frac": 1.0 - colourful.float().mean()}
        return StepOutput(loss=loss, logs=logs, embeddings=feats.mean(dim=(2, 3)).detach())

    @torch.no_grad()
    def colorize(self, x: Tensor, temperature: float | None = None) -> tuple[Tensor, Tensor]:
        """Lab ``[B, 3, H, W]`` of normalised RGB images ``x`` with their own L and the predicted
        ab: the annealed mean at ``temperature`` (default ``cfg.temperature``) and the mode,
        upsampled bilinearly to ``H x W``; returns ``(annealed, mode)``."""
        lab = self._encoder().lab(x)
        logits, _ = self.logits(lab)
        size = (x.shape[2], x.shape[3])
        out = []
        for ab in (annealed_mean(logits, self.bins, temperature or self.cfg.temperature),
                   mode_ab(logits, self.bins)):
            up = F.interpolate(ab, size=size, mode="bilinear", align_corners=False)
            out.append(torch.cat([lab[:, :1], up], dim=1))
        return out[0], out[1]

    @torch.no_grad()
    def picture_rows(self, x: Tensor, mean: Tensor, std: Tensor,
                     generator: torch.Generator | None = None) -> list[tuple[str, Tensor]]:
        """``selfsup visualize`` rows under the original (unit-range RGB ``[B, 3, H, W]``): the
        grey input (L with a = b = 0), the annealed-mean colorization (T = ``temperature``) and
        the mode (most probable bin per pixel). ``x`` is normalised with ``mean``/``std``
        ``[1, 3, 1, 1]``; no randomness (``generator`` unused)."""
        x = x.to(self.bins.device)
        unit = x * std.to(x) + mean.to(x)
        enc = self._encoder()
        z = (unit - enc.mean) / enc.std  # as the encoder's own normalisation
        annealed, mode = self.colorize(z)
        grey = annealed.clone()
        grey[:, 1:] = 0.0
        t = self.cfg.temperature
        return [("input L", lab_to_rgb(grey)), (f"annealed mean T={t:g}", lab_to_rgb(annealed)),
                ("mode", lab_to_rgb(mode))]
