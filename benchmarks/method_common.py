"""The setting of one per-method benchmark row, shared by selfsup's and lightly's rows.

A :class:`MethodSetting` is a :class:`common.Setting` (data, backbone, batch, epochs, kNN) plus a
registered selfsup method and its hyper-parameter overrides. Everything else comes from the
method's registry entry, read at run time so that newly registered methods need no change here:
its ``Config`` (paper defaults), ``default_optim`` (optimiser, lr at batch 256, schedule) and
``default_views`` (the view preset). The lightly rows read the very same resolved values, so both
libraries train with the same numbers wherever lightly exposes the knob.

Head sizes: the CPU benchmark uses the paper defaults except where selfsup's documentation gives
a scaled small-image / CPU setting (``docs/methods/negative_free.md``, "Small images, small
data, CPU", the DINO command and the SwAV measured row); these are in :data:`CPU_OVERRIDES` and
``--paper-heads`` turns them off.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import common
from common import Setting

from selfsup import registry
from selfsup.config import OptimConfig, ViewConfig, from_dict, to_dict
from selfsup.data.views import get_preset
from selfsup.engine import recipes
from selfsup.engine.optim import resolve, scaled_lr

# Documented small-image / CPU head sizes (docs/methods/negative_free.md); everything else is the
# paper default of the method's Config.
CPU_OVERRIDES: dict[str, dict[str, Any]] = {
    # "BYOL: proj_hidden_dim=512 pred_hidden_dim=512 proj_out_dim=128"
    "byol": {"proj_hidden_dim": 512, "pred_hidden_dim": 512, "proj_out_dim": 128},
    # "on CPU or with the small CNN use e.g. proj_hidden_dim=512 proj_out_dim=512"
    "barlow_twins": {"proj_hidden_dim": 512, "proj_out_dim": 512},
    "vicreg": {"proj_hidden_dim": 512, "proj_out_dim": 512},
    # "small images / CPU: a smaller head and a faster teacher"
    "dino": {"out_dim": 4096, "hidden_dim": 512, "momentum_base": 0.99},
    # measured digits row: "proj 512-64, 100 prototypes" (at least proj_out_dim prototypes: with
    # fewer, embeddings escape the prototypes' span; docs/methods/negative_free.md)
    "swav": {"proj_hidden_dim": 512, "proj_out_dim": 64, "num_prototypes": 100},
    # "Small data: num_clusters of 10x the expected classes, pca_dim at most the head width, a
    # narrower head" (the paper's 10000 clusters of 4096-d fc7 features is ImageNet's: on 60k
    # MNIST images the per-epoch k-means alone took over 15 minutes and 8 GB on 2 cores)
    "deepcluster": {"head_hidden_dim": 256, "num_clusters": 100, "pca_dim": 32},
    # the measured digits row: "projector 512-64, clusterings of 30"
    "deepcluster_v2": {"proj_hidden_dim": 512, "proj_out_dim": 64, "num_prototypes": [30, 30, 30]},
    # "CPU setting: 14-px patches at stride 7, a 3x3 grid" (docs/methods/contrastive.md): the
    # default side/4 patches give an 8x8 grid on 28-px images, 16384 patches per batch of 256 and
    # about 20 s per step on 2 cores. Targets must share no pixel with the context, so on the
    # 3-row grid only row 0 -> row 2 is left: one prediction step
    "cpc_v2": {"patch_size": 14, "patch_stride": 7, "prediction_steps": 1},
    # masked modeling on CPU (docs/methods/masked.md, the learning tests' sizes): MAE's paper
    # decoder (512 wide, 8 blocks) costs ~23 s per step of 256 CIFAR images on 2 cores (11
    # images/s), 128 wide / 2 blocks ~10x less; I-JEPA's predictor 96 wide / 2 blocks
    "mae": {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4},
    "ijepa": {"pred_dim": 96, "pred_depth": 2},
    # iBOT has no documented CPU setting: DINO's "smaller head" above (4096 logits, 512 hidden)
    # for the [CLS] and the patch layer alike. selfsup's iBOT head runs on every token of the
    # global crops (65 on the 8 x 8 cifar10_vit grid): at the paper's 8192 / 2048 its student +
    # teacher passes would cost about as many multiply-adds as ViT-tiny's own passes, this head
    # about a fifth of that (estimated from the layer sizes, not measured)
    "ibot": {"out_dim": 4096, "patch_out_dim": 4096, "hidden_dim": 512},
}


def method_names() -> list[str]:
    """Every registered method (the registry at run time, so new methods appear by themselves)."""
    return registry.list_names("method")


def method_class(name: str) -> Any:
    """The registered class of method ``name`` (raises UnknownNameError listing valid names)."""
    return registry.get("method", name).obj


@dataclass
class MethodSetting(Setting):
    """A benchmark setting for one registered method (see the module docstring)."""

    method: str = "simclr"
    method_args: dict[str, Any] = field(default_factory=dict)  # overrides of the paper Config
    recipe: str = "paper"  # paper | small (`selfsup list recipes`); both rows read it

    def small(self) -> Any:
        """The method's small recipe when ``recipe`` is ``small``, else ``None`` (raises
        ConfigError for ``small`` on a method without one)."""
        return recipes.choose(self.method, self.recipe, 0)[1]

    def config(self) -> Any:
        """The method's resolved Config dataclass (paper defaults < recipe < ``method_args``)."""
        r = self.small()
        args = {**(r.method_args if r else {}), **self.method_args}
        return from_dict(method_class(self.method).Config, args, where="method_args")

    def optim(self) -> OptimConfig:
        """The method's resolved optimiser settings (its ``default_optim``, under the recipe's)."""
        r = self.small()
        return resolve(OptimConfig(**(r.optim if r else {})),
                       method_class(self.method).default_optim)

    def peak_lr(self) -> float:
        return scaled_lr(self.optim(), self.batch_size)

    @property
    def views_name(self) -> str:
        r = self.small()
        return str(r.views if r and r.views else method_class(self.method).default_views)

    def views(self, image_size: int) -> list[ViewConfig]:
        """The method's view preset at ``image_size`` (with the recipe's view arguments)."""
        r = self.small()
        return get_preset(self.views_name, image_size, **(r.view_args if r else {}))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for k in ("temperature", "proj_hidden_dim", "proj_out_dim"):  # SimCLR-only fields
            d.pop(k, None)
        o = self.optim()
        d["optim"].update({"betas": o.betas, "clip_grad": o.clip_grad, "clip_mode": o.clip_mode,
                           "decay_norm_bias": o.decay_norm_bias,
                           "lr_scaling": o.lr_scaling, "base_lr": o.lr})
        d["method_config"] = to_dict(self.config())
        d["views"] = self.views_name
        d["recipe"] = self.recipe
        return d


