"""CMC: Contrastive Multiview Coding with channel groups as views.

Tian et al. 2020, "Contrastive Multiview Coding". An image is split into ``M`` views and every
view ``j`` has its own encoder ``f_j`` and linear head to a 128-d unit vector ``z_j``
(sec. 3.1, 4.1). For RGB images the views are the ``L`` and the ``ab`` channels of CIE Lab
(sec. 4.1, ImageNet); for other channel counts they are band groups (``groups``, e.g.
``[[0], [1, 2]]``; by default the channels split evenly in two). The two views of a sample are
a positive pair; views of other samples are negatives. The loss sums pairwise contrastive losses
over a graph of views (sec. 3.3): ``graph="core"`` pairs the core view 0 with every other view
(eq. 6), ``graph="full"`` every pair (eq. 7). Each ordered pair ``(i, j)`` contrasts the anchor
``z_i`` against view ``j``'s memory bank (positive: the sample's own entry; ``m`` noise entries)
with NCE (``Z`` per ordered pair) or its softmax variant, as InstDisc (sec. 3.2; see
:mod:`selfsup.methods.instdisc` for ``Z``); ``negatives="batch"`` uses the other samples of the
(global) batch instead of banks. Banks are updated with momentum 0.5 after each step; by default
(``bank_init="lazy"``) an entry first holds the sample's own first embedding, for the reason given
in :mod:`selfsup.methods.instdisc` ("Bank initialisation").

The evaluated representation is the concatenation of the per-view encoders' features
(sec. 4.1): :class:`ChannelGroupEncoder` maps full images ``[B, C, H, W]`` to
``[B, M * num_features]`` and is ``self.backbone``, so checkpoints, ``eval``, ``embed`` and
``export`` use it. Each view's encoder is a copy of the configured backbone with its input
convolution resized to the group's channels (the paper halves the AlexNet width per view so that
the concatenation matches one network; pass half the width in the backbone options for that).

Inputs arrive normalised with the data's per-channel mean/std; for Lab the encoder undoes that
(``input_mean``/``input_std``, filled in by the trainer), converts to Lab and rescales each Lab
channel to about [-1, 1] (the official code's range normalisation).

Grey (1-channel) data: channel groups need >= 2 channels. With ``groups`` unset the documented
fallback is two encoders that both see the single channel, each under a different augmented
view (``views[0]``, ``views[1]``), i.e. CMC with augmentations as views; explicit ``groups``
that do not fit the data raise a ConfigError naming ``method_args.groups``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.color import rgb_to_lab
from selfsup.losses.contrastive import info_nce
from selfsup.losses.nce import bank_info_nce, bank_logits, estimate_log_z, nce_loss
from selfsup.methods.base import Method
from selfsup.nn.channels import with_in_chans
from selfsup.nn.heads import mlp
from selfsup.nn.memory_bank import MemoryBank, NormalizingConstant
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

# official code: Lab normalised by the centre and half-range of each channel over sRGB
_LAB_CENTER = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
_LAB_HALF_RANGE = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


@dataclass
class CMCConfig:
    """CMC hyper-parameters; paper defaults (``selfsup.methods.cmc.Config``)."""

    # bank size n = dataset size (sec. 3.2); the trainer sets it to len(train set)
    num_samples: int = 4096
    embed_dim: int = 128  # per-view embedding (sec. 4.1: 128-d)
    num_negatives: int = 4096  # noise entries m per anchor (sec. 3.2/4.1: 4096, 16384 ImageNet)
    temperature: float = 0.07  # t of the view softmax (sec. 4.1 / official code: 0.07)
    bank_momentum: float = 0.5  # memory update v <- m v + (1 - m) z (sec. 3.2 / code: 0.5)
    loss: str = "nce"  # nce (sec. 3.2, NCE as InstDisc) | infonce (softmax over noise entries)
    z_momentum: float = 0.99  # NCE's Z: 0 = fixed from the first batch (code); 0.99 = EMA
    negatives: str = "bank"  # bank (sec. 3.2, memory banks) | batch (in-batch, no bank)
    # initial banks: "random" unit vectors (code) | "lazy": an entry is set to the sample's own
    # first embedding of that view on its first visit (see instdisc's "Bank initialisation")
    bank_init: str = "lazy"
    graph: str = "core"  # core (sec. 3.3, eq. 6: view 0 vs others) | full (eq. 7: all pairs)
    # channel groups, one per view; [] = L|ab of Lab for RGB (sec. 4.1), else an even split
    groups: list[list[int]] = field(default_factory=list)
    # per-channel mean/std the inputs were normalised with (set by the trainer; undone for Lab)
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)


Config = CMCConfig


def resolve_groups(cfg: CMCConfig, in_chans: int) -> tuple[list[list[int]], bool]:
    """The channel groups of ``cfg`` for ``in_chans`` channels and whether they are Lab groups.

    Raises:
        ConfigError: naming ``method_args.groups`` for fewer than 2 groups, an empty group or a
            channel outside ``[0, in_chans)``.
    """
    if not cfg.groups:
        if in_chans == 1:
            return [[0], [0]], False  # grey fallback: augmentations as views (module docstring)
        if in_chans == 3:
            return [[0], [1, 2]], True
        half = (in_chans + 1) // 2
        return [list(range(half)), list(range(half, in_chans))], False
    groups = [list(g) for g in cfg.groups]
    bad = [c for g in groups for c in g if not 0 <= c < in_chans]
    if len(groups) < 2 or any(not g for g in groups) or bad:
        hint = (" CMC's channel-group views need >= 2 channels (RGB or multispectral); on grey "
                "data leave groups unset (both encoders then see the channel under different "
                "augmentations)") if in_chans == 1 else ""
        raise ConfigError(
            f"method_args.groups must be >= 2 non-empty lists of channel indices in "
            f"[0, {in_chans}) for {in_chans}-channel data, got {cfg.groups}.{hint}"
        )
    return groups, False


class ChannelGroupEncoder(nn.Module):
    """Full images ``[B, C, H, W]`` -> concatenated per-view features ``[B, M * F]``.

    Attributes:
        encoders: one backbone per view (``in_chans`` = the group's size).
        num_features: ``sum`` of the encoders' ``num_features``; ``in_chans``: ``C``.
    """

    mean: Tensor
    std: Tensor
    lab_center: Tensor
    lab_scale: Tensor
    encoders: nn.ModuleList

    def __init__(self, backbone: nn.Module, groups: list[list[int]], lab: bool,
                 mean: list[float], std: list[float]) -> None:
        super().__init__()
        c = int(getattr(backbone, "in_chans", 0))
        self.groups, self.lab, self.in_chans = groups, lab, c
        self.image_size = getattr(backbone, "image_size", None)
        self.encoders = nn.ModuleList(with_in_chans(backbone, len(g)) for g in groups)
        self.num_features = sum(int(getattr(e, "num_features", 0)) for e in self.encoders)
        for i, g in enumerate(groups):
            self.register_buffer(f"index{i}", torch.tensor(g, dtype=torch.long), persistent=False)
        mean_t = torch.tensor(mean or [0.0] * c, dtype=torch.float).view(1, -1, 1, 1)
        std_t = torch.tensor(std or [1.0] * c, dtype=torch.float).view(1, -1, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        center = torch.tensor(_LAB_CENTER).view(1, 3, 1, 1)
        self.register_buffer("lab_center", center, persistent=False)
        self.register_buffer("lab_scale", torch.tensor(_LAB_HALF_RANGE).view(1, 3, 1, 1),
                             persistent=False)

    def split(self, x: Tensor) -> list[Tensor]:
        """The per-view inputs of normalised images ``x`` ``[B, C, H, W]``: Lab's ``L`` and
        ``ab`` (each rescaled to about [-1, 1]) or the channel groups, ``[B, |g|, H, W]`` each."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise DataError(f"cmc encoder expects [B, {self.in_chans}, H, W] images, got "
                            f"{tuple(x.shape)}")
        if self.lab:
            unit = x * self.std.to(x) + self.mean.to(x)
            x = (rgb_to_lab(unit) - self.lab_center.to(x)) / self.lab_scale.to(x)
        return [x.index_select(1, getattr(self, f"index{i}")) for i in range(len(self.groups))]

    def encode(self, x: Tensor) -> list[Tensor]:
        """Per-view features ``[B, F_j]`` of images ``x``."""
        return [enc(v) for enc, v in zip(self.encoders, self.split(x), strict=True)]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.encode(x), dim=1)


