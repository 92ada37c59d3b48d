"""selfsup's SimCLR on one benchmark setting through the public Python API, as one row of the
benchmark table (run in its own process so that its peak memory is its own).

Trains with ``selfsup.pretrain`` (a :class:`~selfsup.config.RunConfig`) on the CPU with the
method's paper defaults, then scores the encoder with ``selfsup.evaluate``: weighted kNN, k=200,
T=0.1, test split vs. the train split as memory bank, beside the random-init and raw-pixel
baselines.

Usage::

    python benchmarks/selfsup_simclr.py --dataset mnist --epochs 3 --json out.json
    python benchmarks/selfsup_simclr.py --dataset cifar10 --steps 30 --no-knn
"""

from __future__ import annotations

import argparse
import sys

import common
from selfsup_method import run, run_config

__all__ = ["main", "parse", "run", "run_config"]  # the SimCLR row is selfsup_method's code


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_setting_args(p)
    p.add_argument("--out", help="run folder (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    row = run(common.setting_from(a), a.out, a.eval_limit)
    row["command"] = " ".join(["python", *sys.argv]) if argv is None else None
    common.write_json(a.json, row)


if __name__ == "__main__":
    main()
