"""DeepCluster: alternate k-means on the whole dataset's features and learning to predict the
cluster assignments as pseudo-labels.

Caron et al. 2018, "Deep Clustering for Unsupervised Learning of Visual Features". At the start
of every epoch the features of every training image (no augmentation) go through PCA to 256
dimensions, whitening and L2 normalisation, and k-means (k = 10,000 on ImageNet) gives each image
a pseudo-label (sec. 3.2, 4.1). The classifier on top is re-initialised, because the new clusters
have nothing to do with the old ones (sec. 3.2), and the network is trained with cross-entropy
on augmented views (eq. 2). Trivial solutions are avoided (sec. 3.4) by re-seeding empty clusters
from a split of a non-empty one and by sampling images uniformly over the pseudo-labels, so one
huge cluster cannot dominate the loss.

Here the "convnet + fully connected layers" of the paper are ``backbone`` + ``head``; the head's
output (before its last ReLU, as the reference code) is what is clustered, the classifier is
``Linear(hidden, k)``. As in the paper's AlexNet the two head layers have dropout 0.5 in front
(``head_dropout``), and the images go through a fixed Sobel filter first (sec. 4.1: grey level
then horizontal and vertical gradients, which removes colour as a shortcut for the clusters;
``sobel``): the backbone takes 2 channels and the evaluated/exported encoder is
:class:`~selfsup.nn.channels.SobelEncoder`, which takes the original images. On data whose
colour or intensity carries the class (grey digits) ``sobel=False`` can be the better choice. Before the first clustering (outside the trainer) each batch is clustered
on its own so a step still has a well-defined loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.methods.base import Method
from selfsup.nn.channels import SobelEncoder, with_in_chans
from selfsup.nn.kmeans import INITS, gather_labels, kmeans, pca_whiten
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist


@dataclass
class DeepClusterConfig:
    """DeepCluster hyper-parameters; defaults are the paper's (``...deepcluster.Config``)."""

    head_hidden_dim: int = 4096  # width of the two fully connected layers (AlexNet fc6/fc7, sec. 4.1)
    num_clusters: int = 10000  # k on ImageNet (sec. 4.1, 5.1: over-segmentation helps)
    pca_dim: int = 256  # PCA dimensions before whitening and L2 (sec. 4.1)
    kmeans_iters: int = 20  # Lloyd iterations (reference code: faiss niter=20)
    kmeans_init: str = "random"  # faiss' random-row initialisation; or kmeans++
    classifier_std: float = 0.01  # classifier re-init N(0, std), zero bias (reference code)
    num_samples: int = 0  # training-set size N (set by the trainer from the dataset)
    sobel: bool = True  # fixed Sobel filter in front of the backbone (sec. 4.1, reference code)
    head_dropout: float = 0.5  # dropout before each head layer (AlexNet classifier, ref. code)


Config = DeepClusterConfig