def view_pairs(num_views: int, graph: str) -> list[tuple[int, int]]:
    """Unordered view pairs of the ``core`` (view 0 with each other, eq. 6) or ``full`` (all
    pairs, eq. 7) graph."""
    if graph == "core":
        return [(0, j) for j in range(1, num_views)]
    return list(itertools.combinations(range(num_views), 2))


@register(
    "method",
    "cmc",
    description="channel groups (L|ab of Lab, band groups) as views, one encoder each, "
    "memory-bank NCE or in-batch negatives",
    reference="Tian et al. 2020, Contrastive Multiview Coding",
)
class CMC(Method):
    """CMC around any backbone with ``num_features`` and ``in_chans``.

    Attributes:
        backbone: :class:`ChannelGroupEncoder` (evaluated and exported).
        heads: one linear ``[B, F] -> [B, embed_dim]`` per view (then L2-normalised).
        banks: one :class:`~selfsup.nn.memory_bank.MemoryBank` per view (``negatives="bank"``).
        z: ``log Z`` per ordered view pair ``"i_j"`` (anchor view i, bank of view j).

    Raises:
        ConfigError: for a bad backbone, channel groups that do not fit it or a bad Config value.
    """

    Config: ClassVar[type] = CMCConfig
    default_views: ClassVar[str] = "simclr"  # views[0] is split into channels (see docs)
    # official code: SGD lr 0.03 at batch 256 (ImageNet 128 images per batch at 0.03),
    # momentum 0.9, weight decay 1e-4; step decay there, cosine here. HobbitLong/CMC
    # train_CMC.py set_optimizer: SGD over model.parameters(), BN and biases decayed too.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd", "lr": 0.03, "lr_scaling": "linear", "weight_decay": 1e-4,
        "momentum": 0.9, "warmup_epochs": 0, "min_lr_ratio": 0.0, "decay_norm_bias": True,
    }

    def __init__(self, backbone: nn.Module, cfg: CMCConfig) -> None:
        super().__init__(backbone, cfg)
        self.feature_dim()
        self._check(cfg)
        self.backbone = self.build_encoder(backbone, cfg)
        enc = self.backbone
        assert isinstance(enc, ChannelGroupEncoder)
        self.grey = cfg.groups == [] and enc.in_chans == 1
        nviews = len(enc.groups)
        self.heads = nn.ModuleList(
            mlp([int(getattr(e, "num_features", 0)), cfg.embed_dim], batch_norm=False, bias=True)
            for e in enc.encoders
        )
        self.pairs = view_pairs(nviews, cfg.graph)
        self.banks = nn.ModuleList()
        self.z = nn.ModuleDict()
        if cfg.negatives == "bank":
            self.banks.extend(MemoryBank(cfg.num_samples, cfg.embed_dim, cfg.bank_momentum)
                              for _ in range(nviews))
            for i, j in self.pairs:
                self.z[f"{i}_{j}"] = NormalizingConstant(cfg.z_momentum)
                self.z[f"{j}_{i}"] = NormalizingConstant(cfg.z_momentum)
        self.num_negatives = MemoryBank.clamp_negatives(cfg.num_negatives, cfg.num_samples)
        self._pending: list[tuple[int, Tensor, Tensor]] = []

    @staticmethod
    def _check(cfg: CMCConfig) -> None:
        Method.require_positive(cfg, ("num_samples", "embed_dim", "num_negatives"))
        checks = {"num_samples": cfg.num_samples >= 2, "temperature": cfg.temperature > 0,
                  "bank_momentum": 0 <= cfg.bank_momentum < 1,
                  "z_momentum": 0 <= cfg.z_momentum < 1, "loss": cfg.loss in ("nce", "infonce"),
                  "negatives": cfg.negatives in ("bank", "batch"),
                  "bank_init": cfg.bank_init in ("lazy", "random"),
                  "graph": cfg.graph in ("core", "full")}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"method_args.{key}={getattr(cfg, key)!r} is invalid for cmc (num_samples "
                    ">= 2, temperature > 0, momenta in [0, 1), loss nce|infonce, negatives "
                    "bank|batch, bank_init lazy|random, graph core|full)")

    @classmethod
    def build_encoder(cls, backbone: nn.Module, cfg: Any) -> ChannelGroupEncoder:
        """The evaluated encoder for ``backbone``'s channel count (also used to rebuild it from
        a checkpoint or an export).

        Raises:
            ConfigError: as :func:`resolve_groups` and
                :func:`~selfsup.nn.channels.with_in_chans`.
        """
        in_chans = int(getattr(backbone, "in_chans", 0))
        groups, lab = resolve_groups(cfg, in_chans)
        for key in ("input_mean", "input_std"):
            if getattr(cfg, key) and len(getattr(cfg, key)) != in_chans:
                raise ConfigError(f"method_args.{key} needs {in_chans} values, got "
                                  f"{getattr(cfg, key)}")
        return ChannelGroupEncoder(backbone, groups, lab, cfg.input_mean, cfg.input_std)

    def embed_views(self, batch: Batch) -> list[Tensor]:
        """Normalised per-view embeddings ``[B, embed_dim]`` of a batch."""
        enc = self.backbone
        assert isinstance(enc, ChannelGroupEncoder)
        if self.grey:  # fallback: each encoder sees the channel under its own augmentation
            if len(batch.views) < 2:
                raise DataError("cmc on 1-channel data needs 2 augmented views per image "
                                f"(views preset with 2 views), got {len(batch.views)}")
            feats = [e(v) for e, v in zip(enc.encoders, batch.views[:2], strict=True)]
        else:
            feats = enc.encode(batch.views[0])
        return [F.normalize(h(f), dim=1) for h, f in zip(self.heads, feats, strict=True)]

    def _bank_loss(self, z: Tensor, i: int, j: int, index: Tensor) -> Tensor:
        """Anchor ``z`` of view ``i`` against view ``j``'s bank (its entry = positive)."""
        bank = self.banks[j]
        assert isinstance(bank, MemoryBank)
        noise = bank.get(bank.sample((self.num_negatives,), z.device))
        pos_l, noise_l = bank_logits(z, bank.get(index), noise, self.cfg.temperature)
        if self.cfg.loss == "infonce":
            return bank_info_nce(pos_l, noise_l)
        const = self.z[f"{i}_{j}"]
        assert isinstance(const, NormalizingConstant)
        est = estimate_log_z(noise_l, self.cfg.num_samples)
        log_z = const.update(est) if self.training or const.is_set else est
        return nce_loss(pos_l, noise_l, self.cfg.num_samples, log_z)

    def pair_loss(self, zs: list[Tensor], i: int, j: int, index: Tensor) -> Tensor:
        """Symmetric contrastive loss of views ``i`` and ``j`` (``L(V_i, V_j)``, eq. 3)."""
        if self.cfg.negatives == "batch":
            eye = torch.eye(zs[i].shape[0], dtype=torch.bool, device=zs[i].device)
            t = self.cfg.temperature
            return (info_nce(zs[i], zs[j], eye, t, normalize=False, gather=True)
                    + info_nce(zs[j], zs[i], eye, t, normalize=False, gather=True))
        return self._bank_loss(zs[i], i, j, index) + self._bank_loss(zs[j], j, i, index)

    def training_step(self, batch: Batch) -> StepOutput:
        """Sum of the pair losses over the view graph.

        Raises:
            DataError: if there is no view, the view has the wrong channels, a dataset index lies
                outside the banks, or grey data comes with fewer than 2 views.
        """
        if not batch.views:
            raise DataError("cmc needs at least one view per image, got none")
        index = batch.index.to(batch.views[0].device)
        if self.cfg.negatives == "bank":
            bank0 = self.banks[0]
            assert isinstance(bank0, MemoryBank)
            bank0.check_index(index)
        zs = self.embed_views(batch)
        if self.training and self.cfg.negatives == "bank" and self.cfg.bank_init == "lazy":
            for bank, z in zip(self.banks, zs, strict=True):
                assert isinstance(bank, MemoryBank)
                bank.fill_unwritten(index, z.detach())
        loss = torch.stack([self.pair_loss(zs, i, j, index) for i, j in self.pairs]).sum()
        if self.training and self.cfg.negatives == "bank":
            self._pending = [(v, index, z.detach()) for v, z in enumerate(zs)]
        logs: dict[str, Tensor | float] = {
            f"pos_sim_{i}{j}": (zs[i].detach() * zs[j].detach()).sum(1).mean()
            for i, j in self.pairs
        }
        return StepOutput(loss=loss, logs=logs, embeddings=torch.cat(zs, dim=1).detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """Write the last step's per-view embeddings into their banks (all ranks)."""
        for v, index, z in self._pending:
            bank = self.banks[v]
            assert isinstance(bank, MemoryBank)
            bank.update(index, z)
        self._pending = []
