"""A method's ``eval_pool`` decides the ViT's pooling (``backbone.kwargs.global_pool``) unless the
user set it, and the saved run keeps it, so kNN / linear probes read the features the paper
evaluates (SimMIM and I-JEPA never train the class token)."""

from __future__ import annotations

import pytest

from selfsup.config import BackboneConfig, replace
from selfsup.engine.runs import build_parts, load_run
from selfsup.engine.trainer import pretrain

VIT = BackboneConfig(name="vit_tiny", patch_size=4, kwargs={"depth": 1})


@pytest.mark.parametrize(("method", "pool"), [("simmim", "avg"), ("ijepa", "avg"),
                                              ("mae", "token")])
def test_the_method_fills_its_pooling(tiny_run, method: str, pool: str) -> None:
    cfg = replace(tiny_run("p"), method=method, backbone=VIT)
    cfg = replace(cfg, data=replace(cfg.data, image_size=16))
    parts = build_parts(cfg)
    # MAE keeps the backbone's default (its linear probe reads the class token)
    assert parts.cfg.backbone.kwargs.get("global_pool", "token") == pool
    assert parts.method.backbone.global_pool == pool


def test_the_users_pooling_wins(tiny_run) -> None:
    cfg = replace(tiny_run("u"), method="simmim",
                  backbone=replace(VIT, kwargs={"depth": 1, "global_pool": "token"}))
    cfg = replace(cfg, data=replace(cfg.data, image_size=16))
    assert build_parts(cfg).method.backbone.global_pool == "token"


def test_a_backbone_without_pooling_is_left_alone(tiny_run) -> None:
    """simclr has no eval_pool; a CNN takes no global_pool: nothing is added."""
    assert "global_pool" not in build_parts(tiny_run("c")).cfg.backbone.kwargs


def test_the_saved_run_rebuilds_the_same_pooling(tiny_run) -> None:
    cfg = replace(tiny_run("s", steps=1, batch=16), method="ijepa", backbone=VIT,
                  method_args={"pred_dim": 24, "pred_depth": 1})
    cfg = replace(cfg, data=replace(cfg.data, image_size=16))
    res = pretrain(cfg)
    run = load_run(res.checkpoint)
    assert run.encoder.global_pool == "avg"  # type: ignore[union-attr]
