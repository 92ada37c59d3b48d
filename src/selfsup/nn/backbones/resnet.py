"""ResNet encoders (He et al. 2016, "Deep Residual Learning for Image Recognition") built from
torchvision's implementation with random weights, for any number of input channels.

The module keeps torchvision's structure (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so its
``state_dict`` keys are the familiar ones; the classifier ``fc`` is an ``Identity`` and the forward
returns the globally average-pooled features ``[B, 512]`` (ResNet-18/34) or ``[B, 2048]``
(ResNet-50); :meth:`ResNet.forward_features` returns the last stage's map before pooling
``[B, num_features, h, w]`` (dense methods such as PixPro work on it).

The CIFAR stem (SimCLR appendix B.9: "we replace the first 7x7 Conv of stride 2 with 3x3 Conv of
stride 1, and also remove the first max pooling operation") keeps small images from being
downsampled 4x before the first residual stage; by default it is used for images of <= 64 px.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torchvision.models import resnet as tv

from selfsup.registry import register

__all__ = ["ResNet"]

_STEM_WIDTH = 64  # output channels of the torchvision stem


class ResNet(tv.ResNet):
    """torchvision's ResNet with a configurable stem, no classifier and backbone attributes.

    Attributes:
        num_features: width of the pooled output (512 for basic blocks, 2048 for bottlenecks).
        in_chans: number of input channels.
        image_size: the input side length the backbone was built for.
        cifar_stem: whether the 3x3 stride-1 stem without max-pool is used.
    """

    def __init__(
        self,
        block: type[tv.BasicBlock] | type[tv.Bottleneck],
        layers: list[int],
        in_chans: int,
        image_size: int,
        cifar_stem: bool | None,
        zero_init_residual: bool,
    ) -> None:
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        self.in_chans = in_chans
        self.image_size = image_size
        self.cifar_stem = image_size <= 64 if cifar_stem is None else bool(cifar_stem)
        if self.cifar_stem:
            self.conv1 = nn.Conv2d(in_chans, _STEM_WIDTH, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()  # type: ignore[assignment]
        elif in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, _STEM_WIDTH, 7, stride=2, padding=3, bias=False)
        # same initialisation torchvision gives its own stem
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.num_features = 512 * block.expansion
        self.fc = nn.Identity()  # type: ignore[assignment]

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> ``layer4``'s feature map ``[B, num_features, h, w]`` (before
        the average pool; ``h = H / 32`` with the ImageNet stem, ``H / 8`` with the CIFAR stem)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> pooled features ``[B, num_features]``."""
        return self._forward_impl(x)


# name: (block, blocks per stage, parameters without fc)
_VARIANTS: dict[str, tuple[type[tv.BasicBlock] | type[tv.Bottleneck], list[int], str]] = {
    "resnet18": (tv.BasicBlock, [2, 2, 2, 2], "11.2M"),
    "resnet34": (tv.BasicBlock, [3, 4, 6, 3], "21.3M"),
    "resnet50": (tv.Bottleneck, [3, 4, 6, 3], "23.5M"),
}


def _factory(name: str) -> Callable[..., ResNet]:
    block, layers, params = _VARIANTS[name]

    def build(
        in_chans: int = 3,
        image_size: int = 224,
        cifar_stem: bool | None = None,
        zero_init_residual: bool = False,
    ) -> ResNet:
        return ResNet(block, layers, in_chans, image_size, cifar_stem, zero_init_residual)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"""{name}: {block.__name__} stages {layers}, {params} parameters, \
{512 * block.expansion} features.

    Args:
        in_chans: input channels (the stem conv is rebuilt when it is not 3).
        image_size: input side length; selects the stem when ``cifar_stem`` is None.
        cifar_stem: 3x3 stride-1 stem without max-pool; None = True for images <= 64 px.
        zero_init_residual: zero-init the last BN gain of each residual branch (Goyal et al. 2017).
    """
    return build


for _name, _variant in _VARIANTS.items():
    register(
        "backbone",
        _name,
        description=f"{_name} (torchvision), {512 * _variant[0].expansion} features",
        reference="He et al. 2016, Deep Residual Learning for Image Recognition",
    )(_factory(_name))
