"""Images handed over from Python: an array or tensor, ``(images, labels)``, or any
``torch.utils.data.Dataset`` (``selfsup.pretrain("byol", data=my_dataset)``).

Arrays and tensors take the layouts of array files (``[N, H, W, C]``, ``[N, C, H, W]``,
``[N, H, W]``; :func:`~selfsup.data.arrays.array_layout`), ``uint8``/``uint16`` kept, anything
else as ``float32``. A ``Dataset`` is read once, item by item, into memory (as image folders
are); an item is an image or a tuple whose first element is the image and whose second, if any,
an integer label. An image is a ``[C, H, W]`` tensor (torchvision's ``ToTensor`` layout), a
``[H, W]`` tensor, a PIL image or an ``[H, W(, C)]`` array. Images of different sizes need
``image_size`` (each is then center-cropped to a square and resized).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.data.arrays import to_labels, to_nchw
from selfsup.data.folder import center_square_resize
from selfsup.types import DataError

__all__ = ["describe", "is_python_data", "python_images"]

logger = logging.getLogger("selfsup")


def is_python_data(obj: Any) -> bool:
    """Whether ``obj`` is data from Python rather than a path or a built-in name."""
    return not isinstance(obj, (str, bytes)) and not hasattr(obj, "__fspath__")


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(
        obj, (np.ndarray, Tensor, tuple, list))


def describe(obj: Any) -> str:
    """A short, deterministic name for ``obj`` (saved as the run's ``data.path``)."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and not _is_dataset(obj[0]):
        return describe(obj[0]) + " with labels"
    if isinstance(obj, (np.ndarray, Tensor)):
        dtype = str(obj.dtype).replace("torch.", "")
        return f"python:{type(obj).__name__}[{'x'.join(map(str, obj.shape))} {dtype}]"
    if _is_dataset(obj):
        return f"python:{type(obj).__name__}[{len(obj)}]"
    return f"python:{type(obj).__name__}"


def _image(item: Any, where: str) -> Tensor:
    """One dataset image -> ``[C, H, W]``."""
    if isinstance(item, Tensor):
        x = item.detach().cpu()
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3:
            raise DataError(f"{where}: an image tensor of shape {tuple(item.shape)}; expected "
                            "[C, H, W] or [H, W]")
        return x if x.dtype in (torch.uint8, torch.float32) else x.float()
    arr = np.asarray(item)  # PIL images and arrays
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(f"{where}: an image of shape {arr.shape} ({type(item).__name__}); "
                        "expected a [C, H, W] tensor, a PIL image or an [H, W(, C)] array")
    return to_nchw(arr[None], where)[0]


def _read_dataset(ds: Any, where: str, image_size: int | None, limit: int | None
                  ) -> tuple[Tensor, Tensor]:
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise DataError(f"{where} is empty")
    logger.info("reading %d items of %s into memory", n, where)
    images: list[Tensor] = []
    labels: list[int] = []
    for i in range(n):
        item = ds[i]
        img, label = (item[0], item[1] if len(item) > 1 else -1) if isinstance(
            item, (tuple, list)) else (item, -1)
        x = _image(img, f"{where} item {i}")
        if image_size is not None and tuple(x.shape[1:]) != (image_size, image_size):
            x = center_square_resize(x[None], image_size)[0]
        if images and (x.shape != images[0].shape or x.dtype != images[0].dtype):
            raise DataError(f"{where}: item {i} is {tuple(x.shape)} {x.dtype}, item 0 "
                            f"{tuple(images[0].shape)} {images[0].dtype}; set data.image_size "
                            "(image_size=...) to resize images of different sizes")
        try:
            labels.append(int(label))
        except (TypeError, ValueError):
            raise DataError(f"{where}: item {i}'s label {label!r} is not an integer class "
                            "index") from None
        images.append(x)
    return torch.stack(images), to_labels(np.asarray(labels), n, where)


def python_images(obj: Any, *, image_size: int | None = None, limit: int | None = None
                  ) -> tuple[Tensor, Tensor, str]:
    """``(images [N, C, H, W], labels [N] (-1 = none), source name)`` of Python data ``obj``.

    Raises:
        DataError: naming what was passed and what is expected, for any other object, an empty
            one, images of mixed sizes without ``image_size``, or labels that are not integers.
    """
    where = describe(obj)
    if _is_dataset(obj):
        images, labels = _read_dataset(obj, where, image_size, limit)
        return images, labels, where
    y = None
    x = obj
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    if not isinstance(x, (np.ndarray, Tensor)):
        raise DataError(f"data of type {type(obj).__name__}: expected a folder, an array file, "
                        "a built-in name, an array or tensor of images, (images, labels), or a "
                        "torch.utils.data.Dataset")
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if limit is not None:
        arr = arr[:limit]
    images = to_nchw(arr, where)
    if y is None:
        labels = torch.full((len(images),), -1, dtype=torch.int64)
    else:
        ya = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
        labels = to_labels(ya[:len(images)] if limit is not None else ya, len(images), where)
    return images, labels, where
