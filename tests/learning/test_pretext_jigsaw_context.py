"""Jigsaw and context prediction learn on real data: the pretext accuracy rises far above
chance and the encoder beats its random init in kNN (protocol of tests/learning/conftest.py:
16-px digits, batch 128, seed 0; raw pixels recorded beside).

CPU scaling for the 8 s budget: the small CNN at width 16 (128 features), 80 steps, heads
shrunk (Jigsaw ``tile_dim=128``, ``hidden_dim=512``, P = 100 permutations, the released Caffe
model's set size; context prediction ``patch_dim=128``, ``hidden_dim=256``). The short runs need
faster optimisers than the papers' 350k / 1.7M iterations: Jigsaw lr 0.2 at batch 256 (paper
0.01), context prediction SGD with momentum 0.9 (the reference's plain SGD gives +1.7 over
random init at seed 0, no more than the calibration below). Everything else is the paper
default (tile gaps and per-tile normalisation; the centre and one random neighbour, gaps,
jitter, pixelation; digits are grey, so colour dropping only centres the patch).

The evaluated encoder's BatchNorm statistics are those of whole images (``bn_stats="image"``,
:func:`selfsup.nn.tiles.encode_tiles`). Much of the gain over random init is that calibration
alone: the random-init encoder with its BatchNorm statistics re-estimated on the training
images scores 86.63 where random init scores 83.84 (printed by each test, not asserted: the
trained encoders lead it by only 1.1 and 0.8 points); with the statistics of the tiles
(``bn_stats="tiles"``) the trained Jigsaw encoder scored 80.22.

Measured (seed 0, one intra-op thread on 2 shared cores; random init 83.84, raw pixels 94.99):
Jigsaw pretext accuracy 0.76 on the test digits' puzzles (chance 0.01; 0.56 on the last
training batch, dropout on), kNN 87.74 (seeds 1 / 2: 87.74 / 84.68), 4.8 s; context prediction
pretext accuracy 0.45 (chance 0.125), kNN 87.47 (seed 1: 85.79), 1.6 s. With two threads (other
reduction orders): Jigsaw 0.76 / 87.19, context prediction 0.45 / 86.63.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from selfsup.engine import checkpoint as ckpt
from selfsup.engine.evaluate import eval_data, evaluate_checkpoint
from selfsup.engine.runs import load_run, preprocessor
from selfsup.eval.report import raw_pixel_features
from selfsup.nn.tiles import batch_statistics

STEPS, WIDTH = 80, 16


def _held_out_accuracy(r: dict[str, Any], method: str) -> tuple[float, float]:
    """Pretext accuracy of the trained method on puzzles / pairs of the digits test images
    (dropout off, tiles under their own batch statistics), and the last logged training-batch
    accuracy."""
    res = r["result"]
    run = load_run(str(res.checkpoint))
    prep = preprocessor(run.norm, run.image_size)
    x = raw_pixel_features(eval_data("digits", None).test, prep)
    x = x.view(-1, run.in_chans, run.image_size, run.image_size)
    m = res.method.eval()
    torch.manual_seed(0)
    with torch.no_grad(), batch_statistics(m.backbone, include_eval=True):
        if method == "jigsaw":
            tiles, labels = m.make_puzzles(x)
            logits, _ = m.classify(tiles)
        else:
            patches, pairs, labels = m.make_patches(x)
            logits, _ = m.classify(patches, pairs)
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    return (logits.argmax(-1) == labels).float().mean().item(), rows[-1]["pretext_acc"]


def _calibrated_random_knn(r: dict[str, Any], tmp: Path) -> float:
    """kNN top-1 of the random-init encoder with its BatchNorm statistics re-estimated on the
    training images (the share of the gain that calibration alone explains)."""
    res = r["result"]
    run = load_run(str(res.checkpoint))
    enc = run.random_init(seed=0)
    for mod in enc.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # a plain average over the passes
    x = raw_pixel_features(eval_data("digits", None).train, preprocessor(run.norm, run.image_size))
    enc.train()
    with torch.no_grad():
        for chunk in x.view(-1, run.in_chans, run.image_size, run.image_size).split(256):
            enc(chunk)
    payload = ckpt.load(str(res.checkpoint))
    payload["model"].update({f"backbone.{k}": v for k, v in enc.state_dict().items()})
    path = tmp / "random_calibrated.pt"
    torch.save(payload, path)
    rows = evaluate_checkpoint(str(path), "digits", which=("knn",), baselines=False)["rows"]
    return float(rows["pretrained"]["knn_top1"])


def test_jigsaw_solves_puzzles_and_beats_random_init(learn, tmp_path: Path) -> None:
    r = learn("jigsaw", steps=STEPS, width=WIDTH, overrides=["optim.lr=0.2"],
              num_permutations=100, tile_dim=128, hidden_dim=512)
    held_out, logged = _held_out_accuracy(r, "jigsaw")
    calibrated = _calibrated_random_knn(r, tmp_path)
    print(f"jigsaw: pretext accuracy {held_out:.3f} held out, {logged:.3f} last batch; "
          f"kNN of the BN-calibrated random init {calibrated:.2f}")
    # a tile shuffle that disagrees with the label (an inverse permutation, tiles in cell
    # order) or a classifier that pools the slots stays at chance (0.01)
    assert held_out > 0.4, held_out  # measured 0.76
    assert logged > 0.25, logged  # measured 0.56 (dropout on)
    assert r["trained"] > r["random"] + 2.0, r  # measured +3.9


def test_context_prediction_learns_positions_and_beats_random_init(learn, tmp_path: Path
                                                                   ) -> None:
    r = learn("context_prediction", steps=STEPS, width=WIDTH, overrides=["optim.momentum=0.9"],
              patch_dim=128, hidden_dim=256)
    held_out, logged = _held_out_accuracy(r, "context_prediction")
    calibrated = _calibrated_random_knn(r, tmp_path)
    print(f"context_prediction: pretext accuracy {held_out:.3f} held out, {logged:.3f} last "
          f"batch; kNN of the BN-calibrated random init {calibrated:.2f}")
    # swapped labels (pos2lbl read as (y, x)) or patches cut at the wrong cells stay at 0.125
    assert held_out > 0.3, held_out  # measured 0.45
    assert r["trained"] > r["random"] + 2.0, r  # measured +3.6
