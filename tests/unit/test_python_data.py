"""Data from Python: arrays, tensors, (images, labels) and Datasets through open_dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from selfsup.data.datasets import open_dataset
from selfsup.data.python_data import describe
from selfsup.types import DataError


def test_nhwc_uint8_array_kept_exactly() -> None:
    x = np.random.default_rng(0).integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    ds = open_dataset(x)
    assert ds.channels == 3 and ds.image_size == (12, 12) and ds.dtype == torch.uint8
    assert not ds.has_labels and len(ds) == 10
    img, label, idx = ds[4]
    assert torch.equal(img, torch.from_numpy(x[4]).permute(2, 0, 1)) and label == -1 and idx == 4


def test_tensor_with_labels_and_limit() -> None:
    x = torch.rand(20, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(20) % 4
    ds = open_dataset((x, y), limit=6)
    assert len(ds) == 6 and ds.dtype == torch.float32 and ds.labels.tolist() == y[:6].tolist()
    torch.testing.assert_close(ds[5][0], x[5].float())


def test_a_dataset_of_tuples_pil_and_mixed_sizes() -> None:
    x = torch.rand(7, 3, 8, 8)
    ds = open_dataset(TensorDataset(x, torch.arange(7)))
    assert ds.labels.tolist() == list(range(7))
    torch.testing.assert_close(ds[3][0], x[3])

    class Pil(Dataset):
        def __init__(self, sizes: list[int]) -> None:
            self.sizes = sizes

        def __len__(self) -> int:
            return len(self.sizes)

        def __getitem__(self, i: int) -> tuple[Image.Image, int]:
            arr = np.full((self.sizes[i], self.sizes[i], 3), 10 * i, dtype=np.uint8)
            return Image.fromarray(arr), i % 2

    ds = open_dataset(Pil([6, 6, 6]))
    assert ds.dtype == torch.uint8 and ds.image_size == (6, 6) and int(ds[2][0][0, 0, 0]) == 20
    with pytest.raises(DataError, match=r"item 1 is \(3, 9, 9\).*set data.image_size"):
        open_dataset(Pil([6, 9]))
    ds = open_dataset(Pil([6, 9, 12]), image_size=4)
    assert ds.image_size == (4, 4) and len(ds) == 3


def test_bad_objects_and_labels() -> None:
    with pytest.raises(DataError, match="torch.utils.data.Dataset"):
        open_dataset(3.5)
    with pytest.raises(DataError, match="labels have shape"):
        open_dataset((np.zeros((4, 8, 8), np.uint8), np.zeros(3)))

    class BadLabel(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
            return torch.zeros(1, 4, 4), "cat"

    with pytest.raises(DataError, match="label 'cat' is not an integer"):
        open_dataset(BadLabel())
    with pytest.raises(DataError, match="was a Python object"):
        open_dataset("python:ndarray[4x8x8 uint8]")


def test_describe_is_deterministic() -> None:
    x = np.zeros((4, 8, 8), np.uint8)
    assert describe(x) == "python:ndarray[4x8x8 uint8]"
    assert describe((torch.zeros(2, 1, 3, 3), [0, 1])) == "python:Tensor[2x1x3x3 float32] with labels"
    assert describe(TensorDataset(torch.zeros(5, 1))) == "python:TensorDataset[5]"
