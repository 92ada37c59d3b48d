"""Noise-contrastive and instance-softmax losses: InstDisc's NCE, InvaSpread, CPC's InfoNCE.

- :func:`nce_loss` / :func:`estimate_log_z`: noise-contrastive estimation (Gutmann & Hyvärinen
  2010) of the non-parametric instance softmax as used by Wu et al. 2018, "Unsupervised Feature
  Learning via Non-Parametric Instance Discrimination" (InstDisc), sec. 3.2, eq. 5-8.
- :func:`bank_logits` / :func:`bank_info_nce`: the logits of anchors against their memory-bank
  entry and ``K`` bank noise entries, and the InfoNCE (softmax) alternative to NCE over them
  (InstDisc's and CMC's ``loss="infonce"``; Oord et al. 2018, eq. 4).
- :func:`invaspread_batch_loss`: the invariance + spreading instance-softmax loss of Ye et al.
  2019, "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature", as its
  official code computes it (``BatchCriterion``: every embedding of both views is an anchor);
  :func:`invaspread_loss`: the one-sided formula of the paper's sec. 3.1.
- :func:`cpc_info_nce`: the InfoNCE of CPC (Oord et al. 2018, eq. 4) with the positive of each
  prediction given as an index into a shared pool of targets (no dense ``[M, N]`` mask).

All are pure functions of their tensor inputs (the memory bank, ``Z`` and the noise indices are
passed in by the method).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["bank_info_nce", "bank_logits", "cpc_info_nce", "estimate_log_z",
           "invaspread_batch_loss", "invaspread_loss", "nce_loss"]


def _check_temperature(temperature: float, name: str) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        temperature > 0
    ):
        raise ConfigError(f"{name}: temperature must be a positive number, got {temperature!r}")


def _check_nce_inputs(pos_logits: Tensor, noise_logits: Tensor, num_samples: int) -> None:
    if pos_logits.dim() != 1 or noise_logits.dim() != 2 or (
        noise_logits.shape[0] != pos_logits.shape[0]
    ):
        raise DataError(
            f"nce expects pos_logits [N] and noise_logits [N, K], got {tuple(pos_logits.shape)} "
            f"and {tuple(noise_logits.shape)}"
        )
    if pos_logits.shape[0] == 0 or noise_logits.shape[1] == 0:
        raise DataError("nce: needs at least one anchor and one noise sample (K >= 1)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"nce: num_samples must be a positive integer, got {num_samples!r}")


def estimate_log_z(noise_logits: Tensor, num_samples: int) -> Tensor:
    """Monte-Carlo estimate of the log partition function of InstDisc's softmax (Wu et al. 2018,
    eq. 8): ``Z ~= n E_j[exp(v_j . f / t)] ~= (n / m) sum_k exp(v_jk . f / t)``, averaged over
    the anchors (the paper treats ``Z_i ~= Z`` as one constant estimated from the first batch).

    Args:
        noise_logits: ``v_jk . f_i / t`` for noise samples ``j_k`` drawn uniformly ``[N, K]``.
        num_samples: ``n``, the number of instances (dataset size).

    Returns:
        ``log Z`` as a detached scalar (float32 or wider), computed with ``logsumexp``.

    Raises:
        DataError: if ``noise_logits`` is not a non-empty ``[N, K]`` tensor.
    """
    if noise_logits.dim() != 2 or noise_logits.numel() == 0:
        raise DataError(f"estimate_log_z expects [N, K] noise logits, got {noise_logits.shape}")
    x = noise_logits.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return torch.logsumexp(x.flatten(), 0) - math.log(x.numel()) + math.log(num_samples)


def nce_loss(
    pos_logits: Tensor, noise_logits: Tensor, num_samples: int, log_z: Tensor | float
) -> Tensor:
    """NCE loss of InstDisc (Wu et al. 2018, sec. 3.2, eq. 5-7), mean over anchors.

    With ``P(i | v) = exp(v_i . f / t) / Z`` (eq. 2 with the constant ``Z``), uniform noise
    ``P_n = 1 / n`` and ``m = K`` noise samples per data sample, the posterior that ``i`` came
    from the data is ``h(i, v) = P(i | v) / (P(i | v) + m P_n(i))`` (eq. 5) and

        J_NCE = -E_{P_d}[log h(i, v)] - m E_{P_n}[log(1 - h(i, v'))]     (eq. 6)

    estimated per anchor as ``-log h(pos) - sum_k log(1 - h(noise_k))``. Since ``h = sigmoid(s)``
    with ``s = logit - log Z - log(m / n)``, both terms are computed with ``logsigmoid`` (no
    overflow for any temperature).

    Args:
        pos_logits: ``v_i . f_i / t`` of each anchor with its own memory entry ``[N]``.
        noise_logits: ``v_j . f_i / t`` with ``K`` noise entries per anchor ``[N, K]``.
        num_samples: ``n`` (dataset size; the noise distribution is uniform over it).
        log_z: ``log Z`` (see :func:`estimate_log_z`), scalar tensor or float; no gradient.

    Returns:
        Scalar loss (float32 or the inputs' dtype if wider).

    Raises:
        DataError: on mismatched or empty shapes.
        ConfigError: if ``num_samples`` is not a positive integer.
    """
    _check_nce_inputs(pos_logits, noise_logits, num_samples)
    if pos_logits.dtype not in (torch.float32, torch.float64):
        pos_logits, noise_logits = pos_logits.float(), noise_logits.float()
    k = noise_logits.shape[1]
    shift = (log_z.detach() if isinstance(log_z, Tensor) else log_z) + math.log(k / num_samples)
    pos_term = F.logsigmoid(pos_logits - shift)  # log h(i, v)
    noise_term = F.logsigmoid(-(noise_logits - shift)).sum(dim=1)  # sum_k log(1 - h(j_k, v))
    return -(pos_term + noise_term).mean()


def bank_logits(
    v: Tensor, positives: Tensor, noise: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Logits ``v . w / t`` of anchors against their own bank entry and shared noise entries.

    Args:
        v: anchors ``[B, D]`` (normalised features of the batch).
        positives: each anchor's bank entry ``[B, D]``.
        noise: ``K`` bank entries shared by the whole batch ``[K, D]`` (drawn uniformly).
        temperature: ``t > 0``.

    Returns:
        ``(pos_logits [B], noise_logits [B, K])``.

    Raises:
        DataError: on mismatched shapes; ConfigError: if ``temperature`` is not positive.
    """
    _check_temperature(temperature, "bank_logits")
    if v.dim() != 2 or positives.shape != v.shape or noise.dim() != 2 or (
        noise.shape[1] != v.shape[1]
    ):
        raise DataError(
            f"bank_logits expects v [B, D], positives [B, D] and noise [K, D], got "
            f"{tuple(v.shape)}, {tuple(positives.shape)} and {tuple(noise.shape)}"
        )
    positives, noise = positives.to(v.dtype), noise.to(v.dtype)
    return (v * positives).sum(dim=1) / temperature, v @ noise.T / temperature


def bank_info_nce(pos_logits: Tensor, noise_logits: Tensor) -> Tensor:
    """InfoNCE over one positive and ``K`` bank negatives (the softmax alternative to NCE).

    ``L = -mean_i log( exp(s_i+) / (exp(s_i+) + sum_k exp(s_ik)) )`` with the logits of
    :func:`bank_logits`: the non-parametric softmax of InstDisc (eq. 2) with its denominator over
    the ``n`` bank entries replaced by the positive and ``K`` sampled entries (Oord et al. 2018,
    eq. 4; the memory-bank baseline of He et al. 2020, sec. 3.2). No ``Z`` is needed.

    Args:
        pos_logits: ``[B]``.
        noise_logits: ``[B, K]``.

    Returns:
        Scalar loss (float32 or the inputs' dtype if wider).

    Raises:
        DataError: on mismatched or empty shapes.
    """
    _check_nce_inputs(pos_logits, noise_logits, 1)
    logits = torch.cat([pos_logits[:, None], noise_logits], dim=1)  # [B, 1 + K]
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def invaspread_loss(f: Tensor, f_hat: Tensor, temperature: float = 0.1) -> Tensor:
    """Invariance + spreading loss as written in Ye et al. 2019 (sec. 3.1), one-sided, mean over
    the ``m`` instances (the official code computes :func:`invaspread_batch_loss` instead).

    ``f`` are the (L2-normalised) features of the original images ``x_1..x_m`` and act as the
    instance classifier's weights; ``f_hat`` those of the augmented images ``x_hat_i``:

        P(i | x_hat_i) = exp(f_i . f_hat_i / t) / sum_k exp(f_k . f_hat_i / t)      (invariance)
        P(i | x_j)     = exp(f_i . f_j / t)     / sum_k exp(f_k . f_j / t), j != i  (spreading)
        J = -sum_i log P(i | x_hat_i) - sum_i sum_{j != i} log(1 - P(i | x_j))

    (the paper's negative log-likelihood of the joint probability that ``x_hat_i`` is recognised
    as instance ``i`` and no other ``x_j`` is). Returned as ``J / m``. The features are always
    L2-normalised here (the paper's embedding), so ``P(i | x_j) <= 1/2`` for ``j != i`` and
    ``log(1 - P)`` is computed with ``log1p`` without loss of precision.

    Args:
        f: features of the original (first) views ``[m, D]``, ``m >= 2``.
        f_hat: features of the augmented (second) views ``[m, D]``.
        temperature: ``t > 0`` (paper: 0.1).

    Returns:
        Scalar loss (float32 or the inputs' dtype if wider).

    Raises:
        DataError: if the inputs are not equal ``[m, D]`` shapes with ``m >= 2``.
        ConfigError: if ``temperature`` is not positive.
    """
    _check_temperature(temperature, "invaspread_loss")
    if f.dim() != 2 or f.shape != f_hat.shape or f.shape[0] < 2:
        raise DataError(
            f"invaspread_loss expects two [m, D] feature tensors of equal shape with m >= 2, got "
            f"{tuple(f.shape)} and {tuple(f_hat.shape)}"
        )
    f, f_hat = F.normalize(f, dim=1), F.normalize(f_hat, dim=1)
    if f.dtype not in (torch.float32, torch.float64):
        f, f_hat = f.float(), f_hat.float()
    m = f.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=f.device)
    # row = input sample, column = instance k whose weight is f_k
    log_p_hat = torch.log_softmax(f_hat @ f.T / temperature, dim=1)  # log P(k | x_hat_row)
    invariance = -log_p_hat.diagonal()  # [m]
    p = torch.softmax(f @ f.T / temperature, dim=1)  # P(k | x_row)
    spread = -torch.log1p(-p).masked_fill(eye, 0.0).sum(dim=1)  # [m], sum over k != row
    return (invariance.sum() + spread.sum()) / m


def invaspread_batch_loss(f: Tensor, f_hat: Tensor, temperature: float = 0.1) -> Tensor:
    """InvaSpread's loss as its official code computes it (mangye16/Unsupervised_Embedding_Learning,
    ``BatchAverage.py``, ``BatchCriterion.forward`` with ``negM = 1``).

    All ``2m`` embeddings ``z = normalize(cat(f, f_hat))`` are anchors; anchor ``z_i`` is
    classified among the ``2m - 1`` other embeddings, which act as instance weights through a
    stop-gradient ``sg`` (the code's ``.data``), and must pick its other view ``z_i'``:

        P(j | z_i) = exp(z_i . sg(z_j) / t) / sum_{k != i} exp(z_i . sg(z_k) / t)
        J = -1/(2m) sum_i [ log P(i' | z_i) + sum_{j not in {i, i'}} log(1 - P(j | z_i)) ]

    Differences from the paper's formula (:func:`invaspread_loss`): both views are anchors, the
    denominators hold both views but not the anchor itself, the weight side gets no gradient,
    and the sum is divided by ``2m``. Without the self term ``P(j | z_i)`` can approach 1 (two
    instances with nearly equal embeddings), so ``log(1 - P)`` of each row's largest ``P`` is
    computed as a log-sum-exp over the remaining columns (no cancellation); every other ``P`` of
    the row is <= 1/2 and goes through ``log1p``.

    Args:
        f: features of the first views ``[m, D]``, ``m >= 2`` (normalised here).
        f_hat: features of the second views ``[m, D]``; row ``i`` is the same image as ``f[i]``.
        temperature: ``t > 0`` (paper and code: 0.1).

    Returns:
        Scalar loss (float32 or the inputs' dtype if wider).

    Raises:
        DataError: if the inputs are not equal ``[m, D]`` shapes with ``m >= 2``.
        ConfigError: if ``temperature`` is not positive.
    """
    _check_temperature(temperature, "invaspread_batch_loss")
    if f.dim() != 2 or f.shape != f_hat.shape or f.shape[0] < 2:
        raise DataError(
            f"invaspread_batch_loss expects two [m, D] feature tensors of equal shape with "
            f"m >= 2, got {tuple(f.shape)} and {tuple(f_hat.shape)}"
        )
    z = F.normalize(torch.cat([f, f_hat]), dim=1)  # [2m, D]
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    # row = anchor z_i (gets the gradient), column = weight z_j (stop-gradient); no self term
    logits = (z @ z.detach().T / temperature).masked_fill(eye, -math.inf)  # [2m, 2m]
    log_p = torch.log_softmax(logits, dim=1)  # log P(j | z_i)
    pos = torch.arange(n, device=z.device).roll(n // 2)  # i' = i + m mod 2m
    top = torch.zeros_like(eye).scatter_(1, log_p.argmax(dim=1, keepdim=True), True)
    log_not = torch.log1p(-log_p.masked_fill(top | eye, -1.0).exp())  # log(1 - P), P <= 1/2
    rest = torch.logsumexp(logits.masked_fill(top, -math.inf), dim=1) - torch.logsumexp(
        logits, dim=1)  # log(1 - P) of each row's largest P
    log_not = torch.where(top, rest[:, None], log_not)
    neg = ~(eye | F.one_hot(pos, n).bool())
    spread = log_not.masked_fill(~neg, 0.0).sum(dim=1)  # [2m], j not in {i, i'}
    invariance = log_p.gather(1, pos[:, None]).squeeze(1)  # [2m], log P(i' | z_i)
    return -(invariance + spread).sum() / n


def cpc_info_nce(predictions: Tensor, targets: Tensor, positive_index: Tensor) -> Tensor:
    """InfoNCE of CPC (Oord et al. 2018, eq. 4; Hénaff et al. 2020, eq. 2) with index positives.

    ``L = -mean_m log( exp(p_m . z_pos(m)) / sum_n exp(p_m . z_n) )``: each prediction ``p_m``
    must pick its target ``z_pos(m)`` out of the whole pool ``z`` (the other patches of the same
    image and of the other images). The score is the raw dot product (the bilinear
    ``z^T W_k c`` with ``W_k c`` passed in as the prediction), no temperature.

    Args:
        predictions: ``[M, D]``.
        targets: the candidate pool ``[N, D]``.
        positive_index: ``[M]`` int64 in ``[0, N)``, the row of ``targets`` each prediction
            must identify.

    Returns:
        Scalar loss (float32 or the inputs' dtype if wider).

    Raises:
        DataError: on mismatched shapes or an index out of range.
    """
    if predictions.dim() != 2 or targets.dim() != 2 or predictions.shape[1] != targets.shape[1]:
        raise DataError(
            f"cpc_info_nce expects predictions [M, D] and targets [N, D], got "
            f"{tuple(predictions.shape)} and {tuple(targets.shape)}"
        )
    if positive_index.shape != (predictions.shape[0],) or predictions.shape[0] == 0:
        raise DataError(
            f"cpc_info_nce: positive_index must be [M] = [{predictions.shape[0]}] (M >= 1), got "
            f"{tuple(positive_index.shape)}"
        )
    if bool((positive_index < 0).any()) or bool((positive_index >= targets.shape[0]).any()):
        raise DataError(f"cpc_info_nce: positive_index must lie in [0, {targets.shape[0]})")
    logits = predictions @ targets.T  # [M, N]
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return F.cross_entropy(logits, positive_index)
