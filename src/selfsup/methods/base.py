"""The base every method derives from: one ``nn.Module`` holding all training state.

A method owns its backbone (the encoder that is evaluated and exported), its heads and any state
(EMA teachers, queues, centers, prototypes) as submodules or buffers, so ``state_dict()`` is the
whole checkpoint. The trainer calls ``training_step`` on an augmented :class:`~selfsup.types.Batch`
and ``on_step_end(step, total)`` right after ``optimizer.step()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, cast

from torch import Tensor, nn

from selfsup import registry
from selfsup.config import Recipe, from_dict
from selfsup.types import Batch, ConfigError, StepOutput

# lightly's CIFAR-10 benchmark (lightly-ai/lightly
# docs/source/getting_started/benchmarks/cifar10_benchmark.py, `batch_size = 128`,
# `lr_factor = batch_size / 128`): the optimiser most of its models share, `torch.optim.SGD(
# self.parameters(), lr=6e-2 * lr_factor, momentum=0.9, weight_decay=5e-4)` with
# `CosineAnnealingLR` over the run and no warm-up. 0.06 x B / 128 = 0.12 x B / 256; weight decay on
# every parameter, as `self.parameters()` passes them whole.
LIGHTLY_CIFAR10_SOURCE = ("lightly-ai/lightly docs/source/getting_started/benchmarks/"
                          "cifar10_benchmark.py")
LIGHTLY_CIFAR10_SGD: dict[str, Any] = {
    "name": "sgd", "lr": 0.12, "lr_scaling": "linear", "momentum": 0.9, "weight_decay": 5e-4,
    "decay_norm_bias": True, "warmup_epochs": 0, "min_lr_ratio": 0.0, "clip_grad": 0.0,
}
# Its `SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`: colour jitter
# (0.8, 0.8, 0.8, 0.2) x 0.5 with p 0.8, grayscale 0.2, no blur (crop 0.08-1 and flip as SimCLR's).
LIGHTLY_CIFAR10_COLOR: dict[str, Any] = {
    "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "blur_p": 0.0,
}


class Method(nn.Module):
    """Base class of self-supervised methods.

    Class attributes a subclass sets:
        Config: the method's ``@dataclass`` of hyper-parameters (paper defaults).
        default_views: name of the view preset the paper uses (`selfsup list presets`).
        default_optim: the paper's optimiser settings, keys of :class:`selfsup.config.OptimConfig`.
        small_recipe: the small-image settings of an anchor's CIFAR-10 benchmark, or ``None``
            when no published small-image recipe is followed (`selfsup list recipes`).
        backbone_kind: ``"any"`` (any backbone with ``num_features``) or ``"vit"`` (masked
            image modeling: a ViT with token access, ``selfsup list backbones``).
        eval_pool: the ViT pooling the paper evaluates (``"token"`` or ``"avg"``), filled into
            ``backbone.kwargs.global_pool`` when the user leaves it unset and the backbone takes
            it (:func:`selfsup.engine.runs.build_parts`); ``None`` keeps the backbone's default.
    """

    Config: ClassVar[type] = object
    default_views: ClassVar[str] = "simclr"
    default_optim: ClassVar[dict[str, Any]] = {}
    small_recipe: ClassVar[Recipe | None] = None
    backbone_kind: ClassVar[str] = "any"
    eval_pool: ClassVar[str | None] = None

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

    def before_optimizer_step(self, step: int) -> None:
        """Called after the last micro-batch's backward of optimiser step ``step`` (gradients
        reduced over ranks, not yet clipped), before ``optimizer.step()``: edit gradients the
        reference edits there (DINO drops its frozen last layer's, ``p.grad = None``)."""

    def on_step_end(self, step: int, total: int) -> None:
        """Update non-gradient state (EMA, queues, centers) after the optimiser step ``step``."""

    # Epoch-level hooks, for methods that re-cluster the dataset every epoch (DeepCluster). The
    # trainer calls them at the start of every epoch, but not when it resumes in the middle of
    # one (the epoch's state is then in the checkpoint); the defaults do nothing.

    def wants_epoch_features(self, epoch: int) -> bool:
        """Whether :meth:`on_epoch_start` of ``epoch`` needs the features of the training set."""
        return False

    def epoch_feature_encoder(self) -> nn.Module:
        """The module whose outputs ``[B, D]`` on un-augmented training images (the evaluation
        transform) are passed to :meth:`on_epoch_start`; the encoder by default."""
        return self.encoder()

    def on_epoch_start(self, epoch: int, features: Tensor | None, index: Tensor | None,
                       seed: int) -> list[nn.Parameter]:
        """Prepare ``epoch`` before its first step.

        Args:
            epoch: the epoch about to start (0-based).
            features: ``[n, D]`` outputs of :meth:`epoch_feature_encoder` for this rank's shard of
                the training set (on the training device), if :meth:`wants_epoch_features`;
                else None. Shards of the ranks are disjoint and cover the set.
            index: ``[n]`` dataset indices of those rows, or None.
            seed: the run's seed; random choices made here must depend only on it and ``epoch``
                (the same on every rank) so a resumed run repeats them.

        Returns:
            Parameters the method re-initialised; the trainer drops their optimiser state.
        """
        return []

    def epoch_sample_labels(self) -> Tensor | None:
        """``[N]`` labels over whose classes the current epoch samples uniformly (DeepCluster's
        pseudo-labels; ``-1``: never drawn), or None for the usual shuffle."""
        return None

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
