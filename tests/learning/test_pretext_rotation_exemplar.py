"""RotNet and Exemplar-CNN learn on real data: the pretext accuracy rises far above chance and the
encoder beats its random init in kNN (protocol of tests/learning/conftest.py: small CNN, 16 px
digits, seed 0; raw pixels recorded beside).

CPU scaling for the 8 s budget: the small CNN at width 8 (64 features) and 100 steps. At width 16
or 32 the random-init encoder is already at 83.8 / 85.8 kNN on digits and 100 steps of either
pretext task stay within about +-2.5 of it (measured, batch 64: rotation 83.84 vs 83.84 at width
16, 86.35 vs 85.79 at width 32; exemplar, 120 steps at batch 128, 256 classes, lr 0.2: 82.45 vs
83.57 at width 16, 88.30 vs 85.79 at width 32), so width 8 (random init 76.0) is where these short
runs show what the tasks teach.

- Rotation: the paper's CIFAR-10 recipe unchanged (SGD lr 0.1 at batch 128, i.e. 0.05 at the
  batch of 64 used here, weight decay 5e-4, the padded random crop, all four rotations of every
  image) on top of the protocol's crops.
- Exemplar-CNN: N = 256 surrogate classes (``data.limit=256``, the first 256 training images: the
  paper draws its N seed patches from N images of the unlabeled set, N in [50, 32000]; with all
  1438 training digits each class is seen ~9 times in 100 steps and the pretext accuracy stays
  under 1%, measured 0.8% at lr 0.5), the identity view (``view_args.scale=[1, 1]`` over the protocol's crops, so each
  image's seed patch stays put), 5-px seed patches (1/3 of the side, the paper's 32 of 96), K = 4
  copies, and SGD lr 0.1 at batch 128 (``optim.lr=0.2`` per 256): 10x the paper's 0.01, which in
  100 steps leaves the pretext accuracy at ~1% (measured: 0.8%, kNN 80.78).

Measured (seed 0, 2 cores shared with four other test runs, load average ~8; pretraining 10.1 s
and 6.3 s there): rotation pretext accuracy 0.36 -> 0.56 (chance 0.25), kNN trained 81.06 vs
random init 76.04 vs raw pixels 94.99; exemplar pretext accuracy 0.002 -> 0.11 (chance 0.0039),
kNN 82.73 vs 76.04 vs 94.99.
"""

from __future__ import annotations

import json
from typing import Any

WIDTH, STEPS = 8, 100


def _accuracy(r: dict[str, Any], key: str) -> tuple[float, float]:
    """The first logged and the mean of the last three logged pretext accuracies."""
    rows = [json.loads(line) for line in
            (r["result"].run_dir / "metrics.jsonl").read_text().splitlines()]
    acc = [row[key] for row in rows]
    return acc[0], sum(acc[-3:]) / 3


def test_rotation_predicts_rotations_and_beats_random_init(learn) -> None:
    r = learn("rotation", steps=STEPS, batch_size=64, width=WIDTH)
    first, last = _accuracy(r, "rot_acc")
    # a rotation the network cannot see (labels not matching the rotated copies, a shortcut
    # removed by mistake) stays at chance, 0.25
    assert last > 0.45, (first, last)  # measured 0.36 -> 0.57
    assert r["trained"] > r["random"] + 2.5, r  # measured +5.0


def test_exemplar_tells_surrogate_classes_apart_and_beats_random_init(learn) -> None:
    r = learn("exemplar", steps=STEPS, width=WIDTH,
              overrides=["view_args.scale=[1.0, 1.0]", "data.limit=256", "optim.lr=0.2"])
    first, last = _accuracy(r, "exemplar_acc")
    assert r["result"].method.cfg.num_samples == 256  # one surrogate class per image
    # chance is 1/256 = 0.004; targets misaligned with the copies (the class of another row)
    # stay there
    assert last > 0.05, (first, last)  # measured 0.002 -> 0.11
    assert r["trained"] > r["random"] + 3.0, r  # measured +6.7
