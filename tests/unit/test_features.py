"""Feature extraction with a frozen encoder, the raw-pixel baseline and the results table."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.report import (
    PixelEncoder,
    evaluate_encoder,
    evaluate_features,
    format_table,
    raw_pixel_features,
)
from selfsup.types import ConfigError, DataError


class TensorSet:
    """A minimal in-memory batch source: raw images [N, C, H, W] with labels [N]."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y, self.num_classes = x, y, int(y.max()) + 1 if len(y) else 0

    def __len__(self) -> int:
        return len(self.y)

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


class ItemSet(TensorSet):
    """The same data exposed only through ``__getitem__`` -> (image, label, index)."""

    get_batch = None  # type: ignore[assignment]

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return self.x[i], int(self.y[i]), i


def digits() -> tuple[Tensor, Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.uint8).reshape(-1, 1, 8, 8), torch.tensor(y)


def prep(raw: Tensor) -> Tensor:
    return (raw.float() / 16.0 - 0.3) / 0.4


def make_encoder() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    )


def test_extracts_eval_mode_features_in_order_and_restores_modes() -> None:
    x, y = digits()
    ds = TensorSet(x[:300], y[:300])
    enc = make_encoder().train()
    enc[3].eval()  # a submodule in its own mode must come back as it was
    bn = enc[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
    bn_before = bn.running_mean.clone()
    f, labels = extract_features(enc, ds, prep, batch_size=64)
    assert f.shape == (300, 32) and f.dtype == torch.float32 and f.device.type == "cpu"
    assert torch.equal(labels, y[:300])
    assert [m.training for m in enc.modules()] == [True, True, True, True, False, True, True]
    assert torch.equal(bn.running_mean, bn_before)  # eval mode: statistics untouched
    enc.eval()
    with torch.no_grad():
        want = enc(prep(x[:300]))
    torch.testing.assert_close(f, want)
    # batch size does not change the result; features work in later autograd code
    f7, _ = extract_features(enc, ds, prep, batch_size=7)
    torch.testing.assert_close(f7, f)
    nn.Linear(32, 3)(f).sum().backward()


def test_normalize_and_getitem_sources() -> None:
    x, y = digits()
    enc = make_encoder()
    f, _ = extract_features(enc, TensorSet(x[:50], y[:50]), prep, normalize=True)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(50))
    g, gy = extract_features(enc, ItemSet(x[:50], y[:50]), prep, normalize=True, batch_size=16)
    torch.testing.assert_close(g, f)
    assert torch.equal(gy, y[:50])


def test_bad_input_raises() -> None:
    x, y = digits()
    ds = TensorSet(x[:10], y[:10])
    with pytest.raises(DataError, match="empty"):
        extract_features(make_encoder(), TensorSet(x[:0], y[:0]), prep)
    with pytest.raises(DataError, match=r"\[B, D\]"):
        extract_features(nn.Conv2d(1, 4, 3), ds, prep)
    with pytest.raises(DataError, match="non-finite"):
        extract_features(nn.Flatten(), ds, lambda r: r.float() / 0.0)
    with pytest.raises(ConfigError, match="batch_size"):
        extract_features(make_encoder(), ds, prep, batch_size=0)
    with pytest.raises(ConfigError, match="device"):
        extract_features(make_encoder(), ds, prep, device="meta")
    enc = make_encoder().train()
    with pytest.raises(RuntimeError):  # the forward itself fails (conv on [B, D])
        extract_features(nn.Sequential(enc, nn.Conv2d(8, 2, 1)), ds, prep)
    assert enc.training  # restored even on error


def test_pixel_encoder_pools_large_inputs_only() -> None:
    small = torch.randn(2, 3, 32, 32)
    assert torch.equal(PixelEncoder(4096)(small), small.flatten(1))
    big = torch.randn(2, 13, 64, 64)
    out = PixelEncoder(4096)(big)
    assert out.shape == (2, 13 * 17 * 17)  # sqrt(4096 / 53248) * 64 = 17.7 -> 17
    torch.testing.assert_close(out, F.adaptive_avg_pool2d(big, 17).flatten(1))
    with pytest.raises(ConfigError):
        PixelEncoder(0)


def test_raw_pixel_baseline_on_digits() -> None:
    x, y = digits()
    train, test = TensorSet(x[:1400], y[:1400]), TensorSet(x[1400:], y[1400:])
    ftr, fte = raw_pixel_features(train, prep), raw_pixel_features(test, prep)
    assert ftr.shape == (1400, 64)
    torch.testing.assert_close(ftr, prep(x[:1400]).flatten(1))
    assert knn_accuracy(ftr, y[:1400], fte, y[1400:])["top1"] > 90.0


def test_evaluate_encoder_and_table() -> None:
    x, y = digits()
    train, test = TensorSet(x[:1000], y[:1000]), TensorSet(x[1000:1400], y[1000:1400])
    rows = {
        "random init": evaluate_encoder(make_encoder(), train, test, prep, knn_k=20),
        "raw pixels": evaluate_features(
            raw_pixel_features(train, prep),
            y[:1000],
            raw_pixel_features(test, prep),
            y[1000:1400],
            which=("knn",),
            knn_k=20,
        ),
    }
    enc_row, pix_row = rows["random init"], rows["raw pixels"]
    assert set(enc_row) >= {"knn_top1", "knn_top5", "linear_top1", "linear_top5", "linear_wd"}
    assert enc_row["dim"] == 32 and pix_row["dim"] == 64 and "linear_top1" not in pix_row
    assert enc_row["knn_top1"] > 50.0 and pix_row["knn_top1"] > 90.0
    table = format_table(rows).splitlines()
    assert table[0].split("  ")[0].strip() == "encoder"
    assert table[0].index("kNN top-1") < table[0].index("linear top-1")
    assert len(table) == 4 and len({len(line) for line in table[:2]}) == 1
    assert table[2].startswith("random init") and f"{enc_row['knn_top1']:.2f}" in table[2]
    assert table[3].split()[-1] == "-" or "-" in table[3].split()  # missing linear columns
    with pytest.raises(ConfigError, match="probes"):
        evaluate_features(torch.randn(4, 2), y[:4], torch.randn(4, 2), y[:4], which=("svm",))


def test_format_table_cells() -> None:
    text = format_table(
        {"a": {"knn_top1": 91.234, "extra": 0.000123, "flag": True}, "bb": {"knn_top1": math.nan}}
    )
    lines = text.splitlines()
    assert lines[0].split() == ["encoder", "kNN", "top-1", "extra", "flag"]
    assert lines[2].split() == ["a", "91.23", "0.000123", "yes"]
    assert lines[3].split() == ["bb", "-", "-", "-"]
