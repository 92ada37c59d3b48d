"""Tile grids with gaps and jitter, cut on the device: the inputs of the patch-arrangement
pretext tasks (Jigsaw puzzles, context prediction).

A :class:`TileGrid` is a ``grid x grid`` layout of square tiles of side ``tile`` whose nominal
top-left corners lie ``pitch`` pixels apart; each tile's corner moves by its own random offset
in ``[lo, hi]`` per axis, and the whole grid sits at a random position inside the image.

- Jigsaw (Noroozi & Favaro 2016, sec. 3.3; the authors' Caffe ``data_transformer.cpp``): 85-px
  cells and a 64-px tile cut at a random offset ``0..21`` inside each cell (``pitch`` = cell,
  offsets ``[0, cell - tile]``), so neighbouring tiles are 0 to 42 px apart (21 on average):
  :func:`jigsaw_grid`.
- Context prediction (Doersch et al. 2015, sec. 3; cdoersch/deepcontext ``train.py``
  ``sample_patch``): 96-px patches with a 48-px gap, each jittered by up to 7 px in every
  direction (``pitch`` = patch + gap, offsets ``[-7, 7]``): :func:`context_grid`.

Both helpers scale these reference sizes to the image and raise
:class:`~selfsup.types.DataError` when the image is too small for 2-px tiles.

:func:`encode_tiles` runs the backbone on tiles while its BatchNorm running statistics follow
whole images (the evaluated encoder sees whole images, not tiles).

Random draws use torch's global RNG on the images' device (the trainer seeds it and saves its
state, so ``--resume`` is exact). Under DDP each rank draws the values of the whole global batch
and keeps its own rows (:func:`local_rows`), so ``world`` ranks with ``B`` images each draw
exactly what one process draws for ``world x B`` images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError
from selfsup.utils import dist

__all__ = ["TileGrid", "as_rgb", "batch_statistics", "context_grid", "cut_tiles", "encode_tiles",
           "jigsaw_grid", "local_rows", "normalize_tiles", "paste_tiles", "rng_from",
           "round_half_up", "shift_channels"]

MIN_TILE = 2  # smallest tile side the tasks accept (a 1-px tile has no spatial content)


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)``: the scaling rule for pixel sizes (Python's ``round`` rounds halves
    to even, which would make 1.5 and 2.5 both 2)."""
    return math.floor(x + 0.5)


def local_rows(draw: Callable[[int], Tensor], n: int) -> Tensor:
    """``draw(N)`` for the global batch (``N = n x world``), this rank's ``n`` rows.

    Args:
        draw: a function of the row count returning a tensor with that many rows.
        n: this rank's batch size (the same on every rank: the trainer drops last batches).
    """
    world = dist.world_size()
    out = draw(n * world)
    if world == 1:
        return out
    r = dist.rank()
    return out[r * n : (r + 1) * n]


@dataclass(frozen=True)
class TileGrid:
    """A ``grid x grid`` tile layout.

    Attributes:
        grid: tiles per side.
        tile: tile side in pixels.
        pitch: distance between the nominal corners of neighbouring tiles (cell side, or patch
            plus gap).
        lo, hi: range of each tile's own random offset per axis (inclusive).
    """

    grid: int
    tile: int
    pitch: int
    lo: int
    hi: int

    @property
    def extent(self) -> int:
        """Side covered by the tiles' nominal positions."""
        return (self.grid - 1) * self.pitch + self.tile

    @property
    def min_gap(self) -> int:
        """Smallest distance between neighbouring tiles (their offsets at the extremes)."""
        return self.pitch - self.tile - (self.hi - self.lo)

    def fits(self, height: int, width: int) -> bool:
        """Whether every jittered tile stays inside a ``height x width`` image."""
        need = self.extent + self.hi - self.lo
        return self.tile >= 1 and need <= min(height, width)

    def sample_origins(self, n: int, height: int, width: int, device: torch.device
                       ) -> Tensor:
        """Random top-left corners ``[n, grid*grid, 2]`` (int64 ``(y, x)``), tiles in row-major
        order: grid corner ``U{-lo .. side - extent - hi}`` per axis, plus each tile's offset
        ``U{lo .. hi}``.

        Raises:
            DataError: if the grid does not fit the image.
        """
        if not self.fits(height, width):
            raise DataError(f"a {self.grid}x{self.grid} grid of {self.tile}-px tiles (pitch "
                            f"{self.pitch}, offsets {self.lo}..{self.hi}) does not fit "
                            f"{height}x{width} images")
        t = self.grid * self.grid
        hi = torch.tensor([height - self.extent - self.hi, width - self.extent - self.hi],
                          device=device)
        corner = local_rows(lambda m: torch.rand(m, 1, 2, device=device), n)
        corner = (corner * (hi + self.lo + 1)).long() - self.lo  # U{-lo .. hi} per axis
        corner = torch.minimum(corner, hi)  # rand() < 1, but guard the float product
        jitter = local_rows(lambda m: torch.randint(self.lo, self.hi + 1, (m, t, 2),
                                                    device=device), n)
        r = torch.arange(self.grid, device=device) * self.pitch
        nominal = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(1, t, 2)
        return corner + nominal + jitter


