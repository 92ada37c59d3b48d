"""Your own ``nn.Module`` as a backbone: from Python (``selfsup.pretrain(..., backbone=net)``) or
as an importable factory on the command line (``--backbone python:mypkg.nets:build``).

The module maps ``[B, C, H, W]`` images to features ``[B, D]`` or to a map ``[B, D, h, w]``; one
dry forward pass at the data's channel count and size finds ``D`` (no ``num_features`` attribute
needed). A map is average-pooled for the pooled features and is also the backbone's spatial map
(``forward_features``, which dense methods such as PixPro need); a module with its own
``forward_features`` keeps it. A module that already satisfies the backbone contract
(``num_features`` and a ``[B, num_features]`` forward, e.g. from :func:`create_backbone`) is used
as it is.

A run on a module passed from Python records ``backbone.name = "module:<its class path>"``: the
checkpoint holds the weights but not the code, so evaluating or exporting it needs the module
again (``selfsup.evaluate(ckpt, backbone=Net())``); a ``python:`` factory is rebuilt from its
name, so the command line works on such runs too.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.nn.backbones.external import ExternalBackbone
from selfsup.types import ConfigError

__all__ = ["ModuleBackbone", "build_python", "fresh_copy", "module_name", "wrap_module"]


class ModuleBackbone(ExternalBackbone):
    """A user module behind the backbone contract; the module is ``self.model`` (the wrapper's
    attributes are :class:`ExternalBackbone`'s; ``num_features`` is found by a dry forward pass,
    ``source_name`` is ``module:<class path>`` or ``python:<factory>``)."""

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, num_features]`` (a map output is average-pooled)."""
        out: Tensor = self.model(x)
        return out.mean(dim=(2, 3)) if out.dim() == 4 else out


class ModuleSpatialBackbone(ModuleBackbone):
    """A user module with a spatial map: its ``forward_features``, else its 4-D output."""

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, num_features, h, w]``."""
        own = getattr(self.model, "forward_features", None)
        out: Tensor = own(x) if callable(own) else self.model(x)
        return out


def module_name(module: nn.Module) -> str:
    """``module:<module path>.<class name>``: what a run records for a module passed in Python."""
    cls = type(module)
    return f"module:{cls.__module__}.{cls.__qualname__}"


def _probe(module: nn.Module, in_chans: int, image_size: int, who: str) -> Tensor:
    """One forward of ``[2, in_chans, size, size]`` zeros in eval mode (the mode is restored).

    Raises:
        ConfigError: naming ``who`` when the module fails on that input or returns no tensor.
    """
    was_training = module.training
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(2, in_chans, image_size, image_size))
    except Exception as e:  # any error of user code is reported the same way
        raise ConfigError(f"backbone {who} fails on [2, {in_chans}, {image_size}, {image_size}] "
                          f"input (the data's channels and size): {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
    finally:
        module.train(was_training)
    if not isinstance(out, Tensor) or out.dim() not in (2, 4) or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"backbone {who} returns {got}; a backbone must return features "
                          "[B, D] or a map [B, D, h, w]")
    return out


def wrap_module(module: nn.Module, in_chans: int, image_size: int,
                source_name: str | None = None) -> nn.Module:
    """``module`` behind the backbone contract (see the module docstring).

    Raises:
        ConfigError: if ``module`` is not an ``nn.Module``, fails on the data's input, or
            returns something other than ``[B, D]`` / ``[B, D, h, w]``.
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"backbone must be a name or a torch.nn.Module, got "
                          f"{type(module).__name__}")
    name = source_name or module_name(module)
    out = _probe(module, in_chans, image_size, f"'{name}'")
    dim = int(out.shape[1])
    own = getattr(module, "num_features", None)
    if out.dim() == 2 and own == dim:
        return module  # already a backbone (num_features, pooled forward)
    spatial = out.dim() == 4 or callable(getattr(module, "forward_features", None))
    cls = ModuleSpatialBackbone if spatial else ModuleBackbone
    return cls(module, name, dim, in_chans, image_size)


def fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every submodule's ``reset_parameters()`` called: the same
    architecture at random init (the baseline of every evaluation). Parameters of modules without
    ``reset_parameters`` keep their values."""
    new = copy.deepcopy(module)
    for m in new.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return new


def build_python(name: str, in_chans: int, image_size: int, **options: Any) -> nn.Module:
    """``python:pkg.module:factory`` -> ``factory(**options)`` behind the backbone contract;
    ``in_chans`` and ``image_size`` are passed when the factory takes them.

    Raises:
        ConfigError: if the module cannot be imported, has no such attribute, the factory
            rejects the options or returns no ``nn.Module`` (or one that fails the dry run).
    """
    target = name.partition(":")[2]
    mod_name, _, attr = target.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"backbone '{name}': expected python:<module>:<factory>, e.g. "
                          "python:mypkg.nets:build_net")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except ImportError as e:
        raise ConfigError(f"backbone '{name}': cannot import '{mod_name}' ({e})") from None
    except AttributeError:
        raise ConfigError(f"backbone '{name}': module '{mod_name}' has no '{attr}'") from None
    kwargs = dict(options)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    for key, value in (("in_chans", in_chans), ("image_size", image_size)):
        if key in params:
            kwargs.setdefault(key, value)
    try:
        module = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"backbone '{name}': {e} (backbone.kwargs go to the factory)") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"backbone '{name}' returned {type(module).__name__}, not an "
                          "nn.Module")
    return wrap_module(module, in_chans, image_size, name)
