"""Building a run's parts from a :class:`~selfsup.config.RunConfig` and getting encoders back out
of checkpoints: shared by the trainer, the evaluation commands and export."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from selfsup import registry
from selfsup.config import BackboneConfig, Recipe, RunConfig, from_dict, replace
from selfsup.data.datasets import ImageDataset
from selfsup.data.splits import from_config
from selfsup.data.stats import Normalization, compute_normalization
from selfsup.data.views import MultiView, eval_transform, get_preset
from selfsup.engine import checkpoint, recipes
from selfsup.engine.init_weights import InitReport, init_weights
from selfsup.methods.base import Method, build_method
from selfsup.nn.backbones import backbone_takes, check_backbone_name, create_backbone
from selfsup.nn.backbones.module import fresh_copy, wrap_module
from selfsup.types import CheckpointError, ConfigError, DataError


@dataclass
class Parts:
    """Everything a pretraining run is made of, with every default resolved."""

    cfg: RunConfig
    train: ImageDataset
    val: ImageDataset | None
    norm: Normalization
    image_size: int
    method: Method
    views: MultiView
    recipe: Recipe | None = None  # the small recipe applied to ``cfg``, None for ``paper``
    init: InitReport | None = None  # what ``backbone.init`` loaded, None without it


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        ConfigError: if CUDA is requested but not available.
    """
    from selfsup.types import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device '{name}' requested but CUDA is not available")
    return dev


def image_size_of(cfg: RunConfig, ds: ImageDataset) -> int:
    """The square side the encoder sees: ``data.image_size`` or the data's smaller side."""
    return int(cfg.data.image_size or min(ds.image_size))


def backbone_from(cfg: RunConfig, in_chans: int, image_size: int,
                  module: nn.Module | None = None) -> nn.Module:
    """The backbone named in ``cfg`` (fresh random weights), or ``module`` (a user's
    ``nn.Module``, used as it is) behind the backbone contract."""
    b = cfg.backbone
    if module is not None:
        return wrap_module(module, in_chans, image_size, b.name)
    return create_backbone(b.name, in_chans=in_chans, image_size=image_size,
                           **backbone_options(b))


def backbone_options(b: BackboneConfig) -> dict[str, Any]:
    """``b.kwargs`` with ``cifar_stem`` / ``patch_size`` added where set (either spelling works).

    Raises:
        ConfigError: if ``backbone.patch_size`` and ``backbone.kwargs.patch_size`` (or the two
            ``cifar_stem``) are both set and disagree.
    """
    opts = dict(b.kwargs)
    for key, value in (("cifar_stem", b.cifar_stem), ("patch_size", b.patch_size)):
        if value is None:
            continue
        if opts.get(key, value) != value:
            raise ConfigError(f"backbone.{key}={value} and backbone.kwargs.{key}={opts[key]} "
                              "disagree; set one of them")
        opts[key] = value
    return opts


def encoder_from(cfg: RunConfig, in_chans: int, image_size: int,
                 module: nn.Module | None = None) -> nn.Module:
    """The evaluated encoder of ``cfg``'s method with fresh random weights.

    The backbone itself, unless the method class defines ``build_encoder(backbone, cfg)`` (CMC:
    one backbone per channel group, features concatenated); its saved weights are always the
    checkpoint's ``backbone.*`` entries.

    Raises:
        ConfigError: for method options that do not fit the data (e.g. CMC's channel groups).
    """
    backbone = backbone_from(cfg, in_chans, image_size, module)
    build = getattr(registry.get("method", cfg.method).obj, "build_encoder", None)
    if build is None:
        return backbone
    enc: nn.Module = build(backbone, method_config(cfg))
    return enc


def method_config(cfg: RunConfig) -> Any:
    """The method's resolved Config dataclass: paper defaults with ``cfg.method_args`` applied.

    Raises:
        ConfigError: for an unknown or ill-typed method option (named as ``method_args.<key>``).
    """
    cls = registry.get("method", cfg.method).obj
    args = {k: v for k, v in cfg.method_args.items() if v is not None}
    return from_dict(cls.Config, args, where="method_args")


def normalization_from(cfg: RunConfig, ds: ImageDataset) -> Normalization:
    d = cfg.data
    return compute_normalization(ds, low=d.low, high=d.high, mean=d.mean, std=d.std, seed=d.seed)


