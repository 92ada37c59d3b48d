"""selfsup: self-supervised pretraining of encoders on unlabeled data, with honest evaluation.

Python API (the CLI calls the same functions)::

    import selfsup
    run = selfsup.pretrain("simclr", data="digits", backbone="small_cnn", steps=200,
                           out="runs/x")
    print(selfsup.evaluate(run.checkpoint)["rows"])      # pretrained vs random init vs pixels
    selfsup.export(run.checkpoint, "enc.pt")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Importing these registers every built-in method, backbone, view preset and dataset.
import selfsup.data.datasets
import selfsup.data.views
import selfsup.methods
import selfsup.nn.backbones  # noqa: F401
from selfsup import registry
from selfsup.config import (
    BackboneConfig,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    ViewConfig,
    replace,
)
from selfsup.engine.evaluate import embed_checkpoint, evaluate_checkpoint
from selfsup.engine.export import export_encoder, load_encoder
from selfsup.engine.trainer import PretrainResult
from selfsup.engine.trainer import pretrain as _pretrain
from selfsup.methods.base import Method, build_method
from selfsup.nn.backbones import create_backbone

__version__ = "0.1.0"

__all__ = [
    "BackboneConfig", "DataConfig", "Method", "OptimConfig", "PretrainResult", "RunConfig",
    "TrainConfig", "ViewConfig", "create_backbone", "create_method", "embed", "evaluate",
    "export", "list_backbones", "list_methods", "list_presets", "load_encoder", "pretrain",
]


def list_methods() -> list[str]:
    """Names of the registered self-supervised methods."""
    return registry.list_names("method")


def list_backbones() -> list[str]:
    """Names of the registered backbones."""
    return registry.list_names("backbone")


def list_presets() -> list[str]:
    """Names of the registered view (augmentation) presets."""
    return registry.list_names("preset")


def create_method(name: str = "simclr", backbone: str = "resnet18", *, in_chans: int = 3,
                  image_size: int = 224, backbone_args: dict[str, Any] | None = None,
                  **config: Any) -> Method:
    """Build method ``name`` around a fresh ``backbone``; ``config`` overrides the method's
    paper defaults (e.g. ``temperature=0.2``)."""
    enc = create_backbone(backbone, in_chans=in_chans, image_size=image_size,
                          **(backbone_args or {}))
    return build_method(name, enc, **config)


def pretrain(method: str | None = None, data: str | None = None, *, backbone: str | None = None,
             epochs: int | None = None, steps: int | None = None,
             batch_size: int | None = None, out: str | None = None,
             config: RunConfig | None = None, overrides: Sequence[str] = (),
             resume: bool = False, **method_args: Any) -> PretrainResult:
    """Pretrain ``method`` on ``data`` (folder, array file or built-in name).

    ``method`` and ``data`` default to the ``config``'s (without a config: ``simclr`` on
    ``digits``). Keyword arguments not named here are method hyper-parameters (``temperature=0.2``);
    ``overrides`` takes dotted ``key=value`` strings like the CLI's ``--set``. Returns the
    :class:`~selfsup.engine.trainer.PretrainResult` (``.checkpoint``, ``.method``, ...).
    """
    from selfsup.config import apply_overrides

    cfg = config or RunConfig()
    cfg = replace(cfg, method=method, method_args={**cfg.method_args, **method_args})
    cfg = replace(cfg, data=replace(cfg.data, path=data),
                  backbone=replace(cfg.backbone, name=backbone),
                  train=replace(cfg.train, epochs=epochs, steps=steps, batch_size=batch_size,
                                out=out))
    return _pretrain(apply_overrides(cfg, list(overrides)), resume=resume)


def evaluate(checkpoint: str | Path, data: str | None = None, test_data: str | None = None,
             which: Sequence[str] = ("knn", "linear"), **kwargs: Any) -> dict[str, Any]:
    """kNN / linear-probe accuracy of a checkpoint's encoder beside the random-init and
    raw-pixel baselines (see :func:`selfsup.engine.evaluate.evaluate_checkpoint`)."""
    return evaluate_checkpoint(str(checkpoint), data, test_data, which=which, **kwargs)


def embed(checkpoint: str | Path, data: str, **kwargs: Any) -> np.ndarray:
    """Embeddings ``[N, D]`` of ``data`` by a checkpoint's encoder."""
    return embed_checkpoint(str(checkpoint), data, **kwargs)[0]


def export(checkpoint: str | Path, out: str | Path, *, torchscript: bool = True) -> dict[str, Any]:
    """Write the encoder (weights + metadata, and TorchScript) to ``out``."""
    return export_encoder(checkpoint, out, torchscript=torchscript)
