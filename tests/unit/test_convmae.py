"""ConvMAE (Gao et al. 2022): masked convolution keeps the encoder's visible tokens independent
of masked pixels (with the multi-scale fusion), the fusion adds the downsampled stage-1/2 maps
at the right tokens, the decoder restores every token to its patch, the loss is MAE's normalised
MSE on masked patches of the total-stride patch size (against a loop over patches), position
embeddings are fixed sine-cosine without a class token, and bad backbones, configs and batches
give one-line errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.backbones.convvit import upsample_mask
from selfsup.nn.masking import random_masking
from selfsup.nn.patches import sincos_2d
from selfsup.registry import get
from selfsup.types import Batch, ConfigError, DataError

C = 2


def _convmae(size: int = 16, strides: list[int] | None = None, **kw: object) -> Any:
    torch.manual_seed(0)
    enc = create_backbone("convvit_tiny", in_chans=C, image_size=size, depth=1,
                          conv_depth=1, strides=strides)
    args = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 4, **kw}
    return build_method("convmae", enc, **args)


def _masks(m: Any, b: int, seed: int = 0) -> Any:
    return random_masking(b, m.num_patches, 0.75, generator=torch.Generator().manual_seed(seed))


def test_visible_latent_ignores_masked_pixels_only_with_masked_convolution() -> None:
    m = _convmae().eval()
    ms = _masks(m, 3)
    x = torch.randn(3, C, 16, 16)
    hidden = upsample_mask(ms.mask, m.grid, m.patch).bool().expand_as(x)
    y = x.clone()
    y[hidden] = torch.randn(int(hidden.sum())) * 50  # every masked pixel changes
    with torch.no_grad():
        a = m.forward_encoder(x, ms.keep, ms.mask)
        assert a.shape == (3, 4, 192)
        torch.testing.assert_close(m.forward_encoder(y, ms.keep, ms.mask), a)
        # the bug this guards against: the mask not propagated into the conv stages
        enc, conv_stages = m.backbone, m.backbone.conv_stages
        enc.conv_stages = lambda x_, mask=None: conv_stages(x_, None)
        assert not torch.allclose(m.forward_encoder(y, ms.keep, ms.mask),
                                  m.forward_encoder(x, ms.keep, ms.mask))


def test_fusion_adds_the_downsampled_stage_maps_at_each_visible_token() -> None:
    m = _convmae().eval()
    m.backbone.norm = nn.Identity()  # look at the sum before the final LayerNorm
    ms = _masks(m, 2, seed=3)
    x = torch.randn(2, C, 16, 16)
    with torch.no_grad():
        fused = m.forward_encoder(x, ms.keep, ms.mask)  # [B, K, D]
        tokens, s1, s2 = m.backbone.forward_masked(x, ms.keep, ms.mask)
        e1, e2 = m.stage1_output_decode(s1), m.stage2_output_decode(s2)  # [B, D, g, g]
        assert e1.shape[-2:] == (m.grid, m.grid) == e2.shape[-2:]
        for b in range(2):
            for i, n in enumerate(ms.keep[b].tolist()):
                r, c = divmod(n, m.grid)
                torch.testing.assert_close(fused[b, i], tokens[b, i] + e1[b, :, r, c]
                                           + e2[b, :, r, c])
        assert not torch.allclose(e1, torch.zeros_like(e1))


def test_decoder_restores_every_token_to_its_patch_without_a_class_token() -> None:
    m = _convmae(decoder_dim=192, decoder_heads=4)
    with torch.no_grad():
        m.decoder_embed.weight.copy_(torch.eye(192))
        m.decoder_embed.bias.zero_()
    m.decoder_blocks, m.decoder_norm, m.decoder_pred = nn.Identity(), nn.Identity(), nn.Identity()
    m.decoder_pos_embed.zero_()
    ms = _masks(m, 3, seed=1)
    latent = torch.randn(3, 4, 192)
    out = m.forward_decoder(latent, ms.ids_restore)
    assert out.shape == (3, 16, 192)
    for b in range(3):
        for i, j in enumerate(ms.keep[b].tolist()):
            torch.testing.assert_close(out[b, j], latent[b, i])
        for j in torch.nonzero(ms.mask[b]).flatten().tolist():
            torch.testing.assert_close(out[b, j], m.mask_token[0, 0])


def _loop_loss(x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, p: int) -> torch.Tensor:
    """MAE's loss written out: patch n = rows/cols of cell (n // g, n % g) as (row, col, chan),
    normalised by its own mean and unbiased variance, squared error averaged over the masked."""
    g = x.shape[-1] // p
    total, count = torch.zeros(()), 0
    for b in range(x.shape[0]):
        for n in range(g * g):
            if not mask[b, n]:
                continue
            r, c = divmod(n, g)
            t = x[b, :, r * p:(r + 1) * p, c * p:(c + 1) * p].permute(1, 2, 0).reshape(-1)
            t = (t - t.mean()) / (t.var() + 1e-6) ** 0.5
            total = total + ((pred[b, n] - t) ** 2).mean()
            count += 1
    return total / count


@pytest.mark.parametrize(("size", "strides", "patch"), [(16, None, 4), (32, [2, 2, 2], 8)])
def test_loss_is_normalised_mse_on_masked_patches_of_the_total_stride(
        size: int, strides: list[int] | None, patch: int) -> None:
    m = _convmae(size, strides)
    assert (m.patch, m.grid) == (patch, 4) and m.decoder_pred.out_features == patch ** 2 * C
    ms = _masks(m, 2, seed=2)
    x = torch.randn(2, C, size, size)
    masks = {"keep": ms.keep, "mask": ms.mask, "ids_restore": ms.ids_restore}
    out = m.training_step(Batch(views=[x], index=torch.arange(2), labels=None, masks=masks))
    pred = m.forward_decoder(m.forward_encoder(x, ms.keep, ms.mask), ms.ids_restore)
    torch.testing.assert_close(out.loss, _loop_loss(x, pred, ms.mask, patch))
    out.loss.backward()
    assert m.stage1_output_decode.weight.grad is not None
    assert m.stage2_output_decode.weight.grad is not None
    assert m.backbone.blocks1[0].attn.weight.grad is not None


def test_position_embeddings_are_fixed_sincos_without_class_token() -> None:
    m = _convmae()
    torch.testing.assert_close(m.backbone.pos_embed[0], sincos_2d(192, 4))
    torch.testing.assert_close(m.decoder_pos_embed[0], sincos_2d(32, 4))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "backbone.pos_embed" not in trainable and "mask_token" in trainable


def test_mae_init_is_xavier_on_every_linear_layer() -> None:
    w_on = _convmae().backbone.patch_embed4.weight
    w_off = _convmae(mae_init=False).backbone.patch_embed4.weight
    xavier_std = (6 / (192 + 192)) ** 0.5 / 3 ** 0.5  # uniform(-a, a): std a / sqrt(3)
    assert abs(float(w_on.detach().std()) / xavier_std - 1) < 0.05
    assert abs(float(w_off.detach().std()) / 0.02 - 1) < 0.05  # the backbone's own trunc-normal(0.02)


def test_paper_defaults() -> None:
    cls = get("method", "convmae").obj
    cfg = cls.Config()
    assert (cfg.mask_ratio, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
            cfg.norm_pix_loss) == (0.75, 512, 8, 16, True)
    assert cls.default_views == "mae" and cls.backbone_kind == "convvit"
    o = cls.default_optim
    assert (o["name"], o["lr"], o["betas"], o["weight_decay"], o["warmup_epochs"]) == (
        "adamw", 1.5e-4, (0.9, 0.95), 0.05, 40)


def test_bad_backbones_configs_and_batches_give_one_line_errors() -> None:
    vit = create_backbone("vit_tiny", in_chans=1, image_size=16, patch_size=4, depth=1)
    with pytest.raises(ConfigError, match="convmae needs the hybrid ConvViT backbone"):
        build_method("convmae", vit)
    with pytest.raises(ConfigError, match="convmae needs the hybrid ConvViT backbone"):
        build_method("convmae", create_backbone("small_cnn", in_chans=1, image_size=16))
    with pytest.raises(ConfigError, match="mask_ratio"):
        _convmae(mask_ratio=1.0)
    with pytest.raises(ConfigError, match="decoder_heads"):
        _convmae(decoder_dim=30, decoder_heads=4)
    m = _convmae()
    with pytest.raises(DataError, match=r"convmae expects views \[B, 2, 16, 16\]"):
        m.training_step(Batch(views=[torch.randn(2, C, 32, 32)], index=torch.arange(2), labels=None))
    bad = _masks(m, 3)
    masks = {"keep": bad.keep, "mask": bad.mask, "ids_restore": bad.ids_restore}
    with pytest.raises(DataError, match="batch.masks do not fit 2 images"):
        m.training_step(Batch(views=[torch.randn(2, C, 16, 16)], index=torch.arange(2), labels=None,
                              masks=masks))
