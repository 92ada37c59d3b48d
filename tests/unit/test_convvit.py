"""ConvViT (ConvMAE's hybrid encoder): stage resolutions and strides as the paper's, the mask
upsampled exactly as the reference's ``mask_for_patch1/2``, masked convolution that keeps every
visible position independent of masked pixels, and one-line errors for bad options and inputs."""

from __future__ import annotations

import pytest
import torch

from selfsup.nn.backbones import create_backbone
from selfsup.nn.backbones.convvit import CBlock, ConvViT, default_strides, upsample_mask
from selfsup.nn.masking import random_masking
from selfsup.types import ConfigError, DataError


def _net(size: int = 16, **kw: object) -> ConvViT:
    torch.manual_seed(0)
    m = create_backbone("convvit_tiny", in_chans=2, image_size=size, depth=1, **kw)
    assert isinstance(m, ConvViT)
    return m.eval()


@pytest.mark.parametrize(("size", "strides", "grid"), [
    (224, (4, 2, 2), 14), (128, (4, 2, 2), 8), (64, (2, 2, 2), 8), (32, (1, 2, 2), 8),
    (16, (1, 2, 2), 4)])
def test_default_strides_give_the_paper_grid_or_a_small_image_grid(
        size: int, strides: tuple[int, int, int], grid: int) -> None:
    assert default_strides(size) == strides
    m = create_backbone("convvit_tiny", in_chans=1, image_size=size, depth=1, conv_depth=1)
    assert (m.strides, m.patch_size, m.grid, m.num_patches) == (
        strides, strides[0] * strides[1] * strides[2], grid, grid * grid)


def test_stages_run_at_one_quarter_one_eighth_one_sixteenth_at_224_px() -> None:
    m = create_backbone("convvit_tiny", in_chans=3, image_size=224, depth=1, conv_depth=1)
    assert isinstance(m, ConvViT)
    with torch.no_grad():
        s1, s2, tokens = m.conv_stages(torch.randn(1, 3, 224, 224))
    assert s1.shape == (1, 64, 56, 56) and s2.shape == (1, 128, 28, 28)
    assert tokens.shape == (1, 196, 192)
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, 192)


def test_upsample_mask_matches_a_loop_over_positions() -> None:
    g, f = 3, 4
    mask = torch.rand(2, g * g) > 0.5
    out = upsample_mask(mask, g, f)
    assert out.shape == (2, 1, g * f, g * f)
    for b in range(2):
        for i in range(g * f):
            for j in range(g * f):  # position (i, j) lies in stage-3 cell (i // f, j // f)
                assert out[b, 0, i, j] == mask[b, (i // f) * g + j // f]


def test_cblock_without_mask_equals_all_visible_and_its_conv_mixes_neighbours() -> None:
    torch.manual_seed(0)
    blk = CBlock(8).eval()
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(blk(x), blk(x, torch.ones(2, 1, 6, 6)))
    y = x.clone()
    y[:, :, 0, 0] += torch.randn(2, 8)  # (not a constant: the LayerNorm would remove it)
    # a neighbour 2 positions away changes (2, 2) through the 5 x 5 conv
    assert not torch.allclose(blk(y)[:, :, 2, 2], blk(x)[:, :, 2, 2])
    assert torch.allclose(blk(y)[:, :, 3, 3], blk(x)[:, :, 3, 3])  # 3 away: outside the kernel


def _pixel_mask(mask: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    return upsample_mask(mask, grid, patch).bool()  # [B, 1, S, S]


@pytest.mark.parametrize("strides", [(1, 2, 2), (2, 1, 2)])
def test_masked_convolution_keeps_visible_features_independent_of_masked_pixels(
        strides: tuple[int, int, int]) -> None:
    m = _net(16, strides=strides)
    g, p = m.grid, m.patch_size
    ms = random_masking(3, m.num_patches, 0.75, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 2, 16, 16)
    hidden = _pixel_mask(ms.mask, g, p).expand_as(x)
    y = x.clone()
    y[hidden] = torch.randn(int(hidden.sum())) * 50  # change every masked pixel
    with torch.no_grad():
        a, a1, a2 = m.forward_masked(x, ms.keep, ms.mask)
        b, b1, b2 = m.forward_masked(y, ms.keep, ms.mask)
        torch.testing.assert_close(b, a)
        v1 = ~_pixel_mask(ms.mask, g, strides[1] * strides[2]).expand_as(a1)
        v2 = ~_pixel_mask(ms.mask, g, strides[2]).expand_as(a2)
        torch.testing.assert_close(b1[v1], a1[v1])  # visible stage-1 / stage-2 positions too
        torch.testing.assert_close(b2[v2], a2[v2])
        # the same encoder without the mask in its conv stages lets masked pixels leak in
        # through the 5 x 5 convolutions: the check above is not vacuous
        leak_a = m.blocks3(m.conv_stages(x)[2].gather(1, ms.keep[..., None].expand(-1, -1, 192)))
        leak_b = m.blocks3(m.conv_stages(y)[2].gather(1, ms.keep[..., None].expand(-1, -1, 192)))
        assert not torch.allclose(leak_a, leak_b)
        z = x.clone()
        z[~hidden] += torch.randn(int((~hidden).sum()))  # visible pixels do change them
        assert not torch.allclose(m.forward_masked(z, ms.keep, ms.mask)[0], a)


def test_forward_is_the_mean_normalised_token_and_other_sizes_resample_positions() -> None:
    m = _net(16)
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        tokens = m.forward_tokens(x)
        assert tokens.shape == (2, 16, 192)
        torch.testing.assert_close(m(x), tokens.mean(dim=1))
        torch.testing.assert_close(m.forward_features(x).flatten(2).transpose(1, 2), tokens)
        assert m(torch.randn(2, 2, 32, 32)).shape == (2, 192)  # 8 x 8 grid, resampled pos_embed


def test_bad_options_and_inputs_give_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="strides must be three positive integers"):
        create_backbone("convvit_tiny", image_size=16, strides=[2, 2])
    with pytest.raises(ConfigError, match="not divisible by the total stride 8"):
        create_backbone("convvit_tiny", image_size=20, strides=[2, 2, 2])
    with pytest.raises(ConfigError, match="depth must be a positive integer"):
        create_backbone("convvit_tiny", image_size=16, depth=0)
    m = _net(16)
    with pytest.raises(DataError, match="multiples of the total stride 4"):
        m(torch.randn(1, 2, 18, 18))
    with pytest.raises(DataError, match=r"expects images \[B, 2, H, W\]"):
        m(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="mask must be"):
        m.forward_masked(torch.randn(1, 2, 16, 16), torch.zeros(1, 4, dtype=torch.long),
                         torch.zeros(1, 9, dtype=torch.bool))
