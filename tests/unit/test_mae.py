"""MAE (He et al. 2022): the encoder sees only the visible patches, the decoder puts every
visible token back at its own position and a mask token everywhere else, the encoder's position
embedding is MAE's fixed sine-cosine, and bad backbones or views give clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.masking import random_masking
from selfsup.nn.patches import patchify, sincos_2d
from selfsup.types import Batch, ConfigError, DataError

SIZE, PATCH = 16, 4  # a 4 x 4 grid of 16 patches


def _mae(**kw: object) -> nn.Module:
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", in_chans=3, image_size=SIZE, patch_size=PATCH, depth=2)
    args = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 4, **kw}
    return build_method("mae", vit, **args)


def test_encoder_sees_only_the_visible_patches() -> None:
    m = _mae().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    ms = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    a = m.backbone.forward_tokens(x, keep=ms.keep)
    assert a.shape == (2, 1 + 4, 192)
    y = x.clone()
    hidden = torch.nn.functional.interpolate(  # the masked patches' pixels, as a pixel mask
        ms.mask.float().reshape(2, 1, 4, 4), scale_factor=PATCH, mode="nearest").bool()
    y[hidden.expand_as(y)] = 100.0  # change every masked pixel
    torch.testing.assert_close(m.backbone.forward_tokens(y, keep=ms.keep), a)
    y[~hidden.expand_as(y)] += 1.0  # a visible pixel does change the latent
    assert not torch.allclose(m.backbone.forward_tokens(y, keep=ms.keep), a)


def test_decoder_restores_every_token_to_its_patch() -> None:
    m = _mae(decoder_dim=192, decoder_heads=4)
    with torch.no_grad():  # decoder reduced to the token shuffle: identity maps, no position
        m.decoder_embed.weight.copy_(torch.eye(192))
        m.decoder_embed.bias.zero_()
    m.decoder_blocks, m.decoder_norm, m.decoder_pred = nn.Identity(), nn.Identity(), nn.Identity()
    m.decoder_pos_embed.zero_()
    ms = random_masking(3, 16, 0.75, generator=torch.Generator().manual_seed(1))
    latent = torch.randn(3, 1 + 4, 192)
    out = m.decode(latent, ms.ids_restore)  # [B, N, 192]
    for b in range(3):
        for i, j in enumerate(ms.keep[b].tolist()):
            torch.testing.assert_close(out[b, j], latent[b, 1 + i])  # visible token i -> patch j
        for j in torch.nonzero(ms.mask[b]).flatten().tolist():
            torch.testing.assert_close(out[b, j], m.mask_token[0, 0])


def test_encoder_position_embedding_is_fixed_sincos() -> None:
    m = _mae()
    pos = m.backbone.pos_embed
    assert not pos.requires_grad
    torch.testing.assert_close(pos[0], sincos_2d(192, 4, cls_token=True))
    torch.testing.assert_close(m.decoder_pos_embed[0], sincos_2d(32, 4, cls_token=True))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "backbone.pos_embed" not in trainable and "mask_token" in trainable


def test_loss_is_on_normalised_masked_patches_and_trains() -> None:
    m = _mae().train()
    x = torch.randn(4, 3, SIZE, SIZE)
    torch.manual_seed(3)
    out = m.training_step(Batch(views=[x], index=torch.arange(4)))
    assert out.loss.dim() == 0 and out.logs["visible"] == 4.0
    out.loss.backward()
    assert m.decoder_pred.weight.grad is not None and m.backbone.cls_token.grad is not None
    # the same mask, recomputed by hand: MSE of normalised patches on the masked ones
    torch.manual_seed(3)
    ms = random_masking(4, 16, 0.75)
    with torch.no_grad():
        pred = m.decode(m.backbone.forward_tokens(x, keep=ms.keep), ms.ids_restore)
        t = patchify(x, PATCH)
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
        ref = (((pred - t) ** 2).mean(-1) * ms.mask).sum() / ms.mask.sum()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_bad_backbone_and_views_are_clear_errors() -> None:
    cnn = create_backbone("small_cnn", in_chans=3, image_size=SIZE)
    with pytest.raises(ConfigError, match="mae needs a ViT backbone"):
        build_method("mae", cnn)
    m = _mae()
    with pytest.raises(DataError, match=r"views \[B, 3, 16, 16\]"):
        m.training_step(Batch(views=[torch.randn(2, 3, 8, 8)], index=torch.arange(2)))
    with pytest.raises(ConfigError, match="mask_ratio"):
        _mae(mask_ratio=1.0)
    with pytest.raises(ConfigError, match="decoder_heads"):
        _mae(decoder_dim=32, decoder_heads=5)
