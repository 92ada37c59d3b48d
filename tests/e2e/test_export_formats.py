"""Exports other tools load: torch.export, ONNX (checked with onnxruntime), safetensors,
TorchScript and the timm / torchvision state_dict, each with the metadata and an input check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision
from safetensors import safe_open

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig
from selfsup.data.datasets import open_dataset
from selfsup.engine.evaluate import embed_checkpoint
from selfsup.engine.export import export_encoder, load_encoder
from selfsup.engine.trainer import pretrain
from selfsup.types import ConfigError

# ONNX Runtime against torch on the same inputs: float32 kernels differ in summation order
ONNX_ATOL, ONNX_RTOL = 1e-5, 1e-4


def _run(tmp: Path, backbone: str, **kwargs) -> Path:
    cfg = RunConfig(method="simclr", backbone=BackboneConfig(name=backbone, kwargs=kwargs),
                    data=DataConfig(path="digits", image_size=16, limit=128),
                    train=TrainConfig(steps=2, batch_size=32, out=str(tmp / backbone.replace(
                        ":", "_")), progress=False, tensorboard=False))
    return Path(pretrain(cfg).checkpoint)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("export")
    ckpt = _run(tmp, "small_cnn", width=8)
    export_encoder(ckpt, tmp / "enc.pt", formats=["pt2", "onnx", "safetensors", "torchscript"])
    return ckpt, tmp


def test_every_format_gives_the_same_features(small) -> None:
    _, tmp = small
    enc, meta = load_encoder(tmp / "enc.pt")
    x = torch.randn(5, 1, 16, 16)  # another batch size than the export's example
    with torch.no_grad():
        ref = enc(x)
        torch.testing.assert_close(torch.export.load(str(tmp / "enc.pt2")).module()(x), ref)
        torch.testing.assert_close(torch.jit.load(str(tmp / "enc.ts"))(x), ref,
                                   rtol=1e-5, atol=1e-6)
    sess = ort.InferenceSession(str(tmp / "enc.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(["features"], {"images": x.numpy()})[0]
    np.testing.assert_allclose(out, ref.numpy(), atol=ONNX_ATOL, rtol=ONNX_RTOL)
    with safe_open(str(tmp / "enc.safetensors"), "pt") as f:
        assert set(f.keys()) == set(enc.state_dict())
        assert all(torch.equal(f.get_tensor(k), v) for k, v in enc.state_dict().items())


def test_metadata_travels_with_every_format(small) -> None:
    _, tmp = small
    want = json.loads((tmp / "enc.json").read_text())
    assert want["in_chans"] == 1 and want["image_size"] == 16 and "mean" in want["normalization"]
    assert "antialias" in want["input"]["resize"]
    extra = {"selfsup.json": ""}
    torch.export.load(str(tmp / "enc.pt2"), extra_files=extra)
    found = {"pt2": json.loads(extra["selfsup.json"])}
    extra = {"selfsup.json": ""}
    torch.jit.load(str(tmp / "enc.ts"), _extra_files=extra)
    found["ts"] = json.loads(extra["selfsup.json"])
    props = {p.key: p.value for p in onnx.load(str(tmp / "enc.onnx")).metadata_props}
    found["onnx"] = json.loads(props["selfsup"])
    with safe_open(str(tmp / "enc.safetensors"), "pt") as f:
        found["safetensors"] = json.loads(f.metadata()["selfsup"])
    for fmt, meta in found.items():
        assert meta == want, fmt


def test_wrong_input_size_is_rejected(small) -> None:
    _, tmp = small
    bad = torch.randn(2, 1, 20, 20)
    with pytest.raises(Exception, match="16"):
        torch.export.load(str(tmp / "enc.pt2")).module()(bad)
    with pytest.raises(Exception, match=r"expected input \[B, 1, 16, 16\]"):
        torch.jit.load(str(tmp / "enc.ts"))(bad)
    sess = ort.InferenceSession(str(tmp / "enc.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="images"):
        sess.run(None, {"images": bad.numpy()})


def test_input_contract_reproduces_embed(small, monkeypatch) -> None:
    """The snippet of docs/export.md, run as written, gives `selfsup embed`'s features."""
    ckpt, tmp = small
    doc = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text()
    snippet = doc.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp)  # the snippet opens enc.json and enc.pt2
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102
    raw = open_dataset("digits", split="all").get_batch(torch.arange(64))[0]  # uint8 [64, 1, 8, 8]
    theirs, _ = embed_checkpoint(str(ckpt), "digits", device="cpu")
    np.testing.assert_allclose(scope["features"](raw).numpy(), theirs[:64], atol=1e-6, rtol=1e-6)
    # a non-square batch goes through the same resize and crop as selfsup's eval_transform
    from selfsup.engine.runs import load_run, preprocessor

    run = load_run(str(ckpt))
    odd = torch.randint(0, 256, (3, 1, 12, 20), dtype=torch.uint8)
    with torch.no_grad():
        ref = run.encoder(preprocessor(run.norm, run.image_size)(odd))
    np.testing.assert_allclose(scope["features"](odd).numpy(), ref.numpy(), atol=1e-6,
                               rtol=1e-6)


@pytest.mark.parametrize("backbone, kwargs", [("timm:resnet10t", {}), ("resnet18", {}),
                                              ("vit_tiny", {"depth": 2, "patch_size": 4})])
def test_native_state_dict_loads_in_its_library(tmp_path, backbone, kwargs) -> None:
    ckpt = _run(tmp_path, backbone, **kwargs)
    meta = export_encoder(ckpt, tmp_path / "enc.pt", formats=["native"])
    enc, _ = load_encoder(tmp_path / "enc.pt")
    how = json.loads((tmp_path / "enc.native.json").read_text())
    state = torch.load(meta["files"]["native"], weights_only=True)
    x = torch.randn(2, 1, 16, 16)
    if backbone == "resnet18":
        model = torchvision.models.get_model("resnet18", weights=None)
        model.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # 1 channel, CIFAR stem
        model.maxpool = torch.nn.Identity()
        assert "CIFAR stem" in how["note"]
        model.load_state_dict(state)  # strict: nothing missing or unexpected
        model.fc = torch.nn.Identity()
    else:
        model = eval(how["load"], {"timm": timm})  # noqa: S307 (the documented call)
        model.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), enc(x))


def test_native_refuses_what_has_no_counterpart(small, tmp_path) -> None:
    ckpt, _ = small
    with pytest.raises(ConfigError, match="no timm or torchvision counterpart"):
        export_encoder(ckpt, tmp_path / "enc.pt", formats=["native"])
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_encoder(ckpt, tmp_path / "enc.pt", formats=["tflite"])
