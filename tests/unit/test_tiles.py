"""Tile grids (``selfsup.nn.tiles``): cutting against a loop reference (and pasting back), the
reference layouts of Jigsaw (64-px tiles in 85-px cells) and context prediction (96-px patches, 48-px gaps, +-7 px
jitter) and their small-image scaling, the offset bounds of sampled grids, per-channel shifts,
per-tile normalisation against a loop, the DDP rule that each rank draws its rows of the
global batch, and tile encoding with BatchNorm running statistics kept for whole images."""

from __future__ import annotations

import pytest
import torch

from selfsup.nn import tiles as tiles_mod
from selfsup.nn.tiles import (
    TileGrid,
    as_rgb,
    batch_statistics,
    context_grid,
    cut_tiles,
    encode_tiles,
    jigsaw_grid,
    local_rows,
    normalize_tiles,
    paste_tiles,
    shift_channels,
)
from selfsup.types import ConfigError, DataError

CPU = torch.device("cpu")


def test_cut_tiles_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, 13, generator=g)
    t = 4
    origins = torch.stack([torch.randint(0, 8, (2, 5), generator=g),
                           torch.randint(0, 10, (2, 5), generator=g)], -1)
    per_channel = torch.stack([torch.randint(0, 8, (2, 5, 3), generator=g),
                               torch.randint(0, 10, (2, 5, 3), generator=g)], -1)
    shared, own = cut_tiles(x, origins, t), cut_tiles(x, per_channel, t)
    assert shared.shape == own.shape == (2, 5, 3, t, t)
    for b in range(2):
        for k in range(5):
            for c in range(3):
                y0, x0 = origins[b, k].tolist()  # (y, x): a swap would read other pixels
                torch.testing.assert_close(shared[b, k, c], x[b, c, y0:y0 + t, x0:x0 + t])
                y1, x1 = per_channel[b, k, c].tolist()
                torch.testing.assert_close(own[b, k, c], x[b, c, y1:y1 + t, x1:x1 + t])


def test_cut_tiles_rejects_tiles_outside_the_image() -> None:
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(DataError, match="leaves the 8x8 image"):
        cut_tiles(x, torch.tensor([[[5, 0]]]), 4)
    with pytest.raises(DataError, match="leaves"):
        cut_tiles(x, torch.tensor([[[0, -1]]]), 2)


def test_reference_layouts_and_small_image_scaling() -> None:
    # Jigsaw (Caffe data_transformer.cpp): the 255-px crop in 85-px cells, 64-px tiles at a
    # random offset 0..21 inside each cell
    assert jigsaw_grid(255, 64 / 85) == TileGrid(grid=3, tile=64, pitch=85, lo=0, hi=21)
    assert jigsaw_grid(16, 64 / 85) == TileGrid(3, 4, 5, 0, 1)  # round(5 x 0.753) = 4
    assert jigsaw_grid(8, 64 / 85) == TileGrid(3, 2, 2, 0, 0)  # 2-px tiles fill 2-px cells
    # context prediction (deepcontext train.py): 96-px patches, gap 48, jitter +-7 need 398 px
    assert context_grid(398, 0.5, 7 / 96) == TileGrid(3, 96, 144, -7, 7)
    assert context_grid(16, 0.5, 7 / 96) == TileGrid(3, 3, 5, -1, 1)  # 9 + 4 + 2 = 15 px
    assert context_grid(32, 0.5, 7 / 96) == TileGrid(3, 7, 11, -1, 1)  # 21 + 8 + 2 = 31 px
    assert context_grid(8, 0.5, 7 / 96) == TileGrid(3, 2, 3, 0, 0)  # no room left for jitter
    assert context_grid(16, 0.5, 0.0).hi == 0  # jitter off stays off
    g = context_grid(398, 0.5, 7 / 96)
    assert g.min_gap == 48 - 14 and g.extent + g.hi - g.lo == 398


