"""Jigsaw: classify which of P permutations shuffled the 3x3 tiles of an image.

Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles" (ECCV). References read beside the paper: the authors' Caffe release
(MehdiNoroozi/JigsawPuzzleSolver ``caffe-master-jps/src/caffe/data_transformer.cpp``,
``train_val_cfn_jps.prototxt``, ``solver_cfn_jps.prototxt``) and the PyTorch port
(bbrattoli/JigsawPuzzlePytorch ``JigsawImageLoader.py``, ``JigsawNetwork.py``,
``select_permutations.py``).

Task (sec. 3, 3.2): the image (the reference's 255-px crop) is split into a 3x3 grid of cells
(85 px) and a smaller tile (64 px) is cut at a random offset inside each cell, so the tiles are
separated by random gaps (sec. 3.3, "edge continuity"). A class ``k`` is drawn uniformly from a
fixed set of P permutations (:func:`~selfsup.nn.permutations.maximal_hamming_permutations`,
Algorithm 1), and input slot ``s`` receives the tile of cell ``perm_k[s]`` (the Caffe layer's
``dst_rcts[i] = src_rcts[H[i]]``, the port's ``tiles[perm[t]]``).

Shortcut countermeasures (sec. 3.3):

- per-tile normalisation: each tile is standardised on its own (``tile_norm``: per channel by
  default, the paper's "normalize the mean and the standard deviation of each patch
  independently" and the Caffe layer's per-tile, per-channel mean; ``"tile"`` is the port's one
  mean/std over the tile's channels);
- random gaps and offsets (above);
- chromatic aberration: 30% of the images are grey (the ``jigsaw`` view preset's
  ``grayscale_p=0.3``, RGB only) and each colour channel of each tile is shifted by its own
  ``U{-2..2}`` px (``channel_jitter``). Neither is in the Caffe layer; both are the paper's text.

Network (sec. 3.1, the context-free network; ``JigsawNetwork.py``): the backbone encodes every
tile on its own (shared weights, siamese), a shared ``fc6`` (Linear-ReLU-Dropout, 1024) maps each
tile's features, the nine outputs are concatenated in slot order and ``fc7`` (Linear-ReLU-
Dropout, 4096) and ``fc8`` (Linear, P) classify the permutation with cross-entropy. The
evaluated encoder is the backbone on whole images.

BatchNorm backbones: the tiles are encoded with their own batch statistics, but the running
statistics that the evaluated encoder uses are gathered on the whole views (``bn_stats="image"``,
:func:`~selfsup.nn.tiles.encode_tiles`); the CFN has no BatchNorm, and the tiles' statistics
misfit whole images (kNN 80.2 against 87.7 on 16-px digits, random init 83.8).

Small images: every size scales with the image: cells ``image // 3`` px, tiles
``round(cell x 64/85)`` px (4-px tiles in 5-px cells at 16 px, 2-px tiles at 8 px), channel
shifts ``round(2 x tile / 64)`` px (none below 16-px tiles). Images below 6 px raise a
:class:`~selfsup.types.DataError`. The backbone must accept tile-sized inputs (the small CNN
and ResNets do; a ViT needs patches no larger than a tile and a dynamic image size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.methods.base import Method
from selfsup.nn.permutations import maximal_hamming_permutations
from selfsup.nn.tiles import (
    as_rgb,
    batch_statistics,
    cut_tiles,
    encode_tiles,
    jigsaw_grid,
    local_rows,
    normalize_tiles,
    paste_tiles,
    rng_from,
    round_half_up,
    shift_channels,
)
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

GRID = 3  # the paper's 3x3 puzzle; the permutations are over its 9 tiles
REF_TILE = 64  # the reference's tile side, the unit of channel_jitter


@dataclass
class JigsawConfig:
    """Jigsaw hyper-parameters; defaults are the paper's (``selfsup.methods.jigsaw.Config``)."""

    # P, the number of permutation classes (sec. 4.2 / table 3: 1000 is the best setting;
    # the released Caffe model uses 100)
    num_permutations: int = 1000
    # seed of the greedy maximal-Hamming set (Algorithm 1's first, uniformly drawn permutation)
    permutation_seed: int = 0
    tile_ratio: float = 64 / 85  # tile side / cell side (sec. 3.3: 64-px tiles in 85-px cells)
    # per-tile standardisation (sec. 3.3): channel (each channel of each tile) | tile (one
    # mean/std per tile, the PyTorch port) | none
    tile_norm: str = "channel"
    # per-channel spatial shift of each tile, +-px at 64-px tiles (sec. 3.3: "+-0, +-1, +-2");
    # scaled to round(channel_jitter x tile / 64) px; RGB and multispectral only
    channel_jitter: int = 2
    tile_dim: int = 1024  # fc6 width per tile (sec. 3.1, the CFN's fc6: 1024)
    hidden_dim: int = 4096  # fc7 width on the 9 concatenated tiles (sec. 3.1: 4096)
    dropout: float = 0.5  # dropout after fc6 and fc7 (train_val_cfn_jps.prototxt: 0.5)
    # the backbone's BatchNorm running statistics (used by the evaluated encoder): image (from
    # no-grad passes over the whole views, see selfsup.nn.tiles.encode_tiles) | tiles (from the
    # training tiles). The CFN has no BN; this is the reference calibration for BN backbones.
    bn_stats: str = "image"


