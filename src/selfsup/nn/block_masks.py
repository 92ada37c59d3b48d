"""Block-shaped patch masks for masked image modeling: BEiT's blockwise masks and I-JEPA's
target and context blocks, with the conventions of :mod:`selfsup.nn.masking` (row-major patch
grid, per-sample masks, an optional ``torch.Generator``).

- :func:`block_mask`: BEiT's blockwise masking (Bao et al. 2022, sec. 2.5, Algorithm 1).
- :func:`multiblock_masks`: I-JEPA's target and context blocks (Assran et al. 2023, sec. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.nn.masking import Device, _positive
from selfsup.types import ConfigError

__all__ = ["MultiBlockSample", "block_mask", "multiblock_masks"]


@dataclass(frozen=True)
class MultiBlockSample:
    """I-JEPA masks of one batch.

    Attributes:
        context: ``[B, Kc]`` int64 sorted patch indices of the context (encoder input).
        targets: ``num_targets`` tensors ``[B, Kt]`` int64, each a target block's sorted indices.
        target_size: ``(h, w)`` of every target block of the batch.
        context_size: ``(h, w)`` of the context block before targets are removed from it.
    """

    context: Tensor
    targets: list[Tensor]
    target_size: tuple[int, int]
    context_size: tuple[int, int]


def block_mask(batch: int, height: int, width: int, num_masking_patches: int, *,
               min_num_patches: int = 16, max_num_patches: int | None = None,
               min_aspect: float = 0.3, max_aspect: float | None = None, device: Device = None,
               generator: torch.Generator | None = None) -> Tensor:
    """BEiT's blockwise masking (Bao et al. 2022, sec. 2.5, Algorithm 1; ``MaskingGenerator``).

    Per sample, rounds of the reference's ``_mask`` run while fewer than
    ``num_masking_patches`` cells are masked. A round makes up to 10 attempts; each draws an
    area ``s ~ U(min_num_patches, budget)`` with ``budget = min(target - masked,
    max_num_patches)``, an aspect ``r`` with ``log r ~ U(log min_aspect, log max_aspect)``,
    ``h = round(sqrt(s r))``, ``w = round(sqrt(s / r))``; a block with ``h < height`` and
    ``w < width`` (strictly, as the reference) is placed at a uniform position and accepted only
    if it adds ``0 < new <= budget`` unmasked cells, which ends the round. A round that masks
    nothing stops the sample.

    So a mask is a union of rectangles and **never exceeds** ``num_masking_patches``, but can
    fall short of it, as the reference's: once the budget is below ``min_num_patches``, areas
    come from ``[budget, min_num_patches]`` (``uniform(a, b)`` with ``a > b``) and only a block
    that mostly overlaps the mask fits.
    On a 14 x 14 grid with the BEiT setting (75 cells, ``min_num_patches = 16``) the mean is
    within a few cells of 75. On small grids ``min_num_patches = 16`` is a quarter of an
    8 x 8 grid: the caller passes a lower value (e.g. 4).

    Args:
        batch: number of samples ``B`` (>= 1).
        height: grid rows ``H`` (>= 1).
        width: grid columns ``W`` (>= 1).
        num_masking_patches: target masked cells per sample, in ``[1, H W]`` (BEiT: 75 of 196).
        min_num_patches: smallest block area drawn (BEiT: 16), in ``[1, num_masking_patches]``.
        max_num_patches: largest block area (default ``num_masking_patches``).
        min_aspect: smallest aspect ratio ``h / w`` (> 0; BEiT: 0.3).
        max_aspect: largest aspect ratio (default ``1 / min_aspect``).
        device: where the mask lives (default CPU; it is built on the CPU).
        generator: source of randomness; None uses torch's global CPU RNG.

    Returns:
        ``[B, H * W]`` bool, True where a patch is masked.

    Raises:
        ConfigError: naming the ``method_args`` option that is out of range.
    """
    _positive(batch=batch, height=height, width=width, min_num_patches=min_num_patches)
    if not 1 <= num_masking_patches <= height * width:
        raise ConfigError(f"method_args.num_masking_patches must lie in [1, {height * width}] "
                          f"for a {height} x {width} grid, got {num_masking_patches}")
    if min_num_patches > num_masking_patches:
        raise ConfigError(f"method_args.min_num_patches = {min_num_patches} exceeds num_masking_"
                          f"patches = {num_masking_patches}; lower it (e.g. 4 on an 8 x 8 grid)")
    max_num = num_masking_patches if max_num_patches is None else max_num_patches
    if max_num < min_num_patches:
        raise ConfigError(f"method_args.max_num_patches = {max_num} is below "
                          f"min_num_patches = {min_num_patches}")
    max_aspect = 1 / min_aspect if max_aspect is None and min_aspect > 0 else max_aspect
    if not (min_aspect > 0 and max_aspect is not None and max_aspect >= min_aspect):
        raise ConfigError(f"method_args.min_aspect/max_aspect must satisfy 0 < min_aspect <= "
                          f"max_aspect, got {min_aspect}, {max_aspect}")
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    rng = _Uniform(generator)
    out = torch.zeros(batch, height, width, dtype=torch.bool)
    for b in range(batch):
        mask, count = out[b], 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, max_num)
            delta = _add_block(mask, budget, min_num_patches, log_aspect, rng)
            if delta == 0:
                break
            count += delta
    return out.view(batch, height * width).to(device)


def _add_block(mask: Tensor, budget: int, min_area: int, log_aspect: tuple[float, float],
               rng: _Uniform) -> int:
    """One round of BEiT's ``_mask``: mask one block in place; return the cells it added."""
    height, width = mask.shape
    for _ in range(10):
        area = rng.uniform(min_area, budget)
        aspect = math.exp(rng.uniform(*log_aspect))
        h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if w < width and h < height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            block = mask[top:top + h, left:left + w]
            new = h * w - int(block.sum())
            if 0 < new <= budget:  # adds something and stays within the budget
                block.fill_(True)
                return new
    return 0


