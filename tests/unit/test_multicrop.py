"""Multi-crop backbone passes (selfsup.nn.multicrop): ``grouped`` (one pass per crop size, the
DINO/SwAV reference ``MultiCropWrapper``) and ``per_crop`` (one pass per crop, as lightly) give the
same outputs when BatchNorm uses running statistics and different ones in training mode, where
each pass normalises with its own batch; ``auto`` picks per_crop on a CPU, grouped elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.multicrop import encode_by_resolution, resolve_crop_passes
from selfsup.types import Batch, ConfigError, DataError

B = 4


def _views(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(B, 1, 16, 16, generator=g) for _ in range(2)]
            + [torch.randn(B, 1, 8, 8, generator=g) for _ in range(3)])


def _loop(module: nn.Module, views: list[torch.Tensor], passes: str) -> torch.Tensor:
    """Plain reference: one call per crop, or one call per size (consecutive equal sizes)."""
    if passes == "per_crop":
        return torch.cat([module(v) for v in views])
    return torch.cat([module(torch.cat(views[:2])), module(torch.cat(views[2:]))])


def test_layouts_agree_in_eval_mode_and_differ_in_train_mode() -> None:
    torch.manual_seed(0)
    bb = create_backbone("small_cnn", in_chans=1, image_size=16, width=8)
    views = _views()
    with torch.no_grad():
        bb.eval()
        grouped = encode_by_resolution(bb, views, "grouped")
        per_crop = encode_by_resolution(bb, views, "per_crop")
        assert grouped.shape == (5 * B, bb.num_features)
        torch.testing.assert_close(grouped, per_crop)
        bb.train()  # batch statistics: per size group vs per crop
        train_grouped = encode_by_resolution(bb, views, "grouped")
        train_per_crop = encode_by_resolution(bb, views, "per_crop")
        torch.testing.assert_close(train_grouped, _loop(bb, views, "grouped"))
        torch.testing.assert_close(train_per_crop, _loop(bb, views, "per_crop"))
        assert not torch.allclose(train_grouped, train_per_crop, atol=1e-3)
        # on the CPU, auto is per_crop
        torch.testing.assert_close(encode_by_resolution(bb, views, "auto"), train_per_crop)


def test_auto_picks_by_device_and_bad_values_are_named() -> None:
    assert resolve_crop_passes("auto", torch.device("cpu")) == "per_crop"
    assert resolve_crop_passes("auto", torch.device("cuda", 0)) == "grouped"
    assert resolve_crop_passes("auto", torch.device("mps")) == "grouped"
    for fixed in ("grouped", "per_crop"):
        assert resolve_crop_passes(fixed, torch.device("cpu")) == fixed
        assert resolve_crop_passes(fixed, torch.device("cuda")) == fixed
    with pytest.raises(ConfigError, match="crop_passes"):
        resolve_crop_passes("one", torch.device("cpu"))
    with pytest.raises(DataError, match="same number"):
        encode_by_resolution(nn.Flatten(), [torch.zeros(2, 3), torch.zeros(3, 3)], "per_crop")


@pytest.mark.parametrize("method", ["dino", "swav"])
def test_methods_use_the_configured_layout(method: str) -> None:
    """The method's loss in training mode is the one of its crop_passes layout (BN statistics
    differ between layouts), and a bad value is a one-line ConfigError naming the option."""
    args = ({"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8} if method == "dino" else
            {"proj_hidden_dim": 16, "proj_out_dim": 4, "num_prototypes": 5, "queue_length": 0})
    batch = Batch(views=_views(1), index=torch.arange(B))
    losses = {}
    for passes in ("grouped", "per_crop", "auto"):
        torch.manual_seed(0)
        bb = create_backbone("small_cnn", in_chans=1, image_size=16, width=8)
        m = build_method(method, bb, crop_passes=passes, **args).train()
        assert m.cfg.crop_passes == passes
        losses[passes] = float(m.training_step(batch).loss.detach())
    assert losses["auto"] == losses["per_crop"] != losses["grouped"]
    bb = create_backbone("small_cnn", in_chans=1, image_size=16, width=8)
    with pytest.raises(ConfigError, match="method_args.crop_passes"):
        build_method(method, bb, crop_passes="all", **args)
