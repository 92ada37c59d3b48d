"""Images stored as arrays: ``.npz``/``.npy`` files, the shared data folder, stratified splits.

Arrays are ``[N, H, W, C]`` or ``[N, C, H, W]`` (or ``[N, H, W]`` for one band) and are returned
as contiguous ``[N, C, H, W]`` tensors: ``uint8``/``uint16`` kept, every other type as ``float32``.
Loading is cached per process (``functools.lru_cache``): decompressing CIFAR-10 takes about 1 s.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup.types import DataError

SPLITS = ("train", "test", "all")
SHARED_ENV = "SELFSUP_SHARED_DATA"


@dataclass(frozen=True)
class ArrayData:
    """Images ``[N, C, H, W]`` (uint8, uint16 or float32), labels ``[N]`` int64 (-1 = none),
    and the split read (None for a file without splits, which gives all its images for any)."""

    images: Tensor
    labels: Tensor
    class_names: list[str] | None
    split: str | None


def array_layout(shape: tuple[int, ...]) -> str:
    """``"NHW"``, ``"NCHW"`` or ``"NHWC"`` for an image array of ``shape``.

    Square images decide (``N,3,32,32`` is NCHW, ``N,64,64,13`` NHWC); otherwise NCHW when
    dim 1 is small (<= 32) and dim 3 large (> 32).
    """
    if len(shape) == 3:
        return "NHW"
    _, a, b, c = shape
    if b == c and a != b:
        return "NCHW"
    if a == b and c != a:
        return "NHWC"
    return "NCHW" if a <= 32 and c > 32 else "NHWC"


def to_nchw(x: np.ndarray, where: str) -> Tensor:
    """Convert an image array to a contiguous ``[N, C, H, W]`` tensor.

    Raises:
        DataError: naming ``where`` for a wrong rank, an empty array, a non-numeric dtype or
            non-finite floats.
    """
    if x.ndim not in (3, 4) or x.shape[0] == 0 or min(x.shape) == 0:
        raise DataError(f"{where}: found an array of shape {tuple(x.shape)}; expected images "
                        "[N, H, W, C], [N, C, H, W] or [N, H, W] with N >= 1")
    if x.dtype.kind not in "uifb":
        raise DataError(f"{where}: images have dtype {x.dtype}; expected uint8, uint16 or float")
    layout = array_layout(x.shape)
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    dtype = x.dtype if x.dtype in (np.uint8, np.uint16) else np.dtype(np.float32)
    if x.dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    out = np.ascontiguousarray(x, dtype=dtype)
    if out.dtype == np.float32 and not np.isfinite(out).all():
        raise DataError(f"{where}: images contain NaN or infinite values")
    return torch.from_numpy(out)


def to_labels(y: np.ndarray, n: int, where: str) -> Tensor:
    """Check and convert a label array to int64 ``[n]`` (-1 = unlabeled).

    Raises:
        DataError: naming ``where`` for a wrong shape/length, non-integer values or values < -1.
    """
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{where}: labels have shape {tuple(y.shape)}; expected [{n}] "
                        "(one integer class per image)")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: labels have dtype {y.dtype} with non-integer values; "
                        "expected integer class indices (-1 = unlabeled)")
    out = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    if n and int(out.min()) < -1:
        raise DataError(f"{where}: labels must be >= 0 (or -1 = unlabeled), found {int(out.min())}")
    return out


_KEY_SETS = (("x", "y"), ("images", "labels"))


def _pick_keys(keys: list[str], split: str, where: str) -> list[tuple[str, str | None]]:
    """The (image key, label key) pairs of ``split`` in an npz with ``keys``."""
    def label(k: str) -> str | None:
        return k if k in keys else None

    if "x_train" in keys or "x_test" in keys:
        wanted = ["train", "test"] if split == "all" else [split]
        missing = [s for s in wanted if f"x_{s}" not in keys]
        if missing:
            raise DataError(f"{where}: no key 'x_{missing[0]}' for split '{split}' "
                            f"(keys: {', '.join(keys)})")
        return [(f"x_{s}", label(f"y_{s}")) for s in wanted]
    for xk, yk in _KEY_SETS:
        if xk in keys:
            return [(xk, label(yk))]
    arrays = [k for k in keys if k not in ("class_names", "band_names")]
    if len(arrays) == 1:
        return [(arrays[0], None)]
    raise DataError(f"{where}: found keys {', '.join(keys) or '(none)'}; expected 'x' (and 'y'), "
                    "'x_train'/'y_train'/'x_test'/'y_test' or 'images'/'labels'")


def _class_names(d: np.lib.npyio.NpzFile, labels: Tensor, where: str) -> list[str] | None:
    names = [str(s) for s in d["class_names"].tolist()] if "class_names" in d.files else None
    if not bool((labels >= 0).any()):
        return names
    top = int(labels.max())
    if names is None:
        return [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise DataError(f"{where}: label {top} is out of range for the {len(names)} entries "
                        "of 'class_names'")
    return names


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, split: str, stamp: tuple[int, int]) -> ArrayData:
    del stamp  # part of the cache key only: a rewritten file is read again
    try:
        d = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"cannot read '{path}' as an .npz/.npy numpy file: {e}") from None
    if isinstance(d, np.ndarray):  # an .npy file: images only
        images = to_nchw(d, f"'{path}'")
        return ArrayData(images, torch.full((images.shape[0],), -1, dtype=torch.int64), None, None)
    with d:
        xs, ys = [], []
        pairs = _pick_keys(list(d.files), split, f"'{path}'")
        for xk, yk in pairs:
            try:
                x = d[xk]
                y = d[yk] if yk is not None else None
            except Exception as e:
                raise DataError(f"'{path}': cannot read key '{xk}': {e}") from None
            xs.append(to_nchw(x, f"'{path}' key '{xk}'"))
            n = xs[-1].shape[0]
            ys.append(to_labels(y, n, f"'{path}' key '{yk}'") if y is not None
                      else torch.full((n,), -1, dtype=torch.int64))
        if len({t.shape[1:] for t in xs}) > 1 or len({t.dtype for t in xs}) > 1:
            raise DataError(f"'{path}': train and test images differ in shape or dtype "
                            f"({[tuple(t.shape) for t in xs]}); cannot use split 'all'")
        images = xs[0] if len(xs) == 1 else torch.cat(xs)
        labels = ys[0] if len(ys) == 1 else torch.cat(ys)
        has_split = pairs[0][0].startswith("x_")
        names = _class_names(d, labels, f"'{path}'")
        return ArrayData(images, labels, names, split if has_split else None)


def read_array_file(path: str | Path, split: str = "train") -> ArrayData:
    """Read images (and labels) of ``split`` from an ``.npz`` or ``.npy`` file (cached).

    Keys of an ``.npz``: ``x``/``y``, ``images``/``labels``, or ``x_train``/``y_train``/
    ``x_test``/``y_test`` (``split='all'`` concatenates both); a lone array is taken as images.
    A file without ``x_train``/``x_test`` has no splits: any ``split`` gives all of it. An
    optional ``class_names`` array names the classes. The returned tensors are shared by all
    callers: treat them as read-only.

    Raises:
        DataError: naming the file and key for a missing key, wrong shapes, label length
            mismatches or non-integer labels.
    """
    st = os.stat(path)
    split_free = str(path).lower().endswith(".npy")
    if not split_free:
        try:
            with np.load(path, allow_pickle=False) as d:  # lists the members, decompresses none
                split_free = not any(k in d.files for k in ("x_train", "x_test"))
        except Exception:
            pass  # reported by _read_cached
    key = "all" if split_free else split  # one cached copy for every split of a split-free file
    return _read_cached(str(Path(path).resolve()), key, (st.st_mtime_ns, st.st_size))


def shared_data_file(name: str) -> Path:
    """Locate ``<name>/<name>.npz`` in the shared data folder.

    Looks in ``$SELFSUP_SHARED_DATA`` (the ``data`` folder itself) if set, else in
    ``shared/data`` next to the current directory or the package file or any of their parents.

    Raises:
        DataError: saying where it looked and how to set ``SELFSUP_SHARED_DATA``.
    """
    env = os.environ.get(SHARED_ENV)
    candidates: list[Path] = []
    if env:
        candidates += [Path(env) / name / f"{name}.npz", Path(env) / f"{name}.npz"]
    else:
        for start in (Path.cwd(), Path(__file__).resolve().parent):
            for d in (start, *start.parents):
                candidates.append(d / "shared" / "data" / name / f"{name}.npz")
    for c in candidates:
        if c.is_file():
            return c
    where = (f"${SHARED_ENV}={env}" if env else
             "shared/data/ next to the current directory, the package and their parents")
    raise DataError(f"built-in dataset '{name}' needs {name}/{name}.npz from the shared data "
                    f"folder, not found in {where}; set {SHARED_ENV}=/path/to/shared/data")


def stratified_split(labels: Tensor, fraction: float, seed: int,
                     min_rest: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices so that each class (and the unlabeled group, -1) keeps ``fraction``.

    Each group of size ``n`` puts ``round(fraction * n)`` random members (seeded) in the first
    part, but never more than ``n - min_rest`` (so with ``min_rest=1`` a class of one sample stays
    in the second part). Both parts are returned sorted.

    Args:
        labels: ``[N]`` int64 labels, -1 = unlabeled.
        fraction: share of every group that goes to the first part, in ``[0, 1]``.
        seed: seed of the draw; the same seed and labels give the same split.
        min_rest: members of every group that always stay in the second part (>= 0).

    Returns:
        ``(first, rest)`` int64 index tensors partitioning ``range(N)``.
    """
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    first, rest = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        k = max(min(int(round(fraction * len(members))), len(members) - min_rest), 0)
        first.append(members[:k])
        rest.append(members[k:])
    return torch.cat(first).sort().values, torch.cat(rest).sort().values


def gather_rows(images: Tensor, rows: Tensor) -> Tensor:
    """``images[rows]`` for contiguous ``[M, C, H, W]``, gathering each image as a row of int64
    (or int32) words: torch's CPU gather kernels are 100-1000x slower for uint8/uint16 elements
    than for 8-byte ones. The bytes are copied unchanged and viewed back as the image dtype."""
    m, shape = images.shape[0], images.shape[1:]
    flat = images.view(m, -1)
    for wide in (torch.int64, torch.int32):
        if (flat.shape[1] * images.element_size()) % wide.itemsize == 0:
            try:
                words = flat.view(wide)
            except RuntimeError:  # misaligned storage offset
                continue
            return words.index_select(0, rows).view(images.dtype).view(len(rows), *shape)
    return images.index_select(0, rows)
