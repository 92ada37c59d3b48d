"""Autoencoder and denoising autoencoder (Vincent et al. 2008 / 2010): the decoder's output shape
for any size and channel count, the corruptions (exact destroyed fraction per sample, salt and
pepper, gaussian) in [0, 1] pixel units, the loss against loop references, the clean target, and
the errors."""

from __future__ import annotations

import math

import pytest
import torch

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup import registry
from selfsup.losses.generative import reconstruction_loss
from selfsup.methods.autoencoder import corrupt, exact_fraction_mask
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.conv_decoder import ConvDecoder
from selfsup.types import Batch, ConfigError, DataError

SIZE = 16
MEAN, STD = [0.3, 0.5, 0.2], [0.25, 0.4, 0.1]


def _dae(in_chans: int = 3, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    bb = create_backbone("small_cnn", in_chans, SIZE, width=4)
    kw.setdefault("input_mean", MEAN[:in_chans])
    kw.setdefault("input_std", STD[:in_chans])
    return build_method("denoising_autoencoder", bb, decoder_dim=8, **kw)


@pytest.mark.parametrize("out_chans", [1, 3, 5])
@pytest.mark.parametrize(("out_size", "in_size"), [
    ((16, 16), None), ((7, 7), None), ((2, 2), None), ((32, 32), None), ((8, 12), None),
    ((16, 16), (2, 2)), ((15, 15), (2, 2)), ((8, 8), (4, 4)), ((4, 4), (7, 7)), ((9, 5), (1, 1)),
])
def test_decoder_output_shape(out_chans: int, out_size: tuple[int, int],
                              in_size: tuple[int, int] | None) -> None:
    dec = ConvDecoder(6, out_chans, out_size, width=4, in_size=in_size)
    z = torch.randn(3, 6) if in_size is None else torch.randn(3, 6, *in_size)
    out = dec(z)
    assert out.shape == (3, out_chans, *out_size)
    out.square().mean().backward()
    assert all(p.grad is not None for p in dec.parameters())


def test_decoder_widths_and_bad_input() -> None:
    dec = ConvDecoder(64, 1, (16, 16), width=8)  # seed 4 x 4 of 8 * 4 channels, 2 doublings
    convs = [m for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 32), (32, 16), (16, 8)]
    assert convs[0].kernel_size == (4, 4) and convs[1].stride == (2, 2)
    with pytest.raises(DataError, match="codes"):
        dec(torch.randn(2, 64, 1, 1))
    with pytest.raises(ConfigError, match="positive"):
        ConvDecoder(0, 1, (8, 8))


def test_exact_fraction_per_sample_and_uniform_positions() -> None:
    g = torch.Generator().manual_seed(0)
    m = exact_fraction_mask(2000, (1, 4, 5), 0.25, generator=g)
    assert m.shape == (2000, 1, 4, 5) and m.dtype == torch.bool
    assert (m.flatten(1).sum(1) == 5).all()  # round(0.25 * 20), every sample (q_D, sec. 2.3)
    freq = m.float().mean(0)  # each component destroyed with probability 0.25
    assert (freq - 0.25).abs().max() < 0.04, freq
    assert not (m[0] == m[1]).all()  # drawn per sample
    again = exact_fraction_mask(2000, (1, 4, 5), 0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, again)
    assert exact_fraction_mask(3, (10,), 0.33).flatten(1).sum(1).tolist() == [3, 3, 3]


def test_corruptions_in_unit_range() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8) * 0.8 + 0.1  # no value is already 0 or 1
    mask = exact_fraction_mask(64, (3, 8, 8), 0.4)
    masked = corrupt(x, {"mask": mask}, "masking", 0.0)
    assert (masked[mask] == 0).all() and torch.equal(masked[~mask], x[~mask])
    salt = torch.rand(64, 3, 8, 8) < 0.5
    sp = corrupt(x, {"mask": mask, "salt": salt}, "salt_and_pepper", 0.0)
    assert torch.equal(sp[mask], salt[mask].float()) and torch.equal(sp[~mask], x[~mask])
    assert abs(sp[mask].mean().item() - 0.5) < 0.03  # a fair coin between 0 and 1
    noise = torch.randn(64, 3, 8, 8)
    gs = corrupt(x, {"noise": noise}, "gaussian", 0.3)
    torch.testing.assert_close(gs, x + 0.3 * noise)
    m = _dae(corruption="salt_and_pepper", corruption_level=0.3)
    d = m.sample_masks(500, generator=torch.Generator().manual_seed(1))
    assert (d["mask"].flatten(1).sum(1) == round(0.3 * 3 * SIZE * SIZE)).all()
    assert abs(d["salt"].float().mean().item() - 0.5) < 0.01
    n = _dae(corruption="gaussian").sample_masks(200)["noise"]
    assert abs(n.std().item() - 1.0) < 0.01 and n.shape == (200, 3, SIZE, SIZE)


