"""Autoencoder and denoising autoencoder: reconstruct the clean input from its (corrupted) code.

Vincent, Larochelle, Bengio & Manzagol 2008, "Extracting and Composing Robust Features with
Denoising Autoencoders" (ICML), and Vincent et al. 2010, "Stacked Denoising Autoencoders"
(JMLR) for the corruption types and the squared-error variant. Reference code of the same lab:
lisa-lab DeepLearningTutorials ``code/dA.py`` (``get_corrupted_input``, ``get_cost_updates``).

- Encoder (2008 sec. 2.2, ``y = f(x~)``): the backbone; the code ``y`` is its pooled feature
  vector ``[B, F]`` (``code="pooled"``, the default), the representation that is evaluated and
  exported, so the code and the evaluated features are one thing as in the paper (whose hidden
  layer is what gets stacked). ``code="spatial"`` decodes the backbone's unpooled
  ``forward_features`` map instead (a weaker bottleneck: the pooled vector is then not the code).
- Decoder (``z = g(y)``): :class:`~selfsup.nn.conv_decoder.ConvDecoder` back to ``[B, C, H, W]``
  at the image size (sigmoid outputs for the cross-entropy, affine for the squared error; the
  paper's one-layer decoder with tied weights ``W' = W^T`` has no counterpart for a deep
  convolutional encoder, so the decoder has its own weights).
- Loss (2008 sec. 2.2, ``L_H``; the 2010 paper's squared error): the reconstruction
  cross-entropy of the **clean** input ``x`` in [0, 1] (``loss="bce"``, the paper's default for
  such inputs) or the squared error (``loss="mse"``)
  (:func:`~selfsup.losses.generative.reconstruction_loss`), averaged over the ``d = C H W``
  components (``reduction="mean"``): the papers' per-example sum divided by ``d``. With a
  convolutional decoder every weight's gradient sums over all ``H W`` positions, and SGD at the
  paper code's lr 0.1 on the sum diverges within 10 steps on 16-px digits (loss 182 -> 2e13,
  measured); on the mean it is stable. ``reduction="sum"`` is the papers' scale (pair it with an
  lr about ``d`` times smaller).
- Units: the papers' inputs are pixel intensities in [0, 1] (MNIST); the views arrive normalised,
  so the method undoes the normalisation (``input_mean``/``input_std``, filled in by the trainer;
  empty = the identity), corrupts and reconstructs in [0, 1] units (the target is clamped to
  [0, 1]) and normalises the corrupted image again for the encoder.
- Corruption (denoising autoencoder only; 2008 sec. 2.3, the 2010 paper's types), drawn per
  sample on the device from torch's RNG (or passed in ``Batch.masks``, see
  :meth:`DenoisingAutoencoder.sample_masks`): ``"masking"`` (the 2008 paper's ``q_D``: a fixed
  number ``round(nu d)`` of the ``d = C H W`` components, chosen at random for every example,
  forced to 0; the tutorial draws each component independently with probability ``nu``
  instead), ``"salt_and_pepper"`` (2010: the same exact fraction set to the minimum 0 or the
  maximum 1 by a fair coin) or ``"gaussian"`` (2010: ``x~ = x + N(0, sigma^2 I)`` in [0, 1]
  units, not clipped). ``nu = 0.25`` by default, one of the destruction levels the 2008
  experiments chose among (10, 25, 40%) on validation data; the tutorial runs 0.3. For RGB
  images every channel value is a component, as in the papers' vector view of the input.
- Optimiser (2008 experiments / ``dA.py``): plain SGD, lr 0.1 at any batch size (the tutorial's
  batch is 20), no momentum, no weight decay, constant.
- Augmentation: none (the ``autoencoder`` / ``denoising_autoencoder`` presets: the whole image,
  no flip, no colour change), as the papers' raw inputs.

Logged: ``mse``, the mean squared error per component of the reconstruction in [0, 1] units
(for either loss), and for masking and salt-and-pepper noise ``corrupted``, the fraction of
components the corruption destroyed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.generative import reconstruction_loss
from selfsup.methods.base import Method
from selfsup.nn.conv_decoder import ConvDecoder, as_picture, feature_map_shape
from selfsup.nn.input_stats import input_stats
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

__all__ = ["Autoencoder", "AutoencoderConfig", "DenoisingAutoencoder",
           "DenoisingAutoencoderConfig", "corrupt", "exact_fraction_mask"]

CORRUPTIONS = ("masking", "salt_and_pepper", "gaussian")


@dataclass
class AutoencoderConfig:
    """Autoencoder hyper-parameters (``selfsup.methods.autoencoder.AutoencoderConfig``)."""

    # bce: cross-entropy L_H of inputs in [0, 1] (2008 sec. 2.2) | mse: squared error (2010)
    loss: str = "bce"
    # mean: over every component | sum: over each example's components, then the batch mean
    # (2008 sec. 2.2; dA.py), which diverges under SGD lr 0.1 with a convolutional decoder
    reduction: str = "mean"
    # pooled: the backbone's pooled features are the code y (2008 sec. 2.2) | spatial: its map
    code: str = "pooled"
    decoder_dim: int = 64  # channels of the decoder's last stage (DCGAN's ngf; not in the paper)
    # per-channel mean/std the inputs were normalised with (set by the trainer; undone so that
    # corruption and reconstruction happen in [0, 1] pixel units, as the paper's inputs)
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)


@dataclass
class DenoisingAutoencoderConfig(AutoencoderConfig):
    """Denoising autoencoder hyper-parameters
    (``selfsup.methods.autoencoder.DenoisingAutoencoderConfig``)."""

    # masking: nu d components set to 0 (2008 sec. 2.3) | salt_and_pepper | gaussian (2010)
    corruption: str = "masking"
    corruption_level: float = 0.25  # nu, the destroyed fraction (2008 experiments: 10/25/40%)
    noise_std: float = 0.25  # sigma of the gaussian corruption, [0, 1] units (2010; tuned there)


def exact_fraction_mask(batch_size: int, shape: tuple[int, ...], fraction: float,
                        device: torch.device | str | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
    """``[B, *shape]`` booleans with exactly ``round(fraction * prod(shape))`` True per sample, at
    uniformly random positions (the lowest values of per-sample uniform noise)."""
    d = 1
    for s in shape:
        d *= s
    k = round(fraction * d)
    noise = torch.rand(batch_size, d, device=device, generator=generator)
    mask = torch.zeros(batch_size, d, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, noise.argsort(dim=1)[:, :k], True)
    return mask.view(batch_size, *shape)


def corrupt(x: Tensor, draws: dict[str, Tensor], kind: str, noise_std: float) -> Tensor:
    """The corrupted ``x~`` of unit-range images ``x`` ``[B, C, H, W]`` under ``draws`` (as
    :meth:`DenoisingAutoencoder.sample_masks` returns them)."""
    if kind == "masking":
        return x.masked_fill(draws["mask"], 0.0)
    if kind == "salt_and_pepper":
        return torch.where(draws["mask"], draws["salt"].to(x.dtype), x)
    return x + noise_std * draws["noise"].to(x.dtype)


class _Autoencoder(Method):
    """Shared implementation of the autoencoder and the denoising autoencoder.

    Attributes:
        backbone: the encoder (evaluated and exported).
        decoder: :class:`~selfsup.nn.conv_decoder.ConvDecoder` from the code to ``[B, C, S, S]``
            (``S`` = the backbone's ``image_size``).

    Raises:
        ConfigError: for a backbone without ``num_features``/``in_chans``/``image_size`` (or
            ``forward_features`` with ``code="spatial"``), or an invalid Config value.
    """

    Config: ClassVar[type] = AutoencoderConfig
    default_views: ClassVar[str] = "autoencoder"
    # 2008 experiments / dA.py test_dA: SGD lr 0.1, batch 20 (lr not scaled), no momentum, no decay
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd", "lr": 0.1, "lr_scaling": "none", "momentum": 0.0, "weight_decay": 0.0,
        "warmup_epochs": 0, "min_lr_ratio": 1.0, "clip_grad": 0.0,
    }
    denoising: ClassVar[bool] = False

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, cfg: AutoencoderConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self._check(cfg)
        self.in_chans = int(getattr(backbone, "in_chans", 0))
        self.image_size = int(getattr(backbone, "image_size", 0))
        if self.in_chans < 1 or self.image_size < 1:
            raise ConfigError(f"{self.name}: the backbone must have positive 'in_chans' and "
                              f"'image_size' (the decoder's output), got {self.in_chans}, "
                              f"{self.image_size}")
        c, s = self.in_chans, self.image_size
        mean, std = input_stats(cfg.input_mean, cfg.input_std, c)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        if cfg.code == "pooled":
            self.decoder = ConvDecoder(num_features, c, (s, s), cfg.decoder_dim)
        else:
            try:
                d, h, w = feature_map_shape(backbone, c, s)
            except ConfigError as e:
                raise ConfigError(f"method_args.code='spatial' needs a backbone with a feature "
                                  f"map: {e}") from None
            self.decoder = ConvDecoder(d, c, (s, s), cfg.decoder_dim, in_size=(h, w))

    def _check(self, cfg: AutoencoderConfig) -> None:
        self.require_positive(cfg, ("decoder_dim",))
        checks = {"loss": cfg.loss in ("bce", "mse"), "reduction": cfg.reduction in ("sum", "mean"),
                  "code": cfg.code in ("pooled", "spatial")}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"method_args.{key}={getattr(cfg, key)!r} is invalid for "
                                  f"{self.name} (loss bce|mse, reduction sum|mean, code "
                                  "pooled|spatial)")

    def to_unit(self, x: Tensor) -> Tensor:
        """Normalised images -> [0, 1] pixel units (the normalisation undone)."""
        return x * self.std.to(x) + self.mean.to(x)

    def to_input(self, u: Tensor) -> Tensor:
        """[0, 1] pixel units -> the encoder's normalised input."""
        return (u - self.mean.to(u)) / self.std.to(u)

    def _view(self, batch: Batch) -> Tensor:
        if not batch.views:
            raise DataError(f"{self.name} needs one view per image, got none")
        x = batch.views[0]
        want = (self.in_chans, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise DataError(f"{self.name} expects views [B, {want[0]}, {want[1]}, {want[2]}] (the "
                            f"backbone's channels and image size), got {tuple(x.shape)}")
        return x

    def corrupted(self, u: Tensor, draws: dict[str, Tensor] | None) -> Tensor:
        """The encoder's input in [0, 1] units: ``u`` itself (autoencoder)."""
        return u

    def code(self, x: Tensor) -> Tensor:
        """The code of normalised images ``x``: ``[B, F]`` pooled or ``[B, D, h, w]`` map."""
        if self.cfg.code == "pooled":
            out: Tensor = self.backbone(x)
            return out
        feats: Tensor = self.backbone.forward_features(x)  # type: ignore[operator]
        return feats

    def forward_reconstruction(self, x: Tensor, draws: dict[str, Tensor] | None = None
                               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(clean [0, 1] target, corrupted [0, 1] input, code, decoder output)`` of normalised
        images ``x`` ``[B, C, S, S]``; the output is logits (``loss="bce"``) or [0, 1] values."""
        u = self.to_unit(x)
        u_tilde = self.corrupted(u, draws)
        code = self.code(self.to_input(u_tilde))
        return u.clamp(0, 1), u_tilde, code, self.decoder(code)

    def reconstruction(self, out: Tensor) -> Tensor:
        """Decoder output -> the reconstruction ``z`` in [0, 1] units."""
        return torch.sigmoid(out) if self.cfg.loss == "bce" else out

    def training_step(self, batch: Batch) -> StepOutput:
        """Reconstruct ``batch.views[0]`` ``[B, C, S, S]`` from its (corrupted) code.

        Raises:
            DataError: without a view, for a view of another shape, or masks that do not fit.
        """
        x = self._view(batch)
        draws = self._draws(batch, x)
        target, _, code, out = self.forward_reconstruction(x, draws)
        loss = reconstruction_loss(out, target, self.cfg.loss, self.cfg.reduction)
        with torch.no_grad():
            z = self.reconstruction(out.detach().float())
            logs: dict[str, Tensor | float] = {"mse": (z - target).pow(2).mean()}
            if draws is not None and "mask" in draws:
                logs["corrupted"] = draws["mask"].float().mean()
        emb = code.detach() if code.dim() == 2 else code.detach().mean(dim=(2, 3))
        return StepOutput(loss=loss, logs=logs, embeddings=emb)

    def _draws(self, batch: Batch, x: Tensor) -> dict[str, Tensor] | None:
        return None

    @torch.no_grad()
    def picture_rows(self, x: Tensor, mean: Tensor, std: Tensor,
                     generator: torch.Generator | None = None) -> list[tuple[str, Tensor]]:
        """``selfsup visualize`` rows under the original: the corrupted input (denoising
        autoencoder) and the reconstruction, ``[B, 3, S, S]`` in [0, 1]."""
        draws = self.sample_draws(x, generator) if self.denoising else None
        _, u_tilde, _, out = self.forward_reconstruction(x, draws)
        rows = [("corrupted input", as_picture(u_tilde))] if self.denoising else []
        return rows + [("reconstruction", as_picture(self.reconstruction(out)))]

    def sample_draws(self, x: Tensor, generator: torch.Generator | None = None
                     ) -> dict[str, Tensor]:
        """The corruption's random draws for images shaped as ``x`` (denoising only)."""
        return {}

    def extra_repr(self) -> str:
        return f"code={self.cfg.code}, loss={self.cfg.loss}, reduction={self.cfg.reduction}"


@register(
    "method",
    "autoencoder",
    description="autoencoder: the backbone's pooled features decoded back to the image "
    "(reconstruction cross-entropy)",
    reference="Vincent et al. 2008, Extracting and Composing Robust Features with Denoising "
    "Autoencoders (the basic autoencoder, sec. 2.2)",
)
class Autoencoder(_Autoencoder):
    """The basic autoencoder: no corruption (``nu = 0``), the paper's baseline."""

    Config: ClassVar[type] = AutoencoderConfig


@register(
    "method",
    "denoising_autoencoder",
    description="denoising autoencoder: reconstruct the clean image from a corrupted one "
    "(masking, salt-and-pepper or gaussian noise)",
    reference="Vincent et al. 2008, Extracting and Composing Robust Features with Denoising "
    "Autoencoders; Vincent et al. 2010, Stacked Denoising Autoencoders (JMLR)",
)
class DenoisingAutoencoder(_Autoencoder):
    """The denoising autoencoder: the encoder sees ``x~ ~ q_D(x~ | x)``, the loss scores the
    reconstruction of the clean ``x``."""

    Config: ClassVar[type] = DenoisingAutoencoderConfig
    default_views: ClassVar[str] = "denoising_autoencoder"
    denoising: ClassVar[bool] = True

    def _check(self, cfg: AutoencoderConfig) -> None:
        super()._check(cfg)
        assert isinstance(cfg, DenoisingAutoencoderConfig)
        if cfg.corruption not in CORRUPTIONS:
            raise ConfigError(f"method_args.corruption must be one of {', '.join(CORRUPTIONS)}, "
                              f"got {cfg.corruption!r}")
        if not 0.0 <= cfg.corruption_level <= 1.0:
            raise ConfigError(f"method_args.corruption_level must be in [0, 1] (the destroyed "
                              f"fraction nu), got {cfg.corruption_level}")
        if cfg.noise_std < 0:
            raise ConfigError(f"method_args.noise_std must be >= 0, got {cfg.noise_std}")

    def sample_masks(self, batch_size: int, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The corruption's draws for ``batch_size`` images of the backbone's shape, what
        ``Batch.masks`` may carry: ``mask`` ``[B, C, S, S]`` (True = destroyed; exactly
        ``round(nu C S S)`` per sample) and ``salt`` (same shape, True = set to 1) for masking
        and salt-and-pepper, ``noise`` ``[B, C, S, S]`` standard normal for gaussian."""
        shape = (self.in_chans, self.image_size, self.image_size)
        cfg = self.cfg
        if cfg.corruption == "gaussian":
            return {"noise": torch.randn(batch_size, *shape, device=device, generator=generator)}
        draws = {"mask": exact_fraction_mask(batch_size, shape, cfg.corruption_level, device,
                                             generator)}
        if cfg.corruption == "salt_and_pepper":
            coin = torch.rand(batch_size, *shape, device=device, generator=generator)
            draws["salt"] = coin < 0.5
        return draws

    def sample_draws(self, x: Tensor, generator: torch.Generator | None = None
                     ) -> dict[str, Tensor]:
        draws = self.sample_masks(x.shape[0], None if generator is not None else x.device,
                                  generator)
        return {k: v.to(x.device) for k, v in draws.items()}

    def _draws(self, batch: Batch, x: Tensor) -> dict[str, Tensor]:
        if batch.masks is None:
            return self.sample_masks(x.shape[0], x.device)
        draws = {k: v.to(x.device) for k, v in batch.masks.items()}
        need = {"gaussian": ("noise",), "masking": ("mask",),
                "salt_and_pepper": ("mask", "salt")}[self.cfg.corruption]
        if any(k not in draws or draws[k].shape != x.shape for k in need):
            raise DataError(f"{self.name}: batch.masks must hold {list(need)} shaped "
                            f"{tuple(x.shape)}, got "
                            f"{ {k: tuple(v.shape) for k, v in draws.items()} }")
        return draws

    def corrupted(self, u: Tensor, draws: dict[str, Tensor] | None) -> Tensor:
        """``x~ ~ q_D(x~ | x)`` in [0, 1] units."""
        assert draws is not None
        return corrupt(u, draws, self.cfg.corruption, self.cfg.noise_std)

    def extra_repr(self) -> str:
        c = self.cfg
        level = f"sigma={c.noise_std}" if c.corruption == "gaussian" else f"nu={c.corruption_level}"
        return f"{super().extra_repr()}, corruption={c.corruption}, {level}"
