"""SwAV, DeepCluster and DeepCluster-v2 as methods: frozen prototypes, normalisation and the queue
(SwAV); clustering at the epoch start, classifier re-initialisation and pseudo-label losses
(DeepCluster); the memory bank (v2); and exact ``--resume`` of the clustering methods through the
trainer, at an epoch boundary and in the middle of an epoch."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup.config import replace
from selfsup.losses.clustering import swapped_prediction_loss
from selfsup.methods.base import build_method
from selfsup.methods.deepcluster import DeepCluster
from selfsup.methods.deepcluster_v2 import DeepClusterV2
from selfsup.methods.swav import SwAV
from selfsup.nn.backbones import create_backbone
from selfsup.nn.sinkhorn import sinkhorn
from selfsup.types import Batch, ConfigError

B, SIZE = 6, 16


def _batch(views: int = 4, seed: int = 0, index: torch.Tensor | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(B, 1, SIZE, SIZE, generator=g) for _ in range(2)]
    v += [torch.randn(B, 1, 8, 8, generator=g) for _ in range(views - 2)]
    return Batch(views=v, index=torch.arange(B) if index is None else index)


def _swav(**kw: object) -> SwAV:
    torch.manual_seed(0)
    args = {"proj_hidden_dim": 32, "proj_out_dim": 4, "num_prototypes": 5, **kw}
    m = build_method("swav", create_backbone("small_cnn", 1, SIZE, width=8), **args)
    assert isinstance(m, SwAV)
    return m


def test_swav_loss_is_swapped_prediction_of_sinkhorn_codes() -> None:
    m = _swav(queue_length=0).eval()
    batch = _batch()
    with torch.no_grad():
        out = m.training_step(batch)
        z = [F.normalize(m.projector(m.backbone(v)), dim=1) for v in batch.views]
        s = [zi @ m.prototypes.weight.t() for zi in z]
        codes = [sinkhorn(s[0], 0.05, 3), sinkhorn(s[1], 0.05, 3)]
        torch.testing.assert_close(out.loss, swapped_prediction_loss(s, codes, [0, 1], 0.1))


def test_swav_warns_when_prototypes_cannot_span_the_embedding_space(caplog) -> None:
    """K < D lets embeddings leave the prototypes' span (uniform predictions, loss log K)."""
    with caplog.at_level(logging.WARNING, logger="selfsup.methods.swav"):
        _swav()
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="selfsup.methods.swav"):
        _swav(proj_out_dim=8)
    assert "num_prototypes=5 < proj_out_dim=8" in caplog.text


def test_swav_prototypes_frozen_for_the_first_epoch_then_trained_and_normalised() -> None:
    m = _swav(queue_length=0).train()
    m.on_train_start(steps_per_epoch=3, total=10)
    for step in range(4):
        m.zero_grad()
        m.training_step(_batch(seed=step)).loss.backward()
        grad = m.prototypes.weight.grad
        assert grad is not None
        assert (float(grad.abs().sum()) == 0.0) == (step < 3), step  # frozen in epoch 0 only
        with torch.no_grad():
            m.prototypes.weight.mul_(3.0)  # any update; the step end projects back
        m.on_step_end(step, 10)
        torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(5))


def test_swav_queue_starts_at_its_epoch_and_joins_sinkhorn_when_full() -> None:
    m = _swav(queue_length=12, epoch_queue_starts=1).train()
    m.on_train_start(steps_per_epoch=2, total=10)
    logs = []
    for step in range(5):
        out = m.training_step(_batch(seed=step))
        logs.append(out.logs["queue"])
        last_z0 = out.embeddings
        m.on_step_end(step, 10)
        if step < 2:  # epoch 0: nothing queued yet
            assert int(m.queue_filled) == 0
    # steps 2, 3 fill 6 + 6 rows: the queue is used from step 4 on
    assert logs == [0.0, 0.0, 0.0, 0.0, 1.0] and int(m.queue_filled) == 12
    assert m.queue.shape == (2, 12, 4)
    # newest first: the last push (step 4's first global crop) sits at the front
    assert last_z0 is not None
    torch.testing.assert_close(m.queue[0, :B], last_z0)


