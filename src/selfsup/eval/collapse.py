"""Representation-collapse diagnostics: pure functions of a batch of embeddings ``[B, D]``.

- :func:`embedding_std`: SimSiam (Chen & He, CVPR 2021, sec. 4.1, fig. 2): the per-dimension
  standard deviation of L2-normalised outputs, averaged over dimensions. It is ``~1/sqrt(D)`` for
  embeddings spread isotropically on the sphere and ``0`` for complete collapse.
- :func:`effective_rank`: RankMe (Garrido et al., ICML 2023, eq. 1): ``exp(H(p))`` with
  ``p_k = sigma_k / ||sigma||_1 + eps`` over the singular values of the embedding matrix; between
  1 (all embeddings on one line) and ``min(B, D)``; detects dimensional collapse.
- :func:`alignment` and :func:`uniformity`: Wang & Isola (ICML 2020, sec. 4.1, eqs. 2 and 3)
  on L2-normalised embeddings; alignment is 0 for identical positive pairs and uniformity is
  ``0`` (its maximum) when all embeddings coincide and lower the more uniformly they spread.

All functions detach their input and compute in float64 on its device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import DataError

# collapse_report flags a batch as collapsed below these (see collapse_report). Measured on digits
# (tests/learning/test_collapse_claims.py and the learning tests): collapsed runs reach std ratios
# 0.008 (SimSiam without stop-gradient) and 0.040 (BYOL without predictor, tau = 0), while healthy
# runs stay above 0.09 (MoCo v2 with its low temperature, which clusters embeddings tightly, is the
# lowest seen); 0.1 flagged that healthy MoCo v2 run, hence 0.05.
STD_RATIO_THRESHOLD = 0.05
RANK_THRESHOLD = 1.5
RANKME_EPS = 1e-7  # RankMe eq. 1


def _prepare(z: Tensor, name: str = "z", min_rows: int = 2) -> Tensor:
    if z.dim() != 2 or z.shape[0] < min_rows or z.shape[1] < 1:
        raise DataError(
            f"collapse metric '{name}' needs embeddings [B, D] with B >= {min_rows}; got "
            f"{tuple(z.shape)}"
        )
    z = z.detach().to(torch.float64)
    if not torch.isfinite(z).all():
        raise DataError(f"collapse metric '{name}': embeddings contain NaN or inf")
    return z


def embedding_std(z: Tensor) -> float:
    """Mean over dimensions of the std over the batch of L2-normalised ``z`` ``[B, D]`` (B >= 2).

    Raises:
        DataError: if ``z`` is not ``[B, D]`` with ``B >= 2`` or is not finite.
    """
    zn = F.normalize(_prepare(z), dim=1)
    return float(zn.std(dim=0).mean())


def effective_rank(z: Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe effective rank of ``z`` ``[B, D]`` (B >= 1), as in Garrido et al. 2023, eq. 1.

    Raises:
        DataError: if ``z`` is not ``[B, D]`` or is not finite.
    """
    s = torch.linalg.svdvals(_prepare(z, min_rows=1))
    if float(s.sum()) == 0.0:  # all-zero embeddings: one (degenerate) direction at most
        return 1.0
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> float:
    """``E ||f(x) - f(y)||_2^alpha`` over positive pairs ``(z1[i], z2[i])``, both normalised.

    Raises:
        DataError: if the shapes differ or are not ``[B, D]``, or values are not finite.
    """
    if z1.shape != z2.shape:
        raise DataError(
            f"alignment needs two views of equal shape; got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    a = F.normalize(_prepare(z1, "alignment", 1), dim=1)
    b = F.normalize(_prepare(z2, "alignment", 1), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z: Tensor, t: float = 2.0) -> float:
    """``log E exp(-t ||f(x) - f(y)||_2^2)`` over distinct pairs of normalised ``z`` ``[B, D]``.

    Raises:
        DataError: if ``z`` is not ``[B, D]`` with ``B >= 2`` or is not finite.
    """
    zn = F.normalize(_prepare(z, "uniformity"), dim=1)
    sq = torch.pdist(zn, p=2).pow(2)  # [B (B - 1) / 2] distinct pairs
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))


def collapse_report(z: Tensor, z2: Tensor | None = None) -> dict[str, float | bool]:
    """All collapse metrics of one batch of embeddings.

    Args:
        z: embeddings ``[B, D]``, ``B >= 2`` (e.g. projector outputs of the first view).
        z2: optional embeddings of the second view ``[B, D]``, for ``alignment``.

    Returns:
        ``embedding_std``, ``std_ratio`` (= ``embedding_std * sqrt(D)``: ~1 when healthy, ~0 when
        collapsed), ``effective_rank``, ``rank_ratio`` (= rank / min(B, D)), ``uniformity``,
        ``alignment`` (only with ``z2``) and ``collapsed``: True when ``std_ratio <
        STD_RATIO_THRESHOLD`` (0.05: the embeddings nearly coincide) or ``effective_rank <
        RANK_THRESHOLD`` (1.5: they lie on about one line).

    Raises:
        DataError: as the individual metrics.
    """
    std = embedding_std(z)
    d = z.shape[1]
    ratio = std * math.sqrt(d)
    rank = effective_rank(z)
    out: dict[str, float | bool] = {
        "embedding_std": std,
        "std_ratio": ratio,
        "effective_rank": rank,
        "rank_ratio": rank / min(z.shape),
        "uniformity": uniformity(z),
    }
    if z2 is not None:
        out["alignment"] = alignment(z, z2)
    out["collapsed"] = ratio < STD_RATIO_THRESHOLD or rank < RANK_THRESHOLD
    return out
