"""The SimCLR benchmark behind ``make bench``: selfsup vs lightly on the CPU, written to markdown.

Rows (each training row runs in its own process, so its peak memory is its own):

* ``mnist``: SimCLR, small CNN, batch 256, 3 epochs of the 60k MNIST training images; training
  throughput (images/s, steady state), peak RSS, weighted kNN top-1 (k=200, T=0.1, cosine) on
  the 10k test images with the training images as memory bank. selfsup, then lightly with its
  recommended ``num_workers=2`` DataLoader, then lightly with ``num_workers=0`` (throughput only,
  a short run of ``--lightly-w0-steps``).
* ``cifar``: the same with ResNet-18 (CIFAR stem) on CIFAR-10, images/s over 30 steps.
* ``augment``: two-view SimCLR augmentation, selfsup's batched ``MultiView`` vs torchvision's
  per-sample PIL pipeline (``benchmarks/augment_throughput.py``).
* ``profile`` (with ``mnist``): where a training step's time goes in each pipeline
  (``benchmarks/profile_split.py``).

lightly rows are skipped when ``lightly`` is not importable (``pip install -e '.[bench]'``).

Usage::

    python benchmarks/run.py --out docs/benchmarks.md            # everything (make bench)
    python benchmarks/run.py --only mnist --epochs 1 --skip-lightly
    python benchmarks/run.py --quick --out /tmp/bench.md --results /tmp/bench  # smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # imported as a module (tests): make the sibling scripts importable
    sys.path.insert(0, str(HERE))

import common  # noqa: E402
import report  # noqa: E402

SECTIONS = ("mnist", "cifar", "augment")
QUICK_ARGS = {  # tiny settings for smoke tests: a few seconds per row
    "mnist": ["--steps", "2", "--limit", "512", "--batch-size", "64", "--eval-limit", "300"],
    "cifar": ["--steps", "2", "--limit", "128", "--batch-size", "16"],
}
QUICK_AUGMENT_N = 256
QUICK_STEPS = 2  # profile steps and lightly num_workers=0 steps in --quick mode


def lightly_available() -> bool:
    return importlib.util.find_spec("lightly") is not None


def run_row(name: str, script: str, args: list[str], results: Path,
            python: str | None = None) -> dict[str, Any]:
    """Run ``benchmarks/<script>`` with ``args`` in a fresh process; return its JSON row (or an
    ``error`` row with the tail of its output when it fails).

    ``python``: another interpreter (e.g. a virtual environment with lightly); it runs with
    ``PYTHONPATH=src`` so that it imports this checkout's selfsup."""
    out = results / f"{name}.json"
    env = None
    prefix = ["python"]
    if python and python != sys.executable:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"),
                                                        env.get("PYTHONPATH")) if p)
        prefix = ["PYTHONPATH=src", python]
    shown = [*prefix, f"benchmarks/{script}", *args, "--json", str(_rel(out))]
    cmd = [python or sys.executable, str(HERE / script), *args, "--json", str(out)]
    print(f"\n=== {name}: {shlex.join(shown)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env)
    seconds = time.perf_counter() - t0
    sys.stdout.write(proc.stdout[-4000:])
    if proc.returncode != 0 or not out.is_file():
        return {"name": name, "command": shlex.join(shown), "error": proc.stdout[-2000:],
                "wall_seconds": seconds}
    row: dict[str, Any] = json.loads(out.read_text())
    row.update({"name": name, "command": shlex.join(shown), "wall_seconds": seconds})
    common.write_json(out, row)
    knn = row.get("knn_top1")
    knn_text = f"kNN top-1 {knn:.2f}" if knn is not None else "no kNN (throughput row)"
    print(f"=== {name}: {row.get('images_per_s', 0):.1f} images/s, {knn_text}, "
          f"{seconds:.0f} s", flush=True)
    return row


def _rel(p: Path) -> Path:
    try:
        return p.resolve().relative_to(ROOT)
    except ValueError:
        return p


def training_rows(section: str, a: argparse.Namespace, results: Path) -> list[dict[str, Any]]:
    """selfsup and lightly rows of one dataset section."""
    dataset = "mnist" if section == "mnist" else "cifar10"
    args = ["--dataset", dataset]
    if a.quick:
        args += QUICK_ARGS[section]
    else:
        if section == "mnist" and a.epochs is not None:
            args += ["--epochs", str(a.epochs)]
        steps = a.cifar_steps if section == "cifar" and a.cifar_steps else a.steps
        if steps is not None:
            args += ["--steps", str(steps)]
        if a.log_every is not None:
            args += ["--log-every", str(a.log_every)]
    rows = [run_row(f"{section}_selfsup", "selfsup_simclr.py", args, results)]
    if a.skip_lightly:
        return rows
    if not lightly_available():
        rows.append({"name": f"{section}_lightly", "library": "lightly",
                     "skipped": "lightly is not importable (pip install -e '.[bench]')"})
        return rows
    rows.append(run_row(f"{section}_lightly_w2", "lightly_simclr.py",
                        [*args, "--num-workers", "2"], results))
    if section == "mnist" and a.lightly_w0_steps > 0:  # CIFAR ResNet-18 steps are too slow
        w0 = _drop_option(_drop_option(args, "--epochs"), "--eval-limit")
        w0 = _set_option(w0, "--steps", str(a.lightly_w0_steps))
        rows.append(run_row(f"{section}_lightly_w0", "lightly_simclr.py",
                            [*w0, "--num-workers", "0", "--no-knn"], results))
    return rows


def _drop_option(args: list[str], opt: str) -> list[str]:
    if opt not in args:
        return args
    i = args.index(opt)
    return args[:i] + args[i + 2:]


def _set_option(args: list[str], opt: str, value: str) -> list[str]:
    return [*_drop_option(args, opt), opt, value]


def augment_row(n: int) -> dict[str, Any]:
    """``augment_throughput.run(n)`` (written by its own module) as a row."""
    import augment_throughput

    t0 = time.perf_counter()
    res = dict(augment_throughput.run(n))
    res.update({"name": "augment", "wall_seconds": time.perf_counter() - t0,
                "command": f"python benchmarks/augment_throughput.py --n {n}"})
    return res


def profile_row(a: argparse.Namespace) -> dict[str, Any]:
    """Phase split of one MNIST training step in each pipeline (short, in this process)."""
    import dataclasses

    import profile_split

    s = common.SETTINGS["mnist"]
    steps, warmup = (QUICK_STEPS, 1) if a.quick else (a.profile_steps, 3)
    if a.quick:
        s = dataclasses.replace(s, limit=512, batch_size=64)
    workers = () if a.skip_lightly else (0, 2)
    res = profile_split.run(s, steps=steps, warmup=warmup, lightly_workers=workers)
    res["command"] = (f"python benchmarks/profile_split.py --dataset mnist --steps {steps} "
                      f"--warmup {warmup}" + (" --lightly-workers" if a.skip_lightly else ""))
    return res


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown file to write into")
    p.add_argument("--results", default="benchmarks/results", help="folder for the raw JSON")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--skip-lightly", action="store_true", help="selfsup rows only")
    p.add_argument("--epochs", type=int, help="MNIST epochs (default 3)")
    p.add_argument("--steps", type=int,
                   help="optimiser steps of every training row (default: MNIST whole epochs, "
                        "CIFAR 30)")
    p.add_argument("--cifar-steps", type=int, help="steps of the CIFAR rows (default: --steps or 30)")
    p.add_argument("--log-every", type=int,
                   help=f"throughput window in steps (default {common.LOG_EVERY}); the first "
                        "window is not counted")
    p.add_argument("--lightly-w0-steps", type=int, default=60,
                   help="steps of the MNIST lightly num_workers=0 throughput row (0 = skip)")
    p.add_argument("--augment-n", type=int, default=2560, help="images of the augment row")
    p.add_argument("--profile-steps", type=int, default=10,
                   help="measured steps of the MNIST time split (0 = skip)")
    a = p.parse_args(argv)
    if a.quick:
        a.lightly_w0_steps = QUICK_STEPS
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    results = Path(a.results)
    if not results.is_absolute():
        results = ROOT / results
    results.mkdir(parents=True, exist_ok=True)
    sections = a.only or list(SECTIONS)
    summary: dict[str, Any] = {"machine": common.machine_info(), "quick": a.quick,
                               "argv": sys.argv[1:] if argv is None else argv, "rows": {}}
    t0 = time.perf_counter()
    for section in ("mnist", "cifar"):
        if section in sections:
            summary["rows"][section] = training_rows(section, a, results)
    if "mnist" in sections and a.profile_steps > 0:
        summary["profile"] = profile_row(a)
    if "augment" in sections:
        summary["augment"] = augment_row(QUICK_AUGMENT_N if a.quick else a.augment_n)
    summary["total_seconds"] = time.perf_counter() - t0
    summary["machine_end"] = {"load_average_1min": common.machine_info()["load_average_1min"]}
    common.write_json(results / "summary.json", summary)
    text = report.render(summary)
    out = Path(a.out)
    if not out.is_absolute():
        out = ROOT / out
    report.write_section(out, text)
    print(f"\nwrote {_rel(out)} and {_rel(results)}/*.json in {summary['total_seconds']:.0f} s")
    print(text)
    failed = [r["name"] for rs in summary["rows"].values() for r in rs if "error" in r]
    if failed:
        print(f"failed rows: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