def _blob_features(n_per: int = 30, k: int = 3, dim: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(k, dim, generator=g) * 4
    y = torch.arange(k).repeat_interleave(n_per)
    return centers[y] + 0.1 * torch.randn(len(y), dim, generator=g), y


def test_deepcluster_epoch_start_clusters_reinitialises_and_trains_on_pseudo_labels() -> None:
    feats, y = _blob_features()
    n = len(y)
    m = build_method("deepcluster", create_backbone("small_cnn", 1, SIZE, width=8),
                     head_hidden_dim=12, num_clusters=3, pca_dim=4, num_samples=n)
    assert isinstance(m, DeepCluster)
    assert m.wants_epoch_features(0) and m.epoch_sample_labels() is None
    with torch.no_grad():
        m.classifier.weight.fill_(1.0)
    params = m.on_epoch_start(0, feats, torch.arange(n), seed=0)
    assert {id(p) for p in params} == {id(p) for p in m.classifier.parameters()}
    assert float(m.classifier.weight.detach().std()) == pytest.approx(0.01, rel=0.2)
    assert float(m.classifier.bias.abs().sum()) == 0.0
    labels = m.epoch_sample_labels()
    assert labels is not None and labels.shape == (n,)
    assert len({(int(a), int(b)) for a, b in zip(labels, y)}) == 3  # the blobs are recovered
    before = m.classifier.weight.clone()
    m.on_epoch_start(1, feats, torch.arange(n), seed=0)  # epoch 1: another re-initialisation
    assert not torch.equal(before, m.classifier.weight)
    idx = torch.tensor([0, 31, 62, 5, 40, 89])
    batch = _batch(views=1, index=idx)
    m.eval()
    with torch.no_grad():
        out = m.training_step(batch)
        logits = m.classifier(F.relu(m.head(m.backbone(batch.views[0]))))
        torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels[idx]))


def test_deepcluster_v2_bank_clusters_and_bank_updates() -> None:
    n = 24
    m = build_method("deepcluster_v2", create_backbone("small_cnn", 1, SIZE, width=8),
                     proj_hidden_dim=16, proj_out_dim=8, num_prototypes=[3, 4], num_samples=n)
    assert isinstance(m, DeepClusterV2)
    assert m.wants_epoch_features(0)
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(n, 8, generator=g), dim=1)
    assert m.on_epoch_start(0, feats, torch.arange(n), seed=0) == []
    assert not m.wants_epoch_features(1)  # the bank is filled from training steps afterwards
    torch.testing.assert_close(m.bank[0], feats)
    torch.testing.assert_close(m.bank[1], feats)
    for h, k in enumerate([3, 4]):
        a = m.assignments[h]
        assert a.min() >= 0 and a.max() < k
        # each pseudo-label is the nearest centroid of the (unit) bank entry
        torch.testing.assert_close(a, (feats @ m.centroids(h).t()).argmax(1))
    m.train()
    idx = torch.tensor([3, 7, 9, 11, 20, 23])
    out = m.training_step(_batch(index=idx))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    m.on_step_end(0, 10)
    assert not torch.allclose(m.bank[0, idx], feats[idx])
    torch.testing.assert_close(m.bank[0, :3], feats[:3])  # untouched rows stay


# ------------------------------------------------- more clusters than images (issue 10, item 8)


