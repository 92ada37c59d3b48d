"""Per-channel normalisation: closed-form constants, robust percentiles, overrides, round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.data.datasets import ImageDataset, open_dataset
from selfsup.data.stats import Normalization, compute_normalization
from selfsup.types import ConfigError, DataError

SHARED = next((p / "shared" / "data" for p in Path(__file__).resolve().parents
               if (p / "shared" / "data" / "eurosat_ms" / "eurosat_ms.npz").is_file()), None)


def memory_ds(images: torch.Tensor) -> ImageDataset:
    return ImageDataset(labels=torch.full((len(images),), -1), source="test", images=images)


def test_known_constants_apply() -> None:
    norm = Normalization(low=[0.0], high=[255.0], mean=[0.5], std=[0.25])
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    unit = norm.to_unit(x)
    assert unit.dtype == torch.float32
    assert torch.allclose(unit.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    assert torch.allclose(norm(x).flatten(), torch.tensor([-2.0, -1.2, 2.0]))
    chw = norm.to_unit(x[0])  # [C, H, W] works too
    assert chw.shape == (1, 1, 3)


def test_uint16_clamps_outside_range_and_keeps_input() -> None:
    norm = Normalization(low=[100.0, 0.0], high=[1100.0, 10.0], mean=[0.0, 0.0], std=[1.0, 1.0])
    x = torch.tensor([[50, 600, 60000], [0, 5, 10]], dtype=torch.uint16).view(1, 2, 1, 3)
    assert torch.allclose(norm.to_unit(x)[0, :, 0], torch.tensor([[0.0, 0.5, 1.0], [0, 0.5, 1]]))
    f = x.float()
    before = f.clone()
    norm.to_unit(f)
    assert torch.equal(f, before)  # float input is not modified in place
    with pytest.raises(DataError, match="2, H, W"):
        norm.to_unit(torch.zeros(1, 3, 2, 2))


def test_uint8_stats_exact() -> None:
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    images[5:] = 255  # half black, half white: mean 0.5, std 0.5 in unit range
    images[:, 2] = 51  # channel 2 constant 0.2: std -> 1e-6
    norm = compute_normalization(memory_ds(images))
    assert norm.low == [0.0] * 3 and norm.high == [255.0] * 3
    assert norm.mean == pytest.approx([0.5, 0.5, 0.2]) and norm.std == pytest.approx([0.5, 0.5, 1e-6])


def test_uint16_percentiles_are_robust_to_outliers() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 10001, (64, 2, 32, 32), generator=g)
    images[:, 1] = images[:, 1] // 10 + 2000  # channel 1: 2000..3000
    images[0, :, :3, :3] = 65535  # saturated pixels
    images = images.to(torch.uint16)
    norm = compute_normalization(memory_ds(images), seed=1)
    assert norm.low == pytest.approx([50, 2005], abs=15) and norm.high == pytest.approx([9950, 2995], abs=15)
    unit = norm.to_unit(images)
    assert float(unit.min()) == 0.0 and float(unit.max()) == 1.0
    assert norm.mean == pytest.approx([0.5, 0.5], abs=0.01)
    assert norm.std == pytest.approx([0.2887, 0.2887], abs=0.01)  # uniform: 1/sqrt(12)
    again = compute_normalization(memory_ds(images), seed=1)
    assert again.to_dict() == norm.to_dict()


def test_given_values_override_and_broadcast() -> None:
    images = torch.rand(8, 3, 4, 4)
    norm = compute_normalization(memory_ds(images), low=[0.0], high=[2.0], mean=[0.1, 0.2, 0.3])
    assert norm.low == [0.0] * 3 and norm.high == [2.0] * 3 and norm.mean == [0.1, 0.2, 0.3]
    unit = images / 2
    assert norm.std == pytest.approx(unit.transpose(0, 1).flatten(1).std(1, unbiased=False).tolist(),
                                     rel=1e-4)
    for option, kw in (("data.mean", {"mean": [0.5, 0.5]}), ("data.std", {"std": [1, 1]}),
                       ("data.high", {"high": [1.0, 2.0]})):
        with pytest.raises(ConfigError, match=option):
            compute_normalization(memory_ds(images), **kw)


def test_constant_float_channel_gets_unit_range() -> None:
    images = torch.full((4, 1, 3, 3), 7.0)
    norm = compute_normalization(memory_ds(images))
    assert norm.high[0] == norm.low[0] + 1 and norm.std[0] >= 1e-6


def test_round_trip_and_validation() -> None:
    norm = compute_normalization(open_dataset("digits"))
    back = Normalization.from_dict(norm.to_dict())
    assert back == norm and back.to_dict() == norm.to_dict()
    x = open_dataset("digits").get_batch(torch.arange(5))[0]
    assert torch.equal(back(x), norm(x))
    with pytest.raises(ConfigError, match="missing std"):
        Normalization.from_dict({"low": [0], "high": [1], "mean": [0]})
    with pytest.raises(ConfigError, match="one value per channel"):
        Normalization.from_dict({"low": [0], "high": [1], "mean": [0, 0], "std": [1]})
    with pytest.raises(ConfigError, match="exceed low"):
        Normalization([5.0], [5.0], [0.0], [1.0])
    with pytest.raises(ConfigError, match="positive"):
        Normalization([0.0], [1.0], [0.0], [0.0])


@pytest.mark.skipif(SHARED is None, reason="shared data folder not found")
def test_eurosat_bands_reach_unit_range() -> None:
    ds = open_dataset("eurosat_ms")
    norm = compute_normalization(ds)
    assert len(norm.low) == 13 and all(0 < lo < hi < 20000 for lo, hi in zip(norm.low, norm.high))
    unit = norm.to_unit(ds.get_batch(torch.arange(len(ds)))[0])
    assert float(unit.min()) >= 0.0 and float(unit.max()) <= 1.0
    assert all(0.05 < m < 0.95 for m in norm.mean) and all(0.02 < s < 0.5 for s in norm.std)


def test_folder_dataset_statistics(tmp_path: Path) -> None:
    from PIL import Image

    for i, v in enumerate((0, 255, 0, 255)):
        Image.fromarray(np.full((6, 6), v, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    norm = compute_normalization(open_dataset(str(tmp_path)))
    assert norm.mean == pytest.approx([0.5]) and norm.std == pytest.approx([0.5])
