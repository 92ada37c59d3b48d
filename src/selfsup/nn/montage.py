"""Jigsaw clustering's montages: tiles of a batch of images shuffled into new images of the same
size, and the decoupling of the encoder's map back into one vector per tile.

Chen, Liu & Jia 2021, "Jigsaw Clustering for Unsupervised Visual Representation Learning",
sec. 3; reference code dvlab-research/JigsawClustering ``JigClu/loader.py`` (``JigCluTransform``:
the ``m x m`` overlapping quadrant crops), ``main.py`` (each quadrant augmented on its own:
``RandomResizedCrop(112, scale=(0.2, 1))`` and flip after the colour ops), ``JigClu/jigclu.py``
(``_batch_gather_ddp``: the montages; ``forward``: the decoupled tile features) and
``JigClu/resnet_jigclu.py`` (the map interpolated to 8 x 8, then average-pooled to 2 x 2). The
tiles' random crops inside their regions are drawn by
:mod:`selfsup.methods.jigsaw_clustering` with the data augmentation's crop sampler.

Tiles are numbered ``id = image * m^2 + location`` (location row-major in the source image); a
montage ``k`` holds at slot ``p`` (row-major) the tile ``assign[k, p]``. All draws take an
optional ``generator`` (torch's global RNG by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["SHUFFLES", "assemble_montages", "cluster_masks", "draw_assignment",
           "quadrant_regions", "region_features"]

SHUFFLES = ("distinct", "random")


def draw_assignment(n: int, m2: int, shuffle: str = "distinct", *,
                    device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> Tensor:
    """Which tile goes where: ``[n, m2]`` tile ids (every id in ``[0, n * m2)`` exactly once).

    ``"random"`` is the reference's ``torch.randperm(n * 4)`` over all tiles of the batch (a
    montage may then hold two tiles of one image: about 4.4 montages of a batch of 256 do).
    ``"distinct"`` keeps every montage's ``m2`` tiles from ``m2`` different images: with a random
    image order ``pi`` and ``m2`` distinct random offsets ``o_p``, slot ``p`` of montage ``k``
    takes image ``pi[(k + o_p) mod n]`` (a cyclic Latin rectangle: each image once per slot, never
    twice in a montage), and each image's locations are spread over its ``m2`` slots by a random
    permutation of its own, so a tile's slot says nothing about its location.

    Raises:
        ConfigError: for an unknown ``shuffle``.
        DataError: for ``"distinct"`` with fewer than ``m2`` images.
    """
    if shuffle not in SHUFFLES:
        raise ConfigError(f"method_args.shuffle must be one of {SHUFFLES}, got {shuffle!r}")
    dev = torch.device(device)
    if shuffle == "random":
        return torch.randperm(n * m2, device=dev, generator=generator).view(n, m2)
    if n < m2:
        raise DataError(f"jigsaw_clustering: shuffle='distinct' needs a (global) batch of at "
                        f"least grid^2 = {m2} images, got {n}")
    order = torch.randperm(n, device=dev, generator=generator)
    offsets = torch.randperm(n, device=dev, generator=generator)[:m2]
    k = torch.arange(n, device=dev)
    image = order[(k.unsqueeze(1) + offsets.unsqueeze(0)) % n]  # [n, m2]
    loc_of_slot = torch.rand(n, m2, device=dev, generator=generator).argsort(dim=1)
    return image * m2 + loc_of_slot.gather(0, image)  # image i's p-th slot gets location tau_i[p]


def quadrant_regions(grid: int, cross: float) -> Tensor:
    """``[grid^2, 4]`` regions ``(y0, x0, y1, x1)`` in normalised image coordinates: cell
    ``(r, c)`` of the ``grid x grid`` partition with every inner edge pushed out by ``cross``
    (``JigCluTransform``: for 2 x 2 the top-left region is ``[0, 0.5 + cross]^2``).

    Raises:
        ConfigError: if ``grid`` < 2 or ``cross`` is outside ``[0, 0.5)``.
    """
    if grid < 2:
        raise ConfigError(f"method_args.grid must be >= 2, got {grid}")
    if not 0 <= cross < 0.5:
        raise ConfigError(f"method_args.cross_ratio must be in [0, 0.5), got {cross}")
    lo = torch.arange(grid, dtype=torch.float64) / grid
    a = (lo - cross).clamp(min=0)
    b = (lo + 1 / grid + cross).clamp(max=1)
    r, c = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    return torch.stack([a[r], a[c], b[r], b[c]], dim=1).float()


def assemble_montages(tiles: Tensor, grid: int) -> Tensor:
    """``[B * grid^2, C, t, t]`` tiles in (montage, slot) order -> ``[B, C, grid t, grid t]``
    montages, slot ``p`` at row ``p // grid``, column ``p % grid``."""
    t, c = tiles.shape[-1], tiles.shape[1]
    b = tiles.shape[0] // (grid * grid)
    x = tiles.view(b, grid, grid, c, t, t).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, grid * t, grid * t)


def region_features(fmap: Tensor, grid: int) -> Tensor:
    """Decouple the encoder's map ``[B, D, h, w]`` of the montages into ``[B * grid^2, D]``, one
    average-pooled vector per cell (slot order). A side that is not a multiple of ``grid`` is
    first resized bilinearly to the next multiple (the reference resizes ResNet's 7 x 7 map to
    8 x 8 before its 2 x 2 pooling); divisible maps are pooled as they are.

    Raises:
        DataError: if ``fmap`` is not ``[B, D, h, w]``.
    """
    if fmap.dim() != 4:
        raise DataError(f"jigsaw_clustering: the backbone's forward_features must give a map "
                        f"[B, D, h, w], got {tuple(fmap.shape)}")
    h, w = fmap.shape[-2:]
    th, tw = grid * -(-h // grid), grid * -(-w // grid)
    if (th, tw) != (h, w):
        fmap = F.interpolate(fmap, size=(th, tw), mode="bilinear", align_corners=False)
    pooled = F.adaptive_avg_pool2d(fmap, grid)  # [B, D, grid, grid]
    return pooled.flatten(2).transpose(1, 2).reshape(-1, fmap.shape[1])


def cluster_masks(src: Tensor, src_all: Tensor, first: int) -> tuple[Tensor, Tensor]:
    """The clustering loss's masks for anchors ``src`` ``[T]`` (the source images of this rank's
    tiles, rows ``first .. first + T`` of the global tiles) against every tile ``src_all``
    ``[N]``: ``(positive [T, N]``: same source image, not the anchor itself; ``self [T, N]``:
    the anchor itself, left out of the softmax's denominator, as ``SupCluLoss``'s
    ``logits_mask``)."""
    t = src.shape[0]
    self_mask = torch.zeros(t, src_all.shape[0], dtype=torch.bool, device=src.device)
    self_mask[torch.arange(t, device=src.device), first + torch.arange(t, device=src.device)] = True
    return (src.unsqueeze(1) == src_all.unsqueeze(0)) & ~self_mask, self_mask
