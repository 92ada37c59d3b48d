"""Convolutional decoders from an encoder's features back to pixels, for any channel count and
image size: the generative half of autoencoders and context encoders.

- :class:`ConvDecoder`: DCGAN's generator (Radford et al. 2016; the decoder of the context
  encoder's code, pathak22/context-encoder ``train.lua`` ``netG``): stride-2 4x4 transposed
  convolutions, each followed by BatchNorm and ReLU, doubling the map until it covers the
  output, then a 3x3 convolution to the output channels (a linear output: the targets here are
  logits or normalised pixels, not the ``Tanh`` range of ``[-1, 1]`` images). The input is a
  feature vector ``[B, D]`` (the pooled code of an autoencoder; first mapped to a seed map of at
  most 4x4 px by a transposed convolution over the 1x1 input, DCGAN's first layer) or a spatial
  map ``[B, D, h, w]`` (a backbone's ``forward_features``). Channel widths halve at every
  upsampling and end at ``width`` (DCGAN's ``ngf``), at most ``8 * width``. When the doubled
  map overshoots an output side that is not ``h`` times a power of 2, it is resized bilinearly
  to the output size before the last convolution, so any output size works.
- :class:`ChannelWiseFC`: the context encoder's channel-wise fully connected layer (Pathak et
  al. 2016, sec. 3.1): every channel's ``h x w`` map is fully connected to an ``h x w`` map of
  the same channel (no parameters across channels, ``D (hw)^2`` weights instead of
  ``(D hw)^2``), followed by a stride-1 1x1 convolution that propagates information across
  channels (then BatchNorm and ReLU, as every decoder layer).
- :func:`feature_map_shape` probes a backbone's ``forward_features`` for the map a decoder or
  bridge is built for; :func:`dcgan_init_` is the reference's ``weights_init``;
  :func:`as_picture` turns unit-range images into the ``[B, 3, H, W]`` rows of
  ``selfsup visualize``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError

__all__ = ["ChannelWiseFC", "ConvDecoder", "as_picture", "dcgan_init_", "feature_map_shape"]


def _doublings(start: tuple[int, int], out: tuple[int, int]) -> int:
    """Fewest ``n >= 0`` with ``start * 2 ** n`` covering ``out`` in both sides."""
    n = 0
    while start[0] << n < out[0] or start[1] << n < out[1]:
        n += 1
    return n


def _up_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ConvDecoder(nn.Module):
    """``[B, in_dim]`` or ``[B, in_dim, h, w]`` -> ``[B, out_chans, *out_size]``.

    Args:
        in_dim: features per position (``D``).
        out_chans: output channels (the images' channel count).
        out_size: output ``(H, W)``.
        width: channels of the last upsampling stage (DCGAN's ``ngf``: 64).
        in_size: the input map's ``(h, w)``; None for a vector input.

    Attributes:
        seed: vector input only: transposed convolution from ``1 x 1`` to the seed map, BN, ReLU.
        blocks: the upsampling stages (``ConvTranspose2d(4, 2, 1)``, BN, ReLU).
        head: the 3x3 output convolution (with bias).

    Raises:
        ConfigError: for non-positive sizes or widths.
    """

    def __init__(self, in_dim: int, out_chans: int, out_size: tuple[int, int], width: int = 64,
                 in_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        sizes = (in_dim, out_chans, width, *out_size, *(in_size or (1, 1)))
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes):
            raise ConfigError(f"ConvDecoder needs positive integer sizes, got in_dim={in_dim}, "
                              f"out_chans={out_chans}, out_size={out_size}, width={width}, "
                              f"in_size={in_size}")
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.in_size = in_size
        self.seed: nn.Module | None = None
        if in_size is None:  # a seed map of at most 4 x 4 that doubles up to the output
            n = _doublings((4, 4), self.out_size)
            seed = (math.ceil(self.out_size[0] / 2 ** n), math.ceil(self.out_size[1] / 2 ** n))
            c = width * min(8, 2 ** n)
            self.seed = nn.Sequential(nn.ConvTranspose2d(in_dim, c, seed, bias=False),
                                      nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        else:
            n = _doublings(in_size, self.out_size)
            seed, c = in_size, in_dim
        layers: list[nn.Module] = []
        for i in range(n):
            c_out = width * min(8, 2 ** (n - 1 - i))
            layers += _up_block(c, c_out)
            c = c_out
        self.blocks = nn.Sequential(*layers)
        self.covered = (seed[0] << n, seed[1] << n)
        self.head = nn.Conv2d(c, out_chans, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        """Decode ``z``: ``[B, in_dim]`` (vector decoder) or ``[B, in_dim, h, w]`` (map decoder).

        Raises:
            DataError: if ``z`` does not have the shape the decoder was built for.
        """
        if self.seed is not None:
            if z.dim() != 2:
                raise DataError(f"ConvDecoder expects codes [B, D], got {tuple(z.shape)}")
            x = self.seed(z[:, :, None, None])
        else:
            if z.dim() != 4 or tuple(z.shape[2:]) != tuple(self.in_size or ()):
                raise DataError(f"ConvDecoder expects maps [B, D, {self.in_size}], got "
                                f"{tuple(z.shape)}")
            x = z
        x = self.blocks(x)
        if self.covered != self.out_size:
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        out: Tensor = self.head(x)
        return out


class ChannelWiseFC(nn.Module):
    """Context encoders' channel-wise fully connected layer (sec. 3.1) and the stride-1
    convolution after it: ``[B, D, h, w] -> [B, D, h, w]``.

    ``y[b, d] = W_d x[b, d] + b_d`` with ``W_d`` ``[hw, hw]`` per channel (each initialised as
    an ``nn.Linear(hw, hw)``), then a 1x1 convolution ``D -> D``, BatchNorm and ReLU.
    """

    def __init__(self, channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.channels, self.size = channels, (int(size[0]), int(size[1]))
        hw = self.size[0] * self.size[1]
        bound = 1.0 / math.sqrt(hw)
        self.weight = nn.Parameter(torch.empty(channels, hw, hw).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, hw).uniform_(-bound, bound))
        self.mix = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False),
                                 nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def fully_connected(self, x: Tensor) -> Tensor:
        """The channel-wise linear map alone: ``[B, D, h, w] -> [B, D, h, w]``."""
        b = x.shape[0]
        flat = x.reshape(b, self.channels, -1)  # [B, D, hw]
        y = torch.einsum("bdi,dij->bdj", flat, self.weight) + self.bias
        return y.reshape(b, self.channels, *self.size)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels or tuple(x.shape[2:]) != self.size:
            raise DataError(f"ChannelWiseFC expects [B, {self.channels}, {self.size[0]}, "
                            f"{self.size[1]}], got {tuple(x.shape)}")
        out: Tensor = self.mix(self.fully_connected(x))
        return out


@torch.no_grad()
def feature_map_shape(backbone: nn.Module, in_chans: int, image_size: int) -> tuple[int, int, int]:
    """``(D, h, w)`` of ``backbone.forward_features`` on ``image_size`` px images (one probe in
    eval mode, so no BatchNorm statistics move; the training flags are restored).

    Raises:
        ConfigError: if the backbone has no ``forward_features`` returning ``[B, D, h, w]``.
    """
    fn = getattr(backbone, "forward_features", None)
    if not callable(fn):
        raise ConfigError(f"backbone {type(backbone).__name__} has no forward_features (the "
                          "spatial feature map [B, D, h, w] this decoder needs)")
    flags = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        p = next(backbone.parameters(), None)
        x = torch.zeros(2, in_chans, image_size, image_size,
                        device=p.device if p is not None else None)
        out = fn(x)
    finally:
        for m, t in flags.items():
            m.train(t)
    if not isinstance(out, Tensor) or out.dim() != 4:
        raise ConfigError(f"backbone {type(backbone).__name__}.forward_features must return "
                          f"[B, D, h, w], got {getattr(out, 'shape', type(out))}")
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


@torch.no_grad()
def dcgan_init_(module: nn.Module) -> None:
    """The context encoder's ``weights_init`` (train.lua, after DCGAN): every convolution and
    transposed convolution ``N(0, 0.02)`` with zero bias, every BatchNorm weight ``N(1, 0.02)``
    and zero bias."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.weight.normal_(0.0, 0.02)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.normal_(1.0, 0.02)
            m.bias.zero_()


def as_picture(unit: Tensor) -> Tensor:
    """Unit-range images ``[B, C, H, W]`` -> ``[B, 3, H, W]`` clamped to [0, 1]: grey shown as
    grey, RGB as is, more channels as their first three (fewer padded with the first)."""
    x = unit.clamp(0, 1)
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    return x[:, :3] if x.shape[1] >= 3 else torch.cat([x, x[:, :1]], 1)[:, :3]
