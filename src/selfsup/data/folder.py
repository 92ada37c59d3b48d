"""Reading a folder of image files: scanning, cheap header probing, lazy decoding, resizing.

A folder is *labeled* when its images sit in two or more first-level subfolders (one per class,
class names sorted, each searched recursively, as torchvision's ``ImageFolder``); otherwise every
image below it, at any depth, is one unlabeled sample. Supported files are PNG, JPEG and BMP (read
with Pillow; 8-bit, 16-bit grey, 32-bit float) and TIFF (read with ``tifffile``: any band count,
HW, HWC or CHW). Images are kept raw: ``uint8`` and ``uint16`` as they are, every other sample
type as ``float32``.

Probing reads headers only, so a folder of a million images is scanned in seconds; pixels are
decoded per item (in DataLoader workers) by :meth:`FolderImages.load`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import DataError

logger = logging.getLogger("selfsup")

PILLOW_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = PILLOW_EXTENSIONS + TIFF_EXTENSIONS

# Pillow mode -> (channels, dtype) of the array handed out. Modes not listed are converted to RGB.
_PIL_MODES: dict[str, tuple[int, str]] = {
    "1": (1, "uint8"), "L": (1, "uint8"), "LA": (2, "uint8"), "P": (3, "uint8"),
    "RGB": (3, "uint8"), "RGBA": (4, "uint8"), "I;16": (1, "uint16"), "I;16B": (1, "uint16"),
    "I;16L": (1, "uint16"), "I;16N": (1, "uint16"), "I": (1, "uint16"), "F": (1, "float32"),
}


@dataclass(frozen=True)
class ImageInfo:
    """What a header says about one image: size, band count and stored sample type."""

    height: int
    width: int
    channels: int
    dtype: str  # "uint8" | "uint16" | "float32" (the type the decoded tensor will have)


def tiff_layout(shape: tuple[int, ...]) -> str:
    """``"HW"``, ``"HWC"`` or ``"CHW"`` for a TIFF array of ``shape``.

    A square image wins (``13x64x64`` is CHW, ``64x64x13`` HWC); otherwise the first axis is
    the bands when it is small (<= 32) and the last one large (> 32).
    """
    if len(shape) == 2:
        return "HW"
    a, b, c = shape
    if b == c and a != b:
        return "CHW"
    if a == b and c != a:
        return "HWC"
    return "CHW" if a <= 32 and c > 32 else "HWC"


def _squeeze_tiff(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) not in (2, 3):
        raise ValueError(f"TIFF array of shape {shape} is not HW, HWC or CHW")
    return shape


def _tiff_dtype(dtype: np.dtype) -> str:
    return dtype.name if dtype.name in ("uint8", "uint16") else "float32"


def probe(path: str, force_rgb: bool = False) -> ImageInfo:
    """Read the header of one image file (no pixel decoding).

    Raises:
        Exception: whatever Pillow/tifffile raise for an unreadable file (the caller collects it).
    """
    if path.lower().endswith(TIFF_EXTENSIONS):
        import tifffile

        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            shape = _squeeze_tiff(tuple(int(s) for s in series.shape))
            dtype = _tiff_dtype(np.dtype(series.dtype))
        layout = tiff_layout(shape)
        if layout == "HW":
            return ImageInfo(shape[0], shape[1], 1, dtype)
        if layout == "HWC":
            return ImageInfo(shape[0], shape[1], shape[2], dtype)
        return ImageInfo(shape[1], shape[2], shape[0], dtype)
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        channels, dtype = _PIL_MODES.get(im.mode, (3, "uint8"))
    if force_rgb and dtype == "uint8":
        channels = 3
    return ImageInfo(height, width, channels, dtype)


def decode(path: str, force_rgb: bool = False) -> Tensor:
    """Decode one image file to a raw tensor ``[C, H, W]`` (uint8, uint16 or float32).

    Raises:
        Exception: whatever Pillow/tifffile raise for an unreadable or truncated file.
    """
    if path.lower().endswith(TIFF_EXTENSIONS):
        import tifffile

        arr = np.asarray(tifffile.imread(path))
        arr = arr.reshape(_squeeze_tiff(arr.shape))
        layout = tiff_layout(arr.shape)
        if layout == "HW":
            arr = arr[None]
        elif layout == "HWC":
            arr = arr.transpose(2, 0, 1)
        dtype = _tiff_dtype(arr.dtype)
    else:
        from PIL import Image

        with Image.open(path) as f:
            mode = f.mode
            im: Image.Image = f
            if mode not in _PIL_MODES or mode == "P" or (force_rgb and _PIL_MODES[mode][1] == "uint8"):
                im, mode = f.convert("RGB"), "RGB"
            elif mode == "1":
                im = f.convert("L")
            arr = np.asarray(im)
        dtype = _PIL_MODES[mode][1]
        if dtype == "uint16":  # 'I' holds int32 and 'I;16B' big-endian samples
            arr = np.clip(arr, 0, 65535) if arr.dtype.kind == "i" else arr
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    out = np.ascontiguousarray(arr, dtype=np.dtype(dtype))
    return torch.from_numpy(out if out.flags.writeable else out.copy())


def center_square_resize(x: Tensor, size: int) -> Tensor:
    """Crop the central square of side ``min(H, W)`` and resize it to ``size x size``.

    This is resize-shorter-side-then-center-crop (the usual evaluation transform) done in the
    cheaper order. Bilinear with antialiasing; integer images are rounded back to their dtype.

    Args:
        x: ``[C, H, W]`` or ``[N, C, H, W]`` raw image(s) of any dtype.
        size: output side length in pixels.

    Returns:
        The same rank and dtype as ``x`` with spatial size ``size x size``.
    """
    h, w = x.shape[-2:]
    m = min(h, w)
    top, left = (h - m) // 2, (w - m) // 2
    x = x[..., top : top + m, left : left + m]
    if m == size:
        return x.contiguous()
    batch = x if x.dim() == 4 else x[None]
    out = F.interpolate(batch.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=m > size)
    if x.dtype in (torch.uint8, torch.uint16):
        hi = 255.0 if x.dtype == torch.uint8 else 65535.0
        out = out.round_().clamp_(0.0, hi)
    out = out.to(x.dtype)
    return out if x.dim() == 4 else out[0]


def scan(root: Path) -> tuple[list[str], list[int], list[str] | None]:
    """List the image files below ``root`` (sorted, hidden entries skipped).

    Returns:
        ``(files, labels, class_names)``; labels are -1 and class_names None for an unlabeled
        folder (images at the top level, or fewer than two class subfolders).
    """
    def walk(d: Path) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # symlink loop
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            out += [os.path.join(dirpath, f) for f in filenames
                    if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        return sorted(out)

    top = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    top_images = [p for p in top if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)]
    classes = [p for p in top if p.is_dir()]
    per_class = {p.name: walk(p) for p in classes}
    per_class = {k: v for k, v in per_class.items() if v}
    if top_images and len(per_class) >= 2:
        # a few stray files beside class folders: say why the set is unlabeled and how to fix it
        logger.warning(
            "'%s' has %d image(s) at its top level (%s) beside %d subfolders of images (%s): "
            "reading it as one unlabeled set. To use the subfolders as classes, move the "
            "top-level images into a subfolder or out of '%s'", root, len(top_images),
            ", ".join(p.name for p in top_images[:3]) + (" ..." if len(top_images) > 3 else ""),
            len(per_class), ", ".join(list(per_class)[:5]) +
            (" ..." if len(per_class) > 5 else ""), root)
        per_class = {}
    if len(per_class) < 2:
        files = walk(root)
        return files, [-1] * len(files), None
    names = sorted(per_class)
    files, labels = [], []
    for c, name in enumerate(names):
        files += per_class[name]
        labels += [c] * len(per_class[name])
    return files, labels, names


def _probe_or_error(path: str) -> ImageInfo | str:
    try:
        return probe(path)
    except Exception as e:  # any decoder error marks the file unreadable
        return f"{type(e).__name__}: {e}".strip()[:120]


def probe_all(root: Path, files: list[str], strict: bool) -> tuple[list[int], list[ImageInfo]]:
    """Probe every file's header (threaded); drop unreadable ones with one warning.

    Returns:
        ``(kept, infos)``: positions in ``files`` that are readable, and their headers.

    Raises:
        DataError: with ``strict`` if any file is unreadable, or if none is readable.
    """
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        results = list(pool.map(_probe_or_error, files, chunksize=64))
    bad = [(f, r) for f, r in zip(files, results) if isinstance(r, str)]
    if bad:
        listing = "; ".join(f"{f} ({r})" for f, r in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        if strict or len(bad) == len(files):
            why = "strict mode (data.strict=true)" if strict else "no image is readable"
            raise DataError(f"{len(bad)} unreadable image file(s) in '{root}' with {why}: "
                            f"{listing}{more}")
        logger.warning("skipping %d unreadable image file(s) in '%s': %s%s",
                       len(bad), root, listing, more)
    kept = [i for i, r in enumerate(results) if not isinstance(r, str)]
    return kept, [r for r in results if not isinstance(r, str)]


@dataclass
class FolderImages:
    """Lazily decoded image files of one dataset (picklable, for DataLoader workers).

    Attributes:
        files: image paths, one per sample.
        channels: band count every image has.
        dtype: ``"uint8"``, ``"uint16"`` or ``"float32"``.
        size: ``(H, W)`` every decoded image is brought to.
        square: True to center-crop and resize to ``size`` (False: all files are ``size``).
        force_rgb: convert every 8-bit Pillow image to RGB (folders mixing grey and colour).
    """

    files: list[str]
    channels: int
    dtype: str
    size: tuple[int, int]
    square: bool
    force_rgb: bool = False

    def load(self, i: int) -> Tensor:
        """Decode file ``i`` to ``[C, H, W]``.

        Raises:
            DataError: if the file cannot be decoded, holds NaN/inf, or no longer has the
                dataset's bands, dtype or size.
        """
        path = self.files[i]
        try:
            x = decode(path, self.force_rgb)
        except Exception as e:
            raise DataError(f"cannot decode image '{path}': {type(e).__name__}: {e}") from None
        if x.shape[0] != self.channels or str(x.dtype).removeprefix("torch.") != self.dtype:
            raise DataError(f"image '{path}' decoded to {x.shape[0]} channel(s) of {x.dtype}, "
                            f"expected {self.channels} of {self.dtype}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise DataError(f"image '{path}' contains NaN or infinite values")
        if self.square:
            return center_square_resize(x, self.size[0])
        if tuple(x.shape[1:]) != self.size:
            raise DataError(f"image '{path}' is {x.shape[1]}x{x.shape[2]}, expected "
                            f"{self.size[0]}x{self.size[1]}; set data.image_size")
        return x


def open_folder(
    root: Path, *, image_size: int | None, strict: bool, limit: int | None,
    size_hint: bool = True,
) -> tuple[FolderImages, list[int], list[str] | None]:
    """Scan and probe an image folder.

    Args:
        root: the folder.
        image_size: square side to bring every image to; None keeps the common native size
            (when sizes differ: the median shorter side, with a log line).
        strict: raise instead of skipping unreadable files.
        limit: keep only this many files (evenly spaced over a class folder so each class stays).
        size_hint: name ``--image-size`` in that log line (commands without the option: False).

    Returns:
        ``(images, labels, class_names)``.

    Raises:
        DataError: for a folder with no image files (naming the accepted extensions), any
            unreadable file with ``strict``, or images with different band counts or sample types.
    """
    files, labels, class_names = scan(root)
    if not files:
        raise DataError(f"no image files found in '{root}' (searched recursively for "
                        f"{', '.join(IMAGE_EXTENSIONS)})")
    if limit is not None and limit < len(files):
        pick = np.linspace(0, len(files) - 1, limit).round().astype(int) if class_names else None
        keep = pick.tolist() if pick is not None else list(range(limit))
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    kept, infos = probe_all(root, files, strict)
    files, labels = [files[i] for i in kept], [labels[i] for i in kept]
    pil_grey_colour = {i.channels for f, i in zip(files, infos)
                       if i.dtype == "uint8" and not f.lower().endswith(TIFF_EXTENSIONS)}
    force_rgb = len(pil_grey_colour) > 1 and 3 in pil_grey_colour
    if force_rgb:  # as torchvision's ImageFolder: the odd grey/CMYK/RGBA JPEG among RGB ones
        logger.info("'%s' mixes grey, colour and alpha 8-bit images; reading all as RGB", root)
        infos = [probe(f, True) if i.dtype == "uint8" and not f.lower().endswith(TIFF_EXTENSIONS)
                 else i for f, i in zip(files, infos)]
    first = infos[0]
    for f, info in zip(files, infos):
        if info.channels != first.channels:
            raise DataError(f"image '{f}' has {info.channels} channel(s) but the dataset's "
                            f"first image '{files[0]}' has {first.channels}; all images of a "
                            "dataset must have the same channel count")
        if info.dtype != first.dtype:
            raise DataError(f"image '{f}' holds {info.dtype} samples but '{files[0]}' holds "
                            f"{first.dtype}; all images must share one bit depth")
    sizes = {(i.height, i.width) for i in infos}
    if image_size is not None:
        size, square = (image_size, image_size), True
    elif len(sizes) == 1:
        size, square = (first.height, first.width), False
    else:
        sides = sorted(min(i.height, i.width) for i in infos)
        side = sides[len(sides) // 2]
        size, square = (side, side), True
        logger.info("images in '%s' have %d different sizes (shorter sides %d-%d px); "
                    "center-cropping and resizing to %dx%d, their median shorter side%s", root,
                    len(sizes), sides[0], sides[-1], side, side,
                    " (--image-size chooses another)" if size_hint else "")
    images = FolderImages(files, first.channels, first.dtype, size, square, force_rgb)
    return images, labels, class_names
