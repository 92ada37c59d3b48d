"""Bring your own model and data (issue 12): timm and torchvision models from the CLI, a user
module and arrays from Python, continued pretraining with --init."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from test_cli import ENV_ARGS, one_json, run
from torch import nn

import selfsup
from selfsup.types import CheckpointError

TINY = ["--data", "digits", "--steps", "3", "--batch-size", "32", "--image-size", "32",
        "--limit", "256", "--json", *ENV_ARGS]


@pytest.mark.parametrize("backbone", ["timm:resnet10t", "torchvision:shufflenet_v2_x0_5"])
def test_cli_pretrains_and_evaluates_models_outside_the_builtins(tmp_path, backbone) -> None:
    assert backbone not in selfsup.list_backbones()
    out = tmp_path / "run"
    r = one_json(run("pretrain", "--method", "byol", "--backbone", backbone, "--out", str(out),
                     *TINY))
    assert r["step"] == 3
    e = one_json(run("eval", "knn", "--checkpoint", r["checkpoint"], "--limit", "300",
                     "--no-baselines", "--json"))
    assert 10 < e["rows"]["pretrained"]["knn_top1"] <= 100  # above chance: features neither constant nor NaN


def test_unknown_external_model_is_one_clear_line(tmp_path) -> None:
    p = run("pretrain", "--backbone", "timm:resnet10", "--out", str(tmp_path / "r"), *TINY,
            ok=False)
    assert p.returncode != 0 and "close: resnet10t" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    listed = run("list", "backbones", "--all", "resnet1").stdout.splitlines()
    names = {line.split()[0] for line in listed}
    assert {"resnet18", "timm:resnet10t", "torchvision:resnet18"} <= names
    assert all("resnet1" in n for n in names)


class SmallNet(nn.Module):
    """A user's CNN without any selfsup attribute: returns a map."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_python_module_and_array_train_evaluate_and_export(tmp_path) -> None:
    d = load_digits()
    x = (d.images * 16).clip(0, 255).astype(np.uint8)  # [N, 8, 8] uint8
    y = d.target
    net = SmallNet()
    before = net.body[0].weight.detach().clone()
    res = selfsup.pretrain("simclr", (x, y), backbone=net, steps=4, batch_size=64,
                           out=str(tmp_path / "run"),
                           overrides=["train.progress=false", "train.tensorboard=false"])
    # trained in place, and the run says what it was
    assert not torch.equal(net.body[0].weight, before)
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert f"module:{SmallNet.__module__}.SmallNet" in cfg
    assert "python:ndarray[1797x8x8 uint8] with labels" in cfg
    r = selfsup.evaluate(res.checkpoint, (x, y), which=("knn",), backbone=SmallNet())
    assert set(r["rows"]) == {"pretrained", "random init", "raw pixels"}
    # the checkpoint's weights went into the copy: same features as the trained module
    emb = selfsup.embed(res.checkpoint, x[:5], backbone=SmallNet())
    assert emb.shape == (5, 24)
    meta = selfsup.export(res.checkpoint, tmp_path / "enc.pt", backbone=SmallNet(),
                          formats=())
    enc, _ = selfsup.load_encoder(meta["path"], backbone=SmallNet())
    torch.testing.assert_close(enc.model.body[0].weight, net.body[0].weight)
    # without the module, the one-line error says what to pass
    with pytest.raises(CheckpointError, match="pass the module again"):
        selfsup.evaluate(res.checkpoint, (x, y))


def test_init_from_an_export_with_another_channel_count(tmp_path) -> None:
    res = selfsup.pretrain("simclr", "digits", backbone="timm:resnet10t", steps=2,
                           batch_size=32, out=str(tmp_path / "gray"),
                           overrides=["data.image_size=32", "data.limit=128",
                                      "train.progress=false", "train.tensorboard=false"])
    selfsup.export(res.checkpoint, tmp_path / "enc.pt", formats=())
    rgb = np.random.default_rng(0).integers(0, 256, (128, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    p = subprocess.run([sys.executable, "-m", "selfsup", "pretrain", "--method", "simclr",
                        "--backbone", "timm:resnet10t", "--data", str(tmp_path / "rgb.npy"),
                        "--init", str(tmp_path / "enc.pt"), "--steps", "1", "--batch-size",
                        "32", "--out", str(tmp_path / "rgb"), *ENV_ARGS],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stderr.splitlines() if "init:" in x)
    assert "adapted to the data's channels: model.conv1.0.weight (1 -> 3 channels)" in line
    n = len(torch.load(tmp_path / "enc.pt", weights_only=False)["state_dict"])
    assert f"init: {n}/{n} backbone tensors" in line
    assert "init: " in (tmp_path / "rgb" / "config.yaml").read_text()
