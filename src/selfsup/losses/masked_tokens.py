"""Masked visual-token prediction loss (BEiT, Bao et al. 2022, sec. 2.3, eq. 1), a pure tensor
function.

:func:`masked_token_ce`: cross-entropy between the predicted distribution over the tokenizer's
vocabulary and the tokenizer's id, on the masked positions only:
``-sum_{(b, i) in M} log softmax(logits[b, i])[labels[b, i]] / n``, ``n = |M|`` (the mean over the
masked positions, as microsoft/unilm ``beit/engine_for_pretraining.py`` applies
``CrossEntropyLoss`` to the masked tokens' logits) or a given normaliser ``n`` (the mean count
over ranks, so that DDP's gradient average weights every masked patch of the global batch
equally).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.types import DataError

__all__ = ["masked_token_ce"]


def masked_token_ce(logits: Tensor, labels: Tensor, mask: Tensor,
                    normalizer: Tensor | float | None = None) -> Tensor:
    """BEiT's loss: cross-entropy of the masked positions' token ids.

    Args:
        logits: ``[B, N, V]`` scores over the vocabulary for every patch.
        labels: ``[B, N]`` int64 token ids in ``[0, V)`` (the tokenizer's, of the unmasked image).
        mask: ``[B, N]`` bool (or 0/1), True where the patch was masked (the only ones counted).
        normalizer: what the summed cross-entropy is divided by; None = the number of masked
            positions.

    Returns:
        scalar float32 loss.

    Raises:
        DataError: on mismatched shapes, labels outside ``[0, V)`` or a mask with no position.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2] or mask.shape != labels.shape:
        raise DataError(f"masked_token_ce expects logits [B, N, V], labels and mask [B, N], got "
                        f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}")
    m = mask.bool()
    if not bool(m.any()):
        raise DataError("masked_token_ce: the mask hides no patch")
    target = labels[m]
    if bool((target < 0).any() | (target >= logits.shape[-1]).any()):
        raise DataError(f"masked_token_ce: token ids must lie in [0, {logits.shape[-1]}) (the "
                        "tokenizer's vocabulary, method_args.vocab_size)")
    total = F.cross_entropy(logits[m].float(), target, reduction="sum")
    n = m.sum().to(torch.float32) if normalizer is None else normalizer
    out: Tensor = total / n
    return out
