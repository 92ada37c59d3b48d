"""Typed run configuration: dataclasses whose defaults are the paper's, YAML load/save and dotted
command-line overrides (``train.lr=0.1``).

A field left ``None`` means "the method's / backbone's / dataset's own default"; the trainer
resolves every ``None`` before training and saves the fully resolved config as ``config.yaml`` in
the run folder and inside every checkpoint.

Method-specific hyper-parameters live in each method's own ``Config`` dataclass
(``selfsup.methods.<name>.Config``); here they are carried as the plain mapping
``RunConfig.method_args`` so that this module stays a leaf.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from selfsup.types import ConfigError

C = TypeVar("C")


@dataclass
class ViewConfig:
    """One group of identically-distributed augmented views (SimCLR appendix A; BYOL table 6).

    A view preset is a list of these: SimCLR uses one group with ``n=2``; BYOL two asymmetric
    groups with ``n=1``; DINO a global group (``n=2``) and a local group (``n=N``) at a smaller size.
    Defaults are SimCLR's ImageNet recipe (colour strength s=1.0). Sizes are absolute pixels; a
    preset scales them to the dataset's image size.
    """

    n: int = 2  # number of views drawn from this group
    size: int = 224  # output side length in pixels
    scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area fraction (SimCLR A)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random-resized-crop aspect ratio range
    hflip_p: float = 0.5  # horizontal flip probability
    jitter_p: float = 0.8  # probability of applying colour jitter (SimCLR A: 0.8)
    brightness: float = 0.8  # 0.8 * s with s = 1 (SimCLR A)
    contrast: float = 0.8  # 0.8 * s
    saturation: float = 0.8  # 0.8 * s; RGB only
    hue: float = 0.2  # 0.2 * s; RGB only
    grayscale_p: float = 0.2  # random grayscale probability; RGB only
    blur_p: float = 0.5  # Gaussian blur probability (SimCLR A: 0.5, off for CIFAR)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma range in pixels at size 224
    solarize_p: float = 0.0  # solarisation probability (BYOL's second view: 0.2)
    solarize_threshold: float = 0.5  # threshold in [0, 1] units


@dataclass
class DataConfig:
    """Where the images come from and how they are turned into unit-range floats."""

    path: str = "digits"  # folder, .npz/.npy file, or a built-in name (`selfsup list datasets`)
    split: str = "train"  # which split of a built-in/npz source (train | test | all)
    labeled_fraction: float | None = None  # keep labels on this fraction only (rest unlabeled)
    val_fraction: float = 0.0  # hold out this fraction for the online kNN monitor
    image_size: int | None = None  # resize target; None keeps the data's native size
    mean: list[float] | None = None  # per-channel mean in unit range; None = computed from data
    std: list[float] | None = None  # per-channel std in unit range; None = computed from data
    low: list[float] | None = None  # per-channel raw value mapped to 0; None = from dtype/data
    high: list[float] | None = None  # per-channel raw value mapped to 1; None = from dtype/data
    limit: int | None = None  # use only the first N samples (quick experiments)
    num_workers: int = 0  # DataLoader workers (images are decoded once, so 0 is often fastest)
    strict: bool = False  # fail on unreadable images instead of skipping them with a warning
    seed: int = 0  # seed of the labeled/val split


@dataclass
class BackboneConfig:
    """Which encoder to build (`selfsup list backbones`)."""

    name: str = "resnet18"
    cifar_stem: bool | None = None  # ResNet: 3x3 stride-1 stem, no max-pool; None = auto (<= 64 px)
    patch_size: int | None = None  # ViT patch size; None = backbone default for the image size
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments
    init: str | None = None  # start from these weights (state_dict, timm checkpoint, selfsup
    # export or run checkpoint, .safetensors); None = random init


@dataclass
class OptimConfig:
    """Optimiser and schedule; ``None`` fields take the method's paper defaults."""

    name: str | None = None  # sgd | adamw | lars
    lr: float | None = None  # base learning rate at batch 256 (see lr_scaling)
    lr_scaling: str | None = None  # linear (lr * B / 256) | sqrt | none
    weight_decay: float | None = None  # decay of kernels (dim >= 2); see decay_norm_bias
    decay_norm_bias: bool | None = None  # also decay biases and norm parameters (dim < 2), as
    # MoCo, SimSiam, InstDisc, DeepCluster and SwAV's code do; None = the method's reference
    weight_decay_end: float | None = None  # cosine from weight_decay to this (DINO); None =
    # constant; a method's end value is dropped when the user sets weight_decay alone
    momentum: float | None = None  # SGD / LARS momentum
    betas: tuple[float, float] | None = None  # AdamW betas
    warmup_epochs: float | None = None  # linear warm-up length in epochs
    min_lr_ratio: float | None = None  # cosine decays lr to lr * min_lr_ratio
    clip_grad: float | None = None  # max gradient norm; None/0 = no clipping
    clip_mode: str | None = None  # global (one norm over all parameters, torch's
    # clip_grad_norm_) | per_param (each parameter's own norm, DINO's utils.clip_gradients)
    accumulate: int = 1  # gradient accumulation steps per optimiser step


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 100
    steps: int | None = None  # cap on optimiser steps; overrides epochs when set
    batch_size: int = 256  # per-process batch (the global batch is batch_size * world_size)
    out: str = "runs/selfsup"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    ckpt_every: int = 500  # write last.pt every N optimiser steps (and at the end)
    log_every: int = 10  # write metrics every N optimiser steps
    monitor_every: int = 0  # online kNN on the held-out split every N epochs (0 = off)
    collapse_every: int = 50  # collapse metrics every N steps (0 = off)
    progress: bool = True  # tqdm progress bar
    compile: bool = False  # torch.compile the method (GPU)
    channels_last: bool = True  # NHWC memory format for convolutions (oneDNN on CPU, cuDNN on GPU)
    tensorboard: bool = True  # also write TensorBoard event files


