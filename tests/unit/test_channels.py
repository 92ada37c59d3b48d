"""``selfsup.nn.channels``: the Sobel front end against a loop over pixels, SobelEncoder, and
``with_in_chans``."""

from __future__ import annotations

import pytest
import torch

from selfsup.nn.backbones import create_backbone
from selfsup.nn.channels import Sobel, SobelEncoder, with_in_chans
from selfsup.types import ConfigError, DataError


def _loop_sobel(x: torch.Tensor) -> torch.Tensor:
    """Mean over channels, zero padding, then sum_{u,v} k[u, v] img[i + u - 1, j + v - 1]."""
    gx = [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]
    gy = [[gx[v][u] for v in range(3)] for u in range(3)]
    b, _, h, w = x.shape
    out = torch.zeros(b, 2, h, w, dtype=torch.float64)
    grey = x.double().mean(dim=1)
    for n in range(b):
        for c, k in enumerate((gx, gy)):
            for i in range(h):
                for j in range(w):
                    s = 0.0
                    for u in range(3):
                        for v in range(3):
                            ii, jj = i + u - 1, j + v - 1
                            if 0 <= ii < h and 0 <= jj < w:
                                s += k[u][v] * float(grey[n, ii, jj])
                    out[n, c, i, j] = s
    return out


@pytest.mark.parametrize("channels", [1, 3, 13])
def test_sobel_matches_loop(channels: int) -> None:
    x = torch.randn(2, channels, 5, 7, generator=torch.Generator().manual_seed(channels))
    got = Sobel()(x)
    assert got.shape == (2, 2, 5, 7)
    torch.testing.assert_close(got.double(), _loop_sobel(x), rtol=1e-5, atol=1e-5)


def test_sobel_closed_forms() -> None:
    sobel = Sobel()
    flat = torch.full((1, 3, 6, 6), 0.5)  # exact in binary: the mean is exact too
    assert sobel(flat)[..., 1:-1, 1:-1].abs().max() == 0  # no gradient inside a flat image
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6)  # value = column index
    inner = sobel(ramp)[0, :, 1:-1, 1:-1]
    assert torch.all(inner[0] == -8.0) and torch.all(inner[1] == 0.0)  # (1+2+1) x (-2)
    assert not any(True for _ in sobel.parameters())  # fixed, nothing to train
    with pytest.raises(DataError, match="B, C, H, W"):
        sobel(torch.randn(3, 6, 6))


def test_sobel_encoder_feeds_a_two_channel_backbone() -> None:
    net = create_backbone("small_cnn", 3, 16, width=8)
    two = with_in_chans(net, 2)
    assert two.in_chans == 2 and net.in_chans == 3  # a copy; the original is unchanged
    enc = SobelEncoder(two, in_chans=3)
    assert enc.in_chans == 3 and enc.num_features == net.num_features
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(enc(x), two(Sobel()(x)))
    # the colour is gone: images with the same grey level give the same features
    swapped = x[:, [2, 0, 1]]
    torch.testing.assert_close(enc(x), enc(swapped), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="2-channel"):
        SobelEncoder(net, in_chans=3)
    with pytest.raises(ConfigError, match="no input Conv2d"):
        with_in_chans(torch.nn.Linear(3, 4), 2)
