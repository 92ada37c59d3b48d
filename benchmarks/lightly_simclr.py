"""lightly's SimCLR on one benchmark setting, as one row of the benchmark table (run in its own
process so that its peak memory is its own).

What is lightly's and what is shared, so that the comparison is like with like:

* lightly (1.6.0): ``SimCLRTransform`` (two views per PIL image), ``SimCLRProjectionHead``,
  ``NTXentLoss``, ``lars.LARS`` with its weight-decay groups from
  ``models.utils.get_weight_decay_parameters``, and its usual data path: a torchvision-style
  dataset (a ``uint8`` array turned into a PIL image per ``__getitem__``, as
  ``torchvision.datasets.MNIST``/``CIFAR10`` do) in a ``torch.utils.data.DataLoader`` with
  ``num_workers`` processes; the training step follows lightly's plain-PyTorch SimCLR example
  (``examples/pytorch/simclr.py``: one forward per view).
* shared with selfsup: the backbone module (selfsup's ``create_backbone``), every
  hyper-parameter (batch, steps, projector sizes, temperature, LARS lr/wd/momentum, the
  warm-up + cosine schedule as the same pure function of the step), the data's mean/std, the
  throughput windows and the kNN evaluation (:func:`common.knn_eval`).

Augmentation settings: ``input_size`` = image side, random-resized-crop scale (0.08, 1), flip 0.5,
colour jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2, no Gaussian blur (small images,
as selfsup's ``simclr`` preset at <= 64 px).

Usage::

    python benchmarks/lightly_simclr.py --dataset mnist --epochs 3 --num-workers 2 --json out.json
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import common
import numpy as np
import torch
from common import Setting
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from selfsup.utils.schedules import warmup_cosine


class ArrayImages(Dataset):
    """A torchvision-style dataset over ``[N, H, W, C]`` uint8 images: ``__getitem__`` builds a
    PIL image (mode ``L`` for one channel, ``RGB`` for three) and applies ``transform``, as
    ``torchvision.datasets.MNIST`` / ``CIFAR10`` do."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Any) -> None:
        if x.ndim != 4 or x.dtype != np.uint8 or x.shape[-1] not in (1, 3):
            raise ValueError(f"expected uint8 images [N, H, W, 1|3], got {x.shape} {x.dtype}")
        self.x = x[..., 0] if x.shape[-1] == 1 else x
        self.y = y.astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        img = Image.fromarray(self.x[i], mode="L" if self.x.ndim == 3 else "RGB")
        return self.transform(img), int(self.y[i])


class LightlySimCLRModel(nn.Module):
    """Backbone + lightly's ``SimCLRProjectionHead`` (lightly's SimCLR example model)."""

    def __init__(self, backbone: nn.Module, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = backbone
        num_features = getattr(backbone, "num_features")  # noqa: B009  (a Backbone attribute)
        self.projection_head = SimCLRProjectionHead(int(num_features), hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def load_arrays(s: Setting) -> tuple[np.ndarray, np.ndarray]:
    """Training images ``[N, H, W, C]`` uint8 and labels of a setting (first ``s.limit``)."""
    with np.load(s.path) as d:
        x, y = d["x_train"], d["y_train"]
    if x.ndim == 3:
        x = x[..., None]
    if s.limit:
        x, y = x[: s.limit], y[: s.limit]
    return np.ascontiguousarray(x), np.asarray(y)


def build(s: Setting, x: np.ndarray) -> tuple[LightlySimCLRModel, Any, Any]:
    """Model, lightly transform and the normalisation (selfsup's, computed from the data)."""
    from lightly.transforms import SimCLRTransform

    ds = common.train_data(s)
    norm = common.normalization(ds)
    size = int(x.shape[1])
    transform = SimCLRTransform(
        input_size=size, cj_prob=0.8, cj_strength=1.0, cj_bright=0.8, cj_contrast=0.8,
        cj_sat=0.8, cj_hue=0.2, min_scale=0.08, random_gray_scale=0.2, gaussian_blur=0.0,
        hf_prob=0.5, normalize={"mean": list(norm.mean), "std": list(norm.std)},
    )
    torch.manual_seed(s.seed)
    backbone = common.build_backbone(s, int(x.shape[-1]), size)
    model = LightlySimCLRModel(backbone, s.proj_hidden_dim, s.proj_out_dim)
    return model, transform, norm


def train(s: Setting, concat_views: bool = False) -> dict[str, Any]:
    """Train lightly's SimCLR; returns the row (without kNN) and the trained model."""
    from lightly.loss import NTXentLoss
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.utils.lars import LARS

    t_start = time.perf_counter()
    x, y = load_arrays(s)
    model, transform, norm = build(s, x)
    dataset = ArrayImages(x, y, transform)
    g = torch.Generator().manual_seed(s.seed)
    loader = DataLoader(dataset, batch_size=s.batch_size, shuffle=True, drop_last=True,
                        num_workers=s.num_workers, generator=g)
    criterion = NTXentLoss(temperature=s.temperature)
    o = s.optim()
    decay, no_decay = get_weight_decay_parameters([model.backbone, model.projection_head])
    peak = s.peak_lr()
    optimizer = LARS([{"params": decay, "weight_decay": o.weight_decay},
                      {"params": no_decay, "weight_decay": 0.0}], lr=peak, momentum=o.momentum)
    _, total, warmup = s.schedule(len(dataset))
    assert o.min_lr_ratio is not None
    thr = common.Throughput(s.log_every)
    model.train()
    step, loss = 0, torch.tensor(float("nan"))
    t_train = time.perf_counter()
    while step < total:
        for (x0, x1), _ in loader:
            lr = warmup_cosine(step, total, warmup, peak, peak * o.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if concat_views:
                z = model(torch.cat([x0, x1]))
                z0, z1 = z.chunk(2)
            else:  # lightly's example: one forward per view
                z0, z1 = model(x0), model(x1)
            loss = criterion(z0, z1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            thr.step(step, x0.shape[0], last=step == total)
            if step >= total:
                break
    end = time.perf_counter()
    row: dict[str, Any] = {
        "library": "lightly", "setting": s.to_dict(), "steps": step,
        "images_per_s": thr.steady, "window_rates": thr.rates,
        "train_seconds": end - t_start, "loop_seconds": end - t_train,
        "final_loss": float(loss.detach()), "concat_views": concat_views,
        "data_loading": f"PIL dataset + SimCLRTransform in DataLoader, num_workers={s.num_workers}",
        "model": model, "norm": norm, "image_size": int(x.shape[1]),
    }
    row.update(common.peak_rss_mb())
    return row


def run(s: Setting, concat_views: bool = False, eval_limit: int | None = None) -> dict[str, Any]:
    """Train, then kNN-evaluate with the shared evaluation (if ``s.knn``)."""
    row = train(s, concat_views)
    model, norm, size = row.pop("model"), row.pop("norm"), row.pop("image_size")
    if s.knn:
        row.update(common.knn_eval(model.backbone, s, norm, size, eval_limit))
    row.update(common.machine_info())
    return row


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_setting_args(p)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--concat-views", action="store_true",
                   help="one forward of both views (as selfsup) instead of one per view")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    row = run(common.setting_from(a), a.concat_views, a.eval_limit)
    row["command"] = " ".join(["python", *sys.argv]) if argv is None else None
    common.write_json(a.json, row)


if __name__ == "__main__":
    main()
