"""MultiView, the registered view presets and the evaluation transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from selfsup import registry
from selfsup.config import ViewConfig
from selfsup.data.views import MultiView, eval_transform, get_preset
from selfsup.types import ConfigError, DataError, UnknownNameError

SHARED = Path("/work/shared/data")
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


@pytest.fixture(scope="module")
def rgb() -> torch.Tensor:
    """16 real CIFAR-10 test images as unit floats [16, 3, 32, 32]."""
    x = np.load(SHARED / "cifar10" / "cifar10.npz")["x_test"][100:116]
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).contiguous()


def test_presets_are_registered_with_references() -> None:
    names = registry.list_names("preset")
    assert {"simclr", "byol", "dino"} <= set(names)
    for name in ("simclr", "byol", "dino"):
        entry = registry.get("preset", name)
        assert entry.reference and entry.description
        assert "Scaling rule" in (entry.obj.__doc__ or "")


def test_simclr_preset() -> None:
    (big,) = get_preset("simclr", 224)
    assert (big.n, big.size, big.scale, big.blur_p, big.jitter_p) == (2, 224, (0.08, 1.0), 0.5, 0.8)
    assert (big.brightness, big.contrast, big.saturation, big.hue) == (0.8, 0.8, 0.8, 0.2)
    assert big.grayscale_p == 0.2 and big.solarize_p == 0.0
    (small,) = get_preset("simclr", 32)  # CIFAR recipe: no blur, same crop scale
    assert (small.size, small.blur_p, small.scale) == (32, 0.0, (0.08, 1.0))


def test_moco_presets_follow_main_moco() -> None:
    # facebookresearch/moco main_moco.py: v1 = InstDisc's augmentation (ColorJitter without
    # RandomApply), v2 = --aug-plus (RandomApply jitter p 0.8, blur p 0.5); SimSiam reuses v2
    for size in (224, 32):
        (v1,) = get_preset("moco_v1", size)
        assert (v1.n, v1.size, v1.scale, v1.hflip_p) == (2, size, (0.2, 1.0), 0.5)
        assert (v1.brightness, v1.contrast, v1.saturation, v1.hue) == (0.4, 0.4, 0.4, 0.4)
        assert (v1.jitter_p, v1.grayscale_p, v1.blur_p, v1.solarize_p) == (1.0, 0.2, 0.0, 0.0)
        (v2,) = get_preset("moco_v2", size)
        assert (v2.n, v2.size, v2.scale, v2.hflip_p) == (2, size, (0.2, 1.0), 0.5)
        assert (v2.brightness, v2.contrast, v2.saturation, v2.hue) == (0.4, 0.4, 0.4, 0.1)
        assert (v2.jitter_p, v2.grayscale_p, v2.blur_p, v2.solarize_p) == (0.8, 0.2, 0.5, 0.0)
        assert v2.blur_sigma == (0.1, 2.0)
    for name in ("moco_v1", "moco_v2"):
        entry = registry.get("preset", name)
        assert entry.reference and entry.description and "Scaling rule" in entry.obj.__doc__


def test_list_presets_shows_the_moco_presets(capsys: pytest.CaptureFixture[str]) -> None:
    from selfsup.cli import main

    assert main(["list", "presets"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    assert "He et al. 2020" in lines["moco_v1"] and "MoCo v2" in lines["moco_v2"]


def test_byol_preset_is_asymmetric() -> None:
    v1, v2 = get_preset("byol", 96)
    for g in (v1, v2):
        assert (g.n, g.size, g.jitter_p, g.grayscale_p) == (1, 96, 0.8, 0.2)
        assert (g.brightness, g.contrast, g.saturation, g.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)


@pytest.mark.parametrize(("image_size", "local"),
                         [(224, 96), (128, 48), (64, 24), (32, 16), (16, 8), (12, 8)])
def test_dino_preset_sizes(image_size: int, local: int) -> None:
    g1, g2, loc = get_preset("dino", image_size)
    assert (g1.n, g2.n, loc.n) == (1, 1, 6)
    assert g1.size == g2.size == image_size and loc.size == local
    assert g1.scale == g2.scale == (0.4, 1.0) and loc.scale == (0.05, 0.4)
    assert (g1.blur_p, g2.blur_p, loc.blur_p, g2.solarize_p, loc.solarize_p) == (1.0, 0.1, 0.5, 0.2, 0)
    # the same blur sigma in pixels in every view: blur_sigma * size / 224 is equal
    assert loc.blur_sigma[1] * loc.size == pytest.approx(g1.blur_sigma[1] * g1.size)


def test_get_preset_overrides_and_errors() -> None:
    groups = get_preset("dino", 64, blur_p=0.0, hue=None)
    assert all(g.blur_p == 0.0 for g in groups) and groups[0].hue == 0.1
    with pytest.raises(UnknownNameError, match="simclr"):
        get_preset("simclrr", 32)
    with pytest.raises(ConfigError, match="blurr_p"):
        get_preset("simclr", 32, blurr_p=0.0)
    with pytest.raises(ConfigError, match="image_size"):
        get_preset("simclr", 0)


@pytest.mark.parametrize("name", ["simclr", "byol", "dino", "moco_v1", "moco_v2"])
def test_multiview_views_and_boxes(rgb: torch.Tensor, name: str) -> None:
    groups = get_preset(name, 32)
    mv = MultiView(groups, 3, MEAN, STD)
    views, boxes = mv(rgb)
    sizes = [g.size for g in groups for _ in range(g.n)]
    assert mv.num_views == len(views) == len(boxes) == len(sizes)
    for v, b, s in zip(views, boxes, sizes):
        assert v.shape == (16, 3, s, s) and v.dtype == torch.float32 and b.shape == (16, 4)
        unit = v * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5
    assert not torch.equal(views[0], views[1])  # two independent views
    assert list(mv.parameters()) == [] and mv.state_dict() == {}


def test_multiview_all_off_is_normalised_input(rgb: torch.Tensor) -> None:
    off = ViewConfig(n=2, size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0,
                     grayscale_p=0.0, blur_p=0.0)  # fmt: skip
    views, boxes = MultiView([off], 3, MEAN, STD)(rgb)
    expected = TF.normalize(rgb, MEAN, STD)
    for v in views:
        torch.testing.assert_close(v, expected, atol=1e-5, rtol=0)
    assert torch.equal(boxes[0], torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(16, 4))


def test_multiview_determinism_and_multispectral() -> None:
    x = np.load(SHARED / "eurosat_ms" / "eurosat_ms.npz")["x"][:6].astype("f4")
    x = torch.from_numpy(x).permute(0, 3, 1, 2)
    x = (x / x.amax(dim=(0, 2, 3), keepdim=True)).contiguous()
    mv = MultiView(get_preset("simclr", 64), 13, [0.5] * 13, [0.2] * 13)
    torch.manual_seed(0)
    a, ba = mv(x)
    torch.manual_seed(0)
    b, bb = mv(x)
    assert all(torch.equal(u, v) for u, v in zip(a + ba, b + bb))
    assert a[0].shape == (6, 13, 64, 64)


def test_multiview_errors(rgb: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="one value per channel"):
        MultiView(get_preset("simclr", 32), 3, [0.5], [0.2])
    with pytest.raises(ConfigError, match="positive"):
        MultiView(get_preset("simclr", 32), 3, MEAN, [0.2, 0.0, 0.2])
    with pytest.raises(ConfigError, match="at least one"):
        MultiView([], 3, MEAN, STD)
    with pytest.raises(DataError, match="channels"):
        MultiView(get_preset("simclr", 32), 3, MEAN, STD)(rgb[:, :1])


def test_eval_transform(rgb: torch.Tensor) -> None:
    same = eval_transform(rgb, 32, MEAN, STD)
    torch.testing.assert_close(same, TF.normalize(rgb, MEAN, STD), atol=1e-6, rtol=0)
    small = eval_transform(rgb, 16, torch.tensor(MEAN), torch.tensor(STD))
    ref = TF.normalize(TF.resize(rgb, [16, 16], antialias=True), MEAN, STD)
    torch.testing.assert_close(small, ref, atol=1e-5, rtol=0)
    wide = torch.cat([rgb, rgb.flip(-1)], dim=-1)  # [16, 3, 32, 64]
    out = eval_transform(wide, 32, MEAN, STD)  # shorter side already 32: centre crop only
    torch.testing.assert_close(out, TF.normalize(wide[..., 16:48], MEAN, STD), atol=1e-6, rtol=0)
    assert eval_transform(rgb[:, :1], 8, [0.5], [0.25]).shape == (16, 1, 8, 8)
    with pytest.raises(DataError, match="float"):
        eval_transform((rgb * 255).to(torch.uint8), 32, MEAN, STD)
    with pytest.raises(ConfigError, match="per channel"):
        eval_transform(rgb, 32, [0.5], [0.5])