def test_too_small_images_and_bad_ratios_raise() -> None:
    with pytest.raises(DataError, match=r"5-px images give 1-px tiles.*>= 6 px.*image_size"):
        jigsaw_grid(5, 64 / 85)
    with pytest.raises(DataError, match=r"7-px images.*>= 8 px.*image_size"):
        context_grid(7, 0.5, 7 / 96)
    with pytest.raises(ConfigError, match="method_args.tile_ratio"):
        jigsaw_grid(16, 1.5)
    with pytest.raises(ConfigError, match="method_args.jitter_ratio"):
        context_grid(16, 0.5, -0.1)


@pytest.mark.parametrize("grid", [TileGrid(3, 4, 5, 0, 1), TileGrid(3, 3, 5, -1, 1),
                                  TileGrid(3, 8, 11, -2, 1)])
def test_sampled_offsets_stay_in_their_bounds(grid: TileGrid) -> None:
    torch.manual_seed(0)
    side = grid.extent + grid.hi - grid.lo + 2  # 2 px of room for the grid's own position
    o = grid.sample_origins(4000, side, side, CPU)  # [N, 9, 2]
    assert o.shape == (4000, 9, 2) and o.dtype == torch.int64
    assert int(o.min()) >= 0 and int(o.max()) <= side - grid.tile  # inside the image
    r = torch.arange(3) * grid.pitch
    nominal = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(1, 9, 2)
    rel = o - nominal  # = grid corner + each tile's own offset in [lo, hi]
    spread = rel.amax(1) - rel.amin(1)  # offsets of one grid differ by at most hi - lo ...
    assert int(spread.max()) == grid.hi - grid.lo  # ... and do reach it
    corner_lo = rel.amax(1) - grid.hi  # the corner lies in [max rel - hi, min rel - lo]
    corner_hi = rel.amin(1) - grid.lo
    assert bool((corner_lo <= corner_hi).all())
    # every offset value occurs (uniform integers, not only the extremes)
    offsets = (rel - rel.amin(1, keepdim=True)).unique()
    assert offsets.tolist() == list(range(grid.hi - grid.lo + 1))
    # neighbouring tiles: gaps from min_gap up to pitch - tile + (hi - lo)
    gaps = o[:, 1:3, 1] - o[:, 0:2, 1] - grid.tile
    assert int(gaps.min()) == grid.min_gap
    assert int(gaps.max()) == grid.pitch - grid.tile + grid.hi - grid.lo


def test_grid_that_does_not_fit_raises() -> None:
    with pytest.raises(DataError, match="does not fit"):
        TileGrid(3, 4, 5, 0, 1).sample_origins(2, 14, 14, CPU)


def test_shift_channels_moves_each_channel_within_bounds() -> None:
    torch.manual_seed(0)
    origins = torch.tensor([[[0, 0], [4, 4], [8, 8]]]).expand(500, -1, -1)
    out = shift_channels(origins, 3, 2, 12, 12, 4)  # [N, 3, C, 2]
    assert out.shape == (500, 3, 3, 2)
    d = out - origins[:, :, None, :]
    assert int(d.abs().max()) == 2  # +-2 px reached, never more
    assert int(out.min()) == 0 and int(out.max()) == 12 - 4  # clamped inside the image
    assert bool((d[:, 1] == -2).any()) and bool((d[:, 1] == 2).any())  # both directions
    assert bool((d[:, 1, 0] != d[:, 1, 1]).any())  # channels move independently


def test_normalize_tiles_matches_loop() -> None:
    g = torch.Generator().manual_seed(1)
    t = torch.randn(2, 3, 3, 4, 4, generator=g) * 5 + 2
    t[0, 0] = 7.0  # a constant tile becomes zeros
    eps = 1e-5
    chan, whole = normalize_tiles(t, "channel", eps), normalize_tiles(t, "tile", eps)
    for b in range(2):
        for k in range(3):
            v = t[b, k]
            for c in range(3):
                m, var = v[c].mean(), ((v[c] - v[c].mean()) ** 2).mean()
                torch.testing.assert_close(chan[b, k, c], (v[c] - m) / torch.sqrt(var + eps))
            m, var = v.mean(), ((v - v.mean()) ** 2).mean()  # one mean/std over the channels
            torch.testing.assert_close(whole[b, k], (v - m) / torch.sqrt(var + eps))
    assert bool((chan[0, 0] == 0).all())
    assert normalize_tiles(t, "none") is t
    with pytest.raises(ConfigError, match="method_args.tile_norm"):
        normalize_tiles(t, "batch")


