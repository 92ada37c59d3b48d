"""Jigsaw clustering (JigClu): recover a batch from montages of its shuffled tiles.

Chen, Liu & Jia 2021, "Jigsaw Clustering for Unsupervised Visual Representation Learning",
CVPR, sec. 3; reference code dvlab-research/JigsawClustering (``main.py``, ``JigClu/jigclu.py``,
``JigClu/loader.py``, ``JigClu/losses.py``, ``JigClu/resnet_jigclu.py``). Building blocks in
:mod:`selfsup.nn.montage`.

- Tiles (``JigCluTransform``, ``main.py``): every image gives ``m x m`` tiles (``grid`` m = 2),
  tile ``j`` cut from the ``j``-th cell pushed out by ``cross_ratio`` (0.3: the top-left tile
  comes from ``[0, 0.8]^2``), each tile augmented on its own: a random resized crop of its region
  (``tile_scale`` 0.2-1, ``tile_ratio`` 3/4-4/3) to ``S / m`` pixels and a flip
  (``tile_hflip_p`` 0.5) here, its colour jitter, grayscale and blur by the ``jigsaw_clustering``
  view preset, which gives ``m^2`` full-size views of each image, view ``j`` for tile ``j``
  (colour operations commute with the crop, except that contrast blends with the whole view's
  mean and the blur is drawn at the view's scale).
- Montages (``_batch_gather_ddp``): the ``n m^2`` tiles of the (global) batch are shuffled and
  stitched into ``n`` new ``m S/m``-pixel images. ``shuffle="distinct"`` (default) puts ``m^2``
  different images in every montage, the montages as issue 13 reads the paper (the paper's
  text was not at hand to check); the reference code's ``randperm`` over all tiles
  (``"random"``) lets two tiles of one image meet in a montage now and then (about 4.4
  montages of a batch of 256, so the two agree in distribution at ImageNet batch sizes).
- Network: the encoder on the montages; its map ``forward_features`` ``[n, D, h, w]`` is
  decoupled into one vector per tile by average pooling over the ``m x m`` cells (resized
  bilinearly to a multiple of ``m`` first where it is not one: the reference's 7 -> 8).
- Clustering branch: MLP ``D -> D -> proj_dim`` (128; ``fc_clu``: Linear-ReLU-Linear), L2
  normalised; the supervised-contrastive loss of ``SupCluLoss`` with temperature 0.07 (its
  base temperature is also 0.07: factor 1) over all tiles of the global batch, the other tiles of
  the same source image the positives, the anchor itself left out of the denominator.
- Location branch: a linear ``D -> m^2`` (``fc_loc``), cross-entropy against each tile's
  position in its source image.
- Loss: ``clu_weight * L_clu + loc_weight * L_loc`` (1 and 1, ``--loss_clu``/``--loss_loc``).
- Optimiser (``main.py``): SGD lr 0.03 at batch 256, momentum 0.9, weight decay 1e-4 on every
  parameter (``model.parameters()``), cosine decay over 200 epochs, no warm-up. The reference
  converts BatchNorm to synchronised BatchNorm across GPUs; here BN statistics are per rank.

Distributed: rank 0's shuffle and tile crops for the global batch are broadcast, every rank cuts
the tiles of its own images and the tiles are gathered from all ranks (as the reference gathers
its tiles); each rank builds and encodes its slice of the montages, and the clustering loss
compares its tiles with every rank's (gathered with gradients).

Small images: tiles are ``S // m`` pixels (8 px for 16-px digits). The backbone's map of a
montage needs at least ``m x m`` cells; a smaller map (small_cnn below 16 px) still trains but
every tile of a montage then mixes its neighbours' pixels, and a warning says so. Even at
``m x m`` cells a cell may see the whole montage (small_cnn's 2 x 2 map of a 16-px montage), so
a tile's feature is then mostly its montage's; the learning test trains on digits upsampled to
32 px (a 4 x 4 map, 2 x 2 cells per tile) for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.augment import resized_crop, sample_crop_boxes
from selfsup.losses.contrastive import info_nce
from selfsup.methods.base import Method
from selfsup.nn.heads import mlp
from selfsup.nn.montage import (
    SHUFFLES,
    assemble_montages,
    cluster_masks,
    draw_assignment,
    quadrant_regions,
    region_features,
)
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist
from selfsup.utils.log import logger


@dataclass
class JigsawClusteringConfig:
    """Jigsaw clustering hyper-parameters; the reference's defaults
    (``selfsup.methods.jigsaw_clustering.Config``)."""

    grid: int = 2  # m: m x m tiles per image (sec. 3; the reference's 2 x 2)
    proj_dim: int = 128  # clustering embedding (main.py --proj-dim 128)
    temperature: float = 0.07  # SupCluLoss temperature (main.py --loss-t 0.07)
    clu_weight: float = 1.0  # weight of the clustering loss (main.py --loss_clu 1.0)
    loc_weight: float = 1.0  # weight of the location loss (main.py --loss_loc 1.0)
    cross_ratio: float = 0.3  # overlap of the tile regions (main.py --cross-ratio 0.3)
    # random resized crop of each tile's region (main.py: RandomResizedCrop(112, (0.2, 1.0)))
    tile_scale: tuple[float, float] = (0.2, 1.0)
    tile_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # torchvision's default ratio there
    tile_hflip_p: float = 0.5  # RandomHorizontalFlip of each tile (main.py)
    # distinct: every montage holds tiles of grid^2 different images (issue 13's reading of
    # the paper) | random: the reference code's randperm over all tiles of the batch
    shuffle: str = "distinct"


Config = JigsawClusteringConfig


def draw_tile_boxes(n: int, grid: int, cross: float, size: int, scale: tuple[float, float],
                    ratio: tuple[float, float], hflip_p: float, *,
                    device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A random resized crop inside its region for each of the ``n * grid^2`` tiles of ``n``
    images of side ``size`` (``main.py``: ``RandomResizedCrop(scale=(0.2, 1))`` of each quadrant
    crop, then ``RandomHorizontalFlip``): ``(boxes [n * grid^2, 4]`` in normalised image
    coordinates, ``flip`` bool ``[n * grid^2])``, row ``i * grid^2 + j`` for image ``i``,
    location ``j``."""
    regions = quadrant_regions(grid, cross).to(device)
    m2 = grid * grid
    boxes = torch.empty(n, m2, 4, device=device)
    for j in range(m2):
        y0, x0, y1, x1 = regions[j].tolist()
        h, w = max(1, round((y1 - y0) * size)), max(1, round((x1 - x0) * size))
        rel = sample_crop_boxes(n, h, w, scale, ratio, device=device, generator=generator)
        origin, span = regions[j, :2].repeat(2), (regions[j, 2:] - regions[j, :2]).repeat(2)
        boxes[:, j] = origin + rel * span  # the crop's box mapped from region to image coords
    flip = torch.rand(n * m2, device=device, generator=generator) < hflip_p
    return boxes.view(n * m2, 4), flip


