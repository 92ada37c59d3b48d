"""Context prediction: classify where one patch lies relative to another (8 positions).

Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation Learning by Context
Prediction" (ICCV). Reference read beside the paper: cdoersch/deepcontext ``train.py``
(``sample_patch``, ``imgloader``, ``pos2lbl``, ``prep_image``, ``gen_net``) and
``solver_mko.prototxt``.

Task (sec. 3, fig. 2): patches on a 3x3 grid with gaps between them; a pair (first, second) of
8-adjacent patches is labelled with the second's position around the first, in raster order
(``pos2lbl``: 0 top-left, 1 top, 2 top-right, 3 left, 4 right, 5 bottom-left, 6 bottom,
7 bottom-right). ``pairs="random"`` draws one pair per image, the centre patch and one of its 8
neighbours (sec. 3's "sample a patch uniformly, then the second from one of eight possible
locations"); ``pairs="grid"`` uses every ordered pair of 8-adjacent patches of the grid (40 per
image), as the reference's ``imgloader`` pairs all neighbours on its patch grid.

Trivial-solution countermeasures (sec. 3.1-3.2, ``train.py``):

- a gap of half a patch between patches (``gap = 48`` for 96-px patches) and a jitter of every
  patch by up to 7 px in each direction (``noise = 7``), so low-level cues (boundary texture,
  straight lines across patches) do not give the answer (:func:`~selfsup.nn.tiles.context_grid`);
- chromatic aberration (sec. 3.2): ``color="drop"`` keeps one random channel of each patch and
  replaces the others with Gaussian noise of 1/100 its standard deviation (the paper's colour
  dropping; the code draws uniform noise in [-0.5, 0.5] grey levels); ``"project"`` removes the
  green-magenta component of RGB (projection onto the plane orthogonal to ``(-1, 2, -1)``, the
  paper's alternative, shifting green and magenta toward grey); ``"none"`` keeps all colours;
- ``prep_image``: a third of the patches are downsampled to as few as 100 pixels and upsampled
  back (robustness to pixelation), then each patch's channels are centred and the patch is
  scaled to unit RMS ("so that gradients are a less useful cue"; the code's x50 matches AlexNet's
  input scale, the library's inputs are unit-variance already).

Network (sec. 3.1, fig. 3; ``gen_net``): a pair network with shared weights. Each patch goes
through the backbone and ``fc6`` (Linear-BN-ReLU, 4096); the two ``fc6`` outputs are concatenated
(late fusion) and ``fc7`` (Linear-BN-ReLU, 4096), ``fc8`` (Linear-ReLU, 4096) and ``fc9`` (8)
give the 8-way softmax. The reference's BatchNorm has no Scale layer, so BN here is not affine.
The evaluated encoder is the backbone on whole images; its BatchNorm running statistics are
gathered on the whole views (``bn_stats="image"``, :func:`~selfsup.nn.tiles.encode_tiles`), the
calibration the reference's README prescribes before transfer, while the patches are encoded with
their own batch statistics.

Small images: 96-px patches with 48-px gaps and +-7 px jitter need 398 px. Sizes scale with the
patch: the largest patch side ``p`` with ``3 p + 2 round(p/2) + 2 j <= image``, ``j = max(1,
round(7 p / 96))``: 3-px patches, 2-px gaps and +-1 px jitter at 16 px, 7 / 4 / 1 at 32 px; 8-px
images keep 2-px patches and 1-px gaps without jitter; below 8 px a DataError is raised. The
pixelated side runs from ``max(2, round(10 p / 96))`` to ``p - 2`` (2 px for 3-px patches; 2-px
patches are left alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.methods.base import Method
from selfsup.nn.tiles import (
    TileGrid,
    as_rgb,
    batch_statistics,
    context_grid,
    cut_tiles,
    encode_tiles,
    local_rows,
    paste_tiles,
    rng_from,
    round_half_up,
)
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

GRID = 3
CENTRE = 4  # the centre cell of the 3x3 grid (row-major)
# (dy, dx) of the second patch relative to the first, by label (pos2lbl's raster order)
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
GREEN_MAGENTA = (-1.0, 2.0, -1.0)  # the projected-out colour axis (sec. 3.2)
REF_PATCH, REF_MIN_SIDE = 96, 10  # prep_image: down to sqrt(100) px of a 96-px patch
EPS = 1e-5


def grid_pairs() -> tuple[Tensor, Tensor]:
    """Every ordered pair of 8-adjacent cells of the 3x3 grid: ``[40, 2]`` (first, second) cell
    indices (row-major) and ``[40]`` labels (the second's position around the first)."""
    pairs, labels = [], []
    for a in range(GRID * GRID):
        r, c = divmod(a, GRID)
        for label, (dy, dx) in enumerate(OFFSETS):
            if 0 <= r + dy < GRID and 0 <= c + dx < GRID:
                pairs.append((a, (r + dy) * GRID + c + dx))
                labels.append(label)
    return torch.tensor(pairs), torch.tensor(labels)


def neighbour_cell(labels: Tensor) -> Tensor:
    """The cell of the centre's neighbour at each label ``[...]`` (int64)."""
    table = torch.tensor([(CENTRE // GRID + dy) * GRID + CENTRE % GRID + dx
                          for dy, dx in OFFSETS], device=labels.device)
    return table[labels]


def downsample_patches(patches: Tensor, p: float) -> Tensor:
    """``prep_image``'s pixelation: with probability ``p`` a patch ``[..., C, s, s]`` is resized
    (bilinear) to ``r x r`` and back, ``r = floor(sqrt(m^2 + u ((s-1)^2 - m^2)))``, ``u ~ U(0,
    1)``, ``m = max(2, round(10 s / 96))``, so ``r`` runs from ``m`` to ``s - 2`` (the
    reference's ``int(sqrt(u (95^2 - 10^2) + 10^2))``: 10 to 94 px of a 96-px patch; ``r = 2``
    for 3- and 4-px patches); a no-op when ``s - 1 < m``."""
    s = patches.shape[-1]
    lo = max(2, round_half_up(REF_MIN_SIDE * s / REF_PATCH))
    if s - 1 < lo or p <= 0:
        return patches
    flat = patches.reshape(-1, *patches.shape[-3:])
    n, lead = patches.shape[0], patches.shape[1:-3]
    apply = local_rows(lambda m: torch.rand(m, *lead, device=patches.device), n) < p
    u = local_rows(lambda m: torch.rand(m, *lead, device=patches.device), n)
    side = torch.sqrt(lo**2 + u * ((s - 1) ** 2 - lo**2)).floor().long().clamp(lo, s - 1)
    side, apply = side.reshape(-1), apply.reshape(-1)
    out = flat.clone()
    for r in side[apply].unique().tolist():
        sel = apply & (side == r)
        small = F.interpolate(flat[sel], size=(r, r), mode="bilinear", align_corners=False)
        out[sel] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    return out.reshape(patches.shape)


def drop_colors(patches: Tensor, noise_ratio: float) -> Tensor:
    """Colour dropping (sec. 3.2): per patch ``[..., C, s, s]`` one uniformly drawn channel is
    kept (centred), the others become Gaussian noise with ``noise_ratio`` times the kept
    channel's standard deviation. One channel: only the centring."""
    c = patches.shape[-3]
    centred = patches - patches.mean(dim=(-2, -1), keepdim=True)
    if c == 1:
        return centred
    n, lead = patches.shape[0], patches.shape[1:-3]
    keep = local_rows(lambda m: torch.randint(c, (m, *lead), device=patches.device), n)
    noise = local_rows(lambda m: torch.randn(m, *patches.shape[1:], device=patches.device), n)
    kept = centred.gather(-3, keep[..., None, None, None].expand(*keep.shape, 1, *patches.shape[-2:]))
    std = kept.pow(2).mean(dim=(-3, -2, -1), keepdim=True).sqrt()
    is_kept = torch.arange(c, device=patches.device) == keep[..., None]  # [..., C]
    return torch.where(is_kept[..., None, None], centred, noise * (noise_ratio * std))


def project_colors(unit: Tensor) -> Tensor:
    """Projection (sec. 3.2): RGB ``[..., 3, H, W]`` minus its component along the
    green-magenta axis ``(-1, 2, -1) / sqrt(6)``."""
    a = torch.tensor(GREEN_MAGENTA, dtype=unit.dtype, device=unit.device) / math.sqrt(6.0)
    a = a.view(3, 1, 1)
    return unit - a * (unit * a).sum(dim=-3, keepdim=True)


def normalize_patches(patches: Tensor) -> Tensor:
    """``prep_image``'s normalisation: each channel of each patch ``[..., C, s, s]`` centred,
    then the patch divided by its RMS over all channels (``sqrt(mean(x^2) + eps)``)."""
    x = patches - patches.mean(dim=(-2, -1), keepdim=True)
    return x / torch.sqrt(x.pow(2).mean(dim=(-3, -2, -1), keepdim=True) + EPS)


@dataclass
class ContextPredictionConfig:
    """Context prediction hyper-parameters; paper defaults
    (``selfsup.methods.context_prediction.Config``)."""

    # random: the centre and one of its 8 neighbours per image (sec. 3) | grid: all 40 ordered
    # 8-adjacent pairs of the 3x3 grid (the reference imgloader's pairing)
    pairs: str = "random"
    gap_ratio: float = 0.5  # gap / patch side (sec. 3.2, train.py: gap 48 for 96-px patches)
    jitter_ratio: float = 7 / 96  # max jitter / patch side (sec. 3.2, train.py: noise = 7)
    # chromatic aberration (sec. 3.2): drop (keep 1 of 3 channels, noise in the others; the
    # code's choice) | project (remove green-magenta, RGB only) | none
    color: str = "drop"
    noise_ratio: float = 0.01  # dropped channels' noise std / the kept channel's (sec. 3.2)
    downsample_p: float = 0.33  # fraction of patches pixelated (train.py prep_image: .33)
    patch_dim: int = 4096  # fc6 per patch (fig. 3; gen_net: 4096, BN)
    hidden_dim: int = 4096  # fc7 and fc8 on the fused pair (fig. 3; gen_net: 4096)
    # the backbone's BatchNorm running statistics (used by the evaluated encoder): image (from
    # no-grad passes over the whole views, selfsup.nn.tiles.encode_tiles: the README's
    # calibration before transfer) | tiles (from the training patches)
    bn_stats: str = "image"
    # per-channel mean/std the inputs were normalised with (set by the trainer; undone for
    # "project", which works on RGB in [0, 1])
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)


Config = ContextPredictionConfig


@register(
    "method",
    "context_prediction",
    description="relative position (8-way) of a patch around another, with gaps, jitter and "
    "colour dropping; pair network with shared weights",
    reference="Doersch, Gupta & Efros 2015, Unsupervised Visual Representation Learning by "
    "Context Prediction",
)
class ContextPrediction(Method):
    """Context prediction around any backbone with ``num_features``.

    Attributes:
        backbone: the patch encoder (evaluated and exported on whole images).
        patch_head: the shared ``fc6``, ``[N, num_features] -> [N, patch_dim]``.
        pair_head: ``fc7``-``fc9`` on concatenated pairs, ``[N, 2 patch_dim] -> [N, 8]``.

    Raises:
        ConfigError: for a backbone without ``num_features`` or an invalid Config value.
    """

    Config: ClassVar[type] = ContextPredictionConfig
    default_views: ClassVar[str] = "context_prediction"
    # deepcontext train.py / solver_mko.prototxt: plain SGD (no momentum), fixed base_lr 1e-5,
    # no weight decay, on the loss *summed* over a batch's pairs (SoftmaxWithLoss,
    # normalization NONE; about 2.7k pairs from 512 patches). With the mean loss here that is
    # lr = 1e-5 x 2.7k = 0.027 per step whatever the batch (no scaling), kept constant.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd", "lr": 0.027, "lr_scaling": "none", "momentum": 0.0,
        "weight_decay": 0.0, "decay_norm_bias": True, "warmup_epochs": 0,
        "min_lr_ratio": 1.0,
    }

    mean: Tensor
    std: Tensor
    pair_index: Tensor
    pair_labels: Tensor

    def __init__(self, backbone: nn.Module, cfg: ContextPredictionConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("patch_dim", "hidden_dim"))
        in_chans = int(getattr(backbone, "in_chans", 0))
        self._check(cfg, in_chans)
        c = max(in_chans, 1)
        self.register_buffer("mean", torch.tensor(cfg.input_mean or [0.0] * c).view(-1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.input_std or [1.0] * c).view(-1, 1, 1),
                             persistent=False)
        pairs, labels = grid_pairs()
        self.register_buffer("pair_index", pairs, persistent=False)
        self.register_buffer("pair_labels", labels, persistent=False)
        d, h = cfg.patch_dim, cfg.hidden_dim
        self.patch_head = nn.Sequential(nn.Linear(num_features, d, bias=False),
                                        nn.BatchNorm1d(d, affine=False), nn.ReLU())
        self.pair_head = nn.Sequential(
            nn.Linear(2 * d, h, bias=False), nn.BatchNorm1d(h, affine=False), nn.ReLU(),
            nn.Linear(h, h), nn.ReLU(), nn.Linear(h, len(OFFSETS)))

    @staticmethod
    def _check(cfg: ContextPredictionConfig, in_chans: int) -> None:
        checks = {"pairs": cfg.pairs in ("random", "grid"),
                  "color": cfg.color in ("drop", "project", "none"),
                  "gap_ratio": cfg.gap_ratio >= 0, "jitter_ratio": cfg.jitter_ratio >= 0,
                  "noise_ratio": cfg.noise_ratio >= 0,
                  "bn_stats": cfg.bn_stats in ("image", "tiles"),
                  "downsample_p": 0 <= cfg.downsample_p <= 1}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"method_args.{key}={getattr(cfg, key)!r} is invalid for context_prediction "
                    "(pairs random|grid, color drop|project|none, gap_ratio, jitter_ratio and "
                    "noise_ratio >= 0, bn_stats image|tiles, downsample_p in [0, 1])")
        if cfg.color == "project" and in_chans != 3:
            raise ConfigError(f"method_args.color='project' removes the green-magenta axis of "
                              f"RGB and needs 3 channels, got {in_chans}; use 'drop' or 'none'")
        for key in ("input_mean", "input_std"):
            if getattr(cfg, key) and len(getattr(cfg, key)) != in_chans:
                raise ConfigError(f"method_args.{key} needs {in_chans} values, got "
                                  f"{getattr(cfg, key)}")

    def sample_layout(self, b: int, height: int, width: int, device: torch.device,
                      pairs: str | None = None) -> tuple[TileGrid, Tensor, Tensor, Tensor]:
        """Where the patches of ``b`` images lie, drawn from torch's global RNG: the grid, the
        patches' corners ``[b, K, 2]`` (``(y, x)``; K = 2, centre then neighbour, for
        ``random``; the 9 cells in row-major order for ``grid``), the pairs ``[b, M, 2]`` as
        indices into the K patches and their labels ``[b, M]``. ``pairs`` overrides the
        Config's pairing.

        Raises:
            DataError: if the images are too small.
        """
        grid = context_grid(min(height, width), self.cfg.gap_ratio, self.cfg.jitter_ratio, GRID)
        origins = grid.sample_origins(b, height, width, device)  # [b, 9, 2]
        if (pairs or self.cfg.pairs) == "grid":
            return (grid, origins, self.pair_index.expand(b, -1, -1),
                    self.pair_labels.expand(b, -1))
        labels = local_rows(lambda n: torch.randint(len(OFFSETS), (n, 1), device=device), b)
        cells = torch.cat([torch.full_like(labels, CENTRE), neighbour_cell(labels)], 1)
        origins = origins.gather(1, cells[..., None].expand(-1, -1, 2))  # [b, 2, 2]
        return grid, origins, torch.tensor([[[0, 1]]], device=device).expand(b, 1, 2), labels

    def prepare(self, patches: Tensor) -> Tensor:
        """``prep_image`` on cut patches ``[B, K, C, p, p]``: pixelation, colour dropping (if
        ``color="drop"``) and the per-patch normalisation."""
        patches = downsample_patches(patches, self.cfg.downsample_p)
        if self.cfg.color == "drop":
            patches = drop_colors(patches, self.cfg.noise_ratio)
        return normalize_patches(patches)

    def make_patches(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The task of images ``x`` ``[B, C, H, W]``: the prepared patches ``[B, K, C, p, p]``,
        the pairs ``[B, M, 2]`` and their labels ``[B, M]`` (:meth:`sample_layout`).

        Raises:
            DataError: if ``x`` is not ``[B, C, H, W]`` or the images are too small.
        """
        if x.dim() != 4:
            raise DataError(f"context_prediction expects views [B, C, H, W], got "
                            f"{tuple(x.shape)}")
        grid, origins, pairs, labels = self.sample_layout(x.shape[0], x.shape[2], x.shape[3],
                                                          x.device)
        return self.prepare(cut_tiles(self.colour_input(x), origins, grid.tile)), pairs, labels

    def colour_input(self, x: Tensor) -> Tensor:
        """Normalised images, or for ``color="project"`` their projection in unit-range RGB
        (before the per-patch normalisation, which makes the scale irrelevant)."""
        if self.cfg.color != "project":
            return x
        return project_colors(x * self.std.to(x) + self.mean.to(x))

    def classify(self, patches: Tensor, pairs: Tensor, images: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        """Position logits ``[B, M, 8]`` of the pairs ``[B, M, 2]`` of ``patches``
        ``[B, K, C, p, p]``, and the patches' ``fc6`` embeddings ``[B, K, patch_dim]``; with
        ``images`` (and ``bn_stats="image"``) the backbone's BatchNorm running statistics
        follow them (:func:`~selfsup.nn.tiles.encode_tiles`)."""
        b, k = patches.shape[:2]
        whole = images if self.cfg.bn_stats == "image" else None
        feats = encode_tiles(self.backbone, patches.flatten(0, 1), whole)
        z = self.patch_head(feats).reshape(b, k, -1)
        first = z.gather(1, pairs[..., :1].expand(-1, -1, z.shape[-1]))
        second = z.gather(1, pairs[..., 1:].expand(-1, -1, z.shape[-1]))
        fused = torch.cat([first, second], dim=-1)  # late fusion, [B, M, 2 patch_dim]
        return self.pair_head(fused.flatten(0, 1)).reshape(b, pairs.shape[1], -1), z

    def training_step(self, batch: Batch) -> StepOutput:
        """Cross-entropy of the relative position over the pairs of ``views[0]``.

        Raises:
            DataError: if there is no view or the images are too small.
        """
        if not batch.views:
            raise DataError("context_prediction needs one view per image, got none")
        patches, pairs, labels = self.make_patches(batch.views[0])
        logits, z = self.classify(patches, pairs, batch.views[0])
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        acc = (logits.detach().argmax(-1) == labels).float().mean()
        centre = z[:, 0] if self.cfg.pairs == "random" else z[:, CENTRE]
        return StepOutput(loss=loss, logs={"pretext_acc": acc}, embeddings=centre.detach())

    @torch.no_grad()
    def picture_rows(self, x: Tensor, mean: Tensor, std: Tensor,
                     generator: torch.Generator) -> list[tuple[str, Tensor]]:
        """Rows for ``selfsup visualize``: a centre patch and one neighbour where they were cut,
        and the neighbour moved to the predicted position (the first row again where the
        prediction is right); pairs drawn from ``generator``."""
        b, _, h, w = x.shape
        with rng_from(generator, x.device):
            grid, origins, pairs, _ = self.sample_layout(b, h, w, x.device, pairs="random")
            patches = self.prepare(cut_tiles(self.colour_input(x), origins, grid.tile))
        with batch_statistics(self.backbone, include_eval=self.cfg.bn_stats == "image"):
            pred = self.classify(patches, pairs)[0][:, 0].argmax(-1)  # [B]
        step = torch.tensor(OFFSETS, device=x.device)[pred] * grid.pitch
        limit = torch.tensor([h - grid.tile, w - grid.tile], device=x.device)
        guess = torch.minimum((origins[:, 0] + step).clamp(min=0), limit)
        unit = cut_tiles(x * std.to(x) + mean.to(x), origins, grid.tile).clamp(0, 1)
        grey = torch.full_like(x, 0.5)
        moved = torch.stack([origins[:, 0], guess], 1)
        return [("pair", as_rgb(paste_tiles(grey, unit, origins))),
                ("predicted", as_rgb(paste_tiles(grey, unit, moved)))]
