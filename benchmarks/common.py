"""Shared pieces of the SimCLR benchmarks: the benchmark settings (one source of truth for both
libraries, taken from selfsup's SimCLR paper defaults), the machine description, the kNN
evaluation used for *every* encoder, throughput bookkeeping and peak-memory readings.

The benchmark scripts run as ``python benchmarks/<script>.py`` (this folder is on ``sys.path``)
and import this module as ``common``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Importing these registers the built-in datasets, view presets, methods and backbones.
import selfsup.data.datasets
import selfsup.data.views
import selfsup.methods
import selfsup.nn.backbones  # noqa: F401
from selfsup.config import OptimConfig
from selfsup.data.datasets import ImageDataset, open_dataset
from selfsup.data.stats import Normalization, compute_normalization
from selfsup.engine.optim import resolve, scaled_lr
from selfsup.engine.runs import preprocessor
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.methods.simclr import SimCLR, SimCLRConfig
from selfsup.nn.backbones import create_backbone

SHARED = Path(os.environ.get("SELFSUP_SHARED_DATA", "/work/shared/data"))
DATASETS = {
    "mnist": SHARED / "mnist" / "mnist.npz",
    "cifar10": SHARED / "cifar10" / "cifar10.npz",
}
LOG_EVERY = 10  # throughput window in optimiser steps (the same for both libraries)
KNN_K = 200  # InstDisc / DINO kNN protocol
KNN_T = 0.1


@dataclass
class Setting:
    """One benchmark configuration, identical for selfsup and lightly.

    Every hyper-parameter below comes from selfsup's SimCLR defaults (Chen et al. 2020: LARS,
    lr 0.3 x B/256, weight decay 1e-6, momentum 0.9, 10 warm-up epochs capped at half the run,
    cosine to 0; projector 2048-128 with BN; NT-Xent temperature 0.5) so both sides read the same
    numbers.
    """

    dataset: str  # key of DATASETS
    backbone: str  # selfsup backbone name
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 256
    epochs: int = 3
    steps: int | None = None  # cap on optimiser steps (overrides epochs)
    limit: int | None = None  # use only the first N training images (quick runs)
    num_workers: int = 0  # lightly's DataLoader workers (selfsup keeps its own default)
    seed: int = 0
    knn: bool = True
    log_every: int = LOG_EVERY  # throughput window in optimiser steps
    temperature: float = SimCLRConfig.temperature
    proj_hidden_dim: int = SimCLRConfig.proj_hidden_dim
    proj_out_dim: int = SimCLRConfig.proj_out_dim

    @property
    def path(self) -> Path:
        return DATASETS[self.dataset]

    def optim(self) -> OptimConfig:
        """selfsup's resolved SimCLR optimiser settings (LARS, paper defaults)."""
        return resolve(OptimConfig(), SimCLR.default_optim)

    def peak_lr(self) -> float:
        return scaled_lr(self.optim(), self.batch_size)

    def schedule(self, n_train: int) -> tuple[int, int, int]:
        """``(steps_per_epoch, total_steps, warmup_steps)`` exactly as selfsup's trainer computes
        them (drop_last batches; warm-up capped at half the run)."""
        per_epoch = n_train // self.batch_size
        total = self.steps or self.epochs * per_epoch
        warm = self.optim().warmup_epochs
        assert warm is not None
        return per_epoch, total, min(round(warm * per_epoch), total // 2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        o = self.optim()
        d["optim"] = {"name": o.name, "peak_lr": self.peak_lr(), "weight_decay": o.weight_decay,
                      "momentum": o.momentum, "warmup_epochs": o.warmup_epochs,
                      "min_lr_ratio": o.min_lr_ratio}
        return d


def build_backbone(s: Setting, channels: int, image_size: int) -> nn.Module:
    """The selfsup backbone of a setting (both libraries train this very module class)."""
    return create_backbone(s.backbone, in_chans=channels, image_size=image_size,
                           **s.backbone_kwargs)


# ----------------------------------------------------------------------------- data / eval


def train_data(s: Setting) -> ImageDataset:
    """The training split (optionally only its first ``s.limit`` images)."""
    ds = open_dataset(str(s.path), split="train")
    return ds.subset(range(min(s.limit, len(ds)))) if s.limit else ds


def normalization(ds: ImageDataset, seed: int = 0) -> Normalization:
    """The data's normalisation as selfsup computes it (uint8 -> [0, 1], mean/std from data)."""
    return compute_normalization(ds, seed=seed)


def knn_eval(encoder: nn.Module, s: Setting, norm: Normalization, image_size: int,
             eval_limit: int | None = None) -> dict[str, float]:
    """Weighted kNN (k=200, T=0.1, cosine) top-1/top-5 of ``encoder`` on the test split with the
    train split as memory bank: the same selfsup code (:func:`extract_features` +
    :func:`knn_accuracy` with :func:`preprocessor`) that ``selfsup.evaluate`` runs, applied to
    every encoder of the benchmark."""
    train = open_dataset(str(s.path), split="train")
    test = open_dataset(str(s.path), split="test")
    if eval_limit:
        train = train.subset(range(min(eval_limit, len(train))))
        test = test.subset(range(min(eval_limit, len(test))))
    prep = preprocessor(norm, image_size)
    encoder = encoder.to("cpu").eval()
    ftr, ytr = extract_features(encoder, train, prep, batch_size=256, device="cpu")
    fte, yte = extract_features(encoder, test, prep, batch_size=256, device="cpu")
    r = knn_accuracy(ftr, ytr, fte, yte, k=KNN_K, temperature=KNN_T)
    return {"knn_top1": r["top1"], "knn_top5": r["top5"], "knn_train": len(train),
            "knn_test": len(test)}


# ----------------------------------------------------------------------------- measurements


class Throughput:
    """Images/s per window of ``every`` optimiser steps; the steady-state figure is the mean of
    the window rates without the first window (start-up), as selfsup's trainer reports it."""

    def __init__(self, every: int = LOG_EVERY) -> None:
        self.every = every
        self.rates: list[float] = []
        self._seen = 0
        self._t = time.perf_counter()

    def step(self, step: int, images: int, last: bool = False) -> None:
        """Count ``images`` of optimiser step ``step`` (1-based); close a window when due."""
        self._seen += images
        if step % self.every == 0 or last:
            now = time.perf_counter()
            self.rates.append(self._seen / max(now - self._t, 1e-9))
            self._seen, self._t = 0, now

    @property
    def steady(self) -> float:
        r = self.rates[1:] or self.rates
        return sum(r) / max(len(r), 1)


def peak_rss_mb() -> dict[str, float]:
    """Peak resident set size of this process and of its largest finished child (DataLoader
    workers), in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": own, "peak_rss_worker_mb": kids}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Date, CPU model, core count, torch threads and library versions."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_1min": os.getloadavg()[0],  # other processes share these cores
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        import lightly

        info["lightly"] = lightly.__version__
    except ImportError:
        info["lightly"] = None
    return info


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (atomically); print it when ``path`` is None."""
    text = json.dumps(payload, indent=2, default=str)
    if path is None:
        print(text)
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(p)


SETTINGS = {
    "mnist": Setting("mnist", "small_cnn", epochs=3),
    "cifar10": Setting("cifar10", "resnet18", {"cifar_stem": True}, steps=30, knn=False),
    # recipe comparison on colour images within a CPU budget (issue 10 item 18): the MNIST
    # protocol (small CNN, batch 256, 3 epochs, kNN on all 50k / 10k images) on CIFAR-10
    "cifar10_cnn": Setting("cifar10", "small_cnn", epochs=3),
    # masked image modeling (issue 11): ViT-tiny (12 blocks, 192 wide) on 4-px patches, an 8 x 8
    # grid; the CPU budget is 100 steps of 256 (half an epoch), kNN on all 50k / 10k images
    "cifar10_vit": Setting("cifar10", "vit_tiny", {"patch_size": 4}, steps=100),
}


def add_setting_args(p: argparse.ArgumentParser) -> None:
    """The command-line options shared by both row scripts."""
    p.add_argument("--dataset", choices=sorted(SETTINGS), default="mnist")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--eval-limit", type=int, help="kNN on the first N train/test images only")
    p.add_argument("--no-knn", action="store_true")
    p.add_argument("--seed", type=int, help="seed of weights, data order and augmentation (0)")
    p.add_argument("--log-every", type=int, help=f"throughput window in steps ({LOG_EVERY})")
    p.add_argument("--json", help="write the row here (default: print it)")


def setting_from(a: argparse.Namespace) -> Setting:
    """The dataset's default setting with the command-line overrides applied."""
    changes: dict[str, Any] = {k: v for k, v in (("epochs", a.epochs), ("steps", a.steps),
                               ("batch_size", a.batch_size), ("limit", a.limit),
                               ("log_every", a.log_every), ("seed", getattr(a, "seed", None)))
                               if v is not None}
    if a.epochs is not None and a.steps is None:
        changes["steps"] = None  # --epochs alone means whole epochs
    if a.no_knn:
        changes["knn"] = False
    if getattr(a, "num_workers", None) is not None:
        changes["num_workers"] = a.num_workers
    return dataclasses.replace(SETTINGS[a.dataset], **changes)
