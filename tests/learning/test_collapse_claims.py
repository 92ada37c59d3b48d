"""The papers' collapse claims, shown and prevented on real data (scikit-learn's digits).

Each test trains the same tiny model twice on the digits train split with the trainer, changing
only the flag the paper ablates, and measures the projector outputs of the held-out digits test
split (eval mode) with :func:`selfsup.eval.collapse.collapse_report`:

- SimSiam (Chen & He 2021, sec. 4.1, figure 2): without the stop-gradient the outputs collapse
  (std ratio -> ~0, effective rank ~1); with it they stay spread.
- BYOL (Grill et al. 2020, sec. 3.2 and table 5): without the predictor and with ``tau = 0``
  (the target is a copy of the online network at every step) the outputs collapse; standard BYOL
  (predictor + EMA target) does not.

Both sides use plain SGD at a high learning rate so that the collapse shows within 60 steps; the
paper's LARS at batch 64 moves the weights too slowly to show anything in a short run.

Measured on 2 CPU cores (60 steps, batch 64, 8x8 digits, small CNN of width 8, projector 64/32):
SimSiam without / with stop-gradient: std ratio 0.008 / 0.90, effective rank 1.15 / 24.7;
BYOL without predictor and tau = 0 / standard: std ratio 0.040 / 0.74, effective rank 2.5 / 17.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig, apply_overrides
from selfsup.data.datasets import open_dataset
from selfsup.engine.runs import load_run, preprocessor
from selfsup.engine.trainer import pretrain
from selfsup.eval.collapse import collapse_report

STEPS = 60
FAST = ["view_args.hflip_p=0", "view_args.scale=[0.3, 1.0]", "optim.warmup_epochs=0",
        "optim.name=sgd", "optim.weight_decay=0"]


def _held_out_report(tmp_path: Path, name: str, method: str, lr: float,
                     **method_args: Any) -> dict[str, Any]:
    """Train ``method`` briefly on digits; collapse report of the test split's projections."""
    cfg = RunConfig(
        method=method, method_args=method_args,
        backbone=BackboneConfig(name="small_cnn", kwargs={"width": 8}),
        data=DataConfig(path="digits", image_size=8),
        train=TrainConfig(steps=STEPS, batch_size=64, out=str(tmp_path / name), progress=False,
                          tensorboard=False, log_every=STEPS, collapse_every=0, seed=0),
    )
    res = pretrain(apply_overrides(cfg, [*FAST, f"optim.lr={lr}"]))
    run = load_run(str(res.checkpoint))
    test = open_dataset("digits", split="test", image_size=run.image_size)
    x, _ = test.get_batch(torch.arange(len(test)))
    method_module = res.method.eval()
    with torch.no_grad():
        z = method_module.projector(method_module.backbone(preprocessor(run.norm,
                                                                        run.image_size)(x)))
    report = collapse_report(z)
    report["loss"] = res.final_loss
    return report


def test_simsiam_collapses_without_stop_gradient_only(tmp_path: Path) -> None:
    heads = {"proj_hidden_dim": 64, "proj_out_dim": 64, "pred_hidden_dim": 16}
    without = _held_out_report(tmp_path, "nosg", "simsiam", 1.0, stop_gradient=False, **heads)
    with_sg = _held_out_report(tmp_path, "sg", "simsiam", 1.0, stop_gradient=True, **heads)
    assert without["collapsed"] and without["std_ratio"] < 0.05, without
    assert without["effective_rank"] < 2.0, without
    assert not with_sg["collapsed"] and with_sg["std_ratio"] > 0.6, with_sg
    assert with_sg["effective_rank"] > 10.0, with_sg


def test_byol_collapses_without_predictor_and_momentum_only(tmp_path: Path) -> None:
    heads = {"proj_hidden_dim": 64, "proj_out_dim": 32, "pred_hidden_dim": 64}
    ablated = _held_out_report(tmp_path, "ablated", "byol", 0.5, use_predictor=False,
                               momentum_base=0.0, momentum_end=0.0, **heads)
    standard = _held_out_report(tmp_path, "standard", "byol", 0.5, **heads)
    assert ablated["collapsed"] and ablated["std_ratio"] < 0.08, ablated
    assert not standard["collapsed"] and standard["std_ratio"] > 0.5, standard
    assert standard["effective_rank"] > 8.0, standard
    assert standard["effective_rank"] > 3 * ablated["effective_rank"], (ablated, standard)
