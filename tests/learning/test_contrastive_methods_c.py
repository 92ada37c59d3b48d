"""InstDisc and CMC learn on real data: kNN top-1 of the pretrained encoder clearly above the
same encoder at random init.

Scaled for 1,437 training images and 150 steps (about 13 epochs): the bank starts lazily (each
entry is the sample's own first feature, ``bank_init="lazy"``) and the base learning rate is 0.006
(0.003 at batch 128) instead of the paper's 0.03; see docs/methods/contrastive.md for why and for
the measured numbers.

CMC with in-batch negatives (``negatives="batch"``): on digits (one channel: the documented grey
fallback, both encoders see the channel under two augmentations) 92.2 vs 87.2 at random init after
150 steps (15 s on an idle 2-core machine); with its RGB split (L vs ab of Lab) on 5000 CIFAR-10
training images, the paper's crop + flip views, 150 steps: kNN on 2000 test images 35.7 vs 25.6
(raw pixels 29.8), 27 s. The memory-bank variant (the paper's default) gains only +1.4 (digits)
and +2.6 (CIFAR, lr 0.006) in runs this short: banks become informative over many epochs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig, apply_overrides
from selfsup.engine.trainer import pretrain

CIFAR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cifar10" / "cifar10.npz"

LR = ["optim.lr=0.006"]


def test_instdisc_nce_beats_random_init(learn) -> None:
    r = learn("instdisc", steps=150, overrides=LR, label="instdisc nce")
    assert r["trained"] > r["random"] + 2.0, r


def test_instdisc_infonce_beats_random_init(learn) -> None:
    r = learn("instdisc", steps=150, overrides=LR, loss="infonce", label="instdisc infonce")
    assert r["trained"] > r["random"] + 2.0, r



def test_cmc_in_batch_beats_random_init(learn) -> None:
    r = learn("cmc", steps=150, negatives="batch", label="cmc grey fallback, in-batch")
    assert r["trained"] > r["random"] + 2.0, r  # measured +5.0


@pytest.mark.skipif(not CIFAR.is_file(), reason="shared CIFAR-10 file not available")
@pytest.mark.slow  # a long training run: `make test-slow`, not `make test`
def test_cmc_lab_views_beat_random_init_on_cifar(tmp_path: Path, learning_log,
                                                 knn_eval) -> None:
    cfg = RunConfig(
        method="cmc", method_args={"negatives": "batch"},
        backbone=BackboneConfig(name="small_cnn", kwargs={"width": 32}),
        data=DataConfig(path=str(CIFAR), limit=5000),
        train=TrainConfig(steps=150, batch_size=128, out=str(tmp_path / "cmc"), progress=False,
                          tensorboard=False, seed=0),
    )
    paper_views = ["view_args.jitter_p=0", "view_args.grayscale_p=0", "optim.warmup_epochs=1"]
    res = pretrain(apply_overrides(cfg, paper_views))
    r = knn_eval(res.checkpoint, str(CIFAR), limit=2000)
    learning_log("cmc L|ab, in-batch", r["trained"], r["random"], r["raw"],
                 dataset="cifar10 (5000 train / 2000 test)", steps=res.step,
                 pretrain_s=round(res.seconds, 1))
    assert r["trained"] > r["random"] + 5.0, r  # measured +10.1
