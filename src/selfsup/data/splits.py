"""Splits of an :class:`~selfsup.data.datasets.ImageDataset`: a seeded, class-stratified hold-out
(the online kNN monitor, evaluation without a test split), a labeled fraction (few-label
experiments) and :func:`from_config`, which applies both as a :class:`~selfsup.config.DataConfig`
asks."""

from __future__ import annotations

from typing import Any

import torch

from selfsup.config import DataConfig
from selfsup.data.arrays import stratified_split
from selfsup.data.datasets import ImageDataset, open_dataset
from selfsup.types import ConfigError, DataError

__all__ = ["from_config", "split_holdout", "split_labeled"]


def split_holdout(ds: ImageDataset, fraction: float, seed: int
                  ) -> tuple[ImageDataset, ImageDataset]:
    """Hold out a seeded ``fraction`` of ``ds``, class-stratified (unlabeled samples form one
    more group); both parts share the storage and keep their labels.

    Returns:
        ``(rest, held_out)``.

    Raises:
        ConfigError: if ``fraction`` is not in ``(0, 1)``.
        DataError: if either part would be empty.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"hold-out fraction must be in (0, 1), got {fraction}")
    held, rest = stratified_split(ds.labels, fraction, seed)
    if len(held) == 0 or len(rest) == 0:
        raise DataError(f"holding out {fraction:g} of the {len(ds)} images of '{ds.source}' "
                        f"leaves {len(rest)} and {len(held)}; both parts need images")
    return ds.subset(rest), ds.subset(held)


def split_labeled(ds: ImageDataset, fraction: float, seed: int) -> ImageDataset:
    """Keep labels on a seeded, class-stratified ``fraction`` of ``ds``; the rest become -1.

    Every class keeps ``round(fraction * n_c)`` labels, at least one. Images are shared.

    Raises:
        ConfigError: if ``fraction`` is not in ``(0, 1]`` (naming ``data.labeled_fraction``).
        DataError: if ``ds`` has no labels.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"data.labeled_fraction must be in (0, 1], got {fraction}")
    if not ds.has_labels:
        raise DataError(f"data.labeled_fraction needs labels but '{ds.source}' has none")
    keep, _ = stratified_split(ds.labels, fraction, seed)
    mask = torch.zeros(len(ds), dtype=torch.bool)
    mask[keep] = True
    for c in torch.unique(ds.labels[ds.labels >= 0]).tolist():  # at least one label per class
        members = torch.nonzero(ds.labels == c).flatten()
        if not mask[members].any():
            mask[members[0]] = True
    return ds.with_labels(torch.where(mask, ds.labels, torch.full_like(ds.labels, -1)))


def from_config(cfg: DataConfig, source: Any = None
                ) -> tuple[ImageDataset, ImageDataset | None]:
    """Open ``cfg.path`` (or ``source``: data from Python, see
    :mod:`selfsup.data.python_data`) and derive the training set and the held-out monitor set.

    ``limit`` is applied first; then ``val_fraction`` holds out a seeded class-stratified subset
    (keeping all its labels, for the online kNN monitor); then ``labeled_fraction`` strips the
    labels from all but a stratified fraction of the training part.

    Returns:
        ``(train, val)``; ``val`` is None when ``cfg.val_fraction`` is 0.

    Raises:
        ConfigError: naming ``data.val_fraction``, ``data.labeled_fraction``, ``data.split``,
            ``data.limit``, ``data.image_size`` or ``data.num_workers`` when out of range.
        DataError: as :func:`open_dataset`, or when the monitor split needs labels that the
            data lack, or leaves either part empty.
    """
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.labeled_fraction is not None and not 0.0 < cfg.labeled_fraction <= 1.0:
        raise ConfigError(f"data.labeled_fraction must be in (0, 1], got {cfg.labeled_fraction}")
    if cfg.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {cfg.num_workers}")
    ds = open_dataset(cfg.path if source is None else source, split=cfg.split, image_size=cfg.image_size, strict=cfg.strict,
                      limit=cfg.limit)
    val: ImageDataset | None = None
    if cfg.val_fraction > 0:
        if not ds.has_labels:
            raise DataError(f"data.val_fraction={cfg.val_fraction} holds out labeled images for "
                            f"the kNN monitor, but '{ds.source}' has no labels; set it to 0")
        ds, val = split_holdout(ds, cfg.val_fraction, cfg.seed)
    if cfg.labeled_fraction is not None and cfg.labeled_fraction < 1.0:
        ds = split_labeled(ds, cfg.labeled_fraction, cfg.seed)
    return ds, val
