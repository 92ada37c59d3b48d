"""DINO's self-distillation loss, DINOv2's KoLeo regulariser and the teacher-distribution
entropies that show DINO's two collapse modes.

- DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
  sec. 3.1, eqs. 1-3): the teacher's output over ``K`` prototypes is centred and sharpened,
  ``P_t(x) = softmax((g_t(x) - c) / tau_t)``, the student's is ``P_s(x) = softmax(g_s(x) / tau_s)``,
  and the loss is the cross-entropy ``H(P_t, P_s) = -sum_k P_t log P_s`` averaged over every pair
  (teacher global crop ``x``, student crop ``x'``) with ``x' != x`` (eq. 3). As in the authors'
  ``DINOLoss``, each pair's cross-entropy is averaged over the batch and the pairs are averaged.
- KoLeo (Sablayrolles et al. 2019, "Spreading vectors for similarity search", eq. 5; used by
  DINOv2, Oquab et al. 2023, sec. 4): ``-(1/n) sum_i log(min_{j != i} ||x_i - x_j||)`` over
  L2-normalised features, which pushes each vector away from its nearest neighbour.
- :func:`teacher_entropies`: the mean per-sample entropy ``E_x H(P_t(x))`` and the entropy of the
  batch-mean distribution ``H(E_x P_t(x))`` (sec. 5.3, figure 7 tracks the first): collapse to
  one dimension makes both ~0, collapse to the uniform distribution makes the per-sample entropy
  ~``log K``; a healthy teacher has a low per-sample and a high marginal entropy.

All functions are pure and compute in float32 (or the wider input dtype).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["dino_cross_entropy", "dino_loss", "koleo_loss", "teacher_entropies", "teacher_probs"]


def _stack(x: Sequence[Tensor] | Tensor, name: str) -> Tensor:
    """``[V, B, K]`` from a list of ``[B, K]`` tensors or a 3-D tensor, widened to float32."""
    if isinstance(x, Tensor):
        out = x
    else:
        if len(x) == 0 or any(t.dim() != 2 or t.shape != x[0].shape for t in x):
            raise DataError(f"dino_loss: {name} must be a non-empty list of [B, K] tensors of one "
                            f"shape, got {[tuple(t.shape) for t in x]}")
        out = torch.stack(list(x))
    if out.dim() != 3 or out.shape[1] == 0:
        raise DataError(f"dino_loss: {name} must be [V, B, K] with B >= 1, got {tuple(out.shape)}")
    return out if out.dtype in (torch.float32, torch.float64) else out.float()


def teacher_probs(teacher_out: Tensor, center: Tensor | None, temperature: float) -> Tensor:
    """``softmax((g_t - c) / tau_t)`` over the last dimension (eq. 1 with the centering of eq. 4).

    Args:
        teacher_out: teacher logits ``[..., K]``.
        center: ``[1, K]`` (or broadcastable) center ``c``; None = no centering.
        temperature: ``tau_t`` > 0.

    Raises:
        ConfigError: if ``temperature`` <= 0.
    """
    if temperature <= 0:
        raise ConfigError(f"teacher temperature must be > 0, got {temperature}")
    t = teacher_out if teacher_out.dtype in (torch.float32, torch.float64) else teacher_out.float()
    if center is not None:
        t = t - center.to(t)
    return F.softmax(t / temperature, dim=-1)


def dino_loss(
    student_out: Sequence[Tensor] | Tensor,
    teacher_out: Sequence[Tensor] | Tensor,
    center: Tensor | None,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO's multi-crop cross-entropy (eq. 3), as the authors' ``DINOLoss.forward``.

    ``L = 1 / |pairs| sum_{t, v != t} mean_b -sum_k P_t[t, b, k] log P_s[v, b, k]`` over teacher
    crops ``t`` (the global crops, which are also the first student crops) and student crops
    ``v``. The teacher distribution is detached.

    Args:
        student_out: student logits of every crop, global crops first: ``V`` tensors ``[B, K]``
            or one ``[V, B, K]`` tensor.
        teacher_out: teacher logits of the ``T <= V`` global crops, ``[T, B, K]`` or a list.
        center: ``[1, K]`` center ``c`` subtracted from the teacher logits; None = no centering
            (the ablation that collapses to one dimension).
        student_temp: ``tau_s`` (0.1 in the paper).
        teacher_temp: ``tau_t`` (0.04 -> 0.07 in the paper); ``tau_t >= tau_s`` removes the
            sharpening (the ablation that collapses to the uniform distribution).

    Returns:
        Scalar loss, ``>= 0``; ``log K`` when both distributions are uniform.

    Raises:
        DataError: for mismatched shapes, more teacher than student crops, or a single crop.
        ConfigError: for a non-positive temperature.
    """
    t = _stack(teacher_out, "teacher_out")  # [T, B, K]
    return dino_cross_entropy(student_out, teacher_probs(t.detach(), center, teacher_temp),
                              student_temp)


