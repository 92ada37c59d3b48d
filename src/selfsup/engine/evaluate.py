"""Evaluate a checkpoint's encoder on labeled data, always beside its baselines: the same
architecture at random init and the raw pixels (an encoder that does not beat both has learned
nothing useful)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from selfsup.data.datasets import ImageDataset, open_dataset
from selfsup.data.splits import split_holdout
from selfsup.engine.runs import LoadedRun, load_run, pick_device, preprocessor
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.eval.report import raw_pixel_features
from selfsup.types import ConfigError, DataError

logger = logging.getLogger("selfsup")

PROBES = ("knn", "linear")
LINEAR_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)  # the linear probe's search


@dataclass
class EvalData:
    train: ImageDataset
    test: ImageDataset
    note: str  # how the test split was obtained


def eval_data(data: Any, test_data: Any, *, image_size: int | None = None,
              limit: int | None = None, seed: int = 0) -> EvalData:
    """Labeled train/test sets: ``test_data`` if given, else the source's own test split, else a
    seeded stratified 20% hold-out of ``data``.

    Raises:
        DataError: if either set has no labels.
    """
    if test_data is not None:
        train = open_dataset(data, split="train", image_size=image_size, limit=limit,
                             size_hint=False)
        test = open_dataset(test_data, split="test", image_size=image_size, limit=limit,
                            size_hint=False)
        note = f"test set '{test_data}'"
    else:
        train = open_dataset(data, split="train", image_size=image_size, size_hint=False)
        test_split = open_dataset(data, split="test", image_size=image_size, size_hint=False)
        if test_split.source != train.source:
            test, note = test_split, f"test split of '{data}'"
        else:
            train, test = split_holdout(train, 0.2, seed=seed)
            note = f"seeded stratified 20% hold-out of '{data}'"
        if limit is not None:
            train = train.subset(range(min(limit, len(train))))
            test = test.subset(range(min(limit, len(test))))
    for name, ds in (("training", train), ("test", test)):
        if not ds.has_labels:
            raise DataError(f"{name} data '{ds.source}' has no labels; kNN and linear probes need "
                            "labeled images (a folder with one subfolder per class, or an array "
                            "file with labels)")
    counts = torch.bincount(train.labels[train.labels >= 0])
    single = [int(c) for c in torch.nonzero(counts == 1).flatten()]
    if single:
        names = [train.class_names[c] if train.class_names else str(c) for c in single]
        logger.warning("%d class(es) have one labeled training image only (%s): their kNN and "
                       "linear-probe scores rest on that image", len(single),
                       ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
    return EvalData(train, test, note)


def _features(enc: nn.Module, ds: ImageDataset, run: LoadedRun, device: torch.device,
              batch_size: int) -> tuple[Tensor, Tensor]:
    return extract_features(enc, ds, preprocessor(run.norm, run.image_size),
                            batch_size=batch_size, device=device)


def _probe(which: Sequence[str], ftr: Tensor, ytr: Tensor, fte: Tensor, yte: Tensor, *,
           k: int, t: float, seed: int, device: torch.device) -> dict[str, float]:
    out: dict[str, float] = {}
    if "knn" in which:
        r = knn_accuracy(ftr, ytr, fte, yte, k=k, temperature=t)
        out.update({"knn_top1": r["top1"], "knn_top5": r["top5"]})
    if "linear" in which:
        r = linear_probe(ftr, ytr, fte, yte, weight_decays=LINEAR_WEIGHT_DECAYS, seed=seed,
                         device=device)
        out.update({"linear_top1": r["top1"], "linear_top5": r["top5"]})
    return out


def evaluate_checkpoint(checkpoint: str, data: Any = None, test_data: Any = None,
                        *, which: Sequence[str] = PROBES, k: int = 200, temperature: float = 0.1,
                        batch_size: int = 256, device: str = "auto", limit: int | None = None,
                        baselines: bool = True, seed: int = 0,
                        backbone: nn.Module | None = None) -> dict[str, Any]:
    """kNN and/or linear-probe accuracy (percent) of a checkpoint's encoder and its baselines.

    ``data``/``test_data``: paths, built-in names or data from Python; ``backbone``: the module
    a Python run trained (:func:`~selfsup.engine.runs.load_run`).

    Returns:
        The schema ``selfsup eval --json`` prints too (docs/evaluation.md): ``{"checkpoint",
        "step", "probes", "train_size", "test_size", "test": how the test set was obtained,
        "rows": {"pretrained" | "random init" | "raw pixels": {"knn_top1", "knn_top5",
        "linear_top1", "linear_top5"} (the probes run)}, "knn": {"k", "temperature"} (when
        run), "linear": {...} (when run)}``.

    Raises:
        ConfigError: unknown probe; DataError: unlabeled data or a channel count the encoder does
        not take; CheckpointError: a bad checkpoint.
    """
    bad = [w for w in which if w not in PROBES]
    if bad:
        raise ConfigError(f"unknown evaluation '{bad[0]}'; expected one of {', '.join(PROBES)}")
    run = load_run(checkpoint, backbone=backbone)
    data = data if data is not None else run.cfg.data.path
    ed = eval_data(data, test_data, image_size=None, limit=limit, seed=seed)
    for ds in (ed.train, ed.test):
        if ds.channels != run.in_chans:
            raise DataError(f"'{ds.source}' has {ds.channels} channels but the encoder in "
                            f"'{checkpoint}' takes {run.in_chans}")
    n_train = int((ed.train.labels >= 0).sum())
    if "knn" in which and k > n_train:
        logger.warning("kNN k=%d is more than the %d labeled training images: every image votes "
                       "(set --k below %d for a nearest-neighbour vote)", k, n_train, n_train)
    dev = pick_device(device)
    kw: dict[str, Any] = {"k": k, "t": temperature, "seed": seed, "device": dev}
    encoders = {"pretrained": run.encoder}
    if baselines:
        encoders["random init"] = run.random_init(seed)
    rows: dict[str, dict[str, float]] = {}
    for name, enc in encoders.items():
        enc.to(dev)
        ftr, ytr = _features(enc, ed.train, run, dev, batch_size)
        fte, yte = _features(enc, ed.test, run, dev, batch_size)
        rows[name] = _probe(which, ftr, ytr, fte, yte, **kw)
    if baselines:
        prep = preprocessor(run.norm, run.image_size)
        ftr = raw_pixel_features(ed.train, prep)
        fte = raw_pixel_features(ed.test, prep)
        rows["raw pixels"] = _probe(which, ftr, ed.train.labels, fte, ed.test.labels, **kw)
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "step": run.step,
                           "probes": list(which), "train_size": len(ed.train),
                           "test_size": len(ed.test), "test": ed.note, "rows": rows}
    if "knn" in which:
        out["knn"] = {"k": k, "temperature": temperature}
    if "linear" in which:
        # the probe's L2 weight decay is chosen per row on a held-out part of train
        out["linear"] = {"weight_decays": list(LINEAR_WEIGHT_DECAYS), "val_fraction": 0.2}
    return out


def embed_checkpoint(checkpoint: str, data: Any, *, split: str = "all", batch_size: int = 256,
                     device: str = "auto", backbone: nn.Module | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``[N, D]`` (float32) and labels ``[N]`` (-1 unlabeled) of ``data``.

    Raises:
        DataError: if the data's channel count differs from the encoder's.
    """
    f, y, _, _ = embed_rows(checkpoint, data, split=split, batch_size=batch_size, device=device,
                            backbone=backbone)
    return f, y


def embed_rows(checkpoint: str, data: Any, *, split: str = "all", batch_size: int = 256,
               device: str = "auto", backbone: nn.Module | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str], list[str] | None]:
    """:func:`embed_checkpoint` with what each row is: ``(embeddings, labels, names, classes)``.

    Rows follow the dataset's order: a folder's files sorted by path (class folders in sorted
    order, their index the label), an array's rows as stored; ``names`` holds each row's file
    path (``"<source>#<row>"`` for arrays), ``classes`` the class names (None if unlabeled).

    Raises:
        DataError: if the data's channel count differs from the encoder's.
    """
    run = load_run(checkpoint, backbone=backbone)
    ds = open_dataset(data, split=split, size_hint=False)  # the encoder's input size applies
    if ds.channels != run.in_chans:
        raise DataError(f"'{ds.source}' has {ds.channels} channels but the encoder in '{checkpoint}' "
                        f"takes {run.in_chans}")
    dev = pick_device(device)
    f, y = _features(run.encoder.to(dev), ds, run, dev, batch_size)
    return f.numpy().astype(np.float32), y.numpy(), ds.row_names(), ds.class_names
