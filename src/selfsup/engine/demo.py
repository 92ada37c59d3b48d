"""``make demo`` / ``selfsup demo``: SimCLR on scikit-learn's digits (ships with scikit-learn, no
download), then the evaluation table: the pretrained encoder beside the same encoder at random init
and raw pixels, by kNN and linear probe on the digits test split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig
from selfsup.engine.evaluate import evaluate_checkpoint
from selfsup.engine.trainer import pretrain
from selfsup.eval.report import format_table

# Tuned for about two minutes on two CPU cores (see docs/benchmarks.md for the measured run).
DEMO_EPOCHS = 100
DEMO_IMAGE_SIZE = 16  # digits are 8x8; upsampling leaves room for random resized crops
DEMO_BATCH = 256
# Digit-appropriate views: a mirrored digit is another symbol (no flip) and digits fill the frame
# (crops keep at least 30% of it). Temperature 0.2 suits the small batch (SimCLR B.9 / Table 5).
DEMO_VIEW_ARGS = {"hflip_p": 0.0, "scale": [0.3, 1.0]}
DEMO_METHOD_ARGS = {"temperature": 0.2}


def demo_config(out: str, epochs: int | None = None, steps: int | None = None,
                progress: bool = True) -> RunConfig:
    """The demo's run: SimCLR + small CNN on digits at 16 px."""
    return RunConfig(
        method="simclr",
        method_args=dict(DEMO_METHOD_ARGS),
        view_args=dict(DEMO_VIEW_ARGS),
        backbone=BackboneConfig(name="small_cnn"),
        data=DataConfig(path="digits", split="train", image_size=DEMO_IMAGE_SIZE),
        train=TrainConfig(epochs=epochs or DEMO_EPOCHS, steps=steps, batch_size=DEMO_BATCH,
                          out=out, progress=progress, ckpt_every=100, tensorboard=False),
    )


def run_demo(out: str = "runs/demo", *, epochs: int | None = None, steps: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Pretrain, evaluate, and return ``{"text": table, "json": results}``."""
    run_dir = Path(out) / time.strftime("%Y%m%d-%H%M%S")
    cfg = demo_config(str(run_dir), epochs, steps, progress)
    res = pretrain(cfg)
    ev = evaluate_checkpoint(str(res.checkpoint), "digits", baselines=True)
    rows = ev["rows"]
    text = "\n".join([
        f"SimCLR, small CNN, digits ({ev['train_size']} train / {ev['test_size']} test), "
        f"{res.step} steps in {res.seconds:.0f} s ({res.images_per_s:.0f} images/s)",
        format_table(rows),
        f"run folder: {res.run_dir}",
    ])
    data = {"run_dir": str(res.run_dir), "steps": res.step, "seconds": res.seconds,
            "images_per_s": res.images_per_s, "final_loss": res.final_loss, "rows": rows,
            "train_size": ev["train_size"], "test_size": ev["test_size"]}
    return {"text": text, "json": data}
