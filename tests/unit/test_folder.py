"""Image folders: layouts, file formats, bit depths, band counts, sizes and bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from selfsup.data.datasets import ImageDataset, open_dataset
from selfsup.data.folder import center_square_resize, tiff_layout
from selfsup.types import DataError

RNG = np.random.default_rng(0)


def save(path: Path, arr: np.ndarray) -> np.ndarray:
    """Write ``arr`` (HW or HWC) as an image file chosen by the suffix; return what was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, arr, photometric="minisblack")
    else:
        Image.fromarray(arr).save(path)
    return arr


def rgb(h: int = 16, w: int = 16) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def test_flat_folder_is_unlabeled_and_exact(tmp_path: Path) -> None:
    written = [save(tmp_path / f"img{i}.png", rgb()) for i in range(5)]
    ds = open_dataset(str(tmp_path))
    assert isinstance(ds, ImageDataset) and not ds.in_memory
    assert (len(ds), ds.channels, ds.image_size, ds.dtype) == (5, 3, (16, 16), torch.uint8)
    assert not ds.has_labels and ds.class_names is None and ds.num_classes is None
    for i, arr in enumerate(written):  # sorted file order, no resampling at native size
        x, y, idx = ds[i]
        assert torch.equal(x, chw(arr)) and y == -1 and idx == i


def test_class_subfolders_give_sorted_labels_recursively(tmp_path: Path) -> None:
    save(tmp_path / "dog" / "a.png", rgb())
    save(tmp_path / "cat" / "x" / "deep.png", rgb())  # nested inside a class: still "cat"
    save(tmp_path / "cat" / "b.jpg", rgb())
    save(tmp_path / "dog" / ".hidden.png", rgb())  # hidden files are skipped
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = open_dataset(str(tmp_path))
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1]
    x, y = ds.get_batch(torch.tensor([2, 0]))
    assert x.shape == (2, 3, 16, 16) and y.tolist() == [1, 0]
    assert torch.equal(x[0], ds[2][0])


def test_single_subfolder_is_unlabeled_nested_search(tmp_path: Path) -> None:
    for i in range(3):
        save(tmp_path / "images" / "2020" / f"{i}.bmp", rgb(8, 8))
    ds = open_dataset(str(tmp_path))
    assert len(ds) == 3 and not ds.has_labels and ds.image_size == (8, 8)


def test_16bit_png_and_grey_8bit(tmp_path: Path) -> None:
    arr = RNG.integers(0, 65536, (12, 12), dtype=np.uint16)
    save(tmp_path / "a" / "x.png", arr)
    save(tmp_path / "b" / "y.png", arr[::-1].copy())
    ds = open_dataset(str(tmp_path))
    assert ds.dtype == torch.uint16 and ds.channels == 1
    x, _, _ = ds[0]
    assert x.dtype == torch.uint16 and torch.equal(x, chw(arr))
    grey = tmp_path / "grey"
    g = save(grey / "g.png", RNG.integers(0, 256, (9, 9), dtype=np.uint8))
    dg = open_dataset(str(grey))
    assert (dg.channels, dg.dtype) == (1, torch.uint8) and torch.equal(dg[0][0], chw(g))


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_multiband_tiff(tmp_path: Path, layout: str) -> None:
    arr = RNG.integers(0, 9000, (64, 64, 13), dtype=np.uint16)
    stored = arr if layout == "HWC" else arr.transpose(2, 0, 1).copy()
    for i in range(2):
        save(tmp_path / f"s{i}.tif", stored)
    ds = open_dataset(str(tmp_path))
    assert (ds.channels, ds.image_size, ds.dtype) == (13, (64, 64), torch.uint16)
    assert torch.equal(ds[1][0], chw(arr))


def test_float_tiff_is_float32(tmp_path: Path) -> None:
    arr = RNG.normal(size=(20, 20, 4))  # float64 on disk
    save(tmp_path / "f.tiff", arr)
    ds = open_dataset(str(tmp_path))
    assert ds.dtype == torch.float32 and ds.channels == 4
    assert torch.allclose(ds[0][0], chw(arr).float())


def test_tiff_layout_rule() -> None:
    assert tiff_layout((64, 64)) == "HW"
    assert tiff_layout((13, 64, 64)) == "CHW" and tiff_layout((64, 64, 13)) == "HWC"
    assert tiff_layout((4, 50, 40)) == "CHW" and tiff_layout((50, 40, 4)) == "HWC"


