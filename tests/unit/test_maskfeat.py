"""MaskFeat (Wei et al. 2022): masked patches become the mask token before the encoder, the head
regresses the HOG of the input image, the MSE counts the masked patches only, masks are BEiT
blocks at the reference's 40%, and bad settings give clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.hog import hog_patches
from selfsup.types import Batch, ConfigError, DataError

SIZE, PATCH = 16, 4  # a 4 x 4 patch grid; default HOG cells of 2 px: 2 x 2 cells per patch


def _maskfeat(chans: int = 3, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", in_chans=chans, image_size=SIZE, patch_size=PATCH, depth=2)
    return build_method("maskfeat", vit, **kw)


def _loop_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Plain loop: mean over masked patches and target dimensions of the squared error."""
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            if mask[b, n]:
                for k in range(pred.shape[2]):
                    total += float(pred[b, n, k] - target[b, n, k]) ** 2
                    count += 1
    return total / count


def test_loss_is_mse_to_the_inputs_hog_on_masked_patches() -> None:
    m = _maskfeat().train()
    x = torch.randn(3, 3, SIZE, SIZE)
    mask = m.sample_masks(3, generator=torch.Generator().manual_seed(2))["mask"]
    out = m.training_step(Batch(views=[x], index=torch.arange(3), masks={"mask": mask}))
    with torch.no_grad():
        pred, _ = m.predict(x, mask)
    target = hog_patches(x, PATCH, 2)  # 2 x 2 cells of 2 px, 9 bins, 3 channels: 108 values
    assert pred.shape == target.shape == (3, 16, 108)
    assert out.loss.item() == pytest.approx(_loop_loss(pred, target, mask), rel=1e-5)
    out.loss.backward()
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0
    assert m.head.weight.grad is not None and m.head.weight.grad.abs().sum() > 0


def test_the_head_learns_exactly_the_hog_target() -> None:
    # a head that outputs the HOG of the input (and anything on visible patches) scores 0; one
    # that outputs the HOG of another image does not
    m = _maskfeat().eval()
    g = torch.Generator().manual_seed(3)
    x, other = torch.randn(2, 3, SIZE, SIZE, generator=g), torch.randn(2, 3, SIZE, SIZE, generator=g)
    mask = m.sample_masks(2, generator=g)["mask"]
    hog = m.targets(x)

    def step_with(pred: torch.Tensor) -> float:
        m.predict = lambda _x, _mask: (pred, torch.zeros(2, 16, 192))  # type: ignore[method-assign]
        return m.training_step(Batch(views=[x], index=torch.arange(2),
                                     masks={"mask": mask})).loss.item()

    visible_noise = torch.where(mask.unsqueeze(-1), hog, torch.randn(hog.shape, generator=g))
    assert step_with(visible_noise) == pytest.approx(0.0, abs=1e-12)
    assert step_with(m.targets(other)) > 0.05


def test_visible_patch_predictions_do_not_change_the_loss() -> None:
    m = _maskfeat().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    mask = m.sample_masks(2, generator=torch.Generator().manual_seed(4))["mask"]
    base = m.training_step(Batch(views=[x], index=torch.arange(2), masks={"mask": mask})).loss
    with torch.no_grad():  # shifting the head's output on visible patches only
        pred, tok = m.predict(x, mask)
    shifted = pred + 5.0 * (~mask).unsqueeze(-1)
    m.predict = lambda _x, _mask: (shifted, tok)  # type: ignore[method-assign]
    out = m.training_step(Batch(views=[x], index=torch.arange(2), masks={"mask": mask}))
    assert out.loss.item() == pytest.approx(base.item(), rel=1e-6)
    hidden = pred + 5.0 * mask.unsqueeze(-1)  # on masked patches it does
    m.predict = lambda _x, _mask: (hidden, tok)  # type: ignore[method-assign]
    out = m.training_step(Batch(views=[x], index=torch.arange(2), masks={"mask": mask}))
    assert out.loss.item() > base.item() + 1.0


def test_masked_pixels_do_not_reach_the_encoder() -> None:
    m = _maskfeat().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    mask = m.sample_masks(2, generator=torch.Generator().manual_seed(5))["mask"]
    pix = mask.reshape(2, 1, 4, 1, 4, 1).expand(2, 3, 4, PATCH, 4, PATCH).reshape(x.shape)
    y = x.clone()
    y[pix] = 50.0
    torch.testing.assert_close(m.predict(y, mask)[0], m.predict(x, mask)[0])


def test_masks_are_blocks_at_the_reference_ratio() -> None:
    m = _maskfeat()
    assert (m.num_masked, m.min_block) == (6, 1)  # round(0.4 * 16), 6 // 5
    mask = m.sample_masks(200, generator=torch.Generator().manual_seed(1))["mask"]
    assert mask.shape == (200, 16) and mask.dtype == torch.bool
    counts = mask.sum(1)
    assert int(counts.max()) <= 6 and float(counts.float().mean()) > 5.5
    big = _maskfeat(mask_ratio=0.5)
    assert big.sample_masks(50, generator=torch.Generator().manual_seed(1))["mask"].sum(1).max() == 8
    # seeded: the same generator state gives the same masks
    again = m.sample_masks(200, generator=torch.Generator().manual_seed(1))["mask"]
    assert torch.equal(mask, again)


def test_any_channel_count_and_cell_size() -> None:
    m = _maskfeat(chans=5, cell_size=4)  # one cell per patch: 5 bands x 9 bins
    assert m.head.out_features == 45
    x = torch.randn(2, 5, SIZE, SIZE)
    out = m.training_step(Batch(views=[x], index=torch.arange(2)))
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(m.targets(x), hog_patches(x, PATCH, 4))


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="cell_size=3 must divide"):
        _maskfeat(cell_size=3)
    with pytest.raises(ConfigError, match="mask_ratio must be in"):
        _maskfeat(mask_ratio=1.0)
    with pytest.raises(ConfigError, match="masks no patch"):
        _maskfeat(mask_ratio=0.01)
    with pytest.raises(ConfigError, match="min_num_patches = 9 exceeds"):
        _maskfeat(min_num_patches=9)
    with pytest.raises(ConfigError, match="maskfeat needs a ViT backbone"):
        build_method("maskfeat", create_backbone("small_cnn", in_chans=3, image_size=SIZE))
    m = _maskfeat()
    with pytest.raises(DataError, match=r"batch.masks\['mask'\] must be"):
        m.training_step(Batch(views=[torch.randn(2, 3, SIZE, SIZE)], index=torch.arange(2),
                              masks={"mask": torch.ones(2, 9, dtype=torch.bool)}))
    with pytest.raises(DataError, match="maskfeat expects views"):
        m.training_step(Batch(views=[torch.randn(2, 3, 8, 8)], index=torch.arange(2)))
