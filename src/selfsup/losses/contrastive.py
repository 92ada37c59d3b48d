"""Contrastive losses: InfoNCE with any positive mask and extra negatives (:func:`info_nce`,
shared by MoCo, InstDisc, CMC, CPC, ...) and NT-Xent, the normalised temperature-scaled cross
entropy of SimCLR (:func:`nt_xent`). Debiased, hard-negative, FlatNCE and alignment/uniformity
losses live in :mod:`selfsup.losses.contrastive_variants`.

NT-Xent:

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

__all__ = ["InfoNCELoss", "NTXentLoss", "info_nce", "nt_xent", "two_view_masks"]


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        temperature > 0
    ):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")


def _gather_candidates(
    candidates: Tensor, masks: list[Tensor], gather: bool
) -> tuple[Tensor, list[Tensor]]:
    """Concatenate ``candidates`` ``[M, D]`` over ranks (with gradients) and widen each local
    ``[N, M]`` mask to ``[N, M * W]``: this rank's block keeps the mask, other ranks' columns are
    False (another rank's candidate is never a positive nor the anchor itself)."""
    if not gather or dist.world_size() == 1:
        return candidates, masks
    world, rank, m = dist.world_size(), dist.rank(), candidates.shape[0]
    wide = []
    for mask in masks:
        full = mask.new_zeros(mask.shape[0], m * world)
        full[:, rank * m : (rank + 1) * m] = mask
        wide.append(full)
    return dist.all_gather_grad(candidates), wide


def _check_info_nce_inputs(
    anchors: Tensor,
    candidates: Tensor,
    positive_mask: Tensor,
    negatives: Tensor | None,
    self_mask: Tensor | None,
    name: str,
) -> None:
    n, m = anchors.shape[0], candidates.shape[0]
    if anchors.dim() != 2 or candidates.dim() != 2 or anchors.shape[1] != candidates.shape[1]:
        raise DataError(
            f"{name} expects anchors [N, D] and candidates [M, D] of equal D, got "
            f"{tuple(anchors.shape)} and {tuple(candidates.shape)}"
        )
    if n == 0 or m == 0:
        raise DataError(f"{name}: anchors and candidates must be non-empty")
    for label, mask in (("positive_mask", positive_mask), ("self_mask", self_mask)):
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (n, m)):
            raise DataError(
                f"{name}: {label} must be a bool tensor of shape [N, M] = [{n}, {m}], got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
    if negatives is not None and (negatives.dim() != 2 or negatives.shape[1] != anchors.shape[1]):
        raise DataError(
            f"{name}: negatives must be [K, D] with D = {anchors.shape[1]}, got "
            f"{tuple(negatives.shape)}"
        )
    bad = ~positive_mask.any(dim=1)
    if self_mask is not None:
        bad = bad | (positive_mask & self_mask).any(dim=1)
    if bool(bad.any()):
        raise DataError(
            f"{name}: every anchor needs at least one positive candidate that is not masked as "
            f"itself (row {int(bad.nonzero()[0, 0])} has none)"
        )


def _similarity_logits(
    anchors: Tensor, others: Tensor, temperature: float, normalize: bool
) -> Tensor:
    """``sim(a, c) / t`` ``[N, M]`` in float32 (or float64), cosine if ``normalize``."""
    if normalize:
        anchors, others = F.normalize(anchors, dim=1), F.normalize(others, dim=1)
    logits = anchors @ others.T
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half-precision autocast: soft-max in float32
    return logits / temperature


def info_nce(
    anchors: Tensor,
    candidates: Tensor,
    positive_mask: Tensor,
    temperature: float = 0.1,
    *,
    negatives: Tensor | None = None,
    self_mask: Tensor | None = None,
    normalize: bool = True,
    gather: bool = False,
) -> Tensor:
    """InfoNCE with any number of positives per anchor and optional extra negatives.

    Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding", eq. 4 (one
    positive); with several positives the SupCon "L_out" form (Khosla et al. 2020, eq. 2):

        loss_i = -(1 / |P_i|) sum_{p in P_i} log( exp(s_ip / t) /
                 ( sum_{m not self} exp(s_im / t) + sum_k exp(s_ik / t) ) )

    where ``s`` is the cosine similarity (dot product if ``normalize=False``), ``P_i`` the
    positives of anchor ``i`` among the candidates, ``m`` runs over all candidates not in
    ``self_mask`` (positives included) and ``k`` over the extra ``negatives`` (a MoCo queue or a
    memory bank; never positives). The loss is the mean of ``loss_i`` over anchors. NT-Xent
    (SimCLR eq. 1) is the case ``anchors = candidates = [z1; z2]`` with the other view as the
    positive and the anchor itself in ``self_mask``; MoCo (He et al. 2020, eq. 1) is one
    positive key per query plus the queue as ``negatives``.

    Args:
        anchors: queries ``[N, D]``.
        candidates: keys ``[M, D]`` holding the positives and in-batch negatives.
        positive_mask: bool ``[N, M]``, True where candidate ``m`` is a positive of anchor ``n``;
            every row needs at least one positive outside ``self_mask``.
        temperature: softmax temperature ``t > 0``.
        negatives: extra negatives ``[K, D]`` shared by all anchors (not gathered across ranks:
            a queue is already global).
        self_mask: bool ``[N, M]``, True where the pair is excluded from the denominator (e.g.
            the anchor meeting itself); None excludes nothing.
        normalize: L2-normalise anchors, candidates and negatives (cosine similarity).
        gather: concatenate the candidates of all ranks with
            :func:`selfsup.utils.dist.all_gather_grad` (the masks keep this rank's block, other
            ranks' candidates are negatives); no-op without a process group.

    Returns:
        Scalar loss, float32 or the inputs' dtype if wider.

    Raises:
        ConfigError: if ``temperature`` is not positive.
        DataError: on shape/dtype mismatches or an anchor without a positive.
    """
    _check_temperature(temperature)
    _check_info_nce_inputs(anchors, candidates, positive_mask, negatives, self_mask, "info_nce")
    masks = [positive_mask] if self_mask is None else [positive_mask, self_mask]
    candidates, masks = _gather_candidates(candidates, masks, gather)
    pos = masks[0]
    logits = _similarity_logits(anchors, candidates, temperature, normalize)  # [N, M]
    if self_mask is not None:
        logits = logits.masked_fill(masks[1], float("-inf"))
    full = logits
    if negatives is not None and negatives.shape[0] > 0:
        neg = _similarity_logits(anchors, negatives.to(anchors.dtype), temperature, normalize)
        full = torch.cat([logits, neg], dim=1)  # [N, M + K]
    log_prob = logits - torch.logsumexp(full, dim=1, keepdim=True)  # [N, M]
    pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(pos_log_prob / pos.sum(dim=1)).mean()


def two_view_masks(n: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Masks for ``anchors = candidates = [z1; z2]`` (``[2n, D]``): the positive of row ``a`` is
    the other view of its sample (row ``(a + n) mod 2n``), the self mask is the identity.

    Returns:
        ``(positive_mask, self_mask)``, both bool ``[2n, 2n]``.
    """
    eye = torch.eye(2 * n, dtype=torch.bool, device=device)
    return eye.roll(n, dims=1), eye


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


class InfoNCELoss(nn.Module):
    """Module wrapper of :func:`info_nce` (Oord et al. 2018, eq. 4; SupCon L_out for several
    positives).

    ``forward(anchors [N, D], candidates [M, D], positive_mask [N, M], negatives=None,
    self_mask=None) -> scalar``.

    Args:
        temperature: softmax temperature, > 0.
        normalize: cosine similarity (True) or raw dot products.
        gather: gather the candidates of all ranks when running distributed.

    Raises:
        ConfigError: at construction, if ``temperature`` is not positive.
    """

    def __init__(self, temperature: float = 0.1, normalize: bool = True, gather: bool = False):
        super().__init__()
        _check_temperature(temperature)
        self.temperature = float(temperature)
        self.normalize = normalize
        self.gather = gather

    def forward(
        self,
        anchors: Tensor,
        candidates: Tensor,
        positive_mask: Tensor,
        negatives: Tensor | None = None,
        self_mask: Tensor | None = None,
    ) -> Tensor:
        return info_nce(
            anchors, candidates, positive_mask, self.temperature, negatives=negatives,
            self_mask=self_mask, normalize=self.normalize, gather=self.gather,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, normalize={self.normalize}, gather={self.gather}"
