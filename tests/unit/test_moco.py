"""MoCo v1/v2 (and the shared parts of MoCo v3): paper defaults, the key encoder gets no gradient
but follows the query encoder after on_step_end, the queue receives the keys, the loss equals
InfoNCE against the queue, and the single-device shuffle-BN substitute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.losses.contrastive import info_nce
from selfsup.methods.base import build_method
from selfsup.methods.moco import MoCoV1Config, MoCoV2Config, grouped_forward
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError, DataError

SIZE, B = 16, 8


def _build(name: str, **kw):
    torch.manual_seed(0)
    return build_method(name, create_backbone("small_cnn", in_chans=1, image_size=SIZE, width=4),
                        **kw)


def _batch(seed: int = 0, b: int = B) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(b, 1, SIZE, SIZE, generator=g) for _ in range(2)]
    return Batch(views=views, index=torch.arange(b) + 10 * seed)


def test_paper_defaults() -> None:
    v1, v2 = MoCoV1Config(), MoCoV2Config()
    assert (v1.temperature, v1.momentum, v1.proj_dim, v1.proj_hidden_dim) == (0.07, 0.999, 128, 0)
    assert (v2.temperature, v2.momentum, v2.proj_hidden_dim) == (0.2, 0.999, 2048)
    m1, m2 = _build("moco_v1"), _build("moco_v2")
    assert [type(x).__name__ for x in m1.projector] == ["Linear"]
    assert [type(x).__name__ for x in m2.projector] == ["Linear", "ReLU", "Linear"]
    assert m2.projector[0].out_features == 2048 and m2.queue.size == 4096
    for m, views in ((m1, "moco_v1"), (m2, "moco_v2")):
        assert type(m).default_optim["name"] == "sgd" and type(m).default_optim["lr"] == 0.03
        assert type(m).default_optim["weight_decay"] == 1e-4
        assert type(m).default_views == views  # main_moco.py: v1 = InstDisc's, v2 = --aug-plus


@pytest.mark.parametrize("name", ["moco_v1", "moco_v2"])
def test_key_encoder_gets_no_gradient_and_follows_after_step(name: str) -> None:
    narrow = {"proj_hidden_dim": 32} if name == "moco_v2" else {}
    m = _build(name, momentum=0.9, queue_size=32, **narrow).train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    key_before = [p.clone() for p in m.key_encoder.parameters()]
    out = m.training_step(_batch())
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.key_encoder.parameters())
    opt.step()
    # not touched by the optimiser step ...
    for p, b in zip(m.key_encoder.parameters(), key_before):
        torch.testing.assert_close(p, b)
    query = [p.detach().clone() for p in nn.Sequential(m.backbone, m.projector).parameters()]
    m.on_step_end(0, 10)
    # ... but moved to 0.9 * old + 0.1 * query after on_step_end (eq. 2)
    for p, b, q in zip(m.key_encoder.parameters(), key_before, query):
        torch.testing.assert_close(p, 0.9 * b + 0.1 * q)
    assert any(not torch.equal(p, b) for p, b in zip(m.key_encoder.parameters(), key_before))


def test_queue_receives_normalised_keys_with_their_index() -> None:
    m = _build("moco_v2", queue_size=20, proj_hidden_dim=32).train()
    for step in range(3):
        m.training_step(_batch(step))
        m.on_step_end(step, 10)
    assert int(m.queue.ptr) == (3 * B) % 20 and int(m.queue.filled) == 20
    ids = m.queue.get_ids()
    assert sorted(ids[ids >= 0].tolist()) == sorted(
        [i + 10 * s for s in range(3) for i in range(B)][-20:])
    torch.testing.assert_close(m.queue.get().norm(dim=1), torch.ones(20))
    # symmetric: both key sets are enqueued
    s = _build("moco_v1", queue_size=64, symmetric=True).train()
    s.training_step(_batch())
    s.on_step_end(0, 10)
    assert int(s.queue.ptr) == 2 * B
    # eval mode computes a loss but does not enqueue
    e = _build("moco_v1", queue_size=64).eval()
    e.training_step(_batch())
    e.on_step_end(0, 10)
    assert int(e.queue.ptr) == 0


def test_loss_is_infonce_against_the_queue() -> None:
    m = _build("moco_v1", queue_size=16, shuffle_bn_groups=1, mask_same_image=False).train()
    for step in range(2):  # fill part of the queue with real keys
        m.training_step(_batch(step + 1))
        m.on_step_end(step, 10)
    m.eval()  # BN uses running statistics: the forward is deterministic and per-sample
    batch = _batch(0)
    with torch.no_grad():
        out = m.training_step(batch)
        q = F.normalize(m.projector(m.backbone(batch.views[0])), dim=1)
        k = F.normalize(m.key_encoder(batch.views[1]), dim=1)
        # eq. 1: logits [q.k+, q.queue] / tau, cross-entropy with label 0
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ m.queue.get().T], 1) / 0.07
        expected = F.cross_entropy(logits, torch.zeros(B, dtype=torch.long))
        torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
        ref = info_nce(q, k, torch.eye(B, dtype=torch.bool), 0.07,
                       self_mask=~torch.eye(B, dtype=torch.bool), negatives=m.queue.get())
        torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)


def test_same_image_keys_in_the_queue_are_not_negatives() -> None:
    m = _build("moco_v1", queue_size=16, shuffle_bn_groups=1).train()
    m.training_step(_batch(0))
    m.on_step_end(0, 10)  # the queue now holds keys of images 0..7
    m.eval()
    batch = _batch(0)
    with torch.no_grad():
        masked = m.training_step(batch).loss
        m.cfg.mask_same_image = False
        unmasked = m.training_step(batch).loss
    assert masked.item() < unmasked.item()  # the stale own keys (near the query) are removed


def test_grouped_forward_changes_bn_grouping_and_keeps_alignment() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3).train()
    x = torch.randn(8, 3) * torch.tensor([1.0, 5.0, 0.1]) + 2.0
    perm = torch.randperm(8)
    out = grouped_forward(bn, x, 2, perm)
    # row i of the output is row i of the input normalised with the statistics of its group
    shuffled = x[perm]
    for gi, rows in enumerate(perm.tensor_split(2)):
        grp = shuffled[gi * 4 : (gi + 1) * 4]
        ref = (grp - grp.mean(0)) / torch.sqrt(grp.var(0, unbiased=False) + bn.eps)
        torch.testing.assert_close(out[rows], ref, rtol=1e-5, atol=1e-5)
    # different from whole-batch BN, and the identity network keeps every row in place
    assert not torch.allclose(out, bn(x), atol=1e-3)
    torch.testing.assert_close(grouped_forward(lambda t: t * 1.0, x, 4, perm), x)
    # groups are capped so that each has >= 2 samples (BatchNorm needs 2)
    assert grouped_forward(bn, x[:3], 8).shape == (3, 3)


def test_bad_config_and_input() -> None:
    for bad in ({"temperature": 0.0}, {"queue_size": 0}, {"momentum": 1.5},
                {"shuffle_bn_groups": 0}, {"proj_dim": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            _build("moco_v2", **bad)
    m = _build("moco_v1")
    x = torch.randn(B, 1, SIZE, SIZE)
    with pytest.raises(DataError, match="2 views"):
        m.training_step(Batch(views=[x], index=torch.arange(B)))
    with pytest.raises(DataError, match="same shape"):
        m.training_step(Batch(views=[x, x[:, :, :8, :8]], index=torch.arange(B)))


# ------------------------------------------------------------------ MoCo v3


def test_moco_v3_defaults_follow_the_backbone() -> None:
    from selfsup.methods.moco_v3 import MoCoV3Config

    cfg = MoCoV3Config()
    assert (cfg.momentum, cfg.proj_hidden_dim, cfg.proj_dim, cfg.pred_layers) == (0.99, 4096, 256, 2)
    cnn = _build("moco_v3", proj_hidden_dim=32)  # ResNet recipe: tau 1.0, 2-layer projector, predictor without out BN
    assert cnn.temperature == 1.0 and not cnn.frozen_patch_embed
    assert sum(isinstance(x, nn.Linear) for x in cnn.projector) == 2
    assert isinstance(cnn.projector[-1], nn.BatchNorm1d) and not cnn.projector[-1].affine
    assert not isinstance(cnn.predictor[-1], nn.BatchNorm1d)
    assert type(cnn).default_optim["name"] == "lars" and type(cnn).default_views == "byol"
    torch.manual_seed(0)
    vit = build_method("moco_v3", create_backbone("vit_tiny", in_chans=1, image_size=SIZE,
                                                  patch_size=4), proj_hidden_dim=32, proj_dim=16)
    assert vit.temperature == 0.2 and vit.frozen_patch_embed  # ViT recipe
    assert sum(isinstance(x, nn.Linear) for x in vit.projector) == 3
    assert isinstance(vit.predictor[-1], nn.BatchNorm1d)
    assert all(not p.requires_grad for p in vit.backbone.patch_embed.parameters())
    out = vit.train().training_step(_batch(b=4))
    out.loss.backward()
    assert torch.isfinite(out.loss) and vit.backbone.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in vit.backbone.patch_embed.parameters())
    with pytest.raises(ConfigError, match="freeze_patch_embed"):
        _build("moco_v3", proj_hidden_dim=8, freeze_patch_embed=True)
    with pytest.raises(ConfigError, match="temperature"):
        _build("moco_v3", proj_hidden_dim=8, temperature=-1.0)


def test_moco_v3_momentum_schedule() -> None:
    m = _build("moco_v3", proj_hidden_dim=16, proj_dim=8)
    assert m.momentum_at(0, 100) == pytest.approx(0.99)
    assert m.momentum_at(50, 100) == pytest.approx(0.995)
    assert m.momentum_at(100, 100) == pytest.approx(1.0)
    const = _build("moco_v3", proj_hidden_dim=16, proj_dim=8, momentum_cosine=False)
    assert const.momentum_at(70, 100) == pytest.approx(0.99)


def test_moco_v3_loss_and_momentum_encoder() -> None:
    m = _build("moco_v3", proj_hidden_dim=16, proj_dim=8, momentum=0.5,
               momentum_cosine=False).train()
    batch = _batch()
    out = m.training_step(batch)
    out.loss.backward()
    # the predictor is not part of the momentum encoder, which gets no gradient
    assert len(list(m.momentum_encoder.parameters())) == len(
        list(nn.Sequential(m.backbone, m.projector).parameters()))
    assert all(p.grad is None for p in m.momentum_encoder.parameters())
    assert m.predictor[0].weight.grad is not None
    before = [p.clone() for p in m.momentum_encoder.parameters()]
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.1)
    m.on_step_end(0, 10)
    for p, b, q in zip(m.momentum_encoder.parameters(), before,
                       nn.Sequential(m.backbone, m.projector).parameters()):
        torch.testing.assert_close(p, 0.5 * b + 0.5 * q)
    # Algorithm 1: ctr(q1, k2) + ctr(q2, k1), ctr = 2 tau CE(normalised q k^T / tau, diag)
    m.eval()
    with torch.no_grad():
        loss = m.training_step(batch).loss

        def ctr(x_q: torch.Tensor, x_k: torch.Tensor) -> torch.Tensor:
            q = F.normalize(m.predictor(m.projector(m.backbone(x_q))), dim=1)
            k = F.normalize(m.momentum_encoder(x_k), dim=1)
            return 2 * 1.0 * F.cross_entropy(q @ k.T / 1.0, torch.arange(B))

        expected = ctr(batch.views[0], batch.views[1]) + ctr(batch.views[1], batch.views[0])
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ EMA: parameters only


def _bn_stats(net: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in net.named_buffers() if n.endswith(("running_mean", "running_var"))]


@pytest.mark.parametrize("name", ["moco_v1", "moco_v2"])
def test_key_encoder_keeps_its_own_bn_statistics(name: str) -> None:
    # facebookresearch/moco builder.py _momentum_update_key_encoder moves parameters only: the
    # key encoder's BN running stats are those of its own (shuffled) passes over the keys
    import copy

    narrow = {"proj_hidden_dim": 32} if name == "moco_v2" else {}
    m = _build(name, momentum=0.9, queue_size=32, **narrow).train()
    assert m.key_encoder.copy_buffers is False
    assert type(m).default_views == name  # the paper's augmentation preset
    batch = _batch()
    shadow = copy.deepcopy(m.key_encoder).train()
    torch.manual_seed(3)
    out = m.training_step(batch)
    torch.manual_seed(3)  # the step's only random draw is the key shuffle
    with torch.no_grad():
        grouped_forward(shadow, batch.views[1], m.cfg.shuffle_bn_groups, torch.randperm(B))
    out.loss.backward()
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5).step()
    m.on_step_end(0, 10)
    _assert_own_bn_statistics(m.key_encoder, shadow, nn.Sequential(m.backbone, m.projector))


def _assert_own_bn_statistics(ema: nn.Module, shadow: nn.Module, student: nn.Module) -> None:
    """The EMA's BN running statistics are those of its own passes (``shadow``), not the
    student's (what copying the buffers at every update would give)."""
    key, own, stud = _bn_stats(ema), _bn_stats(shadow), _bn_stats(student)
    assert len(key) == len(stud) > 0
    for k, s in zip(key, own):
        torch.testing.assert_close(k, s)
    assert all(not torch.allclose(k, q) for k, q in zip(key, stud))