def test_too_many_clusters_for_the_dataset_is_a_config_error_naming_the_option() -> None:
    """The paper's k (10,000; 3 x 3,000) on 90 images: a ConfigError from the method, at
    construction (num_samples known), naming the option and the largest k that works."""
    net = create_backbone("small_cnn", 1, SIZE, width=8)
    with pytest.raises(ConfigError, match=r"^deepcluster: method_args\.num_clusters=10000 is "
                       r"more than the 90 training images to cluster; use at most 90 "):
        build_method("deepcluster", net, head_hidden_dim=12, pca_dim=4, num_samples=90)
    with pytest.raises(ConfigError, match=r"^deepcluster_v2: method_args\.num_prototypes="
                       r"\[3000, 3000, 3000\] asks for 3000 clusters, more than the 90 training "
                       r"images to cluster; use at most 90 per entry .*=\[90,90,90\]"):
        build_method("deepcluster_v2", net, proj_hidden_dim=16, proj_out_dim=8, num_samples=90)
    with pytest.raises(ConfigError, match=r"num_prototypes=\[5, 91\].*use at most 90.*\[5,90\]"):
        build_method("deepcluster_v2", net, proj_hidden_dim=16, proj_out_dim=8,
                     num_prototypes=[5, 91], num_samples=90)
    # the largest value it names works; num_samples unknown (0): nothing to check yet
    build_method("deepcluster", net, head_hidden_dim=12, pca_dim=4, num_clusters=90,
                 num_samples=90)
    build_method("deepcluster_v2", net, proj_hidden_dim=16, proj_out_dim=8,
                 num_prototypes=[90, 90, 90], num_samples=90)
    build_method("deepcluster", net, head_hidden_dim=12, pca_dim=4)


def test_too_many_clusters_counts_rank_0s_share(monkeypatch) -> None:
    """With 2 ranks k-means draws its initial centroids from rank 0's 45 of the 90 images."""
    from selfsup.utils import dist

    monkeypatch.setattr(dist, "world_size", lambda: 2)
    net = create_backbone("small_cnn", 1, SIZE, width=8)
    with pytest.raises(ConfigError, match=r"num_clusters=46 is more than the 45 training images "
                       r"on rank 0.*use at most 45 "):
        build_method("deepcluster", net, head_hidden_dim=12, pca_dim=4, num_clusters=46,
                     num_samples=90)
    with pytest.raises(ConfigError, match=r"more than the 45 training images on rank 0.*"
                       r"use at most 45 per entry"):
        build_method("deepcluster_v2", net, proj_hidden_dim=16, proj_out_dim=8,
                     num_prototypes=[46], num_samples=90)
    build_method("deepcluster", net, head_hidden_dim=12, pca_dim=4, num_clusters=45,
                 num_samples=90)


def test_deepcluster_epoch_start_checks_the_rows_it_gets_before_pca_and_kmeans() -> None:
    """Fewer features than clusters at on_epoch_start: the method's ConfigError (not k-means'
    DataError), raised before the PCA."""
    feats, y = _blob_features()  # 90 rows
    m = build_method("deepcluster", create_backbone("small_cnn", 1, SIZE, width=8),
                     head_hidden_dim=12, num_clusters=50, pca_dim=4, num_samples=len(y))
    with pytest.raises(ConfigError, match=r"num_clusters=50 is more than the 40 training images"
                       r".*use at most 40 "):
        m.on_epoch_start(0, feats[:40], torch.arange(40), seed=0)
    assert int(m.clustered_epochs) == 0


def test_cli_prints_the_too_many_clusters_error_on_its_own_line(capsys, tmp_path) -> None:
    """The issue's case: digits (1438 training images) at the paper's k. One line on stderr that
    starts with the error, names the option and the largest value that works."""
    from selfsup.cli import main

    for method, option in (("deepcluster", "num_clusters=10000"),
                           ("deepcluster_v2", "num_prototypes=[3000, 3000, 3000]")):
        code = main(["pretrain", "--method", method, "--data", "digits", "--backbone",
                     "small_cnn", "--steps", "1", "--out", str(tmp_path / method)])
        err = capsys.readouterr().err
        assert code == 2
        lines = [line for line in err.splitlines() if "error" in line]
        assert len(lines) == 1 and lines[0].startswith(f"selfsup: error: {method}: method_args."
                                                       f"{option}"), err
        assert "1438 training images" in lines[0] and "use at most 1438" in lines[0]