Config = JigsawConfig


@register(
    "method",
    "jigsaw",
    description="3x3 tiles with random gaps, shuffled by one of P maximal-Hamming permutations; "
    "shared tile encoder, P-way classification",
    reference="Noroozi & Favaro 2016, Unsupervised Learning of Visual Representations by "
    "Solving Jigsaw Puzzles",
)
class Jigsaw(Method):
    """Jigsaw puzzles around any backbone with ``num_features``.

    Attributes:
        backbone: the tile encoder (evaluated and exported on whole images).
        tile_head: the shared ``fc6``, ``[B*9, num_features] -> [B*9, tile_dim]``.
        classifier: ``fc7`` and ``fc8``, ``[B, 9*tile_dim] -> [B, num_permutations]``.
        permutations: buffer ``[P, 9]`` (int64), class ``k``'s permutation in row ``k``; saved
            in the checkpoint, so a resumed or evaluated run uses the same set.

    Raises:
        ConfigError: for a backbone without ``num_features`` or an invalid Config value.
    """

    Config: ClassVar[type] = JigsawConfig
    default_views: ClassVar[str] = "jigsaw"
    # solver_cfn_jps.prototxt: SGD, base_lr 0.01 at batch 256, momentum 0.9, weight decay 5e-4
    # (step decay x0.1 every 100k of 350k iterations there, cosine here); biases have
    # decay_mult 0 (and lr_mult 2, which the library's optimiser does not express)
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd", "lr": 0.01, "lr_scaling": "linear", "momentum": 0.9,
        "weight_decay": 5e-4, "decay_norm_bias": False, "warmup_epochs": 0,
        "min_lr_ratio": 0.0,
    }

    permutations: Tensor

    def __init__(self, backbone: nn.Module, cfg: JigsawConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("tile_dim", "hidden_dim"))
        if cfg.tile_norm not in ("channel", "tile", "none"):
            raise ConfigError(f"method_args.tile_norm must be channel | tile | none, got "
                              f"{cfg.tile_norm!r}")
        if not 0 < cfg.tile_ratio <= 1:
            raise ConfigError(f"method_args.tile_ratio must be in (0, 1] (tile side / cell "
                              f"side), got {cfg.tile_ratio}")
        if cfg.channel_jitter < 0:
            raise ConfigError(f"method_args.channel_jitter must be >= 0 (pixels at 64-px "
                              f"tiles), got {cfg.channel_jitter}")
        if cfg.bn_stats not in ("image", "tiles"):
            raise ConfigError(f"method_args.bn_stats must be image | tiles, got {cfg.bn_stats!r}")
        if not 0 <= cfg.dropout < 1:
            raise ConfigError(f"method_args.dropout must be in [0, 1), got {cfg.dropout}")
        perms = maximal_hamming_permutations(cfg.num_permutations, GRID * GRID,
                                             cfg.permutation_seed)
        self.register_buffer("permutations", perms)
        self.tile_head = nn.Sequential(nn.Linear(num_features, cfg.tile_dim), nn.ReLU(),
                                       nn.Dropout(cfg.dropout))
        self.classifier = nn.Sequential(
            nn.Linear(GRID * GRID * cfg.tile_dim, cfg.hidden_dim), nn.ReLU(),
            nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, cfg.num_permutations))

    def sample_layout(self, x: Tensor) -> tuple[int, Tensor, Tensor]:
        """Where the tiles of images ``x`` ``[B, C, H, W]`` are cut and which puzzle each image
        gets, drawn from torch's global RNG: the tile side, the corners ``[B, 9, 2]`` (or
        ``[B, 9, C, 2]`` with channel shifts; cells in row-major order) and the classes ``[B]``.

        Raises:
            DataError: if ``x`` is not ``[B, C, H, W]`` or the images are too small.
        """
        if x.dim() != 4:
            raise DataError(f"jigsaw expects views [B, C, H, W], got {tuple(x.shape)}")
        b, c, h, w = x.shape
        grid = jigsaw_grid(min(h, w), self.cfg.tile_ratio, GRID)
        labels = local_rows(lambda n: torch.randint(self.cfg.num_permutations, (n,),
                                                    device=x.device), b)
        origins = grid.sample_origins(b, h, w, x.device)  # [B, 9, 2], cell order
        shift = round_half_up(self.cfg.channel_jitter * grid.tile / REF_TILE)
        if c > 1 and shift > 0:
            origins = shift_channels(origins, c, shift, h, w, grid.tile)
        return grid.tile, origins, labels

    def shuffle(self, tiles: Tensor, labels: Tensor) -> Tensor:
        """Tiles ``[B, 9, ...]`` in cell order -> slot order: slot ``s`` gets cell
        ``perm[s]`` of the image's permutation (the Caffe layer's ``dst_rcts[i] =
        src_rcts[H[i]]``)."""
        perm = self.permutations[labels]  # [B, 9]
        return tiles[torch.arange(tiles.shape[0], device=tiles.device)[:, None], perm]

    def make_puzzles(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Puzzles of images ``x`` ``[B, C, H, W]``: the shuffled, normalised tiles
        ``[B, 9, C, t, t]`` (slot order) and their classes ``[B]`` (int64), drawn from torch's
        global RNG.

        Raises:
            DataError: if ``x`` is not ``[B, C, H, W]`` or the images are too small.
        """
        tile, origins, labels = self.sample_layout(x)
        shuffled = self.shuffle(cut_tiles(x, origins, tile), labels)
        return normalize_tiles(shuffled, self.cfg.tile_norm), labels

    def classify(self, tiles: Tensor, images: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Permutation logits ``[B, P]`` of puzzles ``[B, 9, C, t, t]`` and the concatenated
        per-tile embeddings ``[B, 9 * tile_dim]``; with ``images`` (and ``bn_stats="image"``)
        the backbone's BatchNorm running statistics follow them
        (:func:`~selfsup.nn.tiles.encode_tiles`)."""
        b = tiles.shape[0]
        whole = images if self.cfg.bn_stats == "image" else None
        feats = encode_tiles(self.backbone, tiles.flatten(0, 1), whole)  # [B*9, F], shared
        z = self.tile_head(feats).reshape(b, -1)  # [B, 9 * tile_dim] in slot order
        return self.classifier(z), z

    def training_step(self, batch: Batch) -> StepOutput:
        """Cross-entropy of the permutation class of one puzzle per image of ``views[0]``.

        Raises:
            DataError: if there is no view or the images are too small.
        """
        if not batch.views:
            raise DataError("jigsaw needs one view per image, got none")
        tiles, labels = self.make_puzzles(batch.views[0])
        logits, z = self.classify(tiles, batch.views[0])
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return StepOutput(loss=loss, logs={"pretext_acc": acc}, embeddings=z.detach())

    @torch.no_grad()
    def picture_rows(self, x: Tensor, mean: Tensor, std: Tensor,
                     generator: torch.Generator) -> list[tuple[str, Tensor]]:
        """Rows for ``selfsup visualize``: the tiles where they were cut (with their gaps), the
        puzzle (slot ``s``'s tile drawn in cell ``s``) and the tiles put back in the cells of
        the predicted permutation (the first row again where the prediction is right); the
        puzzles are drawn from ``generator``."""
        with rng_from(generator, x.device):
            tile, origins, labels = self.sample_layout(x)
        tiles = self.shuffle(cut_tiles(x, origins, tile), labels)
        with batch_statistics(self.backbone, include_eval=self.cfg.bn_stats == "image"):
            logits, _ = self.classify(normalize_tiles(tiles, self.cfg.tile_norm))
        unit = cut_tiles(x * std.to(x) + mean.to(x), origins, tile).clamp(0, 1)
        grey = torch.full_like(x, 0.5)
        pred = self.permutations[logits.argmax(1)]  # [B, 9]: the predicted cell of each slot
        back = origins[torch.arange(x.shape[0], device=x.device)[:, None], pred]
        puzzle = self.shuffle(unit, labels)  # slot order
        return [("tiles", as_rgb(paste_tiles(grey, unit, origins))),
                ("puzzle", as_rgb(paste_tiles(grey, puzzle, origins))),  # slot s in cell s
                ("solved", as_rgb(paste_tiles(grey, puzzle, back)))]
