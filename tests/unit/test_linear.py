"""Linear probe: real data, separable data, the optimum of the convex objective, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from selfsup.eval.linear import linear_probe, stratified_split, train_linear
from selfsup.types import ConfigError, DataError


def digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, y = load_digits(return_X_y=True)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    return xt[tr], yt[tr], xt[te], yt[te]


def objective(w: Tensor, b: Tensor, x: Tensor, y: Tensor, lam: float) -> float:
    x, w, b = x.double(), w.double(), b.double()
    return float(F.cross_entropy(x @ w.t() + b, y) + 0.5 * lam * w.square().sum())


def test_digits_raw_pixels() -> None:
    r = linear_probe(*digits_split())
    assert r["top1"] > 90.0
    assert 100.0 >= r["top5"] >= r["top1"]
    assert r["weight_decay"] in (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
    assert 80.0 < r["val_top1"] <= 100.0


def test_linearly_separable_synthetic_data() -> None:
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(5, 20, generator=g) * 4
    y = torch.randint(0, 5, (1200,), generator=g)
    x = centers[y] + torch.randn(1200, 20, generator=g) * 0.5
    r = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], weight_decays=(0.0, 1e-4))
    assert r["top1"] == 100.0


def test_reaches_the_regularised_optimum_of_sklearn() -> None:
    # sklearn minimises sum CE + ||W||^2 / (2 C); with C = 1 / (lam n) that is n times ours
    x, y, _, _ = digits_split()
    x = (x - x.mean(0)) / x.std(0, correction=0).clamp_min(1e-6)
    lam = 1e-2
    layer = train_linear(x, y, 10, weight_decay=lam, max_iter=300)
    ref = LogisticRegression(C=1.0 / (lam * len(y)), max_iter=5000, tol=1e-10)
    ref.fit(x.numpy().astype(np.float64), y.numpy())
    w_ref, b_ref = torch.tensor(ref.coef_), torch.tensor(ref.intercept_)
    ours = objective(layer.weight, layer.bias, x, y, lam)
    theirs = objective(w_ref, b_ref, x, y, lam)
    assert ours <= theirs + 1e-4
    p_ours = torch.softmax(layer(x).double(), 1)
    p_ref = torch.tensor(ref.predict_proba(x.numpy().astype(np.float64)))
    assert (p_ours - p_ref).abs().max() < 1e-2


def test_weight_decay_shrinks_weights_and_chunking_is_exact() -> None:
    x, y, _, _ = digits_split()
    norms = [
        float(train_linear(x, y, 10, wd, max_iter=100).weight.norm()) for wd in (1e-4, 1e-2, 1)
    ]
    assert norms[0] > norms[1] > norms[2] > 0
    # strongly convex: chunked and whole-batch fits reach the same unique optimum
    xs = (x[:300] - x[:300].mean(0)) / x[:300].std(0).clamp_min(1e-6)
    a = train_linear(xs, y[:300], 10, 1e-1)
    b = train_linear(xs, y[:300], 10, 1e-1, chunk_size=7)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-3)
    assert not a.weight.requires_grad and not a.training


def test_deterministic_and_ignores_unlabeled_rows() -> None:
    xtr, ytr, xte, yte = digits_split()
    wds = (0.0, 1e-3)
    a = linear_probe(xtr, ytr, xte, yte, seed=5, weight_decays=wds)
    b = linear_probe(xtr, ytr, xte, yte, seed=5, weight_decays=wds)
    assert a == b
    noise = torch.randn(200, xtr.shape[1]) * 100  # unlabeled rows with wild features
    xtr2, ytr2 = torch.cat([xtr, noise]), torch.cat([ytr, torch.full((200,), -1)])
    c = linear_probe(xtr2, ytr2, xte, yte, seed=5, weight_decays=wds)
    assert c == a
    with torch.inference_mode():  # callers may evaluate under inference mode
        d = linear_probe(xtr * 1.0, ytr, xte * 1.0, yte, seed=5, weight_decays=wds)
    assert d == a


def test_single_weight_decay_skips_search() -> None:
    xtr, ytr, xte, yte = digits_split()
    r = linear_probe(xtr, ytr, xte, yte, weight_decays=(1e-3,))
    assert r["weight_decay"] == 1e-3 and r["val_top1"] != r["val_top1"]  # NaN: no search


def test_stratified_split() -> None:
    y = torch.tensor([0] * 50 + [1] * 10 + [2] * 1)
    fit, held = stratified_split(y, 0.2, seed=0)
    assert torch.equal(torch.cat([fit, held]).sort().values, torch.arange(61))
    assert int((y[held] == 0).sum()) == 10 and int((y[held] == 1).sum()) == 2
    assert int((y[held] == 2).sum()) == 0  # a singleton class stays in the fit part
    fit2, held2 = stratified_split(y, 0.2, seed=0)
    assert torch.equal(held, held2)
    assert not torch.equal(held, stratified_split(y, 0.2, seed=1)[1])


def test_bad_input_raises() -> None:
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    with pytest.raises(DataError, match="dimension"):
        linear_probe(x, y, torch.randn(5, 3), y[:5])
    with pytest.raises(DataError, match="labels"):
        linear_probe(x, y[:10], x, y)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        linear_probe(bad, y, x, y)
    with pytest.raises(DataError, match="labeled"):
        linear_probe(x, torch.full((20,), -1), x, y)
    with pytest.raises(DataError, match="out of range"):
        linear_probe(x, y, x, y, num_classes=2)
    with pytest.raises(ConfigError, match="weight_decays"):
        linear_probe(x, y, x, y, weight_decays=())
    with pytest.raises(ConfigError, match="weight_decays"):
        linear_probe(x, y, x, y, weight_decays=(-1.0,))
    with pytest.raises(ConfigError, match="val_fraction"):
        linear_probe(x, y, x, y, val_fraction=1.0)
    with pytest.raises(ConfigError, match="max_iter"):
        linear_probe(x, y, x, y, max_iter=0)