def crop_tiles(views: Tensor, crops: Tensor, grid: int) -> Tensor:
    """Every tile of ``views`` ``[n, grid^2, C, S, S]`` (view ``j`` of an image is the one
    augmented for its location ``j``): tile ``i grid^2 + j`` is view ``j`` of image ``i`` cut to
    its box ``crops[id, :4]``, resized to ``S // grid`` pixels and flipped where
    ``crops[id, 4]`` is 1: ``[n grid^2, C, S // grid, S // grid]`` in tile-id order."""
    return resized_crop(views.flatten(0, 1), crops[:, :4], views.shape[-1] // grid,
                        crops[:, 4] > 0.5)


@register(
    "method",
    "jigsaw_clustering",
    description="montages of a batch's shuffled tiles: cluster tiles by source image "
    "(supervised contrastive) and classify each tile's location",
    reference="Chen, Liu & Jia 2021, Jigsaw Clustering for Unsupervised Visual Representation "
    "Learning (CVPR)",
)
class JigsawClustering(Method):
    """Jigsaw clustering around a backbone with ``forward_features`` (a spatial map).

    Attributes:
        backbone: the encoder (evaluated and exported on whole images).
        clu_head: ``[T, D] -> [T, proj_dim]`` Linear-ReLU-Linear (``fc_clu``).
        loc_head: ``[T, D] -> [T, grid^2]`` linear (``fc_loc``).

    Raises:
        ConfigError: for a backbone without ``forward_features`` or an invalid Config value.
    """

    Config: ClassVar[type] = JigsawClusteringConfig
    default_views: ClassVar[str] = "jigsaw_clustering"
    # main.py: SGD(model.parameters(), 0.03, momentum=0.9, weight_decay=1e-4) at batch 256,
    # cosine over the epochs (adjust_learning_rate), no warm-up; every parameter decayed
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd", "lr": 0.03, "lr_scaling": "linear", "weight_decay": 1e-4,
        "momentum": 0.9, "warmup_epochs": 0, "min_lr_ratio": 0.0, "decay_norm_bias": True,
    }

    def __init__(self, backbone: nn.Module, cfg: JigsawClusteringConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        if not callable(getattr(backbone, "forward_features", None)):
            raise ConfigError(f"jigsaw_clustering needs a backbone with a spatial map "
                              f"(forward_features), got {type(backbone).__name__}")
        self.require_positive(cfg, ("proj_dim",))
        quadrant_regions(cfg.grid, cfg.cross_ratio)  # checks grid and cross_ratio
        checks = {"temperature": cfg.temperature > 0, "clu_weight": cfg.clu_weight >= 0,
                  "loc_weight": cfg.loc_weight >= 0, "tile_hflip_p": 0 <= cfg.tile_hflip_p <= 1,
                  "tile_scale": 0 < cfg.tile_scale[0] <= cfg.tile_scale[1] <= 1,
                  "tile_ratio": 0 < cfg.tile_ratio[0] <= cfg.tile_ratio[1],
                  "shuffle": cfg.shuffle in SHUFFLES}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"method_args.{key}={getattr(cfg, key)!r} is invalid for jigsaw_clustering "
                    f"(temperature > 0, weights >= 0, tile_hflip_p in [0, 1], tile_scale in "
                    f"(0, 1] increasing, tile_ratio positive increasing, shuffle {SHUFFLES})")
        self.m2 = cfg.grid * cfg.grid
        self.clu_head = mlp([dim, dim, cfg.proj_dim], batch_norm=False)
        self.loc_head = nn.Linear(dim, self.m2)
        self._warned = False

    def _views(self, batch: Batch) -> Tensor:
        """The first ``grid^2`` views stacked per image, ``[B, grid^2, C, S, S]``."""
        m2, v = self.m2, batch.views
        if len(v) < m2 or any(x.shape != v[0].shape for x in v[:m2]) or v[0].dim() != 4 or (
                v[0].shape[-1] != v[0].shape[-2]):
            raise DataError(f"jigsaw_clustering with grid {self.cfg.grid} needs {m2} square views "
                            f"of one size per image (one per tile; the jigsaw_clustering preset, "
                            f"view_args.n={m2}), got {[tuple(x.shape) for x in v]}")
        if v[0].shape[-1] < self.cfg.grid:
            raise DataError(f"jigsaw_clustering: {v[0].shape[-1]}-px views are too small for "
                            f"{self.cfg.grid} x {self.cfg.grid} tiles of at least 1 px")
        return torch.stack(v[:m2], dim=1)

    def build_task(self, n: int, size: int, device: torch.device,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw the shuffle and the tile crops of a (global) batch of ``n`` images of side
        ``size``: ``(assign [n, grid^2]`` tile ids per montage slot, ``crops [n grid^2, 5]``:
        each tile's box and flip flag by tile id``)``, rank 0's draws on every rank."""
        cfg = self.cfg
        assign = draw_assignment(n, self.m2, cfg.shuffle, device=device, generator=generator)
        boxes, flip = draw_tile_boxes(n, cfg.grid, cfg.cross_ratio, size, cfg.tile_scale,
                                      cfg.tile_ratio, cfg.tile_hflip_p, device=device,
                                      generator=generator)
        crops = torch.cat([boxes, flip.unsqueeze(1).to(boxes.dtype)], dim=1)
        return dist.broadcast(assign), dist.broadcast(crops)

    def montages(self, tiles: Tensor, assign: Tensor) -> Tensor:
        """The montages of rows ``assign`` ``[b, grid^2]`` built from ``tiles`` ``[n grid^2, C,
        t, t]`` (tile-id order): ``[b, C, grid t, grid t]``."""
        return assemble_montages(tiles[assign.reshape(-1)], self.cfg.grid)

    def tile_features(self, montages: Tensor) -> Tensor:
        """``[b grid^2, D]`` decoupled features of the tiles of ``montages`` (slot order)."""
        fmap = self.backbone.forward_features(montages)  # type: ignore[operator]
        if not self._warned and min(fmap.shape[-2:]) < self.cfg.grid:
            self._warned = True
            logger.warning("jigsaw_clustering: the backbone's map of a %d-px montage has %s "
                           "cells, fewer than %d x %d tiles: each tile's feature mixes its "
                           "neighbours' (use larger images)", montages.shape[-1],
                           tuple(fmap.shape[-2:]), self.cfg.grid, self.cfg.grid)
        return region_features(fmap, self.cfg.grid)

    def training_step(self, batch: Batch) -> StepOutput:
        """Clustering + location loss on the montages of ``batch.views[:grid^2]``.

        Raises:
            DataError: for too few or mismatched views, or a batch too small to shuffle.
        """
        local = self._views(batch)  # [B, m2, C, S, S]
        b, m2, cfg = local.shape[0], self.m2, self.cfg
        assign, crops = self.build_task(b * dist.world_size(), local.shape[-1], local.device)
        rows = slice(dist.rank() * b, (dist.rank() + 1) * b)  # this rank's images and montages
        own = crop_tiles(local.detach(), crops[rows.start * m2: rows.stop * m2], cfg.grid)
        tiles = dist.all_gather(own)  # [N m2, C, t, t], tile ids in rank order
        feats = self.tile_features(self.montages(tiles, assign[rows]))  # [B m2, D]
        ids_all = assign.reshape(-1)  # [N m2] tile ids in (montage, slot) order
        src_all, loc = ids_all // m2, ids_all[rows.start * m2: rows.stop * m2] % m2
        # clustering: anchors are this rank's tiles, candidates every rank's
        z = F.normalize(self.clu_head(feats), dim=1)  # [B m2, P]
        z_all = dist.all_gather_grad(z)  # [N m2, P]
        first = rows.start * m2
        src = src_all[first: first + b * m2]
        pos, self_mask = cluster_masks(src, src_all, first)
        loss_clu = info_nce(z, z_all, pos, cfg.temperature, self_mask=self_mask,
                            normalize=False)
        logits = self.loc_head(feats)  # [B m2, m2]
        loss_loc = F.cross_entropy(logits, loc)
        loss = cfg.clu_weight * loss_clu + cfg.loc_weight * loss_loc
        with torch.no_grad():
            sim = (z @ z_all.T).masked_fill(self_mask, float("-inf"))
            clu_top1 = pos.gather(1, sim.argmax(dim=1, keepdim=True)).float().mean()
            loc_acc = (logits.argmax(dim=1) == loc).float().mean()
        logs: dict[str, Tensor | float] = {
            "loss_clu": loss_clu.detach(), "loss_loc": loss_loc.detach(),
            "loc_acc": loc_acc, "clu_top1": clu_top1}
        return StepOutput(loss=loss, logs=logs, embeddings=z.detach().view(b, m2, -1)[:, 0])

    @torch.no_grad()
    def picture_rows(self, x: Tensor, mean: Tensor, std: Tensor,
                     generator: torch.Generator | None = None) -> list[tuple[str, Tensor]]:
        """``selfsup visualize``: the montages of the shown images (their tiles cropped and
        shuffled as in training, without the colour augmentation)."""
        views = x.unsqueeze(1).expand(-1, self.m2, -1, -1, -1)
        n = x.shape[0]
        if self.cfg.shuffle == "distinct" and n < self.m2:
            return []
        assign, crops = self.build_task(n, x.shape[-1], torch.device("cpu"), generator)
        tiles = crop_tiles(views, crops.to(x), self.cfg.grid)
        mont = self.montages(tiles, assign.to(x.device))
        mont = F.interpolate(mont, size=x.shape[-2:], mode="nearest")
        unit = (mont * std.to(x) + mean.to(x)).clamp(0, 1)
        if unit.shape[1] < 3:  # grey (or 2 bands): shown as grey from the first channel
            unit = unit[:, :1].expand(-1, 3, -1, -1)
        return [("montages", unit[:, :3])]

    def extra_repr(self) -> str:
        return f"grid={self.cfg.grid}x{self.cfg.grid}, shuffle={self.cfg.shuffle}"
