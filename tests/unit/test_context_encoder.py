"""Context encoder (Pathak et al. 2016; pathak22/context-encoder train.lua): the masks (exact
central region with the overlap as the code's index ranges, random blocks and regions against
loop references), the overlap-weighted L2, the channel-wise fully connected layer, the
discriminator, the separation of the adversarial gradients, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.losses.generative import discriminator_loss, generator_loss, weighted_l2
from selfsup.methods.base import build_method
from selfsup.methods.context_encoder import (
    center_hole,
    discriminator,
    inpainting_weights,
    random_block_holes,
    random_region_holes,
    scaled_overlap,
)
from selfsup.nn.backbones import create_backbone
from selfsup.nn.conv_decoder import ChannelWiseFC
from selfsup.types import Batch, ConfigError, DataError

SIZE = 16


def _ce(in_chans: int = 3, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    bb = create_backbone("small_cnn", in_chans, SIZE, width=4)
    return build_method("context_encoder", bb, decoder_dim=8, disc_dim=8, **kw)


@pytest.mark.parametrize(("size", "overlap"), [(128, 4), (16, 1), (32, 0), (20, 2)])
def test_center_hole_is_the_codes_region(size: int, overlap: int) -> None:
    hole, (c0, side) = center_hole(size, size // 2, overlap)
    # train.lua (1-based, inclusive): real_ctx[{1 + S/4 + o, S/2 + S/4 - o}] = mean
    ref = torch.zeros(size, size, dtype=torch.bool)
    for r in range(size):
        for c in range(size):
            ref[r, c] = all(size // 4 + overlap <= v < size // 2 + size // 4 - overlap
                            for v in (r, c))
    assert torch.equal(hole[0, 0], ref) and (c0, side) == (size // 4, size // 2)


def test_scaled_overlap() -> None:
    assert [scaled_overlap(4, s) for s in (128, 64, 32, 16, 8)] == [4, 2, 1, 1, 1]
    assert scaled_overlap(0, 128) == 0 and scaled_overlap(8, 128) == 8


def test_center_weights_are_the_codes_wtl2_matrix() -> None:
    hole, (c0, side) = center_hole(128, 64, 4)
    w = inpainting_weights(hole, 4, 10.0)[..., c0:c0 + side, c0:c0 + side][0, 0]
    ref = torch.full((64, 64), 10.0)  # wtl2Matrix:fill(overlapL2Weight * wtl2) ...
    ref[4:60, 4:60] = 1.0  # ... [{1 + o, S/2 - o}]:fill(wtl2)
    assert torch.equal(w, ref)
    assert inpainting_weights(hole, 4, 10.0).sum() == w.sum()  # 0 outside the central square


def test_weights_of_any_hole_against_loop() -> None:
    g = torch.Generator().manual_seed(0)
    hole = torch.rand(2, 1, 9, 9, generator=g) < 0.15
    w = inpainting_weights(hole, 2, 10.0)
    for b in range(2):
        for r in range(9):
            for c in range(9):
                near = hole[b, 0, max(0, r - 2):r + 3, max(0, c - 2):c + 3].any()
                expect = 1.0 if hole[b, 0, r, c] else (10.0 if near else 0.0)
                assert w[b, 0, r, c] == expect


def test_weighted_l2_against_loop() -> None:
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    w = torch.rand(2, 1, 4, 4, generator=g)
    ref = sum(w[b, 0, i, j] * (p[b, c, i, j] - t[b, c, i, j]) ** 2
              for b in range(2) for c in range(3) for i in range(4) for j in range(4)) / 96
    torch.testing.assert_close(weighted_l2(p, t, w), ref)
    torch.testing.assert_close(weighted_l2(p, t, w[:1]), weighted_l2(p, t, w[:1].expand(2, -1,
                                                                                          -1, -1)))
    with pytest.raises(DataError, match="weighted_l2"):
        weighted_l2(p, t, w[:, :, :2])


def test_random_blocks_against_loop() -> None:
    b, s, block, k = 6, 16, 4, 16
    holes = random_block_holes(b, s, block, 0.25, count=k,
                               generator=torch.Generator().manual_seed(0))
    top = torch.randint(0, s - block + 1, (b, k, 2), generator=torch.Generator().manual_seed(0))
    for i in range(b):
        union = torch.zeros(s, s, dtype=torch.bool)
        for j in range(k):  # add squares while the union stays within 1/4 of the image
            nxt = union.clone()
            y, x = top[i, j].tolist()
            nxt[y:y + block, x:x + block] = True
            if j > 0 and nxt.float().mean() > 0.25:
                break
            union = nxt
        assert torch.equal(holes[i, 0], union)
        assert 1 / 16 <= union.float().mean() <= 0.25


def test_random_regions_against_loop() -> None:
    b, s = 32, 16
    holes = random_region_holes(b, s, 0.25, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(b * 8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cand = F.interpolate(noise, size=(s, s), mode="bicubic", align_corners=False) < 0.25
    cand = cand.view(b, 8, s, s)
    for i in range(b):
        areas = [cand[i, t].float().mean().item() for t in range(8)]
        ok = [t for t, a in enumerate(areas) if 0.2 < a < 0.3]
        pick = ok[0] if ok else min(range(8), key=lambda t: abs(areas[t] - 0.25))
        assert torch.equal(holes[i, 0], cand[i, pick])
    area = holes.float().mean(dim=(1, 2, 3))
    assert ((area > 0.2) & (area < 0.3)).float().mean() > 0.9


def test_channel_wise_fc_against_loop() -> None:
    torch.manual_seed(0)
    fc = ChannelWiseFC(3, (2, 3))
    x = torch.randn(2, 3, 2, 3)
    y = fc.fully_connected(x)
    for b in range(2):
        for d in range(3):
            ref = x[b, d].flatten() @ fc.weight[d] + fc.bias[d]
            torch.testing.assert_close(y[b, d].flatten(), ref)
    x2 = x.clone()
    x2[:, 0] += 1.0  # no parameter connects different feature maps
    y2 = fc.fully_connected(x2)
    assert torch.equal(y2[:, 1:], y[:, 1:]) and not torch.equal(y2[:, 0], y[:, 0])
    assert fc.weight.shape == (3, 6, 6) and fc(x).shape == x.shape


@pytest.mark.parametrize("size", [2, 4, 8, 16, 64])
def test_discriminator_shapes(size: int) -> None:
    d = discriminator(3, (size, size), 8)
    assert d(torch.randn(2, 3, size, size)).shape == (2, 1)
    if size == 64:  # train.lua netD: 64 -> 32 -> 16 -> 8 -> 4 -> 1
        convs = [m for m in d if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [8, 16, 32, 64, 1]
        assert convs[-1].kernel_size == (4, 4)


def test_step_masks_the_input_and_scores_the_region() -> None:
    m = _ce().train()
    x = torch.randn(4, 3, SIZE, SIZE)
    seen = {}
    m.backbone.features.register_forward_pre_hook(lambda mod, a: seen.setdefault("x", a[0]))
    out = m.training_step(Batch(views=[x], index=torch.arange(4)))
    hole = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    hole[5:11, 5:11] = True  # the central 8 x 8 of 16 px, 1 px of overlap per side
    assert torch.equal(seen["x"][:, :, hole], torch.zeros_like(seen["x"][:, :, hole]))
    assert torch.equal(seen["x"][:, :, ~hole], x[:, :, ~hole])
    pred = m.decoder(m.bottleneck(m.backbone.forward_features(seen["x"])))
    w = torch.full((8, 8), 10.0)
    w[1:7, 1:7] = 1.0
    torch.testing.assert_close(out.loss, weighted_l2(pred, x[..., 4:12, 4:12], w))
    assert pred.shape == (4, 3, 8, 8) and out.embeddings.shape == (4, 32)
    hole_mse = (pred - x[..., 4:12, 4:12])[..., 1:7, 1:7].pow(2).mean()
    torch.testing.assert_close(out.logs["hole_mse"], hole_mse.detach())


def test_adversarial_gradients_are_separated() -> None:
    m = _ce(adversarial=True).train()
    x = torch.randn(4, 3, SIZE, SIZE)
    real = m.region(x)
    pred, _ = m.inpaint(x.masked_fill(m.center, 0.0))
    d_params = list(m.discriminator.parameters())
    g_params = list(m.decoder.parameters()) + list(m.backbone.parameters())
    buffers = {n: b.clone() for n, b in m.discriminator.named_buffers()}
    adv_g, adv_d = m.adversarial_losses(real, pred)
    g_on_d = torch.autograd.grad(adv_g, d_params, retain_graph=True, allow_unused=True)
    assert all(g is None for g in g_on_d)  # the generator's term does not move D
    d_on_g = torch.autograd.grad(adv_d, g_params, retain_graph=True, allow_unused=True)
    assert all(g is None for g in d_on_g)  # the discriminator's term does not move G
    g_on_g = torch.autograd.grad(adv_g, g_params, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_on_g)  # but it reaches G
    d_on_d = torch.autograd.grad(adv_d, d_params, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in d_on_d[:1])
    # the generator's pass through D runs on copies of D's buffers: only the two passes of D's
    # own loss (real, fake) move its BatchNorm running statistics, as in train.lua
    disc = m.discriminator
    for n, b in buffers.items():
        disc.get_buffer(n).copy_(b)
    m.adversarial_losses(real, pred)
    after = {n: b.clone() for n, b in disc.named_buffers()}
    for n, b in buffers.items():
        disc.get_buffer(n).copy_(b)
    disc(real), disc(pred.detach())
    for n, b in disc.named_buffers():
        torch.testing.assert_close(after[n], b, msg=n)
    # the step loss: lambda_rec L_rec + lambda_adv L_G + L_D, with the losses of eq. 2
    torch.manual_seed(0)
    fake_logits = torch.randn(4, 1)
    torch.testing.assert_close(generator_loss(fake_logits),
                               -F.logsigmoid(fake_logits).mean())
    torch.testing.assert_close(discriminator_loss(fake_logits, fake_logits),
                               -(F.logsigmoid(fake_logits) + F.logsigmoid(-fake_logits)).mean())


def test_adversarial_step_loss() -> None:
    m = _ce(adversarial=True).train()
    x = torch.randn(4, 3, SIZE, SIZE)
    out = m.training_step(Batch(views=[x], index=torch.arange(4)))
    rec = out.loss - 0.001 * out.logs["adv_g"] - out.logs["adv_d"]
    assert rec > 0 and set(out.logs) == {"hole_mse", "adv_g", "adv_d"}
    out.loss.backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("mask", ["random_block", "random_region"])
def test_random_masks_predict_the_whole_image(mask: str) -> None:
    m = _ce(in_chans=1, mask=mask).train()
    x = torch.randn(4, 1, SIZE, SIZE)
    ms = m.sample_masks(4, generator=torch.Generator().manual_seed(0))
    out = m.training_step(Batch(views=[x], index=torch.arange(4), masks=ms))
    pred, _ = m.inpaint(x.masked_fill(ms["hole"], 0.0))
    assert pred.shape == x.shape
    w = inpainting_weights(ms["hole"], 1, 10.0)
    torch.testing.assert_close(out.loss, weighted_l2(pred, x, w))


def test_picture_rows() -> None:
    m = _ce(in_chans=1).eval()
    x = torch.randn(2, 1, SIZE, SIZE)
    mean, std = torch.full((1, 1, 1, 1), 0.4), torch.full((1, 1, 1, 1), 0.2)
    rows = dict(m.picture_rows(x, mean, std, torch.Generator().manual_seed(0)))
    assert list(rows) == ["masked input", "inpainting in the hole"]
    unit = (x * std + mean).clamp(0, 1).expand(-1, 3, -1, -1)
    hole = m.center[0, 0]
    assert torch.allclose(rows["masked input"][:, :, hole], torch.tensor(0.4))
    assert torch.equal(rows["inpainting in the hole"][:, :, ~hole], unit[:, :, ~hole])


def test_errors() -> None:
    bb = create_backbone("small_cnn", 3, SIZE, width=4)
    with pytest.raises(ConfigError, match="method_args.overlap_pred"):
        build_method("context_encoder", bb, overlap_pred=40)
    for bad, key in [({"mask": "ring"}, "mask"), ({"hole_fraction": 1.0}, "hole_fraction"),
                     ({"coverage": 0.0}, "coverage"), ({"decoder_dim": 0}, "decoder_dim")]:
        with pytest.raises(ConfigError, match=f"method_args.{key}"):
            build_method("context_encoder", bb, **bad)
    m = _ce()
    with pytest.raises(DataError, match=r"\[B, 3, 16, 16\]"):
        m.training_step(Batch(views=[torch.randn(2, 3, 8, 8)], index=torch.arange(2)))
    with pytest.raises(DataError, match="hole"):
        m.training_step(Batch(views=[torch.randn(2, 3, SIZE, SIZE)], index=torch.arange(2),
                              masks={"hole": torch.zeros(2, SIZE, SIZE, dtype=torch.bool)}))


class _Pooled(torch.nn.Module):
    """A backbone with pooled features only (no forward_features)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features, self.in_chans, self.image_size = 6, 1, SIZE
        self.conv = torch.nn.Conv2d(1, 6, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_backbone_without_a_map_uses_its_pooled_features() -> None:
    torch.manual_seed(0)
    m = build_method("context_encoder", _Pooled(), decoder_dim=8)
    assert not m.spatial and m.bottleneck.size == (1, 1)
    out = m.training_step(Batch(views=[torch.randn(2, 1, SIZE, SIZE)], index=torch.arange(2)))
    out.loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(ConfigError, match="method_args.code"):
        build_method("autoencoder", _Pooled(), code="spatial")
