"""Backbone factory: names, options, stems, patch sizes, token access and input checks."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from selfsup.nn.backbones import create_backbone, list_backbones
from selfsup.nn.backbones.vit import default_patch_size
from selfsup.types import ConfigError, UnknownNameError


def test_registered_names() -> None:
    assert set(list_backbones()) >= {
        "resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small", "vit_base", "small_cnn"
    }


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="resnet18") as e:
        create_backbone("resnet19")
    assert "small_cnn" in str(e.value) and "Did you mean" in str(e.value)


def test_unknown_option_is_named_and_none_is_dropped() -> None:
    with pytest.raises(ConfigError, match="'patch_size'.*valid options: cifar_stem"):
        create_backbone("resnet18", image_size=32, patch_size=8)
    # None means "the backbone's default", so options of other backbones may be passed as None
    m = create_backbone("small_cnn", in_chans=1, image_size=28, cifar_stem=None, patch_size=None)
    assert m.num_features == 256


@pytest.mark.parametrize("bad", [{"in_chans": 0}, {"image_size": 0}, {"in_chans": 2.0}])
def test_bad_sizes_rejected(bad: dict) -> None:
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        create_backbone("small_cnn", **bad)


def test_resnet_stem_auto_and_explicit() -> None:
    small = create_backbone("resnet18", in_chans=3, image_size=32)
    assert small.cifar_stem and small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    big = create_backbone("resnet18", in_chans=13, image_size=224)
    assert not big.cifar_stem and big.conv1.kernel_size == (7, 7) and big.conv1.stride == (2, 2)
    assert big.conv1.in_channels == 13 and isinstance(big.maxpool, nn.MaxPool2d)
    forced = create_backbone("resnet18", image_size=32, cifar_stem=False)
    assert forced.conv1.kernel_size == (7, 7)
    # a 32 px image keeps a 4x4 map before pooling with the CIFAR stem: output is still [B, 512]
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_resnet_state_dict_keys_are_torchvision_s() -> None:
    ours = create_backbone("resnet50", in_chans=3, image_size=224)
    ref = torchvision.models.resnet50(weights=None)
    ref_keys = {k for k in ref.state_dict() if not k.startswith("fc.")}
    assert set(ours.state_dict()) == ref_keys
    assert ours.num_features == 2048
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if k in ref_keys})


def test_resnet_zero_init_residual() -> None:
    m = create_backbone("resnet18", image_size=32, zero_init_residual=True)
    gains = [b.bn2.weight for layer in (m.layer1, m.layer4) for b in layer]
    assert all(g.abs().sum().item() == 0 for g in gains)
    m = create_backbone("resnet18", image_size=32)
    assert m.layer1[0].bn2.weight.sum().item() > 0


@pytest.mark.parametrize("size, patch", [(224, 16), (128, 16), (96, 8), (64, 8), (32, 4), (28, 4)])
def test_default_patch_size(size: int, patch: int) -> None:
    assert default_patch_size(size) == patch


def test_vit_patch_size_must_divide_image_size() -> None:
    with pytest.raises(ConfigError, match="patch_size=5 .*divisor of image_size 32"):
        create_backbone("vit_tiny", image_size=32, patch_size=5)
    with pytest.raises(ConfigError, match="default patch size 4; set backbone.patch_size"):
        create_backbone("vit_tiny", image_size=30)
    m = create_backbone("vit_tiny", image_size=30, patch_size=5)
    assert m.num_patches == 36 and m(torch.randn(1, 3, 30, 30)).shape == (1, 192)


@pytest.mark.parametrize("opts", [{"global_pool": "max"}, {"drop_path_rate": 1.0}])
def test_vit_bad_options(opts: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(opts))):
        create_backbone("vit_tiny", image_size=32, **opts)


def test_vit_tokens_and_pooling() -> None:
    torch.manual_seed(0)
    m = create_backbone("vit_tiny", in_chans=2, image_size=32, patch_size=8).eval()
    x = torch.randn(3, 2, 32, 32)
    with torch.no_grad():
        tokens = m.forward_tokens(x)
        assert tokens.shape == (3, 1 + 16, 192)
        torch.testing.assert_close(m(x), tokens[:, 0])  # CLS token after the final norm
        # keeping every patch in order changes nothing; keeping some gives [B, 1 + K, D]
        everything = torch.arange(16).expand(3, 16)
        torch.testing.assert_close(m.forward_tokens(x, keep=everything), tokens)
        keep = torch.stack([torch.randperm(16)[:5] for _ in range(3)])
        assert m.forward_tokens(x, keep=keep).shape == (3, 6, 192)
    with pytest.raises(ValueError, match="keep"):
        m.forward_tokens(x, keep=torch.zeros(3, 4))
    avg = create_backbone("vit_tiny", in_chans=2, image_size=32, patch_size=8, global_pool="avg")
    with torch.no_grad():
        avg.eval()
        torch.testing.assert_close(avg(x), avg.forward_tokens(x)[:, 1:].mean(1))


def test_vit_sizes() -> None:
    for name, dim in [("vit_tiny", 192), ("vit_small", 384)]:
        m = create_backbone(name, in_chans=3, image_size=32)
        assert m.num_features == dim and m.patch_size == 4 and len(m.blocks) == 12
        assert m.blocks[0].attn.num_heads == dim // 64


def test_small_cnn_is_lean() -> None:
    m = create_backbone("small_cnn", in_chans=1, image_size=28)
    assert sum(p.numel() for p in m.parameters()) < 400_000
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 4 and all(c.bias is None for c in convs)
    assert all(r.inplace for r in m.modules() if isinstance(r, nn.ReLU))
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 256)
    wide = create_backbone("small_cnn", in_chans=3, image_size=32, width=16)
    assert wide.num_features == 128 and wide(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    with pytest.raises(ConfigError, match="width"):
        create_backbone("small_cnn", width=0)


@pytest.mark.parametrize("name, size, opts, grid", [
    ("small_cnn", 16, {}, 2), ("small_cnn", 28, {}, 4),
    ("resnet18", 32, {}, 4), ("resnet18", 64, {"cifar_stem": False}, 2),
])
def test_cnn_feature_maps_pool_to_forward(name: str, size: int, opts: dict, grid: int) -> None:
    torch.manual_seed(0)
    m = create_backbone(name, in_chans=1, image_size=size, **opts).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        before = m(x)
        fmap = m.forward_features(x)
        assert fmap.shape == (2, m.num_features, grid, grid)
        torch.testing.assert_close(fmap.mean(dim=(2, 3)), before)
        torch.testing.assert_close(m(x), before)  # forward unchanged by the new method


def test_vit_feature_map_is_the_patch_token_grid() -> None:
    torch.manual_seed(0)
    m = create_backbone("vit_tiny", in_chans=3, image_size=32, patch_size=8,
                        global_pool="avg").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = m.forward_tokens(x)  # [2, 1 + 16, 192], patches in row-major order
        fmap = m.forward_features(x)
        assert fmap.shape == (2, 192, 4, 4)
        for i in range(4):
            for j in range(4):
                torch.testing.assert_close(fmap[:, :, i, j], tokens[:, 1 + 4 * i + j])
        torch.testing.assert_close(fmap.mean(dim=(2, 3)), m(x))  # avg pooling = mean of the grid


@pytest.mark.parametrize("hw, grid", [((16, 16), (2, 2)), ((20, 12), (3, 2))])
def test_vit_feature_map_follows_the_input_size(hw: tuple[int, int], grid: tuple[int, int]
                                                ) -> None:
    """Multi-crop local views are smaller than ``image_size``; sides that are not whole patches
    are padded, so the grid is ``ceil(side / patch)``."""
    m = create_backbone("vit_tiny", in_chans=3, image_size=32, patch_size=8).eval()
    with torch.no_grad():
        fmap = m.forward_features(torch.randn(2, 3, *hw))
    assert fmap.shape == (2, 192, *grid)
