"""Mask samplers for masked image modeling (MAE, SimMIM, BEiT, I-JEPA): exact counts, agreement of
the returned index/boolean tensors, block geometry, per-sample and seeded randomness, bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from selfsup.nn.block_masks import block_mask, multiblock_masks
from selfsup.nn.masking import random_masking, simmim_mask
from selfsup.types import ConfigError


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _is_filled_rectangle(cells: Tensor, height: int, width: int) -> tuple[int, int] | None:
    """``(h, w)`` if the flat indices ``cells`` are exactly a filled axis-aligned rectangle."""
    rows, cols = cells // width, cells % width
    h = int(rows.max() - rows.min()) + 1
    w = int(cols.max() - cols.min()) + 1
    return (h, w) if len(set(cells.tolist())) == cells.numel() == h * w else None


def _edges(mask: Tensor, side: int) -> float:
    """Mean number of masked/visible neighbour pairs per sample (a mask's perimeter)."""
    m = mask.view(-1, side, side)
    return float((m[:, 1:] != m[:, :-1]).sum() + (m[:, :, 1:] != m[:, :, :-1]).sum()) / len(m)


# ---------------------------------------------------------------- MAE random masking


@pytest.mark.parametrize(("n", "ratio", "keep"),
                         [(196, 0.75, 49), (7, 0.5, 3), (10, 0.35, 6), (16, 0.0, 16), (4, 0.9, 1)])
def test_random_masking_counts_as_reference(n: int, ratio: float, keep: int) -> None:
    # int() truncation as MAE (7 * 0.5 = 3.5 keeps 3, not 4), and at least one patch kept
    assert keep == max(1, int(n * (1 - ratio)))
    s = random_masking(5, n, ratio, generator=_g(0))
    assert s.keep.shape == (5, keep) and s.keep.dtype == torch.int64
    assert s.mask.shape == (5, n) and s.mask.dtype == torch.bool
    assert s.ids_restore.shape == (5, n) and s.ids_restore.dtype == torch.int64
    assert s.mask.sum(1).tolist() == [n - keep] * 5


def test_random_masking_keep_mask_and_restore_agree() -> None:
    b, n = 6, 16
    s = random_masking(b, n, 0.75, generator=_g(1))
    # ids_restore is a permutation whose inverse starts with keep (the reference's shuffle order)
    ids_shuffle = torch.argsort(s.ids_restore, dim=1)
    assert torch.equal(ids_shuffle.sort(1).values, torch.arange(n).expand(b, n))
    assert torch.equal(ids_shuffle[:, : s.keep.shape[1]], s.keep)
    assert not torch.equal(s.keep, s.keep.sort(1).values)  # shuffle order, not sorted
    # mask is False exactly at the kept patches
    visible = torch.ones(b, n, dtype=torch.bool).scatter(1, s.keep, False)
    assert torch.equal(visible, s.mask)
    # MAE's decoder: [visible tokens, mask tokens] gathered with ids_restore undoes the shuffle
    x = torch.arange(n).expand(b, n)
    kept = x.gather(1, s.keep)
    full = torch.cat([kept, torch.full((b, n - kept.shape[1]), -1)], dim=1)
    restored = full.gather(1, s.ids_restore)
    assert torch.equal(restored, torch.where(s.mask, torch.tensor(-1), x))


def test_random_masking_per_sample_and_seeded() -> None:
    a = random_masking(8, 32, 0.5, generator=_g(3))
    assert len({tuple(r.tolist()) for r in a.mask}) == 8  # every sample its own mask
    b = random_masking(8, 32, 0.5, generator=_g(3))
    c = random_masking(8, 32, 0.5, generator=_g(4))
    assert torch.equal(a.keep, b.keep) and torch.equal(a.ids_restore, b.ids_restore)
    assert not torch.equal(a.mask, c.mask)
    torch.manual_seed(5)  # no generator: torch's global RNG
    d = random_masking(8, 32, 0.5)
    torch.manual_seed(5)
    assert torch.equal(d.mask, random_masking(8, 32, 0.5).mask)


# ---------------------------------------------------------------- SimMIM


@pytest.mark.parametrize(("grid", "mask_patch", "model_patch", "ratio", "count"),
                         [(48, 32, 4, 0.6, 22), (8, 8, 4, 0.52, 9), (14, 32, 16, 0.6, 30),
                          (8, 4, 4, 0.5, 32)])
def test_simmim_masks_aligned_squares_with_exact_count(grid: int, mask_patch: int,
                                                       model_patch: int, ratio: float,
                                                       count: int) -> None:
    scale, b = mask_patch // model_patch, 6
    side = grid // scale
    assert count == math.ceil(side * side * ratio)  # ceil, as SimMIM (int or round give 8 of 16)
    m = simmim_mask(b, grid, mask_patch, model_patch, ratio, generator=_g(0))
    assert m.shape == (b, grid * grid) and m.dtype == torch.bool
    blocks = m.view(b, side, scale, side, scale)
    coarse = blocks[:, :, 0, :, 0]
    # every aligned scale x scale square is all masked or all visible
    assert torch.equal(blocks, coarse[:, :, None, :, None].expand_as(blocks))
    assert coarse.flatten(1).sum(1).tolist() == [count] * b
    assert m.sum(1).tolist() == [count * scale * scale] * b


def test_simmim_per_sample_seeded_and_small_images() -> None:
    # 32 px images, model patch 4 (8 x 8 tokens): the caller scales the mask patch to 8 px
    a = simmim_mask(8, 8, 8, 4, 0.6, generator=_g(1))
    assert len({tuple(r.tolist()) for r in a}) == 8
    assert torch.equal(a, simmim_mask(8, 8, 8, 4, 0.6, generator=_g(1)))
    assert not torch.equal(a, simmim_mask(8, 8, 8, 4, 0.6, generator=_g(2)))


def test_simmim_bad_mask_patch_names_option_and_valid_sizes() -> None:
    with pytest.raises(ConfigError, match=r"method_args\.mask_patch_size.*4, 8, 16, 32"):
        simmim_mask(2, 8, 6, 4, 0.6)  # not a multiple of the model patch
    with pytest.raises(ConfigError, match=r"method_args\.mask_patch_size"):
        simmim_mask(2, 8, 12, 4, 0.6)  # scale 3 does not divide the 8-token grid
    with pytest.raises(ConfigError, match=r"method_args\.mask_ratio"):
        simmim_mask(2, 8, 8, 4, 1.0)


# ---------------------------------------------------------------- BEiT blockwise


def test_block_mask_never_exceeds_target_and_mean_is_close() -> None:
    m = block_mask(300, 14, 14, 75, generator=_g(0))  # BEiT: 75 of 196, blocks >= 16
    assert m.shape == (300, 196) and m.dtype == torch.bool
    counts = m.sum(1).float()
    assert int(counts.max()) <= 75 and float(counts.mean()) > 72  # may fall a little short
    # blocks, not scattered cells: far less perimeter than uniform masks of the same size
    uniform = random_masking(300, 196, 1 - 121 / 196, generator=_g(0)).mask
    assert _edges(m, 14) < 0.6 * _edges(uniform, 14)


def test_block_mask_small_grid_with_lower_min_patches() -> None:
    # on 8 x 8 the BEiT minimum of 16 would be a quarter of the grid: pass 4
    m = block_mask(300, 8, 8, 24, min_num_patches=4, generator=_g(1))
    counts = m.sum(1).float()
    assert int(counts.max()) <= 24 and float(counts.mean()) > 22
    assert len({tuple(r.tolist()) for r in m[:8]}) == 8


@pytest.mark.parametrize(("area", "aspect", "shape"), [(16, 1.0, (4, 4)), (12, 3.0, (6, 2)),
                                                       (12, 1 / 3, (2, 6))])
def test_block_mask_one_block_is_a_rectangle_of_the_drawn_shape(
        area: int, aspect: float, shape: tuple[int, int]) -> None:
    # area fixed to the target and aspect fixed: h = round(sqrt(s r)), w = round(sqrt(s / r))
    m = block_mask(20, 8, 8, area, min_num_patches=area, min_aspect=aspect, max_aspect=aspect,
                   generator=_g(2))
    for row in m:
        assert _is_filled_rectangle(row.nonzero().squeeze(1), 8, 8) == shape
    assert len({tuple(r.tolist()) for r in m}) > 1  # positions differ across samples


def test_blocks_reach_every_position_where_they_fit() -> None:
    # 25 places for a 4 x 4 block on 8 x 8: over many samples both far corners get masked
    m = block_mask(200, 8, 8, 16, min_num_patches=16, min_aspect=1.0, generator=_g(7))
    assert bool(m[:, 0].any()) and bool(m[:, 63].any())
    s = multiblock_masks(100, 8, 8, target_scale=(0.15, 0.15), target_aspect=(1.0, 1.0),
                         min_keep=4, generator=_g(7))
    assert s.target_size == (3, 3)
    cells = torch.cat(s.targets, dim=1)
    assert bool((cells == 0).any()) and bool((cells == 63).any())


def test_block_mask_reference_fit_rule_and_seeding() -> None:
    # a block as wide as the grid never fits (the reference's strict w < width)
    assert not block_mask(4, 8, 8, 8, min_num_patches=8, min_aspect=1 / 8, max_aspect=1 / 8,
                          generator=_g(0)).any()
    a = block_mask(6, 14, 14, 75, generator=_g(3))
    assert torch.equal(a, block_mask(6, 14, 14, 75, generator=_g(3)))
    assert not torch.equal(a, block_mask(6, 14, 14, 75, generator=_g(4)))


# ---------------------------------------------------------------- I-JEPA multi-block


@pytest.mark.parametrize(("side", "min_keep"), [(14, 10), (8, 4)])
def test_multiblock_targets_context_and_shapes(side: int, min_keep: int) -> None:
    b, n = 16, side * side
    s = multiblock_masks(b, side, side, min_keep=min_keep, generator=_g(0))
    th, tw = s.target_size
    assert len(s.targets) == 4 and 1 <= th < side and 1 <= tw < side
    assert s.context.dtype == torch.int64 and s.context.shape[0] == b
    assert s.context.shape[1] >= min_keep
    for t in s.targets:
        assert t.shape == (b, th * tw) and t.dtype == torch.int64
    for i in range(b):
        ctx = s.context[i]
        assert torch.equal(ctx, ctx.sort().values) and len(set(ctx.tolist())) == ctx.numel()
        assert int(ctx.min()) >= 0 and int(ctx.max()) < n
        ch, cw = s.context_size
        rows, cols = ctx // side, ctx % side  # inside one ch x cw block
        assert int(rows.max() - rows.min()) < ch and int(cols.max() - cols.min()) < cw
        for t in s.targets:
            assert _is_filled_rectangle(t[i], side, side) == (th, tw)
            assert not set(t[i].tolist()) & set(ctx.tolist())  # targets disjoint from context
    assert len({tuple(t[0].tolist()) for t in s.targets}) > 1  # each target its own position


def test_multiblock_block_sizes_follow_reference_formula() -> None:
    # n = int(64 * 0.25) = 16; aspect 4: h = round(sqrt(64)) = 8, shrunk to H - 1; w = 2
    s = multiblock_masks(4, 8, 8, num_targets=1, target_scale=(0.25, 0.25),
                         target_aspect=(4.0, 4.0), min_keep=1, generator=_g(1))
    assert s.target_size == (7, 2)
    # a context of the whole grid is shrunk to 7 x 7; with overlap it is that full rectangle
    s = multiblock_masks(6, 8, 8, context_scale=(1.0, 1.0), allow_overlap=True, generator=_g(1))
    assert s.context_size == (7, 7) and s.context.shape == (6, 49)
    for row in s.context:
        assert _is_filled_rectangle(row, 8, 8) == (7, 7)


def test_multiblock_truncates_to_batch_minimum() -> None:
    # contexts keep different numbers of cells; each is cut to the batch's shortest, keeping
    # its first sorted indices (I-JEPA's collate), so they stack
    b, side = 32, 14
    s = multiblock_masks(b, side, side, generator=_g(2))
    (ch, cw), kc = s.context_size, s.context.shape[1]
    assert kc < ch * cw
    full_lengths = []
    for i in range(b):
        ctx = s.context[i]
        top, left = int((ctx // side).min()), int((ctx % side).min())
        block = torch.zeros(side, side, dtype=torch.bool)
        block[top:top + ch, left:left + cw] = True  # the context block, from its first cells
        for t in s.targets:
            block.view(-1)[t[i]] = False
        full = block.flatten().nonzero().squeeze(1)
        assert torch.equal(ctx, full[:kc])  # a prefix of the untruncated context
        full_lengths.append(full.numel())
    assert min(full_lengths) == kc < max(full_lengths)


def test_multiblock_per_sample_and_seeded() -> None:
    a = multiblock_masks(8, 14, 14, generator=_g(5))
    b = multiblock_masks(8, 14, 14, generator=_g(5))
    c = multiblock_masks(8, 14, 14, generator=_g(6))
    assert torch.equal(a.context, b.context)
    assert all(torch.equal(x, y) for x, y in zip(a.targets, b.targets))
    assert len({tuple(r.tolist()) for r in a.targets[0]}) > 1
    assert not (torch.equal(a.context, c.context)
                and all(torch.equal(x, y) for x, y in zip(a.targets, c.targets)))


def test_multiblock_impossible_min_keep_raises() -> None:
    # a 4 x 4 context can never keep 17 cells
    with pytest.raises(ConfigError, match=r"method_args\.min_keep"):
        multiblock_masks(2, 8, 8, context_scale=(0.3, 0.3), min_keep=17, generator=_g(0))
    # four 6 x 6 targets always cover the middle 4 x 4 of an 8 x 8 grid: 40 cells never remain
    with pytest.raises(ConfigError, match=r"method_args\.min_keep.*tries"):
        multiblock_masks(2, 8, 8, target_scale=(0.6, 0.6), target_aspect=(1.0, 1.0),
                         min_keep=40, max_tries=20, generator=_g(0))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("call", "option"), [
    (lambda: random_masking(4, 16, 1.0), "mask_ratio"),
    (lambda: random_masking(4, 16, -0.1), "mask_ratio"),
    (lambda: random_masking(0, 16, 0.5), "batch"),
    (lambda: random_masking(4, 0, 0.5), "num_patches"),
    (lambda: simmim_mask(2, 8, 8, 0, 0.5), "model_patch"),
    (lambda: block_mask(2, 14, 14, 0), "num_masking_patches"),
    (lambda: block_mask(2, 14, 14, 197), "num_masking_patches"),
    (lambda: block_mask(2, 8, 8, 12), "min_num_patches"),
    (lambda: block_mask(2, 14, 14, 75, max_num_patches=8), "max_num_patches"),
    (lambda: block_mask(2, 14, 14, 75, min_aspect=0.0), "min_aspect"),
    (lambda: multiblock_masks(2, 14, 14, num_targets=0), "num_targets"),
    (lambda: multiblock_masks(2, 14, 14, target_scale=(0.2, 0.1)), "target_scale"),
    (lambda: multiblock_masks(2, 14, 14, context_scale=(0.85, 1.2)), "context_scale"),
    (lambda: multiblock_masks(2, 14, 14, target_aspect=(0.0, 1.0)), "target_aspect"),
    (lambda: multiblock_masks(2, 14, 14, min_keep=0), "min_keep"),
])
def test_bad_input_names_the_option(call: Callable[[], object], option: str) -> None:
    with pytest.raises(ConfigError, match=rf"method_args\.{option}"):
        call()
