"""selfsup: self-supervised pretraining of encoders on unlabeled data, with honest evaluation.

Python API (the CLI calls the same functions)::

    import selfsup
    run = selfsup.pretrain("simclr", data="digits", backbone="small_cnn", steps=200,
                           out="runs/x")
    print(selfsup.evaluate(run.checkpoint)["rows"])      # pretrained vs random init vs pixels
    selfsup.export(run.checkpoint, "enc.pt")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module defining it; imported on first use, so `import selfsup` (and the CLI's
# --help) does not import torch, torchvision and timm
_LAZY = {
    **dict.fromkeys(["BackboneConfig", "DataConfig", "OptimConfig", "RunConfig", "TrainConfig",
                     "ViewConfig"], "selfsup.config"),
    **dict.fromkeys(["create_method", "embed", "evaluate", "export", "list_backbones",
                     "list_methods", "list_presets", "pretrain"], "selfsup.api"),
    "Method": "selfsup.methods.base",
    "PretrainResult": "selfsup.engine.trainer",
    "create_backbone": "selfsup.nn.backbones",
    "load_encoder": "selfsup.engine.export",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """The public names of ``__all__`` (and the subpackages), imported on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'selfsup' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
