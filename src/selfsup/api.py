"""The public Python API, re-exported lazily by :mod:`selfsup` (``selfsup.pretrain`` ...).

Importing this module registers every built-in method, backbone, view preset and dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Importing these registers every built-in method, backbone, view preset and dataset.
import selfsup.data.datasets
import selfsup.data.views
import selfsup.methods
import selfsup.nn.backbones  # noqa: F401
from selfsup import registry
from selfsup.config import RunConfig, replace
from selfsup.engine.evaluate import embed_checkpoint, evaluate_checkpoint
from selfsup.engine.export import export_encoder
from selfsup.engine.trainer import PretrainResult
from selfsup.engine.trainer import pretrain as _pretrain
from selfsup.methods.base import Method, build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.backbones.module import wrap_module

__all__ = ["create_method", "embed", "evaluate", "export", "list_backbones", "list_methods",
           "list_presets", "pretrain"]


def list_methods() -> list[str]:
    """Names of the registered self-supervised methods."""
    return registry.list_names("method")


def list_backbones() -> list[str]:
    """Names of the registered backbones."""
    return registry.list_names("backbone")


def list_presets() -> list[str]:
    """Names of the registered view (augmentation) presets."""
    return registry.list_names("preset")


def create_method(name: str = "simclr", backbone: str | torch.nn.Module = "resnet18", *,
                  in_chans: int = 3, image_size: int = 224,
                  backbone_args: dict[str, Any] | None = None, **config: Any) -> Method:
    """Build method ``name`` around a fresh ``backbone`` (a name, or your own ``torch.nn.Module``);
    ``config`` overrides the method's paper defaults (e.g. ``temperature=0.2``)."""
    if isinstance(backbone, torch.nn.Module):
        enc = wrap_module(backbone, in_chans, image_size)
    else:
        enc = create_backbone(backbone, in_chans=in_chans, image_size=image_size,
                              **(backbone_args or {}))
    return build_method(name, enc, **config)


def pretrain(method: str | None = None, data: Any = None, *,
             backbone: str | torch.nn.Module | None = None, epochs: int | None = None,
             steps: int | None = None, batch_size: int | None = None, out: str | None = None,
             init: str | Path | None = None, config: RunConfig | None = None,
             overrides: Sequence[str] = (), resume: bool = False,
             **method_args: Any) -> PretrainResult:
    """Pretrain ``method`` on ``data``.

    Args:
        method: registered method name (default: the ``config``'s, else ``simclr``).
        data: a folder, an array file or a built-in name, or images from Python: an array or
            tensor, ``(images, labels)``, or a ``torch.utils.data.Dataset`` (default: the
            ``config``'s, else ``digits``).
        backbone: a backbone name (``selfsup list backbones --all``: also ``timm:NAME``,
            ``torchvision:NAME``, ``python:pkg.module:factory``) or your own ``torch.nn.Module``,
            trained in place (the feature size is found by one forward pass; the checkpoint
            holds its weights, so evaluating it later needs the module again).
        init: start the backbone from these weights (a state_dict, timm checkpoint, selfsup
            export or checkpoint, ``.safetensors``); what loaded is logged.
        config, overrides: a :class:`RunConfig` and dotted ``key=value`` strings (the CLI's
            ``--set``). Other keyword arguments are method hyper-parameters
            (``temperature=0.2``).

    Returns:
        The :class:`~selfsup.engine.trainer.PretrainResult` (``.checkpoint``, ``.method``, ...).
    """
    from selfsup.config import apply_overrides
    from selfsup.data.python_data import describe, is_python_data
    from selfsup.nn.backbones.module import module_name

    module = backbone if isinstance(backbone, torch.nn.Module) else None
    source = data if data is not None and is_python_data(data) else None
    cfg = config or RunConfig()
    cfg = replace(cfg, method=method, method_args={**cfg.method_args, **method_args})
    cfg = replace(cfg, data=replace(cfg.data, path=describe(source) if source is not None
                                    else (str(data) if data is not None else None)),
                  backbone=replace(cfg.backbone, name=module_name(module) if module is not None
                                   else backbone, init=str(init) if init else None),
                  train=replace(cfg.train, epochs=epochs, steps=steps, batch_size=batch_size,
                                out=out))
    return _pretrain(apply_overrides(cfg, list(overrides)), resume=resume, backbone=module,
                     data=source)


def evaluate(checkpoint: str | Path, data: Any = None, test_data: Any = None,
             which: Sequence[str] = ("knn", "linear"), *, backbone: torch.nn.Module | None = None,
             **kwargs: Any) -> dict[str, Any]:
    """kNN / linear-probe accuracy of a checkpoint's encoder beside the random-init and
    raw-pixel baselines (see :func:`selfsup.engine.evaluate.evaluate_checkpoint`). ``data`` and
    ``test_data`` take what :func:`pretrain` takes; ``backbone``: the module a run on your own
    ``torch.nn.Module`` trained (a copy receives the weights)."""
    return evaluate_checkpoint(str(checkpoint), data, test_data, which=which, backbone=backbone,
                               **kwargs)


def embed(checkpoint: str | Path, data: Any, *, backbone: torch.nn.Module | None = None,
          **kwargs: Any) -> np.ndarray:
    """Embeddings ``[N, D]`` of ``data`` (what :func:`pretrain` takes) by a checkpoint's
    encoder."""
    return embed_checkpoint(str(checkpoint), data, backbone=backbone, **kwargs)[0]


def export(checkpoint: str | Path, out: str | Path, *, formats: Sequence[str] = ("pt2",),
           torchscript: bool = False, backbone: torch.nn.Module | None = None) -> dict[str, Any]:
    """Write the encoder to ``out`` (weights + metadata) and in ``formats`` beside it (``pt2``,
    ``onnx``, ``safetensors``, ``torchscript``, ``native``; :mod:`selfsup.engine.export_formats`)."""
    return export_encoder(checkpoint, out, formats=formats, torchscript=torchscript,
                          backbone=backbone)
