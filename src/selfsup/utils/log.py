"""Console logging and the run's metric files: ``metrics.jsonl`` (one JSON object per record),
``metrics.csv`` (rewritten header-first whenever new columns appear) and optional TensorBoard."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger("selfsup")


def setup_logging(verbose: bool = False) -> None:
    """Route the ``selfsup`` logger to stderr as ``selfsup: message`` lines."""
    if logger.handlers:
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        return
    h = logging.StreamHandler()
    h.setFormatter(logging.Formatter("selfsup: %(message)s"))
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsWriter:
    """Append metric records to JSONL and CSV (and TensorBoard when available and enabled).

    Records are flushed on every write so a crash loses nothing already logged. On resume the files
    are appended to; records past the resumed step are kept (they are from the interrupted run and
    carry their step number).
    """

    def __init__(self, out_dir: str | Path, tensorboard: bool = True) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"
        self._columns: list[str] = []
        if self.csv.exists():
            with self.csv.open() as f:
                header = f.readline().strip()
            self._columns = header.split(",") if header else []
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"))
            except Exception as e:  # tensorboard is optional at run time
                logger.warning("TensorBoard logging disabled (%s)", e)

    def write(self, step: int, record: dict[str, Any]) -> None:
        rec = {"step": step, **{k: _plain(v) for k, v in record.items()}}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        new = [k for k in rec if k not in self._columns]
        if new:
            self._columns += new
            self._rewrite_csv()
        with self.csv.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._columns).writerow(rec)
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def _rewrite_csv(self) -> None:
        rows: list[dict[str, Any]] = []
        if self.jsonl.exists():
            with self.jsonl.open() as f:
                rows = [json.loads(line) for line in f if line.strip()]
            rows = rows[:-1]  # the record being written is appended by the caller
        tmp = self.csv.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._columns)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in self._columns})
        tmp.replace(self.csv)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