@register(
    "method",
    "deepcluster",
    description="k-means pseudo-labels of the whole dataset each epoch, re-initialised classifier",
    reference="Caron et al. 2018, Deep Clustering for Unsupervised Learning of Visual Features",
)
class DeepCluster(Method):
    """DeepCluster around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the evaluated encoder: :class:`~selfsup.nn.channels.SobelEncoder` around a
            2-channel copy of the given backbone when ``sobel``, else the backbone itself.
        head: ``[B, num_features] -> [B, head_hidden_dim]``, ``Dropout - Linear - ReLU -
            Dropout - Linear`` (fc6, fc7); its output is clustered.
        classifier: ``Linear(head_hidden_dim, num_clusters)`` after a ReLU, re-initialised at
            every clustering.
        pseudo_labels: buffer ``[num_samples]`` int64 cluster of every training image (-1: none).
        centroids: buffer ``[num_clusters, pca dim]`` of the last k-means.
        clustered_epochs: buffer ``[]``, number of clusterings done.

    Raises:
        ConfigError: for a backbone without ``num_features`` or an invalid Config value (also
            ``num_clusters`` above the images k-means gets, when ``num_samples`` is known).
    """

    Config: ClassVar[type] = DeepClusterConfig
    default_views: ClassVar[str] = "deepcluster"
    # Sec. 4.1: SGD, lr 0.05 at batch 256, momentum 0.9, weight decay 1e-5, constant rate. Every
    # parameter is decayed, biases and BN included: facebookresearch/deepcluster main.py passes
    # `filter(requires_grad, model.parameters())` (and the top layer's) to SGD with one
    # `weight_decay=10**args.wd`.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.05,
        "lr_scaling": "linear",
        "weight_decay": 1e-5,
        "momentum": 0.9,
        "warmup_epochs": 0,
        "min_lr_ratio": 1.0,
        "decay_norm_bias": True,
    }

    pseudo_labels: Tensor
    centroids: Tensor
    clustered_epochs: Tensor

    def __init__(self, backbone: nn.Module, cfg: DeepClusterConfig) -> None:
        super().__init__(backbone, cfg)
        if not 0.0 <= cfg.head_dropout < 1.0:
            raise ConfigError(f"method_args.head_dropout must be in [0, 1), got "
                              f"{cfg.head_dropout}")
        self.backbone = self.build_encoder(backbone, cfg)
        num_features = self.feature_dim()
        self.require_positive(cfg, ("head_hidden_dim", "num_clusters", "pca_dim",
                                    "kmeans_iters"))
        if cfg.kmeans_init not in INITS:
            raise ConfigError(f"method_args.kmeans_init must be one of {INITS}, got "
                              f"{cfg.kmeans_init!r}")
        if cfg.classifier_std <= 0 or cfg.num_samples < 0:
            raise ConfigError("method_args.classifier_std must be > 0 and num_samples >= 0, got "
                              f"{cfg.classifier_std} and {cfg.num_samples}")
        if cfg.num_samples > 0:  # known before training: fail before any feature extraction
            self._check_num_clusters(-(-cfg.num_samples // dist.world_size()))
        h = cfg.head_hidden_dim
        drop = cfg.head_dropout
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(num_features, h), nn.ReLU(),
                                  nn.Dropout(drop), nn.Linear(h, h))
        self.classifier = nn.Linear(h, cfg.num_clusters)
        self._reset_classifier(torch.Generator().manual_seed(0))
        self.register_buffer("pseudo_labels", torch.full((cfg.num_samples,), -1, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(cfg.num_clusters, min(cfg.pca_dim, h)))
        self.register_buffer("clustered_epochs", torch.zeros((), dtype=torch.long))

    @classmethod
    def build_encoder(cls, backbone: nn.Module, cfg: Any) -> nn.Module:
        """The evaluated encoder: ``SobelEncoder(2-channel copy of backbone)`` when ``cfg.sobel``
        (also used to rebuild it from a checkpoint or an export), else ``backbone``.

        Raises:
            ConfigError: as :func:`~selfsup.nn.channels.with_in_chans`.
        """
        if not getattr(cfg, "sobel", False):
            return backbone
        return SobelEncoder(with_in_chans(backbone, 2), int(getattr(backbone, "in_chans", 0)))

    def _check_num_clusters(self, rows: int) -> None:
        """Raise unless k-means gets at least ``num_clusters`` rows: its initial centroids are
        distinct rows of rank 0's shard (``rows``; every ``world``-th image, rank 0 the most).

        Raises:
            ConfigError: naming ``method_args.num_clusters`` and the largest value that works.
        """
        k = self.cfg.num_clusters
        if k <= rows:
            return
        where = "to cluster" if dist.world_size() == 1 else (
            f"on rank 0, which draws the initial centroids ({dist.world_size()} ranks share the "
            "set)")
        raise ConfigError(f"deepcluster: method_args.num_clusters={k} is more than the {rows} "
                          f"training images {where}; use at most {rows} "
                          f"(--set method_args.num_clusters={rows})")

    @torch.no_grad()
    def _reset_classifier(self, g: torch.Generator) -> None:
        w = torch.randn(self.classifier.weight.shape, generator=g) * self.cfg.classifier_std
        self.classifier.weight.copy_(w)
        self.classifier.bias.zero_()

    def wants_epoch_features(self, epoch: int) -> bool:
        return True

    def epoch_feature_encoder(self) -> nn.Module:
        """``head(backbone(x))``: the clustered features (fc7 before its ReLU)."""
        return nn.Sequential(self.backbone, self.head)

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, features: Tensor | None, index: Tensor | None,
                       seed: int) -> list[nn.Parameter]:
        """PCA-whiten-L2 the features, k-means them into pseudo-labels and re-initialise the
        classifier (sec. 3.2); the k-means and classifier draws depend on ``(seed, epoch)``.

        Raises:
            ConfigError: if ``num_samples`` was not set (0), or ``num_clusters`` is more than the
                images rank 0 clusters (checked before the PCA, on every rank alike).
            DataError: without features.
        """
        cfg = self.cfg
        if features is None or index is None:
            raise DataError("deepcluster needs the training-set features at every epoch start")
        if cfg.num_samples < 1:
            raise ConfigError("deepcluster: method_args.num_samples (the training-set size) "
                              "must be set before clustering")
        rows = torch.tensor([features.shape[0]], device=features.device)
        self._check_num_clusters(int(dist.broadcast(rows, 0)))  # rank 0's count on every rank
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        x, _, _ = pca_whiten(features, cfg.pca_dim)
        res = kmeans(x, cfg.num_clusters, iters=cfg.kmeans_iters, init=cfg.kmeans_init,
                     generator=g)
        self.pseudo_labels.copy_(gather_labels(res.labels, index, cfg.num_samples))
        self.centroids.zero_()[:, : res.centroids.shape[1]] = res.centroids
        self.clustered_epochs += 1
        # a stream of its own: k-means draws from ``g`` a rank-dependent number of times (its
        # restarts of empty clusters see each rank's shard), so the classifier drawn after it
        # would differ per rank; this one depends only on (seed, epoch)
        self._reset_classifier(torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919))
        return list(self.classifier.parameters())

    def epoch_sample_labels(self) -> Tensor | None:
        """The pseudo-labels, so an epoch samples the clusters uniformly (sec. 3.4)."""
        return self.pseudo_labels if int(self.clustered_epochs) > 0 else None

    def _batch_labels(self, h: Tensor) -> Tensor:
        """Pseudo-labels of a batch clustered on its own (only before the first clustering)."""
        k = min(self.cfg.num_clusters, h.shape[0])
        res = kmeans(F.normalize(h.detach().float(), dim=1), k, iters=5, init="random",
                     generator=torch.Generator().manual_seed(0))
        return res.labels

    def training_step(self, batch: Batch) -> StepOutput:
        """Cross-entropy of the classifier on ``batch.views[0]`` against the pseudo-labels of
        ``batch.index`` (eq. 2).

        Raises:
            DataError: for no views or an index outside the pseudo-labels.
        """
        if not batch.views:
            raise DataError("deepcluster needs 1 view per image, got 0")
        h = self.head(self.backbone(batch.views[0]))  # [B, hidden]
        logits = self.classifier(F.relu(h))  # [B, k]
        if int(self.clustered_epochs) > 0:
            if int(batch.index.max()) >= self.pseudo_labels.numel():
                raise DataError(f"sample index {int(batch.index.max())} has no pseudo-label "
                                f"({self.pseudo_labels.numel()} samples were clustered)")
            labels = self.pseudo_labels[batch.index]
        else:
            labels = self._batch_labels(h)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=-1)
        return StepOutput(loss=loss, embeddings=h.detach())