def _bce_loop(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for i in range(logits.shape[0]):
        s = 0.0
        for lo, t in zip(logits[i].flatten().tolist(), target[i].flatten().tolist(), strict=True):
            z = 1 / (1 + math.exp(-lo))
            s -= t * math.log(z) + (1 - t) * math.log(1 - z)
        total += s
    return torch.tensor(total / logits.shape[0])


def test_reconstruction_loss_against_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(3, 2, 3, 3, generator=g), torch.rand(3, 2, 3, 3, generator=g)
    torch.testing.assert_close(reconstruction_loss(logits, target, "bce"),
                               _bce_loop(logits, target), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reconstruction_loss(logits, target, "bce", "mean"),
                               _bce_loop(logits, target) / 18, rtol=1e-5, atol=1e-5)
    mse = sum(((logits[i] - target[i]) ** 2).sum() for i in range(3)) / 3
    torch.testing.assert_close(reconstruction_loss(logits, target, "mse"), mse)
    # L_H is minimal (the entropy of x) where sigmoid(logits) = x
    x = torch.full((1, 4), 0.3)
    best = reconstruction_loss(torch.logit(x), x, "bce")
    assert best < reconstruction_loss(torch.logit(x) + 0.1, x, "bce")
    with pytest.raises(DataError, match="kind"):
        reconstruction_loss(logits, target, "l1")


def test_encoder_sees_the_corrupted_image_in_pixel_units() -> None:
    m = _dae().train()
    x = torch.randn(4, 3, SIZE, SIZE)
    draws = m.sample_masks(4, generator=torch.Generator().manual_seed(0))
    seen = {}
    m.backbone.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    m.training_step(Batch(views=[x], index=torch.arange(4), masks=draws))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    unit = x * std + mean
    expect = (unit.masked_fill(draws["mask"], 0.0) - mean) / std  # black, not the mean grey
    torch.testing.assert_close(seen["x"], expect)
    assert not torch.allclose(seen["x"][draws["mask"]], torch.zeros(()))


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_loss_scores_the_clean_input(loss: str) -> None:
    m = _dae(loss=loss).train()
    torch.manual_seed(3)
    x = torch.randn(4, 3, SIZE, SIZE)
    draws = m.sample_masks(4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out = m.training_step(Batch(views=[x], index=torch.arange(4), masks=draws))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    unit = x * std + mean
    pred = m.decoder(m.backbone((unit.masked_fill(draws["mask"], 0) - mean) / std))
    # BN in train mode: the second pass normalises with the same batch statistics
    ref = reconstruction_loss(pred, unit.clamp(0, 1), loss, "mean")
    torch.testing.assert_close(out.loss, ref)
    noisy = reconstruction_loss(pred, unit.masked_fill(draws["mask"], 0).clamp(0, 1), loss,
                                "mean")
    assert abs(noisy.item() - out.loss.item()) > 1e-3  # the clean image is the target
    assert out.logs["corrupted"] == pytest.approx(round(0.25 * 768) / 768)


def test_autoencoder_has_no_corruption_and_spatial_code() -> None:
    torch.manual_seed(0)
    bb = create_backbone("small_cnn", 1, SIZE, width=4)
    ae = build_method("autoencoder", bb, decoder_dim=8, code="spatial").train()
    assert not hasattr(ae, "sample_masks") and ae.decoder.in_size == (2, 2)
    x = torch.randn(4, 1, SIZE, SIZE)
    out = ae.training_step(Batch(views=[x], index=torch.arange(4)))
    ref = reconstruction_loss(ae.decoder(ae.backbone.forward_features(x)), x.clamp(0, 1), "bce",
                              "mean")
    torch.testing.assert_close(out.loss, ref)
    assert out.embeddings is not None and out.embeddings.shape == (4, 32)


def test_picture_rows() -> None:
    m = _dae().eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    rows = m.picture_rows(x, torch.tensor(MEAN).view(1, 3, 1, 1),
                          torch.tensor(STD).view(1, 3, 1, 1), torch.Generator().manual_seed(0))
    assert [r for r, _ in rows] == ["corrupted input", "reconstruction"]
    assert all(t.shape == (3, 3, SIZE, SIZE) and t.min() >= 0 and t.max() <= 1 for _, t in rows)


def test_presets_and_defaults() -> None:
    from selfsup.data.views import get_preset
    from selfsup.methods.autoencoder import DenoisingAutoencoderConfig

    for name in ("autoencoder", "denoising_autoencoder"):
        (v,) = get_preset(name, SIZE)
        assert v.n == 1 and v.scale == (1.0, 1.0) and v.hflip_p == 0 and v.jitter_p == 0
        assert registry.get("method", name).obj.default_views == name
    cfg = DenoisingAutoencoderConfig()
    assert (cfg.loss, cfg.reduction, cfg.corruption, cfg.corruption_level) == (
        "bce", "mean", "masking", 0.25)
    opt = registry.get("method", "autoencoder").obj.default_optim
    assert (opt["name"], opt["lr"], opt["momentum"]) == ("sgd", 0.1, 0.0)


def test_errors() -> None:
    bb = create_backbone("small_cnn", 3, SIZE, width=4)
    for bad, key in [({"corruption": "dropout"}, "corruption"),
                     ({"corruption_level": 1.5}, "corruption_level"),
                     ({"loss": "l1"}, "loss"), ({"code": "tokens"}, "code"),
                     ({"input_mean": [0.5]}, "input_mean"), ({"decoder_dim": 0}, "decoder_dim")]:
        with pytest.raises(ConfigError, match=f"method_args.{key}"):
            build_method("denoising_autoencoder", bb, **bad)
    m = _dae()
    with pytest.raises(DataError, match=r"\[B, 3, 16, 16\]"):
        m.training_step(Batch(views=[torch.randn(2, 3, 8, 8)], index=torch.arange(2)))
    with pytest.raises(DataError, match="batch.masks"):
        m.training_step(Batch(views=[torch.randn(2, 3, SIZE, SIZE)], index=torch.arange(2),
                              masks={"mask": torch.zeros(2, 1, SIZE, SIZE, dtype=torch.bool)}))
