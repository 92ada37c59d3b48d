"""The base every method derives from: one ``nn.Module`` holding all training state.

A method owns its backbone (the encoder that is evaluated and exported), its heads and any state
(EMA teachers, queues, centers, prototypes) as submodules or buffers, so ``state_dict()`` is the
whole checkpoint. The trainer calls ``training_step`` on an augmented :class:`~selfsup.types.Batch`
and ``on_step_end(step, total)`` right after ``optimizer.step()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, cast

from torch import nn

from selfsup import registry
from selfsup.config import from_dict
from selfsup.types import Batch, ConfigError, StepOutput


class Method(nn.Module):
    """Base class of self-supervised methods.

    Class attributes a subclass sets:
        Config: the method's ``@dataclass`` of hyper-parameters (paper defaults).
        default_views: name of the view preset the paper uses (`selfsup list presets`).
        default_optim: the paper's optimiser settings, keys of :class:`selfsup.config.OptimConfig`.
    """

    Config: ClassVar[type] = object
    default_views: ClassVar[str] = "simclr"
    default_optim: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: nn.Module, cfg: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.steps_per_epoch = 1  # set by on_train_start

    def feature_dim(self) -> int:
        """The backbone's ``num_features``, checked.

        Raises:
            ConfigError: if the backbone has no positive integer ``num_features``.
        """
        n = getattr(self.backbone, "num_features", None)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"{self.name}: the backbone must have a positive integer "
                              "'num_features'")
        return n

    @staticmethod
    def require_positive(cfg: Any, keys: tuple[str, ...]) -> None:
        """Check that the integer Config fields ``keys`` are >= 1.

        Raises:
            ConfigError: naming ``method_args.<key>`` and the value found.
        """
        for key in keys:
            if getattr(cfg, key) < 1:
                raise ConfigError(f"method_args.{key} must be >= 1, got {getattr(cfg, key)}")

    @property
    def name(self) -> str:
        return str(getattr(type(self), "registry_name", type(self).__name__.lower()))

    def training_step(self, batch: Batch) -> StepOutput:
        """Compute the loss on one augmented batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_step")

    def forward(self, batch: Batch) -> StepOutput:
        """``training_step`` as ``forward``, so DDP's gradient hooks see the call."""
        return self.training_step(batch)

    def on_train_start(self, steps_per_epoch: int, total: int) -> None:
        """Called by the trainer once before the first step (and again on ``--resume``) with the
        number of optimiser steps per epoch and in the whole run, for schedules the papers state in
        epochs (frozen layers during the first epoch, teacher temperature warm-up). Stored as
        ``self.steps_per_epoch``; outside the trainer it stays 1."""
        self.steps_per_epoch = steps_per_epoch

    def on_step_end(self, step: int, total: int) -> None:
        """Update non-gradient state (EMA, queues, centers) after the optimiser step ``step``."""

    def encoder(self) -> nn.Module:
        """The module evaluated by kNN/linear probes and written by ``export``."""
        return self.backbone


def build_method(name: str, backbone: nn.Module, **overrides: Any) -> Method:
    """Create registered method ``name`` around ``backbone`` with Config overrides.

    ``None`` overrides are dropped so the paper default stays.

    Raises:
        UnknownNameError: for an unknown method name (lists the valid ones).
        ConfigError: for an unknown or ill-typed hyper-parameter (names it and the valid ones).
    """
    cls = registry.get("method", name).obj
    cfg_cls = cls.Config
    if not dataclasses.is_dataclass(cfg_cls):
        raise ConfigError(f"method '{name}' has no Config dataclass")
    clean = {k: v for k, v in overrides.items() if v is not None}
    cfg: Any = from_dict(cast(type, cfg_cls), clean, where="method_args")
    method = cls(backbone, cfg)
    assert isinstance(method, Method)
    return method
