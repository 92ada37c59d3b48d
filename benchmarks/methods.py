"""The per-method benchmark (``make bench-methods``): every registered selfsup method, and
lightly's implementation where it has one, on the SimCLR table's protocol, written to markdown.

Rows run as subprocesses (so each row's peak memory is its own): ``selfsup_method.py`` with this
interpreter and ``lightly_methods.py`` with one that imports ``lightly`` (this one, or
``--lightly-python`` / ``$SELFSUP_LIGHTLY_PYTHON``, run with ``PYTHONPATH=src``). Methods come
from the registry at run time; ``--methods`` picks some.

* ``mnist``: small CNN, batch 256, 3 epochs of the 60k MNIST training images; images/s, peak
  RSS, weighted kNN top-1 (k=200, T=0.1) on the 10k test images with the training images as
  memory bank, beside the random-init encoder's.
* ``cifar10``: ResNet-18 (CIFAR stem) on CIFAR-10, images/s over 30 steps.

Usage::

    python benchmarks/methods.py --out docs/benchmarks.md                 # everything
    python benchmarks/methods.py --methods byol dino --datasets mnist
    python benchmarks/methods.py --quick --out /tmp/m.md --results /tmp/m  # smoke test

Runs accumulate: rows already in ``<results>/summary.json`` (from an earlier run with the same
``--quick`` setting) are kept unless this run measures the same dataset and method again, so
the table can be built in parts on an idle machine. ``--fresh`` starts from an empty summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported as a module (tests)
    sys.path.insert(0, str(HERE))

import common  # noqa: E402
import lightly_methods  # noqa: E402  (lightly itself is imported only inside its builders)
import method_common  # noqa: E402
import methods_report  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402

DATASETS = ("mnist", "cifar10")
QUICK_ARGS = {"mnist": run.QUICK_ARGS["mnist"], "cifar10": run.QUICK_ARGS["cifar"]}


def lightly_python(choice: str | None) -> tuple[str | None, str | None]:
    """``(interpreter, lightly version)`` of the environment that runs lightly rows, or
    ``(None, None)`` when none imports lightly."""
    candidates = [choice, os.environ.get("SELFSUP_LIGHTLY_PYTHON")]
    if importlib.util.find_spec("lightly") is not None:
        candidates.append(sys.executable)
    for py in filter(None, candidates):
        proc = subprocess.run([py, "-c", "import lightly; print(lightly.__version__)"],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            return py, proc.stdout.strip()
    return None, None


def row_args(dataset: str, method: str, a: argparse.Namespace) -> list[str]:
    args = ["--method", method, "--dataset", dataset]
    if a.quick:
        return args + QUICK_ARGS[dataset]
    if dataset == "mnist" and a.epochs is not None:
        args += ["--epochs", str(a.epochs)]
    steps = a.cifar_steps if dataset == "cifar10" and a.cifar_steps else a.steps
    if steps is not None:
        args += ["--steps", str(steps)]
    if a.log_every is not None:
        args += ["--log-every", str(a.log_every)]
    if a.paper_heads:
        args.append("--paper-heads")
    return args


def method_rows(dataset: str, method: str, a: argparse.Namespace, results: Path,
                light_py: str | None) -> list[dict[str, Any]]:
    """The selfsup row and (when wired and available) the lightly row of one method."""
    args = row_args(dataset, method, a)
    rows = [run.run_row(f"{dataset}_{method}_selfsup", "selfsup_method.py", args, results)]
    rows[0].update({"method": method, "library": "selfsup"})
    if a.skip_lightly or method not in lightly_methods.BUILDERS:
        return rows
    if light_py is None:
        rows.append({"skipped": "lightly is not importable (pip install -e '.[bench]' or "
                                "--lightly-python)"})
    else:
        workers = ["--num-workers", "0" if a.quick else str(a.lightly_workers)]
        rows.append(run.run_row(f"{dataset}_{method}_lightly", "lightly_methods.py",
                                [*args, *workers], results, python=light_py))
    rows[-1].update({"method": method, "library": "lightly"})
    return rows


def previous_summary(path: Path, quick: bool, fresh: bool) -> dict[str, Any] | None:
    """The summary an earlier run left in ``path`` when its rows can be merged with this run's
    (same ``--quick`` setting, readable JSON), else ``None``."""
    if fresh or not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"ignoring unreadable {path}: {e}", file=sys.stderr)
        return None
    if not isinstance(old, dict) or old.get("quick") != quick or "rows" not in old:
        return None
    return old


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` rows of methods ``new`` does not measure, then ``new`` (in its order)."""
    redone = {r.get("method") for r in new}
    return [r for r in old if r.get("method") not in redone] + new


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", help="registered method names (default: all)")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown file to write into")
    p.add_argument("--results", default="benchmarks/results/methods", help="raw JSON folder")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    p.add_argument("--fresh", action="store_true",
                   help="drop the rows an earlier run left in <results>/summary.json")
    p.add_argument("--skip-lightly", action="store_true", help="selfsup rows only")
    p.add_argument("--lightly-python", help="interpreter with lightly (default: this one, or "
                   "$SELFSUP_LIGHTLY_PYTHON)")
    p.add_argument("--lightly-workers", type=int, default=2, help="lightly DataLoader workers")
    p.add_argument("--paper-heads", action="store_true", help="no documented CPU head scaling")
    p.add_argument("--epochs", type=int, help="MNIST epochs (default 3)")
    p.add_argument("--steps", type=int, help="optimiser steps of every row")
    p.add_argument("--cifar-steps", type=int, help="steps of the CIFAR-10 rows (default 30)")
    p.add_argument("--log-every", type=int, help=f"throughput window ({common.LOG_EVERY})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    names = method_common.method_names()
    unknown = sorted(set(a.methods or ()) - set(names))
    if unknown:
        print(f"unknown methods {unknown}; registered: {', '.join(names)}", file=sys.stderr)
        return 2
    results = Path(a.results) if Path(a.results).is_absolute() else run.ROOT / a.results
    results.mkdir(parents=True, exist_ok=True)
    light_py, light_version = (None, None) if a.skip_lightly else lightly_python(a.lightly_python)
    cmd = ["python", "benchmarks/methods.py", *(sys.argv[1:] if argv is None else argv)]
    old = previous_summary(results / "summary.json", a.quick, a.fresh)
    summary: dict[str, Any] = {"machine": common.machine_info(), "quick": a.quick,
                               "command": " ".join(cmd), "lightly_version": light_version,
                               "lightly_python": light_py, "results": str(run._rel(results)),
                               "rows": dict(old["rows"]) if old else {},
                               "commands": [*(old.get("commands") or [old.get("command")]
                                              if old else []), " ".join(cmd)]}
    t0 = time.perf_counter()
    for dataset in a.datasets:
        earlier = summary["rows"].get(dataset, [])
        new: list[dict[str, Any]] = []
        for method in a.methods or names:
            new += method_rows(dataset, method, a, results, light_py)
            summary["rows"][dataset] = merge_rows(earlier, new)
            common.write_json(results / "summary.json", summary)  # partial results survive
    summary["total_seconds"] = time.perf_counter() - t0
    summary["machine_end"] = {"load_average_1min": common.machine_info()["load_average_1min"]}
    common.write_json(results / "summary.json", summary)
    out = Path(a.out) if Path(a.out).is_absolute() else run.ROOT / a.out
    text = methods_report.render(summary)
    report.write_section(out, text, methods_report.START, methods_report.END)
    print(f"\nwrote {run._rel(out)} and {run._rel(results)}/*.json in "
          f"{summary['total_seconds']:.0f} s\n{text}")
    failed = [r.get("name") for rs in summary["rows"].values() for r in rs
              if "error" in r and r.get("method") in set(a.methods or names)]
    if failed:
        print(f"failed rows: {', '.join(map(str, failed))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
