"""Jigsaw clustering beyond the registry contract: the shuffle (a permutation of the tiles, every
montage from different images), the tile regions and crops, every tile landing where the shuffle
says (loop reference), the location labels matching the tiles' content, the decoupled tile
features, the positive mask and the clustering loss against a loop over ``SupCluLoss``'s
formula, the whole step's loss rebuilt from its parts, and the error messages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.augment import resized_crop
from selfsup.losses.contrastive import info_nce
from selfsup.methods.base import build_method
from selfsup.methods.jigsaw_clustering import (
    Config,
    JigsawClustering,
    crop_tiles,
    draw_tile_boxes,
)
from selfsup.nn.backbones import create_backbone
from selfsup.nn.montage import (
    cluster_masks,
    draw_assignment,
    quadrant_regions,
    region_features,
)
from selfsup.types import Batch, ConfigError, DataError

SIZE = 16


def _method(in_chans: int = 1, **kw: object) -> JigsawClustering:
    torch.manual_seed(0)
    bb = create_backbone("small_cnn", in_chans=in_chans, image_size=SIZE, width=4)
    m = build_method("jigsaw_clustering", bb, proj_dim=16, **kw)
    assert isinstance(m, JigsawClustering)
    return m


@pytest.mark.parametrize("n", [4, 5, 9, 16])
def test_distinct_shuffle_is_a_permutation_with_different_images_per_montage(n: int) -> None:
    same_slot = 0
    for seed in range(20):
        a = draw_assignment(n, 4, "distinct", generator=torch.Generator().manual_seed(seed))
        assert a.shape == (n, 4)
        assert sorted(a.flatten().tolist()) == list(range(4 * n))  # every tile exactly once
        img = a // 4
        for k in range(n):  # loop reference of "tiles of one montage come from different images"
            assert len(set(img[k].tolist())) == 4, (seed, k, img[k])
        for p in range(4):  # each image once per slot
            assert sorted(img[:, p].tolist()) == list(range(n))
        same_slot += int((a % 4 == torch.arange(4)).sum())
    # a tile's slot says nothing about its location: loc == slot for about 1 in 4 tiles
    assert abs(same_slot / (20 * 4 * n) - 0.25) < 0.1


def test_random_shuffle_is_the_reference_randperm() -> None:
    a = draw_assignment(4, 4, "random", generator=torch.Generator().manual_seed(0))
    ref = torch.randperm(16, generator=torch.Generator().manual_seed(0)).view(4, 4)
    assert torch.equal(a, ref)
    # unconstrained: with 4 images some montage of some draw repeats an image (why "distinct")
    dup = any(len(set((draw_assignment(4, 4, "random", generator=torch.Generator()
                                       .manual_seed(s)) // 4)[0].tolist())) < 4
              for s in range(20))
    assert dup
    with pytest.raises(DataError, match="at least grid\\^2 = 4 images, got 3"):
        draw_assignment(3, 4, "distinct")
    with pytest.raises(ConfigError, match="method_args.shuffle"):
        draw_assignment(4, 4, "swap")


def test_quadrant_regions() -> None:
    r = quadrant_regions(2, 0.3)
    exp = torch.tensor([[0, 0, .8, .8], [0, .2, .8, 1], [.2, 0, 1, .8], [.2, .2, 1, 1]])
    torch.testing.assert_close(r, exp)
    third = quadrant_regions(3, 0.0)
    assert third.shape == (9, 4)
    torch.testing.assert_close(third[4], torch.tensor([1 / 3, 1 / 3, 2 / 3, 2 / 3]))
    torch.testing.assert_close(quadrant_regions(3, 0.1)[4],
                               torch.tensor([1 / 3 - .1, 1 / 3 - .1, 2 / 3 + .1, 2 / 3 + .1]))
    with pytest.raises(ConfigError, match="method_args.cross_ratio"):
        quadrant_regions(2, 0.5)
    with pytest.raises(ConfigError, match="method_args.grid"):
        quadrant_regions(1, 0.3)


def test_tile_boxes_stay_in_their_region() -> None:
    g = torch.Generator().manual_seed(0)
    boxes, flip = draw_tile_boxes(200, 2, 0.3, 16, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, generator=g)
    regions = quadrant_regions(2, 0.3)
    b = boxes.view(200, 4, 4)
    tol = 1 / 16  # the region's side is rounded to whole pixels (12.8 -> 13)
    assert (b[..., :2] >= regions[:, :2] - tol).all() and (b[..., 2:] <= regions[:, 2:] + tol).all()
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) / 0.64  # of the region
    assert area.min() > 0.15 and area.max() <= 1.05 and area.std() > 0.1  # scale 0.2-1
    assert 0.4 < flip.float().mean() < 0.6
    # scale 1, ratio 1, no flip: each tile is its whole region
    whole, none = draw_tile_boxes(3, 2, 0.0, 16, (1.0, 1.0), (1.0, 1.0), 0.0)
    torch.testing.assert_close(whole.view(3, 4, 4), quadrant_regions(2, 0.0).expand(3, 4, 4))
    assert not none.any()


def test_montages_put_every_tile_where_the_shuffle_says() -> None:
    m = _method(3)
    n, t = 6, SIZE // 2
    views = torch.randn(n, 4, 3, SIZE, SIZE)
    g = torch.Generator().manual_seed(1)
    assign = draw_assignment(n, 4, "distinct", generator=g)
    boxes, flip = draw_tile_boxes(n, 2, 0.3, SIZE, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, generator=g)
    crops = torch.cat([boxes, flip.unsqueeze(1).float()], 1)
    got = m.montages(crop_tiles(views, crops, 2), assign[2:5])  # a slice, as one rank builds
    assert got.shape == (3, 3, 2 * t, 2 * t)
    for k in range(3):  # loop reference
        for p in range(4):
            tid = int(assign[2 + k, p])
            img, loc = divmod(tid, 4)
            ref = resized_crop(views[img, loc][None], boxes[tid][None], t, flip[tid][None])[0]
            r, c = divmod(p, 2)
            torch.testing.assert_close(got[k, :, r * t:(r + 1) * t, c * t:(c + 1) * t], ref)


def test_location_labels_match_the_tiles_content() -> None:
    """Views whose pixels say (image, location): with exact quadrants (no overlap, whole
    region, no flip, no resampling) each montage cell holds ``10 * image + location`` of the tile
    the shuffle put there, and the location label ``id % 4`` is that location."""
    n = 5
    img = torch.arange(n).view(n, 1, 1, 1, 1).float()
    loc = torch.arange(4).view(1, 4, 1, 1, 1).float()
    views = (10 * img + loc).expand(n, 4, 1, SIZE, SIZE).clone()
    # the quadrant of location j of every view also carries j in its own pixels
    for j in range(4):
        r, c = divmod(j, 2)
        views[:, :, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 0.1 * j
    assign = draw_assignment(n, 4, "distinct", generator=torch.Generator().manual_seed(3))
    boxes, flip = draw_tile_boxes(n, 2, 0.0, SIZE, (1.0, 1.0), (1.0, 1.0), 0.0)
    crops = torch.cat([boxes, flip.unsqueeze(1).float()], 1)
    mont = _method().montages(crop_tiles(views, crops, 2), assign)
    labels = assign % 4  # the location branch's targets, as training_step takes them
    for k in range(n):
        for p in range(4):
            r, c = divmod(p, 2)
            cell = mont[k, 0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
            i, j = divmod(int(assign[k, p]), 4)
            assert int(labels[k, p]) == j
            torch.testing.assert_close(cell, torch.full_like(cell, 10 * i + 1.1 * j))


def test_region_features() -> None:
    fmap = torch.randn(3, 5, 2, 2)
    got = region_features(fmap, 2)  # [3 * 4, 5], slot order
    torch.testing.assert_close(got.view(3, 4, 5), fmap.flatten(2).transpose(1, 2))
    big = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(region_features(big, 2).view(2, 4, 5)[:, 3],
                               big[:, :, 2:, 2:].mean(dim=(2, 3)))
    seven = torch.randn(2, 5, 7, 7)  # the reference: ResNet's 7 x 7 -> 8 x 8 -> 2 x 2
    ref = F.adaptive_avg_pool2d(F.interpolate(seven, size=(8, 8), mode="bilinear",
                                              align_corners=False), 2)
    torch.testing.assert_close(region_features(seven, 2).view(2, 4, 5),
                               ref.flatten(2).transpose(1, 2))


def _supclu_loop(z: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    """SupCluLoss (JigClu/losses.py) as plain loops: anchors = all tiles, positives = other tiles
    of the same image, the anchor left out of the denominator, times t / base_t = 1."""
    n, total = z.shape[0], 0.0
    for a in range(n):
        denom = sum(math.exp(float(z[a] @ z[k]) / t) for k in range(n) if k != a)
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        total += -sum(float(z[a] @ z[p]) / t - math.log(denom) for p in pos) / len(pos)
    return total / n


def test_cluster_masks_and_loss_against_loops() -> None:
    src_all = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0, 2, 2, 0, 1])
    pos, self_mask = cluster_masks(src_all[4:8], src_all, 4)
    for a in range(4):
        for c in range(12):
            assert bool(self_mask[a, c]) == (c == 4 + a)
            assert bool(pos[a, c]) == (c != 4 + a and int(src_all[c]) == int(src_all[4 + a]))
    z = F.normalize(torch.randn(12, 6, dtype=torch.float64), dim=1)
    pos, self_mask = cluster_masks(src_all, src_all, 0)
    got = info_nce(z, z, pos, 0.07, self_mask=self_mask, normalize=False)
    assert got.item() == pytest.approx(_supclu_loop(z, src_all, 0.07), rel=1e-9)
    # the anchor counted in its own denominator (a plausible slip) changes the loss
    wrong = info_nce(z, z, pos, 0.07, normalize=False)
    assert abs(wrong.item() - got.item()) > 1e-3


def test_step_loss_is_clustering_plus_location_from_its_parts() -> None:
    m = _method(3, loc_weight=0.5).eval()  # BN on running stats: the parts see the same network
    views = [torch.randn(6, 3, SIZE, SIZE) for _ in range(4)]
    torch.manual_seed(7)
    out = m.training_step(Batch(views=views, index=torch.arange(6)))
    torch.manual_seed(7)
    assign, crops = m.build_task(6, SIZE, torch.device("cpu"))
    feats = m.tile_features(m.montages(crop_tiles(torch.stack(views, 1), crops, 2), assign))
    z = F.normalize(m.clu_head(feats), dim=1).double()
    ids = assign.flatten()
    clu = _supclu_loop(z.detach(), ids // 4, 0.07)
    loc = F.cross_entropy(m.loc_head(feats), ids % 4).item()
    assert out.loss.item() == pytest.approx(clu + 0.5 * loc, rel=1e-4)
    assert out.logs["loss_loc"].item() == pytest.approx(loc, rel=1e-5)
    assert out.embeddings is not None and out.embeddings.shape == (6, 16)


def test_defaults_and_heads() -> None:
    cfg = Config()
    assert (cfg.grid, cfg.proj_dim, cfg.temperature, cfg.clu_weight, cfg.loc_weight,
            cfg.cross_ratio, cfg.tile_scale, cfg.tile_hflip_p, cfg.shuffle) == (
        2, 128, 0.07, 1.0, 1.0, 0.3, (0.2, 1.0), 0.5, "distinct")
    torch.manual_seed(0)
    m = build_method("jigsaw_clustering", create_backbone("small_cnn", 1, SIZE, width=8))
    kinds = [type(x).__name__ for x in m.clu_head]
    assert kinds == ["Linear", "ReLU", "Linear"]
    assert (m.clu_head[0].in_features, m.clu_head[0].out_features, m.clu_head[2].out_features) \
        == (64, 64, 128)
    assert isinstance(m.loc_head, nn.Linear) and m.loc_head.out_features == 4
    assert JigsawClustering.default_optim["lr"] == 0.03
    assert JigsawClustering.default_views == "jigsaw_clustering"


def test_bad_input() -> None:
    m = _method()
    x = torch.randn(4, 1, SIZE, SIZE)
    with pytest.raises(DataError, match="needs 4 square views"):
        m.training_step(Batch(views=[x, x], index=torch.arange(4)))
    with pytest.raises(DataError, match="at least grid\\^2 = 4 images"):
        m.training_step(Batch(views=[x[:3]] * 4, index=torch.arange(3)))
    bb = create_backbone("small_cnn", 1, SIZE, width=4)
    for bad, key in (({"grid": 1}, "grid"), ({"cross_ratio": 0.5}, "cross_ratio"),
                     ({"temperature": 0.0}, "temperature"), ({"shuffle": "x"}, "shuffle"),
                     ({"tile_scale": (0.5, 0.2)}, "tile_scale"), ({"proj_dim": 0}, "proj_dim")):
        with pytest.raises(ConfigError, match=f"method_args.{key}"):
            build_method("jigsaw_clustering", bb, **bad)

    class Pooled(nn.Module):
        num_features, in_chans = 4, 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :4]

    with pytest.raises(ConfigError, match="forward_features"):
        build_method("jigsaw_clustering", Pooled())


def test_picture_rows() -> None:
    m = _method().eval()
    x = torch.randn(5, 1, SIZE, SIZE)
    rows = m.picture_rows(x, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1),
                          torch.Generator().manual_seed(0))
    assert [name for name, _ in rows] == ["montages"]
    assert rows[0][1].shape == (5, 3, SIZE, SIZE)
    assert rows[0][1].min() >= 0 and rows[0][1].max() <= 1


def test_small_map_warns_once_and_still_trains(caplog: pytest.LogCaptureFixture) -> None:
    """small_cnn's map of an 8-px montage is 1 x 1: the step runs (the resume grid trains at
    8 px) and says once that the tiles share a cell."""
    import logging

    torch.manual_seed(0)
    m = build_method("jigsaw_clustering", create_backbone("small_cnn", 1, 8, width=4),
                     proj_dim=8)
    batch = Batch(views=[torch.randn(4, 1, 8, 8) for _ in range(4)], index=torch.arange(4))
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        for _ in range(2):
            assert torch.isfinite(m.training_step(batch).loss)
    assert caplog.text.count("fewer than 2 x 2 tiles") == 1
