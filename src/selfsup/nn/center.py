"""DINO's teacher center: an exponential moving average of the teacher's outputs over batches.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", sec. 3.1,
eq. 4: ``c <- m c + (1 - m) (1 / B) sum_i g_theta_t(x_i)`` with ``m = 0.9``, where the batch mean
runs over the *global* batch (the authors' code all-reduces the batch sum and divides by
``B x world_size``). The teacher's logits are centred by subtracting ``c`` before the softmax,
which keeps one prototype from dominating (collapse to one dimension).

The center is state of the method (a persistent buffer, so it is in ``state_dict()``), but the
loss stays pure: the method passes ``center.value`` into the loss, records the teacher's outputs
with :meth:`Center.add` during the step and applies eq. 4 with :meth:`Center.update` in
``on_step_end``. Outputs recorded over several micro-batches (gradient accumulation) are averaged
together, so the update uses the mean over everything the optimiser step saw.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError
from selfsup.utils import dist

__all__ = ["Center"]


class Center(nn.Module):
    """EMA of the mean of ``[N, dim]`` batches, distributed-correct.

    Args:
        dim: width of the averaged vectors (DINO: the head's ``out_dim``).
        momentum: ``m`` of eq. 4, in [0, 1] (0.9 in the paper).

    Attributes:
        value: the center ``c`` ``[1, dim]`` (float32, starts at 0 as in the authors' code).

    Raises:
        ConfigError: if ``dim`` < 1 or ``momentum`` is outside [0, 1].
    """

    value: Tensor
    _sum: Tensor
    _count: Tensor

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"Center dim must be >= 1, got {dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"center momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("value", torch.zeros(1, dim))
        # outputs recorded since the last update (not checkpointed: an update empties them)
        self.register_buffer("_sum", torch.zeros(1, dim), persistent=False)
        self.register_buffer("_count", torch.zeros((), dtype=torch.float64), persistent=False)

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        """Record a batch of outputs ``[N, dim]`` (detached; summed in float32).

        Raises:
            DataError: if ``x`` is not ``[N, dim]`` with ``N >= 1``.
        """
        if x.dim() != 2 or x.shape[1] != self.value.shape[1] or x.shape[0] < 1:
            raise DataError(
                f"Center.add expects [N, {self.value.shape[1]}] with N >= 1, got {tuple(x.shape)}"
            )
        self._sum += x.detach().float().sum(dim=0, keepdim=True)
        self._count += x.shape[0]

    @torch.no_grad()
    def update(self) -> None:
        """``c <- m c + (1 - m) mean`` (eq. 4) with the mean of the recorded outputs over all
        ranks (sum and count all-reduced), then forget them. No-op if nothing was recorded on any
        rank."""
        stats = torch.cat([self._sum.flatten(), self._count.to(self._sum).view(1)])
        dist.all_reduce_sum(stats)
        count = float(stats[-1])
        self._sum.zero_()
        self._count.zero_()
        if count == 0.0:
            return
        mean = stats[:-1].view_as(self.value) / count
        self.value.mul_(self.momentum).add_(mean, alpha=1.0 - self.momentum)

    def extra_repr(self) -> str:
        return f"dim={self.value.shape[1]}, momentum={self.momentum}"
