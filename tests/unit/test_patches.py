"""Patchify / unpatchify and the fixed 2-D sine-cosine position embedding (MAE's layout),
against plain loop references."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.nn.patches import patchify, sincos_2d, unpatchify
from selfsup.types import ConfigError, DataError


@pytest.mark.parametrize("chans", [1, 3, 13])
def test_patchify_matches_a_loop_over_patches(chans: int) -> None:
    x = torch.randn(2, chans, 8, 12)
    p = 4
    got = patchify(x, p)
    assert got.shape == (2, 2 * 3, p * p * chans)
    for i in range(2):
        for j in range(3):
            # each patch flattened as (row, column, channel), as MAE's 'nchpwq->nhwpqc'
            ref = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p].permute(0, 2, 3, 1).reshape(2, -1)
            torch.testing.assert_close(got[:, i * 3 + j], ref, rtol=0, atol=0)


@pytest.mark.parametrize("chans", [1, 3, 13])
def test_unpatchify_inverts_patchify(chans: int) -> None:
    x = torch.randn(3, chans, 16, 16)
    torch.testing.assert_close(unpatchify(patchify(x, 4), 4, chans), x, rtol=0, atol=0)
    y = torch.randn(1, chans, 8, 16)  # not square: the grid's rows are given
    torch.testing.assert_close(unpatchify(patchify(y, 4), 4, chans, height=2), y, rtol=0, atol=0)


def test_patch_shape_errors_are_clear() -> None:
    with pytest.raises(DataError, match="multiples of the patch size 4"):
        patchify(torch.randn(1, 3, 10, 12), 4)
    with pytest.raises(DataError, match="do not form a square grid"):
        unpatchify(torch.randn(1, 6, 48), 4, 3)


def test_sincos_2d_matches_the_formula() -> None:
    dim, h, w = 16, 3, 5
    emb = sincos_2d(dim, h, w, cls_token=True)
    assert emb.shape == (1 + h * w, dim) and emb.dtype == torch.float32
    assert not emb[0].any()  # the class token's row is zero (MAE)
    q = dim // 4
    for r in range(h):
        for c in range(w):
            row = emb[1 + r * w + c]
            for k in range(q):
                om = 1.0 / 10000 ** (k / q)
                # first half: the column (MAE's meshgrid puts w first), second half: the row
                assert row[k].item() == pytest.approx(math.sin(c * om), abs=1e-6)
                assert row[q + k].item() == pytest.approx(math.cos(c * om), abs=1e-6)
                assert row[2 * q + k].item() == pytest.approx(math.sin(r * om), abs=1e-6)
                assert row[3 * q + k].item() == pytest.approx(math.cos(r * om), abs=1e-6)


def test_sincos_2d_rejects_a_width_not_divisible_by_4() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        sincos_2d(18, 4)
