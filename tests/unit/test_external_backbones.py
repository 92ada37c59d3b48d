"""timm:NAME / torchvision:NAME backbones and user modules: contract, spatial maps, token access
for masked modeling, clear errors."""

from __future__ import annotations

import sys
import textwrap

import pytest
import timm
import torch
import torchvision
from torch import nn

from selfsup.methods.base import build_method
from selfsup.nn.backbones import check_backbone_name, create_backbone
from selfsup.nn.backbones.external import ExternalBackbone, list_external
from selfsup.nn.backbones.module import ModuleBackbone, fresh_copy, wrap_module
from selfsup.nn.backbones.vit import ViT, check_vit
from selfsup.types import ConfigError


def test_timm_cnn_any_channels_and_its_map() -> None:
    b = create_backbone("timm:resnet10t", in_chans=5, image_size=32)
    x = torch.randn(3, 5, 32, 32)
    assert b(x).shape == (3, 512) and b.num_features == 512 and b.in_chans == 5
    fmap = b.forward_features(x)
    assert fmap.shape == (3, 512, 1, 1)
    # the pooled features are the map's mean: the map is the one before the pool
    b.eval()
    torch.testing.assert_close(b(x), b.forward_features(x).mean(dim=(2, 3)))
    # timm's own keys, so timm.create_model loads them with nothing missing
    ref = timm.create_model("resnet10t", pretrained=False, num_classes=0, in_chans=5)
    assert ref.load_state_dict(b.model.state_dict()).missing_keys == []


def test_timm_nhwc_map_is_permuted() -> None:
    b = create_backbone("timm:convnext_atto", in_chans=3, image_size=32)
    assert b.forward_features(torch.randn(2, 3, 32, 32)).shape[:2] == (2, 320)


def test_timm_vit_gets_token_access_and_trains_mae() -> None:
    b = create_backbone("timm:vit_tiny_patch16_224", in_chans=3, image_size=32, patch_size=4,
                        depth=2)
    assert isinstance(b, ViT) and check_vit(b, "mae") == (4, 3)
    x = torch.randn(2, 3, 32, 32)
    assert b.forward_tokens(x).shape == (2, 65, 192) and b(x).shape == (2, 192)
    assert b(torch.randn(2, 3, 16, 16)).shape == (2, 192)  # other sizes (DINO's local crops)
    # parameters (and keys) stay timm's
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                            img_size=32, patch_size=4, depth=2)
    assert set(ref.state_dict()) == set(b.state_dict())
    from selfsup.types import Batch

    m = build_method("mae", b, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    out = m.training_step(Batch(views=[x], index=torch.arange(2)))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert b.patch_embed.proj.weight.grad is not None


def test_torchvision_resnet_map_is_layer4() -> None:
    b = create_backbone("torchvision:resnet18", in_chans=1, image_size=64)
    assert b.map_path == "layer4" and b.model.conv1.in_channels == 1
    b.eval()
    x = torch.randn(2, 1, 64, 64)
    m = b.model
    ref = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
    torch.testing.assert_close(b.forward_features(x), ref)
    assert b(x).shape == (2, 512)


def test_torchvision_classifier_mlp_is_head_not_features() -> None:
    # MobileNetV3's classifier is Linear(576, 1024)-Hardswish-Dropout-Linear: all of it goes, the
    # features are the pooled 576-channel map
    b = create_backbone("torchvision:mobilenet_v3_small", in_chans=3, image_size=32)
    assert b.num_features == 576 and len(b.model.classifier) == 0 and b.map_path == "features"
    b.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(b(x), b.forward_features(x).mean(dim=(2, 3)))
    # ConvNeXt keeps the LayerNorm2d before its Linear (part of its pooled features)
    c = create_backbone("torchvision:convnext_tiny", in_chans=3, image_size=32)
    assert type(c.model.classifier[0]).__name__ == "LayerNorm2d" and c.map_path == "features"


def test_torchvision_without_map_says_so_at_build() -> None:
    # a ViT's only 4-D output is its patch embedding, followed by tokens: no spatial map
    b = create_backbone("torchvision:vit_b_16", in_chans=3, image_size=32)
    assert type(b) is ExternalBackbone and not hasattr(b, "forward_features")
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 768)
    with pytest.raises(ConfigError, match="forward_features"):
        build_method("pixpro", b)


