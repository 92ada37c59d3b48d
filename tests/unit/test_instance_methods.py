"""Method-level checks of InvaSpread and CPC v2 beyond the registry contract: the loss each
method computes equals its paper formula on the method's own features, CPC's patch grid and its
causal context."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses.nce import cpc_info_nce, invaspread_loss
from selfsup.methods.base import build_method
from selfsup.methods.cpc_v2 import ContextNetwork, extract_patches
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError, DataError

SIZE, B = 16, 6


def _bb(in_chans: int = 1, size: int = SIZE):
    torch.manual_seed(0)
    return create_backbone("small_cnn", in_chans=in_chans, image_size=size, width=4)


def _batch(in_chans: int = 1, n: int = 2, size: int = SIZE, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, in_chans, size, size, generator=g) for _ in range(n)]
    return Batch(views=views, index=torch.tensor([3, 0, 7, 9, 1, 4]))


# ------------------------------------------------------------------ InvaSpread


@pytest.mark.parametrize("symmetric", [False, True])
def test_invaspread_step_is_the_paper_loss(symmetric: bool) -> None:
    m = build_method("invaspread", _bb(), symmetric=symmetric).eval()
    batch = _batch()
    with torch.no_grad():
        out = m.training_step(batch)
        f1 = F.normalize(m.head(m.backbone(batch.views[0])), dim=1)
        f2 = F.normalize(m.head(m.backbone(batch.views[1])), dim=1)
        ref = invaspread_loss(f1, f2, 0.1)
        if symmetric:
            ref = 0.5 * (ref + invaspread_loss(f2, f1, 0.1))
        torch.testing.assert_close(out.loss, ref)
    with pytest.raises(DataError, match="2 views"):
        m.training_step(Batch(views=batch.views[:1], index=batch.index))


# ------------------------------------------------------------------ CPC v2


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


def test_cpc_context_ignores_pixels_below_the_row() -> None:
    m = build_method("cpc_v2", _bb(1)).eval()
    assert m.patch_geometry(16) == (4, 2, 7) and len(m.predictors) == 5
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        c = m.context(m.patch_features(x))
        x2 = x.clone()
        x2[:, :, 10:] = torch.randn(2, 1, 6, 16)  # patch rows >= 4 start at pixel 8
        c2 = m.context(m.patch_features(x2))
    torch.testing.assert_close(c2[:, :, :4], c[:, :, :4])
    assert not torch.allclose(c2[:, :, 4:], c[:, :, 4:])


def test_cpc_loss_matches_loop_reference() -> None:
    m = build_method("cpc_v2", _bb(1, 8), patch_size=4, patch_stride=2, prediction_steps=2,
                     context_dim=8).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = m.training_step(Batch(views=[x], index=torch.arange(2)))
        z = m.patch_features(x)  # [2, F, 3, 3]
        c = m.context(z)
        pool = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        terms = []
        for k in (1, 2):
            for b in range(2):
                for i in range(3 - k):
                    for j in range(3):
                        pred = m.predictors[k - 1](c[b, :, i, j])
                        scores = pool @ pred
                        target = (b * 3 + i + k) * 3 + j
                        terms.append(-(scores[target] - torch.logsumexp(scores, 0)))
        torch.testing.assert_close(out.loss, torch.stack(terms).mean())
        assert out.embeddings is not None and out.embeddings.shape == (2, m.backbone.num_features)
    assert float(cpc_info_nce(torch.zeros(3, 4), torch.randn(5, 4), torch.zeros(3, dtype=torch.long))
                 ) == pytest.approx(math.log(5))


def test_cpc_rejects_vit_and_tiny_grids() -> None:
    vit = create_backbone("vit_tiny", in_chans=1, image_size=16)
    with pytest.raises(ConfigError, match="convolutional"):
        build_method("cpc_v2", vit)
    m = build_method("cpc_v2", _bb(1), patch_size=12, patch_stride=8)
    with pytest.raises(DataError, match="grid"):
        m.training_step(Batch(views=[torch.randn(2, 1, 16, 16)], index=torch.arange(2)))
    with pytest.raises(ConfigError, match="prediction_steps"):
        build_method("cpc_v2", _bb(1), prediction_steps=0)
