"""ViT.forward_layers: the tokens after chosen blocks, equal to running the blocks by hand, the
last block normalised equals forward_tokens, masking by ``keep`` as forward_tokens, bad block
numbers rejected."""

from __future__ import annotations

import pytest
import torch

from selfsup.nn.backbones import create_backbone
from selfsup.nn.masking import random_masking


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("vit_tiny", in_chans=3, image_size=16, patch_size=4, depth=4).eval()


def test_layers_equal_blocks_run_by_hand_and_last_normed_is_forward_tokens() -> None:
    vit = _vit()
    x = torch.randn(2, 3, 16, 16)
    ms = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    outs = vit.forward_layers(x, [3, 1, 4, 1], keep=ms.keep)
    # by hand: embed + position, keep, then block by block
    t = vit.patch_embed(x).flatten(1, 2)  # [B, h, w, D] (dynamic sizes) -> [B, N, D]
    t = torch.cat([vit.cls_token.expand(2, -1, -1), t], 1) + vit.pos_embed
    t = torch.cat([t[:, :1], torch.gather(t[:, 1:], 1, ms.keep[..., None].expand(-1, -1, 192))], 1)
    ref = []
    for blk in vit.blocks:
        t = blk(t)
        ref.append(t)
    assert [o.shape for o in outs] == [(2, 5, 192)] * 4
    for o, i in zip(outs, [3, 1, 4, 1], strict=True):
        torch.testing.assert_close(o, ref[i - 1])
    assert not torch.allclose(outs[0], outs[1])  # distinct blocks, not one tensor repeated
    torch.testing.assert_close(vit.norm(outs[2]), vit.forward_tokens(x, keep=ms.keep))
    full = vit.forward_layers(x, [4])[0]  # without keep: every patch
    torch.testing.assert_close(vit.norm(full), vit.forward_tokens(x))


def test_intermediate_layers_get_gradients_from_their_own_loss_only() -> None:
    vit = _vit().train()
    out = vit.forward_layers(torch.randn(2, 3, 16, 16), [2])[0]
    out.sum().backward()
    assert vit.blocks[1].mlp.fc2.weight.grad is not None
    assert vit.blocks[2].mlp.fc2.weight.grad is None  # blocks past the last layer do not run


@pytest.mark.parametrize("layers", [[], [0], [5], [True]])
def test_bad_layers(layers: list) -> None:
    with pytest.raises(ValueError, match=r"layers must be block numbers in \[1, 4\]"):
        _vit().forward_layers(torch.randn(1, 3, 16, 16), layers)
