"""MAE's and SimMIM's reconstruction losses against loop references of the papers' formulas."""

from __future__ import annotations

import pytest
import torch

from selfsup.losses.reconstruction import mae_loss, simmim_loss
from selfsup.types import DataError


def _mae_loop(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              norm_pix: bool) -> float:
    """He et al. 2022 sec. 3: per masked patch, the mean squared error over its pixels against
    the (per-patch normalised) target; averaged over the masked patches."""
    total, count = 0.0, 0
    b, n, p = pred.shape
    for i in range(b):
        for j in range(n):
            if not mask[i, j]:
                continue
            t = [float(v) for v in target[i, j]]
            if norm_pix:
                mean = sum(t) / p
                var = sum((v - mean) ** 2 for v in t) / (p - 1)  # unbiased, as torch.var
                t = [(v - mean) / (var + 1e-6) ** 0.5 for v in t]
            total += sum((float(pred[i, j, k]) - t[k]) ** 2 for k in range(p)) / p
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_mae_loss_matches_loop_reference(norm_pix: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(3, 8, 12, generator=g), torch.randn(3, 8, 12, generator=g) * 2 + 1
    mask = torch.rand(3, 8, generator=g) < 0.6
    mask[0, 0] = True
    got = mae_loss(pred, target, mask, norm_pix)
    assert got.item() == pytest.approx(_mae_loop(pred, target, mask, norm_pix), rel=1e-5)


def test_mae_loss_ignores_visible_patches() -> None:
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    moved = pred.clone()
    moved[~mask] += 10.0  # predictions of visible patches do not count
    assert mae_loss(moved, target, mask).item() == pytest.approx(mae_loss(pred, target, mask).item())
    moved[mask] += 1.0
    assert mae_loss(moved, target, mask).item() != pytest.approx(mae_loss(pred, target, mask).item())


def test_mae_loss_errors() -> None:
    with pytest.raises(DataError, match="hides no patch"):
        mae_loss(torch.randn(1, 4, 3), torch.randn(1, 4, 3), torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(DataError, match="mask"):
        mae_loss(torch.randn(1, 4, 3), torch.randn(1, 4, 3), torch.ones(1, 5))


def test_simmim_loss_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    b, c, h, w = 2, 3, 4, 4
    pred, x = torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g)
    mask = (torch.rand(b, 1, h, w, generator=g) < 0.5).float()
    num, den = 0.0, 0.0
    for i in range(b):
        for r in range(h):
            for s in range(w):
                if mask[i, 0, r, s]:
                    den += 1  # each masked pixel once (Xie et al. 2022, sec. 3.3)
                    num += sum(abs(float(x[i, k, r, s] - pred[i, k, r, s])) for k in range(c))
    ref = num / (den + 1e-5) / c
    assert simmim_loss(pred, x, mask).item() == pytest.approx(ref, rel=1e-5)
    assert simmim_loss(pred, x, mask[:, 0]).item() == pytest.approx(ref, rel=1e-5)
