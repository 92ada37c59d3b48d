"""The files ``selfsup export --format`` writes beside ``enc.pt``, each loadable without selfsup
and each carrying the same metadata (``selfsup.json``: backbone, channels, image size, feature
width, normalisation and the input contract):

| format | file | load it with | metadata in |
|---|---|---|---|
| ``pt2`` (default) | ``enc.pt2`` | ``torch.export.load(f).module()`` | extra file ``selfsup.json`` |
| ``onnx`` | ``enc.onnx`` | ``onnxruntime.InferenceSession(f)`` | model ``metadata_props["selfsup"]`` |
| ``safetensors`` | ``enc.safetensors`` | ``safetensors.torch.load_file(f)`` (weights) | header ``__metadata__["selfsup"]`` |
| ``torchscript`` | ``enc.ts`` | ``torch.jit.load(f)`` (deprecated by torch) | extra file ``selfsup.json`` |
| ``native`` | ``enc.timm.pth`` / ``enc.torchvision.pth`` | the model's own library (below) | ``enc.native.json`` |

``pt2``, ``onnx`` and ``torchscript`` take ``[B, C, S, S]`` float32 input (any batch size) and
reject any other channel count or size; ``native`` writes a ``state_dict`` the backbone's own
library loads: ``timm.create_model(NAME, pretrained=False, num_classes=0, in_chans=C)`` with no
missing keys (timm backbones and the built-in ViTs), or ``torchvision.models.get_model(NAME,
weights=None)`` (torchvision backbones and the built-in ResNets; the classifier, which SSL never
trains, is included at its random init so the constructor's model loads with ``strict=True``;
with ``C != 3`` or a CIFAR stem the first convolution has another shape, as the JSON says).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.types import ConfigError

__all__ = ["FORMATS", "INPUT_CONTRACT", "write_format"]

FORMATS = ("pt2", "onnx", "safetensors", "torchscript", "native")
SUFFIX = {"pt2": ".pt2", "onnx": ".onnx", "safetensors": ".safetensors", "torchscript": ".ts"}
# how `selfsup embed` feeds the encoder (selfsup.data.views.eval_transform), for other tools
INPUT_CONTRACT = {
    "layout": "NCHW float32, batch of any size, channels and side as in_chans / image_size",
    "unit": "per channel: clamp((x - low) / (high - low), 0, 1)",
    "resize": "shorter side to image_size (bilinear, antialias=True), then the centre "
              "image_size x image_size crop; skipped when the image already has that size",
    "normalize": "(unit - mean) / std per channel",
}


class _InputCheck(nn.Module):
    """The encoder behind a check of the input's channels and size (TorchScript has no shape
    guards of its own)."""

    def __init__(self, encoder: nn.Module, in_chans: int, size: int) -> None:
        super().__init__()
        self.encoder, self.in_chans, self.size = encoder, in_chans, size

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans or x.shape[2] != self.size \
                or x.shape[3] != self.size:
            raise ValueError(f"expected input [B, {self.in_chans}, {self.size}, {self.size}] "
                             f"(resize as selfsup.json's input contract says), got "
                             f"{list(x.shape)}")
        out: Tensor = self.encoder(x)
        return out


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _pt2(enc: nn.Module, example: Tensor, path: Path, meta_json: str) -> None:
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        ep = torch.export.export(enc, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(_tmp(path)), extra_files={"selfsup.json": meta_json})
    _tmp(path).replace(path)


def _onnx(enc: nn.Module, example: Tensor, path: Path, meta_json: str) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigError("--format onnx needs the onnx and onnxscript packages: pip install "
                          "'selfsup[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on decompositions, not the user's
        torch.onnx.export(enc, (example,), str(_tmp(path)), input_names=["images"],
                          output_names=["features"], dynamic_shapes=({0: batch},), dynamo=True,
                          verbose=False)
    model = onnx.load(str(_tmp(path)))
    entry = model.metadata_props.add()
    entry.key, entry.value = "selfsup", meta_json
    onnx.save(model, str(_tmp(path)))
    _tmp(path).replace(path)


def _safetensors(enc: nn.Module, path: Path, meta_json: str) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in enc.state_dict().items()}
    save_file(state, str(_tmp(path)), metadata={"selfsup": meta_json})
    _tmp(path).replace(path)


def _torchscript(enc: nn.Module, example: Tensor, path: Path, meta_json: str) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's own deprecation notice
        traced = torch.jit.trace(enc, example, check_trace=False)
        scripted = torch.jit.script(_InputCheck(traced, example.shape[1], example.shape[-1]))
        torch.jit.save(scripted, str(_tmp(path)), _extra_files={"selfsup.json": meta_json})
    _tmp(path).replace(path)


def native_state(enc: nn.Module, backbone: dict[str, Any], in_chans: int, image_size: int
                 ) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    """``(library, state_dict, how to load)`` of the ``native`` format.

    Raises:
        ConfigError: for a backbone with no timm/torchvision counterpart (small_cnn, ConvViT,
            user modules) or a method encoder around several backbones (CMC).
    """
    from selfsup.nn.backbones.vit import ViT

    name = str(backbone["name"])
    source_name = str(getattr(enc, "source_name", ""))
    full = source_name or name
    src, model_name = full.split(":", 1) if ":" in full else ("", full)
    model = getattr(enc, "model", enc)
    if src == "timm" or (name.startswith("vit_") and isinstance(enc, ViT)):
        kwargs: dict[str, Any] = dict(backbone.get("kwargs") or {})
        if isinstance(enc, ViT):  # position embeddings for this grid
            kwargs.update(img_size=image_size, patch_size=enc.patch_size)
        if not src:  # built-in ViT: timm's VisionTransformer at selfsup's sizes
            assert isinstance(enc, ViT)
            model_name = f"{name}_patch16_224"
            kwargs.update(depth=len(enc.blocks), global_pool=enc.global_pool, fc_norm=False)
        args = ", ".join([repr(model_name), "pretrained=False", "num_classes=0",
                          f"in_chans={in_chans}"] + [f"{k}={v!r}" for k, v in kwargs.items()])
        return "timm", dict(model.state_dict()), {"load": f"timm.create_model({args})"}
    if src == "torchvision" or name.startswith("resnet"):
        import torchvision

        state = dict(model.state_dict())
        ref = torchvision.models.get_model(model_name, weights=None)
        for k, v in ref.state_dict().items():
            state.setdefault(k, v)  # the classifier at its random init (SSL never trains it)
        return "torchvision", state, {
            "load": f"torchvision.models.get_model({model_name!r}, weights=None)",
            "note": "classifier weights are untrained (random init); first convolution for "
                    f"{in_chans} channels" + (" and a CIFAR stem (3x3, stride 1, no max-pool)"
                                              if getattr(enc, "cifar_stem", False) else ""),
        }
    raise ConfigError(f"--format native: backbone '{source_name or name}' has no timm or "
                      "torchvision counterpart; use pt2, onnx or safetensors")


def write_format(fmt: str, enc: nn.Module, out: Path, meta: dict[str, Any]) -> str:
    """Write ``enc`` in format ``fmt`` next to ``out`` (``enc.pt`` -> ``enc.pt2``, ...); returns
    the path written. Files appear atomically (written to ``*.tmp``, then renamed).

    Raises:
        ConfigError: for an unknown format, a missing optional package (onnx) or a backbone
            without a native counterpart.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; expected one of {', '.join(FORMATS)}")
    c, s = int(meta["in_chans"]), int(meta["image_size"])
    meta_json = json.dumps(meta)
    example = torch.zeros(2, c, s, s)
    if fmt == "native":
        library, state, how = native_state(enc, meta["backbone"], c, s)
        path = out.with_suffix(f".{library}.pth")
        torch.save(state, _tmp(path))
        _tmp(path).replace(path)
        out.with_suffix(".native.json").write_text(json.dumps({**meta, **how}, indent=1) + "\n")
        return str(path)
    path = out.with_suffix(SUFFIX[fmt])
    writers: dict[str, Callable[[], None]] = {
        "pt2": lambda: _pt2(enc, example, path, meta_json),
        "onnx": lambda: _onnx(enc, example, path, meta_json),
        "safetensors": lambda: _safetensors(enc, path, meta_json),
        "torchscript": lambda: _torchscript(enc, example, path, meta_json),
    }
    writers[fmt]()
    return str(path)
