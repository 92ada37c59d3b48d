"""LocalMIM (Wang et al. 2023): the reference's blocks per scale (scaled to the depth), per-scale
grids and region-normalised HOG / pixel targets, each scale wired to its own block, every decoder
trained, and the loss the documented weighted sum of masked-region losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.losses.reconstruction import localmim_loss, multiscale_masks
from selfsup.methods.base import build_method
from selfsup.methods.localmim import localmim_layers
from selfsup.nn.backbones import create_backbone
from selfsup.nn.hog import hog_cells
from selfsup.types import Batch, ConfigError

SIZE, PATCH = 16, 4  # 4 x 4 patches; scales 4, 2, 1, 0.5 -> 16, 8, 4, 2 regions per side


def _localmim(depth: int = 4, chans: int = 3, size: int = SIZE, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny", in_chans=chans, image_size=size, patch_size=PATCH,
                          depth=depth)
    args = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 4, **kw}
    return build_method("localmim", vit, **args)


def _batch(x: torch.Tensor, masks: dict | None = None) -> Batch:
    return Batch(views=[x], index=torch.arange(x.shape[0]), masks=masks)


def test_layers_follow_the_reference_scaled_to_the_depth() -> None:
    assert localmim_layers(12, 4) == [2, 4, 10, 12]  # models_mim.py ID = [1, 3, 9, 11]
    assert localmim_layers(24, 4) == [2, 4, 22, 24]  # ID = [1, 3, depth-3, depth-1]
    assert localmim_layers(4, 4) == [1, 2, 4, 4]
    assert localmim_layers(2, 4) == [1, 1, 2, 2]
    assert localmim_layers(4, 2, [1, 4]) == [1, 4]
    with pytest.raises(ConfigError, match="one block per scale"):
        localmim_layers(4, 3)
    with pytest.raises(ConfigError, match="last block 4"):
        localmim_layers(4, 2, [1, 2])


def test_targets_are_region_hog_and_predictions_fit_them() -> None:
    m = _localmim().eval()
    assert m.regions == [1, 2, 4, 8]
    x = torch.randn(2, 3, SIZE, SIZE)
    tg = m.targets(x)
    assert [tuple(t.shape) for t in tg] == [(2, 256, 27), (2, 64, 27), (2, 16, 27), (2, 4, 27)]
    h = hog_cells(x, cell_size=4, nbins=9)  # [B, C, K, 4, 4]: the patch-sized regions
    for b in range(2):
        for r in range(4):
            for c in range(4):  # region (r, c): channel-major bins, as HOG(imgs) concatenates
                ref = torch.stack([h[b, ch, k, r, c] for ch in range(3) for k in range(9)])
                torch.testing.assert_close(tg[2][b, r * 4 + c], ref)
    ms = m.sample_masks(2, generator=torch.Generator().manual_seed(0))
    latents = m.encode(x, ms["keep"])
    preds = [hd(d(z, ms["ids_restore"])) for z, d, hd in zip(latents, m.decoders, m.heads,
                                                            strict=True)]
    assert [p.shape for p in preds] == [t.shape for t in tg]


def test_pixel_target_is_normalised_per_region() -> None:
    m = _localmim(target="pixel", scales=[2.0, 1.0, 0.5], layers=[1, 2, 4]).eval()
    tg = m.targets(torch.randn(2, 3, SIZE, SIZE) * 5 + 2)
    assert [tuple(t.shape) for t in tg] == [(2, 64, 12), (2, 16, 48), (2, 4, 192)]
    for t in tg:  # zero mean, unit (unbiased) variance inside every region
        torch.testing.assert_close(t.mean(-1), torch.zeros(t.shape[:2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(t.var(-1), torch.ones(t.shape[:2]), atol=1e-3, rtol=0)


def test_loss_is_the_weighted_sum_of_masked_region_losses() -> None:
    w = [1.0, 0.5, 2.0, 0.25]
    m = _localmim(weights=w).eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    ms = m.sample_masks(3, generator=torch.Generator().manual_seed(2))
    out = m.training_step(_batch(x, ms))
    raw = m.backbone.forward_layers(x, [1, 2, 4, 4], keep=ms["keep"])
    latents = [m.norms[0](raw[0]), m.norms[1](raw[1]), m.backbone.norm(raw[2]),
               m.backbone.norm(raw[3])]
    preds = [hd(d(z, ms["ids_restore"])) for z, d, hd in zip(latents, m.decoders, m.heads,
                                                            strict=True)]
    masks = multiscale_masks(ms["mask"], 4, [4.0, 2.0, 1.0, 0.5])
    _, parts = localmim_loss(preds, m.targets(x), masks)
    for s, p in zip(["4", "2", "1", "0.5"], parts, strict=True):
        assert float(out.logs[f"loss_s{s}"]) == pytest.approx(p.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(sum(wi * p.item() for wi, p in zip(w, parts)),
                                            rel=1e-5)
    full = dict(ms, mask=torch.ones_like(ms["mask"]))  # scoring visible regions too differs
    assert m.training_step(_batch(x, full)).loss.item() != pytest.approx(out.loss.item(),
                                                                         rel=1e-4)


def test_finest_scale_trains_only_the_lowest_block() -> None:
    """Weights [1, 0, 0, 0]: only the scale-4 decoder on block 1 counts, so blocks 2-4 get no
    gradient (a scale wired to another block, or all scales read from the last, would)."""
    m = _localmim(weights=[1.0, 0.0, 0.0, 0.0])
    m.training_step(_batch(torch.randn(2, 3, SIZE, SIZE))).loss.backward()
    blocks = m.backbone.blocks
    assert blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    for blk in blocks[1:]:
        g = blk.attn.qkv.weight.grad
        assert g is None or g.abs().sum() == 0


def test_every_part_receives_gradients() -> None:
    m = _localmim()
    m.training_step(_batch(torch.randn(2, 3, SIZE, SIZE))).loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    for hd in m.heads:
        assert hd.net[-1].weight.grad.abs().sum() > 0
    assert not m.backbone.pos_embed.requires_grad


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="scales"):
        _localmim(scales=[3.0, 1.0], layers=[1, 4])
    with pytest.raises(ConfigError, match="even patch grid"):
        _localmim(size=12)  # a 3 x 3 grid cannot be halved
    with pytest.raises(ConfigError, match="holds one value"):
        _localmim(chans=1, target="pixel")  # 1-px grey regions at scale 4
    with pytest.raises(ConfigError, match="target"):
        _localmim(target="depth")
    with pytest.raises(ConfigError, match="weights"):
        _localmim(weights=[1.0])
    with pytest.raises(ConfigError, match="ViT"):
        build_method("localmim", create_backbone("small_cnn", in_chans=3, image_size=16))