def test_moco_v3_momentum_encoder_keeps_its_own_bn_statistics() -> None:
    # facebookresearch/moco-v3 builder.py _update_momentum_encoder: parameters only
    import copy

    m = _build("moco_v3", proj_hidden_dim=16, proj_dim=8, momentum=0.5,
               momentum_cosine=False).train()
    assert m.momentum_encoder.copy_buffers is False
    with torch.no_grad():  # the two encoders differ, as after any training step
        for p in m.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = _batch()
    shadow = copy.deepcopy(m.momentum_encoder).train()
    with torch.no_grad():
        shadow(batch.views[0]), shadow(batch.views[1])
    m.training_step(batch).loss.backward()
    m.on_step_end(0, 10)
    _assert_own_bn_statistics(m.momentum_encoder, shadow, nn.Sequential(m.backbone, m.projector))


def test_batch_negatives_add_the_other_images_keys_to_the_denominator() -> None:
    """``batch_negatives``: loop reference of InfoNCE whose denominator holds the positive, the
    queue and the current keys of the *other* images (never the query's own key twice)."""
    m = _build("moco_v1", queue_size=16, shuffle_bn_groups=1, mask_same_image=False,
               batch_negatives=True).train()
    m.training_step(_batch(1))
    m.on_step_end(0, 10)
    m.eval()
    batch = _batch(0)
    with torch.no_grad():
        out = m.training_step(batch).loss
        q = F.normalize(m.projector(m.backbone(batch.views[0])), dim=1)
        k = F.normalize(m.key_encoder(batch.views[1]), dim=1)
        queue = m.queue.get()
        total = torch.zeros(())
        for i in range(B):
            pos = torch.exp(q[i] @ k[i] / 0.07)
            neg = sum(torch.exp(q[i] @ k[j] / 0.07) for j in range(B) if j != i)
            neg = neg + torch.exp(q[i] @ queue.T / 0.07).sum()
            total = total - torch.log(pos / (pos + neg))
        torch.testing.assert_close(out, total / B, rtol=1e-5, atol=1e-5)
        m.cfg.batch_negatives = False
        assert m.training_step(batch).loss.item() < out.item()  # fewer negatives, lower loss
