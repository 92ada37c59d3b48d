"""Patch-mask samplers for masked image modeling: MAE, SimMIM, BEiT and I-JEPA masks.

Every sampler draws one mask per sample over a ViT's ``H x W`` patch grid (patch ``n`` is row
``n // W``, column ``n % W``) as index or boolean tensors a method hands to its encoder, so masks
can be sampled on the data side (a collator) or on the training device. Randomness comes from
``generator`` if given (drawn on its device and moved to ``device``: a CPU generator gives the
same masks on every device), else from torch's global RNG.

- :func:`random_masking`: MAE's uniform per-sample shuffle (He et al. 2022, sec. 3).
- :func:`simmim_mask`: SimMIM's random masking of coarse mask patches (Xie et al. 2022, sec. 3.1).
- :func:`block_mask`: BEiT's blockwise masking (Bao et al. 2022, sec. 2.5, Algorithm 1).
- :func:`multiblock_masks`: I-JEPA's target and context blocks (Assran et al. 2023, sec. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.types import ConfigError

__all__ = ["MaskSample", "MultiBlockSample", "block_mask", "multiblock_masks", "random_masking",
           "simmim_mask"]

Device = torch.device | str | None


@dataclass(frozen=True)
class MaskSample:
    """One MAE mask per sample (the outputs of MAE's ``random_masking`` without the gather).

    Attributes:
        keep: ``[B, K]`` int64 indices of the visible patches in shuffle order
            (``ids_shuffle[:, :K]``); ``x.gather(1, keep[..., None].expand(-1, -1, D))`` gives
            the encoder's input.
        mask: ``[B, N]`` bool in the original patch order, True where a patch is removed.
        ids_restore: ``[B, N]`` int64 inverse permutation: gathering ``[visible, mask tokens]``
            with it puts every token back at its patch position (MAE's decoder).
    """

    keep: Tensor
    mask: Tensor
    ids_restore: Tensor


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


def random_masking(batch: int, num_patches: int, mask_ratio: float, *, device: Device = None,
                   generator: torch.Generator | None = None) -> MaskSample:
    """MAE's per-sample random masking (He et al. 2022, sec. 3 "Masking"; ``random_masking``).

    Each sample gets uniform noise ``[N]``; ``ids_shuffle = argsort(noise)`` (ascending: small
    is kept), ``ids_restore = argsort(ids_shuffle)`` and the first
    ``K = int(N * (1 - mask_ratio))`` shuffled patches are kept, computed exactly as the
    reference (``int`` truncates: 7 patches at ratio 0.5 keep 3), but at least 1.

    Args:
        batch: number of samples ``B`` (>= 1).
        num_patches: patches per sample ``N`` (>= 1).
        mask_ratio: fraction removed, in ``[0, 1)`` (MAE: 0.75).
        device: where the returned tensors live (default CPU).
        generator: source of the noise; None uses torch's global RNG on ``device``.

    Returns:
        :class:`MaskSample` with ``keep [B, K]``, ``mask [B, N]`` (``N - K`` True per row) and
        ``ids_restore [B, N]``.

    Raises:
        ConfigError: for non-positive sizes or ``mask_ratio`` outside ``[0, 1)``.
    """
    _positive(batch=batch, num_patches=num_patches)
    _ratio(mask_ratio)
    len_keep = max(1, int(num_patches * (1 - mask_ratio)))
    noise = _rand((batch, num_patches), device, generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=noise.device)
    mask[:, :len_keep] = False  # in shuffle order, then back to patch order
    return MaskSample(keep=ids_shuffle[:, :len_keep], mask=mask.gather(1, ids_restore),
                      ids_restore=ids_restore)


def simmim_mask(batch: int, grid: int, mask_patch: int, model_patch: int, mask_ratio: float, *,
                device: Device = None, generator: torch.Generator | None = None) -> Tensor:
    """SimMIM's random masking of coarse mask patches (Xie et al. 2022, sec. 3.1;
    ``data_simmim.py`` ``MaskGenerator``).

    The model sees a ``grid x grid`` token grid (image size / ``model_patch``). Masking is
    decided on the coarser ``grid / scale`` grid of ``mask_patch``-pixel patches, with
    ``scale = mask_patch // model_patch`` tokens per side: per sample exactly
    ``ceil(M * mask_ratio)`` of its ``M = (grid / scale)^2`` mask patches are drawn without
    replacement, each masking its aligned ``scale x scale`` tokens (SimMIM: 192 px, model patch
    4, mask patch 32, ratio 0.6 masks 22 of 36). Small images need a smaller mask patch: the
    caller scales it, e.g. 32 px images with model patch 4 (grid 8) and mask patch 8 (scale 2).

    Args:
        batch: number of samples ``B`` (>= 1).
        grid: model tokens per side (>= 1).
        mask_patch: mask patch size in pixels, a multiple of ``model_patch``.
        model_patch: the model's patch size in pixels (>= 1).
        mask_ratio: fraction of mask patches masked, in ``[0, 1)`` (SimMIM: 0.6).
        device: where the mask lives (default CPU).
        generator: source of randomness; None uses torch's global RNG on ``device``.

    Returns:
        ``[B, grid * grid]`` bool, True where a token is masked.

    Raises:
        ConfigError: naming ``method_args.mask_patch_size`` (and listing the sizes that work)
            when ``mask_patch`` is not a multiple of ``model_patch`` or ``grid`` is not a
            multiple of ``scale``; for non-positive sizes or a ratio outside ``[0, 1)``.
    """
    _positive(batch=batch, grid=grid, model_patch=model_patch, mask_patch_size=mask_patch)
    _ratio(mask_ratio)
    scale = mask_patch // model_patch
    if mask_patch % model_patch or grid % scale:
        ok = ", ".join(str(model_patch * d) for d in range(1, grid + 1) if grid % d == 0)
        raise ConfigError(
            f"method_args.mask_patch_size = {mask_patch} does not tile a {grid} x {grid} grid of "
            f"{model_patch} px patches: it must be a multiple of the model patch whose scale "
            f"divides the grid; sizes that work: {ok}"
        )
    side = grid // scale
    count = int(math.ceil(side * side * mask_ratio))  # as the reference's int(np.ceil(...))
    order = torch.argsort(_rand((batch, side * side), device, generator), dim=1)
    coarse = torch.zeros(batch, side * side, dtype=torch.bool, device=order.device)
    coarse.scatter_(1, order[:, :count], True)
    coarse = coarse.view(batch, side, side)
    fine = coarse.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return fine.reshape(batch, grid * grid)


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


def _rand(shape: tuple[int, int], device: Device, generator: torch.Generator | None) -> Tensor:
    """Uniform noise on ``device``, drawn on the generator's device when one is given."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device or "cpu")


def _positive(**sizes: int) -> None:
    """Raise a ConfigError naming ``method_args.<key>`` unless every size is an int >= 1."""
    for key, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"method_args.{key} must be a positive integer, got {v!r}")


def _ratio(mask_ratio: float) -> None:
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"method_args.mask_ratio must be in [0, 1), got {mask_ratio!r}")


def _range(key: str, bounds: tuple[float, float], upper: float) -> None:
    if not 0.0 < bounds[0] <= bounds[1] <= upper:
        limit = f" <= {upper:g}" if upper < math.inf else ""
        raise ConfigError(f"method_args.{key} must be a range (lo, hi) with 0 < lo <= hi{limit}, "
                          f"got {bounds!r}")
