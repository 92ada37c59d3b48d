"""The InfoNCE family (info_nce, debiased, hard-negative, FlatNCE, alignment/uniformity) against
plain-loop transcriptions of the papers' formulas over a grid of settings, closed forms, the
relations between the losses, input checks and the gather path on 2 gloo processes."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from selfsup.eval import collapse
from selfsup.losses.contrastive import InfoNCELoss, info_nce, nt_xent, two_view_masks
from selfsup.losses.contrastive_variants import (
    AlignUniformLoss,
    DebiasedContrastiveLoss,
    FlatNCELoss,
    HardNegativeLoss,
    align_uniform_loss,
    alignment_loss,
    debiased_info_nce,
    flat_nce,
    hard_negative_info_nce,
    uniformity_loss,
)
from selfsup.types import ConfigError, DataError

Tensor = torch.Tensor


def _sim(u: Tensor, v: Tensor, normalize: bool) -> Tensor:
    return u @ v / (u.norm() * v.norm()) if normalize else u @ v


def _ref_info_nce(a, c, pos, t, neg=None, self_mask=None, normalize=True) -> Tensor:
    """SupCon L_out / InfoNCE (Oord eq. 4) with explicit loops."""
    n, m = pos.shape
    negs = [] if neg is None else list(neg)
    total = 0.0
    for i in range(n):
        denom = sum(torch.exp(_sim(a[i], c[j], normalize) / t) for j in range(m)
                    if self_mask is None or not self_mask[i, j])
        denom = denom + sum(torch.exp(_sim(a[i], k, normalize) / t) for k in negs)
        ps = [j for j in range(m) if pos[i, j]]
        total = total + sum(-torch.log(torch.exp(_sim(a[i], c[p], normalize) / t) / denom)
                            for p in ps) / len(ps)
    return total / n


def _ref_debiased(a, c, pos, t, tau, beta, neg=None, self_mask=None) -> Tensor:
    """Chuang et al. 2020 L_Debiased with Robinson et al. 2021's reweighting, with loops
    (as the reference code: Ng = (R - tau N e_pos) / (1 - tau) clamped at N e^{-1/t})."""
    n, m = pos.shape
    total = 0.0
    for i in range(n):
        ens = [torch.exp(_sim(a[i], c[j], True) / t) for j in range(m)
               if not pos[i, j] and (self_mask is None or not self_mask[i, j])]
        ens += [torch.exp(_sim(a[i], k, True) / t) for k in ([] if neg is None else neg)]
        big_n = len(ens)
        imp = [e**beta for e in ens]
        r = sum(w * e for w, e in zip(imp, ens)) / (sum(imp) / big_n)
        eps = [torch.exp(_sim(a[i], c[j], True) / t) for j in range(m) if pos[i, j]]
        pos_mean = sum(eps) / len(eps)
        ng = (r - tau * big_n * pos_mean) / (1 - tau)
        ng = torch.clamp(ng, min=big_n * math.exp(-1 / t))
        total = total + sum(-torch.log(e / (e + ng)) for e in eps) / len(eps)
    return total / n


def _inputs(seed: int, n: int, m: int, k: int, dim: int = 6, multi: bool = False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(m, dim, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(k, dim, generator=g, dtype=torch.float64) if k else None
    pos = torch.zeros(n, m, dtype=torch.bool)
    pos[torch.arange(n), torch.arange(n) % m] = True
    if multi:
        pos |= torch.rand(n, m, generator=g) < 0.3
    self_mask = torch.zeros(n, m, dtype=torch.bool)
    self_mask[torch.arange(n), (torch.arange(n) + 1) % m] = True
    self_mask &= ~pos
    if m < 3:
        self_mask[:] = False
    return a, c, pos, neg, self_mask


# ------------------------------------------------------------------ info_nce


@pytest.mark.parametrize("n,m,k", [(1, 2, 0), (3, 5, 0), (4, 4, 3), (5, 7, 6)])
@pytest.mark.parametrize("t", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("multi", [False, True])
def test_info_nce_matches_reference(n: int, m: int, k: int, t: float, multi: bool) -> None:
    a, c, pos, neg, self_mask = _inputs(n * 10 + m + k, n, m, k, multi=multi)
    loss = info_nce(a, c, pos, t, negatives=neg, self_mask=self_mask)
    ref = _ref_info_nce(a, c, pos, t, neg, self_mask)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    for g1, g2 in zip(torch.autograd.grad(loss, (a, c)), torch.autograd.grad(ref, (a, c))):
        torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)


def test_info_nce_without_normalisation_and_module() -> None:
    a, c, pos, neg, self_mask = _inputs(3, 4, 6, 2)
    a, c = 0.3 * a.detach(), 0.3 * c.detach()
    loss = info_nce(a, c, pos, 0.5, negatives=neg, normalize=False)
    assert loss.item() == pytest.approx(_ref_info_nce(a, c, pos, 0.5, neg, None, False).item())
    module = InfoNCELoss(0.5, normalize=False)
    assert module(a, c, pos, neg).item() == pytest.approx(loss.item(), rel=1e-12)
    with pytest.raises(ConfigError):
        InfoNCELoss(0.0)


@pytest.mark.parametrize("n", [1, 2, 6])
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_is_info_nce_with_simclr_masks(n: int, t: float) -> None:
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(2, n, 8, generator=g, dtype=torch.float64)
    z = torch.cat([z1, z2])
    pos, self_mask = two_view_masks(n)
    assert info_nce(z, z, pos, t, self_mask=self_mask).item() == pytest.approx(
        nt_xent(z1, z2, t).item(), rel=1e-12)


@pytest.mark.parametrize("k", [1, 5, 40])
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_closed_forms_identical_views(k: int, t: float) -> None:
    # MoCo setup: query == key (cosine 1), K queue negatives orthogonal to every query (cosine 0)
    # -> -log(e^{1/t} / (e^{1/t} + K)); equal similarities (t -> inf) -> -log(1 / (K + 1)).
    q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    n = 3
    queries, queue = q[:n], q[n : n + k]
    pos = torch.eye(n, dtype=torch.bool)
    # keys are identical views; the other keys are orthogonal negatives too: K + n - 1 of them
    loss = info_nce(queries, queries.clone(), pos, t, negatives=queue)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + k + n - 1))
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    flat_limit = info_nce(torch.randn(n, 8), torch.randn(n, 8), pos, 1e8,
                          negatives=torch.randn(k, 8))
    assert flat_limit.item() == pytest.approx(-math.log(1 / (k + n)), rel=1e-6)


def test_info_nce_bad_input() -> None:
    a, c, pos, _, _ = _inputs(0, 3, 4, 0)
    with pytest.raises(DataError, match="positive"):
        info_nce(a, c, torch.zeros_like(pos))
    with pytest.raises(DataError, match="positive"):
        info_nce(a, c, pos, self_mask=pos.clone())  # the only positive is masked as self
    with pytest.raises(DataError, match="positive_mask"):
        info_nce(a, c, pos.float())
    with pytest.raises(DataError, match="equal D"):
        info_nce(a, c[:, :3], pos)
    with pytest.raises(DataError, match="negatives"):
        info_nce(a, c, pos, negatives=torch.randn(2, 5))
    with pytest.raises(ConfigError, match="temperature"):
        info_nce(a, c, pos, -1.0)


def test_info_nce_half_precision_is_finite() -> None:
    a, c, pos, neg, _ = _inputs(1, 4, 4, 8)
    loss = info_nce(a.detach().bfloat16(), c.detach().bfloat16(), pos, 0.07,
                    negatives=neg.bfloat16())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ------------------------------------------------------------------ debiased / hard negatives


@pytest.mark.parametrize("n,m,k", [(2, 3, 0), (4, 6, 5)])
@pytest.mark.parametrize("t", [0.1, 0.5])
@pytest.mark.parametrize("tau", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("multi", [False, True])
def test_debiased_and_hard_match_reference(n, m, k, t, tau, beta, multi) -> None:
    a, c, pos, neg, self_mask = _inputs(n + m * 7 + k, n, m, k, multi=multi)
    loss = hard_negative_info_nce(a, c, pos, t, beta=beta, tau_plus=tau, negatives=neg,
                                  self_mask=self_mask)
    ref = _ref_debiased(a, c, pos, t, tau, beta, neg, self_mask)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    for g1, g2 in zip(torch.autograd.grad(loss, (a, c)), torch.autograd.grad(ref, (a, c))):
        torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_debiased_reductions(seed: int) -> None:
    a, c, pos, neg, self_mask = _inputs(seed, 5, 5, 4)
    plain = info_nce(a, c, pos, 0.3, negatives=neg, self_mask=self_mask)
    debiased0 = debiased_info_nce(a, c, pos, 0.3, tau_plus=0.0, negatives=neg, self_mask=self_mask)
    assert debiased0.item() == pytest.approx(plain.item(), rel=1e-10)  # tau+ = 0: plain InfoNCE
    for tau in (0.0, 0.2):
        d = debiased_info_nce(a, c, pos, 0.3, tau_plus=tau, negatives=neg, self_mask=self_mask)
        h = hard_negative_info_nce(a, c, pos, 0.3, beta=0.0, tau_plus=tau, negatives=neg,
                                   self_mask=self_mask)
        assert h.item() == pytest.approx(d.item(), rel=1e-12)  # beta = 0: debiased
    # an anchor whose positive is closer than its average negative: the debiased estimate of
    # the negative term is smaller (Ng = (R - tau+ N e_p) / (1 - tau+) < R), so is the loss
    x = a[:1].detach()
    cands = torch.cat([x, c[1:].detach()])
    one = pos[:1] & ~self_mask[:1]
    d0 = debiased_info_nce(x, cands, one, 0.3, tau_plus=0.0, negatives=neg)
    d1 = debiased_info_nce(x, cands, one, 0.3, tau_plus=0.1, negatives=neg)
    assert d1.item() < d0.item()


@pytest.mark.parametrize("t", [0.2, 0.5])
def test_debiased_clamp_closed_form(t: float) -> None:
    # identical views, orthogonal samples: e_pos = e^{1/t}, the N = 2n - 2 negatives e^0 = 1;
    # with a large tau+ the estimate N(1 - tau+ e^{1/t}) / (1 - tau+) < N e^{-1/t}: the clamp holds
    n = 4
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    z = torch.cat([q[:n], q[:n]])
    pos, self_mask = two_view_masks(n)
    big_n = 2 * n - 2
    loss = debiased_info_nce(z, z, pos, t, tau_plus=0.9, self_mask=self_mask)
    e = math.exp(1 / t)
    assert loss.item() == pytest.approx(-math.log(e / (e + big_n * math.exp(-1 / t))), rel=1e-10)
    # equal negative similarities: the hardness weights are uniform, beta changes nothing
    for beta in (0.5, 3.0):
        hard = hard_negative_info_nce(z, z, pos, t, beta=beta, tau_plus=0.0, self_mask=self_mask)
        assert hard.item() == pytest.approx(-math.log(e / (e + big_n)), rel=1e-10)


def test_hard_negatives_concentrate_on_the_hardest() -> None:
    # beta -> inf: R -> N max_n e_n (all weight on the hardest negative)
    a, c, pos, neg, _ = _inputs(5, 1, 6, 0)
    t, beta = 0.5, 400.0
    loss = hard_negative_info_nce(a, c, pos, t, beta=beta, tau_plus=0.0)
    s = torch.nn.functional.cosine_similarity(a[0:1], c, dim=1).detach() / t
    e_pos, e_max = math.exp(s[0]), math.exp(s[1:].max())
    assert loss.item() == pytest.approx(-math.log(e_pos / (e_pos + 5 * e_max)), rel=1e-4)


def test_debiased_is_stable_at_tiny_temperature() -> None:
    a, c, pos, neg, self_mask = _inputs(2, 4, 4, 6)
    loss = hard_negative_info_nce(a, c, pos, 0.01, negatives=neg, self_mask=self_mask)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, (a, c)))


def test_debiased_bad_config() -> None:
    a, c, pos, _, _ = _inputs(0, 2, 2, 0)
    with pytest.raises(ConfigError, match="tau_plus"):
        debiased_info_nce(a, c, pos, tau_plus=1.0)
    with pytest.raises(ConfigError, match="beta"):
        hard_negative_info_nce(a, c, pos, beta=-1.0)
    with pytest.raises(DataError, match="negative"):
        debiased_info_nce(a, c, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ConfigError):
        DebiasedContrastiveLoss(tau_plus=-0.1)
    with pytest.raises(ConfigError):
        HardNegativeLoss(beta=-2.0)
    module = HardNegativeLoss(0.5, beta=1.0, tau_plus=0.1)
    assert module(a, c, pos).item() == pytest.approx(
        hard_negative_info_nce(a, c, pos, 0.5).item(), rel=1e-12)
    assert "beta=1.0" in repr(module)


# ------------------------------------------------------------------ FlatNCE


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("k", [0, 4])
def test_flat_nce_value_and_gradient_direction(t: float, k: int) -> None:
    # keys detached (MoCo-style): the gradient w.r.t. anchor i comes from loss term i only
    a, c, pos, neg, self_mask = _inputs(int(t * 10) + k, 5, 6, k)
    c = c.detach()
    flat = flat_nce(a, c, pos, t, negatives=neg, self_mask=self_mask)
    info = info_nce(a, c, pos, t, negatives=neg, self_mask=self_mask)
    assert flat.item() == pytest.approx(info.item(), rel=1e-12)  # value: detached InfoNCE
    (g_flat,) = torch.autograd.grad(flat, a)
    (g_info,) = torch.autograd.grad(info, a)
    cos = torch.nn.functional.cosine_similarity(g_flat, g_info, dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-10)
    # scale: per anchor, grad_info = (1 - q_pos) grad_flat with q_pos the positive's softmax prob
    with torch.no_grad():
        logits = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(c, dim=1).T
        full = logits.masked_fill(self_mask, float("-inf"))
        if neg is not None:
            extra = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(neg).T
            full = torch.cat([full, extra], dim=1)
        q_pos = torch.softmax(full / t, dim=1)[:, : pos.shape[1]][pos]
    torch.testing.assert_close(g_info, (1 - q_pos)[:, None] * g_flat, rtol=1e-8, atol=1e-12)


def test_flat_nce_module() -> None:
    a, c, pos, _, _ = _inputs(1, 3, 4, 0)
    assert FlatNCELoss(0.2)(a, c, pos).item() == pytest.approx(flat_nce(a, c, pos, 0.2).item())
    with pytest.raises(ConfigError):
        FlatNCELoss(0.0)


# ------------------------------------------------------------------ alignment / uniformity


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_align_uniform_match_reference_and_eval_metrics(alpha: float, t: float) -> None:
    g = torch.Generator().manual_seed(int(alpha * 10 + t))
    z1, z2 = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    u1 = torch.nn.functional.normalize(z1, dim=1)
    u2 = torch.nn.functional.normalize(z2, dim=1)
    ref_align = sum((u1[i] - u2[i]).norm() ** alpha for i in range(7)) / 7
    pairs = [(i, j) for i in range(7) for j in range(7) if i != j]
    ref_unif = torch.log(sum(torch.exp(-t * (u1[i] - u1[j]).norm() ** 2) for i, j in pairs)
                         / len(pairs))
    assert alignment_loss(z1, z2, alpha).item() == pytest.approx(ref_align.item(), rel=1e-10)
    assert uniformity_loss(z1, t).item() == pytest.approx(ref_unif.item(), rel=1e-10)
    # the same math as the evaluation metrics of eval/collapse.py
    assert alignment_loss(z1, z2, alpha).item() == pytest.approx(
        collapse.alignment(z1, z2, alpha), rel=1e-10)
    assert uniformity_loss(z1, t).item() == pytest.approx(collapse.uniformity(z1, t), rel=1e-10)
    both = align_uniform_loss(z1, z2, alpha=alpha, t=t, align_weight=0.5, uniform_weight=2.0)
    expected = 0.5 * ref_align + 2.0 * (ref_unif + uniformity_loss(z2, t)) / 2
    assert both.item() == pytest.approx(expected.item(), rel=1e-10)
    module = AlignUniformLoss(alpha, t, 0.5, 2.0)
    assert module(z1, z2).item() == pytest.approx(both.item(), rel=1e-12)


def test_align_uniform_closed_forms_and_gradients() -> None:
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    # identical pairs: alignment 0 with finite gradients even for alpha < 2
    for alpha in (1.0, 2.0):
        loss = alignment_loss(z, z.detach().clone(), alpha)
        assert loss.item() == pytest.approx(0.0, abs=1e-5)
        assert torch.isfinite(torch.autograd.grad(loss, z)[0]).all()
    # collapsed embeddings: uniformity is 0 (its maximum); antipodal pair: log e^{-4t}
    same = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
    assert uniformity_loss(same).item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(torch.autograd.grad(uniformity_loss(same), same)[0]).all()
    pair = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert uniformity_loss(pair, 2.0).item() == pytest.approx(-8.0, rel=1e-12)


def test_align_uniform_bad_input() -> None:
    with pytest.raises(DataError):
        alignment_loss(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(DataError):
        uniformity_loss(torch.randn(1, 3))
    with pytest.raises(ConfigError):
        uniformity_loss(torch.randn(3, 3), t=0.0)
    with pytest.raises(ConfigError):
        AlignUniformLoss(alpha=0.0)


# ------------------------------------------------------------------ gather on 2 gloo processes

WORLD, B = 2, 3


def _dist_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                             world_size=WORLD)
    try:
        g = torch.Generator().manual_seed(0)
        z1, z2 = torch.randn(2, WORLD * B, 4, generator=g, dtype=torch.float64)
        local = slice(rank * B, (rank + 1) * B)
        a = torch.cat([z1[local], z2[local]])
        pos, self_mask = two_view_masks(B)
        losses = {
            "info": info_nce(a, a, pos, 0.3, self_mask=self_mask, gather=True),
            "debiased": debiased_info_nce(a, a, pos, 0.3, self_mask=self_mask, gather=True),
            "flat": flat_nce(a, a, pos, 0.3, self_mask=self_mask, gather=True),
            "uniform": uniformity_loss(a, gather=True),
            "nt_xent": nt_xent(z1[local], z2[local], 0.3, gather=True),
        }
        torch.save({k: v.item() for k, v in losses.items()}, Path(out_dir) / f"{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_gather_equals_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, WORLD * B, 4, generator=g, dtype=torch.float64)
    # one process, rows ordered rank by rank as the gather orders them
    rows = [torch.cat([z1[r * B : (r + 1) * B], z2[r * B : (r + 1) * B]]) for r in range(WORLD)]
    z = torch.cat(rows)
    pos = torch.block_diag(*[two_view_masks(B)[0]] * WORLD)
    self_mask = torch.eye(2 * B * WORLD, dtype=torch.bool)
    whole = {
        "info": info_nce(z, z, pos, 0.3, self_mask=self_mask),
        "debiased": debiased_info_nce(z, z, pos, 0.3, self_mask=self_mask),
        "flat": flat_nce(z, z, pos, 0.3, self_mask=self_mask),
        "nt_xent": nt_xent(z1, z2, 0.3),
    }
    for key, value in whole.items():
        mean = sum(r[key] for r in ranks) / WORLD  # each rank averages over its own anchors
        assert mean == pytest.approx(value.item(), rel=1e-10), key
    # uniformity: each rank's log-mean over (its rows, every other row of the global batch)
    sq = torch.cdist(torch.nn.functional.normalize(z, dim=1),
                     torch.nn.functional.normalize(z, dim=1)).pow(2)
    for r in range(WORLD):
        block = slice(r * 2 * B, (r + 1) * 2 * B)
        kernel = torch.exp(-2.0 * sq[block]).masked_fill(self_mask[block], 0.0)
        expected = torch.log(kernel.sum() / (2 * B * (2 * B * WORLD - 1)))
        assert ranks[r]["uniform"] == pytest.approx(expected.item(), rel=1e-10)


# ------------------------------------------------------------------ SimCLR v2


def _simclr_v2(**kw):
    from selfsup.methods.base import build_method
    from selfsup.nn.backbones import create_backbone

    torch.manual_seed(0)
    return build_method("simclr_v2", create_backbone("small_cnn", 1, 16, width=4), **kw)


def test_simclr_v2_defaults_loss_and_middle_layer_encoder() -> None:
    m = _simclr_v2()
    assert m.cfg.temperature == 0.1 and m.criterion.temperature == 0.1
    assert sum(isinstance(x, torch.nn.Linear) for x in m.projector) == 3
    assert m.projector[0].out_features == 2048 and m.projector[-2].out_features == 128
    assert type(m).default_optim["lr"] == 1.6 and type(m).default_optim["lr_scaling"] == "sqrt"
    small = _simclr_v2(proj_hidden_dim=24, proj_out_dim=8)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, 6, 1, 16, 16, generator=g)
    from selfsup.types import Batch

    small.train().training_step(Batch(views=[x1, x2], index=torch.arange(6)))
    small.eval()
    with torch.no_grad():
        out = small.training_step(Batch(views=[x1, x2], index=torch.arange(6)))
        z1, z2 = small.projector(small.backbone(x1)), small.projector(small.backbone(x2))
        torch.testing.assert_close(out.loss, nt_xent(z1, z2, 0.1))
        enc = small.encoder_with_head()  # sec. 2.1: backbone + first head layer
        h = small.backbone(x1)
        expected = torch.relu(small.projector[1](small.projector[0](h)))
        torch.testing.assert_close(enc(x1), expected)
        assert enc.num_features == 24 and enc.in_chans == 1
        torch.testing.assert_close(small.encoder_with_head(0)(x1), h)
        assert small.encoder_with_head(2)(x1).shape == (6, 24)
        small.projector[0].weight.mul_(2.0)  # parameters are shared, not copied
        assert not torch.allclose(enc(x1), expected)
    assert small.encoder() is small.backbone
    with pytest.raises(ConfigError, match="head layers"):
        small.encoder_with_head(3)
    with pytest.raises(ConfigError, match="finetune_layers"):
        _simclr_v2(finetune_layers=3)


# ------------------------------------------------------------------ SimCLR


def _simclr(**kw):
    from selfsup.methods.base import build_method
    from selfsup.nn.backbones import create_backbone

    torch.manual_seed(0)
    return build_method("simclr", create_backbone("small_cnn", 1, 16, width=4),
                        proj_hidden_dim=24, proj_out_dim=8, **kw)


def test_simclr_encodes_both_views_in_one_pass_like_the_reference() -> None:
    # google-research/simclr model.py: views concatenated into one 2N batch, one forward, so
    # BatchNorm (train mode) normalises both views with the statistics of all 2N images
    import copy

    from selfsup.types import Batch

    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, 6, 1, 16, 16, generator=g)
    x2 = 0.5 * x2 + 1.0  # a view distribution of its own: per-view BN statistics differ
    batch = Batch(views=[x1, x2], index=torch.arange(6))
    m = _simclr().train()
    assert m.cfg.single_pass and type(m).default_optim["decay_norm_bias"] is False
    one, per_view = copy.deepcopy(m), copy.deepcopy(m)
    out = m.training_step(batch)
    z1, z2 = one.projector(one.backbone(torch.cat([x1, x2]))).chunk(2)
    torch.testing.assert_close(out.loss, nt_xent(z1, z2, 0.5))
    torch.testing.assert_close(out.embeddings, z1.detach())
    p1, p2 = per_view.projector(per_view.backbone(x1)), per_view.projector(per_view.backbone(x2))
    assert not torch.allclose(out.loss, nt_xent(p1, p2, 0.5), rtol=1e-3)
    # single_pass=False is the per-view layout
    alt = _simclr(single_pass=False).train()
    torch.testing.assert_close(alt.training_step(batch).loss, nt_xent(p1, p2, 0.5))
