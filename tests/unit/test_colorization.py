"""Colorization (Zhang et al. 2016): Lab <-> RGB against a per-pixel reference of the CIE
formulas, the in-gamut ab bins, the soft encoding, the smoothed prior and rebalancing weights,
the rebalanced cross-entropy and its gradient, the annealed mean, the prior buffer, and the
method's task construction (L in, ab out at 1/4 resolution, grey mask) against a hand-built
reference, its encoder on RGB, its pictures and its errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.data.color import lab_to_rgb, rgb_to_lab, srgb_ab_bins
from selfsup.data.views import get_preset
from selfsup.losses.colorization import (
    annealed_mean,
    mode_ab,
    rebalance_weights,
    rebalanced_cross_entropy,
    smooth_prior,
    soft_encode,
)
from selfsup.methods.base import build_method
from selfsup.methods.colorization import Colorization, LightnessEncoder
from selfsup.nn.ab_prior import ABPrior
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError, DataError

M = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169),
     (0.019334, 0.119193, 0.950227))
WHITE = (0.95047, 1.0, 1.08883)


def _ref_rgb_to_lab(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """One pixel by the CIE / IEC 61966-2-1 formulas, in plain floats."""
    lin = [((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92 for c in rgb]
    xyz = [sum(M[i][j] * lin[j] for j in range(3)) / WHITE[i] for i in range(3)]
    f = [t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29 for t in xyz]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def _ref_lab_to_rgb(lab: tuple[float, float, float]) -> tuple[float, float, float]:
    fy = (lab[0] + 16) / 116
    f = (fy + lab[1] / 500, fy, fy - lab[2] / 200)
    xyz = [(t ** 3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)) * w
           for t, w in zip(f, WHITE)]
    inv = torch.linalg.inv(torch.tensor(M, dtype=torch.float64)).tolist()
    lin = [min(max(sum(inv[i][j] * xyz[j] for j in range(3)), 0.0), 1.0) for i in range(3)]
    return tuple(1.055 * c ** (1 / 2.4) - 0.055 if c > 0.0031308 else 12.92 * c  # type: ignore
                 for c in lin)


def _img(pixels: list[tuple[float, float, float]]) -> torch.Tensor:
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, 3, -1, 1)


def test_lab_against_cie_reference_and_known_values() -> None:
    g = torch.Generator().manual_seed(0)
    pixels = [tuple(p) for p in torch.rand(40, 3, generator=g, dtype=torch.float64).tolist()]
    pixels += [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.02, 0.03, 0.04), (1.0, 0.0, 0.0)]
    lab = rgb_to_lab(_img(pixels))[0, :, :, 0].T
    ref = torch.tensor([_ref_rgb_to_lab(p) for p in pixels], dtype=torch.float64)
    torch.testing.assert_close(lab, ref, rtol=0, atol=1e-9)
    # published values (skimage.color.rgb2lab): white (the rounded matrix leaves ~5e-3 of
    # chroma), sRGB red
    torch.testing.assert_close(lab[-3], torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-2)
    torch.testing.assert_close(lab[-1], torch.tensor([53.2408, 80.0925, 67.2032],
                                                     dtype=torch.float64), rtol=0, atol=1e-3)
    back = lab_to_rgb(_img([tuple(p) for p in ref.tolist()]))[0, :, :, 0].T
    ref_back = torch.tensor([_ref_lab_to_rgb(tuple(p)) for p in ref.tolist()], dtype=torch.float64)
    torch.testing.assert_close(back, ref_back, rtol=0, atol=1e-9)


def test_lab_round_trip_is_tiny_and_out_of_gamut_is_clipped() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 2e-5  # float32
    xd = x.double()
    assert (lab_to_rgb(rgb_to_lab(xd)) - xd).abs().max() < 1e-12
    wild = torch.tensor([[50.0, 120.0, -120.0], [100.0, 0.0, 90.0], [0.0, -80.0, 0.0]])
    out = lab_to_rgb(wild.T.reshape(1, 3, 3, 1))
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    with pytest.raises(DataError, match="3 channels"):
        lab_to_rgb(torch.zeros(1, 2, 4, 4))


def test_bins_cover_the_srgb_gamut() -> None:
    bins = srgb_ab_bins(10.0)
    # 261 with the reference's extent; the paper's file has 313 (a superset, see srgb_ab_bins)
    assert bins.shape == (261, 2)
    assert bins[:, 0].min() == -90 and bins[:, 0].max() == 100
    assert bins[:, 1].min() == -110 and bins[:, 1].max() == 90
    assert torch.equal(bins, torch.round(bins / 10) * 10) and len(torch.unique(bins, dim=0)) == 261
    # every 8-bit colour, interior ones included, is within half a cell (Chebyshev) of a bin
    g = torch.Generator().manual_seed(2)
    rgb = torch.randint(0, 256, (1, 3, 8000, 1), generator=g).double() / 255
    ab = rgb_to_lab(rgb)[0, 1:, :, 0].T.float()
    cheb = (ab[:, None] - bins[None]).abs().amax(-1).amin(1)
    assert cheb.max() <= 5.0 + 1e-4
    # and every bin is reached by some colour: none lies outside the gamut
    reached = torch.unique(torch.round(ab / 10), dim=0) * 10
    assert len(reached) > 200 and set(map(tuple, reached.tolist())) <= set(map(tuple,
                                                                                bins.tolist()))
    assert srgb_ab_bins(20.0).shape[0] < 100
    with pytest.raises(ConfigError, match="grid"):
        srgb_ab_bins(0.0)


def test_soft_encode_against_loop_and_closed_form() -> None:
    bins = srgb_ab_bins()
    g = torch.Generator().manual_seed(3)
    ab = torch.rand(30, 2, generator=g) * 160 - 80
    index, weight = soft_encode(ab, bins, neighbors=5, sigma=5.0)
    for p in range(len(ab)):
        d2 = [(float(ab[p, 0] - c[0]) ** 2 + float(ab[p, 1] - c[1]) ** 2, q)
              for q, c in enumerate(bins.tolist())]
        near = sorted(d2)[:5]
        w = [math.exp(-d / 50.0) for d, _ in near]
        assert index[p].tolist() == [q for _, q in near]
        torch.testing.assert_close(weight[p], torch.tensor(w) / sum(w), rtol=1e-5, atol=1e-6)
    # on a bin centre: itself and its 4 neighbours at distance 10 -> 1 / (1 + 4 e^-2)
    _, w0 = soft_encode(torch.tensor([[0.0, 0.0]]), bins)
    assert w0[0, 0].item() == pytest.approx(1 / (1 + 4 * math.exp(-2)), rel=1e-5)
    with pytest.raises(ConfigError, match="neighbors"):
        soft_encode(ab, bins, neighbors=0)


def test_prior_and_rebalancing_weights_against_loop() -> None:
    bins = srgb_ab_bins()
    q = len(bins)
    g = torch.Generator().manual_seed(4)
    counts = torch.zeros(q, dtype=torch.float64)
    counts[torch.randint(0, q, (40,), generator=g)] += torch.rand(40, generator=g,
                                                                  dtype=torch.float64) * 100
    p = counts / counts.sum()
    c = bins.double().tolist()
    ref = torch.tensor([sum(math.exp(-((c[i][0] - c[j][0]) ** 2 + (c[i][1] - c[j][1]) ** 2)
                                     / 50.0) * float(p[j]) for j in range(q)) for i in range(q)],
                       dtype=torch.float64)
    ref = ref / ref.sum()
    prior = smooth_prior(counts, bins, 5.0)
    torch.testing.assert_close(prior, ref, rtol=1e-9, atol=1e-12)
    w = rebalance_weights(prior, 0.5)
    w_ref = torch.tensor([1.0 / (0.5 * float(ref[i]) + 0.5 / q) for i in range(q)],
                         dtype=torch.float64)
    torch.testing.assert_close(w, w_ref / (ref * w_ref).sum(), rtol=1e-9, atol=0)
    assert float((prior * w).sum()) == pytest.approx(1.0, abs=1e-12)  # E_p~[w] = 1 (eq. 4)
    assert w[prior.argmin()] > 1 > w[prior.argmax()]  # rare colours boosted
    assert torch.allclose(rebalance_weights(prior, 1.0), torch.ones(q, dtype=torch.float64))
    torch.testing.assert_close(smooth_prior(counts, bins, 0.0), p)
    torch.testing.assert_close(smooth_prior(torch.zeros(q), bins), torch.full((q,), 1 / q,
                                                                              dtype=torch.float64))
    with pytest.raises(ConfigError, match="rebalance_lambda"):
        rebalance_weights(prior, 1.5)


def test_rebalanced_cross_entropy_against_loop_and_its_gradient() -> None:
    g = torch.Generator().manual_seed(5)
    b, q, h, w, k = 2, 7, 3, 2, 3
    logits = torch.randn(b, q, h, w, generator=g, requires_grad=True)
    index = torch.stack([torch.randperm(q, generator=g)[:k] for _ in range(b * h * w)])
    index = index.view(b, h, w, k)
    weight = torch.softmax(torch.randn(b, h, w, k, generator=g), -1)
    v = torch.rand(b, h, w, generator=g) * 2
    loss = rebalanced_cross_entropy(logits, index, weight, v)
    ref, z_all = 0.0, torch.zeros(b, q, h, w)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                z = torch.zeros(q)
                z[index[i, y, x]] = weight[i, y, x]
                z_all[i, :, y, x] = z
                logp = torch.log_softmax(logits[i, :, y, x].detach(), 0)
                ref += float(v[i, y, x]) * float(-(z * logp).sum())
    assert loss.item() == pytest.approx(ref / b, rel=1e-5)
    loss.backward()  # ClassRebalanceMultLayer: the pixel's gradient scaled by its weight
    expected = v.unsqueeze(1) * (torch.softmax(logits.detach(), 1) - z_all) / b
    torch.testing.assert_close(logits.grad, expected, rtol=1e-4, atol=1e-6)


def test_annealed_mean_is_the_retempered_distributions_mean() -> None:
    bins = srgb_ab_bins()
    logits = torch.randn(2, len(bins), 3, 3, generator=torch.Generator().manual_seed(6)) * 3
    z = torch.softmax(logits, 1)
    for t in (1.0, 0.38):
        f = z ** (1 / t) / (z ** (1 / t)).sum(1, keepdim=True)  # eq. 5: exp(log z / T) / sum
        ref = torch.einsum("bqhw,qc->bchw", f, bins)
        torch.testing.assert_close(annealed_mean(logits, bins, t), ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(annealed_mean(logits, bins, 1e-4), mode_ab(logits, bins))
    with pytest.raises(ConfigError, match="temperature"):
        annealed_mean(logits, bins, 0.0)


def test_ab_prior_counts_valid_images_then_freezes() -> None:
    prior = ABPrior(5, num_images=3)
    index = torch.tensor([[[0, 1], [1, 4]], [[2, 2], [2, 2]]])  # [B=2, 2, 2]
    prior.update(index, torch.tensor([True, False]))
    assert prior.counts.tolist() == [1, 2, 0, 0, 1] and int(prior.images) == 2
    prior.update(index, torch.tensor([True, True]))  # crosses num_images: counted whole
    assert prior.counts.tolist() == [2, 4, 4, 0, 2] and not prior.gathering
    prior.update(index, torch.tensor([True, True]))  # frozen
    assert prior.counts.tolist() == [2, 4, 4, 0, 2] and int(prior.images) == 4
    assert set(prior.state_dict()) == {"counts", "images"}


def _method(**kw: object) -> Colorization:
    torch.manual_seed(0)
    m = build_method("colorization", create_backbone("small_cnn", 3, 16, width=4),
                     decoder_dim=8, **kw)
    assert isinstance(m, Colorization)
    return m


def test_training_step_matches_a_hand_built_task() -> None:
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    m = _method(input_mean=mean, input_std=std, num_samples=100).train()
    g = torch.Generator().manual_seed(7)
    unit = torch.rand(3, 3, 16, 16, generator=g)
    unit[2] = unit[2].mean(0, keepdim=True)  # a grey image: no loss, not in the prior
    x = (unit - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = m.training_step(Batch(views=[x], index=torch.arange(3)))
    # by hand: L in, (L - 50) / 50; train-mode BN gives the same logits on the same batch
    lab = rgb_to_lab(unit)
    enc = m.backbone
    assert isinstance(enc, LightnessEncoder)
    logits = m.head(enc.net.forward_features((lab[:, :1] - 50) / 50))
    assert logits.shape == (3, 261, 4, 4)  # 16 px / 8 (small_cnn) x 2 (conv8): 1/4 resolution
    ab = lab[:, 1:, ::4, ::4]  # data_ab_ss: the top-left pixel of every 4x4 cell
    index, weight = soft_encode(ab.permute(0, 2, 3, 1).reshape(-1, 2), m.bins, 5, 5.0)
    nearest = index[:, 0].view(3, 4, 4)
    counts = torch.bincount(nearest[:2].flatten(), minlength=261).double()  # colour images
    assert torch.equal(m.prior.counts, counts) and int(m.prior.images) == 3
    wq = rebalance_weights(smooth_prior(counts, m.bins, 5.0), 0.5).float()
    v = wq[nearest] * torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1)
    ref = rebalanced_cross_entropy(logits, index.view(3, 4, 4, 5), weight.view(3, 4, 4, 5), v)
    torch.testing.assert_close(out.loss, ref, rtol=1e-4, atol=1e-4)
    assert out.logs["gray_frac"] == pytest.approx(1 / 3)
    assert out.embeddings is not None and out.embeddings.shape == (3, 32)
    m.eval()  # evaluation steps leave the prior alone
    m.training_step(Batch(views=[x], index=torch.arange(3)))
    assert torch.equal(m.prior.counts, counts)


def test_grey_images_get_no_loss() -> None:
    m = _method(rebalance=False).eval()
    g = torch.Generator().manual_seed(8)
    colour = torch.rand(1, 3, 16, 16, generator=g)
    grey = torch.rand(1, 1, 16, 16, generator=g).expand(1, 3, 16, 16)
    both = m.training_step(Batch(views=[torch.cat([colour, grey])], index=torch.arange(2)))
    one = m.training_step(Batch(views=[colour], index=torch.arange(1)))
    assert both.loss.item() == pytest.approx(one.loss.item() / 2, rel=1e-5)
    kept = _method(rebalance=False, gray_threshold=0.0).eval()
    assert kept.training_step(Batch(views=[grey], index=torch.arange(1))).loss.item() > 0


def test_encoder_sees_lightness_only_and_undoes_normalisation() -> None:
    m = _method(input_mean=[0.5, 0.5, 0.5], input_std=[0.25, 0.25, 0.25]).eval()
    enc = m.encoder()
    assert enc is m.backbone and isinstance(enc, LightnessEncoder) and enc.in_chans == 3
    lab = torch.zeros(2, 3, 8, 8)
    lab[:, 0] = torch.linspace(30, 70, 8)
    lab[1, 1], lab[1, 2] = 15.0, -15.0  # same L, another (in-gamut) colour
    x = (lab_to_rgb(lab) - 0.5) / 0.25
    with torch.no_grad():
        f = enc(x)
    torch.testing.assert_close(f[0], f[1], rtol=1e-3, atol=1e-4)
    assert enc.net.in_chans == 1
    with pytest.raises(DataError, match="RGB"):
        enc(torch.zeros(1, 1, 8, 8))


def test_picture_rows() -> None:
    m = _method().eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    rows = m.picture_rows(x, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))
    assert [n for n, _ in rows] == ["input L", "annealed mean T=0.38", "mode"]
    for _, r in rows:
        assert r.shape == (2, 3, 16, 16) and r.min() >= 0 and r.max() <= 1
    grey = rows[0][1]
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5)  # no colour in the input row
    torch.testing.assert_close(rgb_to_lab(grey)[:, 0], rgb_to_lab(x)[:, 0], rtol=0, atol=1e-3)


def test_defaults_preset_and_errors() -> None:
    m = build_method("colorization", create_backbone("small_cnn", 3, 16, width=4))
    cfg = m.cfg
    assert (cfg.grid, cfg.neighbors, cfg.sigma, cfg.rebalance_lambda, cfg.prior_sigma,
            cfg.temperature, cfg.gray_threshold) == (10.0, 5, 5.0, 0.5, 5.0, 0.38, 5.0)
    assert type(m).default_optim["name"] == "adam" and type(m).default_optim["lr"] == 3e-5
    assert m.head[0].stride == (2, 2) and m.head[-1].out_channels == 261
    (view,) = get_preset("colorization", 32)
    assert view.size == 22 and view.scale == ((22 / 32) ** 2,) * 2 and view.ratio == (1.0, 1.0)
    assert (view.hflip_p, view.jitter_p, view.grayscale_p, view.blur_p) == (0.5, 0.0, 0.0, 0.0)
    grey = create_backbone("small_cnn", 1, 16, width=4)
    with pytest.raises(ConfigError, match="3-channel data, got 1"):
        build_method("colorization", grey)
    rgb = create_backbone("small_cnn", 3, 16, width=4)
    for bad in ({"neighbors": 0}, {"rebalance_lambda": 1.5}, {"target_downsample": "max"},
                {"temperature": 0.0}, {"decoder_layers": -1}, {"input_mean": [0.5]}):
        with pytest.raises(ConfigError, match=f"method_args.{next(iter(bad))}"):
            build_method("colorization", rgb, **bad)
    no_map = torch.nn.Linear(3, 4)
    no_map.num_features, no_map.in_chans = 4, 3  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="spatial feature map"):
        build_method("colorization", no_map)
    with pytest.raises(DataError, match="larger than the view"):
        m.training_step(Batch(views=[torch.zeros(2, 3, 1, 1)], index=torch.arange(2)))
    area = _method(target_downsample="area")
    assert torch.equal(area.targets(torch.ones(1, 2, 8, 8), (2, 2)), torch.ones(1, 2, 2, 2))
    assert F.interpolate(torch.arange(16.0).view(1, 1, 4, 4), size=(2, 2)).flatten().tolist() \
        == [0.0, 2.0, 8.0, 10.0]  # "nearest" = the top-left pixel of each cell (data_ab_ss)


def test_step_under_bf16_autocast_keeps_lab_in_float32() -> None:
    m = _method().train()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(10))
    enc = m.backbone
    assert isinstance(enc, LightnessEncoder)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = enc.lab(x)
        out = m.training_step(Batch(views=[x], index=torch.arange(2)))
    assert lab.dtype == torch.float32 and out.loss.dtype == torch.float32
    torch.testing.assert_close(lab, rgb_to_lab(x))  # the conversion is not rounded to bf16
    assert torch.isfinite(out.loss)