@dataclass(frozen=True)
class Recipe:
    """A method's published settings for one data scale, applied under the user's choices.

    ``RunConfig.recipe`` picks one: ``paper`` is the method's own defaults (its ``Config``,
    ``default_optim`` and ``default_views``, the paper's ImageNet recipe); ``small`` is the
    method's ``small_recipe``, taken from an anchor library's small-image (CIFAR-10) benchmark and
    applied where the user left a value unset; ``auto`` picks it for images up to
    :data:`SMALL_IMAGE_MAX` px unless ``auto`` is False. Precedence: user > recipe > paper.
    """

    source: str  # where the numbers come from (repository, file, model class)
    optim: dict[str, Any] = field(default_factory=dict)  # OptimConfig fields
    method_args: dict[str, Any] = field(default_factory=dict)  # the method's Config fields
    views: str | None = None  # view preset; None keeps the method's default preset
    view_args: dict[str, Any] = field(default_factory=dict)  # ViewConfig fields, every group
    note: str = ""  # what could not be matched, or why a value differs from the source
    auto: bool = True  # `recipe: auto` picks it for small images; False: only on request
    # (`--recipe small`), where a measurement found the paper recipe better (said in `note`)


RECIPES = ("auto", "small", "paper")
SMALL_IMAGE_MAX = 64  # auto picks the small recipe up to this side (as BackboneConfig.cifar_stem)


@dataclass
class RunConfig:
    """Everything needed to reproduce a pretraining run."""

    method: str = "simclr"
    recipe: str = "auto"  # auto (small for images <= 64 px where the method's small recipe is
    # marked for it, else paper) | small | paper; the saved config holds the resolved name
    # (`selfsup list recipes`)
    method_args: dict[str, Any] = field(default_factory=dict)  # overrides of the method's Config
    views: str | None = None  # view preset name; None = the method's default preset
    view_args: dict[str, Any] = field(default_factory=dict)  # overrides applied to every group
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ------------------------------------------------------------------ (de)serialisation


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain nested dicts/lists (tuples become lists, as YAML stores them)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return v

    out = conv(cfg)
    assert isinstance(out, dict)
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(tp)):
            raise ConfigError(f"{where}: expected a pair like [a, b], got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(typing.get_args(tp), value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (a,) = typing.get_args(tp)
        return [_coerce(a, v, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from a mapping, checking keys and value types.

    Raises:
        ConfigError: for an unknown key (listing the valid ones) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown option '{prefix}{unknown[0]}'; valid options here: {', '.join(sorted(names))}"
        )
    kw = {}
    for k, v in data.items():
        kw[k] = _coerce(hints[k], v, f"{where}.{k}" if where else k)
    return cls(**kw)


def replace(cfg: C, **changes: Any) -> C:
    """``dataclasses.replace`` with type checking of the new values (``None`` values are dropped)."""
    merged = to_dict(cfg)
    merged.update({k: v for k, v in changes.items() if v is not None})
    return from_dict(type(cfg), merged)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) and re-validate.

    ``method_args.temperature=0.2`` and ``view_args.blur_p=0`` reach into the free mappings.

    Raises:
        ConfigError: for a malformed override, an unknown key or a value of the wrong type.
    """
    d = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. optim.lr=0.1)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = d
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node, dict) or p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown option '{'.'.join(parts[: i + 1])}' in '{item}'")
            node = node[p]
        free = parts[0] in ("method_args", "view_args") or parts[-2:-1] == ["kwargs"]
        if parts[-1] not in node and not free:
            raise ConfigError(
                f"unknown option '{key}'; valid options here: {', '.join(sorted(node))}"
            )
        node[parts[-1]] = value
    return from_dict(RunConfig, d)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write a dataclass (or mapping) as YAML, atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)


def load_yaml(path: str | Path) -> RunConfig:
    """Read a RunConfig from YAML.

    Raises:
        ConfigError: if the file is missing, is not YAML, or holds unknown/invalid options.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    return from_dict(RunConfig, data)
