"""Per-sample random numbers keyed by a step key and per-sample counters (a counter-based RNG).

A method that draws per-sample parameters inside ``training_step`` (a crop offset per image, K
transformations per image) would normally call ``torch.rand(B, ...)``: the values a sample gets
then depend on the batch's size and on its row, so a batch sharded over DDP ranks draws other
numbers than one process on the whole batch. Here a method draws one **key** per step from
torch's global RNG with a fixed shape (:func:`draw_key`; the same on every rank and in one process
after the same seed, and restored with the RNG state on ``--resume``) and expands it per sample
with a hash of ``(key, dataset index, copy, slot)`` (:func:`keyed_uniform`). A sample's draws then
depend only on the key and on who the sample is, not on where it sits. A fixed key (a Config
seed) gives a draw that is fixed per image for the whole run (Exemplar-CNN's seed-patch
location, :mod:`selfsup.methods.exemplar`).

The hash mixes the key's two 32-bit halves and each counter in turn into a 32-bit state with an
integer finaliser ``x ^= x >> 16; x *= A; x ^= x >> 15; x *= B; x ^= x >> 16`` (mod 2**32;
``A, B`` are the constants of C. Wellons' "lowbias32" from his hash-prospector search), a
bijection of 32-bit words, so distinct counters under the same state give distinct words. It runs
in int64 with each product split into 16-bit halves, so nothing overflows; on any device, with no
host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["draw_key", "keyed_bits", "keyed_uniform", "seed_key"]

_MASK32 = 0xFFFFFFFF
_A, _B = 0x7FEB352D, 0x846CA68B
_KEY_HIGH = 2**62  # keys are drawn in [0, 2**62)


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in [0, 2**32) with no intermediate above 2**49."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix(x: Tensor) -> Tensor:
    """The 32-bit finaliser (a bijection of [0, 2**32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, _A)
    x = x ^ (x >> 15)
    x = _mul32(x, _B)
    return x ^ (x >> 16)


def draw_key(device: torch.device | str) -> Tensor:
    """One key ``[]`` int64 in ``[0, 2**62)`` from torch's global RNG of ``device`` (a fixed
    shape, so the same draw on every rank and in one process after the same seed)."""
    return torch.randint(_KEY_HIGH, (), device=device, dtype=torch.int64)


def seed_key(seed: int, device: torch.device | str) -> Tensor:
    """The key of a fixed integer ``seed`` (``[]`` int64 on ``device``), for draws that must stay
    the same for the whole run."""
    return torch.tensor(int(seed) % _KEY_HIGH, device=device, dtype=torch.int64)


def keyed_bits(key: Tensor, *counters: Tensor | int) -> Tensor:
    """32-bit words (int64 in ``[0, 2**32)``) of ``(key, counters...)``, broadcast over the
    counters' shapes.

    Args:
        key: ``[]`` int64 key (:func:`draw_key`, :func:`seed_key`).
        *counters: int64 tensors or ints in ``[0, 2**32)`` (e.g. dataset indices ``[B, 1]``, copy
            numbers ``[1, K]``, a slot number per drawn quantity); larger values are reduced mod
            2**32.
    """
    h = _mix(key & _MASK32)
    h = _mix(h ^ ((key >> 32) & _MASK32))
    for c in counters:
        c_t = torch.as_tensor(c, dtype=torch.int64, device=key.device)
        h = _mix(h ^ (c_t & _MASK32))
    return h


def keyed_uniform(key: Tensor, *counters: Tensor | int) -> Tensor:
    """Uniform floats in ``[0, 1)`` (float32, multiples of 2**-24) of ``(key, counters...)``,
    broadcast over the counters' shapes (see :func:`keyed_bits`)."""
    return (keyed_bits(key, *counters) >> 8).to(torch.float32) * (2.0**-24)