def jigsaw_grid(size: int, tile_ratio: float, grid: int = 3) -> TileGrid:
    """The Jigsaw layout for ``size``-px images: cells of ``size // grid`` px (85 at the
    reference's 255-px crop), tiles of ``round(cell x tile_ratio)`` px (64 = 85 x 64/85) cut at a
    random offset ``0 .. cell - tile`` inside their cell.

    Raises:
        ConfigError: naming ``method_args.tile_ratio`` if it is not in ``(0, 1]``.
        DataError: if the tiles would be smaller than 2 px.
    """
    if not 0 < tile_ratio <= 1:
        raise ConfigError(f"method_args.tile_ratio must be in (0, 1] (tile side / cell side), "
                          f"got {tile_ratio}")
    cell = size // grid
    tile = min(cell, round_half_up(cell * tile_ratio))
    if tile < MIN_TILE:
        need = next(s for s in range(grid, 100 * grid)
                    if min(s // grid, round_half_up(s // grid * tile_ratio)) >= MIN_TILE)
        raise DataError(f"jigsaw: {size}-px images give {tile}-px tiles in a {grid}x{grid} grid; "
                        f"tiles need >= {MIN_TILE} px, i.e. images of >= {need} px "
                        f"(data.image_size) with method_args.tile_ratio={tile_ratio}")
    return TileGrid(grid=grid, tile=tile, pitch=cell, lo=0, hi=cell - tile)


def context_grid(size: int, gap_ratio: float, jitter_ratio: float, grid: int = 3) -> TileGrid:
    """The context-prediction layout for ``size``-px images: the largest patch side ``p`` with
    ``grid p + (grid-1) g + 2 j <= size`` where ``g = round(gap_ratio p)`` (48 / 96) and
    ``j = max(1, round(jitter_ratio p))`` (7 / 96; at least 1 px so small images keep some
    jitter). Images too small for 2-px patches with 1 px of jitter (below 12 px for the default
    ratios) keep their largest patches with the jitter that still fits (none at 8 px).

    Raises:
        ConfigError: naming ``method_args.gap_ratio`` / ``jitter_ratio`` if negative.
        DataError: if even 2-px patches with their gaps do not fit.
    """
    for key, v in (("gap_ratio", gap_ratio), ("jitter_ratio", jitter_ratio)):
        if v < 0:
            raise ConfigError(f"method_args.{key} must be >= 0 (a fraction of the patch side), "
                              f"got {v}")

    def span(p: int) -> int:
        return grid * p + (grid - 1) * round_half_up(gap_ratio * p)

    def jit(p: int) -> int:
        return max(1, round_half_up(jitter_ratio * p)) if jitter_ratio > 0 else 0

    fitting = [p for p in range(MIN_TILE, size // grid + 1) if span(p) + 2 * jit(p) <= size]
    if fitting:
        p, j = fitting[-1], jit(fitting[-1])
    else:
        plain = [p for p in range(MIN_TILE, size // grid + 1) if span(p) <= size]
        if not plain:
            raise DataError(
                f"context_prediction: {size}-px images cannot hold a {grid}x{grid} grid of "
                f"{MIN_TILE}-px patches with gaps of method_args.gap_ratio={gap_ratio} x patch; "
                f"use images of >= {span(MIN_TILE)} px (data.image_size)")
        p = plain[-1]
        j = (size - span(p)) // 2
    return TileGrid(grid=grid, tile=p, pitch=p + round_half_up(gap_ratio * p), lo=-j, hi=j)


def shift_channels(origins: Tensor, channels: int, shift: int, height: int, width: int,
                   tile: int) -> Tensor:
    """Per-channel corners ``[B, T, C, 2]``: each channel of each tile moved by its own
    ``U{-shift .. shift}`` pixels per axis (Jigsaw's chromatic-aberration countermeasure,
    sec. 3.3), clamped so the tile stays inside the image."""
    b, t = origins.shape[:2]
    delta = local_rows(lambda m: torch.randint(-shift, shift + 1, (m, t, channels, 2),
                                               device=origins.device), b)
    out = origins[:, :, None, :] + delta
    limit = torch.tensor([height - tile, width - tile], device=origins.device)
    return torch.minimum(out.clamp(min=0), limit)


def _tile_index(origins: Tensor, b: int, c: int, tile: int, device: torch.device
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Advanced indices ``(batch, channel, row, column)`` of tiles at ``origins``
    (``[B, T, C, 2]``), each broadcasting to ``[B, T, C, tile, tile]``."""
    ar = torch.arange(tile, device=device)
    rows = (origins[..., 0, None] + ar)[..., :, None]  # [B, T, C, tile, 1]
    cols = (origins[..., 1, None] + ar)[..., None, :]  # [B, T, C, 1, tile]
    bi = torch.arange(b, device=device).view(b, 1, 1, 1, 1)
    ci = torch.arange(c, device=device).view(1, 1, c, 1, 1)
    return bi, ci, rows, cols


def cut_tiles(x: Tensor, origins: Tensor, tile: int) -> Tensor:
    """Square tiles of side ``tile`` at ``origins``.

    Args:
        x: images ``[B, C, H, W]``.
        origins: top-left corners ``(y, x)``, ``[B, T, 2]`` (all channels together) or
            ``[B, T, C, 2]`` (one corner per channel).

    Returns:
        ``[B, T, C, tile, tile]``: ``out[b, t, c, i, j] = x[b, c, y + i, x + j]``.

    Raises:
        DataError: if a tile leaves the image.
    """
    b, c, h, w = x.shape
    if origins.dim() == 3:
        origins = origins[:, :, None, :].expand(-1, -1, c, -1)
    if origins.shape[0] != b or origins.shape[2] != c:
        raise DataError(f"tile corners {tuple(origins.shape)} do not match images "
                        f"{tuple(x.shape)}")
    if bool((origins < 0).any()) or bool((origins[..., 0] > h - tile).any()) or bool(
            (origins[..., 1] > w - tile).any()):
        raise DataError(f"a {tile}-px tile leaves the {h}x{w} image")
    return x[_tile_index(origins, b, c, tile, x.device)]


def paste_tiles(canvas: Tensor, tiles: Tensor, origins: Tensor) -> Tensor:
    """A copy of ``canvas`` ``[B, C, H, W]`` with ``tiles`` ``[B, T, C, t, t]`` written at
    ``origins`` (``[B, T, 2]`` or ``[B, T, C, 2]``), the inverse of :func:`cut_tiles` (for
    pictures of a task; where tiles overlap, which one shows is unspecified)."""
    b, c = canvas.shape[:2]
    if origins.dim() == 3:
        origins = origins[:, :, None, :].expand(-1, -1, c, -1)
    out = canvas.clone()
    out[_tile_index(origins, b, c, tiles.shape[-1], canvas.device)] = tiles
    return out


@contextmanager
def rng_from(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Within the block torch's global RNG (CPU, and ``device``'s if it is a GPU) is seeded from
    ``generator``, and restored afterwards: pictures draw the training-time task (which uses the
    global RNG) from a caller's generator without disturbing a run's RNG state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        yield


def as_rgb(unit: Tensor) -> Tensor:
    """Unit-range images ``[B, C, H, W]`` as ``[B, 3, H, W]`` for pictures: grey repeated, the
    first three channels of more."""
    if unit.shape[1] >= 3:
        return unit[:, :3]
    return unit[:, :1].expand(-1, 3, -1, -1) if unit.shape[1] == 1 else torch.cat(
        [unit, unit[:, :1]], 1)


def normalize_tiles(tiles: Tensor, mode: str, eps: float = 1e-5) -> Tensor:
    """Standardise every tile on its own: ``(x - mean) / sqrt(var + eps)`` over each tile's
    pixels, per channel (``mode="channel"``) or over all its channels at once (``"tile"``, the
    PyTorch port's ``tile.mean()`` / ``tile.std()``); ``"none"`` returns the tiles unchanged.

    Args:
        tiles: ``[..., C, h, w]``.
        mode: ``channel`` | ``tile`` | ``none``.
        eps: added to the variance (an all-constant tile becomes zeros).

    Raises:
        ConfigError: naming ``method_args.tile_norm`` for another mode.
    """
    if mode == "none":
        return tiles
    if mode not in ("channel", "tile"):
        raise ConfigError(f"method_args.tile_norm must be channel | tile | none, got {mode!r}")
    dims = (-2, -1) if mode == "channel" else (-3, -2, -1)
    var, mean = torch.var_mean(tiles, dim=dims, keepdim=True, correction=0)
    return (tiles - mean) / torch.sqrt(var + eps)


@contextmanager
def batch_statistics(module: nn.Module, *, include_eval: bool = False) -> Iterator[None]:
    """Within the block, ``module``'s BatchNorm layers normalise with their batch's statistics
    and leave their running statistics unchanged (``momentum`` 0; ``num_batches_tracked``
    restored on exit). Only layers in training mode, unless ``include_eval``: then layers in
    eval mode are put in training mode for the block too (to classify tiles with tile statistics
    when the running statistics are those of whole images, see :func:`encode_tiles`)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats and (m.training or include_eval)]
    saved = []
    for m in bns:
        tracked = m.num_batches_tracked
        saved.append((m.training, m.momentum, None if tracked is None else tracked.clone()))
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (training, momentum, tracked) in zip(bns, saved, strict=True):
            m.train(training)
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def encode_tiles(backbone: nn.Module, tiles: Tensor, images: Tensor | None) -> Tensor:
    """``backbone(tiles)``, with the backbone's BatchNorm running statistics kept for whole
    images.

    In training mode BatchNorm normalises with the statistics of its batch, here a batch of
    tiles, and also folds them into the running statistics that evaluation uses. The evaluated
    encoder sees whole images, whose statistics differ (measured with Jigsaw on 16-px digits:
    kNN 83.0 with tile statistics, 89.1 after re-estimating them on the images, random init
    83.8). So the tile pass leaves the running statistics unchanged (:func:`batch_statistics`)
    and a no-grad pass over ``images`` updates them instead: the statistics calibration the
    context-prediction code applies before transfer (cdoersch/deepcontext README,
    ``debatchnorm.py`` then a data-dependent rescaling). Gradients and the training objective
    are those of ``backbone(tiles)``. In eval mode the running statistics are the images', so
    tiles are then classified under :func:`batch_statistics` with ``include_eval``.

    Args:
        backbone: the encoder, ``[N, C, h, w] -> [N, F]``.
        tiles: ``[N, C, t, t]``.
        images: the whole images ``[B, C, H, W]`` for the running statistics, or None to let
            the tiles update them (BatchNorm layers in eval mode update nothing either way).
    """
    training = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                   and m.track_running_stats for m in backbone.modules())
    if images is None or not training:
        out: Tensor = backbone(tiles)
        return out
    with batch_statistics(backbone):
        out = backbone(tiles)
    with torch.no_grad():
        backbone(images)
    return out
