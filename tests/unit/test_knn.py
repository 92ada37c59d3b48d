"""Weighted kNN (InstDisc sec. 3.4): against a plain per-sample loop, closed forms, real data."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from selfsup.eval.features import extract_features
from selfsup.eval.knn import OnlineKNN, knn_accuracy, knn_predict, topk_accuracy
from selfsup.types import ConfigError, DataError


def reference_scores(
    train_f: Tensor, train_y: Tensor, test_f: Tensor, num_classes: int, k: int, t: float
) -> Tensor:
    """One test sample at a time, in float64: sort all cosine similarities, vote exp(s/T)."""
    keep = train_y >= 0
    bank = train_f[keep].double()
    labels = train_y[keep].tolist()
    out = torch.zeros(test_f.shape[0], num_classes, dtype=torch.float64)
    for j in range(test_f.shape[0]):
        q = test_f[j].double()
        sims = [float(q @ b / (q.norm() * b.norm())) for b in bank]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[: min(k, len(sims))]
        for i in order:
            out[j, labels[i]] += math.exp(sims[i] / t)
    return out


def digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, y = load_digits(return_X_y=True)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    return xt[tr], yt[tr], xt[te], yt[te]


@pytest.mark.parametrize("k", [1, 5, 40, 1000])
@pytest.mark.parametrize("t", [0.07, 0.1, 0.5])
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_matches_loop_reference(k: int, t: float, chunk: int | None) -> None:
    g = torch.Generator().manual_seed(k * 100 + int(t * 100))
    train_f, test_f = torch.randn(60, 8, generator=g) * 3, torch.randn(13, 8, generator=g)
    train_y = torch.randint(0, 4, (60,), generator=g)
    train_y[::5] = -1  # unlabeled rows never vote
    got = knn_predict(train_f, train_y, test_f, 4, k=k, temperature=t, chunk_size=chunk)
    want = reference_scores(train_f, train_y, test_f, 4, k, t)
    assert got.shape == (13, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_accuracy_matches_reference_ranking() -> None:
    g = torch.Generator().manual_seed(1)
    train_f, test_f = torch.randn(200, 6, generator=g), torch.randn(50, 6, generator=g)
    train_y, test_y = (
        torch.randint(0, 7, (200,), generator=g),
        torch.randint(0, 7, (50,), generator=g),
    )
    want = reference_scores(train_f, train_y, test_f, 7, 20, 0.1)
    top5 = want.topk(5, dim=1).indices
    acc = knn_accuracy(train_f, train_y, test_f, test_y, num_classes=7, k=20)
    assert acc["top1"] == pytest.approx(100 * float((top5[:, 0] == test_y).double().mean()))
    assert acc["top5"] == pytest.approx(
        100 * float((top5 == test_y[:, None]).any(1).double().mean())
    )


def test_nearest_neighbour_closed_forms() -> None:
    g = torch.Generator().manual_seed(2)
    f = torch.randn(30, 5, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    # with k = 1 every training point is its own nearest neighbour
    assert knn_accuracy(f, y, f, y, k=1)["top1"] == 100.0
    # a single vote of weight exp(1 / T) for the point's own class
    scores = knn_predict(f, y, f, 3, k=1, temperature=0.5)
    torch.testing.assert_close(scores.max(dim=1).values, torch.full((30,), math.exp(2.0)))
    # every labeled neighbour votes once k exceeds the train size: k is clamped
    torch.testing.assert_close(
        knn_predict(f, y, f[:4], 3, k=500), knn_predict(f, y, f[:4], 3, k=30)
    )


def test_scale_invariant_and_unlabeled_test_rows_skipped() -> None:
    train_f, train_y, test_f, test_y = digits_split()
    a = knn_accuracy(train_f, train_y, test_f, test_y)
    b = knn_accuracy(train_f * 7.0, train_y, test_f * 0.01, test_y)
    assert a == b
    test_y2 = test_y.clone()
    test_y2[:100] = -1
    c = knn_accuracy(train_f, train_y, test_f, test_y2)
    d = knn_accuracy(train_f, train_y, test_f[100:], test_y[100:])
    assert c == d


def test_digits_raw_pixels_are_classified_well() -> None:
    train_f, train_y, test_f, test_y = digits_split()
    acc = knn_accuracy(train_f, train_y, test_f, test_y)  # k = 200, T = 0.1
    assert acc["top1"] > 90.0
    assert acc["top5"] >= acc["top1"]
    assert knn_accuracy(train_f, train_y, test_f, test_y, k=5)["top1"] > 96.0
    # random features carry no information: chance level (10 %) within noise
    noise = torch.randn(train_f.shape[0], 64, generator=torch.Generator().manual_seed(0))
    rand = knn_accuracy(noise, train_y, torch.randn(test_f.shape[0], 64), test_y)
    assert rand["top1"] < 25.0


def test_topk_accuracy_clamps_k_to_classes() -> None:
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    acc = topk_accuracy(scores, torch.tensor([1, 1, 1]))
    assert acc["top1"] == pytest.approx(200 / 3) and acc["top5"] == 100.0


def test_bad_input_raises() -> None:
    f, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    with pytest.raises(DataError, match="no labeled train"):
        knn_predict(f, torch.full((10,), -1), f, 3)
    with pytest.raises(DataError, match="dimension"):
        knn_predict(f, y, torch.randn(5, 6), 3)
    with pytest.raises(DataError, match="labels"):
        knn_predict(f, y[:9], f, 3)
    with pytest.raises(ConfigError, match="k must be"):
        knn_predict(f, y, f, 3, k=0)
    with pytest.raises(ConfigError, match="temperature"):
        knn_predict(f, y, f, 3, temperature=0.0)
    with pytest.raises(DataError, match="out of range"):
        knn_predict(f, y, f, 2)
    with pytest.raises(DataError, match="no labeled test"):
        knn_accuracy(f, y, f, torch.full((10,), -1))
    with pytest.raises(DataError, match="out of range"):
        knn_accuracy(f, y, f, torch.full((10,), 5), num_classes=3)


class TensorSet:
    """A minimal in-memory batch source: raw images [N, C, H, W] with labels [N]."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y, self.num_classes = x, y, int(y.max()) + 1

    def __len__(self) -> int:
        return len(self.y)

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


def test_online_knn_matches_offline_pipeline() -> None:
    x, y = load_digits(return_X_y=True)
    imgs = torch.tensor(x, dtype=torch.uint8).reshape(-1, 1, 8, 8)
    labels = torch.tensor(y)
    train, val = (
        TensorSet(imgs[:1000], labels[:1000]),
        TensorSet(imgs[1000:1300], labels[1000:1300]),
    )
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten())
    enc.train()

    def prep(r: Tensor) -> Tensor:
        return r.float() / 16.0

    monitor = OnlineKNN(train, val, prep, k=20, t=0.1, batch_size=128)
    acc = monitor(enc)
    assert enc.training  # mode restored for the training loop
    ftr, ytr = extract_features(enc, train, prep)
    fva, yva = extract_features(enc, val, prep)
    assert acc == knn_accuracy(ftr, ytr, fva, yva, num_classes=10, k=20)
    assert acc["top1"] > 80.0  # random conv features of digits are already informative
