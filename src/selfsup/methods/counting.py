"""Learning to count: the counting vector of an image equals the sum over its 2 x 2 tiles.

Noroozi, Pirsiavash & Favaro 2017, "Representation Learning by Learning to Count", ICCV. No
official code was released (clvrai/Representation-Learning-by-Learning-to-Count is a third-party
TensorFlow version; it applies the margin per entry instead of to the squared norm, which is not
followed here).

- Task (sec. 3, eq. 2): for the downsampling operator ``D`` (factor 2) and the tiling operators
  ``T_1 .. T_4`` (the four quadrants, row-major), ``phi(D x) = sum_j phi(T_j x)``; both give
  ``S/2``-pixel images of an ``S``-pixel view.
- Loss (eq. 4, :func:`selfsup.losses.counting.counting_loss`): ``|phi(D x) - sum_j phi(T_j
  x)|^2 + max(0, M - |phi(D y) - sum_j phi(T_j x)|^2)``, ``M`` = 10, averaged over the batch.
  The other image ``y`` of sample ``i`` is the next image of the (global) batch, ``i + 1`` (the
  last takes the first): the loader shuffles, so it is a random other image, and ``phi(D y)`` is
  the row's ``phi(D x)``, shared instead of a sixth pass of the same network on the same input
  (``D y`` is built as ``D x``: same filter, same colour mode). Under DDP the rows are gathered
  with their gradients, so the pairing runs over the global batch.
- Counting vector (the paper's architecture paragraph): after the backbone, three fully connected layers
  ``-> 4096 -> 4096 -> 1000`` (``hidden_dim``, ``count_dim``), each followed by a ReLU, so the
  counts are non-negative. The paper uses AlexNet's five conv layers as the trunk; any backbone
  with pooled features is taken here, and the backbone is the evaluated encoder.
- Shortcuts (sec. 4): the downsampling filter is drawn at every step among OpenCV's bicubic,
  bilinear, Lanczos and area methods (:mod:`selfsup.nn.downsample`; ``downsampling`` fixes one,
  the table 4 ablation); to limit chromatic aberration the images of a step are colour 33% and
  grey 67% of the time (``gray_p``; grey = the mean colour copied to every channel, undoing the
  input normalisation with ``input_mean``/``input_std``), the same for all tiles and downsampled
  images. Both are drawn once per step (on rank 0, broadcast); "at each stochastic gradient
  descent iteration" is the paper's word for the filter, and one draw per step is the reading
  taken for the colour mode that keeps every term of the loss consistent.
- Input normalisation (sec. 4): "subtracting the mean intensity value and dividing the
  zero-mean images by their standard deviation": each network input (tile or downsampled
  image) is standardised on its own (``standardize``). The backbone is then wrapped in
  :class:`StandardizedEncoder`, so the evaluated and exported encoder standardises every whole
  image the same way (after the dataset's per-channel normalisation, which it undoes up to a
  per-channel affine map).
- Views (``counting`` preset): a random crop of 224/256 of the side, no other augmentation.
- Optimiser: the paper starts at lr 1e-4 and multiplies it by 0.9 every 10K iterations; the text
  names no solver nor batch size. 1e-4 is an Adam-scale rate for AlexNet from scratch, so Adam
  (no weight decay) is taken, with the library's cosine schedule instead of the step decay; both
  choices are this library's, not the paper's.

Small images: the tiles and the downsampled image are ``S/2`` pixels (8 px for 16-px digits,
112 for the paper's 224), so the view needs an even side of at least 4 px (tiles of 2 px, what
small_cnn takes); the evaluated encoder sees the whole ``S``-pixel image, twice the scale it was
trained at, as in the paper (114-px inputs in training, full images in transfer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selfsup.losses.counting import counting_terms
from selfsup.methods.base import Method
from selfsup.nn.downsample import DOWNSAMPLE_METHODS, downsample2
from selfsup.nn.heads import mlp
from selfsup.nn.input_stats import input_stats
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist

_CHOICES = ("random", *DOWNSAMPLE_METHODS)


@dataclass
class CountingConfig:
    """Learning-to-count hyper-parameters; the paper's defaults (``selfsup.methods.counting.Config``)."""

    count_dim: int = 1000  # length of the counting vector (architecture: fc 4096 x 1000, ReLU)
    hidden_dim: int = 4096  # width of the two hidden fc layers (architecture: 4096, 4096)
    margin: float = 10.0  # M of the contrastive term (eq. 4: 10)
    gray_p: float = 0.67  # share of grey steps (sec. 4: colour 33%, grey 67% of the time)
    # "random": one of bicubic, bilinear, lanczos, area each step (sec. 4, table 4); or one
    downsampling: str = "random"
    standardize: bool = True  # each input to zero mean, unit std (sec. 4 "normalize the input")
    # per-channel mean/std the inputs were normalised with (set by the trainer; for the grey
    # conversion, which averages the unit-range colours)
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)


