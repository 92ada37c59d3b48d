"""Exponential-moving-average (momentum) copies of a network: MoCo's key encoder (He et al. 2020,
eq. 2: ``theta_k <- m theta_k + (1 - m) theta_q``), BYOL's target network (Grill et al. 2020,
eq. 1 area: ``xi <- tau xi + (1 - tau) theta``) and DINO's teacher.

The copy is a submodule of the method, so it lands in ``state_dict()`` with no bookkeeping; its
parameters never require gradients. The student is passed to :meth:`EMA.update` rather than stored,
so it is not registered twice.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from selfsup.types import ConfigError

__all__ = ["EMA", "disable_drop_path"]


def disable_drop_path(module: nn.Module) -> None:
    """Turn off stochastic depth in ``module`` (in place): DINO's and iBOT's teachers are built
    without ``drop_path_rate`` while the student may have one. timm's ``DropPath`` reads its
    ``drop_prob`` attribute at every call, so setting it to 0 is enough."""
    for m in module.modules():
        if isinstance(getattr(m, "drop_prob", None), float):
            setattr(m, "drop_prob", 0.0)  # noqa: B010  (a plain attribute, not a submodule)


class EMA(nn.Module):
    """A frozen copy of ``student`` updated by :meth:`update` with momentum ``m``.

    Args:
        student: the network to copy (deep-copied once here).
        copy_buffers: also copy the student's buffers (BatchNorm running statistics) at every
            update. MoCo's ``_momentum_update_key_encoder`` and DINO's teacher update touch
            parameters only, so the teacher's BatchNorm keeps statistics of its own forward
            passes (``copy_buffers=False``); each method states which reference it follows.
    """

    def __init__(self, student: nn.Module, *, copy_buffers: bool = True) -> None:
        super().__init__()
        self.copy_buffers = copy_buffers
        self.module = copy.deepcopy(student)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        out = self.module(*args, **kwargs)
        assert isinstance(out, Tensor)
        return out

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter.

        Raises:
            ConfigError: if ``momentum`` is outside [0, 1].
            ValueError: if ``student`` does not have the teacher's structure.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"EMA momentum must be in [0, 1], got {momentum}")
        tp: list[Tensor] = list(self.module.parameters())
        sp: list[Tensor] = list(student.parameters())
        if len(tp) != len(sp):
            raise ValueError("EMA.update: the student does not match the teacher's structure")
        torch._foreach_lerp_(tp, [p.detach() for p in sp], 1.0 - momentum)
        if self.copy_buffers:
            for tb, sb in zip(self.module.buffers(), student.buffers()):
                tb.copy_(sb)

    def train(self, mode: bool = True) -> EMA:
        """The teacher's BatchNorm follows the method's mode (batch statistics while training,
        as in BYOL/MoCo v3); its parameters stay frozen either way."""
        return super().train(mode)
