"""Context prediction (Doersch et al. 2015): the 8 labels against the reference's ``pos2lbl``,
which patch is where for every label (random and grid pairing), gap and jitter bounds, colour
dropping, the green-magenta projection, pixelation, the per-patch normalisation, the pair
network against a loop, the loss against a loop cross-entropy, and the errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.methods.base import build_method
from selfsup.methods.context_prediction import (
    OFFSETS,
    ContextPrediction,
    downsample_patches,
    drop_colors,
    grid_pairs,
    normalize_patches,
    project_colors,
)
from selfsup.nn.backbones import create_backbone
from selfsup.nn.tiles import cut_tiles
from selfsup.types import Batch, ConfigError, DataError

B = 8
CPU = torch.device("cpu")


def _cp(in_chans: int = 1, **kw: object) -> ContextPrediction:
    torch.manual_seed(0)
    args = {"patch_dim": 8, "hidden_dim": 16, **kw}
    m = build_method("context_prediction", create_backbone("small_cnn", in_chans, 16, width=4),
                     **args)
    assert isinstance(m, ContextPrediction)
    return m


def _pos2lbl(posx: int, posy: int) -> int:
    """cdoersch/deepcontext train.py ``pos2lbl``: offset (x, y) of the second patch -> label."""
    if posy == -1:
        return posx + 1
    if posy == 0:
        return (posx + 7) // 2
    return posx + 6


def test_labels_follow_the_reference() -> None:
    for label, (dy, dx) in enumerate(OFFSETS):
        assert _pos2lbl(dx, dy) == label
    pairs, labels = grid_pairs()
    expected = {(a, b) for a in range(9) for b in range(9) if a != b
                and max(abs(a // 3 - b // 3), abs(a % 3 - b % 3)) == 1}
    assert {tuple(p) for p in pairs.tolist()} == expected and len(pairs) == 40
    for (a, b), label in zip(pairs.tolist(), labels.tolist(), strict=True):
        assert _pos2lbl(b % 3 - a % 3, b // 3 - a // 3) == label


@pytest.mark.parametrize("pairs", ["random", "grid"])
def test_every_label_puts_the_second_patch_where_it_says(pairs: str) -> None:
    m = _cp(pairs=pairs)
    torch.manual_seed(0)
    grid, origins, index, labels = m.sample_layout(2000, 16, 16, CPU)
    assert (grid.tile, grid.pitch, grid.lo, grid.hi) == (3, 5, -1, 1)  # 3-px patches, gap 2
    assert int(origins.min()) >= 0 and int(origins.max()) <= 16 - 3  # inside the image
    if pairs == "random":
        assert origins.shape == (2000, 2, 2) and index.tolist() == [[[0, 1]]] * 2000
        assert labels.unique().tolist() == list(range(8))  # every neighbour is drawn
    first = origins.gather(1, index[..., :1].expand(-1, -1, 2))
    second = origins.gather(1, index[..., 1:].expand(-1, -1, 2))
    step = torch.tensor(OFFSETS)[labels] * grid.pitch  # nominal (dy, dx) of the label
    d = second - first - step  # both patches' own jitter: at most 2 j per axis
    assert int(d.abs().max()) == 2 * grid.hi
    # the relative position is always decodable: rounding to the pitch gives the label
    decoded = torch.round((second - first).float() / grid.pitch).long()
    assert torch.equal(decoded, torch.tensor(OFFSETS)[labels])
    # gaps between side-by-side patches: pitch - tile +- 2 j, from 0 to 4 px here
    side = (torch.tensor(OFFSETS)[labels][..., 0] == 0)
    gaps = ((second - first)[..., 1].abs() - grid.tile)[side]
    assert (int(gaps.min()), int(gaps.max())) == (0, 4)


def test_grid_pairs_cover_the_centre_ring_and_corners() -> None:
    m = _cp(pairs="grid")
    x = torch.randn(2, 1, 16, 16)
    torch.manual_seed(1)
    patches, index, labels = m.make_patches(x)
    assert patches.shape == (2, 9, 1, 3, 3) and index.shape == (2, 40, 2)
    # per image, each label appears 6 (edge) or 4 (diagonal) times
    counts = torch.bincount(labels[0], minlength=8).tolist()
    assert counts == [4, 6, 4, 6, 6, 4, 6, 4]


def test_patches_are_cut_at_the_layout_then_normalised() -> None:
    m = _cp(pairs="grid", color="none", downsample_p=0.0)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 4 + 3
    torch.manual_seed(7)
    patches, _, _ = m.make_patches(x)
    torch.manual_seed(7)
    grid, origins, _, _ = m.sample_layout(3, 16, 16, CPU)
    raw = cut_tiles(x, origins, grid.tile)
    torch.testing.assert_close(patches, normalize_patches(raw))
    for b in range(3):  # the normalisation as a loop: centre each channel, unit RMS per patch
        for k in range(9):
            v = raw[b, k] - raw[b, k].mean(dim=(-2, -1), keepdim=True)
            torch.testing.assert_close(patches[b, k], v / torch.sqrt((v**2).mean() + 1e-5))


def test_colour_dropping_keeps_one_channel_and_noises_the_others() -> None:
    g = torch.Generator().manual_seed(3)
    p = torch.randn(400, 2, 3, 6, 6, generator=g) * torch.tensor([1.0, 5.0, 20.0]).view(3, 1, 1)
    torch.manual_seed(0)
    out = drop_colors(p, 0.01)
    centred = p - p.mean(dim=(-2, -1), keepdim=True)
    same = (out == centred).flatten(-2).all(-1)  # [N, 2, C]: the kept channel, unchanged
    assert same.sum(-1).tolist() == [[1, 1]] * 400  # exactly one per patch
    kept = same.float().argmax(-1)
    assert torch.bincount(kept.flatten(), minlength=3).min() > 200  # uniform over channels
    kept_std = centred.pow(2).mean((-2, -1)).sqrt().gather(-1, kept[..., None])  # [N, 2, 1]
    noise_std = out.pow(2).mean((-2, -1)).sqrt()[~same].view(400, 2, 2)
    ratio = (noise_std / kept_std).mean().item()
    assert ratio == pytest.approx(0.01, rel=0.05)  # 1/100 of the kept channel's std
    grey = torch.randn(4, 2, 1, 5, 5)
    torch.testing.assert_close(drop_colors(grey, 0.01),
                               grey - grey.mean(dim=(-2, -1), keepdim=True))


def test_projection_removes_green_magenta_only() -> None:
    g = torch.Generator().manual_seed(4)
    unit = torch.rand(2, 3, 5, 5, generator=g)
    out = project_colors(unit)
    a = torch.tensor([-1.0, 2.0, -1.0]).view(1, 3, 1, 1) / math.sqrt(6)
    torch.testing.assert_close((out * a).sum(1), torch.zeros(2, 5, 5), atol=1e-6, rtol=0)
    for axis in ([1.0, 1.0, 1.0], [1.0, 0.0, -1.0]):  # grey and red-blue stay as they were
        u = torch.tensor(axis).view(1, 3, 1, 1)
        torch.testing.assert_close((out * u).sum(1), (unit * u).sum(1))
    magenta_green = 0.5 + 0.1 * a.expand(1, 3, 5, 5)  # grey plus a green-magenta tint
    torch.testing.assert_close(project_colors(magenta_green), torch.full((1, 3, 5, 5), 0.5))


def test_project_undoes_the_input_normalisation_first() -> None:
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    m = _cp(3, color="project", downsample_p=0.0, input_mean=mean, input_std=std)
    unit = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    x = (unit - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.manual_seed(2)
    patches, _, _ = m.make_patches(x)
    torch.manual_seed(2)
    grid, origins, _, _ = m.sample_layout(2, 16, 16, CPU)
    ref = normalize_patches(cut_tiles(project_colors(unit), origins, grid.tile))
    torch.testing.assert_close(patches, ref)


def test_pixelation_down_and_up_samples_some_patches() -> None:
    g = torch.Generator().manual_seed(5)
    p = torch.randn(300, 1, 1, 8, 8, generator=g)
    torch.manual_seed(0)
    out = downsample_patches(p, 0.33)
    changed = ~(out == p).flatten(1).all(1)
    assert 0.25 < changed.float().mean().item() < 0.41  # about a third
    sides = []
    for i in torch.nonzero(changed).flatten().tolist():  # each equals a down-up resize ...
        match = [r for r in range(2, 8) if torch.allclose(out[i], F.interpolate(
            F.interpolate(p[i], size=(r, r), mode="bilinear", align_corners=False),
            size=(8, 8), mode="bilinear", align_corners=False))]
        assert match, i
        sides.append(match[0])
    assert min(sides) == 2 and max(sides) == 6  # ... to 2 .. 6 px of an 8-px patch
    tiny = torch.randn(10, 1, 1, 2, 2)
    assert torch.equal(downsample_patches(tiny, 1.0), tiny)  # 2-px patches stay as they are


def test_pair_network_is_shared_late_fusion_and_the_loss_is_cross_entropy() -> None:
    m = _cp(pairs="grid").eval()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(4)
    patches, index, labels = m.make_patches(x)
    logits, z = m.classify(patches, index)
    assert logits.shape == (3, 40, 8)
    for b in range(3):
        for k in (0, 17, 39):
            a, c = index[b, k].tolist()
            za = m.patch_head(m.backbone(patches[b, a][None]))  # the same tower for both
            zc = m.patch_head(m.backbone(patches[b, c][None]))
            torch.testing.assert_close(logits[b, k], m.pair_head(torch.cat([za, zc], 1))[0],
                                       atol=1e-5, rtol=1e-4)
    flipped, _ = m.classify(patches, index.flip(-1))
    assert not torch.allclose(flipped, logits)  # first/second order matters
    torch.manual_seed(4)
    out = m.training_step(Batch(views=[x], index=torch.arange(3)))
    ref = sum(-torch.log_softmax(logits[b, k], 0)[labels[b, k]]
              for b in range(3) for k in range(40)) / 120
    torch.testing.assert_close(out.loss, ref)


def test_paper_defaults_and_bn_without_affine() -> None:
    from selfsup.methods.context_prediction import Config

    cfg = Config()
    assert (cfg.pairs, cfg.color, cfg.noise_ratio, cfg.downsample_p) == ("random", "drop",
                                                                         0.01, 0.33)
    assert (cfg.gap_ratio, cfg.jitter_ratio, cfg.patch_dim, cfg.hidden_dim) == (0.5, 7 / 96,
                                                                               4096, 4096)
    m = _cp()
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm1d)]
    assert len(bns) == 2 and not any(bn.affine for bn in bns)
    assert ContextPrediction.default_optim["momentum"] == 0.0


def test_errors_name_the_option() -> None:
    m = _cp()
    with pytest.raises(DataError, match=r"7-px images.*>= 8 px"):
        m.training_step(Batch(views=[torch.randn(2, 1, 7, 7)], index=torch.arange(2)))
    with pytest.raises(DataError, match="one view"):
        m.training_step(Batch(views=[], index=torch.arange(2)))
    with pytest.raises(ConfigError, match="method_args.color='project'.*3 channels, got 1"):
        _cp(1, color="project")
    with pytest.raises(ConfigError, match="method_args.input_mean needs 3 values"):
        _cp(3, input_mean=[0.5])
    for bad in ({"pairs": "all"}, {"color": "lab"}, {"downsample_p": 1.5},
                {"noise_ratio": -1.0}, {"gap_ratio": -0.5}, {"patch_dim": 0},
                {"bn_stats": "batch"}):
        with pytest.raises(ConfigError, match=f"method_args.{next(iter(bad))}"):
            _cp(**bad)


def test_picture_rows_show_the_pair_and_the_prediction(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _cp(jitter_ratio=0.0).eval()  # no jitter: a right guess lands on the true corner
    unit = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    mean, std = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    seed = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(seed)
    _, _, _, labels = m.sample_layout(4, 16, 16, CPU, pairs="random")
    right = F.one_hot(labels, 8).float()  # [4, 1, 8]
    monkeypatch.setattr(m, "classify", lambda p, i: (right, None))
    rows = dict(m.picture_rows(unit, mean, std, torch.Generator().manual_seed(0)))
    assert list(rows) == ["pair", "predicted"] and rows["pair"].shape == (4, 3, 16, 16)
    assert int((rows["pair"] != 0.5).sum()) == 4 * 3 * 2 * 16  # two 4-px patches per image
    torch.testing.assert_close(rows["predicted"], rows["pair"])
    monkeypatch.setattr(m, "classify", lambda p, i: (F.one_hot(7 - labels, 8).float(), None))
    wrong = dict(m.picture_rows(unit, mean, std, torch.Generator().manual_seed(0)))
    assert not torch.equal(wrong["predicted"], rows["pair"])  # the opposite side: moved