def multiblock_masks(batch: int, height: int, width: int, *, num_targets: int = 4,
                     target_scale: tuple[float, float] = (0.15, 0.2),
                     target_aspect: tuple[float, float] = (0.75, 1.5),
                     context_scale: tuple[float, float] = (0.85, 1.0),
                     context_aspect: tuple[float, float] = (1.0, 1.0), min_keep: int = 10,
                     allow_overlap: bool = False, max_tries: int = 100, device: Device = None,
                     generator: torch.Generator | None = None) -> MultiBlockSample:
    """I-JEPA's multi-block masks (Assran et al. 2023, sec. 3 and appendix; ``MaskCollator``).

    As the reference, the target block size and then the context block size are drawn once per
    batch (``_sample_block_size``): one uniform ``u`` sets both the scale
    ``s = lo + u (hi - lo)`` and the aspect ``r = lo + u (hi - lo)`` (so they move together),
    ``n = int(H W s)``, ``h = round(sqrt(n r))``, ``w = round(sqrt(n / r))``, shrunk to at most
    ``H - 1`` by ``W - 1``. Per sample, ``num_targets`` target blocks and one context block are
    placed at uniform positions and, unless ``allow_overlap``, the cells of every target are
    removed from the context. Index lists are sorted (``nonzero`` of the mask, row-major).

    Departures from the reference: positions range over every place a block fits (its
    exclusive ``randint(0, H - h)`` never reaches the last row and column); a sample is valid
    when its context keeps ``>= min_keep`` cells (reference: ``>``), an invalid one redraws all
    its positions up to ``max_tries`` times and then raises (the reference lets the context
    overlap targets); blocks are at least 1 x 1.

    As the reference, every sample's index lists are truncated to the batch's shortest so that
    they stack: a context keeps its first ``Kc`` sorted indices (targets all have ``h w``).
    The defaults are the paper's ImageNet ones (14 x 14 grid); on small grids (8 x 8) the
    caller lowers ``min_keep`` (e.g. 4).

    Args:
        batch: number of samples ``B`` (>= 1).
        height: grid rows ``H`` (>= 2).
        width: grid columns ``W`` (>= 2).
        num_targets: target blocks per sample (>= 1; I-JEPA: 4).
        target_scale: range of a target's share of the grid, in ``(0, 1]``.
        target_aspect: range of a target's ``h / w`` (> 0).
        context_scale: range of the context block's share of the grid, in ``(0, 1]``.
        context_aspect: range of the context's ``h / w`` (I-JEPA: square).
        min_keep: fewest context cells left after removing targets (>= 1; I-JEPA: 10).
        allow_overlap: keep context cells that lie in a target.
        max_tries: position draws per sample before giving up (>= 1).
        device: where the indices live (default CPU; they are built on the CPU).
        generator: source of randomness; None uses torch's global CPU RNG.

    Returns:
        :class:`MultiBlockSample` with ``context [B, Kc]``, ``targets`` (``num_targets`` x
        ``[B, Kt]``) and the two block sizes.

    Raises:
        ConfigError: naming the ``method_args`` option that is out of range, or
            ``method_args.min_keep`` when no placement keeps ``min_keep`` context cells.
    """
    _positive(batch=batch, num_targets=num_targets, min_keep=min_keep, max_tries=max_tries)
    if height < 2 or width < 2:
        raise ConfigError(f"multi-block masks need a grid of at least 2 x 2, got {height}x{width}")
    ranges = {"target_scale": target_scale, "target_aspect": target_aspect,
              "context_scale": context_scale, "context_aspect": context_aspect}
    for key, bounds in ranges.items():
        _range(key, bounds, upper=1.0 if key.endswith("scale") else math.inf)
    rng = _Uniform(generator)
    th, tw = _block_size(rng(), target_scale, target_aspect, height, width)
    ch, cw = _block_size(rng(), context_scale, context_aspect, height, width)
    if min_keep > ch * cw:
        raise ConfigError(f"method_args.min_keep = {min_keep} exceeds the {ch} x {cw} context "
                          f"block of a {height} x {width} grid; lower it (e.g. 4 on 8 x 8)")
    contexts, targets = [], []
    for _ in range(batch):
        for _ in range(max_tries):
            blocks = [_block(rng, th, tw, height, width) for _ in range(num_targets)]
            ctx = _block(rng, ch, cw, height, width)
            if not allow_overlap:
                for t in blocks:
                    ctx &= ~t
            if int(ctx.sum()) >= min_keep:
                break
        else:
            raise ConfigError(
                f"method_args.min_keep = {min_keep}: no placement of {num_targets} {th} x {tw} "
                f"targets left that many cells of the {ch} x {cw} context in {max_tries} tries; "
                "lower min_keep, num_targets or target_scale"
            )
        contexts.append(ctx.flatten().nonzero().squeeze(1))
        targets.append([t.flatten().nonzero().squeeze(1) for t in blocks])
    return MultiBlockSample(
        context=_stack_truncated(contexts).to(device),
        targets=[_stack_truncated([t[k] for t in targets]).to(device) for k in range(num_targets)],
        target_size=(th, tw), context_size=(ch, cw),
    )


