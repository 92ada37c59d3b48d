"""Data sources: one :class:`ImageDataset` over a folder, an array file or a named built-in.

What ``--data PATH`` (``DataConfig.path``) may be:

- a folder of images (see :mod:`selfsup.data.folder`): class subfolders give labels;
- an ``.npz``/``.npy`` file of images ``NHWC``/``NCHW``/``NHW`` (see :mod:`selfsup.data.arrays`);
- a built-in name (``selfsup list datasets``): ``digits`` (scikit-learn, 8x8 grey), and
  ``mnist``, ``cifar10``, ``eurosat_ms`` read from the shared data folder. A bare registered
  name always means the built-in; write ``./mnist`` for a local folder of that name.

Images stay raw (uint8, uint16 or float32 ``[C, H, W]``); the trainer turns them into unit
range with :class:`selfsup.data.stats.Normalization` on the training device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from selfsup import registry
from selfsup.data.arrays import (
    SPLITS,
    gather_rows,
    read_array_file,
    shared_data_file,
    stratified_split,
)
from selfsup.data.folder import IMAGE_EXTENSIONS, FolderImages, center_square_resize, open_folder
from selfsup.data.loader import make_loader
from selfsup.data.python_data import is_python_data, python_images
from selfsup.types import ConfigError, DataError

__all__ = [
    "ImageDataset", "make_loader", "open_dataset",
]

logger = logging.getLogger("selfsup")

_WARNED: set[str] = set()  # undecodable files already reported
_TORCH_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16, "float32": torch.float32}


class ImageDataset(Dataset):
    """Images as raw tensors ``[C, H, W]`` (uint8, uint16 or float32) with int64 labels.

    Storage is either an in-memory tensor ``[M, C, H, W]`` or lazily decoded files; a subset
    shares the storage through a row map. Treat images as read-only.

    Attributes:
        channels: band count C.
        image_size: ``(H, W)`` of every image.
        num_classes: number of classes of the source, None if it has no labels.
        class_names: class names (index = label), None if unlabeled.
        dtype: ``torch.uint8``, ``torch.uint16`` or ``torch.float32``.
        source: where the data came from: path or built-in name, with the split in brackets
            for sources that have splits (``"cifar10 (test)"``).
        split: the split read (``train``/``test``/``all``), None for a source without splits
            (a folder, an ``.npy`` or an ``.npz`` without ``x_train``/``x_test``).
        in_memory: True for arrays and built-ins (``get_batch`` is one gather).
        labels: ``[N]`` int64, -1 where unlabeled.
    """

    def __init__(
        self,
        *,
        labels: Tensor,
        source: str,
        class_names: list[str] | None = None,
        images: Tensor | None = None,
        folder: FolderImages | None = None,
        rows: Tensor | None = None,
        strict: bool = False,
        split: str | None = None,
    ) -> None:
        if (images is None) == (folder is None):
            raise ValueError("ImageDataset needs exactly one of images= or folder=")
        images = images.contiguous() if images is not None else None
        self._images, self._folder, self._rows, self._strict = images, folder, rows, strict
        n = len(rows) if rows is not None else (len(images) if images is not None else
                                                 len(folder.files))  # type: ignore[union-attr]
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape [{n}], got {tuple(labels.shape)}")
        self.labels = labels.to(torch.int64, copy=True)  # never aliases a cached array
        self.source, self.split = source, split
        self.class_names = class_names
        self.num_classes = len(class_names) if class_names is not None else None
        if images is not None:
            self.channels, self.image_size = images.shape[1], (images.shape[2], images.shape[3])
            self.dtype, self.in_memory = images.dtype, True
        else:
            assert folder is not None
            self.channels, self.image_size = folder.channels, folder.size
            self.dtype, self.in_memory = _TORCH_DTYPES[folder.dtype], False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        h, w = self.image_size
        kind = "memory" if self.in_memory else "files"
        classes = f", {self.num_classes} classes" if self.num_classes else ", unlabeled"
        return (f"ImageDataset('{self.source}', {len(self)} images {self.channels}x{h}x{w} "
                f"{str(self.dtype).removeprefix('torch.')} in {kind}{classes})")

    @property
    def has_labels(self) -> bool:
        """True if any sample has a label (>= 0)."""
        return bool((self.labels >= 0).any())

    @property
    def device(self) -> torch.device:
        """Device of the image storage (CPU for folders)."""
        return self._images.device if self._images is not None else torch.device("cpu")

    def row_names(self) -> list[str]:
        """One name per sample, in sample order: the file path for folders, else
        ``"<source>#<row>"`` (the row of the source array), so outputs can be matched to inputs."""
        if self._folder is not None:
            return [self._folder.files[self._row(i)] for i in range(len(self))]
        return [f"{self.source}#{self._row(i)}" for i in range(len(self))]

    def _row(self, i: int) -> int:
        return int(self._rows[i]) if self._rows is not None else i

    def _load(self, i: int) -> tuple[Tensor, int]:
        """Image and position of sample ``i``; an undecodable file is replaced by the next one
        (with a warning) unless the dataset is strict."""
        assert self._folder is not None
        for k in range(min(len(self), 16)):
            j = (i + k) % len(self)
            try:
                return self._folder.load(self._row(j)), j
            except DataError as e:
                if self._strict:
                    raise
                path = self._folder.files[self._row(j)]
                if path not in _WARNED:  # once per file and process
                    _WARNED.add(path)
                    logger.warning("%s; using another image instead (data.strict=true to fail)", e)
        raise DataError(f"'{self.source}': 16 images in a row starting at index {i} are unreadable")

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        """Return ``(image [C, H, W] raw, label, index)``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} images")
        i = i % len(self)
        if self._images is not None:
            return self._images[self._row(i)], int(self.labels[i]), i
        x, j = self._load(i)
        return x, int(self.labels[j]), j

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``[B, C, H, W]`` (raw dtype) and labels ``[B]`` of the samples ``index [B]``.

        In memory this is one gather on the storage's device (labels are returned there too);
        for folders every file is decoded here (slow path).
        """
        index = torch.as_tensor(index, dtype=torch.int64).cpu()
        if self._images is None:
            loaded = [self._load(int(i)) for i in index]
            pos = torch.tensor([j for _, j in loaded], dtype=torch.int64)
            return torch.stack([x for x, _ in loaded]), self.labels[pos]
        rows = self._rows[index] if self._rows is not None else index
        dev = self._images.device
        return gather_rows(self._images, rows.to(dev)), self.labels[index].to(dev)

    def _derive(self, rows: Tensor | None, labels: Tensor, images: Tensor | None = None,
                ) -> ImageDataset:
        return ImageDataset(
            labels=labels, source=self.source, class_names=self.class_names,
            images=images if images is not None else self._images, folder=self._folder,
            rows=rows, strict=self._strict, split=self.split,
        )

    def subset(self, indices: Sequence[int] | Tensor) -> ImageDataset:
        """The samples ``indices`` (in that order), sharing this dataset's storage.

        Raises:
            IndexError: if an index is out of range.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).flatten()
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"subset indices must lie in [0, {len(self)}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        rows = self._rows[idx] if self._rows is not None else idx
        return self._derive(rows, self.labels[idx])

    def with_labels(self, labels: Tensor) -> ImageDataset:
        """The same images with other labels ``[N]`` (-1 = unlabeled)."""
        return self._derive(self._rows, torch.as_tensor(labels, dtype=torch.int64))

    def to(self, device: torch.device | str) -> ImageDataset:
        """Move the image storage of an in-memory dataset to ``device`` (e.g. the GPU, so that
        ``get_batch`` gathers there); folder datasets are returned unchanged."""
        if self._images is None:
            return self
        images = self._images if self._rows is None else self._images[self._rows]
        return self._derive(None, self.labels, images.to(device))


