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


# DeepMIM and LocalMIM on the same digits and ViT, MAE's CPU scaling (80 steps, batch 128,
# lr x 10 of the paper's per-256 rate, one warm-up epoch)
DEEPMIM_CPU = ["method_args.decoder_dim=128", "method_args.decoder_depth=1",
               "method_args.decoder_heads=4", "optim.lr=1.5e-3", "optim.warmup_epochs=1"]


def test_deepmim_loss_falls_and_beats_random_init(tmp_path: Path, learning_log,
                                                  knn_eval) -> None:
    """DeepMIM (Ren et al. 2023) on 16-px digits: 4-block ``vit_tiny``, 4-px patches, decoders
    on blocks 2, 3, 4 (the reference's 6, 8, 10, 12 of 12 scaled), normalised-pixel targets,
    losses summed. CPU scaling: decoders 128 wide, 1 block, 4 heads (paper 512 / 4 / 16), lr
    1.5e-3 (paper 1.5e-4 per 256), 80 steps, one warm-up epoch.

    Measured (one run, 2 cores shared with other jobs at load ~6-9, OMP_NUM_THREADS=1: 54 s of
    pre-training, ~63 s for the test): loss 2.905 -> 2.088 (three MAE losses summed); kNN
    trained 50.70 vs random init 33.15 vs raw pixels 94.99.
    """
    cfg = RunConfig(
        method="deepmim", recipe="paper",
        backbone=BackboneConfig(name="vit_tiny", patch_size=4, kwargs={"depth": 4}),
        data=DataConfig(path="digits", image_size=16),
        train=TrainConfig(steps=80, batch_size=128, out=str(tmp_path / "deepmim"),
                          progress=False, tensorboard=False, log_every=10, seed=0),
    )
    res = pretrain(apply_overrides(cfg, DEEPMIM_CPU))
    rows = [json.loads(line) for line in
            (tmp_path / "deepmim" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows]
    r = knn_eval(res.checkpoint)
    learning_log("deepmim", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(res.seconds, 1),
                 loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))
    # the total is the sum of 3 MAE losses (~1 each at init); every layer's loss falls
    assert losses[-1] < 0.85 * losses[0], losses  # measured 0.72
    for layer in (2, 3, 4):
        assert rows[-1][f"loss_l{layer}"] < 0.9 * rows[0][f"loss_l{layer}"], (layer, rows[-1])
    assert r["trained"] > r["random"] + 8.0, r  # measured +17.6


LOCALMIM_CPU = ["method_args.decoder_dim=64", "method_args.decoder_heads=4",
                "optim.lr=2e-3", "optim.warmup_epochs=1", "view_args.hflip_p=0"]


def test_localmim_loss_falls_and_beats_random_init(tmp_path: Path, learning_log,
                                                   knn_eval) -> None:
    """LocalMIM (Wang et al. 2023) on 16-px digits: 4-block ``vit_tiny``, 4-px patches, scales
    4, 2, 1, 0.5 on blocks 1, 2, 4, 4 (the reference's 2, 4, 10, 12 of 12 scaled), HOG of 1, 2,
    4 and 8-px regions, 9 bins, 1 channel. CPU scaling: decoders 64 wide, 1 block, 4 heads
    (paper 256 / 1 / 8), lr 2e-3 (paper 2e-4 per 256), 80 steps, one warm-up epoch, no flip
    (digits).

    Measured (one run, 2 cores shared with other jobs at load ~6-9, OMP_NUM_THREADS=1: 51 s of
    pre-training, ~63 s for the test): loss 0.367 -> 0.269 (every scale falls); kNN trained
    63.51 vs random init 33.15 vs raw pixels 94.99.
    """
    cfg = RunConfig(
        method="localmim", recipe="paper",
        backbone=BackboneConfig(name="vit_tiny", patch_size=4, kwargs={"depth": 4}),
        data=DataConfig(path="digits", image_size=16),
        train=TrainConfig(steps=80, batch_size=128, out=str(tmp_path / "localmim"),
                          progress=False, tensorboard=False, log_every=10, seed=0),
    )
    res = pretrain(apply_overrides(cfg, LOCALMIM_CPU))
    rows = [json.loads(line) for line in
            (tmp_path / "localmim" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows]
    r = knn_eval(res.checkpoint)
    learning_log("localmim", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(res.seconds, 1),
                 loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))
    # a scale wired to the wrong grid or a loss on visible regions stays near its start
    assert losses[-1] < 0.85 * losses[0], losses  # measured 0.73
    for s in ("4", "2", "1", "0.5"):
        assert rows[-1][f"loss_s{s}"] < 0.95 * rows[0][f"loss_s{s}"], (s, rows[-1])
    assert r["trained"] > r["random"] + 10.0, r  # measured +30.4


# MaskFeat on the same digits and ViT, scaled for 2 CPU cores: lr 2e-3 (paper 2e-4 per 256),
# one 4-px HOG cell per 4-px patch (the default 2-px cells hold 4 gradients each: measured at 150
# steps of 64, loss 0.080 -> 0.074 and kNN +3.1 over random init), no flip (digits)
MASKFEAT_CPU = ["optim.lr=3e-3", "optim.warmup_epochs=1", "view_args.hflip_p=0",
                "method_args.cell_size=4"]


def test_maskfeat_loss_falls_and_beats_random_init(tmp_path: Path, learning_log,
                                                   knn_eval) -> None:
    """MaskFeat (Wei et al. 2022) on 16-px digits: 4-block ``vit_tiny``, 4-px patches (a 4 x 4
    grid, 6 patches masked in BEiT blocks), HOG of one 4-px cell per patch, 9 bins, 1 channel:
    9 values per patch; 100 steps of batch 64.

    Measured (one run, 2 cores shared with 4 other trainings, 139 CPU-s in all): loss 0.072 ->
    0.060; kNN trained 40.11 vs random init 35.38 vs raw pixels 94.99 (mean patch token).
    """
    cfg = RunConfig(
        method="maskfeat", recipe="paper",
        backbone=BackboneConfig(name="vit_tiny", patch_size=4, kwargs={"depth": 4}),
        data=DataConfig(path="digits", image_size=16),
        train=TrainConfig(steps=100, batch_size=64, out=str(tmp_path / "maskfeat"),
                          progress=False, tensorboard=False, log_every=10, seed=0),
    )
    res = pretrain(apply_overrides(cfg, MASKFEAT_CPU))
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "maskfeat" / "metrics.jsonl").read_text().splitlines()]
    r = knn_eval(res.checkpoint)
    learning_log("maskfeat", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(res.seconds, 1),
                 loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))
    # a head regressing the wrong image's HOG or scoring visible patches stays at the targets'
    # variance (measured 0.83 of the first logged loss)
    assert losses[-1] < 0.9 * losses[0], losses
    assert r["trained"] > r["random"] + 2.0, r  # measured +4.7
