"""CPC v2 beyond the registry contract: the patch grid, the causal context, causality of the whole
method in training mode (no batch statistics, per-patch augmentation), targets that share no pixel
with their context, the loss against a loop over the paper's formula, and the exported encoder."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup.losses.nce import cpc_info_nce
from selfsup.methods.base import build_method
from selfsup.methods.cpc_v2 import (
    ContextNetwork,
    CPCv2,
    augment_patches,
    extract_patches,
    step_offsets,
)
from selfsup.nn.backbones import create_backbone
from selfsup.nn.backbones.norm import replace_batchnorm
from selfsup.types import Batch, ConfigError, DataError

SIZE = 16


def _bb(in_chans: int = 1, size: int = SIZE) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("small_cnn", in_chans=in_chans, image_size=size, width=4)


def _bns(m: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]


def test_extract_patches_grid_and_content() -> None:
    x = torch.randn(2, 3, 16, 16)
    p = extract_patches(x, 4, 2)
    assert p.shape == (2, 7, 7, 3, 4, 4)
    torch.testing.assert_close(p[1, 2, 5], x[1, :, 4:8, 10:14])
    assert extract_patches(torch.randn(1, 1, 32, 32), 8, 4).shape[1:3] == (7, 7)
    with pytest.raises(DataError, match="patch_size"):
        extract_patches(x, 17, 2)


def test_context_network_is_causal_over_rows() -> None:
    torch.manual_seed(0)
    net = ContextNetwork(8, 16, blocks=3)
    z = torch.randn(2, 8, 7, 7)
    c = net(z)
    for i in range(6):
        z2 = z.clone()
        z2[:, :, i + 1:] = torch.randn_like(z2[:, :, i + 1:])
        c2 = net(z2)
        torch.testing.assert_close(c2[:, :, : i + 1], c[:, :, : i + 1])  # rows <= i unchanged
        assert not torch.allclose(c2[:, :, i + 1], c[:, :, i + 1])
    # row i does see its own row and rows above, across all columns within reach
    z3 = z.clone()
    z3[:, :, 2, 3] += 1.0
    assert not torch.allclose(net(z3)[:, :, 2], c[:, :, 2])


# ------------------------------------------------------------------ no batch statistics


def test_replace_batchnorm_gives_a_per_sample_layer_norm() -> None:
    bb = _bb(3)
    bns = _bns(bb)
    n_bn = len(bns)
    bns[0].weight.data.fill_(0.5)  # an init that must carry over
    replace_batchnorm(bb)
    gns = [x for x in bb.modules() if isinstance(x, nn.GroupNorm)]
    assert not _bns(bb) and len(gns) == n_bn and all(g.num_groups == 1 for g in gns)
    assert torch.all(gns[0].weight == 0.5)
    assert not any("running" in k for k in bb.state_dict())
    # GroupNorm(1, C) is LayerNorm over (C, H, W) of each sample
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(nn.GroupNorm(1, 4, affine=False)(x),
                               nn.functional.layer_norm(x, x.shape[1:]))
    # in training mode a sample's features do not depend on the rest of the batch
    bb.train()
    x = torch.randn(6, 3, 8, 8)
    torch.testing.assert_close(bb(x)[:2], bb(x[:2]), rtol=0, atol=1e-6)
    assert len(_bns(replace_batchnorm(_bb(3), "batch"))) == n_bn  # "batch": unchanged
    with pytest.raises(ConfigError, match="norm"):
        replace_batchnorm(_bb(3), "instance")


def test_cpc_converts_the_backbone_and_rebuilds_the_same_encoder() -> None:
    m = build_method("cpc_v2", _bb(3))
    assert not _bns(m.backbone) and m.encoder() is m.backbone
    # checkpoints/exports rebuild the encoder through build_encoder: same keys, strict load
    enc = CPCv2.build_encoder(create_backbone("small_cnn", in_chans=3, image_size=SIZE, width=4),
                              m.cfg)
    enc.load_state_dict(m.backbone.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    torch.testing.assert_close(enc.eval()(x), m.backbone.eval()(x))
    assert _bns(build_method("cpc_v2", _bb(3), norm="batch").backbone)
    with pytest.raises(ConfigError, match="method_args.norm"):
        build_method("cpc_v2", _bb(3), norm="instance")


@pytest.mark.parametrize("in_chans", [1, 3])
def test_cpc_context_ignores_pixels_below_the_row_in_train_mode(in_chans: int) -> None:
    """The fixed leak: in training mode, with the per-patch augmentation on, the context of rows
    <= 3 is exactly unchanged when pixel rows >= 10 change (patch row r covers [2r, 2r + 4))."""

    def contexts(norm: str) -> tuple[torch.Tensor, torch.Tensor]:
        m = build_method("cpc_v2", _bb(in_chans), norm=norm, patch_jitter=0.25).train()
        assert m.patch_geometry(16) == (4, 2, 7) and len(m.predictors) == 5
        x = torch.randn(4, in_chans, 16, 16, generator=torch.Generator().manual_seed(0))
        x2 = x.clone()
        x2[:, :, 10:] = torch.randn(4, in_chans, 6, 16, generator=torch.Generator().manual_seed(1))
        out = []
        for img in (x, x2):
            torch.manual_seed(7)  # the same per-patch augmentation draws
            with torch.no_grad():
                out.append(m.context(m.patch_features(img)))
        return out[0], out[1]

    c, c2 = contexts("layer")
    torch.testing.assert_close(c2[:, :, :4], c[:, :, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(c2[:, :, 4:], c[:, :, 4:])
    c, c2 = contexts("batch")  # BatchNorm in training mode leaks the rows below into row 0
    assert (c2[:, :, :4] - c[:, :, :4]).abs().max() > 1e-3


# ------------------------------------------------------------------ target geometry


@pytest.mark.parametrize(("side", "patch", "stride"), [
    (16, 4, 2), (28, 7, 3), (32, 8, 4), (256, 64, 32), (28, 14, 7), (30, 10, 3), (24, 6, 6),
    (20, 4, 1),
])
def test_targets_share_no_pixel_with_their_context(side: int, patch: int, stride: int) -> None:
    grid = (side - patch) // stride + 1
    offsets = step_offsets(patch, stride, 10, grid)
    assert offsets, "at least one usable step on these grids"
    for d in offsets:
        for i in range(grid - d):
            context_end = i * stride + patch  # pixels [0, end) feed c_i (patch rows 0..i)
            target = range((i + d) * stride, (i + d) * stride + patch)
            assert context_end <= target.start, (d, i)
    # skip only the overlapping rows: one row less than the first offset overlaps
    first = offsets[0]
    assert (first - 1) * stride < patch and offsets == list(range(first, first + len(offsets)))
    assert step_offsets(4, 2, 5, 7) == [2, 3, 4, 5, 6]  # default geometry: k=1 -> row i + 2
    assert step_offsets(14, 7, 2, 3) == [2]  # the CPU setting: one step fits a 3-row grid


def _loop_loss(m: CPCv2, x: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """Oord eq. 4 by hand: the k-th target of context row i is the k-th row t whose patch starts
    at or below the last pixel row the context sees (t*s >= i*s + p)."""
    z = m.patch_features(x)  # [B, F, G, G]
    c = m.context(z)
    b, _, g, _ = z.shape
    pool = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    terms = []
    for n in range(b):
        for i in range(g):
            rows = [t for t in range(g) if t * stride >= i * stride + patch]
            for k, t in enumerate(rows[: len(m.predictors)]):
                for j in range(g):
                    scores = pool @ m.predictors[k](c[n, :, i, j])
                    target = (n * g + t) * g + j
                    terms.append(-(scores[target] - torch.logsumexp(scores, 0)))
    return torch.stack(terms).mean()


def test_cpc_loss_matches_loop_reference() -> None:
    m = build_method("cpc_v2", _bb(1, 12), patch_size=4, patch_stride=2, prediction_steps=3,
                     context_dim=8).eval()
    x = torch.randn(2, 1, 12, 12)  # 5x5 grid, steps predict rows i+2, i+3, i+4
    with torch.no_grad():
        out = m.training_step(Batch(views=[x], index=torch.arange(2)))
        torch.testing.assert_close(out.loss, _loop_loss(m, x, 4, 2))
        assert out.embeddings is not None and out.embeddings.shape == (2, m.backbone.num_features)
    # a 4th step would need row i + 5 of a 5-row grid: dropped, same loss, zero (not no) gradient
    m4 = build_method("cpc_v2", _bb(1, 12), patch_size=4, patch_stride=2, prediction_steps=4,
                      context_dim=8).eval()
    loss = m4.training_step(Batch(views=[x], index=torch.arange(2))).loss
    torch.testing.assert_close(loss, out.loss)
    loss.backward()
    last = m4.predictors[3].weight.grad
    assert last is not None and not last.any() and m4.predictors[2].weight.grad.abs().sum() > 0
    assert float(cpc_info_nce(torch.zeros(3, 4), torch.randn(5, 4), torch.zeros(3, dtype=torch.long))
                 ) == pytest.approx(math.log(5))


# ------------------------------------------------------------------ per-patch augmentation


def test_augment_patches_crops_flips_and_drops_colour_per_patch() -> None:
    torch.manual_seed(0)
    p = torch.randn(64, 3, 8, 8)
    out = augment_patches(p, 2)
    assert out.shape == (64, 3, 6, 6)
    offsets, flips, kept = set(), set(), set()
    for n in range(64):  # each output is a crop of its own patch inside the patch's box
        found = [(dy, dx, f, ch) for dy in range(3) for dx in range(3) for f in (False, True)
                 for ch in range(3)
                 if torch.equal(out[n, ch], (lambda c: c.flip(-1) if f else c)(
                     p[n, ch, dy:dy + 6, dx:dx + 6]))]
        assert len(found) == 1, (n, found)  # exactly one channel kept verbatim
        dy, dx, f, ch = found[0]
        offsets.add((dy, dx))
        flips.add(f)
        kept.add(ch)
        dropped = [c for c in range(3) if c != ch]
        ratio = out[n, dropped].std() / p[n, ch, dy:dy + 6, dx:dx + 6].std(correction=0)
        assert 0.003 < float(ratio) < 0.03  # Gaussian noise at 1/100 of the kept channel's std
    assert len(offsets) > 4 and flips == {False, True} and kept == {0, 1, 2}  # drawn per patch
    grey = torch.randn(32, 1, 8, 8)
    g = augment_patches(grey, 0)
    assert g.shape == grey.shape
    assert all(torch.equal(g[n], grey[n]) or torch.equal(g[n], grey[n].flip(-1))
               for n in range(32))
    with pytest.raises(DataError, match="patch_jitter"):
        augment_patches(grey, 8)


def test_cpc_augments_patches_only_in_training() -> None:
    m = build_method("cpc_v2", _bb(3), patch_jitter=0.25)
    x = torch.randn(2, 3, SIZE, SIZE)
    batch = Batch(views=[x], index=torch.arange(2))
    with torch.no_grad():
        m.eval()
        torch.manual_seed(0)
        a = m.training_step(batch).loss
        torch.manual_seed(1)
        torch.testing.assert_close(m.training_step(batch).loss, a)  # deterministic in eval
        m.train()
        torch.manual_seed(0)
        t0 = m.training_step(batch).loss
        torch.manual_seed(1)
        assert not torch.allclose(m.training_step(batch).loss, t0)
    off = build_method("cpc_v2", _bb(3), patch_aug=False).train()
    with torch.no_grad():
        torch.manual_seed(0)
        o = off.training_step(batch).loss
        torch.manual_seed(1)
        torch.testing.assert_close(off.training_step(batch).loss, o)


def test_cpc_rejects_vit_tiny_grids_and_bad_options() -> None:
    vit = create_backbone("vit_tiny", in_chans=1, image_size=16)
    with pytest.raises(ConfigError, match="convolutional"):
        build_method("cpc_v2", vit)
    for patch, stride in ((12, 8), (12, 2)):  # 1 row; 3 rows but a disjoint target is 6 below
        m = build_method("cpc_v2", _bb(1), patch_size=patch, patch_stride=stride)
        with pytest.raises(DataError, match="grid"):
            m.training_step(Batch(views=[torch.randn(2, 1, 16, 16)], index=torch.arange(2)))
    with pytest.raises(ConfigError, match="prediction_steps"):
        build_method("cpc_v2", _bb(1), prediction_steps=0)
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="patch_jitter"):
            build_method("cpc_v2", _bb(1), patch_jitter=bad)
