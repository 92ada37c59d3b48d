"""Weighted k-nearest-neighbour classifier on frozen features.

The non-parametric classifier of InstDisc (Wu et al., CVPR 2018, sec. 3.4), used as the standard
SSL monitor by DINO (Caron et al. 2021, ``eval_knn.py``) and lightly's benchmarks: every feature
is L2-normalised, the ``k`` train samples with the highest cosine similarity ``s_i`` to a test
sample vote for their class with weight ``exp(s_i / T)``, and classes are ranked by their summed
votes. Defaults ``k = 200``, ``T = 0.1`` follow InstDisc / DINO.

Test samples are processed in chunks, so memory is ``O(chunk * N_train)`` whatever the test size;
the computation runs on the device of the train features.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.eval.features import BatchSource, Preprocess, extract_features, resolve_device
from selfsup.types import ConfigError, DataError

# Similarity entries per chunk: bounds the [chunk, N_train] matrix to 32 Mi floats (128 MiB).
_MAX_CHUNK_ELEMENTS = 1 << 25


def _check_features(train_f: Tensor, train_y: Tensor, test_f: Tensor) -> None:
    if train_f.dim() != 2 or test_f.dim() != 2:
        raise DataError(
            f"kNN features must be [N, D] matrices; got train {tuple(train_f.shape)}, "
            f"test {tuple(test_f.shape)}"
        )
    if train_f.shape[1] != test_f.shape[1]:
        raise DataError(
            f"kNN train and test features differ in dimension: {train_f.shape[1]} vs "
            f"{test_f.shape[1]}"
        )
    if train_y.dim() != 1 or train_y.shape[0] != train_f.shape[0]:
        raise DataError(
            f"kNN train labels must be [N] with N = {train_f.shape[0]}; got {tuple(train_y.shape)}"
        )


def infer_num_classes(*labels: Tensor) -> int:
    """``max(label) + 1`` over the given label tensors (``-1`` = unlabeled is ignored).

    Raises:
        DataError: if no tensor holds a labeled sample.
    """
    top = max((int(y.max()) for y in labels if y.numel() > 0), default=-1)
    if top < 0:
        raise DataError("no labeled samples (all labels are -1); cannot infer the class count")
    return top + 1


def knn_predict(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int | None = None,
) -> Tensor:
    """Class scores of the weighted kNN vote (InstDisc sec. 3.4).

    ``score[j, c] = sum over the k nearest labeled train samples i of class c of exp(s_ij / T)``
    with ``s_ij`` the cosine similarity. Train rows labelled ``-1`` are ignored and ``k`` is
    clamped to the number of labeled train rows.

    Args:
        train_f: train features ``[N, D]`` (any scale; normalised here).
        train_y: train labels ``[N]`` int, ``-1`` = unlabeled.
        test_f: test features ``[M, D]``; moved chunk by chunk to ``train_f``'s device.
        num_classes: number of classes ``C``.
        k: neighbours per test sample (>= 1).
        temperature: ``T > 0``; weights ``exp(s / T)`` stay finite for ``T >= 0.012`` in fp32.
        chunk_size: test rows per similarity block; None = ``min(1024, 2**25 // N)``.

    Returns:
        Scores ``[M, C]`` float32 on ``train_f``'s device.

    Raises:
        DataError: for shape mismatches, no labeled train row, or a label >= ``num_classes``.
        ConfigError: for ``k < 1``, ``temperature <= 0``, ``num_classes < 1`` or
            ``chunk_size < 1``.
    """
    _check_features(train_f, train_y, test_f)
    if k < 1:
        raise ConfigError(f"kNN k must be >= 1, got {k}")
    if not temperature > 0:
        raise ConfigError(f"kNN temperature must be > 0, got {temperature}")
    if num_classes < 1:
        raise ConfigError(f"kNN num_classes must be >= 1, got {num_classes}")
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"kNN chunk_size must be >= 1, got {chunk_size}")
    dev = train_f.device
    labeled = train_y.to(dev) >= 0
    bank_y = train_y.to(dev)[labeled].long()
    if bank_y.numel() == 0:
        raise DataError("kNN: no labeled train samples (every train label is -1)")
    if int(bank_y.max()) >= num_classes:
        raise DataError(
            f"kNN: train label {int(bank_y.max())} is out of range for num_classes={num_classes}"
        )
    bank = F.normalize(train_f[labeled].float(), dim=1).t().contiguous()  # [D, N]
    n = bank.shape[1]
    kk = min(k, n)
    chunk = chunk_size or max(1, min(1024, _MAX_CHUNK_ELEMENTS // n))
    out = torch.empty(test_f.shape[0], num_classes, device=dev)
    for start in range(0, test_f.shape[0], chunk):
        q = F.normalize(test_f[start : start + chunk].to(dev).float(), dim=1)
        sim, idx = (q @ bank).topk(kk, dim=1)  # [m, k] cosine similarities, bank indices
        weight = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=dev)
        votes.scatter_add_(1, bank_y[idx], weight)
        out[start : start + q.shape[0]] = votes
    return out


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent, keyed ``top1``, ``top5``, ...; ``k`` is clamped to ``C``.

    Args:
        scores: ``[M, C]`` class scores (higher = more likely).
        labels: ``[M]`` true classes in ``[0, C)``.

    Raises:
        DataError: if there are no rows or the shapes disagree.
    """
    if scores.dim() != 2 or labels.shape != scores.shape[:1] or scores.shape[0] == 0:
        raise DataError(
            f"accuracy needs scores [M, C] and labels [M] with M > 0; got {tuple(scores.shape)} "
            f"and {tuple(labels.shape)}"
        )
    labels = labels.to(scores.device).long()
    pred = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # [M, kmax]
    hit = pred == labels[:, None]
    return {f"top{k}": 100.0 * float(hit[:, :k].any(dim=1).float().mean()) for k in ks}


def knn_accuracy(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    num_classes: int | None = None,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of the weighted kNN classifier, see :func:`knn_predict`.

    Test rows labelled ``-1`` are not scored. ``num_classes`` defaults to the largest label + 1.

    Returns:
        ``{"top1": ..., "top5": ...}`` in percent (top-5 is 100 when there are <= 5 classes).

    Raises:
        DataError: as :func:`knn_predict`, for test labels not matching ``test_f`` or with no
            labeled test row.
        ConfigError: as :func:`knn_predict`.
    """
    if test_y.dim() != 1 or test_y.shape[0] != test_f.shape[0]:
        raise DataError(
            f"kNN test labels must be [M] with M = {test_f.shape[0]}; got {tuple(test_y.shape)}"
        )
    keep = test_y >= 0
    if not bool(keep.any()):
        raise DataError("kNN: no labeled test samples (every test label is -1)")
    if num_classes is None:
        num_classes = infer_num_classes(train_y, test_y)
    if int(test_y.max()) >= num_classes:
        raise DataError(
            f"kNN: test label {int(test_y.max())} is out of range for num_classes={num_classes}"
        )
    scores = knn_predict(
        train_f, train_y, test_f[keep.to(test_f.device)], num_classes, k, temperature, chunk_size
    )
    return topk_accuracy(scores, test_y[keep])


class OnlineKNN:
    """kNN accuracy on a small held-out split, called by the trainer every few epochs.

    Each call extracts features of ``train_ds`` (the memory bank; its ``-1`` rows are skipped)
    and ``val_ds`` with the current encoder (restoring its train/eval mode) and returns
    ``{"top1", "top5"}`` in percent. Arguments are as in :func:`extract_features` and
    :func:`knn_accuracy`; ``device`` None = the encoder's. Both sets are encoded on every call, so
    keep them small (a few thousand images).
    """

    def __init__(
        self,
        train_ds: BatchSource | Sized,
        val_ds: BatchSource | Sized,
        preprocess: Preprocess,
        k: int = 200,
        t: float = 0.1,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> None:
        self.train_ds, self.val_ds, self.preprocess = train_ds, val_ds, preprocess
        self.k, self.t, self.batch_size, self.device = k, t, batch_size, device
        self.num_classes: int | None = getattr(train_ds, "num_classes", None) or None

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        """Current kNN accuracy of ``encoder`` on the held-out split."""
        kw: dict[str, Any] = {"batch_size": self.batch_size, "device": self.device}
        tr_f, tr_y = extract_features(encoder, self.train_ds, self.preprocess, **kw)
        va_f, va_y = extract_features(encoder, self.val_ds, self.preprocess, **kw)
        dev = resolve_device(encoder, self.device)  # the vote runs where the encoder runs
        return knn_accuracy(
            tr_f.to(dev), tr_y, va_f, va_y, self.num_classes, k=self.k, temperature=self.t
        )
