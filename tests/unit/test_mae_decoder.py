"""nn/mae_decoder.py: the MAEDecoder module computes exactly MAE's decoder (same parts -> same
output), puts visible tokens back in place and a mask token elsewhere, and checks its sizes."""

from __future__ import annotations

import pytest
import torch

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.mae_decoder import MAEDecoder
from selfsup.nn.masking import random_masking
from selfsup.types import ConfigError


def test_module_equals_mae_decode_with_the_same_weights() -> None:
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", in_chans=3, image_size=16, patch_size=4, depth=1)
    mae = build_method("mae", vit, decoder_dim=32, decoder_depth=2, decoder_heads=4).eval()
    dec = MAEDecoder(192, 4, 48, dim=32, depth=2, heads=4).eval()
    # MAE's parts and the module's have the same names: the state dict loads one to one
    own = {k: v for k, v in mae.state_dict().items() if not k.startswith("backbone.")}
    dec.load_state_dict(own)
    ms = random_masking(3, 16, 0.75, generator=torch.Generator().manual_seed(1))
    latent = torch.randn(3, 1 + 4, 192)
    torch.testing.assert_close(dec(latent, ms.ids_restore), mae.decode(latent, ms.ids_restore))


def test_identity_decoder_restores_tokens_and_fills_mask_tokens() -> None:
    dec = MAEDecoder(8, 2, None, dim=8, depth=1, heads=2)
    with torch.no_grad():
        dec.decoder_embed.weight.copy_(torch.eye(8))
        dec.decoder_embed.bias.zero_()
    dec.decoder_blocks, dec.decoder_norm = torch.nn.Identity(), torch.nn.Identity()
    dec.decoder_pos_embed.zero_()
    ms = random_masking(2, 4, 0.5, generator=torch.Generator().manual_seed(0))
    latent = torch.randn(2, 1 + 2, 8)
    out = dec(latent, ms.ids_restore)  # [B, N, 8]
    assert out.shape == (2, 4, 8)
    for b in range(2):
        for k, j in enumerate(ms.keep[b].tolist()):
            torch.testing.assert_close(out[b, j], latent[b, 1 + k])
        for j in torch.nonzero(ms.mask[b]).flatten().tolist():
            torch.testing.assert_close(out[b, j], dec.mask_token[0, 0])


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="multiple of 4"):
        MAEDecoder(8, 2, 4, dim=30, heads=3)
    with pytest.raises(ConfigError, match="positive"):
        MAEDecoder(8, 0, 4, dim=8, heads=2)
    with pytest.raises(ValueError, match="ids_restore"):
        MAEDecoder(8, 2, 4, dim=8, depth=1, heads=2)(torch.randn(1, 3, 8), torch.zeros(1, 9).long())
