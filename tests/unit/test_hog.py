"""HOG targets (MaskFeat, Wei et al. 2022; SlowFast ``HOGLayerC``): the batched tensor version
against a pixel-by-pixel loop of the same formula, and properties that catch plausible bugs
(signed instead of unsigned bins, swapped gradient axes, normalisation over the wrong axis,
channels mixed up, patches laid out in the wrong order)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.nn.hog import hog_cells, hog_dim, hog_glyphs, hog_patches, patches_to_cells
from selfsup.types import ConfigError, DataError

SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def _reflect(i: int, n: int) -> int:
    """Index of padded position ``i`` (in ``[-1, n]``) under one-pixel reflect padding."""
    return 1 if i == -1 else n - 2 if i == n else i


def loop_hog_cells(img: np.ndarray, cell: int, nbins: int) -> np.ndarray:
    """Plain loops over one image ``[C, H, W]``: Sobel gradients with reflect padding (the
    kernel ``[[1, 0, -1], [2, 0, -2], [1, 0, -1]]`` as weighted differences, so that equal
    values cancel exactly), hard unsigned bins of the magnitude, cell sums, per-cell-per-channel
    L2 normalisation."""
    c_, h, w = img.shape
    out = np.zeros((c_, nbins, h // cell, w // cell))
    for c in range(c_):
        for i in range(h):
            for j in range(w):
                gx = gy = 0.0
                for u in range(3):  # Sobel: [1, 2, 1]-weighted central differences
                    r, q = _reflect(i + u - 1, h), _reflect(j + u - 1, w)
                    gx += SOBEL_X[u, 0] * (img[c, r, _reflect(j - 1, w)]
                                           - img[c, r, _reflect(j + 1, w)])
                    gy += SOBEL_X[u, 0] * (img[c, _reflect(i - 1, h), q]
                                           - img[c, _reflect(i + 1, h), q])
                mag = math.sqrt(gx * gx + gy * gy)
                k = int(math.floor(math.atan2(gx, gy) / math.pi * nbins)) % nbins
                out[c, k, i // cell, j // cell] += mag
        for ci in range(h // cell):
            for cj in range(w // cell):
                norm = math.sqrt(sum(out[c, k, ci, cj] ** 2 for k in range(nbins)))
                out[c, :, ci, cj] /= max(norm, 1e-12)
    return out


def loop_hog_patches(img: np.ndarray, patch: int, cell: int, nbins: int) -> np.ndarray:
    """Per patch (row-major), its cells' histograms in the order (channel, bin, cell row,
    cell column)."""
    cells = loop_hog_cells(img, cell, nbins)
    c_, _, h, w = img.shape[0], nbins, img.shape[1], img.shape[2]
    u = patch // cell
    rows = []
    for pi in range(h // patch):
        for pj in range(w // patch):
            vec = [cells[c, k, pi * u + a, pj * u + b] for c in range(c_) for k in range(nbins)
                   for a in range(u) for b in range(u)]
            rows.append(vec)
    return np.array(rows)


@pytest.mark.parametrize(("chans", "size", "patch", "cell", "nbins"),
                         [(3, 8, 4, 2, 9), (1, 8, 8, 4, 9), (5, 12, 4, 4, 9), (2, 8, 4, 2, 6)])
def test_matches_the_loop_reference(chans: int, size: int, patch: int, cell: int,
                                    nbins: int) -> None:
    g = torch.Generator().manual_seed(chans * 100 + size)
    x = torch.randn(2, chans, size, size, generator=g, dtype=torch.float64)
    got = hog_patches(x, patch, cell, nbins)
    assert got.shape == (2, (size // patch) ** 2, hog_dim(chans, patch, cell, nbins))
    for b in range(2):
        ref = loop_hog_patches(x[b].numpy(), patch, cell, nbins)
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(hog_cells(x, cell, nbins)[b].numpy(),
                                   loop_hog_cells(x[b].numpy(), cell, nbins), atol=1e-12)


def test_float32_matches_float64() -> None:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h32 = hog_patches(x.float(), 4, 2)
    assert h32.dtype == torch.float32
    # a pixel whose angle sits on a bin edge may flip bins in float32: compare cells' norms and
    # most entries
    close = (h32.double() - hog_patches(x, 4, 2)).abs() < 1e-4
    assert close.float().mean() > 0.99


def test_constant_image_gives_zero_hog() -> None:
    x = torch.full((2, 3, 16, 16), 0.7)
    out = hog_patches(x, 4, 2)
    assert out.shape == (2, 16, 3 * 9 * 4)
    assert bool((out == 0).all())


def test_vertical_edge_votes_in_the_horizontal_gradient_bin() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:] = 1.0  # a vertical edge between columns 3 and 4: gy = 0, |gx| > 0
    cells = hog_cells(x, cell_size=4, nbins=9)  # [1, 1, 9, 2, 2]
    # cells touching the edge put all their (unit) energy in bin floor(9 / 2) = 4
    torch.testing.assert_close(cells[0, 0, :, :, :].sum(dim=(1, 2)),
                               torch.tensor([0, 0, 0, 0, 4.0, 0, 0, 0, 0]))
    # a horizontal edge goes to bin 0 (unsigned: the dark-to-bright direction does not matter)
    y = torch.zeros(1, 1, 8, 8)
    y[..., 4:, :] = 1.0
    assert bool((hog_cells(y, 4)[0, 0, 0] == 1).all())
    assert bool((hog_cells(1 - y, 4)[0, 0, 0] == 1).all())


def test_diagonal_edge_and_unsigned_bins() -> None:
    # x + y ramp: gx = gy (both the Sobel sum over a unit step), theta = pi/4 -> bin 2 of 9
    ii, jj = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    ramp = (ii + jj).reshape(1, 1, 8, 8)
    inner = hog_cells(ramp[..., :, :], 4)  # reflect padding changes only the border pixels
    assert int(inner[0, 0, :, 0, 0].argmax()) == 2
    torch.testing.assert_close(hog_cells(-ramp, 4), inner)  # opposite sign, same bins


def test_channels_are_kept_separate_and_in_order() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    flat = torch.zeros(1, 1, 8, 8)
    two = hog_patches(torch.cat([a, flat, b], 1), 8, 4)  # [1, 1, 3 * 9 * 4]
    per = [hog_patches(t, 8, 4) for t in (a, flat, b)]
    torch.testing.assert_close(two, torch.cat(per, dim=-1))
    assert bool((two[..., 36:72] == 0).all())  # the flat middle channel stays zero


def test_each_cell_histogram_has_unit_norm() -> None:
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    cells = hog_cells(x, 2)
    torch.testing.assert_close(cells.norm(dim=2), torch.ones(3, 4, 8, 8))
    assert bool((cells >= 0).all())


def test_patches_are_row_major_and_contrast_invariant() -> None:
    x = torch.zeros(1, 3, 8, 16)  # a 2 x 4 grid of 4-px patches
    # texture inside patch (row 1, column 2) only: its gradients stay within rows 4-7 and
    # columns 8-11, so only patch 1 * 4 + 2 = 6 has a non-zero HOG (column-major would be 5)
    x[..., 5:7, 9:11] = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(6))
    out = hog_patches(x, 4, 2)
    assert out.shape == (1, 8, 3 * 9 * 4)
    nonzero = (out[0] != 0).any(dim=-1)
    assert nonzero.tolist() == [i == 6 for i in range(8)]
    # normalisation per cell: contrast and brightness changes leave HOG unchanged
    y = torch.randn(1, 3, 8, 16, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(hog_patches(3.0 * y + 1.0, 4, 2), hog_patches(y, 4, 2),
                               atol=1e-5, rtol=1e-5)


def test_bad_sizes_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="cell_size=3 must be a positive divisor"):
        hog_patches(torch.zeros(1, 3, 16, 16), 4, 3)
    with pytest.raises(DataError, match="multiples of the cell size"):
        hog_cells(torch.zeros(1, 3, 10, 10), 4)
    with pytest.raises(DataError, match=r"images \[B, C, H, W\]"):
        hog_cells(torch.zeros(3, 16, 16), 4)
    with pytest.raises(DataError, match="multiples of the patch size"):
        hog_patches(torch.zeros(1, 3, 12, 12), 8, 4)


def test_patches_to_cells_inverts_the_patch_layout() -> None:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cells = patches_to_cells(hog_patches(x, 8, 4), grid=2, in_chans=3, patch_size=8, cell_size=4)
    torch.testing.assert_close(cells, hog_cells(x, 4))
    with pytest.raises(DataError, match=r"\[B, 4, 108\]"):
        patches_to_cells(torch.zeros(1, 4, 10), 2, 3, 8, 4)


def _spread(img: torch.Tensor) -> tuple[float, float]:
    """Weighted variance of the drawn pixels' rows and columns."""
    w = img / img.sum()
    r, c = torch.meshgrid(torch.arange(img.shape[0]).float(), torch.arange(img.shape[1]).float(),
                          indexing="ij")
    return (float((w * (r - (w * r).sum()) ** 2).sum()),
            float((w * (c - (w * c).sum()) ** 2).sum()))


