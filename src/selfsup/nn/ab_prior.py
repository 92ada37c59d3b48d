"""The empirical distribution of quantised ab colours over the training data, gathered during
training (colorization's class-rebalancing prior, Zhang et al. 2016, sec. 2.2).

The paper estimates the prior once from the full ImageNet training set before training
(``resources/prior_probs.npy``). Here it is estimated from the user's own training data while the
run goes: :class:`ABPrior` counts the nearest bin of every target pixel of the first
``num_images`` training images (the method passes one epoch, the dataset size) and then stops
counting. The counts and the number of images seen are persistent buffers, so the prior is in
``state_dict()``: a resumed run continues gathering (or keeps the frozen prior) exactly where it
stopped. Counts are summed over ranks (``all_reduce``) at every update, so every rank holds the
same prior as one process on the global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError
from selfsup.utils import dist

__all__ = ["ABPrior"]


class ABPrior(nn.Module):
    """Counts of the bins of the first ``num_images`` training images, summed over ranks.

    Args:
        num_bins: ``Q``, the number of ab bins.
        num_images: images to gather the prior from (then it is frozen); >= 1.

    Attributes:
        counts: ``[Q]`` float64 pixel counts per bin (exact integers up to 2^53).
        images: ``[]`` int64, the images counted so far (over all ranks).

    Raises:
        ConfigError: if ``num_bins`` or ``num_images`` is < 1.
    """

    counts: Tensor
    images: Tensor

    def __init__(self, num_bins: int, num_images: int) -> None:
        super().__init__()
        if num_bins < 1 or num_images < 1:
            raise ConfigError(f"ABPrior needs num_bins >= 1 and num_images >= 1, got {num_bins} "
                              f"and {num_images} (method_args.num_samples)")
        self.num_images = num_images
        self.register_buffer("counts", torch.zeros(num_bins, dtype=torch.float64))
        self.register_buffer("images", torch.zeros((), dtype=torch.int64))

    @property
    def gathering(self) -> bool:
        """Whether the prior still counts (fewer than ``num_images`` images seen)."""
        return int(self.images) < self.num_images

    @torch.no_grad()
    def update(self, index: Tensor, valid: Tensor) -> None:
        """Count one (local) batch if the prior is still gathering; the batch that crosses
        ``num_images`` is counted whole.

        Args:
            index: ``[B, ...]`` int64 bin of every target pixel of the ``B`` images.
            valid: ``[B]`` bool, the images that count (colorization: the non-grey ones); every
                image, valid or not, adds to ``images``.

        Raises:
            DataError: if ``valid`` is not ``[B]`` for ``index``'s ``B``.
        """
        if valid.shape != index.shape[:1]:
            raise DataError(f"ABPrior.update expects valid [{index.shape[0]}], got "
                            f"{tuple(valid.shape)}")
        if not self.gathering:
            return
        q = self.counts.numel()
        keep = valid.view(-1, *([1] * (index.dim() - 1))).expand_as(index).to(self.counts)
        # scatter_add rather than bincount of a masked selection: no host sync on accelerators
        local = torch.zeros_like(self.counts).scatter_add_(0, index.flatten(), keep.flatten())
        stats = torch.cat([local, local.new_tensor([float(index.shape[0])])])
        dist.all_reduce_sum(stats)  # the global batch's counts, the same on every rank
        self.counts += stats[:q]
        self.images += stats[q].to(self.images.dtype)
