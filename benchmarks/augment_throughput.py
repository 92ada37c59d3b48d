"""Throughput of batched on-device augmentation vs torchvision's per-sample PIL pipeline.

Both make two SimCLR views (Chen et al. 2020, appendix A; CIFAR variant without blur) of the
same CIFAR-10 training images on the CPU, single process, default torch thread count:

* ours: :class:`selfsup.data.views.MultiView` with the ``simclr`` preset at 32 px on batches of
  256 images (uint8 -> unit float conversion included);
* torchvision: ``RandomResizedCrop(32), RandomHorizontalFlip(), RandomApply(ColorJitter(0.8,
  0.8, 0.8, 0.2), p=0.8), RandomGrayscale(0.2), ToTensor(), Normalize(...)`` called twice per
  PIL image in a plain loop (PIL images are built before timing, as a dataset would hold them).

Each side is timed ``--repeats`` times (interleaved) and the best run is kept. On a busy shared
machine prefer ``--threads 1`` (or the per-CPU-second figures): OpenMP worker threads that lose
their core to another process make every batched op wait for them. Target: ratio >= 3.

Usage::

    python benchmarks/augment_throughput.py --n 2560 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data.views import MultiView, get_preset

DATA = Path("/work/shared/data/cifar10/cifar10.npz")
MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 channel statistics in unit range
STD = (0.2470, 0.2435, 0.2616)
BATCH = 256


def load_images(n: int) -> np.ndarray:
    """The first ``n`` CIFAR-10 training images, ``[n, 32, 32, 3]`` uint8."""
    if not DATA.is_file():
        raise FileNotFoundError(f"{DATA} not found (the shared CIFAR-10 file)")
    x = np.load(DATA)["x_train"]
    return np.ascontiguousarray(x[:n])


def _time_ours(x: torch.Tensor, views: MultiView) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, x.shape[0], BATCH):
        out, _ = views(x[i : i + BATCH].float().div_(255))
        assert len(out) == 2
    return time.perf_counter() - t0, time.process_time() - c0


def _time_torchvision(images: list[Any], tf: Any) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for im in images:
        tf(im)
        tf(im)
    return time.perf_counter() - t0, time.process_time() - c0


def run(n: int = 2560, repeats: int = 3) -> dict[str, Any]:
    """Time both pipelines on the first ``n`` CIFAR-10 images.

    Returns:
        ``{"n", "threads", "ours_images_per_s", "torchvision_images_per_s", "ratio"}`` from
        wall-clock time, plus the same per CPU-second of the process (``*_per_cpu_s``,
        ``cpu_ratio``: the work each pipeline costs, less sensitive to other processes). An image
        counts once and yields two views.
    """
    from PIL import Image
    from torchvision import transforms as T

    arr = load_images(n)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # [n, 3, 32, 32] uint8
    images = [Image.fromarray(a) for a in arr]
    views = MultiView(get_preset("simclr", 32), 3, MEAN, STD)
    tf = T.Compose(
        [
            T.RandomResizedCrop(32),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(0.2),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    _time_ours(x[:BATCH], views)  # warm-up (allocator, thread pool)
    _time_torchvision(images[:64], tf)
    ours, tv = [float("inf")] * 2, [float("inf")] * 2  # best (wall, cpu) seconds
    for _ in range(repeats):
        ours = [min(a, b) for a, b in zip(ours, _time_ours(x, views))]
        tv = [min(a, b) for a, b in zip(tv, _time_torchvision(images, tf))]
    return {
        "n": n,
        "threads": torch.get_num_threads(),
        "ours_images_per_s": n / ours[0],
        "torchvision_images_per_s": n / tv[0],
        "ratio": tv[0] / ours[0],
        "ours_images_per_cpu_s": n / ours[1],
        "torchvision_images_per_cpu_s": n / tv[1],
        "cpu_ratio": tv[1] / ours[1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2560, help="number of CIFAR-10 images")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per pipeline (best kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=str, default=None, help="also write the result to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.n, args.repeats)
    print(f"images: {res['n']}  torch threads: {res['threads']}")
    print(f"selfsup MultiView (batched): {res['ours_images_per_s']:10.0f} images/s")
    print(f"torchvision PIL per-sample:  {res['torchvision_images_per_s']:10.0f} images/s")
    print(f"ratio: {res['ratio']:.2f}x (target >= 3x)")
    print(f"per CPU-second: {res['ours_images_per_cpu_s']:.0f} vs "
          f"{res['torchvision_images_per_cpu_s']:.0f} images, ratio {res['cpu_ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
