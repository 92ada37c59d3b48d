"""Changing what a backbone's input looks like: a copy with another input channel count, and the
fixed Sobel front end of DeepCluster.

- :func:`with_in_chans` gives CMC one encoder per channel group and DeepCluster a 2-channel
  backbone behind its Sobel filter.
- :class:`Sobel` is DeepCluster's fixed preprocessing (Caron et al. 2018, sec. 4.1 / appendix:
  "a fixed linear transformation based on Sobel filters to remove color and increase local
  contrast", after Bojanowski & Joulin 2017; the reference code's ``compute_features`` /
  ``sobel`` layer): the channel mean, then the horizontal and vertical 3x3 Sobel kernels,
  ``[B, C, H, W] -> [B, 2, H, W]``. :class:`SobelEncoder` puts it in front of a backbone, so the
  exported encoder takes the original images.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError

__all__ = ["Sobel", "SobelEncoder", "with_in_chans"]


def with_in_chans(backbone: nn.Module, in_chans: int) -> nn.Module:
    """A fresh copy of ``backbone`` whose input convolution takes ``in_chans`` channels.

    Every weight matrix of the copy is redrawn at its original scale (so the per-view encoders
    start independent); ``in_chans`` is updated.

    Raises:
        ConfigError: if the backbone has no ``Conv2d`` taking its ``in_chans`` channels.
    """
    net = copy.deepcopy(backbone)
    old_c = getattr(net, "in_chans", None)
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == old_c:
                new = nn.Conv2d(in_chans, child.out_channels, child.kernel_size,  # type: ignore[arg-type]
                                child.stride, child.padding, child.dilation,  # type: ignore[arg-type]
                                child.groups, child.bias is not None, child.padding_mode)
                new.weight.data.normal_(0.0, float(child.weight.detach().std()))
                if child.bias is not None and new.bias is not None:
                    new.bias.data.zero_()
                setattr(parent, name, new.to(child.weight.device))
                with torch.no_grad():
                    for m in net.modules():
                        if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not new:
                            m.weight.normal_(0.0, float(m.weight.detach().std()))
                setattr(net, "in_chans", in_chans)  # noqa: B010
                return net
    raise ConfigError(f"backbone {type(backbone).__name__} has no input Conv2d with "
                      f"{old_c} channels to resize")


class Sobel(nn.Module):
    """Channel mean followed by the two 3x3 Sobel kernels (no parameters, no gradient flows to
    anything but the input): ``[B, C, H, W] -> [B, 2, H, W]``, same spatial size (zero padding).

    Channel 0 is ``[[1, 0, -1], [2, 0, -2], [1, 0, -1]]`` (horizontal gradient), channel 1 its
    transpose (vertical gradient), both applied to the mean over the input channels (the
    reference code's 1x1 grey conv with weights ``1/3`` for RGB, generalised to any count).
    """

    kernels: Tensor

    def __init__(self) -> None:
        super().__init__()
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("kernels", torch.stack([gx, gx.t()]).unsqueeze(1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise DataError(f"Sobel expects images [B, C, H, W], got {tuple(x.shape)}")
        grey = x.mean(dim=1, keepdim=True)
        return F.conv2d(grey, self.kernels.to(grey.dtype), padding=1)


class SobelEncoder(nn.Module):
    """``backbone(Sobel(x))`` for ``C``-channel images; ``backbone`` takes 2 channels.

    Attributes:
        sobel: the fixed :class:`Sobel` filter.
        backbone: the trained network (``in_chans`` 2).
        num_features: the backbone's; ``in_chans``: ``C``, what the encoder is fed.
    """

    def __init__(self, backbone: nn.Module, in_chans: int) -> None:
        super().__init__()
        if int(getattr(backbone, "in_chans", 2)) != 2:
            raise ConfigError(f"SobelEncoder needs a 2-channel backbone (the Sobel output), got "
                              f"in_chans={backbone.in_chans}")
        self.sobel = Sobel()
        self.backbone = backbone
        self.num_features = int(getattr(backbone, "num_features", 0))
        self.in_chans = in_chans

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(self.sobel(x))

    def forward_features(self, x: Tensor) -> Tensor:
        """The backbone's spatial features of the filtered images (for dense heads)."""
        return self.backbone.forward_features(self.sobel(x))  # type: ignore[operator]
