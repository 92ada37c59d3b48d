"""Permutation sets of maximal Hamming distance, the classes of the Jigsaw puzzle task.

Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", sec. 3.2 and Algorithm 1 (reference: bbrattoli/JigsawPuzzlePytorch
``select_permutations.py``, ``--selection max``; the authors' Caffe release ships the result as
``permutations_100_max.bin``). The set is built greedily from all ``n!`` permutations of the
tiles: the first one is drawn uniformly, then each step adds the remaining permutation whose
*summed* Hamming distance to the permutations already chosen is largest (``D = Hamming(P,
P_hat)``, ``D_bar = 1^T D``, ``j = argmax_k D_bar_k``), ties going to the first in lexicographic
order (NumPy's ``argmax``, as the reference). The criterion is the average distance, so the
minimal distance of the set is whatever the greedy reaches (2 for every set size >= 100 with
9 tiles: see ``tests/unit/test_jigsaw.py``).

The running sum ``D_bar`` is updated with one vectorised comparison per added permutation, so
1000 permutations of 9 tiles take about a second; results are cached per ``(num, n, seed)``.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from selfsup.types import ConfigError

__all__ = ["all_permutations", "hamming", "maximal_hamming_permutations"]

_TAKEN = 2**30  # agreement count of a chosen permutation: above any real count


@functools.cache
def all_permutations(n: int) -> Tensor:
    """Every permutation of ``range(n)`` in lexicographic order (``itertools.permutations``),
    ``[n!, n]`` uint8."""
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.uint8)


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Hamming distances (number of differing positions) ``[k, m]`` between the rows of
    ``a`` ``[k, n]`` and ``b`` ``[m, n]``."""
    return (a[:, None, :] != b[None, :, :]).sum(-1)


@functools.cache
def _by_position(n: int) -> Tensor:
    """``[n, n, (n-1)!]`` int64: entry ``[i, v]`` lists the candidates with tile ``v`` at
    position ``i``."""
    cands = all_permutations(n).long()
    order = torch.argsort(cands * cands.shape[0] + torch.arange(cands.shape[0])[:, None], dim=0)
    # column i sorted by value: blocks of (n-1)! candidates per value, each in ascending order
    return order.T.reshape(n, n, -1).contiguous()


@functools.cache
def _greedy(num: int, n: int, seed: int) -> Tensor:
    cands = all_permutations(n)
    where = _by_position(n)
    gen = torch.Generator().manual_seed(seed)
    j = int(torch.randint(cands.shape[0], (1,), generator=gen))
    # agreements A_k = sum over chosen p of #{i: p_i = cand_k,i}; D_bar_k = n |P| - A_k, so
    # argmax D_bar = argmin A (first one on ties, as np.argmax over D_bar)
    agree = torch.zeros(cands.shape[0], dtype=torch.int32)
    ones = torch.ones(cands.shape[0], dtype=torch.int32)  # n positions x (n-1)! candidates
    rows = torch.arange(n)
    chosen = []
    for _ in range(num):
        chosen.append(j)
        agree.index_add_(0, where[rows, cands[j].long()].flatten(), ones)
        agree[j] = _TAKEN  # removed from P_hat (stays far above any count)
        j = int(agree.argmin())
    return cands[chosen].long()


def maximal_hamming_permutations(num: int, n: int = 9, seed: int = 0) -> Tensor:
    """``num`` permutations of ``n`` tiles chosen by the paper's greedy maximal-Hamming rule.

    Args:
        num: number of permutations P (the puzzle's classes): 1000 in the paper's best setting,
            100 in the released Caffe model.
        n: number of tiles (9 for the 3x3 puzzle).
        seed: seed of the uniformly drawn first permutation (the only random choice).

    Returns:
        ``[num, n]`` int64; row ``k`` is class ``k``'s permutation.

    Raises:
        ConfigError: naming ``method_args.num_permutations`` if ``num`` is not in ``[2, n!]``.
    """
    if not 2 <= num <= math.factorial(n):
        raise ConfigError(f"method_args.num_permutations must be in [2, {math.factorial(n)}] "
                          f"({n}! orderings of {n} tiles), got {num}")
    return _greedy(num, n, seed).clone()
