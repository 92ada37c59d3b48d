"""Masked image modeling learns on real data (issue 11): MAE on 16-px digits with a 4-block
``vit_tiny`` (4-px patches: a 4 x 4 grid, 4 visible patches at 75% masking).

CPU scaling, documented: decoder 128 wide, 2 blocks, 4 heads (paper 512 / 8 / 16), AdamW lr
1.5e-3 at batch 256 (paper 1.5e-4: 150 steps instead of 800 epochs), one warm-up epoch. MAE's
features are weak under kNN (the paper judges them by fine-tuning), and a ViT on 1438 8-px
digits is far below raw pixels; the test asserts what MAE claims at this budget: the
masked-patch loss falls and the encoder beats its random init.

Measured (one run, 2 cores shared with a benchmark): loss 0.915 -> 0.724; kNN trained 49.58 vs
random init 33.15 vs raw pixels 94.99 (CLS token, the ViT's default pooling).
"""

from __future__ import annotations

import json
from pathlib import Path

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig, apply_overrides
from selfsup.engine.trainer import pretrain

MAE_CPU = ["method_args.decoder_dim=128", "method_args.decoder_depth=2",
           "method_args.decoder_heads=4", "optim.lr=1.5e-3", "optim.warmup_epochs=1"]


def test_mae_loss_falls_and_beats_random_init(tmp_path: Path, learning_log, knn_eval) -> None:
    cfg = RunConfig(
        method="mae", recipe="paper",
        backbone=BackboneConfig(name="vit_tiny", patch_size=4, kwargs={"depth": 4}),
        data=DataConfig(path="digits", image_size=16),
        train=TrainConfig(steps=150, batch_size=128, out=str(tmp_path / "mae"), progress=False,
                          tensorboard=False, log_every=10, seed=0),
    )
    res = pretrain(apply_overrides(cfg, MAE_CPU))
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "mae" / "metrics.jsonl").read_text().splitlines()]
    r = knn_eval(res.checkpoint)
    learning_log("mae", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(res.seconds, 1),
                 loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))
    # a decoder that never sees the visible tokens, or a loss on the wrong patches, stays near
    # its initial value (the masked patches' normalised pixels have variance ~1)
    assert losses[-1] < 0.85 * losses[0], losses
    assert r["trained"] > r["random"] + 8.0, r  # measured +16.4
