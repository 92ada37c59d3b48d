"""One selfsup method on one benchmark setting through the public Python API, as one row of the
benchmark tables (run in its own process so that its peak memory is its own).

Trains with ``selfsup.pretrain`` (a :class:`~selfsup.config.RunConfig`) on the CPU with the
method's paper defaults (its registry ``Config``, ``default_optim`` and ``default_views``; head
sizes scaled only where selfsup documents a CPU setting, see :mod:`method_common`), then scores
the encoder with ``selfsup.evaluate``: weighted kNN, k=200, T=0.1, test split vs. the train split
as memory bank, beside the random-init and raw-pixel baselines. ``benchmarks/selfsup_simclr.py``
is this script for SimCLR with the SimCLR table's setting.

Usage::

    python benchmarks/selfsup_method.py --method byol --dataset mnist --epochs 3 --json out.json
    python benchmarks/selfsup_method.py --method dino --dataset cifar10 --steps 30 --no-knn
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import method_common
from common import Setting
from method_common import MethodSetting

import selfsup
from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig


def run_config(s: Setting, out: str) -> RunConfig:
    """The RunConfig of a setting: the method's paper defaults (or its small recipe, with
    ``--recipe small``), CPU, fp32, no progress bar.

    A plain :class:`common.Setting` is SimCLR with the setting's temperature and projector."""
    recipe = "paper"
    if isinstance(s, MethodSetting):
        method, method_args, recipe = s.method, dict(s.method_args), s.recipe
    else:
        method = "simclr"
        method_args = {"temperature": s.temperature, "proj_hidden_dim": s.proj_hidden_dim,
                       "proj_out_dim": s.proj_out_dim}
    kwargs = dict(s.backbone_kwargs)
    cifar_stem = kwargs.pop("cifar_stem", None)  # BackboneConfig fields of their own
    patch_size = kwargs.pop("patch_size", None)
    return RunConfig(
        method=method,
        recipe=recipe,  # pinned: `auto` would pick the small recipe on these 28/32-px sets
        method_args=method_args,
        backbone=BackboneConfig(name=s.backbone, cifar_stem=cifar_stem, patch_size=patch_size,
                                kwargs=kwargs),
        data=DataConfig(path=str(s.path), limit=s.limit),
        train=TrainConfig(epochs=s.epochs, steps=s.steps, batch_size=s.batch_size, out=out,
                          seed=s.seed, device="cpu", progress=False,
                          log_every=s.log_every),
    )


def run(s: Setting, out: str | None = None, eval_limit: int | None = None) -> dict[str, Any]:
    """Train and (if ``s.knn``) evaluate; returns the row as a dict."""
    with tempfile.TemporaryDirectory(prefix="selfsup-bench-") as tmp:
        run_dir = out or str(Path(tmp) / "run")
        t0 = time.perf_counter()
        cfg = run_config(s, run_dir)
        # selfsup.pretrain's positional method/data replace the config's, so pass them again
        res = selfsup.pretrain(cfg.method, cfg.data.path, config=cfg)
        wall = time.perf_counter() - t0
        row: dict[str, Any] = {
            "library": "selfsup", "method": cfg.method, "setting": s.to_dict(),
            "steps": res.step, "images_per_s": res.images_per_s,
            "peak_rss_mb": res.peak_memory_mb, "train_seconds": wall,
            "final_loss": res.final_loss,
            "data_loading": f"in-memory uint8 tensor, num_workers={res.cfg.data.num_workers}, "
                            "batched augmentation in the main process",
        }
        if s.knn:
            ev = selfsup.evaluate(res.checkpoint, which=("knn",), k=common.KNN_K,
                                  temperature=common.KNN_T, device="cpu", limit=eval_limit)
            row.update({"knn_top1": ev["rows"]["pretrained"]["knn_top1"],
                        "knn_top5": ev["rows"]["pretrained"]["knn_top5"],
                        "knn_random_init_top1": ev["rows"]["random init"]["knn_top1"],
                        "knn_raw_pixels_top1": ev["rows"]["raw pixels"]["knn_top1"],
                        "knn_train": ev["train_size"], "knn_test": ev["test_size"]})
        row.update(common.machine_info())
        return row


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_setting_args(p)
    method_common.add_method_args(p)
    p.add_argument("--out", help="run folder (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    row = run(method_common.setting_from(a), a.out, a.eval_limit)
    row["command"] = " ".join(["python", *sys.argv]) if argv is None else None
    common.write_json(a.json, row)


if __name__ == "__main__":
    main()
