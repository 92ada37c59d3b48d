"""Schedules as pure functions of ``(step, total)``: resuming a run needs only the step counter.

Used for the learning rate (linear warm-up then cosine, SGDR / SimCLR appendix B.1), weight decay,
EMA momentum (BYOL eq. 4 area: tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2) and teacher
temperature warm-up (DINO sec. 3.1).
"""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total``); clamps outside."""
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def linear(step: int, total: int, start: float, end: float) -> float:
    """Linear interpolation from ``start`` to ``end`` over ``total`` steps; clamps outside."""
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return start + (end - start) * t


def warmup_cosine(step: int, total: int, warmup: int, base: float, final: float = 0.0) -> float:
    """Linear warm-up from ~0 to ``base`` over ``warmup`` steps, then cosine decay to ``final``.

    The first step already has a non-zero value (``base / warmup``) so no optimiser step is wasted.
    """
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    return cosine(step - warmup, max(total - warmup, 1), base, final)
