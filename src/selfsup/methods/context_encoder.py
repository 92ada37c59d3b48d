"""Context encoder: inpaint a masked region of the image from its context.

Pathak, Krahenbuhl, Donahue, Darrell & Efros 2016, "Context Encoders: Feature Learning by
Inpainting" (CVPR). Reference code: pathak22/context-encoder ``train.lua`` (central region) and
``train_random.lua`` (random region), README's training commands (``overlapPred=4 wtl2=0.999``).

- Region masks (sec. 3.3), drawn on the device (or passed in ``Batch.masks``, see
  :meth:`ContextEncoder.sample_masks`): ``mask="center"`` (the default; train.lua): the central
  square of side ``hole_fraction`` (1/2) of the image, 1/4 of its area (64 of 128 px), whose
  inner part, ``overlap`` px in from every side, is removed from the input;
  ``"random_block"``: up to ``coverage`` (1/4) of the image removed as the union of smaller,
  possibly overlapping squares (side: half the central square's), placed uniformly at random and
  added while the union stays within the coverage; ``"random_region"`` (train_random.lua):
  arbitrary shapes from a smooth random pattern, uniform noise on a grid of ``0.06 x 128``
  cells across the image upsampled bicubically and thresholded at ``coverage`` (the code's
  ``res``/``density``), a draw accepted when its area is within 20-30% (else the closest of 8
  draws). The reference draws one random-region mask per batch; here every sample has its own.
  The removed pixels are filled with the dataset mean (the reference's mean pixel; 0 in the
  normalised units the views arrive in).
- Encoder (sec. 3.1): the backbone's spatial map (``forward_features`` ``[B, D, h, w]``; a
  backbone without such a map gives its pooled features as a 1x1 map, where the channel-wise
  layer is a per-channel affine map), then the **channel-wise fully
  connected** layer and a stride-1 convolution across channels
  (:class:`~selfsup.nn.conv_decoder.ChannelWiseFC`).
- Decoder (sec. 3.1, train.lua ``netG``): up-convolutions to the missing region
  (:class:`~selfsup.nn.conv_decoder.ConvDecoder`): the central square (``"center"``, the code's
  ``fineSize/2`` output) or the whole image (random masks, as train_random.lua). Outputs are
  normalised pixels (linear, not the reference's ``Tanh`` on [-1, 1] images).
- Reconstruction loss (sec. 3.2 eq. 1 with the code's overlap weighting; train.lua
  ``wtl2Matrix``): L2 on the predicted region, weight 1 in the removed part and
  ``overlap_weight`` (10) on the ``overlap`` px band of context around it (the central square's
  border, which the input shows), 0 elsewhere, averaged over all elements of the predicted region
  (``MSECriterion``; :func:`~selfsup.losses.generative.weighted_l2`). train_random.lua instead
  scores the whole image uniformly; here a random hole gets the centre's rule (hole 1, band 10).
- Adversarial term (sec. 3.2 eq. 2-3; optional, ``adversarial=true``): a DCGAN discriminator
  (conv 4x4 stride 2, BN, LeakyReLU 0.2, down to at most 4x4, then a convolution over the map to
  one logit; the code's ``netD`` with ``conditionAdv=0``) on the predicted region, real vs
  inpainted; ``L = lambda_rec L_rec + lambda_adv L_adv`` with 0.999 / 0.001 (sec. 4). The paper's
  feature-learning encoders are trained **without** it (sec. 5.2: the adversarial loss did not
  converge with AlexNet; the README's released features are "trained with reconstruction loss"),
  so it is off by default. On this library's single optimiser the two players are separated in
  the graph: the generator's term ``BCE(D(G(x)), 1)`` runs the discriminator through
  ``torch.func.functional_call`` with detached parameters (and copies of its buffers), the
  discriminator's ``BCE(D(x), 1) + BCE(D(G(x).detach()), 0)`` sees detached fakes, so each loss
  moves only its own player; the step loss is their sum.
- Sizes (scaled from 128 px): the overlap is ``max(1, round(overlap_pred S / 128))`` px for
  ``S`` px images (4 px at 128, 1 px at 16-32); the hole's side is ``round(hole_fraction S)``.
- Optimiser (train.lua): Adam, beta1 0.5, constant lr, no weight decay, batch 64; lr 2e-3, the
  generator's (the code runs the generator at 10x the discriminator's 2e-4 when both losses are
  on; one optimiser cannot, so with ``adversarial`` the discriminator also gets 2e-3).
- Augmentation: the ``context_encoder`` preset (the loader's random crop and flip).

Logged: ``hole_mse`` (unweighted squared error in the removed pixels, normalised units) and,
with the adversarial term, ``adv_g`` / ``adv_d``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from selfsup.losses.generative import discriminator_loss, generator_loss, weighted_l2
from selfsup.methods.base import Method
from selfsup.nn.conv_decoder import (
    ChannelWiseFC,
    ConvDecoder,
    as_picture,
    dcgan_init_,
    feature_map_shape,
)
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

__all__ = ["ContextEncoder", "ContextEncoderConfig", "center_hole", "discriminator",
           "inpainting_weights", "random_block_holes", "random_region_holes", "scaled_overlap"]

MASKS = ("center", "random_block", "random_region")
_REGION_CELLS = 0.06 * 128  # train_random.lua: res 0.06 -> 7.68 noise cells across a 128 crop
_REGION_TRIES = 8


@dataclass
class ContextEncoderConfig:
    """Context encoder hyper-parameters; defaults are the paper's / its code's."""

    mask: str = "center"  # center | random_block | random_region (sec. 3.3)
    hole_fraction: float = 0.5  # central square side / image side: 64 of 128 (sec. 3.3, 1/4 area)
    overlap_pred: int = 4  # overlap in px at 128 px (README: overlapPred=4); scaled, 0 = none
    overlap_weight: float = 10.0  # L2 weight on the overlap (train.lua overlapL2Weight = 10)
    coverage: float = 0.25  # random masks: at most (block) / about (region) this area (sec. 3.3)
    adversarial: bool = False  # the joint loss (sec. 3.2); sec. 5.2's features use L2 only
    lambda_rec: float = 0.999  # weight of L_rec with the adversarial term (sec. 4; wtl2)
    lambda_adv: float = 0.001  # weight of L_adv (sec. 4)
    decoder_dim: int = 64  # channels of the decoder's last stage (train.lua ngf = 64)
    disc_dim: int = 64  # channels of the discriminator's first layer (train.lua ndf = 64)


Config = ContextEncoderConfig


def scaled_overlap(overlap_pred: int, image_size: int) -> int:
    """The overlap in px at ``image_size``: ``overlap_pred`` at 128 px scaled, at least 1 px."""
    return 0 if overlap_pred == 0 else max(1, round(overlap_pred * image_size / 128))


def center_hole(image_size: int, side: int, overlap: int) -> tuple[Tensor, tuple[int, int]]:
    """The central mask ``[1, 1, S, S]`` (True = removed: the square of ``side`` px centred at
    ``(S - side) // 2``, shrunk by ``overlap`` px per side) and the predicted square's
    ``(start, side)``."""
    c0 = (image_size - side) // 2
    hole = torch.zeros(1, 1, image_size, image_size, dtype=torch.bool)
    hole[..., c0 + overlap: c0 + side - overlap, c0 + overlap: c0 + side - overlap] = True
    return hole, (c0, side)


def random_block_holes(batch_size: int, image_size: int, block: int, coverage: float,
                       count: int = 16, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """``[B, 1, S, S]`` unions of ``block``-px squares at uniform random positions: of ``count``
    drawn squares, the longest prefix whose union covers at most ``coverage`` of the image (at
    least one square)."""
    s = image_size
    top = torch.randint(0, s - block + 1, (batch_size, count, 2), device=device,
                        generator=generator)
    r = torch.arange(s, device=top.device)
    rows = (r >= top[..., :1]) & (r < top[..., :1] + block)  # [B, K, S]
    cols = (r >= top[..., 1:]) & (r < top[..., 1:] + block)
    union = (rows[..., :, None] & cols[..., None, :]).cummax(dim=1).values  # [B, K, S, S]
    area = union.float().mean(dim=(2, 3))
    keep = (area <= coverage + 1e-9).sum(dim=1).clamp(min=1)  # [B]
    return union[torch.arange(batch_size, device=top.device), keep - 1].unsqueeze(1)


def random_region_holes(batch_size: int, image_size: int, coverage: float,
                        device: torch.device | str | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
    """``[B, 1, S, S]`` random-region masks (train_random.lua's pattern): uniform noise on a grid
    of ``round(0.06 x 128)`` cells upsampled bicubically to ``S`` and thresholded below
    ``coverage``; per sample the first of 8 draws whose area is within ``coverage +- 0.05``, or
    the draw closest to ``coverage``."""
    n = max(2, round(_REGION_CELLS))
    noise = torch.rand(batch_size * _REGION_TRIES, 1, n, n, device=device, generator=generator)
    smooth = F.interpolate(noise, size=(image_size, image_size), mode="bicubic",
                           align_corners=False)
    holes = (smooth < coverage).view(batch_size, _REGION_TRIES, image_size, image_size)
    area = holes.float().mean(dim=(2, 3))  # [B, T]
    ok = (area > coverage - 0.05) & (area < coverage + 0.05)
    pick = torch.where(ok.any(dim=1), ok.int().argmax(dim=1),
                       (area - coverage).abs().argmin(dim=1))
    return holes[torch.arange(batch_size, device=holes.device), pick].unsqueeze(1)


def inpainting_weights(hole: Tensor, overlap: int, overlap_weight: float) -> Tensor:
    """Per-pixel L2 weights ``[B, 1, S, S]`` of removed pixels ``hole``: 1 in the hole,
    ``overlap_weight`` on the context pixels within ``overlap`` px of it (Chebyshev distance),
    0 elsewhere."""
    h = hole.float()
    if overlap == 0:
        return h
    near = F.max_pool2d(h, 2 * overlap + 1, stride=1, padding=overlap)
    return h + overlap_weight * (near - h)


def discriminator(in_chans: int, size: tuple[int, int], width: int) -> nn.Sequential:
    """train.lua's ``netD`` for ``[B, C, h, w]`` regions: conv 4x4 stride 2 (``width``) with
    LeakyReLU 0.2, then conv 4x4 stride 2 + BN + LeakyReLU doubling the width (at most 8x)
    while the map is larger than 4x4, and a convolution over the remaining map to one logit
    ``[B, 1]``."""
    layers: list[nn.Module] = [nn.Conv2d(in_chans, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    h, w, c = size[0] // 2, size[1] // 2, width
    while max(h, w) > 4:
        c_out = min(8 * width, 2 * c)
        layers += [nn.Conv2d(c, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                   nn.LeakyReLU(0.2, True)]
        h, w, c = h // 2, w // 2, c_out
    layers += [nn.Conv2d(c, 1, (h, w)), nn.Flatten()]
    return nn.Sequential(*layers)


@register(
    "method",
    "context_encoder",
    description="context encoder: inpaint the masked centre (or random blocks / regions) from "
    "the context, channel-wise fully connected bottleneck, overlap-weighted L2 (+ optional GAN)",
    reference="Pathak et al. 2016, Context Encoders: Feature Learning by Inpainting",
)
class ContextEncoder(Method):
    """Context encoder around any backbone with ``num_features``, ``in_chans``, ``image_size``.

    Attributes:
        backbone: the encoder (evaluated and exported).
        bottleneck: :class:`~selfsup.nn.conv_decoder.ChannelWiseFC` on the encoder's map.
        decoder: :class:`~selfsup.nn.conv_decoder.ConvDecoder` to the predicted region.
        discriminator: with ``adversarial`` only, :func:`discriminator` on that region.

    Raises:
        ConfigError: for a bad backbone, an image too small for the hole and overlap, or an
            invalid Config value.
    """

    Config: ClassVar[type] = ContextEncoderConfig
    default_views: ClassVar[str] = "context_encoder"
    # train.lua: optim.adam, beta1 0.5, lr 0.0002 (x10 for the generator with wtl2 in (0, 1)),
    # constant, no weight decay, batchSize 64
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adam", "lr": 2e-3, "lr_scaling": "none", "betas": (0.5, 0.999),
        "weight_decay": 0.0, "warmup_epochs": 0, "min_lr_ratio": 1.0, "clip_grad": 0.0,
    }

    center: Tensor

    def __init__(self, backbone: nn.Module, cfg: ContextEncoderConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self._check(cfg)
        c = self.in_chans = int(getattr(backbone, "in_chans", 0))
        s = self.image_size = int(getattr(backbone, "image_size", 0))
        if c < 1 or s < 1:
            raise ConfigError(f"context_encoder: the backbone must have positive 'in_chans' and "
                              f"'image_size', got {c}, {s}")
        if s < 4:
            raise ConfigError(f"context_encoder needs images of >= 4 px (backbone image_size), "
                              f"got {s}")
        self.overlap = scaled_overlap(cfg.overlap_pred, s)
        side = round(cfg.hole_fraction * s)
        if cfg.mask == "center" and (side - 2 * self.overlap < 1 or side < 2):
            raise ConfigError(
                f"context_encoder: {s} px images give a central square of {side} px "
                f"(method_args.hole_fraction={cfg.hole_fraction}) and an overlap of "
                f"{self.overlap} px per side (method_args.overlap_pred={cfg.overlap_pred}); the "
                "square must be >= 2 px and larger than twice the overlap")
        hole, (self.c0, self.side) = center_hole(s, side, self.overlap)
        self.register_buffer("center", hole, persistent=False)
        self.block = max(1, round(cfg.hole_fraction * s / 2))
        try:
            d, h, w = feature_map_shape(backbone, c, s)
            self.spatial = True
        except ConfigError:  # no [B, D, h, w] map: the pooled features as a 1 x 1 map
            d, h, w = num_features, 1, 1
            self.spatial = False
        out = (self.side, self.side) if cfg.mask == "center" else (s, s)
        self.bottleneck = ChannelWiseFC(d, (h, w))
        self.decoder = ConvDecoder(d, c, out, cfg.decoder_dim, in_size=(h, w))
        dcgan_init_(self.decoder)
        if cfg.adversarial:
            self.discriminator = discriminator(c, out, cfg.disc_dim)
            dcgan_init_(self.discriminator)

    @staticmethod
    def _check(cfg: ContextEncoderConfig) -> None:
        Method.require_positive(cfg, ("decoder_dim", "disc_dim"))
        checks = {"mask": cfg.mask in MASKS, "hole_fraction": 0 < cfg.hole_fraction < 1,
                  "overlap_pred": cfg.overlap_pred >= 0, "overlap_weight": cfg.overlap_weight >= 0,
                  "coverage": 0 < cfg.coverage < 1, "lambda_rec": cfg.lambda_rec >= 0,
                  "lambda_adv": cfg.lambda_adv >= 0}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"method_args.{key}={getattr(cfg, key)!r} is invalid for context_encoder "
                    f"(mask {'|'.join(MASKS)}, hole_fraction and coverage in (0, 1), "
                    "overlap_pred, overlap_weight and lambdas >= 0)")

    def sample_masks(self, batch_size: int, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"hole": [B, 1, S, S]}`` (True = removed), what ``Batch.masks`` may carry: the fixed
        central mask, or fresh random blocks / regions."""
        cfg, s = self.cfg, self.image_size
        if cfg.mask == "center":
            hole = self.center.to(device if device is not None else self.center.device)
            return {"hole": hole.expand(batch_size, -1, -1, -1)}
        if cfg.mask == "random_block":
            return {"hole": random_block_holes(batch_size, s, self.block, cfg.coverage,
                                               device=device, generator=generator)}
        return {"hole": random_region_holes(batch_size, s, cfg.coverage, device, generator)}

    def region(self, x: Tensor) -> Tensor:
        """The predicted region of full images ``[B, C, S, S]``: the central square or all."""
        if self.cfg.mask != "center":
            return x
        a, b = self.c0, self.c0 + self.side
        return x[..., a:b, a:b]

    def inpaint(self, masked: Tensor) -> tuple[Tensor, Tensor]:
        """``(prediction of the region [B, C, h_r, w_r], encoder map [B, D, h, w])`` of masked
        normalised images."""
        if self.spatial:
            feats: Tensor = self.backbone.forward_features(masked)  # type: ignore[operator]
        else:
            feats = self.backbone(masked)[:, :, None, None]
        return self.decoder(self.bottleneck(feats)), feats

    def _hole(self, batch: Batch, x: Tensor) -> Tensor:
        if batch.masks is None:
            return self.sample_masks(x.shape[0], x.device)["hole"]
        hole = batch.masks.get("hole")
        if hole is None or tuple(hole.shape) != (x.shape[0], 1, *x.shape[2:]):
            raise DataError(f"context_encoder: batch.masks['hole'] must be "
                            f"[{x.shape[0]}, 1, {x.shape[2]}, {x.shape[3]}], got "
                            f"{None if hole is None else tuple(hole.shape)}")
        return hole.to(device=x.device, dtype=torch.bool)

    def training_step(self, batch: Batch) -> StepOutput:
        """Mask ``batch.views[0]`` ``[B, C, S, S]``, inpaint, score the region.

        Raises:
            DataError: without a view, for a view of another shape, or a mask that does not fit.
        """
        if not batch.views:
            raise DataError("context_encoder needs one view per image, got none")
        x = batch.views[0]
        want = (self.in_chans, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise DataError(f"context_encoder expects views [B, {want[0]}, {want[1]}, {want[2]}] "
                            f"(the backbone's channels and image size), got {tuple(x.shape)}")
        hole = self._hole(batch, x)
        masked = x.masked_fill(hole, 0.0)  # the dataset mean in normalised units
        pred, feats = self.inpaint(masked)
        real = self.region(x)
        weight = self.region(inpainting_weights(hole, self.overlap, self.cfg.overlap_weight))
        rec = weighted_l2(pred, real, weight)
        h = self.region(hole).float()
        logs: dict[str, Tensor | float] = {
            "hole_mse": ((pred.detach().float() - real.float()).pow(2) * h).sum()
            / (h.sum() * x.shape[1]).clamp(min=1)}
        loss = rec
        if self.cfg.adversarial:
            adv_g, adv_d = self.adversarial_losses(real, pred)
            loss = self.cfg.lambda_rec * rec + self.cfg.lambda_adv * adv_g + adv_d
            logs.update(adv_g=adv_g.detach(), adv_d=adv_d.detach())
        return StepOutput(loss=loss, logs=logs, embeddings=feats.detach().mean(dim=(2, 3)))

    def adversarial_losses(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        """``(generator term, discriminator term)``: the generator's ``BCE(D(fake), 1)`` through
        a discriminator with detached parameters and copied buffers (its gradient reaches only
        the generator), the discriminator's ``BCE(D(real), 1) + BCE(D(fake.detach()), 0)`` (its
        gradient reaches only the discriminator)."""
        disc = self.discriminator
        frozen = {n: p.detach() for n, p in disc.named_parameters()}
        frozen.update({n: b.clone() for n, b in disc.named_buffers()})
        adv_g = generator_loss(functional_call(disc, frozen, (fake,)))
        adv_d = discriminator_loss(disc(real), disc(fake.detach()))
        return adv_g, adv_d

    @torch.no_grad()
    def picture_rows(self, x: Tensor, mean: Tensor, std: Tensor,
                     generator: torch.Generator | None = None) -> list[tuple[str, Tensor]]:
        """``selfsup visualize`` rows under the original: the masked input (the hole shows the
        dataset mean) and the inpainting pasted into the hole, ``[B, 3, S, S]`` in [0, 1]."""
        dev = None if generator is not None else x.device
        hole = self.sample_masks(x.shape[0], dev, generator)["hole"].to(x.device)
        masked = x.masked_fill(hole, 0.0)
        pred, _ = self.inpaint(masked)
        full = x.clone()
        if self.cfg.mask == "center":
            a, b = self.c0, self.c0 + self.side
            full[..., a:b, a:b] = pred
        else:
            full = pred
        filled = torch.where(hole, full, x)
        return [("masked input", as_picture(masked * std + mean)),
                ("inpainting in the hole", as_picture(filled * std + mean))]

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"mask={c.mask}, region={self.side if c.mask == 'center' else self.image_size}px, "
                f"overlap={self.overlap}px, adversarial={c.adversarial}")
