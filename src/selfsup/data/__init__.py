"""L1 data: image sources (folders, array files, built-ins), loaders and intensity statistics.

Importing this package registers the built-in datasets (``selfsup list datasets``).
"""

from selfsup.data.datasets import ImageDataset, make_loader, open_dataset
from selfsup.data.splits import from_config, split_holdout, split_labeled
from selfsup.data.stats import Normalization, compute_normalization

__all__ = [
    "ImageDataset",
    "Normalization",
    "compute_normalization",
    "from_config",
    "make_loader",
    "open_dataset",
    "split_holdout",
    "split_labeled",
]