def build_parts(cfg: RunConfig, module: nn.Module | None = None, *, init: bool = True,
                data: Any = None) -> Parts:
    """Open the data, compute the normalisation, build backbone, method and views.

    ``module``: a user's ``nn.Module`` to train instead of the backbone named in ``cfg`` (whose
    ``backbone.name`` then records its class, ``module:<path>``). ``init``: load
    ``backbone.init``'s weights (off on ``--resume``, whose checkpoint replaces them).
    ``data``: images from Python (array, tensor, ``(images, labels)`` or a ``Dataset``) in place
    of ``cfg.data.path``.

    The returned ``cfg`` has the recipe resolved (:mod:`selfsup.engine.recipes`: its values
    filled in where the user left them unset), the view preset, image size and normalisation
    filled in, so saving it reproduces the run exactly.
    """
    registry.get("method", cfg.method)  # fail on an unknown method before touching the data
    if module is None:
        check_backbone_name(cfg.backbone.name)
    train, val = from_config(cfg.data, data)
    if len(train) == 0:
        raise DataError(f"dataset '{cfg.data.path}' has no images")
    size = image_size_of(cfg, train)
    recipe_name, recipe = recipes.choose(cfg.method, cfg.recipe, size)
    cfg = replace(recipes.apply(cfg, recipe), recipe=recipe_name)
    norm = normalization_from(cfg, train)
    method_args = dict(cfg.method_args)
    method_cls = registry.get("method", cfg.method).obj
    cfg = _with_eval_pool(cfg, method_cls)
    fields = {f.name for f in dataclasses.fields(method_cls.Config)}
    if "num_samples" in fields:
        # memory banks are sized by the dataset (InstDisc, CMC); dataset indices are global
        method_args.setdefault("num_samples", len(train))
    if {"input_mean", "input_std"} <= fields:
        # methods that undo the input normalisation (CMC's RGB -> Lab views)
        method_args.setdefault("input_mean", list(norm.mean))
        method_args.setdefault("input_std", list(norm.std))
    backbone = backbone_from(cfg, train.channels, size, module)
    report = init_weights(backbone, cfg.backbone.init) if init and cfg.backbone.init else None
    method = build_method(cfg.method, backbone, **method_args)
    preset = cfg.views or type(method).default_views
    views = MultiView(get_preset(preset, size, **cfg.view_args), train.channels, norm.mean, norm.std)
    data = replace(cfg.data, image_size=size, low=norm.low, high=norm.high, mean=norm.mean,
                   std=norm.std)
    cfg = replace(cfg, views=preset, data=data,
                  method_args=_config_dict(method.cfg))
    return Parts(cfg, train, val, norm, size, method, views, recipe, report)


def _with_eval_pool(cfg: RunConfig, method_cls: Any) -> RunConfig:
    """``cfg`` with ``backbone.kwargs.global_pool`` set to the method's ``eval_pool`` (e.g.
    SimMIM and I-JEPA evaluate the mean patch token: their class token is never trained) when
    the user left it unset and the backbone factory takes ``global_pool``; saved with the run,
    so evaluation rebuilds the same pooling."""
    pool = getattr(method_cls, "eval_pool", None)
    b = cfg.backbone
    if pool is None or "global_pool" in b.kwargs or not backbone_takes(b.name, "global_pool"):
        return cfg
    return replace(cfg, backbone=replace(b, kwargs={**b.kwargs, "global_pool": pool}))


def _config_dict(cfg: Any) -> dict[str, Any]:
    from selfsup.config import to_dict

    return to_dict(cfg)


def preprocessor(norm: Normalization, size: int) -> Callable[[Tensor], Tensor]:
    """Raw batch -> normalised encoder input at ``size`` (no augmentation), on the batch's device."""

    def prep(x: Tensor) -> Tensor:
        return eval_transform(norm.to_unit(x), size, norm.mean, norm.std)

    return prep


@dataclass
class LoadedRun:
    """An encoder restored from a checkpoint, with what is needed to feed it."""

    encoder: nn.Module
    cfg: RunConfig
    norm: Normalization
    image_size: int
    in_chans: int
    step: int
    payload: dict[str, Any]
    module: nn.Module | None = None  # the user's module the run trained, if any

    def random_init(self, seed: int = 0) -> nn.Module:
        """The same architecture with fresh random weights (the baseline of every report; a
        user's module: a copy with every ``reset_parameters()`` called)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = fresh_copy(self.module) if self.module is not None else None
            return encoder_from(self.cfg, self.in_chans, self.image_size, module)


def load_run(path: str, *, method: str | None = None,
             backbone: nn.Module | None = None) -> LoadedRun:
    """Restore the encoder of a pretraining checkpoint.

    Args:
        path: a ``last.pt`` written by the trainer.
        method: if given, the method the checkpoint must come from.
        backbone: the ``nn.Module`` a Python run trained (``backbone.name`` ``module:...``);
            a copy receives the weights, ``backbone`` itself is left as it is.

    Raises:
        CheckpointError: missing/corrupt file, a checkpoint of another method, or weights that do
            not fit the backbone named in its config.
    """
    payload = checkpoint.load(path)
    cfg = from_dict(RunConfig, payload["config"])
    if method is not None and cfg.method != method:
        raise CheckpointError(
            f"checkpoint '{path}' was trained with method '{cfg.method}', not '{method}'"
        )
    info = payload["data"]
    module = copy.deepcopy(backbone) if backbone is not None else None
    try:
        enc = encoder_from(cfg, int(info["channels"]), int(info["image_size"]), module)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint '{path}': {e}") from None
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in payload["model"].items() if k.startswith(prefix)}
    try:
        enc.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit backbone '{cfg.backbone.name}': {str(e)[:300]}"
        ) from None
    norm = Normalization.from_dict(payload["normalization"])
    return LoadedRun(enc.eval(), cfg, norm, int(info["image_size"]), int(info["channels"]),
                     int(payload["step"]), payload, backbone)
