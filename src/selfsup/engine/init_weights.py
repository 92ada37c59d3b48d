"""Continued pretraining: start a backbone from existing weights (``--init PATH``,
``backbone.init``), the usual domain-adaptation case.

Accepted files: a plain ``state_dict`` (``torch.save(model.state_dict())``), a timm or
torchvision checkpoint (a dict holding ``state_dict`` / ``model``), a selfsup export (``enc.pt``)
or training checkpoint (``last.pt``: its ``backbone.*`` weights), and ``.safetensors``. Keys are
matched after stripping the usual wrappers (``module.`` of DDP, ``backbone.``, ``encoder.``,
``model.``) or adding ``model.`` (timm / torchvision models inside selfsup's wrapper), whichever
matches most. An input convolution whose channel count differs (an RGB model started on 13-band
images) is adapted as timm's ``adapt_input_conv`` does: the RGB kernels repeated over the new
channels and scaled by ``3 / C``, which keeps the activation scale (exactly, for a constant
image, when ``C`` is a multiple of 3). Every other
tensor of another shape is skipped; all of it is reported (:class:`InitReport`).
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.types import ConfigError

__all__ = ["InitReport", "init_weights", "read_state_dict"]

_WRAPPERS = ("module.", "backbone.", "encoder.", "model.")


@dataclass
class InitReport:
    """What :func:`init_weights` did. Key lists use the backbone's names."""

    path: str
    loaded: int = 0  # tensors copied unchanged (or adapted)
    total: int = 0  # tensors in the backbone's state_dict
    adapted: list[str] = field(default_factory=list)  # input convs resized to other channels
    skipped: list[str] = field(default_factory=list)  # "key: file shape vs backbone shape"
    missing: list[str] = field(default_factory=list)  # backbone keys not in the file
    unexpected: list[str] = field(default_factory=list)  # file keys the backbone lacks

    def summary(self) -> str:
        """One line for the run's log."""
        parts = [f"init: {self.loaded}/{self.total} backbone tensors from '{self.path}'"]
        for what, keys in (("adapted to the data's channels", self.adapted),
                           ("skipped (other shape)", self.skipped),
                           ("missing (kept random)", self.missing),
                           ("unused from the file", self.unexpected)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{what}: {', '.join(keys[:3])}{more}")
        return "; ".join(parts)


def _unwrap(obj: Any, path: str) -> dict[str, Tensor]:
    if isinstance(obj, dict):
        fmt = obj.get("format")
        if fmt == "selfsup-encoder-v1":
            obj = obj["state_dict"]
        elif fmt == "selfsup-checkpoint-v1":
            obj = {k[len("backbone."):]: v for k, v in obj["model"].items()
                   if k.startswith("backbone.")}
        else:
            for key in ("state_dict", "model", "module"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ConfigError(f"--init '{path}': no state_dict found (expected a mapping of names "
                          "to tensors, a timm/torchvision checkpoint, or a selfsup export or "
                          "checkpoint)")
    return dict(obj)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The weights in ``path`` as a flat ``{name: tensor}`` on the CPU.

    Raises:
        ConfigError: for a missing or unreadable file, or one holding no state_dict.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--init '{path}' does not exist")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(p)), str(path))
        except SafetensorError as e:
            raise ConfigError(f"--init '{path}' is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # selfsup's own checkpoints also hold RNG states and configs; read them as the trainer
        # does (only selfsup formats are accepted on this path)
        from selfsup.engine import checkpoint
        from selfsup.types import CheckpointError

        try:
            obj = checkpoint.load(p, expect="selfsup-encoder-v1")
        except CheckpointError:
            try:
                obj = checkpoint.load(p)
            except CheckpointError as e:
                raise ConfigError(f"--init '{path}' is unreadable or not a weights file "
                                  f"({str(e)[:200]})") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError) as e:
        raise ConfigError(f"--init '{path}' is unreadable ({str(e)[:200]})") from None
    return _unwrap(obj, str(path))


def _rename(keys: list[str], target: set[str]) -> dict[str, str]:
    """The file-key -> backbone-key mapping (strip a wrapper prefix, or add ``model.``) that
    matches the most backbone keys."""
    best: dict[str, str] = {k: k for k in keys}
    score = len(target & set(keys))
    def strip(prefix: str) -> Callable[[str], str]:
        return lambda k: k[len(prefix):] if k.startswith(prefix) else k

    def add_model(k: str) -> str:
        return "model." + strip("module.")(k)

    options: list[Callable[[str], str]] = [strip(w) for w in _WRAPPERS] + [add_model]
    for f in options:
        m = {k: f(k) for k in keys}
        s = len(target & set(m.values()))
        if s > score:
            best, score = m, s
    return best


def _adapt_input_conv(w: Tensor, in_chans: int) -> Tensor:
    """``[O, c, k, k]`` kernels -> ``[O, in_chans, k, k]``: repeated over channels and scaled by
    ``c / in_chans`` (timm ``_manipulate.adapt_input_conv``'s rule for ``c = 3``; summed to one
    channel for ``in_chans = 1``)."""
    c = w.shape[1]
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / c)
    return w.repeat(1, reps, 1, 1)[:, :in_chans] * (c / in_chans)


def init_weights(backbone: nn.Module, path: str | Path) -> InitReport:
    """Load the weights in ``path`` into ``backbone`` in place (see the module docstring).

    Raises:
        ConfigError: if the file cannot be read or none of its tensors fits the backbone.
    """
    state = read_state_dict(path)
    own = backbone.state_dict()
    mapping = _rename(list(state), set(own))
    report = InitReport(str(path), total=len(own))
    new: dict[str, Tensor] = {}
    for src, dst in mapping.items():
        v = state[src]
        if dst not in own:
            report.unexpected.append(src)
            continue
        mine = own[dst]
        if v.shape == mine.shape:
            new[dst] = v.to(mine.dtype)
        elif v.dim() == 4 and mine.dim() == 4 and v.shape[0] == mine.shape[0] \
                and v.shape[2:] == mine.shape[2:] and v.is_floating_point():
            new[dst] = _adapt_input_conv(v, mine.shape[1]).to(mine.dtype)
            report.adapted.append(f"{dst} ({v.shape[1]} -> {mine.shape[1]} channels)")
        else:
            report.skipped.append(f"{dst} {list(v.shape)} in the file, {list(mine.shape)} here")
    report.missing = [k for k in own if k not in new and k not in
                      {s.split(" ")[0] for s in report.skipped}]
    if not new:
        raise ConfigError(f"--init '{path}': none of its {len(state)} tensors fits backbone "
                          f"{type(backbone).__name__} (file keys like {list(state)[:3]}, "
                          f"backbone keys like {list(own)[:3]})")
    backbone.load_state_dict(new, strict=False)
    report.loaded = len(new)
    return report
