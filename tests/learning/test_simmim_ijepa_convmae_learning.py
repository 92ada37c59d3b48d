"""SimMIM, I-JEPA and ConvMAE on real data (issue 11): scikit-learn's digits at 16 px,
shallow encoders (``vit_tiny`` / ``convvit_tiny``), the learning protocol's kNN (trained vs random init vs raw
pixels), features as each method evaluates them (SimMIM's and I-JEPA's ``eval_pool = "avg"``: the
mean patch token; ConvMAE: the mean stage-3 token).

CPU scaling, documented: a few blocks instead of 12, a few hundred steps instead of 800 epochs,
lr raised accordingly, one warm-up epoch. MIM features are weak under kNN on this tiny set (the
papers judge them by fine-tuning).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from selfsup.config import BackboneConfig


def _vit2(patch: int) -> BackboneConfig:
    return BackboneConfig(name="vit_tiny", patch_size=patch, kwargs={"depth": 2})


def test_simmim_loss_falls_and_beats_random_init(tmp_path: Path, learning_log, knn_eval,
                                                digits_run) -> None:
    """Measured (one run, 2 cores shared with other jobs, 122 s): L1 0.879 -> 0.516; kNN trained
    39.83 vs random init 33.43 vs raw pixels 94.99 (150 steps gave only 35.38: the margin
    needs the 300)."""
    res, rows = digits_run(tmp_path / "simmim", "simmim", _vit2(4), 300, 128,
                           ["optim.lr=3e-3", "optim.warmup_epochs=1"])
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


@pytest.mark.slow  # a long training run: `make test-slow`, not `make test`
def test_ijepa_loss_falls_and_beats_random_init(tmp_path: Path, learning_log, knn_eval,
                                               digits_run) -> None:
    """I-JEPA on 2-px patches (an 8 x 8 grid, so that 4 target blocks of 15-20% and a context
    block exist; ``min_keep`` scaled to 3), 2-block ``vit_tiny``, predictor 96 wide / 2 blocks,
    AdamW 5e-4, 300 steps of 128, one warm-up epoch, the paper's momentum 0.996 -> 1.

    Measured (one run each, idle 2-core machine, seed 0): smooth-L1 0.392 -> 0.098, kNN trained
    41.50 vs random init 28.41 vs raw pixels 94.99 (95 s of training). Shorter or coarser runs
    do not get there: 200 steps 32.03 vs 28.41; 4-px patches (4 x 4 grid) 300 steps 36.21 vs
    33.43; 4-px patches at lr 1e-3 collapse (loss 0.364 -> 0.019 while kNN stays at 34.5, effective
    rank 2.4): a falling loss alone does not show that I-JEPA learns, the kNN margin does.
    """
    res, rows = digits_run(tmp_path / "ijepa", "ijepa", _vit2(2), 300, 128, [
        "optim.lr=5e-4", "optim.warmup_epochs=1", "method_args.pred_dim=96",
        "method_args.pred_depth=2"])
    losses = [r["loss"] for r in rows]
    r = knn_eval(res.checkpoint)
    learning_log("ijepa", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(res.seconds, 1),
                 loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))
    # a predictor that cannot see the context, or targets from the wrong patches, stays high
    assert losses[-1] < 0.5 * losses[0], losses
    # a collapsed target (constant features) also drives the loss down; it does not move kNN
    assert r["trained"] > r["random"] + 6.0, r  # measured +13.1


@pytest.mark.slow  # a long training run: `make test-slow`, not `make test`
def test_convmae_loss_falls_and_encoder_is_not_broken(tmp_path: Path, learning_log,
                                                      knn_eval, digits_run) -> None:
    """ConvMAE (Gao et al. 2022) on 16-px digits: ``convvit_tiny`` with 4 transformer blocks
    (strides (1, 2, 2): a 4 x 4 grid of 4-px patches, conv stages at 16 x 16 and 8 x 8), decoder
    128 wide / 2 blocks / 4 heads, AdamW 1.5e-3, 120 steps of 128, crop 0.3-1, no flip.

    Measured in this test (idle 2-core machine, seed 0, 49 s of training): normalised-pixel
    loss 0.904 -> 0.690, kNN trained 46.80 vs random init 57.94 vs raw pixels 94.99. Probes:
    150 steps: normalised-pixel loss
    0.907 -> 0.679, kNN trained 35.65 vs random init 57.94 vs raw pixels 94.99, and fine-tuning
    that encoder on 10% of the labels (30 epochs) 28.1 vs 42.6 from random init; 300 steps at lr
    3e-3: 0.893 -> 0.638, kNN 40.67 vs 57.94, linear probe 91.64 vs 93.87 vs 95.54. The random ConvViT's convolution stages are
    already a strong feature extractor on digits and this budget does not beat them, so the
    paper's claim (better features after pre-training, judged by fine-tuning at ImageNet scale)
    is not asserted here; the README lists it as not shown. What is asserted: the masked
    reconstruction learns (a decoder cut off from the encoder, or targets from other patches,
    stay near the initial ~0.9; the leak of masked pixels into visible features is a unit test)
    and the trained encoder's features still separate the digits far above chance (10%; a
    collapsed encoder gives ~10).
    """
    res, rows = digits_run(
        tmp_path / "convmae", "convmae", BackboneConfig(name="convvit_tiny", kwargs={"depth": 4}),
        120, 128, ["method_args.decoder_dim=128", "method_args.decoder_depth=2",
                   "method_args.decoder_heads=4", "optim.lr=1.5e-3", "optim.warmup_epochs=1",
                   "view_args.hflip_p=0", "view_args.scale=[0.3, 1.0]"])
    losses = [r["loss"] for r in rows]
    r = knn_eval(res.checkpoint)
    learning_log("convmae", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(res.seconds, 1),
                 loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))
    assert losses[-1] < 0.85 * losses[0], losses  # measured 0.763
    assert r["trained"] > 25.0, r
