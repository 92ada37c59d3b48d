"""Forward + backward time of one backbone pass over all crops of one size (what selfsup's
``encode_by_resolution`` does, as the DINO/SwAV reference code: shared BatchNorm statistics)
against one pass per crop (what lightly's builders do), on the CPU.

Usage::

    python benchmarks/multicrop_passes.py [--crops 6] [--batch 256] [--size 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import common  # noqa: F401  (registers the backbones)
import torch
from torch import Tensor

from selfsup.nn.backbones import create_backbone


def best_seconds(fn: Callable[[], Tensor], repeats: int) -> float:
    """Fastest of ``repeats`` forward + backward runs of ``fn()``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn().sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--crops", type=int, default=6, help="crops of one size (SwAV/DINO: 6 local)")
    p.add_argument("--batch", type=int, default=256, help="images per crop")
    p.add_argument("--size", type=int, default=16, help="crop side in pixels")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    bb = create_backbone("resnet18", in_chans=3, image_size=32, cifar_stem=True)
    x = torch.randn(a.crops * a.batch, 3, a.size, a.size)
    one = best_seconds(lambda: bb(x), a.repeats)
    per_crop = best_seconds(lambda: torch.cat([bb(c) for c in x.chunk(a.crops)]), a.repeats)
    print(f"ResNet-18 (CIFAR stem), {a.crops} x {a.batch} crops of {a.size} px, "
          f"{torch.get_num_threads()} threads: one pass {one:.2f} s, "
          f"{a.crops} passes {per_crop:.2f} s (forward + backward, best of {a.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
