"""I-JEPA (Assran et al. 2023): the context encoder sees only the context patches, the targets
are the EMA target encoder's layer-normalised features at the target blocks (no gradient), the
loss is smooth L1 over all target patches, and the target encoder follows the linear momentum
schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError

SIZE, PATCH = 32, 4  # an 8 x 8 patch grid


def _ijepa(**kw: object) -> nn.Module:
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", in_chans=3, image_size=SIZE, patch_size=PATCH, depth=2)
    return build_method("ijepa", vit, **{"pred_dim": 48, "pred_depth": 1, **kw})


def _masks(m: nn.Module, b: int, seed: int) -> dict[str, torch.Tensor]:
    return m.sample_masks(b, generator=torch.Generator().manual_seed(seed))


def _pixels(index: torch.Tensor, b: int) -> torch.Tensor:
    """``[B, 1, S, S]`` True on the pixels of patches ``index`` ``[B, K]``."""
    grid = SIZE // PATCH
    m = torch.zeros(b, grid * grid, dtype=torch.bool)
    m.scatter_(1, index, True)
    return m.reshape(b, 1, grid, grid).repeat_interleave(PATCH, 2).repeat_interleave(PATCH, 3)


def test_masks_keep_targets_out_of_the_context() -> None:
    m = _ijepa()
    ms = _masks(m, 4, 0)
    ctx = ms["context"]
    assert m.min_keep == 3  # 10 of 196 patches scaled to the 64-patch grid
    for i in range(4):
        t = ms[f"target_{i}"]
        for b in range(4):
            assert not set(t[b].tolist()) & set(ctx[b].tolist())


def test_context_encoder_sees_only_the_context() -> None:
    m = _ijepa().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    ctx = _masks(m, 2, 1)["context"]
    z = m.backbone.forward_tokens(x, keep=ctx)
    y = x.clone()
    outside = ~_pixels(ctx, 2).expand_as(x)
    y[outside] = 30.0
    torch.testing.assert_close(m.backbone.forward_tokens(y, keep=ctx), z)
    assert not torch.allclose(m.target.forward_tokens(y), m.target.forward_tokens(x))


def test_loss_is_smooth_l1_to_normalised_target_features() -> None:
    m = _ijepa().train()
    x = torch.randn(3, 3, SIZE, SIZE)
    ms = _masks(m, 3, 2)
    out = m.training_step(Batch(views=[x], index=torch.arange(3), masks=ms))
    with torch.no_grad():
        h = m.target.forward_tokens(x)[:, 1:]
        h = (h - h.mean(-1, keepdim=True)) / (h.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        z = m.backbone.forward_tokens(x, keep=ms["context"])[:, 1:]
        preds, tgts = [], []
        for i in range(4):
            t = ms[f"target_{i}"]
            preds.append(m.predictor(z, ms["context"], t))
            tgts.append(torch.stack([h[b, t[b]] for b in range(3)]))
        ref = F.smooth_l1_loss(torch.cat(preds, 1), torch.cat(tgts, 1))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in m.target.parameters())
    assert m.predictor.mask_token.grad is not None and m.backbone.cls_token.grad is not None


def test_target_follows_the_linear_momentum_schedule() -> None:
    m = _ijepa()
    with torch.no_grad():
        for p in m.backbone.parameters():
            if p.requires_grad:
                p.add_(1.0)
    before = [p.clone() for p in m.target.parameters()]
    student = [p.clone() for p in m.backbone.parameters()]
    m.on_step_end(0, 10)  # momentum 0.996 at step 0
    for t, b, s in zip(m.target.parameters(), before, student):
        torch.testing.assert_close(t, 0.996 * b + 0.004 * s)
    now = [p.clone() for p in m.target.parameters()]
    m.on_step_end(10, 10)  # momentum 1.0 at the end: no change
    for t, b in zip(m.target.parameters(), now):
        torch.testing.assert_close(t, b)


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="ijepa needs a ViT backbone"):
        build_method("ijepa", create_backbone("small_cnn", in_chans=3, image_size=SIZE))
    with pytest.raises(ConfigError, match="pred_dim=50"):
        _ijepa(pred_dim=50)
