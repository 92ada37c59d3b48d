"""DeepCluster-v2: DeepCluster with SwAV's training recipe; the classifier is the k-means
centroids themselves.

Caron et al. 2020 (SwAV paper), sec. 4 / appendix D, and ``main_deepclusterv2.py`` of the SwAV
repository. A memory bank keeps the latest projection ``z`` (L2-normalised) of the global crops of
every training image. At each epoch start spherical k-means (cosine, 10 iterations, random rows
as initial centroids) runs on the bank several times (three clusterings of 3000 on ImageNet, each
on one crop's bank in turn); its centroids become fixed prototypes and its assignments the
pseudo-labels. Every crop (multi-crop included) is then trained with cross-entropy on
``z^T c / tau`` against its image's pseudo-label, averaged over the clusterings. Unlike
DeepCluster there is no classifier to re-initialise (the prototypes are the centroids and are not
trained: the reference freezes them for 300,000 iterations, longer than its runs) and no PCA.
The bank is first filled from the training set without augmentation (the reference uses one
augmented pass); after that from the training steps. Before the first clustering (outside the
trainer) the pseudo-labels are the nearest of the initial random centroids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.clustering import pseudo_label_cross_entropy
from selfsup.methods.base import Method
from selfsup.nn.heads import mlp
from selfsup.nn.kmeans import gather_labels, kmeans
from selfsup.nn.multicrop import encode_by_resolution
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist


@dataclass
class DeepClusterV2Config:
    """DeepCluster-v2 hyper-parameters; defaults are the SwAV repository's."""

    proj_hidden_dim: int = 2048  # projection head hidden width (as SwAV, appendix A)
    proj_out_dim: int = 128  # embedding / centroid size (feat_dim)
    # one k-means per entry, each giving a set of prototypes (main_deepclusterv2: 3 x 3000)
    num_prototypes: list[int] = field(default_factory=lambda: [3000, 3000, 3000])
    temperature: float = 0.1  # tau of the softmax over centroid similarities
    kmeans_iters: int = 10  # spherical k-means iterations (nmb_kmeans_iters)
    assign_crops: list[int] = field(default_factory=lambda: [0, 1])  # crops kept in the bank
    num_samples: int = 0  # training-set size N (set by the trainer from the dataset)


Config = DeepClusterV2Config


class _Normalize(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1)


