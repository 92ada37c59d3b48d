"""Shared leaf types: the batch handed to a method, what a training step returns, the backbone
protocol and the library's error classes (every user-facing error derives from
:class:`SelfsupError`, which the CLI prints as one line without a traceback)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor


class SelfsupError(Exception):
    """Base class of all errors caused by user input (files, options, checkpoints)."""


class ConfigError(SelfsupError, ValueError):
    """An option or config value is unknown or invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A method, backbone, preset or dataset name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(SelfsupError, ValueError):
    """A dataset path, file or array does not have the expected form."""


class CheckpointError(SelfsupError, ValueError):
    """A checkpoint is missing, corrupt or does not match the requested method/backbone."""


class NonFiniteLossError(SelfsupError, FloatingPointError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class NonFiniteGradientError(NonFiniteLossError):
    """A finite loss gave NaN/inf gradients; the step was not taken, the last good checkpoint is
    kept."""


class NonFiniteParameterError(NonFiniteLossError):
    """A parameter or buffer became NaN/inf; no checkpoint was written with it."""


@dataclass
class Batch:
    """What the trainer hands to ``Method.training_step``.

    Attributes:
        views: augmented, normalised float views, each ``[B, C, H, W]`` on the training device;
            multi-crop presets give views of different sizes (global views first).
        index: dataset indices of the samples ``[B]`` (int64), for memory banks and pseudo-labels.
        labels: class labels ``[B]`` if the dataset has them (never used by SSL losses), else None.
        boxes: per view, the crop box of every sample in normalised source coordinates
            ``[B, 4]`` as ``(y0, x0, y1, x1)``, for methods that match regions across views:
            the source position of the view's top-left and bottom-right corners, so a
            horizontally flipped view has ``x0 > x1``.
        masks: per-sample masks of masked image modeling drawn outside the method, as index or
            boolean tensors with the batch in dim 0, keyed by the names the method's
            ``sample_masks`` returns (e.g. MAE's ``keep`` / ``mask`` / ``ids_restore``); None:
            the method draws its own from torch's RNG on the batch's device.
    """

    views: list[Tensor]
    index: Tensor
    labels: Tensor | None = None
    boxes: list[Tensor] | None = None
    masks: dict[str, Tensor] | None = None


@dataclass
class StepOutput:
    """What ``Method.training_step`` returns.

    Attributes:
        loss: scalar loss to back-propagate.
        logs: extra detached scalars to log (e.g. the loss's terms), keyed by short names.
        embeddings: ``[B, D]`` embeddings (e.g. projector outputs of the first view) used by the
            trainer's collapse monitor; None to skip monitoring.
    """

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)
    embeddings: Tensor | None = None


@runtime_checkable
class Backbone(Protocol):
    """An encoder mapping ``[B, in_chans, H, W]`` images to pooled ``[B, num_features]`` features."""

    num_features: int
    in_chans: int

    def __call__(self, x: Tensor) -> Tensor: ...