def dino_cross_entropy(
    student_out: Sequence[Tensor] | Tensor,
    targets: Sequence[Tensor] | Tensor,
    student_temp: float = 0.1,
) -> Tensor:
    """Eq. 3 for given teacher distributions: ``1 / |pairs| sum_{t, v != t} mean_b
    -sum_k targets[t, b, k] log softmax(student[v, b] / tau_s)_k``.

    :func:`dino_loss` with ``targets = softmax((g_t - c) / tau_t)``; DINOv2's Sinkhorn-Knopp
    centering passes ``targets = sinkhorn(g_t, eps=tau_t)`` instead.

    Args:
        student_out: student logits of every crop, global crops first: ``V`` tensors ``[B, K]``
            or one ``[V, B, K]`` tensor.
        targets: teacher distributions of the ``T <= V`` global crops, ``[T, B, K]`` or a list;
            detached here.
        student_temp: ``tau_s`` > 0.

    Raises:
        DataError: for mismatched shapes, more teacher than student crops, or a single crop.
        ConfigError: for a non-positive temperature.
    """
    s = _stack(student_out, "student_out")  # [V, B, K]
    q = _stack(targets, "targets").detach()  # [T, B, K]
    n_s, n_t = s.shape[0], q.shape[0]
    if q.shape[1:] != s.shape[1:] or n_t > n_s or n_s < 2:
        raise DataError(f"dino_loss: need T <= V crops of one [B, K] shape with V >= 2, got "
                        f"student {tuple(s.shape)} and teacher {tuple(q.shape)}")
    if student_temp <= 0:
        raise ConfigError(f"student temperature must be > 0, got {student_temp}")
    log_p = F.log_softmax(s / student_temp, dim=-1)  # [V, B, K]
    # ce[t, v] = mean_b H(q[t, b], p[v, b]): one contraction instead of a loop over pairs
    ce = -torch.einsum("tbk,vbk->tv", q.to(log_p.dtype), log_p) / s.shape[1]  # [T, V]
    same = torch.eye(n_t, n_s, dtype=torch.bool, device=ce.device)  # a crop is not its own target
    return ce.masked_fill(same, 0.0).sum() / (n_t * n_s - n_t)


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo regulariser ``-(1/n) sum_i log(||x_i - x_nn(i)|| + eps)`` (Sablayrolles et al. 2019,
    eq. 5; DINOv2's ``KoLeoLoss``) on L2-normalised rows; ``nn(i)`` is the nearest other row
    (largest cosine), found without gradient.

    Args:
        x: features ``[n, D]``, ``n >= 2``.
        eps: added to the distances (and used by the normalisation) so duplicates stay finite.

    Returns:
        Scalar; lower when the rows spread uniformly over the sphere.

    Raises:
        DataError: if ``x`` is not ``[n, D]`` with ``n >= 2``.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise DataError(f"koleo_loss needs [n, D] features with n >= 2, got {tuple(x.shape)}")
    z = F.normalize(x if x.dtype in (torch.float32, torch.float64) else x.float(), dim=1, eps=eps)
    with torch.no_grad():
        dots = z @ z.t()  # [n, n]
        dots.fill_diagonal_(-2.0)  # below any cosine: a row is not its own neighbour
        nn_idx = dots.argmax(dim=1)  # [n]
    dist = (z - z[nn_idx]).norm(dim=1)  # [n]
    return -torch.log(dist + eps).mean()


@torch.no_grad()
def teacher_entropies(probs: Tensor) -> tuple[float, float]:
    """``(E_x H(P(x)), H(E_x P(x)))`` in nats for distributions ``probs`` ``[N, K]``.

    Both lie in ``[0, log K]``. One-dimension collapse: both ~0. Uniform collapse: the first is
    ~``log K``. Healthy: the first low, the second high.

    Raises:
        DataError: if ``probs`` is not ``[N, K]`` with ``N >= 1``.
    """
    if probs.dim() != 2 or probs.shape[0] < 1:
        raise DataError(f"teacher_entropies expects [N, K] probabilities, got {tuple(probs.shape)}")
    p = probs.double()
    per_sample = -(p * p.clamp_min(1e-30).log()).sum(dim=1).mean()
    mean = p.mean(dim=0)
    marginal = -(mean * mean.clamp_min(1e-30).log()).sum()
    return float(per_sample), float(marginal)