@pytest.mark.parametrize(("method", "args"), [
    ("deepcluster", {"head_hidden_dim": 16, "num_clusters": 8, "pca_dim": 8}),
    ("deepcluster_v2", {"proj_hidden_dim": 16, "proj_out_dim": 8, "num_prototypes": [8, 6]}),
])
@pytest.mark.parametrize("stop", [6, 9])  # an epoch boundary (6 steps/epoch) and mid-epoch
def test_resume_is_exact(tiny_run, method: str, args: dict[str, object], stop: int) -> None:
    from selfsup.engine.trainer import pretrain

    def cfg(out: str):
        c = tiny_run(out, steps=14, batch=32)
        return replace(c, method=method, method_args=dict(args), views="simclr",
                       data=replace(c.data, limit=200))

    straight = pretrain(cfg("a"))
    pretrain(cfg("b"), stop_at=stop)
    resumed = pretrain(cfg("b"), resume=True)
    assert resumed.step == straight.step == 14
    assert resumed.final_loss == straight.final_loss
    sa, sb = straight.method.state_dict(), resumed.method.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_deepcluster_sobel_front_end_and_head_dropout() -> None:
    """Paper defaults: the evaluated encoder is Sobel + a 2-channel backbone; dropout 0.5 before
    each head layer acts in training only; sobel=False keeps the given backbone."""
    from selfsup.nn.channels import SobelEncoder

    net = create_backbone("small_cnn", 3, SIZE, width=8)
    m = build_method("deepcluster", net, head_hidden_dim=12, num_clusters=3, pca_dim=4)
    assert isinstance(m.backbone, SobelEncoder) and m.backbone.backbone.in_chans == 2
    assert m.backbone.in_chans == 3 and m.backbone.backbone is not net
    drops = [mod for mod in m.head if isinstance(mod, torch.nn.Dropout)]
    assert [d.p for d in drops] == [0.5, 0.5]
    x = torch.randn(B, 3, SIZE, SIZE)
    m.train()
    assert not torch.equal(m.head(m.backbone(x)), m.head(m.backbone(x)))  # dropout draws
    m.eval()
    torch.testing.assert_close(m.head(m.backbone(x)), m.head(m.backbone(x)))
    plain = build_method("deepcluster", net, head_hidden_dim=12, num_clusters=3, pca_dim=4,
                         sobel=False, head_dropout=0.0)
    assert plain.backbone is net
    with pytest.raises(ConfigError, match="head_dropout"):
        build_method("deepcluster", net, head_dropout=1.0)


def test_deepcluster_sobel_encoder_survives_checkpoint_and_export(tiny_run, tmp_path) -> None:
    """load_run and export rebuild Sobel + the 2-channel backbone from the checkpoint."""
    from selfsup.engine.export import export_encoder, load_encoder
    from selfsup.engine.runs import load_run
    from selfsup.engine.trainer import pretrain
    from selfsup.nn.channels import SobelEncoder

    c = tiny_run("dc", steps=3, batch=32)
    c = replace(c, method="deepcluster", views="simclr", data=replace(c.data, limit=100),
                method_args={"head_hidden_dim": 16, "num_clusters": 8, "pca_dim": 8})
    res = pretrain(c)
    run = load_run(str(res.checkpoint))
    assert isinstance(run.encoder, SobelEncoder)
    meta = export_encoder(res.checkpoint, tmp_path / "enc.pt")
    assert meta["in_chans"] == 1
    enc, _ = load_encoder(tmp_path / "enc.pt")
    ts = torch.export.load(str(tmp_path / "enc.pt2")).module()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        trained = res.method.backbone.eval()(x)
        torch.testing.assert_close(run.encoder(x), trained)
        torch.testing.assert_close(enc(x), trained)
        torch.testing.assert_close(ts(x), trained, rtol=1e-4, atol=1e-5)
