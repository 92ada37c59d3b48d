"""Variants of the InfoNCE family (Oord et al. 2018): the debiased loss (Chuang et al. 2020), the
hard-negative loss (Robinson et al. 2021), FlatNCE (Chen et al. 2021) and the alignment and
uniformity losses (Wang & Isola 2020). Each is a pure function with the arguments of
:func:`selfsup.losses.contrastive.info_nce` (anchors, candidates, a positive mask, optional extra
negatives and self mask, ``gather`` across ranks) plus a thin ``nn.Module`` wrapper that checks its
hyper-parameters at construction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.alignment import (  # noqa: F401  (re-exported)
    AlignUniformLoss,
    align_uniform_loss,
    alignment_loss,
    uniformity_loss,
)
from selfsup.losses.contrastive import (
    _check_info_nce_inputs,
    _check_temperature,
    _gather_candidates,
    _similarity_logits,
)
from selfsup.types import ConfigError, DataError

__all__ = [
    "AlignUniformLoss",
    "DebiasedContrastiveLoss",
    "FlatNCELoss",
    "HardNegativeLoss",
    "align_uniform_loss",
    "alignment_loss",
    "debiased_info_nce",
    "flat_nce",
    "hard_negative_info_nce",
    "uniformity_loss",
]


def _pos_neg_logits(
    anchors: Tensor,
    candidates: Tensor,
    positive_mask: Tensor,
    temperature: float,
    negatives: Tensor | None,
    self_mask: Tensor | None,
    normalize: bool,
    gather: bool,
    name: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Checked, gathered logits: ``(logits [N, M], positives [N, M], negative logits [N, M + K]
    with -inf where not a negative, negative-validity mask [N, M + K])``. The negatives of an
    anchor are the candidates that are neither positive nor self, plus the extra negatives."""
    _check_temperature(temperature)
    _check_info_nce_inputs(anchors, candidates, positive_mask, negatives, self_mask, name)
    masks = [positive_mask] if self_mask is None else [positive_mask, self_mask]
    candidates, masks = _gather_candidates(candidates, masks, gather)
    pos = masks[0]
    logits = _similarity_logits(anchors, candidates, temperature, normalize)  # [N, M]
    valid = ~pos if self_mask is None else ~(pos | masks[1])
    neg_logits = logits
    if negatives is not None and negatives.shape[0] > 0:
        extra = _similarity_logits(anchors, negatives.to(anchors.dtype), temperature, normalize)
        neg_logits = torch.cat([logits, extra], dim=1)  # [N, M + K]
        valid = torch.cat([valid, valid.new_ones(extra.shape)], dim=1)
    if not bool(valid.any(dim=1).all()):
        raise DataError(f"{name}: every anchor needs at least one negative")
    return logits, pos, neg_logits.masked_fill(~valid, float("-inf")), valid


def _mean_over_positives(per_pair: Tensor, pos: Tensor) -> Tensor:
    """Mean over anchors of the mean over each anchor's positives of ``per_pair [N, M]``."""
    per_pair = torch.where(pos, per_pair, torch.zeros_like(per_pair))
    return (per_pair.sum(dim=1) / pos.sum(dim=1)).mean()