@pytest.mark.parametrize("edge", ["vertical", "horizontal"])
def test_glyphs_draw_lines_along_the_edge_not_the_gradient(edge: str) -> None:
    x = torch.zeros(1, 1, 8, 8)
    if edge == "vertical":
        x[..., 4:] = 1.0  # left dark, right bright: a vertical edge, horizontal gradient
    else:
        x[..., 4:, :] = 1.0
    pic = hog_glyphs(hog_cells(x, 8), glyph_px=24)  # one cell, one glyph
    assert pic.shape == (1, 1, 24, 24) and float(pic.max()) == pytest.approx(1.0)
    rows, cols = _spread(pic[0, 0])
    if edge == "vertical":
        assert rows > 10 * cols, (rows, cols)  # a vertical line
    else:
        assert cols > 10 * rows, (rows, cols)


def test_glyphs_are_dark_without_gradient_and_check_their_input() -> None:
    pic = hog_glyphs(hog_cells(torch.ones(2, 3, 8, 8), 4))
    assert pic.shape == (2, 1, 24, 24) and float(pic.abs().max()) == 0.0
    with pytest.raises(DataError):
        hog_glyphs(torch.zeros(2, 9, 2, 2))
    with pytest.raises(ConfigError, match="glyph_px"):
        hog_glyphs(torch.zeros(1, 1, 9, 1, 1), glyph_px=2)