def _block_size(u: float, scale: tuple[float, float], aspect: tuple[float, float], height: int,
                width: int) -> tuple[int, int]:
    """I-JEPA's ``_sample_block_size`` for one uniform ``u`` (at least 1 x 1)."""
    keep = int(height * width * (scale[0] + u * (scale[1] - scale[0])))
    ratio = aspect[0] + u * (aspect[1] - aspect[0])
    h, w = int(round(math.sqrt(keep * ratio))), int(round(math.sqrt(keep / ratio)))
    return max(1, min(h, height - 1)), max(1, min(w, width - 1))


def _block(rng: _Uniform, h: int, w: int, height: int, width: int) -> Tensor:
    """``[H, W]`` bool with one ``h x w`` block at a uniform position where it fits."""
    top, left = rng.randint(0, height - h), rng.randint(0, width - w)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top:top + h, left:left + w] = True
    return mask


def _stack_truncated(rows: list[Tensor]) -> Tensor:
    """Stack 1-D index lists after cutting each to the shortest (I-JEPA's collate)."""
    keep = min(len(r) for r in rows)
    return torch.stack([r[:keep] for r in rows])


class _Uniform:
    """Uniform ``[0, 1)`` doubles drawn in chunks from ``generator`` (on its device) or, if None,
    torch's global CPU RNG; the Python loops of the block samplers read them one by one."""

    def __init__(self, generator: torch.Generator | None, chunk: int = 512) -> None:
        self.generator, self.chunk = generator, chunk
        self.buffer: list[float] = []
        self.pos = 0

    def __call__(self) -> float:
        if self.pos == len(self.buffer):
            dev = self.generator.device if self.generator is not None else "cpu"
            draws = torch.rand(self.chunk, generator=self.generator, device=dev,
                               dtype=torch.float64)
            self.buffer, self.pos = draws.tolist(), 0
        self.pos += 1
        return self.buffer[self.pos - 1]

    def uniform(self, a: float, b: float) -> float:
        """``a + (b - a) u`` as Python's ``random.uniform`` (also for ``a > b``)."""
        return a + (b - a) * self()

    def randint(self, low: int, high: int) -> int:
        """Uniform integer in ``[low, high]``, both included (Python's ``random.randint``)."""
        return low + min(int(self() * (high - low + 1)), high - low)


def _range(key: str, bounds: tuple[float, float], upper: float) -> None:
    if not 0.0 < bounds[0] <= bounds[1] <= upper:
        limit = f" <= {upper:g}" if upper < math.inf else ""
        raise ConfigError(f"method_args.{key} must be a range (lo, hi) with 0 < lo <= hi{limit}, "
                          f"got {bounds!r}")