def _in_memory(images: Tensor, labels: Tensor, names: list[str] | None, source: str,
               split: str | None, image_size: int | None, limit: int | None) -> ImageDataset:
    """An in-memory dataset, optionally cut to ``limit`` and center-square-resized."""
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if image_size is not None and tuple(images.shape[2:]) != (image_size, image_size):
        logger.info("resizing %d images of '%s' from %dx%d to %dx%d", len(images), source,
                    images.shape[2], images.shape[3], image_size, image_size)
        images = torch.cat([center_square_resize(images[i : i + 1024], image_size)
                            for i in range(0, len(images), 1024)])
    if split is not None:
        source = f"{source} ({split})"
    return ImageDataset(labels=labels, source=source, class_names=names, images=images,
                        split=split)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"data.split must be one of {', '.join(SPLITS)}, got '{split}'")


# ------------------------------------------------------------------ built-in datasets


def _split_index(labels: Tensor, split: str, shuffle: bool = False) -> Tensor:
    """Indices of ``split`` of a source without an official one: fixed seeded 80/20 stratified."""
    train, test = stratified_split(labels, 0.8, seed=0)
    idx = {"train": train, "test": test, "all": torch.arange(len(labels))}[split]
    if shuffle:  # class-sorted sources: a fixed shuffle so that `limit` keeps every class
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))]
    return idx


@registry.register("dataset", "digits",
                   description="scikit-learn digits: 1797 grey 8x8 images, 10 classes (80/20 split)")