def test_each_rank_draws_its_rows_of_the_global_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    whole = torch.rand(8, 2)
    monkeypatch.setattr(tiles_mod.dist, "world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(tiles_mod.dist, "rank", lambda r=rank: r)
        torch.manual_seed(3)
        torch.testing.assert_close(local_rows(lambda n: torch.rand(n, 2), 4),
                                   whole[4 * rank : 4 * rank + 4])


def test_paste_tiles_inverts_cut_tiles() -> None:
    g = torch.Generator().manual_seed(5)
    tiles = torch.rand(2, 3, 2, 3, 3, generator=g)
    origins = torch.tensor([[[0, 0], [0, 4], [5, 2]], [[1, 1], [4, 5], [5, 0]]])
    canvas = torch.full((2, 2, 8, 9), 0.5)
    out = paste_tiles(canvas, tiles, origins)
    torch.testing.assert_close(cut_tiles(out, origins, 3), tiles)
    covered = paste_tiles(torch.zeros_like(canvas), torch.ones_like(tiles), origins)
    assert bool((out[covered == 0] == 0.5).all()) and int(covered.sum()) == 2 * 3 * 2 * 9
    assert as_rgb(canvas[:, :1]).shape == (2, 3, 8, 9) and as_rgb(canvas).shape == (2, 3, 8, 9)


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())


def _stats(net: torch.nn.Module) -> list[torch.Tensor]:
    bn = net[1]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def test_encode_tiles_keeps_the_running_statistics_of_whole_images() -> None:
    g = torch.Generator().manual_seed(0)
    tiles, images = torch.randn(18, 1, 4, 4, generator=g) * 3 + 2, torch.randn(2, 1, 12, 12,
                                                                               generator=g)
    net, ref = _bn_net().train(), _bn_net().train()
    out = encode_tiles(net, tiles, images)
    torch.testing.assert_close(out, ref(tiles))  # the tiles' own batch statistics
    ref_img = _bn_net().train()
    ref_img(images)  # running statistics of one pass over the images only
    for a, b in zip(_stats(net), _stats(ref_img), strict=True):
        torch.testing.assert_close(a, b)
    plain = _bn_net().train()
    encode_tiles(plain, tiles, None)  # images=None: the tiles update them, as backbone(tiles)
    for a, b in zip(_stats(plain), _stats(ref), strict=True):
        torch.testing.assert_close(a, b)
    frozen = _bn_net().eval()  # eval-mode BN (the DDP grid): nothing is updated
    encode_tiles(frozen, tiles, images)
    for a, b in zip(_stats(frozen), _stats(_bn_net()), strict=True):
        torch.testing.assert_close(a, b)
    out.sum().backward()  # gradients flow through the tile pass
    assert net[0].weight.grad is not None


def test_batch_statistics_on_an_eval_model() -> None:
    tiles = torch.randn(9, 1, 4, 4, generator=torch.Generator().manual_seed(1)) + 5
    net = _bn_net().eval()
    before = _stats(net)
    with batch_statistics(net, include_eval=True):
        got = net(tiles)
    train_out = _bn_net().train()(tiles)
    torch.testing.assert_close(got, train_out)  # normalised with the tiles' statistics
    assert not net[1].training and net[1].momentum == 0.1  # mode and momentum restored
    for a, b in zip(_stats(net), before, strict=True):
        torch.testing.assert_close(a, b)
    with batch_statistics(net):  # without include_eval an eval-mode layer stays in eval mode
        torch.testing.assert_close(net(tiles), _bn_net().eval()(tiles))