def parse_value(text: str) -> Any:
    """``key=value`` values: int, float, true/false, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def add_method_args(p: argparse.ArgumentParser) -> None:
    """Options of the per-method row scripts (on top of :func:`common.add_setting_args`)."""
    p.add_argument("--method", required=True, help="registered selfsup method name")
    p.add_argument("--recipe", choices=("paper", "small"), default="paper",
                   help="the method's paper defaults or its small-image recipe (heads, "
                   "optimiser, views; the documented CPU head sizes are then not applied)")
    p.add_argument("--paper-heads", action="store_true",
                   help="paper head sizes even where selfsup documents a CPU scaling")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method hyper-parameter (repeatable)")


def method_args_for(method: str, paper_heads: bool = False,
                    sets: list[str] | None = None, recipe: str = "paper") -> dict[str, Any]:
    """The overrides a row applies: documented CPU head sizes (unless ``paper_heads``, or a small
    recipe, which sets its own heads) and ``KEY=VALUE`` strings."""
    own_heads = recipe == "small" and recipes.small_recipe(method) is not None
    args = {} if paper_heads or own_heads else dict(CPU_OVERRIDES.get(method, {}))
    for kv in sets or []:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {kv!r}")
        args[key.removeprefix("method_args.")] = parse_value(value)
    return args


def setting_from(a: argparse.Namespace) -> MethodSetting:
    """The dataset's default setting for ``a.method`` with the command-line overrides."""
    base = common.setting_from(a)
    method_class(a.method)  # fail early on an unknown name
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    recipe = getattr(a, "recipe", "paper")
    return MethodSetting(**fields, method=a.method, recipe=recipe,
                         method_args=method_args_for(a.method, a.paper_heads, a.sets, recipe))
