"""Shared by the grids that run every registered method (resume, DDP equivalence): the generic
shrink of a method's Config so that a newly registered method runs fast with no entry of its own."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path
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


def _kind(name: str) -> str:
    return str(getattr(registry.get("method", name).obj, "backbone_kind", "any"))


def needs_vit(name: str) -> bool:
    """Whether method ``name`` needs a ViT backbone (masked image modeling)."""
    return _kind(name) == "vit"


def _strides(total: int) -> list[int]:
    """ConvViT stage strides ``[s1, s2, s3]`` with product ``total`` (2s last: 4 -> [1, 2, 2])."""
    s3 = 2 if total % 2 == 0 else 1
    s2 = 2 if (total // s3) % 2 == 0 else 1
    return [total // (s2 * s3), s2, s3]


# the grids' ViT: vit_tiny's width with 2 blocks and a 4 x 4 patch grid (I-JEPA's blocks need
# more than 2 x 2)
VIT_GRID, VIT_KWARGS = 4, {"depth": 2}


def grid_backbone_config(name: str, width: int, image_size: int = 16) -> BackboneConfig:
    """The grids' backbone for method ``name``: small_cnn of ``width``, or the small ViT with
    patches of ``image_size / 4`` px, or (ConvMAE) the hybrid convvit_tiny with 1 block per
    stage and strides giving the same 4 x 4 stage-3 grid."""
    if _kind(name) == "convvit":
        return BackboneConfig(name="convvit_tiny", kwargs={
            "depth": 1, "conv_depth": 1, "strides": _strides(max(1, image_size // VIT_GRID))})
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


def needs_tokenizer(name: str) -> bool:
    """Whether method ``name`` predicts a frozen tokenizer's ids (a ``tokenizer`` Config field
    with no usable default: BEiT)."""
    cfg = registry.get("method", name).obj.Config
    return "tokenizer" in {f.name for f in dataclasses.fields(cfg)}


def grid_tokenizer(in_chans: int, image_size: int) -> nn.Module:
    """A randomly initialised ``vq_tokenizer`` (16 codes) on a 1-block ViT with the grids' 4 x 4
    patch grid, for methods built in Python (contract, DDP grids); from torch's global RNG."""
    from selfsup.methods.base import build_method
    from selfsup.nn.backbones import create_backbone

    vit = create_backbone("vit_tiny", in_chans=in_chans, image_size=image_size,
                          patch_size=max(1, image_size // VIT_GRID), depth=1)
    return build_method("vq_tokenizer", vit, codebook_size=16, code_dim=8, hidden_dim=16,
                        res_hidden_dim=8, num_res_blocks=1)


@functools.cache
def grid_tokenizer_checkpoint(image_size: int) -> str:
    """``last.pt`` of a 2-step ``vq_tokenizer`` run on digits at ``image_size`` (the grids' 4 x 4
    patch grid), for config-driven grids whose ``method_args`` must be a path (resume grid);
    written once per session in a temporary folder."""
    from selfsup.config import DataConfig, RunConfig, TrainConfig
    from selfsup.engine.trainer import pretrain

    out = Path(tempfile.mkdtemp(prefix="selfsup-grid-tokenizer-")) / "run"
    cfg = RunConfig(
        method="vq_tokenizer", backbone=BackboneConfig(
            name="vit_tiny", patch_size=max(1, image_size // VIT_GRID), kwargs={"depth": 1}),
        method_args={"codebook_size": 16, "code_dim": 8, "hidden_dim": 16,
                     "res_hidden_dim": 8, "num_res_blocks": 1},
        data=DataConfig(path="digits", image_size=image_size, limit=48),
        train=TrainConfig(steps=2, batch_size=12, out=str(out), device="cpu", progress=False,
                          tensorboard=False, monitor_every=0),
    )
    return str(pretrain(cfg).checkpoint)


def tokenizer_args(name: str, in_chans: int, image_size: int, *, as_path: bool = False
                   ) -> dict[str, Any]:
    """``{"tokenizer": ...}`` for methods that need one (:func:`needs_tokenizer`), else ``{}``:
    :func:`grid_tokenizer` (a module) or, with ``as_path``, :func:`grid_tokenizer_checkpoint`
    (digits are grey, so ``in_chans`` must then be 1)."""
    if not needs_tokenizer(name):
        return {}
    if as_path:
        assert in_chans == 1, "the tokenizer checkpoint is trained on grey digits"
        return {"tokenizer": grid_tokenizer_checkpoint(image_size)}
    return {"tokenizer": grid_tokenizer(in_chans, image_size)}
