"""SimMIM (Xie et al. 2022): masked patches become the mask token before the encoder (their
pixels cannot leak), masks are aligned mask patches (twice the ViT's patch by default), the L1
is taken on exactly the masked pixels, and bad settings give clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.losses.reconstruction import simmim_loss
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError

SIZE, PATCH = 16, 4  # a 4 x 4 patch grid; default mask patches of 8 px: a 2 x 2 grid


def _simmim(**kw: object) -> nn.Module:
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", in_chans=3, image_size=SIZE, patch_size=PATCH, depth=2)
    return build_method("simmim", vit, **kw)


def _pixel_mask(mask: torch.Tensor) -> torch.Tensor:
    """Loop reference: pixel (r, c) is masked iff its patch (r // p, c // p) is."""
    b = mask.shape[0]
    out = torch.zeros(b, 1, SIZE, SIZE)
    for i in range(b):
        for r in range(SIZE):
            for c in range(SIZE):
                out[i, 0, r, c] = float(mask[i, (r // PATCH) * (SIZE // PATCH) + c // PATCH])
    return out


def test_masked_pixels_do_not_reach_the_encoder() -> None:
    m = _simmim().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    mask = m.sample_masks(2, generator=torch.Generator().manual_seed(0))["mask"]
    rec, _ = m.reconstruct(x, mask)
    hidden = _pixel_mask(mask).bool().expand_as(x)
    y = x.clone()
    y[hidden] = 50.0
    torch.testing.assert_close(m.reconstruct(y, mask)[0], rec)
    y[~hidden] += 1.0
    assert not torch.allclose(m.reconstruct(y, mask)[0], rec)


def test_masks_are_aligned_mask_patches_at_the_ratio() -> None:
    m = _simmim()
    assert m.mask_patch == 2 * PATCH
    mask = m.sample_masks(64, generator=torch.Generator().manual_seed(1))["mask"]
    grid = mask.reshape(64, 2, 2, 2, 2)  # [B, mask row, token row, mask column, token column]
    blocks = grid.permute(0, 1, 3, 2, 4).reshape(64, 4, 4)
    assert bool(((blocks.all(-1)) | (~blocks.any(-1))).all())  # whole 2 x 2 squares
    assert bool((blocks.all(-1).sum(-1) == 3).all())  # ceil(4 mask patches x 0.6) = 3


def test_loss_is_l1_on_exactly_the_masked_pixels() -> None:
    m = _simmim().train()
    x = torch.randn(3, 3, SIZE, SIZE)
    mask = m.sample_masks(3, generator=torch.Generator().manual_seed(2))["mask"]
    out = m.training_step(Batch(views=[x], index=torch.arange(3), masks={"mask": mask}))
    with torch.no_grad():
        rec, _ = m.reconstruct(x, mask)
        ref = simmim_loss(rec, x, _pixel_mask(mask))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    out.loss.backward()
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0
    assert m.decoder[0].weight.grad is not None


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="mask_patch_size=6 must be a multiple"):
        _simmim(mask_patch_size=6)
    with pytest.raises(ConfigError, match="simmim needs a ViT backbone"):
        build_method("simmim", create_backbone("small_cnn", in_chans=3, image_size=SIZE))


def _simmim_convvit(**kw: object) -> nn.Module:
    torch.manual_seed(0)
    enc = create_backbone("convvit_tiny", in_chans=3, image_size=SIZE, depth=1, conv_depth=1)
    return build_method("simmim", enc, **kw)


def test_hierarchical_encoder_masks_after_the_first_embedding() -> None:
    """ConvViT (strides 1, 2, 2 at 16 px: total stride 4, a 4 x 4 grid): masked pixels reach
    nothing, the mask token does, and every final token's 4 x 4 pixels are predicted."""
    m = _simmim_convvit().eval()
    assert m.hierarchical and m.patch == 4 and m.mask_patch == 4 and m.mask_token.shape[-1] == 64
    x = torch.randn(2, 3, SIZE, SIZE)
    mask = m.sample_masks(2, generator=torch.Generator().manual_seed(0))["mask"]
    assert mask.shape == (2, 16) and int(mask[0].sum()) == 10  # ceil(16 x 0.6) mask patches
    pix = mask.view(2, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3).bool()
    other = torch.where(pix.expand_as(x), torch.randn_like(x) * 5, x)
    with torch.no_grad():
        rec, tok = m.reconstruct(x, mask)
        rec2, tok2 = m.reconstruct(other, mask)
        torch.testing.assert_close(rec, rec2)  # the masked pixels are invisible
        torch.testing.assert_close(tok, tok2)
        assert rec.shape == x.shape and tok.shape == (2, 16, m.backbone.num_features)
        # with no patch masked it is the plain encoder; the token matters where one is masked
        plain = m.backbone.forward_tokens(x)
        torch.testing.assert_close(m.reconstruct(x, torch.zeros_like(mask))[1], plain)
        m.mask_token.add_(1.0)
        assert not torch.allclose(m.reconstruct(x, mask)[1], tok)


def test_hierarchical_step_trains_the_token_and_the_head() -> None:
    m = _simmim_convvit().train()
    x = torch.randn(4, 3, SIZE, SIZE)
    out = m.training_step(Batch(views=[x], index=torch.arange(4)))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for name in ("mask_token", "decoder.0.weight", "backbone.patch_embed1.proj.weight"):
        p = dict(m.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name
