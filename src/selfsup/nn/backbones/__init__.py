"""Encoders mapping ``[B, in_chans, H, W]`` images to pooled ``[B, num_features]`` features.

Every registered backbone is a factory ``(in_chans: int = 3, image_size: int = 224, **options)
-> nn.Module`` whose module carries the attributes ``num_features``, ``in_chans`` and
``image_size`` and a ``forward_features(x) -> [B, num_features, h, w]`` giving the spatial map
before pooling (a ViT's patch tokens as a grid). Built-ins (`selfsup list backbones`): ``resnet18/34/50`` (torchvision),
``vit_tiny/small/base`` (timm), ``convvit_tiny/base`` (ConvMAE's hybrid
conv-transformer) and ``small_cnn`` (a lean CNN for tests and CPU runs). Beyond them
(:mod:`~selfsup.nn.backbones.external`, :mod:`~selfsup.nn.backbones.module`): every timm model
(``timm:NAME``), every torchvision classification model (``torchvision:NAME``), an importable
factory (``python:pkg.module:factory``) and, from Python, any ``nn.Module``. Weights are
always randomly initialised; nothing is ever downloaded.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from selfsup import registry
from selfsup.nn.backbones import (  # noqa: F401  (registers the backbones)
    convvit,
    resnet,
    small_cnn,
    vit,
)
from selfsup.nn.backbones.external import create_external, is_external, source_of
from selfsup.nn.backbones.module import build_python
from selfsup.types import ConfigError

__all__ = ["backbone_takes", "check_backbone_name", "create_backbone", "list_backbones"]


def check_backbone_name(name: str) -> None:
    """Fail early (before any data is read) on a backbone name that cannot be built.

    Raises:
        UnknownNameError: for an unknown built-in name (listing the valid ones).
        ConfigError: for an unknown ``timm:``/``torchvision:`` model, a malformed ``python:``
            name, or a ``module:`` name (a Python module that only Python can pass again).
    """
    if is_external(name):
        source, model = source_of(name)
        from selfsup.nn.backbones.external import list_external, unknown_model

        if source == "timm":
            import timm

            known = timm.is_model(model)
        else:
            known = f"torchvision:{model}" in list_external("torchvision", model)
        if not known:
            raise unknown_model(source, model)
    elif name.startswith("module:"):
        raise _module_error(name)
    elif not name.startswith("python:"):
        registry.get("backbone", name)


def _module_error(name: str) -> ConfigError:
    cls = name.partition(":")[2]
    short = cls.rpartition(".")[2] or cls
    return ConfigError(
        f"backbone '{name}' was a Python module passed to selfsup.pretrain(backbone=...); the "
        f"checkpoint has its weights, not its code: pass the module again "
        f"(selfsup.evaluate(ckpt, backbone={short}(...)), selfsup.export(ckpt, out, "
        f"backbone={short}(...))), or train with an importable factory "
        f"(--backbone python:<module>:<factory>) that the command line can rebuild"
    )


def backbone_takes(name: str, option: str) -> bool:
    """Whether backbone ``name``'s factory takes keyword ``option`` (timm models are assumed to
    take timm's common ``global_pool``)."""
    if is_external(name):
        return name.startswith("timm:") and option == "global_pool"
    if ":" in name:
        return False
    return option in inspect.signature(registry.get("backbone", name).obj).parameters


def list_backbones() -> list[str]:
    """Sorted names of the registered backbones."""
    return registry.list_names("backbone")


def create_backbone(name: str, in_chans: int = 3, image_size: int = 224, **kw: Any) -> nn.Module:
    """Build registered backbone ``name`` with random weights.

    ``None`` options are dropped so the backbone's own default applies (timm's ``create_model``
    convention: an unset CLI option never overrides the model's default).

    Args:
        name: registry name, e.g. ``"resnet18"``, ``"vit_small"``, ``"small_cnn"``, or
            ``timm:NAME``, ``torchvision:NAME``, ``python:pkg.module:factory``.
        in_chans: number of input channels (any positive number: 1 for MNIST, 13 for Sentinel-2).
        image_size: side length of the (square) input images in pixels.
        **kw: backbone options, e.g. ``cifar_stem`` (ResNet), ``patch_size`` (ViT), ``width``.

    Returns:
        An ``nn.Module`` with ``num_features``, ``in_chans`` and ``image_size`` attributes whose
        forward maps ``[B, in_chans, image_size, image_size]`` to ``[B, num_features]``.

    Raises:
        UnknownNameError: for an unknown ``name`` (the message lists the valid names).
        ConfigError: for a non-positive ``in_chans``/``image_size``, an option the backbone does
            not have, or an invalid combination (e.g. a patch size not dividing the image size).
    """
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ConfigError(
            f"backbone '{name}': in_chans must be a positive integer, got {in_chans!r}"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(
            f"backbone '{name}': image_size must be a positive integer, got {image_size!r}"
        )
    options = {k: v for k, v in kw.items() if v is not None}
    if is_external(name):
        return create_external(name, in_chans, image_size, **options)
    if name.startswith("python:"):
        return build_python(name, in_chans, image_size, **options)
    if name.startswith("module:"):
        raise _module_error(name)
    entry = registry.get("backbone", name)
    params = inspect.signature(entry.obj).parameters
    valid = sorted(p for p in params if p not in ("in_chans", "image_size"))
    for key in options:
        if key not in params:
            raise ConfigError(
                f"backbone '{name}' has no option '{key}'; valid options: {', '.join(valid)}"
            )
    model = registry.create("backbone", name, in_chans=in_chans, image_size=image_size, **options)
    assert isinstance(model, nn.Module)
    return model