@register(
    "method",
    "deepcluster_v2",
    description="spherical k-means of a memory bank each epoch; centroids as fixed prototypes",
    reference="Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting "
    "Cluster Assignments (DeepCluster-v2, sec. 4 and the SwAV repository)",
)
class DeepClusterV2(Method):
    """DeepCluster-v2 around any backbone with a ``num_features`` attribute.

    Attributes:
        projector: ``[B, num_features] -> [B, proj_out_dim]``, Linear-BN-ReLU-Linear.
        bank: buffer ``[len(assign_crops), num_samples, proj_out_dim]`` latest embeddings.
        bank_ready: buffer ``[]``, 1 once the bank holds an embedding of every image.
        assignments: buffer ``[H, num_samples]`` int64 pseudo-labels of each clustering.
        centroids0 ... centroids{H-1}: buffers ``[K_h, proj_out_dim]``, unit rows.
        clustered_epochs: buffer ``[]``, number of clusterings done.

    Raises:
        ConfigError: for a backbone without ``num_features`` or an invalid Config value (also
            a ``num_prototypes`` entry above the images k-means gets, when ``num_samples`` is
            known).
    """

    Config: ClassVar[type] = DeepClusterV2Config
    default_views: ClassVar[str] = "swav"
    # deepclusterv2_800ep_pretrain.sh: as SwAV, LARS lr 4.8 at batch 4096 (= 0.3 x B / 256),
    # final lr 0.0048 (ratio 0.001), weight decay 1e-6, momentum 0.9, 10 warm-up epochs. Every
    # parameter is decayed, biases and BN included: facebookresearch/swav main_deepclusterv2.py
    # wraps `SGD(model.parameters(), weight_decay=args.wd)` in LARC.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.3,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "warmup_epochs": 10,
        "min_lr_ratio": 0.001,
        "decay_norm_bias": True,
    }

    bank: Tensor
    bank_ready: Tensor
    assignments: Tensor
    clustered_epochs: Tensor

    def __init__(self, backbone: nn.Module, cfg: DeepClusterV2Config) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("proj_hidden_dim", "proj_out_dim", "kmeans_iters"))
        if not cfg.num_prototypes or min(cfg.num_prototypes) < 1:
            raise ConfigError(f"method_args.num_prototypes must be a non-empty list of positive "
                              f"cluster counts, got {cfg.num_prototypes}")
        if not cfg.assign_crops or min(cfg.assign_crops) < 0:
            raise ConfigError(f"method_args.assign_crops must be crop indices >= 0, got "
                              f"{cfg.assign_crops}")
        if cfg.temperature <= 0 or cfg.num_samples < 0:
            raise ConfigError("method_args.temperature must be > 0 and num_samples >= 0, got "
                              f"{cfg.temperature} and {cfg.num_samples}")
        self._check_num_prototypes()
        d = cfg.proj_out_dim
        self.projector = mlp([num_features, cfg.proj_hidden_dim, d])
        self.register_buffer("bank", torch.zeros(len(cfg.assign_crops), cfg.num_samples, d))
        self.register_buffer("bank_ready", torch.zeros((), dtype=torch.long))
        self.register_buffer("assignments", torch.full((len(cfg.num_prototypes), cfg.num_samples),
                                                       -1, dtype=torch.long))
        for h, k in enumerate(cfg.num_prototypes):
            self.register_buffer(f"centroids{h}", F.normalize(torch.randn(k, d), dim=1))
        self.register_buffer("clustered_epochs", torch.zeros((), dtype=torch.long))
        self._pending: tuple[Tensor, Tensor] | None = None  # (index [B], z [A, B, D])

    def _check_num_prototypes(self) -> None:
        """Raise unless every k-means gets at least ``max(num_prototypes)`` rows: its initial
        centroids are distinct rows of rank 0's shard of the bank (every ``world``-th image).
        Nothing to check while ``num_samples`` is unknown (0).

        Raises:
            ConfigError: naming ``method_args.num_prototypes`` and the largest value that works.
        """
        ks, n, world = self.cfg.num_prototypes, self.cfg.num_samples, dist.world_size()
        rows = len(range(0, n, world))  # rank 0's shard, the largest
        if n < 1 or max(ks) <= rows:
            return
        where = "to cluster" if world == 1 else (
            f"on rank 0, which draws the initial centroids ({world} ranks share the {n})")
        fixed = ",".join(str(min(k, rows)) for k in ks)
        raise ConfigError(f"deepcluster_v2: method_args.num_prototypes={list(ks)} asks for "
                          f"{max(ks)} clusters, more than the {rows} training images {where}; "
                          f"use at most {rows} per entry "
                          f"(--set method_args.num_prototypes=[{fixed}])")

    def centroids(self, h: int) -> Tensor:
        """``[K_h, D]`` prototypes of clustering ``h``."""
        out = getattr(self, f"centroids{h}")
        assert isinstance(out, Tensor)
        return out

    def wants_epoch_features(self, epoch: int) -> bool:
        return int(self.bank_ready) == 0

    def epoch_feature_encoder(self) -> nn.Module:
        """``normalize(projector(backbone(x)))``: what the bank stores."""
        return nn.Sequential(self.backbone, self.projector, _Normalize())

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, features: Tensor | None, index: Tensor | None,
                       seed: int) -> list[nn.Parameter]:
        """Fill the bank if ``features`` are given, then run the spherical k-means of every set
        of prototypes on this rank's shard of the bank (draws depend on ``(seed, epoch)``).

        Raises:
            ConfigError: if ``num_samples`` was not set (0), or a ``num_prototypes`` entry is
                more than the images rank 0 clusters (checked before anything, on every rank).
            DataError: with an empty bank and no features.
        """
        cfg, n = self.cfg, self.cfg.num_samples
        if n < 1:
            raise ConfigError("deepcluster_v2: method_args.num_samples (the training-set size) "
                              "must be set before clustering")
        self._check_num_prototypes()
        if features is not None and index is not None:
            full = torch.zeros(n, cfg.proj_out_dim, device=self.bank.device)
            full[index] = features.to(full)
            dist.all_reduce_sum(full)  # rank shards are disjoint: the sum is the whole set
            self.bank.copy_(full.expand_as(self.bank))
            self.bank_ready.fill_(1)
        if int(self.bank_ready) == 0:
            raise DataError("deepcluster_v2: the memory bank is empty and no features were given")
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        shard = torch.arange(dist.rank(), n, dist.world_size(), device=self.bank.device)
        for h, k in enumerate(cfg.num_prototypes):
            rows = self.bank[h % len(cfg.assign_crops)][shard]
            res = kmeans(rows, k, iters=cfg.kmeans_iters, init="random", spherical=True,
                         empty="keep", generator=g)
            self.centroids(h).copy_(res.centroids)
            self.assignments[h] = gather_labels(res.labels, shard, n)
        self.clustered_epochs += 1
        return []

    def training_step(self, batch: Batch) -> StepOutput:
        """Cross-entropy of every crop against its image's pseudo-labels, averaged over the
        clusterings.

        Raises:
            DataError: for fewer views than ``assign_crops`` needs or an index without label.
        """
        views, cfg = batch.views, self.cfg
        if not views or max(cfg.assign_crops) >= len(views):
            raise DataError(f"deepcluster_v2 keeps crops {cfg.assign_crops} in its bank but the "
                            f"batch has {len(views)} views")
        z = F.normalize(self.projector(encode_by_resolution(self.backbone, views)), dim=1)
        scores = [z @ self.centroids(h).t() for h in range(len(cfg.num_prototypes))]
        if int(self.clustered_epochs) > 0:
            if int(batch.index.max()) >= self.assignments.shape[1]:
                raise DataError(f"sample index {int(batch.index.max())} has no pseudo-label")
            targets = [self.assignments[h][batch.index].repeat(len(views))
                       for h in range(len(scores))]
        else:
            targets = [s.detach().argmax(dim=1) for s in scores]
        loss = pseudo_label_cross_entropy(scores, targets, cfg.temperature)
        zs = z.detach().chunk(len(views))
        self._pending = (batch.index, torch.stack([zs[c] for c in cfg.assign_crops]))
        return StepOutput(loss=loss, embeddings=zs[0])

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """Write this step's embeddings of the assigned crops (all ranks') into the bank."""
        pending, self._pending = self._pending, None
        if pending is None or self.bank.shape[1] == 0:
            return
        index, z = dist.all_gather(pending[0]), pending[1]
        z = torch.cat([dist.all_gather(z[a]).unsqueeze(0) for a in range(z.shape[0])])
        keep = index < self.bank.shape[1]
        self.bank[:, index[keep]] = z[:, keep].to(self.bank.dtype)