@pytest.mark.parametrize("name, match", [
    ("timm:resnet10", "resnet10t"),  # close names offered
    ("torchvision:resnet", "resnet18"),
    ("torchvision:squeezenet1_0", "no Linear classifier"),
])
def test_unknown_or_unusable_models(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_backbone(name, image_size=32)


def test_check_name_without_building() -> None:
    check_backbone_name("timm:resnet10t")
    check_backbone_name("torchvision:resnet18")
    with pytest.raises(ConfigError, match="close: resnet10t"):
        check_backbone_name("timm:resnet10")
    with pytest.raises(ConfigError, match="selfsup.pretrain"):
        check_backbone_name("module:mypkg.Net")


def test_selfsup_options_rejected_for_external() -> None:
    with pytest.raises(ConfigError, match="no option 'cifar_stem'"):
        create_backbone("timm:resnet10t", image_size=32, cifar_stem=True)
    with pytest.raises(ConfigError, match="timm.create_model"):
        create_backbone("timm:resnet10t", image_size=32, no_such_option=3)


def test_listing_filters_by_pattern() -> None:
    names = list_external("timm", "resnet1")
    assert "timm:resnet10t" in names and all("resnet1" in n for n in names)
    assert "torchvision:efficientnet_b0" in list_external("torchvision", "efficientnet")
    assert len(torchvision.models.list_models(module=torchvision.models)) == len(
        list_external("torchvision"))


class _MapNet(nn.Module):
    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def test_user_module_with_a_map() -> None:
    net = _MapNet()
    b = wrap_module(net, 3, 16)
    assert isinstance(b, ModuleBackbone) and b.num_features == 16 and b.model is net
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(b(x), net(x).mean(dim=(2, 3)))
    assert b.forward_features(x).shape == (2, 16, 16, 16)
    assert b.source_name == f"module:{__name__}._MapNet"


def test_user_module_vector_and_existing_backbones() -> None:
    vec = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 20))
    b = wrap_module(vec, 3, 8)
    assert b.num_features == 20 and not hasattr(b, "forward_features")
    own = create_backbone("small_cnn", in_chans=3, image_size=8, width=8)
    assert wrap_module(own, 3, 8) is own  # already a backbone: used as it is


def test_user_module_errors_name_the_input() -> None:
    with pytest.raises(ConfigError, match=r"fails on \[2, 5, 16, 16\]"):
        wrap_module(_MapNet(3), 5, 16)

    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    with pytest.raises(ConfigError, match=r"returns tuple.*\[B, D\]"):
        wrap_module(Pair(), 3, 8)
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        wrap_module("resnet18", 3, 8)  # type: ignore[arg-type]


def test_fresh_copy_redraws_weights() -> None:
    net = _MapNet()
    copy = fresh_copy(net)
    assert not torch.equal(copy.conv.weight, net.conv.weight)
    assert copy.conv.weight.shape == net.conv.weight.shape


def test_python_factory(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(in_chans, width=4):
            return nn.Sequential(nn.Conv2d(in_chans, width, 3), nn.ReLU())
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    b = create_backbone("python:my_nets:build", in_chans=2, image_size=8, width=6)
    assert b.num_features == 6 and b.source_name == "python:my_nets:build"
    with pytest.raises(ConfigError, match="has no 'nope'"):
        create_backbone("python:my_nets:nope", image_size=8)
    with pytest.raises(ConfigError, match="cannot import"):
        create_backbone("python:no_such_pkg_xyz:build", image_size=8)
    with pytest.raises(ConfigError, match="python:<module>:<factory>"):
        create_backbone("python:my_nets", image_size=8)
    sys.modules.pop("my_nets", None)
