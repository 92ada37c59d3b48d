"""Shared by the grids that run every registered method (resume, DDP equivalence): the generic
shrink of a method's Config so that a newly registered method runs fast with no entry of its own."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from selfsup import registry
from selfsup.config import BackboneConfig


def shrunk_args(name: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``overrides[name]`` over the generic shrink: int ``*_dim`` fields >= 64 become 16."""
    cfg = registry.get("method", name).obj.Config
    args: dict[str, Any] = {
        f.name: 16 for f in dataclasses.fields(cfg)
        if f.name.endswith("_dim") and isinstance(f.default, int) and f.default >= 64
    }
    return {**args, **overrides.get(name, {})}


def needs_vit(name: str) -> bool:
    """Whether method ``name`` needs a ViT backbone (masked image modeling)."""
    return str(getattr(registry.get("method", name).obj, "backbone_kind", "any")) == "vit"


# the grids' ViT: vit_tiny's width with 2 blocks and a 4 x 4 patch grid (I-JEPA's blocks need
# more than 2 x 2)
VIT_GRID, VIT_KWARGS = 4, {"depth": 2}


def grid_backbone_config(name: str, width: int, image_size: int = 16) -> BackboneConfig:
    """The grids' backbone for method ``name``: small_cnn of ``width``, or the small ViT with
    patches of ``image_size / 4`` px."""
    if needs_vit(name):
        return BackboneConfig(name="vit_tiny", patch_size=max(1, image_size // VIT_GRID),
                              kwargs=dict(VIT_KWARGS))
    return BackboneConfig(name="small_cnn", kwargs={"width": width})


def grid_backbone(name: str, in_chans: int, image_size: int, width: int) -> nn.Module:
    """:func:`grid_backbone_config` built (fresh random weights from torch's global RNG)."""
    from selfsup.nn.backbones import create_backbone

    cfg = grid_backbone_config(name, width, image_size)
    return create_backbone(cfg.name, in_chans=in_chans, image_size=image_size,
                           patch_size=cfg.patch_size, **cfg.kwargs)
