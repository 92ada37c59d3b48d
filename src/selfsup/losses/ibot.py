"""iBOT's masked-patch self-distillation loss (the MIM term), as a pure tensor function.

Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer", sec. 3.2, eq. 2: for a
view ``u`` with masks ``m`` the student sees the masked view ``u_hat`` and the teacher (the
"online tokenizer") the plain view, and

``L_MIM = - sum_{i=1}^{N} m_i P_t^patch(u_i)^T log P_s^patch(u_hat_i)``,

symmetrised over the two global views. bytedance/ibot ``main_ibot.py`` (``iBOTLoss.forward``,
the ``v == q`` branch) fixes the normalisation: for view ``v`` and image ``b`` the per-patch
cross-entropies are summed over the masked patches and divided by their number (at least 1),
that is averaged over masked patches; then averaged over the images of the batch (an image
with no masked patch contributes 0 to that mean) and over the views. The teacher's targets are
``softmax((g_t - c') / tau_t')`` with their own center ``c'`` and temperature
(:func:`selfsup.losses.dino.teacher_probs`); the [CLS] term is DINO's
(:func:`selfsup.losses.dino.dino_cross_entropy`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import ConfigError, DataError

__all__ = ["ibot_patch_loss", "ibot_patch_loss_masked"]


def ibot_patch_loss(student_patch: Tensor, targets: Tensor, masks: Tensor,
                    student_temp: float = 0.1) -> Tensor:
    """iBOT's MIM loss (eq. 2) over ``V`` views, as ``iBOTLoss``'s ``v == q`` term.

    ``L = 1/V sum_v 1/B sum_b [sum_n m[v,b,n] H(q[v,b,n], p[v,b,n])] / max(sum_n m[v,b,n], 1)``
    with ``p = softmax(student_patch / tau_s)`` and ``H(q, p) = -sum_k q_k log p_k``: each
    student patch token of view ``v`` is scored against the teacher's token at the same patch
    of the same (unmasked) view, and only masked patches count.

    Args:
        student_patch: student logits of the patch tokens of the masked views ``[V, B, N, K]``.
        targets: teacher distributions of the same views' patch tokens ``[V, B, N, K]``
            (detached here).
        masks: ``[V, B, N]`` bool or 0/1, True where the student's patch was masked.
        student_temp: ``tau_s`` > 0 (0.1 in the paper).

    Returns:
        Scalar loss, ``>= 0``; 0 when no patch is masked; ``log K`` for uniform student
        distributions whenever every image has a masked patch.

    Raises:
        DataError: for tensors that are not ``[V, B, N, K]`` / ``[V, B, N]`` of one shape.
        ConfigError: for a non-positive temperature.
    """
    if (student_patch.dim() != 4 or targets.shape != student_patch.shape
            or masks.shape != student_patch.shape[:3] or 0 in student_patch.shape[:3]):
        raise DataError("ibot_patch_loss: need student and teacher patch outputs [V, B, N, K] "
                        f"of one shape and masks [V, B, N], got {tuple(student_patch.shape)}, "
                        f"{tuple(targets.shape)} and {tuple(masks.shape)}")
    if student_temp <= 0:
        raise ConfigError(f"student temperature must be > 0, got {student_temp}")
    s = student_patch if student_patch.dtype == torch.float64 else student_patch.float()
    log_p = F.log_softmax(s / student_temp, dim=-1)  # [V, B, N, K]
    ce = -(targets.detach().to(log_p.dtype) * log_p).sum(dim=-1)  # [V, B, N]
    m = masks.to(log_p.dtype)
    per_image = (ce * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)  # [V, B]
    return per_image.mean()


def ibot_patch_loss_masked(student_masked: Tensor, targets: Tensor, masks: Tensor,
                           student_temp: float = 0.1) -> Tensor:
    """:func:`ibot_patch_loss` from the masked patches' logits only: the same value and
    gradient, without the student head on patches that never enter the loss.

    Args:
        student_masked: student logits ``[M, K]`` of the masked patches, in the order of
            ``masks.nonzero()`` (view, image, patch), ``M = masks.sum()``.
        targets: the teacher's distributions of **all** patches ``[V, B, N, K]`` (detached).
        masks: ``[V, B, N]`` bool, True where the student's patch was masked.
        student_temp: ``tau_s`` > 0.

    Raises:
        DataError: for shapes that do not fit together; ConfigError: a non-positive temperature.
    """
    if targets.dim() != 4 or masks.shape != targets.shape[:3] or student_masked.dim() != 2 \
            or student_masked.shape != (int(masks.sum()), targets.shape[-1]):
        raise DataError("ibot_patch_loss_masked: need masked student logits [M, K] with M = "
                        f"masks.sum(), targets [V, B, N, K] and masks [V, B, N]; got "
                        f"{tuple(student_masked.shape)}, {tuple(targets.shape)}, "
                        f"{tuple(masks.shape)}")
    if student_temp <= 0:
        raise ConfigError(f"student temperature must be > 0, got {student_temp}")
    m = masks.bool()
    s = student_masked if student_masked.dtype == torch.float64 else student_masked.float()
    log_p = F.log_softmax(s / student_temp, dim=-1)  # [M, K]
    ce = -(targets.detach()[m].to(log_p.dtype) * log_p).sum(dim=-1)  # [M]
    v, b = masks.shape[:2]
    image = torch.arange(v * b, device=ce.device).view(v, b, 1).expand_as(m)[m]  # [M]
    sums = torch.zeros(v * b, dtype=ce.dtype, device=ce.device).index_add(0, image, ce)
    per_image = sums / m.flatten(0, 1).sum(dim=-1).clamp(min=1).to(ce.dtype)  # [V * B]
    return per_image.mean()
