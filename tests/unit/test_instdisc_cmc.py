"""InstDisc and CMC: NCE's normalising constant (fixed after the first batch, or EMA), the memory
bank update through the method, the InfoNCE bank loss vs a loop reference, CMC's channel groups
(Lab for RGB, band groups for 13 channels, the grey fallback and its error), RGB -> Lab against
known values, and the core-view / full-graph losses vs a loop over view pairs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.data.color import rgb_to_lab
from selfsup.losses.nce import bank_info_nce, bank_logits, estimate_log_z
from selfsup.methods.base import build_method
from selfsup.methods.cmc import CMC, ChannelGroupEncoder, view_pairs
from selfsup.methods.instdisc import InstDisc
from selfsup.nn.backbones import create_backbone
from selfsup.nn.memory_bank import NormalizingConstant
from selfsup.types import Batch, ConfigError, DataError

SIZE, B, N = 16, 6, 40


def _instdisc(**kw: object) -> InstDisc:
    torch.manual_seed(0)
    m = build_method("instdisc", create_backbone("small_cnn", 1, SIZE, width=4), num_samples=N,
                     num_negatives=16, **kw)
    assert isinstance(m, InstDisc)
    return m.train()


def _batch(c: int = 1, seed: int = 0, views: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, c, SIZE, SIZE, generator=g) for _ in range(views)]
    return Batch(views=xs, index=torch.randperm(N, generator=g)[:B])


def test_nce_z_fixed_after_first_batch() -> None:
    m = _instdisc(z_momentum=0.0)
    assert not m.z.is_set
    batch = _batch()
    torch.manual_seed(5)
    m.training_step(batch)
    # the same draw of noise entries, by hand: log Z = log(n mean exp(v . w / t)) (eq. 8)
    torch.manual_seed(5)
    with torch.no_grad():
        v = m.embed(batch.views[0])
        noise = m.memory.get(m.memory.sample((m.num_negatives,)))
        ref = torch.log(N * torch.exp(v @ noise.T / 0.07).mean())
    torch.testing.assert_close(m.z.log_z, ref.float(), rtol=1e-5, atol=1e-5)
    first = m.z.log_z.clone()
    for s in range(1, 4):
        m.on_step_end(s, 10)
        m.training_step(_batch(seed=s))
        assert torch.equal(m.z.log_z, first)  # never re-estimated (sec. 3.2)


def test_nce_z_moving_average_rule() -> None:
    z = NormalizingConstant(momentum=0.9)
    z.update(torch.tensor(2.0))
    assert z.log_z.item() == pytest.approx(2.0)
    z.update(torch.tensor(4.0))
    expect = math.log(0.9 * math.exp(2.0) + 0.1 * math.exp(4.0))  # Z <- m Z + (1 - m) Z_b
    assert z.log_z.item() == pytest.approx(expect, rel=1e-6)
    fixed = NormalizingConstant(0.0)
    fixed.update(torch.tensor(1.0))
    fixed.update(torch.tensor(7.0))
    assert fixed.log_z.item() == pytest.approx(1.0)
    other = NormalizingConstant(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.is_set and other.log_z.item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="momentum"):
        NormalizingConstant(1.0)


def test_instdisc_updates_bank_with_momentum() -> None:
    m = _instdisc(bank_init="random")
    batch = _batch()
    before = m.memory.bank.clone()
    out = m.training_step(batch)
    assert out.embeddings is not None
    m.on_step_end(0, 10)
    idx = batch.index
    expect = F.normalize(0.5 * before[idx] + 0.5 * out.embeddings, dim=1)
    torch.testing.assert_close(m.memory.bank[idx], expect)
    rest = torch.ones(N, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(m.memory.bank[rest], before[rest])  # other entries untouched


def test_lazy_bank_init_writes_first_visit_before_the_loss() -> None:
    m = _instdisc(loss="infonce")
    batch = _batch()
    idx = batch.index
    assert not m.memory.filled.any()
    out = m.training_step(batch)
    assert out.embeddings is not None
    # first visit: the entry is the sample's own feature, so the positive logit is 1 / t
    torch.testing.assert_close(m.memory.bank[idx], out.embeddings)
    assert float(out.logs["pos_sim"]) == pytest.approx(1.0, abs=1e-5)
    assert int(m.memory.filled.sum()) == B and bool(m.memory.filled[idx].all())
    m.on_step_end(0, 10)  # then the momentum rule, as with a random bank
    first = m.memory.bank[idx].clone()
    out2 = m.training_step(_batch(seed=0))
    assert out2.embeddings is not None
    torch.testing.assert_close(m.memory.bank[idx], first)  # written entries are not refilled
    m.on_step_end(1, 10)
    torch.testing.assert_close(m.memory.bank[idx],
                               F.normalize(0.5 * first + 0.5 * out2.embeddings, dim=1))
    m.eval()
    fresh = _instdisc().eval()
    fresh.training_step(batch)
    assert not fresh.memory.filled.any()  # evaluation never writes the bank
    with pytest.raises(ConfigError, match="method_args.bank_init"):
        _instdisc(bank_init="zeros")


def test_instdisc_options_and_errors() -> None:
    m = _instdisc(loss="infonce")
    assert torch.isfinite(m.training_step(_batch()).loss)
    assert not m.z.is_set  # InfoNCE needs no Z
    with pytest.raises(ConfigError, match="method_args.loss"):
        _instdisc(loss="nope")
    with pytest.raises(ConfigError, match="method_args.z_momentum"):
        _instdisc(z_momentum=1.0)
    bad = Batch(views=[torch.randn(2, 1, SIZE, SIZE)], index=torch.tensor([0, N]))
    with pytest.raises(DataError, match="method_args.num_samples"):
        m.training_step(bad)


@pytest.mark.parametrize("k", [1, 7])
def test_bank_info_nce_matches_loop(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    v = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    pos = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    noise = F.normalize(torch.randn(k, 8, generator=g), dim=1)
    pl, nl = bank_logits(v, pos, noise, 0.2)
    ref = 0.0
    for i in range(5):
        num = math.exp(float(v[i] @ pos[i]) / 0.2)
        den = num + sum(math.exp(float(v[i] @ noise[j]) / 0.2) for j in range(k))
        ref -= math.log(num / den) / 5
    assert bank_info_nce(pl, nl).item() == pytest.approx(ref, rel=1e-5)
    # identical logits everywhere: -log(1 / (K + 1))
    assert bank_info_nce(torch.zeros(3), torch.zeros(3, k)).item() == pytest.approx(
        math.log(k + 1))
    assert estimate_log_z(torch.zeros(3, k), 100).item() == pytest.approx(math.log(100))


def test_rgb_to_lab_known_values() -> None:
    x = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]],
                     dtype=torch.float).view(5, 3, 1, 1)
    lab = rgb_to_lab(x).view(5, 3)
    ref = torch.tensor([[100.0, 0.0, 0.0], [53.241, 80.092, 67.203], [87.735, -86.183, 83.179],
                        [32.297, 79.188, -107.860], [0.0, 0.0, 0.0]])  # skimage.color.rgb2lab
    torch.testing.assert_close(lab, ref, atol=0.02, rtol=0)
    with pytest.raises(DataError, match="3 channels"):
        rgb_to_lab(torch.rand(1, 2, 4, 4))


def _cmc(c: int, **kw: object) -> CMC:
    torch.manual_seed(0)
    m = build_method("cmc", create_backbone("small_cnn", c, SIZE, width=4), num_samples=N,
                     num_negatives=16, **kw)
    assert isinstance(m, CMC)
    return m.train()


def test_cmc_rgb_views_are_l_and_ab_of_lab() -> None:
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    m = _cmc(3, input_mean=mean, input_std=std)
    enc = m.backbone
    assert isinstance(enc, ChannelGroupEncoder) and enc.lab and enc.groups == [[0], [1, 2]]
    assert [e.in_chans for e in enc.encoders] == [1, 2]
    unit = torch.rand(2, 3, SIZE, SIZE)
    x = (unit - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    lv, abv = enc.split(x)
    lab = rgb_to_lab(unit)
    torch.testing.assert_close(lv, (lab[:, :1] - 50.0) / 50.0, atol=1e-4, rtol=1e-4)
    center = torch.tensor([(-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2]).view(1, 2, 1, 1)
    half = torch.tensor([(86.183 + 98.233) / 2, (107.857 + 94.478) / 2]).view(1, 2, 1, 1)
    torch.testing.assert_close(abv, (lab[:, 1:] - center) / half, atol=1e-4, rtol=1e-4)
    assert enc(x).shape == (2, enc.num_features) and enc.num_features == 2 * 32


def test_cmc_band_groups_for_13_channels() -> None:
    m = _cmc(13)
    enc = m.backbone
    assert isinstance(enc, ChannelGroupEncoder) and not enc.lab
    assert enc.groups == [list(range(7)), list(range(7, 13))]
    x = torch.randn(2, 13, SIZE, SIZE)
    parts = enc.split(x)
    assert torch.equal(parts[0], x[:, :7]) and torch.equal(parts[1], x[:, 7:])
    groups = [[0], [1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
    m3 = _cmc(13, groups=groups, graph="full")
    enc3 = m3.backbone
    assert isinstance(enc3, ChannelGroupEncoder)
    assert [e.in_chans for e in enc3.encoders] == [1, 2, 10]
    assert torch.equal(enc3.split(x)[2], x[:, 3:])
    assert len(m3.z) == 6  # one Z per ordered pair of the full graph
    out = m3.training_step(_batch(13))
    assert torch.isfinite(out.loss) and out.embeddings is not None
    assert out.embeddings.shape == (B, 3 * 128)


def test_cmc_grey_fallback_and_errors() -> None:
    m = _cmc(1)
    enc = m.backbone
    assert isinstance(enc, ChannelGroupEncoder) and enc.groups == [[0], [0]] and m.grey
    assert torch.isfinite(m.training_step(_batch(1)).loss)
    with pytest.raises(DataError, match="2 augmented views"):
        m.training_step(_batch(1, views=1))
    with pytest.raises(ConfigError, match=r"method_args.groups .*>= 2 channels"):
        _cmc(1, groups=[[0], [1, 2]])
    with pytest.raises(ConfigError, match="method_args.groups"):
        _cmc(3, groups=[[0, 1, 2]])
    with pytest.raises(ConfigError, match="method_args.groups"):
        _cmc(3, groups=[[0], [3]])
    with pytest.raises(ConfigError, match="graph"):
        _cmc(3, graph="star")


def test_view_pairs() -> None:
    assert view_pairs(3, "core") == [(0, 1), (0, 2)]
    assert view_pairs(3, "full") == [(0, 1), (0, 2), (1, 2)]
    assert view_pairs(2, "core") == view_pairs(2, "full") == [(0, 1)]


def _pair_ref(zi: torch.Tensor, zj: torch.Tensor, t: float) -> float:
    """-mean_a log softmax over the other view's batch, both directions, with loops."""
    total = 0.0
    for a, b in ((zi, zj), (zj, zi)):
        for r in range(a.shape[0]):
            logits = [float(a[r] @ b[c]) / t for c in range(b.shape[0])]
            total -= (logits[r] - math.log(sum(math.exp(x) for x in logits))) / a.shape[0]
    return total


