"""A small, fast CNN for tests, CPU benchmarks and tiny images (MNIST, digits, CIFAR).

Four ``conv3x3 - BN - ReLU`` blocks with widths ``w, 2w, 4w, 8w`` (``w = 32`` by default); blocks
2-4 downsample with stride 2, so a 28x28 input is processed at 28, 14, 7 and 4 px. Global average
pooling gives ``8w`` features (256 by default). About 0.39M parameters and 12M multiply-adds per
28x28 grey image. Convolutions before BN have no bias (BN's shift makes it redundant) and ReLUs are
in place, so no work is wasted.
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup.registry import register
from selfsup.types import ConfigError

__all__ = ["SmallCNN", "small_cnn"]


def _block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """``[B, in_chans, H, W]`` -> ``[B, 8 * width]`` through four conv-BN-ReLU blocks.

    Attributes:
        num_features: ``8 * width``.
        in_chans: number of input channels.
        image_size: the input side length the backbone was built for (any size >= 8 works).
        features: the convolutional trunk (``nn.Sequential``), unpooled ``[B, 8w, H/8, W/8]``.
    """

    def __init__(self, in_chans: int = 3, image_size: int = 32, width: int = 32) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(
                f"backbone 'small_cnn': width must be a positive integer, got {width!r}"
            )
        self.in_chans = in_chans
        self.image_size = image_size
        self.num_features = 8 * width
        self.features = nn.Sequential(
            *_block(in_chans, width, 1),
            *_block(width, 2 * width, 2),
            *_block(2 * width, 4 * width, 2),
            *_block(4 * width, 8 * width, 2),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> the unpooled map ``[B, num_features, ceil(H/8), ceil(W/8)]``."""
        out: Tensor = self.features(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> globally average-pooled ``[B, num_features]``."""
        return self.features(x).mean(dim=(2, 3))


@register("backbone", "small_cnn", description="4-block CNN (conv-BN-ReLU x4), 256 features")
def small_cnn(in_chans: int = 3, image_size: int = 32, width: int = 32) -> SmallCNN:
    """The small CNN; ``width`` scales all four blocks (features = 8 * width).

    Raises:
        ConfigError: if ``width`` is not a positive integer.
    """
    return SmallCNN(in_chans=in_chans, image_size=image_size, width=width)
