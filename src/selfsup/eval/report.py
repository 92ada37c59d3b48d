"""Evaluation entry points: probes on features or on an encoder, the raw-pixel baseline and a
plain-text results table.

Result dicts are flat ``{name: float}`` with keys ``knn_top1``, ``knn_top5``, ``linear_top1``,
``linear_top5``, ``linear_wd`` (chosen weight decay) and ``linear_val_top1``; accuracies are in
percent. :func:`format_table` prints one row per encoder (e.g. "pretrained", "random init",
"raw pixels").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Sized
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.eval.features import BatchSource, Preprocess, extract_features
from selfsup.eval.knn import infer_num_classes, knn_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.types import ConfigError

PROBES = ("knn", "linear")

# Column titles of format_table, in display order; other keys follow in first-seen order.
COLUMNS = {
    "knn_top1": "kNN top-1",
    "linear_top1": "linear top-1",
    "knn_top5": "kNN top-5",
    "linear_top5": "linear top-5",
    "linear_wd": "linear wd",
    "linear_val_top1": "linear val top-1",
    "dim": "dim",
}


def evaluate_features(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    *,
    which: Sequence[str] = PROBES,
    num_classes: int | None = None,
    knn_k: int = 200,
    knn_t: float = 0.1,
    linear_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Run the requested probes on cached features ``[N, D]`` / ``[M, D]`` with labels.

    Args:
        which: any of ``"knn"`` (weighted kNN, :mod:`selfsup.eval.knn`) and ``"linear"``
            (L-BFGS logistic regression, :mod:`selfsup.eval.linear`).
        num_classes: None = largest label + 1 over train and test.
        knn_k, knn_t: kNN neighbours and temperature (InstDisc: 200, 0.1).
        linear_kwargs: extra keyword arguments of :func:`~selfsup.eval.linear.linear_probe`.
        device: where to compute; None = where the features are.

    Returns:
        The flat result dict of the module docstring, plus ``dim`` (= D).

    Raises:
        ConfigError: for an unknown probe name, and as the probes.
        DataError: as the probes.
    """
    unknown = [w for w in which if w not in PROBES]
    if unknown or not which:
        raise ConfigError(f"eval probes {list(which)} invalid; choose from {list(PROBES)}")
    if num_classes is None:
        num_classes = infer_num_classes(train_y, test_y)
    out: dict[str, float] = {"dim": float(train_f.shape[1]) if train_f.dim() == 2 else math.nan}
    if "knn" in which:
        dev = torch.device(device) if device is not None else train_f.device
        acc = knn_accuracy(
            train_f.to(dev), train_y, test_f, test_y, num_classes, k=knn_k, temperature=knn_t
        )
        out.update({f"knn_{k}": v for k, v in acc.items()})
    if "linear" in which:
        lin = linear_probe(
            train_f,
            train_y,
            test_f,
            test_y,
            num_classes=num_classes,
            device=device,
            **dict(linear_kwargs or {}),
        )
        out.update(
            linear_top1=lin["top1"],
            linear_top5=lin["top5"],
            linear_wd=lin["weight_decay"],
            linear_val_top1=lin["val_top1"],
        )
    return out


def evaluate_encoder(
    encoder: nn.Module,
    train_ds: BatchSource | Sized,
    test_ds: BatchSource | Sized,
    preprocess: Preprocess,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Extract features of both sets with the frozen ``encoder`` and run :func:`evaluate_features`.

    ``preprocess`` and ``device`` are as in :func:`~selfsup.eval.features.extract_features`;
    ``num_classes`` defaults to ``train_ds.num_classes`` when the dataset has it; other keyword
    arguments go to :func:`evaluate_features`.
    """
    tr_f, tr_y = extract_features(
        encoder, train_ds, preprocess, batch_size=batch_size, device=device
    )
    te_f, te_y = extract_features(
        encoder, test_ds, preprocess, batch_size=batch_size, device=device
    )
    kwargs.setdefault("num_classes", getattr(train_ds, "num_classes", None) or None)
    return evaluate_features(tr_f, tr_y, te_f, te_y, device=device, **kwargs)


class PixelEncoder(nn.Module):
    """The raw-pixel baseline "encoder": flattened input pixels, average-pooled when large.

    An input ``[B, C, H, W]`` with ``C * H * W > max_dims`` is adaptive-average-pooled to
    ``[B, C, h, w]`` with ``h / H = w / W`` as large as fits ``C * h * w <= max_dims``.
    """

    def __init__(self, max_dims: int = 4096) -> None:
        super().__init__()
        if max_dims < 1:
            raise ConfigError(f"raw pixel max_dims must be >= 1, got {max_dims}")
        self.max_dims = max_dims

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if c * h * w > self.max_dims:
            f = math.sqrt(self.max_dims / (c * h * w))
            x = F.adaptive_avg_pool2d(x, (max(1, int(h * f)), max(1, int(w * f))))
        return x.flatten(1)


def raw_pixel_features(
    dataset: BatchSource | Sized,
    preprocess: Preprocess,
    *,
    max_dims: int = 4096,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> Tensor:
    """Features ``[N, <= max_dims]`` (float32, CPU) of the raw-pixel baseline, in dataset order.

    The preprocessed (normalised) pixels, flattened, pooled by :class:`PixelEncoder` if large.
    The labels are the dataset's (``extract_features`` with a :class:`PixelEncoder` returns both).

    Raises:
        DataError, ConfigError: as :func:`~selfsup.eval.features.extract_features`.
    """
    feats, _ = extract_features(
        PixelEncoder(max_dims), dataset, preprocess, batch_size=batch_size, device=device
    )
    return feats


def _cell(key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if key == "dim":
            return f"{v:.0f}"
        return f"{v:.2f}" if "top" in key or "acc" in key else f"{v:.3g}"
    return str(v)


def format_table(rows: Mapping[str, Mapping[str, Any]], title: str = "encoder") -> str:
    """An aligned plain-text table: one row per encoder, one column per metric.

    Known keys (kNN / linear top-1 first) get readable titles and a fixed order; other keys
    follow in first-seen order. Missing values and NaN print as ``-``.

    Args:
        rows: ``{row name: {metric key: value}}``, e.g. ``{"pretrained": evaluate_features(...)}``.
        title: header of the first (row name) column.
    """
    keys = [k for k in COLUMNS if any(k in r for r in rows.values())]
    for r in rows.values():
        keys += [k for k in r if k not in keys]
    header = [title] + [COLUMNS.get(k, k) for k in keys]
    body = [[name] + [_cell(k, r[k]) if k in r else "-" for k in keys] for name, r in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])
