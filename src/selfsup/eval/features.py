"""Frozen-encoder feature extraction for the kNN and linear probes.

The evaluation code never sees a ``Method``: it takes an *encoder*, any ``nn.Module`` mapping a
normalised float batch ``[B, C, H, W]`` to pooled features ``[B, D]`` (e.g. ``method.encoder()``),
a *batch source* (any object with ``__len__`` and ``get_batch(index) -> (images, labels)``, such as
:class:`selfsup.data.datasets.ImageDataset`; objects with only ``__getitem__`` returning
``(image, label, ...)`` also work) and a *preprocess* callable that the caller builds, turning the
raw batch already moved to the device into the encoder's normalised input, e.g.::

    norm = Normalization(...)  # selfsup.data.stats
    preprocess = lambda x: eval_transform(norm.to_unit(x), size, norm.mean, norm.std)
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError

Preprocess = Callable[[Tensor], Tensor]


@runtime_checkable
class BatchSource(Protocol):
    """What :func:`extract_features` reads: a sized set of labelled images fetched by index."""

    def __len__(self) -> int: ...

    def get_batch(self, index: Tensor) -> tuple[Tensor, Tensor]: ...


def _fetch(source: Any, index: Tensor) -> tuple[Tensor, Tensor]:
    """Raw images ``[B, C, H, W]`` and labels ``[B]`` of ``index`` from a batch source."""
    if callable(getattr(source, "get_batch", None)):
        images, labels = source.get_batch(index)
    elif hasattr(source, "__getitem__"):
        items = [source[int(i)] for i in index]
        images = torch.stack([torch.as_tensor(it[0]) for it in items])
        labels = torch.tensor([int(it[1]) for it in items], dtype=torch.long)
    else:
        raise DataError(
            f"evaluation dataset {type(source).__name__} has neither get_batch(index) nor "
            "__getitem__; expected an ImageDataset-like object"
        )
    return torch.as_tensor(images), torch.as_tensor(labels).long().reshape(-1)


def encoder_device(encoder: nn.Module) -> torch.device:
    """The device of the encoder's first parameter or buffer (CPU for a parameter-free module)."""
    for p in encoder.parameters():
        return p.device
    for b in encoder.buffers():
        return b.device
    return torch.device("cpu")


def resolve_device(encoder: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``, defaulting to the encoder's; checks they agree.

    Raises:
        ConfigError: if ``device`` differs from the device holding the encoder's parameters.
    """
    own = encoder_device(encoder)
    if device is None:
        return own
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    has_state = any(True for _ in encoder.parameters()) or any(True for _ in encoder.buffers())
    if has_state and own != dev:
        raise ConfigError(
            f"eval device {dev} differs from the encoder's device {own}; move the encoder with "
            f".to('{dev}') or pass device=None"
        )
    return dev


def extract_features(
    encoder: nn.Module,
    dataset: BatchSource | Sized,
    preprocess: Preprocess,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    normalize: bool = False,
) -> tuple[Tensor, Tensor]:
    """Encode a whole dataset with a frozen encoder.

    The encoder runs in eval mode (batch-norm running statistics, no dropout) under
    ``torch.inference_mode``, with bf16 autocast on CUDA only (fp32 on CPU); each submodule's
    train/eval mode is restored afterwards, also when an error is raised.

    Args:
        encoder: module mapping ``[B, C, H, W]`` float to ``[B, D]`` features.
        dataset: batch source, see the module docstring; read in index order.
        preprocess: raw batch on ``device`` -> normalised float encoder input (outside autocast).
        batch_size: images per forward pass.
        device: where to run; None = the encoder's device. The encoder is not moved.
        normalize: L2-normalise each feature vector.

    Returns:
        ``(features [N, D] float32, labels [N] int64)`` on the CPU, in dataset order
        (``-1`` marks an unlabeled sample).

    Raises:
        DataError: for an empty dataset, an encoder output that is not ``[B, D]``, or non-finite
            features.
        ConfigError: for ``batch_size < 1`` or a device that differs from the encoder's.
    """
    if batch_size < 1:
        raise ConfigError(f"eval batch_size must be >= 1, got {batch_size}")
    n = len(dataset)
    if n == 0:
        raise DataError("evaluation dataset is empty; expected at least one image")
    dev = resolve_device(encoder, device)
    modes = [m.training for m in encoder.modules()]
    encoder.eval()
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                index = torch.arange(start, min(start + batch_size, n))
                raw, y = _fetch(dataset, index)
                x = preprocess(raw.to(dev, non_blocking=True))
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    f = encoder(x)
                if f.dim() != 2 or f.shape[0] != len(index):
                    raise DataError(
                        f"encoder output has shape {tuple(f.shape)} for a batch of "
                        f"{len(index)}; expected pooled features [B, D]"
                    )
                f = f.float()
                if not torch.isfinite(f).all():
                    raise DataError(
                        "encoder produced non-finite features for samples "
                        f"{start}..{start + len(index) - 1}"
                    )
                if normalize:
                    f = F.normalize(f, dim=1)
                feats.append(f.cpu())
                labels.append(y.cpu())
    finally:
        for m, mode in zip(encoder.modules(), modes):
            m.training = mode
    # concatenated outside inference mode: ordinary tensors that later autograd code may use
    return torch.cat(feats), torch.cat(labels)