def _digits(split: str = "train", image_size: int | None = None,
            limit: int | None = None) -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None])
    y = torch.from_numpy(d.target.astype(np.int64))  # x: [1797, 1, 8, 8], grey 0-16 -> 0-255
    idx = _split_index(y, split)
    names = [str(i) for i in range(10)]
    return _in_memory(x[idx], y[idx], names, "digits", split, image_size, limit)


def _shared(name: str, split: str, image_size: int | None, limit: int | None,
            own_split: bool = False) -> ImageDataset:
    data = read_array_file(shared_data_file(name), "all" if own_split else split)
    images, labels = data.images, data.labels
    if own_split:
        idx = _split_index(labels, split, shuffle=True)
        images, labels = images[idx], labels[idx]
    return _in_memory(images, labels, data.class_names, name, split, image_size, limit)


@registry.register("dataset", "mnist",
                   description="MNIST: 60000/10000 grey 28x28 digits (shared data folder)")
def _mnist(split: str = "train", image_size: int | None = None,
           limit: int | None = None) -> ImageDataset:
    return _shared("mnist", split, image_size, limit)


@registry.register("dataset", "cifar10",
                   description="CIFAR-10: 25000/10000 RGB 32x32 images, 10 classes (shared data)")
def _cifar10(split: str = "train", image_size: int | None = None,
             limit: int | None = None) -> ImageDataset:
    return _shared("cifar10", split, image_size, limit)


@registry.register("dataset", "eurosat_ms",
                   description="EuroSAT Sentinel-2: 200 13-band uint16 64x64 images (80/20 split)")
def _eurosat_ms(split: str = "train", image_size: int | None = None,
                limit: int | None = None) -> ImageDataset:
    return _shared("eurosat_ms", split, image_size, limit, own_split=True)


# ------------------------------------------------------------------ opening


def open_dataset(path: Any, *, split: str = "train", image_size: int | None = None,
                 strict: bool = False, limit: int | None = None, size_hint: bool = True
                 ) -> ImageDataset:
    """Open a folder, an ``.npz``/``.npy`` file or a built-in dataset by name, or take images
    from Python (:mod:`selfsup.data.python_data`).

    Args:
        path: folder, array file, or a registered dataset name (``selfsup list datasets``); or
            an array/tensor of images, ``(images, labels)``, or a ``torch.utils.data.Dataset``
            (no splits: every ``split`` gives all of it).
        split: ``train``, ``test`` or ``all`` (built-ins and npz files with x_train/x_test).
        image_size: center-crop and resize every image to this square side; None keeps the
            native size (a folder of mixed sizes: the median shorter side).
        strict: fail on unreadable image files instead of skipping them with a warning.
        limit: keep only the first ``limit`` samples (class folders: evenly spaced).

    Raises:
        ConfigError: for a bad ``split``, ``image_size`` or ``limit``.
        DataError: for a path that is no folder, array file or built-in name (listing the
            built-ins), or a source whose contents do not have the expected form.
    """
    _check_split(split)
    for name, v in (("data.image_size", image_size), ("data.limit", limit)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v}")
    if is_python_data(path):
        images, labels, source = python_images(path, image_size=image_size, limit=limit)
        return _in_memory(images, labels, None, source, None, image_size, None)
    if str(path).startswith("python:"):
        raise DataError(f"data '{path}' was a Python object passed to selfsup.pretrain; pass "
                        "the data again (selfsup.evaluate(ckpt, data=...)) or a path")
    path = str(path)
    names = registry.list_names("dataset")
    p = Path(path).expanduser()
    if path in names and "/" not in path and "\\" not in path:
        ds = registry.create("dataset", path, split=split, image_size=image_size, limit=limit)
        assert isinstance(ds, ImageDataset)
        return ds
    if p.is_dir():
        folder, flabels, classes = open_folder(p, image_size=image_size, strict=strict, limit=limit,
                                               size_hint=size_hint)
        if split == "test":
            logger.info("'%s' is a folder without splits; using all its images", p)
        return ImageDataset(labels=torch.tensor(flabels, dtype=torch.int64), source=str(p),
                            class_names=classes, folder=folder, strict=strict)
    if p.is_file() and p.suffix.lower() in (".npz", ".npy"):
        data = read_array_file(p, split)
        return _in_memory(data.images, data.labels, data.class_names, str(p), data.split,
                          image_size, limit)
    if p.is_file():
        hint = " (a single image: pass its folder)" if p.suffix.lower() in IMAGE_EXTENSIONS else ""
        raise DataError(f"data path '{path}' is a file but not an .npz/.npy array{hint}; expected "
                        "a folder of images, an .npz/.npy file or a built-in dataset name")
    if p.exists():
        raise DataError(f"data path '{path}' is neither a folder nor an .npz/.npy file")
    raise DataError(f"data path '{path}' does not exist and is not a built-in dataset "
                    f"(built-ins: {', '.join(names)})")
