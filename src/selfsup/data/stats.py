"""Per-channel intensity statistics: raw samples -> unit range -> standardised inputs.

Raw images arrive as uint8, uint16 or float32. :class:`Normalization` first maps every channel
``c`` to unit range, ``u = clamp((x - low[c]) / (high[c] - low[c]), 0, 1)``, which is what the
augmentations expect (colour jitter, solarisation thresholds are defined on ``[0, 1]``), and then
standardises, ``(u - mean[c]) / std[c]``, as the encoder's input. For 8-bit data ``low, high =
0, 255``; for 16-bit and float data (e.g. Sentinel-2 digital numbers of about 0-9000, a few
saturated pixels far above) the 0.5th and 99.5th percentiles of a pixel sample are used, robust
to outliers (the usual "2 % linear stretch" of remote sensing, with narrower tails).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from selfsup.types import ConfigError, DataError

if TYPE_CHECKING:
    from selfsup.data.datasets import ImageDataset

_FIELDS = ("low", "high", "mean", "std")


@dataclass
class Normalization:
    """raw -> unit range: ``clamp((x - low[c]) / (high[c] - low[c]), 0, 1)``; then
    ``(unit - mean[c]) / std[c]``.

    Attributes:
        low: per-channel raw value mapped to 0.
        high: per-channel raw value mapped to 1 (> low).
        mean: per-channel mean of the unit-range data.
        std: per-channel standard deviation of the unit-range data (> 0).

    Raises:
        ConfigError: (at construction) if the four lists differ in length or are empty, if a
            ``high`` is not above its ``low``, or a ``std`` is not positive.
    """

    low: list[float]
    high: list[float]
    mean: list[float]
    std: list[float]
    _cache: dict[Any, tuple[Tensor, ...]] = field(default_factory=dict, init=False, repr=False,
                                                  compare=False)

    def __post_init__(self) -> None:
        for name in _FIELDS:
            setattr(self, name, [float(v) for v in getattr(self, name)])
        lengths = {name: len(getattr(self, name)) for name in _FIELDS}
        if len(set(lengths.values())) != 1 or not self.low:
            raise ConfigError(f"normalization lists must have one value per channel, got "
                              f"lengths {lengths}")
        if any(not math.isfinite(v) for name in _FIELDS for v in getattr(self, name)):
            raise ConfigError("normalization values must be finite")
        if any(h <= lo for lo, h in zip(self.low, self.high)):
            raise ConfigError(f"normalization high must exceed low per channel, got low={self.low}"
                              f" high={self.high}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"data.std must be positive per channel, got {self.std}")

    @property
    def channels(self) -> int:
        return len(self.low)

    def _constants(self, device: torch.device) -> tuple[Tensor, ...]:
        """``(low, 1/(high-low), mean, 1/std)`` as ``[C, 1, 1]`` float32 tensors on ``device``."""
        if device not in self._cache:
            def t(v: list[float]) -> Tensor:
                return torch.tensor(v, dtype=torch.float64).view(-1, 1, 1)

            consts = (t(self.low), 1.0 / (t(self.high) - t(self.low)), t(self.mean),
                      1.0 / t(self.std))
            self._cache[device] = tuple(c.to(device=device, dtype=torch.float32) for c in consts)
        return self._cache[device]

    def _check(self, x: Tensor) -> None:
        if x.dim() not in (3, 4) or x.shape[-3] != self.channels:
            raise DataError(f"normalization expects images [B, {self.channels}, H, W] or "
                            f"[{self.channels}, H, W], got {tuple(x.shape)}")

    def to_unit(self, x: Tensor) -> Tensor:
        """Raw ``[B, C, H, W]`` (or ``[C, H, W]``) of any dtype -> float32 in ``[0, 1]``, same
        device.

        Raises:
            DataError: if the channel count differs from the statistics'.
        """
        self._check(x)
        low, inv_range, _, _ = self._constants(x.device)
        out = x.to(torch.float32) - low  # a new tensor: the in-place ops below never touch x
        return out.mul_(inv_range).clamp_(0.0, 1.0)

    def normalize(self, x_unit: Tensor) -> Tensor:
        """Unit-range ``[B, C, H, W]`` -> ``(x - mean) / std`` in the input's float dtype."""
        self._check(x_unit)
        _, _, mean, inv_std = self._constants(x_unit.device)
        return (x_unit - mean.to(x_unit.dtype)) * inv_std.to(x_unit.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        return self.normalize(self.to_unit(x))

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, for YAML configs and checkpoints."""
        return {name: list(getattr(self, name)) for name in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: for missing keys, non-numeric values or inconsistent lengths.
        """
        missing = [k for k in _FIELDS if k not in d]
        if missing:
            raise ConfigError(f"normalization is missing {', '.join(missing)} "
                              f"(expected keys {', '.join(_FIELDS)})")
        try:
            values = {k: [float(v) for v in d[k]] for k in _FIELDS}
        except (TypeError, ValueError):
            raise ConfigError(f"normalization values must be lists of numbers, got {d}") from None
        return cls(**values)


def _given(values: Sequence[float] | None, channels: int, option: str) -> list[float] | None:
    """A user-given per-channel list: one value per channel, or one value for all."""
    if values is None:
        return None
    vals = [float(v) for v in values]
    if len(vals) == 1:
        return vals * channels
    if len(vals) != channels:
        raise ConfigError(f"{option} has {len(vals)} values but the data have {channels} "
                          "channel(s); give one value per channel (or one for all)")
    return vals


def _sample_batches(ds: ImageDataset, n: int, seed: int, chunk: int = 256) -> Iterator[Tensor]:
    """``n`` images of ``ds`` drawn without replacement (seeded), in CPU batches of ``chunk``."""
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    for i in range(0, len(idx), chunk):
        yield ds.get_batch(idx[i : i + chunk])[0].cpu()


def _percentiles(batches: Iterable[Tensor], seed: int, q: tuple[float, float],
                 max_pixels: int = 1 << 18) -> tuple[list[float], list[float]]:
    """Per-channel quantiles ``q`` of about ``max_pixels`` pixels drawn at random from batches."""
    g = torch.Generator().manual_seed(seed)
    batches = list(batches)
    quota = max(1, max_pixels // len(batches))
    parts = []
    for b in batches:
        flat = b.transpose(0, 1).reshape(b.shape[1], -1)  # [C, B*H*W]
        if flat.shape[1] > quota:
            flat = flat[:, torch.randperm(flat.shape[1], generator=g)[:quota]]
        parts.append(flat.float())
    pixels = torch.cat(parts, dim=1)
    qs = torch.tensor(q, dtype=torch.float32)
    lo, hi = torch.stack([torch.quantile(p, qs) for p in pixels]).T.tolist()
    return lo, hi


def compute_normalization(
    ds: ImageDataset,
    *,
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_samples: int = 10000,
    seed: int = 0,
) -> Normalization:
    """Estimate per-channel statistics of ``ds`` from a seeded sample of its images.

    ``low``/``high``: 0/255 for uint8; otherwise the 0.5th/99.5th percentiles over about 2^18
    pixels per channel (a channel with ``high <= low`` gets ``high = low + 1``). ``mean``/``std``:
    per channel in unit range over up to ``max_samples`` images (at most 1000 for folder
    datasets, whose images are decoded here), ``std`` at least 1e-6. Any of the four given
    (``DataConfig.low/high/mean/std``) is used as is; one value is broadcast to every channel.

    Raises:
        ConfigError: for a given list whose length is neither 1 nor the channel count (naming
            ``data.low``, ``data.high``, ``data.mean`` or ``data.std``), or ``max_samples < 1``.
    """
    if max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1, got {max_samples}")
    c = ds.channels
    low_v, high_v = _given(low, c, "data.low"), _given(high, c, "data.high")
    mean_v, std_v = _given(mean, c, "data.mean"), _given(std, c, "data.std")
    n = min(len(ds), max_samples if ds.in_memory else min(max_samples, 1000))
    if low_v is None or high_v is None:
        if ds.dtype == torch.uint8:
            lo_est, hi_est = [0.0] * c, [255.0] * c
        else:  # percentiles from the first <= 1024 sampled images
            lo_est, hi_est = _percentiles(_sample_batches(ds, min(n, 1024), seed), seed,
                                          (0.005, 0.995))
        low_v = low_v if low_v is not None else lo_est
        high_v = high_v if high_v is not None else hi_est
    high_v = [h if h > lo else lo + 1.0 for lo, h in zip(low_v, high_v)]
    if mean_v is None or std_v is None:
        unit = Normalization(low_v, high_v, [0.0] * c, [1.0] * c)
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        count = 0
        for b in _sample_batches(ds, n, seed):
            u = unit.to_unit(b).double()
            total += u.sum(dim=(0, 2, 3))
            total_sq += (u * u).sum(dim=(0, 2, 3))
            count += u.shape[0] * u.shape[2] * u.shape[3]
        m = total / count
        var = (total_sq / count - m * m).clamp_min(0.0)
        mean_v = mean_v if mean_v is not None else m.tolist()
        std_v = std_v if std_v is not None else [max(s, 1e-6) for s in var.sqrt().tolist()]
    return Normalization(low_v, high_v, mean_v, std_v)
