"""Learning to count beyond the registry contract: the count targets (tiles exactly the four
quadrants, the downsampled image at half the size with OpenCV's four filters), the loss against
a loop over eq. 4, the margin term (a constant counting vector cannot get below M, the trivial
zero solution of eq. 3 is gone), the pairing with the next image of the batch, the per-step
filter and colour draws shared by every term, and the error messages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses.counting import counting_loss, counting_terms
from selfsup.methods.base import build_method
from selfsup.methods.counting import (
    Config,
    Counting,
    StandardizedEncoder,
    quadrants,
    standardize_each,
)
from selfsup.nn.backbones import create_backbone
from selfsup.nn.downsample import DOWNSAMPLE_METHODS, downsample2, downsample_kernel
from selfsup.types import Batch, ConfigError, DataError

SIZE = 16


def _method(in_chans: int = 1, **kw: object) -> Counting:
    torch.manual_seed(0)
    bb = create_backbone("small_cnn", in_chans=in_chans, image_size=SIZE, width=4)
    m = build_method("counting", bb, hidden_dim=32, count_dim=16, **kw)
    assert isinstance(m, Counting)
    return m


def test_tiles_are_exactly_the_four_quadrants() -> None:
    x = torch.randn(2, 3, 8, 8)
    t = quadrants(x)
    assert t.shape == (2, 4, 3, 4, 4)
    for j, (rows, cols) in enumerate([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                      (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))]):
        assert torch.equal(t[:, j], x[:, :, rows, cols])


def test_network_inputs_are_the_downsampled_image_then_its_tiles() -> None:
    m = _method(3, standardize=False)
    x = torch.randn(3, 3, SIZE, SIZE)
    inp = m.network_inputs(x, "bicubic", grey=False)
    assert inp.shape == (15, 3, SIZE // 2, SIZE // 2)  # D(x): half the side, like the tiles
    assert torch.equal(inp[:3], downsample2(x, "bicubic"))
    for i in range(3):
        for j in range(4):
            r, c = divmod(j, 2)
            assert torch.equal(inp[3 + 4 * i + j], x[i, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8])


def _lanczos_loop(row: list[float]) -> list[float]:
    """OpenCV INTER_LANCZOS4 at factor 2 on one row: output i reads 2i-3 .. 2i+4 (clamped) with
    sinc(d) sinc(d/4) at d = |2i + 0.5 - k|, normalised."""
    n, out = len(row), []
    for i in range(n // 2):
        ks = range(2 * i - 3, 2 * i + 5)
        w = []
        for k in ks:
            d = abs(2 * i + 0.5 - k)
            w.append(math.sin(math.pi * d) * math.sin(math.pi * d / 4) / (math.pi**2 * d * d / 4))
        s = sum(w)
        out.append(sum(wk / s * row[min(max(k, 0), n - 1)] for wk, k in zip(w, ks)))
    return out


def test_downsampling_filters_match_opencv_at_factor_two() -> None:
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    torch.testing.assert_close(downsample2(x, "area"), F.avg_pool2d(x, 2))
    for mode in ("bilinear", "bicubic"):  # torch's kernels (a = -0.75, clamped borders)
        ref = F.interpolate(x, scale_factor=0.5, mode=mode, align_corners=False)
        torch.testing.assert_close(downsample2(x, mode), ref)
    assert downsample_kernel("bicubic") == pytest.approx([-0.09375, 0.59375, 0.59375, -0.09375])
    row = torch.randn(1, 1, 1, 16, dtype=torch.float64)
    got = downsample2(row.expand(1, 1, 2, 16).contiguous(), "lanczos")[0, 0, 0]
    torch.testing.assert_close(got, torch.tensor(_lanczos_loop(row.flatten().tolist()),
                                                 dtype=torch.float64))
    const = torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64)
    outs = [downsample2(x, k) for k in DOWNSAMPLE_METHODS]
    for k in DOWNSAMPLE_METHODS:  # every filter keeps a constant image (taps sum to 1)
        torch.testing.assert_close(downsample2(const, k), torch.full((1, 1, 4, 4), 0.3,
                                                                     dtype=torch.float64))
    assert not torch.allclose(outs[0], outs[2]) and not torch.allclose(outs[0], outs[1])
    with pytest.raises(DataError, match="even H and W"):
        downsample2(torch.randn(1, 1, 7, 8), "area")
    with pytest.raises(ConfigError, match="downsampling method"):
        downsample2(x, "nearest")


def test_downsampling_filters_equal_cv2_resize_where_opencv_is_installed() -> None:
    cv2 = pytest.importorskip("cv2")  # not a dependency: checked by hand with OpenCV 4.14
    import numpy as np

    x = np.random.default_rng(0).standard_normal((16, 12)).astype(np.float32)
    flags = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
             "lanczos": cv2.INTER_LANCZOS4}
    for name, flag in flags.items():
        ref = cv2.resize(x, (6, 8), interpolation=flag)
        got = downsample2(torch.from_numpy(x)[None, None], name)[0, 0].numpy()
        np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0, err_msg=name)


def _loss_loop(d: torch.Tensor, t: torch.Tensor, y: torch.Tensor, margin: float) -> float:
    total = 0.0
    for i in range(d.shape[0]):
        s = [sum(float(t[i, j, k]) for j in range(t.shape[1])) for k in range(d.shape[1])]
        a = sum((float(d[i, k]) - s[k]) ** 2 for k in range(d.shape[1]))
        b = sum((float(y[i, k]) - s[k]) ** 2 for k in range(d.shape[1]))
        total += a + max(0.0, margin - b)
    return total / d.shape[0]


@pytest.mark.parametrize("scale", [0.1, 0.5, 2.0])
def test_loss_against_loop(scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    d, y = (torch.rand(5, 6, generator=g, dtype=torch.float64) * scale for _ in range(2))
    t = torch.rand(5, 4, 6, generator=g, dtype=torch.float64) * scale / 4
    assert counting_loss(d, t, y, 10.0).item() == pytest.approx(_loss_loop(d, t, y, 10.0))
    assert counting_loss(d, t, y, 3.0).item() == pytest.approx(_loss_loop(d, t, y, 3.0))


def test_margin_term_rules_out_constant_counts() -> None:
    """A constant counting vector c gives 9|c|^2 + max(0, M - 9|c|^2) >= M = 10 whatever c;
    counts that add up and tell images apart reach 0; without the margin (eq. 3) the all-zero
    counting vector is a minimiser."""
    b, k = 6, 8
    for mag in (0.0, 0.1, 1 / 3, 1.0, 3.0):
        c = torch.full((b, k), mag)
        tiles = c.unsqueeze(1).expand(b, 4, k)
        assert counting_loss(c, tiles, c, 10.0).item() >= 10.0 - 1e-5
    v = torch.eye(b, k) * 3.0  # image i counts 9 of primitive i: |v_i - v_j|^2 = 18 >= 10
    tiles = (v / 4).unsqueeze(1).expand(b, 4, k)
    assert counting_loss(v, tiles, v.roll(-1, 0), 10.0).item() == 0.0
    zero = torch.zeros(b, k)
    assert counting_loss(zero, zero.unsqueeze(1).expand(b, 4, k), zero, 0.0).item() == 0.0
    count, contrast = counting_terms(zero, zero.unsqueeze(1).expand(b, 4, k), zero)
    assert torch.equal(contrast, torch.full((b,), 10.0)) and not count.any()


def test_step_pairs_each_image_with_the_next_of_the_batch() -> None:
    m = _method(1, downsampling="area", gray_p=0.0, margin=1e4).eval()  # margin term active
    with torch.no_grad():  # counts of a size where the pairing shows in the margin term
        m.counter[0][-1].weight.mul_(20)
    x = torch.randn(5, 1, SIZE, SIZE)
    out = m.training_step(Batch(views=[x], index=torch.arange(5)))
    with torch.no_grad():
        phi = m.counter(m.backbone(m.network_inputs(x, "area", grey=False)))
    d, t = phi[:5], phi[5:].view(5, 4, -1)
    ref = counting_loss(d, t, d.roll(-1, 0), 1e4).item()
    assert out.loss.item() == pytest.approx(ref, rel=1e-6)
    for wrong in (d, d.roll(1, 0)):  # y = x itself, or the previous image
        assert abs(out.loss.item() - counting_loss(d, t, wrong, 1e4).item()) > 1e-2
    assert (phi >= 0).all()  # the counting vector is a ReLU output
    assert out.embeddings is not None and out.embeddings.shape == (5, 16)


def test_step_draws_filter_and_colour_once_for_all_terms() -> None:
    m = _method(3, gray_p=0.67)
    torch.manual_seed(0)
    draws = [m.draw_step(torch.device("cpu")) for _ in range(600)]
    assert {f for f, _ in draws} == set(DOWNSAMPLE_METHODS)
    assert abs(sum(g for _, g in draws) / 600 - 0.67) < 0.06
    assert {f for f, _ in (_method(3, downsampling="lanczos").draw_step(torch.device("cpu"))
                           for _ in range(20))} == {"lanczos"}
    mean, std = [0.2, 0.4, 0.6], [0.5, 0.25, 0.2]
    g = _method(3, gray_p=1.0, standardize=False, input_mean=mean, input_std=std)
    x = torch.randn(2, 3, SIZE, SIZE)
    inp = g.network_inputs(x, "bicubic", grey=True)
    unit = inp * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    torch.testing.assert_close(unit[:, 0], unit[:, 1])  # every input (D x and tiles) is grey:
    torch.testing.assert_close(unit[:, 0], unit[:, 2])  # the mean colour in every channel
    expect = (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1))
    torch.testing.assert_close(unit[:2, 0], downsample2(expect.mean(1, keepdim=True),
                                                        "bicubic")[:, 0])


def test_each_input_is_standardised_by_the_encoder() -> None:
    x = torch.randn(7, 3, 8, 8) * 5 + 2
    s = standardize_each(x)
    torch.testing.assert_close(s.mean(dim=(1, 2, 3)), torch.zeros(7), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.std(dim=(1, 2, 3), unbiased=False), torch.ones(7), atol=1e-4,
                               rtol=0)
    m = _method().eval()
    assert isinstance(m.backbone, StandardizedEncoder) and m.encoder() is m.backbone
    inner = m.backbone.backbone
    img = torch.randn(3, 1, SIZE, SIZE) * 3 + 1
    torch.testing.assert_close(m.backbone(img), inner(standardize_each(img)))
    # the same per-image normalisation in training (tiles) and evaluation (whole images)
    torch.testing.assert_close(m.backbone(img), m.backbone(img * 4 - 2))
    plain = _method(standardize=False)
    assert not isinstance(plain.backbone, StandardizedEncoder)
    # checkpoints and exports rebuild the wrapper from the Config
    again = Counting.build_encoder(create_backbone("small_cnn", 1, SIZE, width=4), m.cfg)
    assert set(again.state_dict()) == set(m.backbone.state_dict())


def test_defaults_and_head() -> None:
    cfg = Config()
    assert (cfg.count_dim, cfg.hidden_dim, cfg.margin, cfg.gray_p, cfg.downsampling) == (
        1000, 4096, 10.0, 0.67, "random")
    m = build_method("counting", create_backbone("small_cnn", 1, SIZE, width=4))
    lin = [x for x in m.counter.modules() if isinstance(x, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(32, 4096), (4096, 4096),
                                                              (4096, 1000)]
    assert isinstance(m.counter[-1], torch.nn.ReLU)
    assert Counting.default_views == "counting"


def test_bad_input() -> None:
    m = _method()
    for shape in ((4, 1, 15, 15), (4, 1, 2, 2), (4, 1, 16, 12)):
        with pytest.raises(DataError, match="even side of at least 4 px"):
            m.training_step(Batch(views=[torch.randn(*shape)], index=torch.arange(4)))
    with pytest.raises(DataError, match="at least 2 images"):
        m.training_step(Batch(views=[torch.randn(1, 1, SIZE, SIZE)], index=torch.arange(1)))
    with pytest.raises(DataError, match="one view"):
        m.training_step(Batch(views=[], index=torch.arange(1)))
    bb = create_backbone("small_cnn", 3, SIZE, width=4)
    for bad, key in (({"margin": -1.0}, "margin"), ({"gray_p": 1.5}, "gray_p"),
                     ({"downsampling": "nearest"}, "downsampling"), ({"count_dim": 0},
                                                                     "count_dim"),
                     ({"input_mean": [0.5]}, "input_mean"), ({"input_std": [1, 0, 1]},
                                                             "input_std")):
        with pytest.raises(ConfigError, match=f"method_args.{key}"):
            build_method("counting", bb, **bad)