@pytest.mark.parametrize("graph", ["core", "full"])
def test_cmc_graph_loss_matches_loop(graph: str) -> None:
    m = _cmc(13, groups=[[0, 1], [2, 3, 4], [5, 6, 7, 8, 9, 10, 11, 12]], graph=graph,
             negatives="batch", temperature=0.2)
    m.eval()
    batch = _batch(13)
    with torch.no_grad():
        out = m.training_step(batch)
        zs = m.embed_views(batch)
    pairs = [(0, 1), (0, 2)] if graph == "core" else [(0, 1), (0, 2), (1, 2)]
    ref = sum(_pair_ref(zs[i], zs[j], 0.2) for i, j in pairs)
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)
    assert len(m.banks) == 0  # in-batch negatives keep no bank


def test_unset_normalizing_constant_is_finite_state() -> None:
    """The "not yet estimated" state is a flag, not a NaN sentinel: the trainer refuses to write
    checkpoints holding NaN buffers, so an InfoNCE run (which never sets Z) must stay finite."""
    from selfsup.nn.memory_bank import NormalizingConstant

    z = NormalizingConstant()
    assert not z.is_set
    assert all(torch.isfinite(v).all() for v in z.state_dict().values() if v.is_floating_point())
    z.update(torch.tensor(2.0))
    assert z.is_set and z.log_z.item() == pytest.approx(2.0)