def debiased_info_nce(
    anchors: Tensor,
    candidates: Tensor,
    positive_mask: Tensor,
    temperature: float = 0.5,
    *,
    tau_plus: float = 0.1,
    beta: float = 0.0,
    negatives: Tensor | None = None,
    self_mask: Tensor | None = None,
    normalize: bool = True,
    gather: bool = False,
) -> Tensor:
    """Debiased (Chuang et al. 2020) and hard-negative (Robinson et al. 2021) contrastive loss.

    Chuang et al. 2020, "Debiased Contrastive Learning", objective ``L^N_Debiased`` with the
    estimator ``g`` of the negative term (their reference code ``chingyaoc/DCL``); Robinson et al.
    2021, "Contrastive Learning with Hard Negative Samples", the importance-weighted estimator
    with weights ``exp(beta s / t)`` (reference code ``joshr17/HCL``). With ``e_x = exp(s_x / t)``,
    the ``N_i`` negatives ``n`` of anchor ``i`` (candidates neither positive nor self, plus
    ``negatives``) and its positives ``P_i``:

        R_i   = sum_n e_n^(1 + beta) / ((1 / N_i) sum_n e_n^beta)     (= sum_n e_n if beta = 0)
        Ng_i  = max( (R_i - tau_plus N_i mean_{p in P_i} e_p) / (1 - tau_plus),  N_i e^(-1/t) )
        loss  = mean_i mean_{p in P_i} -log( e_p / (e_p + Ng_i) )

    The lower clamp ``N e^{-1/t}`` is the smallest value of ``sum_n e_n`` for cosine
    similarities. With ``tau_plus = 0`` and ``beta = 0`` this is InfoNCE whose denominator holds
    the positive and the negatives only, i.e. :func:`info_nce` when every anchor has a single
    positive. Computed in log space with a per-anchor shift, so it is stable for any ``t``.

    Args:
        anchors, candidates, positive_mask, temperature, negatives, self_mask, normalize,
            gather: as in :func:`info_nce` (DCL/HCL use ``t = 0.5`` on CIFAR-10).
        tau_plus: class prior ``tau+`` in ``[0, 1)``, the probability that a negative shares the
            anchor's class (DCL: 0.1 on CIFAR-10).
        beta: concentration ``beta >= 0`` of the hardness weights (HCL: 1.0 on CIFAR-10).

    Returns:
        Scalar loss.

    Raises:
        ConfigError: for ``temperature <= 0``, ``tau_plus`` outside ``[0, 1)`` or ``beta < 0``.
        DataError: as :func:`info_nce`, or if an anchor has no negative.
    """
    if not 0.0 <= tau_plus < 1.0:
        raise ConfigError(f"tau_plus must be in [0, 1), got {tau_plus!r}")
    if not beta >= 0.0:
        raise ConfigError(f"beta must be >= 0, got {beta!r}")
    logits, pos, neg, valid = _pos_neg_logits(
        anchors, candidates, positive_mask, temperature, negatives, self_mask, normalize,
        gather, "debiased_info_nce",
    )
    count = valid.sum(dim=1, keepdim=True).to(logits.dtype)  # N_i  [N, 1]
    # per-anchor shift c_i (max logit) keeps every exp() <= 1; all terms scale by e^{-c_i}
    shift = torch.maximum(
        logits.masked_fill(~pos, float("-inf")).amax(dim=1, keepdim=True), neg.amax(1, True)
    ).detach()
    lp, ln = logits - shift, neg - shift
    weighted = torch.where(valid, beta * ln.masked_fill(~valid, 0.0), float("-inf"))
    log_r = torch.logsumexp(ln + weighted, 1, True) - torch.logsumexp(weighted, 1, True)
    log_r = log_r + count.log()  # log R_i - c_i
    pos_mean = torch.where(pos, lp.exp(), torch.zeros_like(lp)).sum(1, True) / pos.sum(1, True)
    ng = (log_r.exp() - tau_plus * count * pos_mean) / (1.0 - tau_plus)
    ng = torch.maximum(ng, count * torch.exp(-1.0 / temperature - shift))
    return _mean_over_positives(torch.logaddexp(lp, ng.log()) - lp, pos)


def hard_negative_info_nce(
    anchors: Tensor,
    candidates: Tensor,
    positive_mask: Tensor,
    temperature: float = 0.5,
    *,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    negatives: Tensor | None = None,
    self_mask: Tensor | None = None,
    normalize: bool = True,
    gather: bool = False,
) -> Tensor:
    """Hard-negative contrastive loss (Robinson et al. 2021, "Contrastive Learning with Hard
    Negative Samples"): :func:`debiased_info_nce` with hardness concentration ``beta`` (paper's
    CIFAR-10 setting ``beta = 1``, ``tau_plus = 0.1``, ``t = 0.5``); ``beta = 0`` is the debiased
    loss of Chuang et al. 2020. Arguments, return value and errors as :func:`debiased_info_nce`.
    """
    return debiased_info_nce(
        anchors, candidates, positive_mask, temperature, tau_plus=tau_plus, beta=beta,
        negatives=negatives, self_mask=self_mask, normalize=normalize, gather=gather,
    )


