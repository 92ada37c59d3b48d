"""The learning-test protocol shared by every method: a short pretraining run on scikit-learn's
digits (real data that ships with scikit-learn), then weighted kNN (k=200, T=0.1) on the digits
test split for the trained encoder, the same encoder at random init and the raw pixels.

Digits are 8x8; they are upsampled to 16 px so random resized crops have room. Views are
digit-appropriate (no horizontal flip: a flipped digit is another symbol; crop scale (0.3, 1) since
the digit fills the frame). Warm-up is one epoch: the runs are a few hundred steps.

Every learning test reports one row per measured encoder, ``{test, method, dataset, metric,
trained, random_init, raw_pixels}``: printed with the test's output (``pytest -rP`` or ``-s``),
gathered in a table at the end of the session, and appended as a JSON line to the file named by
``SELFSUP_LEARNING_LOG`` when it is set. The raw-pixel number is always the same probe on the
preprocessed pixels (``selfsup.engine.evaluate``'s "raw pixels" row). ``python
tests/learning/conftest.py LOG.jsonl`` prints the Markdown table of docs/benchmarks.md ("Learning
tests: trained vs random init vs raw pixels") from such a file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig, apply_overrides
from selfsup.data.splits import split_labeled
from selfsup.engine.evaluate import eval_data, evaluate_checkpoint
from selfsup.engine.runs import load_run, preprocessor
from selfsup.engine.trainer import pretrain
from selfsup.eval.linear import linear_probe
from selfsup.eval.report import raw_pixel_features

PROTOCOL = ["view_args.scale=[0.3, 1.0]", "view_args.hflip_p=0", "optim.warmup_epochs=1"]
LOG_ENV = "SELFSUP_LEARNING_LOG"
TIE = 1.0  # |trained - raw| within this many points (seed-to-seed spread) reads as a tie
ROWS: list[dict[str, Any]] = []  # this session's rows, for the terminal summary


def record(test: str, method: str, trained: float, random_init: float, raw_pixels: float, *,
           dataset: str = "digits", metric: str = "knn_top1", **extra: Any) -> dict[str, Any]:
    """Print one result row, keep it for the session table, append it to ``$SELFSUP_LEARNING_LOG``."""
    row = {"test": test, "method": method, "dataset": dataset, "metric": metric,
           "trained": round(float(trained), 2), "random_init": round(float(random_init), 2),
           "raw_pixels": round(float(raw_pixels), 2), **extra}
    ROWS.append(row)
    print(f"\n{method} on {dataset}, {metric}: trained {row['trained']:.2f} vs random init "
          f"{row['random_init']:.2f} vs raw pixels {row['raw_pixels']:.2f} "
          f"({verdict(row)} raw pixels)")
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return row


def verdict(row: dict[str, Any]) -> str:
    """``beats`` / ``ties`` / ``loses to`` raw pixels, with the :data:`TIE` margin."""
    gap = row["trained"] - row["raw_pixels"]
    return "beats" if gap > TIE else "loses to" if gap < -TIE else "ties"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The docs table; a later row of the same (test, method, metric) replaces an earlier one."""
    last = {(r["test"], r["method"], r["metric"]): r for r in rows}
    lines = ["| test | method | dataset | metric | trained | random init | raw pixels | "
             "trained - raw | vs raw pixels |", "|---|---|---|---|---|---|---|---|---|"]
    for r in last.values():
        lines.append(f"| `{r['test']}` | {r['method']} | {r['dataset']} | {r['metric']} | "
                     f"{r['trained']:.2f} | {r['random_init']:.2f} | {r['raw_pixels']:.2f} | "
                     f"{r['trained'] - r['raw_pixels']:+.2f} | {verdict(r)} |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ROWS:
        terminalreporter.write_sep("=", "learning tests: trained vs random init vs raw pixels")
        terminalreporter.write_line(markdown_table(ROWS))


@pytest.fixture
def learning_log(request: pytest.FixtureRequest):
    """``learning_log(method, trained, random_init, raw_pixels, dataset=, metric=, **extra)``:
    :func:`record` under this test's node id."""

    def log(method: str, trained: float, random_init: float, raw_pixels: float,
            **kw: Any) -> dict[str, Any]:
        return record(request.node.nodeid, method, trained, random_init, raw_pixels, **kw)

    return log


def knn_rows(checkpoint: str | Path, data: str = "digits", **kw: Any) -> dict[str, float]:
    """kNN top-1 of a checkpoint's encoder, its random init and the raw pixels (the protocol's
    k=200, T=0.1 on the test split): ``{"trained", "random", "raw"}``."""
    rows = evaluate_checkpoint(str(checkpoint), data, which=("knn",), **kw)["rows"]
    return {"trained": rows["pretrained"]["knn_top1"], "random": rows["random init"]["knn_top1"],
            "raw": rows["raw pixels"]["knn_top1"]}


def raw_pixel_linear_few_labels(checkpoint: str | Path, labeled_fraction: float,
                                seed: int = 0) -> float:
    """Test top-1 of a linear probe on the raw pixels of the same labeled subset that
    :func:`selfsup.engine.finetune.finetune_checkpoint` fine-tunes on (same eval data, same
    ``split_labeled`` seed, the checkpoint's preprocessing): the raw-pixel row of a few-label
    test."""
    run = load_run(str(checkpoint))
    ed = eval_data(run.cfg.data.path, None, seed=seed)
    train = split_labeled(ed.train, labeled_fraction, seed)
    prep = preprocessor(run.norm, run.image_size)
    ftr, fte = raw_pixel_features(train, prep), raw_pixel_features(ed.test, prep)
    return linear_probe(ftr, train.labels, fte, ed.test.labels, seed=seed)["top1"]


@pytest.fixture
def knn_eval():
    """:func:`knn_rows`, for tests that train outside :func:`learn`."""
    return knn_rows


def digits_pretrain(out: Path, method: str, backbone: BackboneConfig, steps: int,
                    batch_size: int, overrides: Sequence[str] = (),
                    **run: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Pretrain ``method`` on 16-px digits (paper recipe, seed 0, a metrics row every 10 steps)
    into ``out``: ``(PretrainResult, metrics.jsonl rows)``; ``run`` sets other RunConfig fields
    (e.g. ``method_args``)."""
    cfg = RunConfig(method=method, recipe="paper", backbone=backbone,
                    data=DataConfig(path="digits", image_size=16),
                    train=TrainConfig(steps=steps, batch_size=batch_size, out=str(out),
                                      progress=False, tensorboard=False, log_every=10, seed=0),
                    **run)
    res = pretrain(apply_overrides(cfg, list(overrides)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return res, rows


@pytest.fixture
def digits_run():
    """:func:`digits_pretrain`, for the masked-modeling tests that train outside :func:`learn`."""
    return digits_pretrain


@pytest.fixture
def raw_pixel_few_labels():
    """:func:`raw_pixel_linear_few_labels`, for the few-label (fine-tuning) test."""
    return raw_pixel_linear_few_labels


@pytest.fixture
def learn(tmp_path: Path, learning_log):
    """``learn(method, steps=150, batch_size=128, overrides=(), width=32, label=None,
    recipe="paper", **method_args)`` -> ``{"trained": kNN top-1, "random": kNN top-1 at random
    init, "raw": raw pixels, "result": PretrainResult}``; the row is recorded under ``label``
    (default: the method's name).

    The per-method tests were calibrated on the paper recipe (the settings each test pins are
    scalings of the paper's), so ``recipe`` defaults to ``paper`` here although ``auto`` would pick
    the small-image recipe on 16-px digits; ``test_small_recipes.py`` checks the small ones."""

    def run(method: str, steps: int = 150, batch_size: int = 128, overrides: Sequence[str] = (),
            width: int = 32, label: str | None = None, recipe: str = "paper",
            **method_args: Any) -> dict[str, Any]:
        cfg = RunConfig(
            method=method, recipe=recipe, method_args=method_args,
            backbone=BackboneConfig(name="small_cnn", kwargs={"width": width}),
            data=DataConfig(path="digits", image_size=16),
            train=TrainConfig(steps=steps, batch_size=batch_size, out=str(tmp_path / method),
                              progress=False, tensorboard=False, log_every=10, seed=0),
        )
        res = pretrain(apply_overrides(cfg, [*PROTOCOL, *overrides]))
        r: dict[str, Any] = knn_rows(res.checkpoint)
        learning_log(label or method, r["trained"], r["random"], r["raw"], dataset="digits 16 px",
                     steps=res.step, pretrain_s=round(res.seconds, 1))
        r["result"] = res
        return r

    return run


if __name__ == "__main__":  # python tests/learning/conftest.py LOG.jsonl -> the docs table
    with open(sys.argv[1], encoding="utf-8") as f:
        print(markdown_table([json.loads(line) for line in f if line.strip()]))
