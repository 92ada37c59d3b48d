"""The learning-test protocol shared by every method: a short pretraining run on scikit-learn's
digits (real data that ships with scikit-learn), then weighted kNN (k=200, T=0.1) on the digits
test split for the trained encoder and for the same encoder at random init.

Digits are 8x8; they are upsampled to 16 px so random resized crops have room. Views are
digit-appropriate (no horizontal flip: a flipped digit is another symbol; crop scale (0.3, 1) since
the digit fills the frame). Warm-up is one epoch: the runs are a few hundred steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig, apply_overrides
from selfsup.engine.evaluate import evaluate_checkpoint
from selfsup.engine.trainer import pretrain

PROTOCOL = ["view_args.scale=[0.3, 1.0]", "view_args.hflip_p=0", "optim.warmup_epochs=1"]


@pytest.fixture
def learn(tmp_path: Path):
    """``learn(method, steps=150, batch_size=128, overrides=(), **method_args)`` ->
    ``{"trained": kNN top-1, "random": kNN top-1 at random init, "raw": raw pixels, "result":
    PretrainResult}``."""

    def run(method: str, steps: int = 150, batch_size: int = 128, overrides: Sequence[str] = (),
            width: int = 32, **method_args: Any) -> dict[str, Any]:
        cfg = RunConfig(
            method=method, method_args=method_args,
            backbone=BackboneConfig(name="small_cnn", kwargs={"width": width}),
            data=DataConfig(path="digits", image_size=16),
            train=TrainConfig(steps=steps, batch_size=batch_size, out=str(tmp_path / method),
                              progress=False, tensorboard=False, log_every=10, seed=0),
        )
        res = pretrain(apply_overrides(cfg, [*PROTOCOL, *overrides]))
        ev = evaluate_checkpoint(str(res.checkpoint), "digits", which=("knn",))
        rows = ev["rows"]
        return {"trained": rows["pretrained"]["knn_top1"],
                "random": rows["random init"]["knn_top1"],
                "raw": rows["raw pixels"]["knn_top1"], "result": res}

    return run