def flat_nce(
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
    """FlatNCE (Chen et al. 2021, "Simpler, Faster, Stronger: Breaking The log-K Curse On
    Contrastive Learners With FlatNCE", sec. 3 and Algorithm 1; authors' code ``FlatCLR``).

    For anchor ``i`` and positive ``p`` with ``v_ip = logsumexp_n (s_in - s_ip) / t`` over the
    negatives ``n`` (candidates neither positive nor self, plus ``negatives``):

        flat_ip = exp(v_ip - stopgrad(v_ip)) - 1            (value exactly 0)
        loss    = mean_i mean_p [ flat_ip + stopgrad(softplus(v_ip)) ]

    As in the authors' code, the returned VALUE is the detached InfoNCE loss
    ``softplus(v) = -log(e_p / (e_p + sum_n e_n))`` (for monitoring; it equals :func:`info_nce`
    for one positive per anchor), while the GRADIENT is that of the flat term, ``dv``. InfoNCE's
    gradient is ``sigmoid(v_ip) dv = (1 - q_ip) dv`` with ``q_ip`` the softmax probability of the
    positive, so per anchor FlatNCE's gradient is InfoNCE's divided by ``1 - q_ip``: same
    direction, larger scale; it does not vanish when the positive dominates (small batches).

    Args:
        anchors, candidates, positive_mask, temperature, negatives, self_mask, normalize,
            gather: as in :func:`info_nce`.

    Returns:
        Scalar loss whose value is the InfoNCE value and whose gradient is FlatNCE's.

    Raises:
        ConfigError: for ``temperature <= 0``.
        DataError: as :func:`info_nce`, or if an anchor has no negative.
    """
    logits, pos, neg, _ = _pos_neg_logits(
        anchors, candidates, positive_mask, temperature, negatives, self_mask, normalize,
        gather, "flat_nce",
    )
    v = torch.logsumexp(neg, dim=1, keepdim=True) - logits  # [N, M], used where pos
    flat = torch.exp(v - v.detach()) - 1.0
    return _mean_over_positives(flat + F.softplus(v).detach(), pos)


class _MaskedContrastiveLoss(nn.Module):
    """Shared ``forward(anchors, candidates, positive_mask, negatives=None, self_mask=None)``."""

    _loss: Callable[..., Tensor]  # the pure function, set by subclasses as a staticmethod

    def __init__(self, temperature: float, normalize: bool, gather: bool) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = float(temperature)
        self.normalize = normalize
        self.gather = gather

    def _kwargs(self) -> dict[str, float]:
        return {}

    def forward(
        self,
        anchors: Tensor,
        candidates: Tensor,
        positive_mask: Tensor,
        negatives: Tensor | None = None,
        self_mask: Tensor | None = None,
    ) -> Tensor:
        return self._loss(
            anchors, candidates, positive_mask, self.temperature, negatives=negatives,
            self_mask=self_mask, normalize=self.normalize, gather=self.gather, **self._kwargs(),
        )

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self._kwargs().items())
        return f"temperature={self.temperature}{extra}, normalize={self.normalize}"


class DebiasedContrastiveLoss(_MaskedContrastiveLoss):
    """Module wrapper of :func:`debiased_info_nce` (Chuang et al. 2020; DCL defaults t = 0.5,
    tau_plus = 0.1; ``beta > 0`` adds Robinson et al. 2021's hardness weighting).

    Raises:
        ConfigError: at construction, for ``temperature <= 0``, ``tau_plus`` outside ``[0, 1)``
            or ``beta < 0``.
    """

    def __init__(
        self,
        temperature: float = 0.5,
        tau_plus: float = 0.1,
        beta: float = 0.0,
        normalize: bool = True,
        gather: bool = False,
    ) -> None:
        super().__init__(temperature, normalize, gather)
        if not 0.0 <= tau_plus < 1.0:
            raise ConfigError(f"tau_plus must be in [0, 1), got {tau_plus!r}")
        if not beta >= 0.0:
            raise ConfigError(f"beta must be >= 0, got {beta!r}")
        self.tau_plus, self.beta = float(tau_plus), float(beta)

    _loss = staticmethod(debiased_info_nce)

    def _kwargs(self) -> dict[str, float]:
        return {"tau_plus": self.tau_plus, "beta": self.beta}


class HardNegativeLoss(DebiasedContrastiveLoss):
    """Module wrapper of :func:`hard_negative_info_nce` (Robinson et al. 2021; CIFAR-10 defaults
    t = 0.5, beta = 1, tau_plus = 0.1). Raises as :class:`DebiasedContrastiveLoss`."""

    def __init__(
        self,
        temperature: float = 0.5,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        normalize: bool = True,
        gather: bool = False,
    ) -> None:
        super().__init__(temperature, tau_plus, beta, normalize, gather)


class FlatNCELoss(_MaskedContrastiveLoss):
    """Module wrapper of :func:`flat_nce` (Chen et al. 2021). Value = InfoNCE's (detached),
    gradient = FlatNCE's.

    Raises:
        ConfigError: at construction, for ``temperature <= 0``.
    """

    _loss = staticmethod(flat_nce)

    def __init__(self, temperature: float = 0.1, normalize: bool = True, gather: bool = False):
        super().__init__(temperature, normalize, gather)
