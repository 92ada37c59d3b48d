"""Things that used to pass silently now say what happened (issue 12, found by a new user)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from selfsup.data.datasets import open_dataset
from selfsup.engine.evaluate import eval_data


def _png(path, side: int, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side + 2, 3), value, np.uint8)).save(path)


def test_stray_top_level_images_are_explained(tmp_path, caplog) -> None:
    for c in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", 8)
    _png(tmp_path / "stray.png", 8)
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ds = open_dataset(str(tmp_path))
    assert not ds.has_labels and len(ds) == 7
    msg = caplog.text
    assert "1 image(s) at its top level (stray.png)" in msg and "cat, dog" in msg
    assert "move the top-level images into a subfolder" in msg
    (tmp_path / "stray.png").unlink()
    assert open_dataset(str(tmp_path)).class_names == ["cat", "dog"]


def test_mixed_sizes_take_the_median_shorter_side(tmp_path, caplog) -> None:
    for i, side in enumerate((10, 20, 40)):
        _png(tmp_path / f"{i}.png", side)
    with caplog.at_level(logging.INFO, logger="selfsup"):
        ds = open_dataset(str(tmp_path))
    assert ds.image_size == (20, 20)
    assert "median shorter side (--image-size chooses another)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="selfsup"):
        open_dataset(str(tmp_path), size_hint=False)  # embed / eval: no option to name
    assert "median shorter side" in caplog.text and "--image-size" not in caplog.text


def test_one_image_classes_and_a_large_k_warn(caplog) -> None:
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    y = np.array([0] * 20 + [1] * 19 + [2])
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ed = eval_data((x, y), (x, y))
    assert "1 class(es) have one labeled training image only (2)" in caplog.text
    assert len(ed.train) == 40


def test_drop_last_that_wastes_most_of_the_data_warns(tiny_run, caplog) -> None:
    from selfsup.config import replace
    from selfsup.engine.trainer import pretrain

    cfg = tiny_run("dl", steps=1, batch=64)
    with caplog.at_level(logging.WARNING, logger="selfsup"):  # 80 images: one batch, 16 dropped
        pretrain(replace(cfg, data=replace(cfg.data, limit=80)))
    assert "images per epoch" not in caplog.text
    caplog.clear()
    cfg = replace(tiny_run("dl2", steps=1, batch=64), data=replace(cfg.data, limit=100))
    with caplog.at_level(logging.WARNING, logger="selfsup"):  # 36 of 100 dropped every epoch
        pretrain(cfg)
    assert "uses 64 of the 100 images per epoch" in caplog.text


@pytest.mark.parametrize("k, warns", [(200, True), (10, False)])
def test_knn_k_above_the_training_set(tmp_path, k, warns, caplog) -> None:
    from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig
    from selfsup.engine.evaluate import evaluate_checkpoint
    from selfsup.engine.trainer import pretrain

    cfg = RunConfig(method="simclr", backbone=BackboneConfig(name="small_cnn", kwargs={"width": 8}),
                    data=DataConfig(path="digits", image_size=8, limit=64),
                    train=TrainConfig(steps=1, batch_size=32, out=str(tmp_path / "r"),
                                      progress=False, tensorboard=False))
    ckpt = pretrain(cfg).checkpoint
    x = np.random.default_rng(0).integers(0, 256, (60, 8, 8), dtype=np.uint8)
    y = np.arange(60) % 3
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        evaluate_checkpoint(str(ckpt), (x[:48], y[:48]), (x[48:], y[48:]), which=("knn",), k=k,
                            baselines=False)
    assert ("k=200 is more than the 48 labeled training images" in caplog.text) == warns


def test_rows_are_named_by_their_files(tmp_path) -> None:
    """embed writes these beside the embeddings (OUT.rows.csv, and `paths` in an .npz)."""
    for c in ("b", "a"):
        for i in (1, 0):
            _png(tmp_path / c / f"{i}.png", 8)
    ds = open_dataset(str(tmp_path))
    assert ds.row_names() == [str(tmp_path / c / f"{i}.png") for c in "ab" for i in (0, 1)]
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.class_names == ["a", "b"]
    sub = ds.subset([3, 0])
    assert sub.row_names() == [str(tmp_path / "b" / "1.png"), str(tmp_path / "a" / "0.png")]
