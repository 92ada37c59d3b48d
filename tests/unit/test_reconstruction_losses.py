"""MAE's and SimMIM's reconstruction losses against loop references of the papers' formulas."""

from __future__ import annotations

import pytest
import torch

from selfsup.losses.reconstruction import (
    deep_supervision_loss,
    local_pixel_targets,
    localmim_loss,
    mae_loss,
    multiscale_masks,
    simmim_loss,
)
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


# --- DeepMIM and LocalMIM ----------------------------------------------------------------------

def test_deep_supervision_loss_is_the_weighted_sum_of_per_layer_mae_losses() -> None:
    """Ren et al. 2023 sec. 3: L = sum_l w_l L_MAE(pred_l); every layer sees the same target and
    mask (a loop over layers of the MAE loop reference)."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 6, 5, generator=g)
    preds = [torch.randn(2, 6, 5, generator=g) for _ in range(3)]
    mask = torch.rand(2, 6, generator=g) < 0.5
    mask[0, 0] = True
    total, parts = deep_supervision_loss(preds, target, mask, [1.0, 0.5, 2.0])
    ref = [_mae_loop(p, target, mask, True) for p in preds]
    assert [x.item() for x in parts] == pytest.approx(ref, rel=1e-5)
    assert total.item() == pytest.approx(ref[0] + 0.5 * ref[1] + 2.0 * ref[2], rel=1e-5)
    plain, _ = deep_supervision_loss(preds, target, mask)  # default: weights all 1
    assert plain.item() == pytest.approx(sum(ref), rel=1e-5)
    with pytest.raises(DataError, match="one weight per prediction"):
        deep_supervision_loss(preds, target, mask, [1.0])


def _scale_mask_loop(mask: torch.Tensor, grid: int, s: float) -> torch.Tensor:
    """LocalMIM recal_mask by loops: s >= 1: region (I, J) takes patch (I // s, J // s)'s mask;
    s < 1: region (I, J) averages the k x k patches it covers (k = 1 / s)."""
    b = mask.shape[0]
    side = int(grid * s)
    out = torch.zeros(b, side * side)
    for i in range(b):
        for r in range(side):
            for c in range(side):
                if s >= 1:
                    k = int(s)
                    out[i, r * side + c] = float(mask[i, (r // k) * grid + c // k])
                else:
                    k = int(round(1 / s))
                    vals = [float(mask[i, (r * k + u) * grid + c * k + v])
                            for u in range(k) for v in range(k)]
                    out[i, r * side + c] = sum(vals) / len(vals)
    return out


def test_multiscale_masks_match_loop_reference() -> None:
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(2, 16, generator=g) < 0.6
    scales = [4.0, 2.0, 1.0, 0.5]
    got = multiscale_masks(mask, 4, scales)
    assert [tuple(m.shape) for m in got] == [(2, 256), (2, 64), (2, 16), (2, 4)]
    for m, s in zip(got, scales, strict=True):
        torch.testing.assert_close(m, _scale_mask_loop(mask, 4, s))
    with pytest.raises(DataError, match="scale 0.5"):
        multiscale_masks(torch.zeros(1, 9), 3, [0.5])  # odd grid cannot halve
    with pytest.raises(DataError, match="scale 3"):
        multiscale_masks(torch.zeros(1, 16), 4, [3.5])


def test_local_pixel_targets_normalise_each_region_by_its_own_statistics() -> None:
    """Wang et al. 2023 sec. 3.2: a region's pixels minus the region's mean over the square root
    of its (unbiased) variance; regions row-major, (row, col, channel) inside a region."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g) * 3 + 1
    got = local_pixel_targets(x, 2)  # [B, 16, 12]
    assert got.shape == (2, 16, 12)
    for b in range(2):
        for r in range(4):
            for c in range(4):
                vals = [float(x[b, ch, 2 * r + u, 2 * c + v])
                        for u in range(2) for v in range(2) for ch in range(3)]
                mean = sum(vals) / 12
                var = sum((v - mean) ** 2 for v in vals) / 11
                ref = torch.tensor([(v - mean) / (var + 1e-6) ** 0.5 for v in vals])
                torch.testing.assert_close(got[b, r * 4 + c], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="at least 2 values"):
        local_pixel_targets(torch.randn(1, 1, 4, 4), 1)  # a one-pixel grey region


def test_localmim_loss_matches_loop_reference_and_ignores_unmasked_regions() -> None:
    """sum_l w_l sum_i M_l,i mean_d (p - t)^2 / sum_i M_l,i, by loops."""
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(2, 16, generator=g) < 0.7
    mask[0, 0] = True
    masks = multiscale_masks(mask, 4, [2.0, 1.0, 0.5])
    dims = [3, 5, 7]
    preds = [torch.randn(2, m.shape[1], d, generator=g) for m, d in zip(masks, dims, strict=True)]
    targets = [torch.randn_like(p) for p in preds]
    weights = [1.0, 0.3, 2.0]
    total, parts = localmim_loss(preds, targets, masks, weights)
    ref_total = 0.0
    for p, t, m, w, part in zip(preds, targets, masks, weights, parts, strict=True):
        num = den = 0.0
        for b in range(p.shape[0]):
            for i in range(p.shape[1]):
                err = sum((float(p[b, i, k]) - float(t[b, i, k])) ** 2
                          for k in range(p.shape[2])) / p.shape[2]
                num += err * float(m[b, i])
                den += float(m[b, i])
        assert part.item() == pytest.approx(num / den, rel=1e-5)
        ref_total += w * num / den
    assert total.item() == pytest.approx(ref_total, rel=1e-5)
    moved = [p.clone() for p in preds]
    for p, m in zip(moved, masks, strict=True):
        p[m == 0] += 10.0  # fully visible regions do not count
    assert localmim_loss(moved, targets, masks, weights)[0].item() == pytest.approx(
        total.item(), rel=1e-5)
    with pytest.raises(DataError, match="hides no region"):
        localmim_loss(preds[:1], targets[:1], [torch.zeros_like(masks[0])])
