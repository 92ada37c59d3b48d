"""Clustering losses: SwAV's swapped prediction and the cross-entropy on pseudo-labels used by
DeepCluster and DeepCluster-v2. Pure tensor functions; codes and pseudo-labels are computed by the
methods (:func:`selfsup.nn.sinkhorn.sinkhorn`, :func:`selfsup.nn.kmeans.kmeans`) and passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["swapped_prediction_loss", "pseudo_label_cross_entropy"]


def swapped_prediction_loss(scores: Sequence[Tensor], codes: Sequence[Tensor],
                            assign_crops: Sequence[int], temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction (Caron et al. 2020, eq. 1-2, multi-crop eq. 6).

    For every crop ``s`` in ``assign_crops`` with codes ``q_s``, every *other* crop ``t`` predicts
    them: ``l(z_t, q_s) = - sum_k q_s^(k) log p_t^(k)`` with ``p_t = softmax(z_t^T C / tau)``.
    The loss averages over samples, over the ``V - 1`` predicting crops and over the assigned
    crops, as the reference ``main_swav.py``::

        L = 1/|A| sum_{s in A} 1/(V-1) sum_{t != s} mean_b l(z_t, q_s)

    Args:
        scores: ``V`` tensors ``[B, K]``: prototype scores (cosine similarities) of every crop,
            global crops first.
        codes: ``|A|`` tensors ``[B, K]``: the (detached) codes of the crops ``assign_crops``.
        assign_crops: the crop indices the codes belong to (SwAV: ``[0, 1]``).
        temperature: ``tau`` (> 0); SwAV uses 0.1.

    Returns:
        Scalar loss.

    Raises:
        ConfigError: for ``temperature <= 0``, an assigned crop index outside ``[0, V)`` or a
            ``codes``/``assign_crops`` length mismatch.
        DataError: for fewer than 2 crops or shapes that do not match.
    """
    if temperature <= 0:
        raise ConfigError(f"swapped prediction temperature must be > 0, got {temperature}")
    v = len(scores)
    if v < 2:
        raise DataError(f"swapped prediction needs at least 2 crops, got {v}")
    if len(codes) != len(assign_crops) or not assign_crops:
        raise ConfigError(f"got {len(codes)} codes for assign_crops={list(assign_crops)}")
    shape = scores[0].shape
    if any(s.shape != shape for s in scores) or any(q.shape != shape for q in codes):
        raise DataError("swapped prediction: every crop's scores and codes must be "
                        f"[B, K] = {tuple(shape)}")
    log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    loss = scores[0].new_zeros((), dtype=torch.float32)
    for q, s in zip(codes, assign_crops):
        if not 0 <= s < v:
            raise ConfigError(f"assign crop {s} is outside [0, {v})")
        q = q.detach().float()
        sub = sum(-(q * log_p[t]).sum(dim=1).mean() for t in range(v) if t != s)
        loss = loss + sub / (v - 1)
    return loss / len(codes)


def pseudo_label_cross_entropy(scores: Sequence[Tensor], targets: Sequence[Tensor],
                               temperature: float = 1.0, ignore_index: int = -1) -> Tensor:
    """Cross-entropy of scores against pseudo-labels, averaged over heads (DeepCluster eq. 2;
    DeepCluster-v2: one head per k-means clustering, scores are cosine similarities to the
    centroids divided by ``temperature``).

    Args:
        scores: ``H`` tensors ``[N, K_h]`` of logits (before the temperature).
        targets: ``H`` tensors ``[N]`` int64 pseudo-labels in ``[0, K_h)``; ``ignore_index``
            marks samples without a label (they do not count).
        temperature: logits are divided by it (> 0); 1 = plain cross-entropy.
        ignore_index: label value to skip.

    Returns:
        Scalar: ``1/H sum_h CE(scores_h / temperature, targets_h)``.

    Raises:
        ConfigError: for ``temperature <= 0``.
        DataError: for no heads, a heads/targets length mismatch or mismatched shapes.
    """
    if temperature <= 0:
        raise ConfigError(f"cross-entropy temperature must be > 0, got {temperature}")
    if not scores or len(scores) != len(targets):
        raise DataError(f"got {len(scores)} score heads and {len(targets)} target sets")
    total = scores[0].new_zeros((), dtype=torch.float32)
    for s, y in zip(scores, targets):
        if s.dim() != 2 or y.shape != (s.shape[0],):
            raise DataError(f"scores [N, K] and targets [N] expected, got {tuple(s.shape)} and "
                            f"{tuple(y.shape)}")
        total = total + F.cross_entropy(s.float() / temperature, y, ignore_index=ignore_index)
    return total / len(scores)
