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

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from selfsup.config import BackboneConfig

VIT4 = BackboneConfig(name="vit_tiny", patch_size=4, kwargs={"depth": 4})
MAE_CPU = ["method_args.decoder_dim=128", "method_args.decoder_depth=2",
           "method_args.decoder_heads=4", "optim.lr=1.5e-3", "optim.warmup_epochs=1"]


def test_mae_loss_falls_and_beats_random_init(tmp_path: Path, learning_log, knn_eval,
                                             digits_run) -> None:
    res, rows = digits_run(tmp_path / "mae", "mae", VIT4, 150, 128, MAE_CPU)
    losses = [row["loss"] for row in rows]
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
                                                  knn_eval, digits_run) -> None:
    """DeepMIM (Ren et al. 2023) on 16-px digits: 4-block ``vit_tiny``, 4-px patches, decoders
    on blocks 2, 3, 4 (the reference's 6, 8, 10, 12 of 12 scaled), normalised-pixel targets,
    losses summed. CPU scaling: decoders 128 wide, 1 block, 4 heads (paper 512 / 4 / 16), lr
    1.5e-3 (paper 1.5e-4 per 256), 80 steps, one warm-up epoch.

    Measured (one run, 2 cores shared with other jobs at load ~6-9, OMP_NUM_THREADS=1: 54 s of
    pre-training, ~63 s for the test): loss 2.905 -> 2.088 (three MAE losses summed); kNN
    trained 50.70 vs random init 33.15 vs raw pixels 94.99.
    """
    res, rows = digits_run(tmp_path / "deepmim", "deepmim", VIT4, 80, 128, DEEPMIM_CPU)
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
                                                   knn_eval, digits_run) -> None:
    """LocalMIM (Wang et al. 2023) on 16-px digits: 4-block ``vit_tiny``, 4-px patches, scales
    4, 2, 1, 0.5 on blocks 1, 2, 4, 4 (the reference's 2, 4, 10, 12 of 12 scaled), HOG of 1, 2,
    4 and 8-px regions, 9 bins, 1 channel. CPU scaling: decoders 64 wide, 1 block, 4 heads
    (paper 256 / 1 / 8), lr 2e-3 (paper 2e-4 per 256), 80 steps, one warm-up epoch, no flip
    (digits).

    Measured (one run, 2 cores shared with other jobs at load ~6-9, OMP_NUM_THREADS=1: 51 s of
    pre-training, ~63 s for the test): loss 0.367 -> 0.269 (every scale falls); kNN trained
    63.51 vs random init 33.15 vs raw pixels 94.99.
    """
    res, rows = digits_run(tmp_path / "localmim", "localmim", VIT4, 80, 128, LOCALMIM_CPU)
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
                                                   knn_eval, digits_run) -> None:
    """MaskFeat (Wei et al. 2022) on 16-px digits: 4-block ``vit_tiny``, 4-px patches (a 4 x 4
    grid, 6 patches masked in BEiT blocks), HOG of one 4-px cell per patch, 9 bins, 1 channel:
    9 values per patch; 100 steps of batch 64.

    Measured (one run, 2 cores shared with 4 other trainings, 139 CPU-s in all): loss 0.072 ->
    0.060; kNN trained 40.11 vs random init 35.38 vs raw pixels 94.99 (mean patch token).
    """
    res, rows = digits_run(tmp_path / "maskfeat", "maskfeat", VIT4, 100, 64,
                           MASKFEAT_CPU)
    losses = [row["loss"] for row in rows]
    r = knn_eval(res.checkpoint)
    learning_log("maskfeat", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(res.seconds, 1),
                 loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3))
    # a head regressing the wrong image's HOG or scoring visible patches stays at the targets'
    # variance (measured 0.83 of the first logged loss)
    assert losses[-1] < 0.9 * losses[0], losses
    assert r["trained"] > r["random"] + 2.0, r  # measured +4.7


# iBOT on the same digits and ViT. CPU scaling: heads K = K' = 256, hidden 256, bottleneck 64
# (paper 8192 / 2048 / 256); tau_t = tau_t' = 0.04 throughout (the paper's warm-up start: the
# [CLS] teacher drifts towards uniform at 0.07 on this set); two global crops (scale 0.25-1) and
# no local crops (each 10-crop step costs ~4x); lr 1e-3 (paper 5e-4 x B / 256), 1 warm-up epoch
IBOT_CPU = ["views=byol", "view_args.scale=[0.25, 1.0]", "view_args.hflip_p=0",
            "method_args.out_dim=256", "method_args.patch_out_dim=256",
            "method_args.hidden_dim=256", "method_args.bottleneck_dim=64",
            "method_args.teacher_temp=0.04", "method_args.teacher_patch_temp=0.04",
            "optim.lr=1e-3", "optim.warmup_epochs=1"]


