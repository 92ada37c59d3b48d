"""DeepMIM (Ren et al. 2023): decoders on the reference's blocks (scaled to the depth), fed the
raw intermediate tokens and the final normalised ones, every decoder trained, and the loss the
documented weighted sum of per-layer MAE losses on the masked patches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.losses.reconstruction import mae_loss
from selfsup.methods.base import build_method
from selfsup.methods.deepmim import deepmim_layers
from selfsup.nn.backbones import create_backbone
from selfsup.nn.patches import patchify
from selfsup.types import Batch, ConfigError

SIZE, PATCH = 16, 4


def _deepmim(depth: int = 4, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", in_chans=3, image_size=SIZE, patch_size=PATCH, depth=depth)
    args = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 4, **kw}
    return build_method("deepmim", vit, **args)


def test_layers_follow_the_reference_scaled_to_the_depth() -> None:
    assert deepmim_layers(12) == [6, 8, 10, 12]  # models_mae.py: blocks 6, 8, 10 and the output
    assert deepmim_layers(24) == [12, 16, 20, 24]
    assert deepmim_layers(4) == [2, 3, 4]
    assert deepmim_layers(2) == [1, 2]
    assert deepmim_layers(4, (4, 1, 1)) == [1, 4]
    with pytest.raises(ConfigError, match="ending with the last block 4"):
        deepmim_layers(4, (1, 2))
    with pytest.raises(ConfigError, match="layers"):
        deepmim_layers(4, (0, 4))


def test_loss_is_the_weighted_sum_over_decoders_of_raw_intermediate_tokens() -> None:
    m = _deepmim(weights=[1.0, 0.5, 2.0]).eval()
    assert m.layers == [2, 3, 4] and len(m.decoders) == 3
    x = torch.randn(3, 3, SIZE, SIZE)
    ms = m.sample_masks(3, generator=torch.Generator().manual_seed(0))
    out = m.training_step(Batch(views=[x], index=torch.arange(3), masks=ms))
    raw = m.backbone.forward_layers(x, [2, 3, 4], keep=ms["keep"])
    latents = [raw[0], raw[1], m.backbone.norm(raw[2])]  # intermediate unnormalised, last normed
    target = patchify(x, PATCH)
    ref = [mae_loss(d(z, ms["ids_restore"]), target, ms["mask"])
           for d, z in zip(m.decoders, latents, strict=True)]
    for layer, r in zip(m.layers, ref, strict=True):
        assert float(out.logs[f"loss_l{layer}"]) == pytest.approx(r.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((ref[0] + 0.5 * ref[1] + 2.0 * ref[2]).item(),
                                            rel=1e-5)
    # normalising the intermediate tokens too (a plausible slip) changes the loss
    normed = [mae_loss(d(m.backbone.norm(z), ms["ids_restore"]), target, ms["mask"])
              for d, z in zip(m.decoders, raw, strict=True)]
    assert sum(normed).item() != pytest.approx(sum(ref).item(), rel=1e-3)


def test_every_decoder_and_the_encoder_receive_gradients() -> None:
    m = _deepmim()
    out = m.training_step(Batch(views=[torch.randn(2, 3, SIZE, SIZE)], index=torch.arange(2)))
    out.loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    for d in m.decoders:
        assert d.decoder_pred.weight.grad.abs().sum() > 0 and d.mask_token.grad.abs().sum() > 0
    assert not m.backbone.pos_embed.requires_grad  # MAE's fixed sine-cosine positions


def test_the_loss_scores_the_masked_patches_only() -> None:
    """The method hands its mask to the loss (masked-only, as mae_loss's own test checks): the
    same images and masks scored on every patch give another value."""
    m = _deepmim().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    ms = m.sample_masks(2, generator=torch.Generator().manual_seed(1))
    base = m.training_step(Batch(views=[x], index=torch.arange(2), masks=ms)).loss
    full = dict(ms, mask=torch.ones_like(ms["mask"]))
    every = m.training_step(Batch(views=[x], index=torch.arange(2), masks=full)).loss
    assert every.item() != pytest.approx(base.item(), rel=1e-4)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="weights"):
        _deepmim(weights=[1.0, 1.0])
    with pytest.raises(ConfigError, match="mask_ratio"):
        _deepmim(mask_ratio=1.0)
    with pytest.raises(ConfigError, match="decoder"):
        _deepmim(decoder_dim=30, decoder_heads=3)
    with pytest.raises(ConfigError, match="ViT"):
        build_method("deepmim", create_backbone("small_cnn", in_chans=3, image_size=16))