def test_corrupt_file_skipped_with_warning_or_strict_error(tmp_path: Path, caplog) -> None:
    for i in range(3):
        save(tmp_path / f"ok{i}.png", rgb())
    (tmp_path / "broken.png").write_bytes(b"definitely not a png")
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ds = open_dataset(str(tmp_path))
    assert len(ds) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "broken.png" in warnings[0] and "1 unreadable" in warnings[0]
    with pytest.raises(DataError, match="broken.png"):
        open_dataset(str(tmp_path), strict=True)


def test_truncated_file_replaced_unless_strict(tmp_path: Path, caplog) -> None:
    good = save(tmp_path / "a.png", rgb(32, 32))
    save(tmp_path / "b.png", rgb(32, 32))
    data = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    ds = open_dataset(str(tmp_path))
    assert len(ds) == 2  # the header probe cannot tell
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        x, _, idx = ds[1]
    assert idx == 0 and torch.equal(x, chw(good))
    assert any("b.png" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="b.png"):
        open_dataset(str(tmp_path), strict=True)[1]


def test_mismatched_channels_error_names_file(tmp_path: Path) -> None:
    save(tmp_path / "a.png", rgb(64, 64))
    save(tmp_path / "b.tif", RNG.integers(0, 255, (64, 64, 13), dtype=np.uint8))
    with pytest.raises(DataError, match=r"b\.tif' has 13 channel.*has 3"):
        open_dataset(str(tmp_path))


def test_mixed_bit_depth_error(tmp_path: Path) -> None:
    save(tmp_path / "a.png", RNG.integers(0, 255, (8, 8), dtype=np.uint8))
    save(tmp_path / "b.png", RNG.integers(0, 65535, (8, 8), dtype=np.uint16))
    with pytest.raises(DataError, match="b.png"):
        open_dataset(str(tmp_path))


def test_grey_jpeg_among_rgb_is_read_as_rgb(tmp_path: Path) -> None:
    save(tmp_path / "a.jpg", rgb())
    grey = save(tmp_path / "b.png", RNG.integers(0, 256, (16, 16), dtype=np.uint8))
    ds = open_dataset(str(tmp_path))
    assert ds.channels == 3
    x = ds[1][0]
    assert all(torch.equal(x[c], torch.from_numpy(grey)) for c in range(3))


@pytest.mark.parametrize("junk", [False, True])
def test_empty_folder_error(tmp_path: Path, junk: bool) -> None:
    if junk:
        (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no image files found in .*\.png.*\.tif"):
        open_dataset(str(tmp_path))


def test_mixed_sizes(tmp_path: Path, caplog) -> None:
    save(tmp_path / "a.png", rgb(30, 40))
    save(tmp_path / "b.png", rgb(50, 50))
    with caplog.at_level(logging.INFO, logger="selfsup"):
        ds = open_dataset(str(tmp_path))
    # the median shorter side of the data (30 and 50: the upper median), said in the log
    assert ds.image_size == (50, 50) and ds[0][0].shape == (3, 50, 50)
    assert any("resizing to 50x50, their median shorter side" in r.getMessage()
               for r in caplog.records)
    small = open_dataset(str(tmp_path), image_size=20)
    assert small.image_size == (20, 20)
    assert small.get_batch(torch.tensor([0, 1]))[0].shape == (2, 3, 20, 20)


def test_center_crop_without_resampling(tmp_path: Path) -> None:
    arr = np.zeros((8, 16, 3), dtype=np.uint8)
    arr[:, 4:12] = 200  # the central 8x8 square
    save(tmp_path / "wide.png", arr)
    save(tmp_path / "square.png", rgb(8, 8))
    x = open_dataset(str(tmp_path), image_size=8)[1][0]
    assert torch.equal(x, torch.full((3, 8, 8), 200, dtype=torch.uint8))


@pytest.mark.parametrize("dtype,value", [(torch.uint8, 77), (torch.uint16, 40000)])
def test_resize_keeps_dtype_and_constant_images(dtype: torch.dtype, value: int) -> None:
    x = torch.full((2, 3, 30, 50), value, dtype=dtype)
    y = center_square_resize(x, 12)
    assert y.dtype == dtype and y.shape == (2, 3, 12, 12) and bool((y == value).all())
    ramp = torch.linspace(0, 1, 40).repeat(1, 40, 1)  # [1, 40, 40] float: stays in range
    out = center_square_resize(ramp, 10)
    assert out.shape == (1, 10, 10) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_limit_keeps_every_class(tmp_path: Path) -> None:
    for c in ("a", "b", "c"):
        for i in range(10):
            save(tmp_path / c / f"{i}.png", rgb(4, 4))
    ds = open_dataset(str(tmp_path), limit=6)
    assert len(ds) == 6 and sorted(set(ds.labels.tolist())) == [0, 1, 2]