def test_ibot_patch_loss_falls_and_beats_random_init(tmp_path: Path, learning_log,
                                                     knn_eval, digits_run) -> None:
    """iBOT (Zhou et al. 2022) on 16-px digits: 4-block ``vit_tiny``, 4-px patches (a 4 x 4
    grid; half the global crops masked at 10-50% in blocks), 100 steps of batch 32, settings
    in ``IBOT_CPU``; paper momentum 0.996, last layer frozen for the first epoch (45 steps).

    Measured (one run, seed 0, idle 2-core machine: 12.2 s of training; 504 s with 4-5 other
    jobs beside it): masked-patch loss 2.556 -> 2.182 (its
    targets are the moving teacher's, so it falls slowly; lowest 1.921), [CLS] loss near
    log 256; kNN trained 41.23 vs random init 33.15 vs raw pixels 94.99 ([CLS] token).
    """
    res, rows = digits_run(tmp_path / "ibot", "ibot", VIT4, 100, 32, IBOT_CPU)
    patch = [row["patch"] for row in rows]
    r = knn_eval(res.checkpoint)
    learning_log("ibot", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(res.seconds, 1),
                 loss_first=round(patch[0], 3), loss_last=round(patch[-1], 3))
    # a student whose masked tokens cannot see their context (or a loss on the wrong patches)
    # does not move towards the teacher's patch distributions
    assert patch[-1] < 0.9 * patch[0], patch  # measured 0.854
    assert r["trained"] > r["random"] + 4.0, r  # measured +8.1


# BEiT's two stages on the same digits. Tokenizer: a 2-block vit_tiny VQ-VAE with 32 codes of 8
# dims, cosine lookup (l2_norm: the plain lookup leaves most codes dead this early), Adam 1e-3
# (paper 2e-4), 40 steps. BEiT: the 4-block vit_tiny, AdamW 1.5e-3 at 256 (paper 1.875e-4),
# 80 steps; both with the digit views of the learning protocol (crop 0.3-1, no flip).
BEIT_VIEWS = ["view_args.scale=[0.3, 1.0]", "view_args.hflip_p=0", "optim.warmup_epochs=1"]
VQ_TOKENIZER_CPU = ["method_args.codebook_size=32", "method_args.code_dim=8",
                    "method_args.l2_norm=true", "method_args.hidden_dim=64", "optim.lr=1e-3"]


@pytest.mark.slow  # a long training run: `make test-slow`, not `make test`
def test_beit_tokenizer_then_masked_tokens_beat_random_init(tmp_path: Path, learning_log,
                                                            knn_eval, digits_run) -> None:
    """BEiT (Bao et al. 2022) after its tokenizer stage, on 16-px digits with 4-px patches (a
    4 x 4 grid, 6 patches masked in blocks of >= 1): ``vq_tokenizer`` trains, then ``beit``
    loads its ``last.pt`` and predicts its ids of the masked patches.

    Measured (one run, seed 0, idle 2-core machine, 33 s of training for both stages):
    tokenizer reconstruction MSE 0.820 -> 0.198 with codebook perplexity 11.0 of 32; BEiT's
    masked-token CE 2.767 -> 2.124 (below log 11.0 = 2.40, the labels' marginal entropy); kNN
    trained 43.18 vs random init 35.38 vs raw pixels 94.99 (mean patch token, BEiT's eval_pool).
    """
    # one intra-op thread, as the resume grid: on the shared 2-core machine two threads wait on
    # each other behind the neighbours' jobs (a longer version of this test: > 600 s with 2,
    # 166 s with 1, under a load average of ~10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _beit_run(tmp_path, learning_log, knn_eval, digits_run)
    finally:
        torch.set_num_threads(threads)


def _beit_run(tmp_path: Path, learning_log: Any, knn_eval: Any, digits_run: Any) -> None:
    tok, tok_log = digits_run(
        tmp_path / "tok", "vq_tokenizer",
        BackboneConfig(name="vit_tiny", patch_size=4, kwargs={"depth": 2}), 40, 128,
        [*BEIT_VIEWS, *VQ_TOKENIZER_CPU])
    res, rows = digits_run(tmp_path / "beit", "beit", VIT4, 80, 128,
                           [*BEIT_VIEWS, "optim.lr=1.5e-3"],
                           method_args={"tokenizer": str(tok.checkpoint)})
    losses = [row["loss"] for row in rows]
    r = knn_eval(res.checkpoint)
    recon = [rec["recon"] for rec in tok_log]
    learning_log("beit", r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                 steps=res.step, pretrain_s=round(tok.seconds + res.seconds, 1),
                 loss_first=round(losses[0], 3), loss_last=round(losses[-1], 3),
                 tokenizer_recon_first=round(recon[0], 3),
                 tokenizer_recon_last=round(recon[-1], 3),
                 tokenizer_perplexity=round(tok_log[-1]["perplexity"], 1))
    # a decoder that ignores the codes (no straight-through gradient) stays near the variance 1
    assert recon[-1] < 0.5 * recon[0], recon
    # labels from the wrong view or a loss on visible patches would not fall like this; a head
    # that only learns the labels' marginal stops at their entropy (log perplexity)
    assert losses[-1] < 0.85 * losses[0], losses
    assert losses[-1] < math.log(tok_log[-1]["perplexity"]), (losses, tok_log[-1])
    assert r["trained"] > r["random"] + 4.0, r  # measured +7.8