Config = CountingConfig


def quadrants(x: Tensor) -> Tensor:
    """The 2 x 2 tiles of ``x`` ``[B, C, S, S]`` (even ``S``): ``[B, 4, C, S/2, S/2]``, tile
    ``j`` at row ``j // 2``, column ``j % 2`` (``T_1 .. T_4``)."""
    b, c, s, _ = x.shape
    h = s // 2
    return x.view(b, c, 2, h, 2, h).permute(0, 2, 4, 1, 3, 5).reshape(b, 4, c, h, h)


def standardize_each(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Every image of ``x`` ``[N, C, H, W]`` to zero mean and unit variance over its pixels."""
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mu) / torch.sqrt(var + eps)


class StandardizedEncoder(nn.Module):
    """``backbone(standardize_each(x))``: every image to zero mean and unit variance before the
    backbone, the paper's input normalisation, so the evaluated and exported encoder sees its
    inputs as the training did (whole images instead of tiles).

    Attributes:
        backbone: the trained network; ``num_features``, ``in_chans``, ``image_size``: its own.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = int(getattr(backbone, "num_features", 0))
        self.in_chans = int(getattr(backbone, "in_chans", 0))
        self.image_size = getattr(backbone, "image_size", None)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.backbone(standardize_each(x))
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """The backbone's spatial map of the standardised images (for dense heads)."""
        return self.backbone.forward_features(standardize_each(x))  # type: ignore[operator]


@register(
    "method",
    "counting",
    description="counting vector of the downsampled image = sum over its 2 x 2 tiles, with a "
    "contrastive margin against another image",
    reference="Noroozi, Pirsiavash & Favaro 2017, Representation Learning by Learning to Count "
    "(ICCV)",
)
class Counting(Method):
    """Learning to count around any backbone with ``num_features``.

    Attributes:
        backbone: the encoder (evaluated and exported): :class:`StandardizedEncoder` around the
            configured backbone when ``standardize``, else that backbone.
        counter: ``[N, num_features] -> [N, count_dim]`` three Linear-ReLU layers (``phi``'s
            head; ReLU on the output too).

    Raises:
        ConfigError: if the backbone has no ``num_features`` or a Config value is invalid.
    """

    Config: ClassVar[type] = CountingConfig
    default_views: ClassVar[str] = "counting"
    # sec. 4: lr 1e-4 (x0.9 every 10K iterations); solver and batch size not given: Adam, no
    # weight decay, no batch scaling, cosine (see the module docstring)
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adam", "lr": 1e-4, "lr_scaling": "none", "weight_decay": 0.0,
        "betas": (0.9, 0.999), "warmup_epochs": 0, "min_lr_ratio": 0.0,
    }

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, cfg: CountingConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        self.require_positive(cfg, ("count_dim", "hidden_dim"))
        checks = {"margin": cfg.margin >= 0, "gray_p": 0 <= cfg.gray_p <= 1,
                  "downsampling": cfg.downsampling in _CHOICES}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"method_args.{key}={getattr(cfg, key)!r} is invalid for "
                                  f"counting (margin >= 0, gray_p in [0, 1], downsampling one "
                                  f"of {_CHOICES})")
        mean, std = input_stats(cfg.input_mean, cfg.input_std, int(getattr(backbone, "in_chans", 0)))
        self.backbone = self.build_encoder(backbone, cfg)
        self.counter = nn.Sequential(mlp([dim, cfg.hidden_dim, cfg.hidden_dim, cfg.count_dim],
                                         batch_norm=False), nn.ReLU())
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @classmethod
    def build_encoder(cls, backbone: nn.Module, cfg: Any) -> nn.Module:
        """The evaluated encoder: :class:`StandardizedEncoder` around ``backbone`` when
        ``cfg.standardize`` (also used to rebuild it from a checkpoint or an export), else
        ``backbone``."""
        return StandardizedEncoder(backbone) if getattr(cfg, "standardize", False) else backbone

    def draw_step(self, device: torch.device) -> tuple[str, bool]:
        """This step's downsampling filter and colour mode (grey or not), rank 0's on every
        rank."""
        t = torch.stack([torch.randint(len(DOWNSAMPLE_METHODS), ()),
                         (torch.rand(()) < self.cfg.gray_p).long()]).to(device)
        method_i, grey = dist.broadcast(t).tolist()
        fixed = self.cfg.downsampling
        return (DOWNSAMPLE_METHODS[method_i] if fixed == "random" else fixed), bool(grey)

    def to_grey(self, x: Tensor) -> Tensor:
        """Normalised ``x`` with every channel set to the mean colour (in unit range), then
        normalised again; a 1-channel ``x`` is returned as is."""
        if x.shape[1] == 1:
            return x
        mean, std = self.mean.to(x), self.std.to(x)
        grey = (x * std + mean).mean(dim=1, keepdim=True).expand_as(x)
        return (grey - mean) / std

    def network_inputs(self, x: Tensor, method: str, grey: bool) -> Tensor:
        """``[5B, C, S/2, S/2]``: ``D x`` of every image, then its four tiles (image-major);
        the encoder standardises each of them (``standardize``)."""
        if grey:
            x = self.to_grey(x)
        return torch.cat([downsample2(x, method), quadrants(x).flatten(0, 1)])

    def training_step(self, batch: Batch) -> StepOutput:
        """Eq. 4 on ``batch.views[0]`` ``[B, C, S, S]``.

        Raises:
            DataError: without a view, for a view that is not square with an even side >= 4, or
                for a (global) batch of one image (no other image ``y``).
        """
        if not batch.views:
            raise DataError("counting needs one view per image, got none")
        x = batch.views[0]
        if x.dim() != 4 or x.shape[-1] != x.shape[-2] or x.shape[-1] % 2 or x.shape[-1] < 4:
            raise DataError(f"counting needs square views with an even side of at least 4 px "
                            f"(2 x 2 tiles and a downsampling by 2), got {tuple(x.shape)}")
        b = x.shape[0]
        if b * dist.world_size() < 2:
            raise DataError("counting contrasts each image with another of the batch: it needs "
                            "a batch of at least 2 images, got 1")
        method, grey = self.draw_step(x.device)
        phi = self.counter(self.backbone(self.network_inputs(x, method, grey)))  # [5B, K]
        down, tiles = phi[:b], phi[b:].view(b, 4, -1)
        down_all = dist.all_gather_grad(down)  # [N, K]: y of global row g is row g + 1
        first = dist.rank() * b
        down_y = down_all.roll(-1, dims=0)[first: first + b]
        count, contrast = counting_terms(down, tiles, down_y, self.cfg.margin)
        with torch.no_grad():  # which downsampled image of the batch do the tiles sum to?
            tile_sum = tiles.detach().sum(dim=1)
            dist2 = torch.cdist(tile_sum, down_all.detach()) ** 2  # [B, N]
            top1 = (dist2.argmin(dim=1) == first + torch.arange(b, device=x.device)).float()
            pair_acc = (count.detach() < (down_y.detach() - tile_sum).pow(2).sum(1)).float()
        logs: dict[str, Tensor | float] = {
            "count": count.detach().mean(), "contrast": contrast.detach().mean(),
            "count_top1": top1.mean(), "pair_acc": pair_acc.mean(),
            "grey": float(grey), "filter": float(DOWNSAMPLE_METHODS.index(method))}
        return StepOutput(loss=(count + contrast).mean(), logs=logs,
                          embeddings=down.detach())
