"""Contrastive losses: NT-Xent, the normalised temperature-scaled cross entropy of SimCLR.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
eq. 1 and Algorithm 1. For ``N`` samples with two views each (``2N`` embeddings ``z``) and
``sim(u, v) = u.v / (|u| |v|)``, the loss of the positive pair ``(i, j)`` is

    l(i, j) = -log( exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) )

and the loss is its mean over all ``2N`` anchors (both orders of every pair). Each anchor has one
positive (the other view of its sample) and ``2N - 2`` negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError
from selfsup.utils import dist

__all__ = ["NTXentLoss", "nt_xent"]


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        temperature > 0
    ):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    normalize: bool = True,
    gather: bool = True,
) -> Tensor:
    """NT-Xent loss of SimCLR (Chen et al. 2020, eq. 1), averaged over all anchors.

    Row ``k`` of ``z1`` and row ``k`` of ``z2`` are the two views of sample ``k``; all other rows
    of both tensors are its negatives. The self-similarity of each anchor is masked out with
    ``-inf`` before a log-softmax (no ``exp`` of unbounded logits, no subtraction tricks), so the
    loss is stable for any temperature.

    Distributed (``gather=True`` inside an initialised process group of ``W`` ranks): the
    embeddings of all ranks are gathered with :func:`selfsup.utils.dist.all_gather_grad`, so each
    local anchor is contrasted with all ``2NW - 1`` global candidates (``2NW - 2`` negatives), and
    the returned loss is the mean over this rank's ``2N`` anchors. The mean of the returned losses
    over ranks is exactly the single-process loss of the global batch. Gradient convention: the
    gather's backward sums the gradients of all ranks, so the gradient w.r.t. this rank's ``z1``,
    ``z2`` is ``W`` times the single-process gradient of the global-batch loss; DDP averages
    parameter gradients over ranks (divides by ``W``), so every parameter receives exactly the
    gradient of one process holding the whole batch. Without a process group (or with
    ``gather=False``) only the local batch is used.

    Args:
        z1: embeddings of the first views ``[N, D]``.
        z2: embeddings of the second views ``[N, D]``.
        temperature: softmax temperature ``t > 0`` (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet).
        normalize: L2-normalise the embeddings so that the similarity is the cosine (eq. 1);
            False uses raw dot products.
        gather: use the negatives of all ranks when running distributed.

    Returns:
        The scalar loss (float32 or the input's dtype, whichever is wider).

    Raises:
        DataError: if ``z1`` and ``z2`` are not 2-D with equal shapes, or are empty.
        ConfigError: if ``temperature`` is not positive.
    """
    _check_temperature(temperature)
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] == 0:
        raise DataError(
            f"nt_xent expects two non-empty [N, D] embeddings of equal shape, got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if normalize:
        z1 = F.normalize(z1, dim=1)
        z2 = F.normalize(z2, dim=1)
    n = z1.shape[0]
    anchors = torch.cat([z1, z2], dim=0)  # [2N, D]: anchor a and a + N are a positive pair
    if gather and dist.world_size() > 1:
        world, rank = dist.world_size(), dist.rank()
        # candidates [2NW, D]: all ranks' first views, then all ranks' second views
        candidates = torch.cat([dist.all_gather_grad(z1), dist.all_gather_grad(z2)], dim=0)
    else:
        world, rank = 1, 0
        candidates = anchors
    # global row of each local sample in the first-view block; + N*W in the second-view block
    rows = torch.arange(n, device=z1.device) + rank * n
    self_col = torch.cat([rows, rows + n * world])  # [2N] where each anchor meets itself
    pos_col = torch.cat([rows + n * world, rows])  # [2N] the other view of the same sample
    logits = anchors @ candidates.T  # [2N, 2NW]
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half-precision autocast: soft-max in float32
    logits = logits / temperature
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * n, device=z1.device), self_col] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, pos_col)


class NTXentLoss(nn.Module):
    """Module wrapper of :func:`nt_xent` (SimCLR, Chen et al. 2020, eq. 1).

    ``forward(z1 [N, D], z2 [N, D]) -> scalar``.

    Args:
        temperature: softmax temperature, > 0 (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet).
        gather: contrast against the embeddings of all ranks when running distributed.
        normalize: cosine similarity (True, as in the paper) or raw dot products.

    Raises:
        ConfigError: at construction, if ``temperature`` is not positive.
    """

    def __init__(self, temperature: float = 0.5, gather: bool = True, normalize: bool = True):
        super().__init__()
        _check_temperature(temperature)
        self.temperature = float(temperature)
        self.gather = gather
        self.normalize = normalize

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent(z1, z2, self.temperature, normalize=self.normalize, gather=self.gather)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}, normalize={self.normalize}"
