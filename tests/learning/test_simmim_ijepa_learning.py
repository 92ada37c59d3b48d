"""SimMIM and I-JEPA learn on real data (issue 11): scikit-learn's digits at 16 px, a shallow
``vit_tiny``, the learning protocol's kNN (trained vs random init vs raw pixels), features as
each method evaluates them (``eval_pool = "avg"``: the mean patch token).

CPU scaling, documented: 2 blocks instead of 12, a few hundred steps instead of 800 epochs, lr
raised accordingly, one warm-up epoch. MIM features are weak under kNN on this tiny set (the
papers judge them by fine-tuning); the tests assert what the methods claim at this budget: the
masked-prediction loss falls well below its initial value and the encoder beats its random
init.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig, apply_overrides
from selfsup.engine.trainer import pretrain


def _run(tmp_path: Path, method: str, steps: int, patch: int, overrides: list[str]):
    cfg = RunConfig(
        method=method, recipe="paper",
        backbone=BackboneConfig(name="vit_tiny", patch_size=patch, kwargs={"depth": 2}),
        data=DataConfig(path="digits", image_size=16),
        train=TrainConfig(steps=steps, batch_size=128, out=str(tmp_path / method),
                          progress=False, tensorboard=False, log_every=10, seed=0),
    )
    res = pretrain(apply_overrides(cfg, overrides))
    rows = [json.loads(line) for line in
            (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    return res, rows


def test_simmim_loss_falls_and_beats_random_init(tmp_path: Path, learning_log, knn_eval) -> None:
    """Measured (one run, 2 cores shared with other jobs, 122 s): L1 0.879 -> 0.516; kNN trained
    39.83 vs random init 33.43 vs raw pixels 94.99 (150 steps gave only 35.38: the margin
    needs the 300)."""
    res, rows = _run(tmp_path, "simmim", 300, 4, ["optim.lr=3e-3", "optim.warmup_epochs=1"])
    losses = [r["loss"] for r in rows]
    r = knn_eval(res.checkpoint)
    learning_log("simmim", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(res.seconds, 1),
                 loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))
    # a prediction head cut off from the encoder (or one fed the wrong tokens) cannot reconstruct
    # the masked patches and stays near the initial ~0.88; an encoder that learns nothing from
    # the masked prediction stays at its random-init kNN
    assert losses[-1] < 0.7 * losses[0], losses
    assert r["trained"] > r["random"] + 3.0, r  # measured +6.4
