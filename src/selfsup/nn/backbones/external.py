"""Any timm or torchvision image model as a backbone: ``timm:NAME`` and ``torchvision:NAME``.

``--backbone timm:convnext_tiny`` builds ``timm.create_model(NAME, pretrained=False,
num_classes=0, in_chans=C, **options)`` (timm's own way to drop the classifier); models that take
an image size (ViTs, Swin, ...) get ``img_size`` = the data's. A plain timm ``VisionTransformer``
with one class token becomes selfsup's :class:`~selfsup.nn.backbones.vit.ViT` in place (same
parameters and ``state_dict`` keys), so masked image modeling (MAE, SimMIM, iBOT, ...) runs on it.

``--backbone torchvision:efficientnet_b0`` builds ``torchvision.models.get_model(NAME,
weights=None, **options)``, replaces the first ``Conv2d`` when ``C != 3`` and removes the
classifier (the child holding the last ``Linear``, with any hidden layers of its own); the pooled
features are the classifier's input.

Weights are always random (nothing is downloaded); ``--init`` loads weights afterwards. The
spatial map (``forward_features -> [B, D, h, w]``, which dense methods such as PixPro need) is
timm's ``forward_features`` (NHWC outputs permuted, a ViT's patch tokens as a grid) or, for
torchvision, the last ``[B, D, h, w]`` output before the global pool, found by one dry forward
pass; a model without one gets no ``forward_features``, so those methods say so at once.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.types import ConfigError

__all__ = ["SOURCES", "create_external", "is_external", "list_external", "source_of",
           "unknown_model"]

SOURCES = ("timm", "torchvision")
# the global pool: the spatial map is the last [B, D, h, w] output before the last of these
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def is_external(name: str) -> bool:
    """Whether ``name`` is ``timm:...`` or ``torchvision:...``."""
    return name.partition(":")[0] in SOURCES and bool(name.partition(":")[2])


def source_of(name: str) -> tuple[str, str]:
    """``"timm:resnet10t"`` -> ``("timm", "resnet10t")``."""
    src, _, model = name.partition(":")
    return src, model


def list_external(source: str, pattern: str = "") -> list[str]:
    """``source:NAME`` for every model of ``source`` (``timm`` or ``torchvision`` classification
    models) whose name contains ``pattern`` (``*``/``?`` wildcards allowed)."""
    import fnmatch

    if source == "timm":
        import timm

        names = timm.list_models()
    else:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
    pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return [f"{source}:{n}" for n in names if fnmatch.fnmatch(n, pat)]


class ExternalBackbone(nn.Module):
    """A timm/torchvision model as a backbone: ``forward`` -> pooled ``[B, num_features]``.

    The model is ``self.model`` (its own ``state_dict`` keys under ``model.``; the export writes
    them without the prefix, as timm / torchvision load them).

    Attributes:
        num_features: width of the pooled features.
        in_chans: input channels.
        image_size: the input side the model was built (and dry-run) for.
        source_name: where it came from: ``timm:NAME``, ``torchvision:NAME`` (or, for the
            :class:`~selfsup.nn.backbones.module.ModuleBackbone` subclass, a user module).
    """

    def __init__(self, model: nn.Module, source_name: str, num_features: int, in_chans: int,
                 image_size: int) -> None:
        super().__init__()
        self.model = model
        self.source_name = source_name
        self.num_features = num_features
        self.in_chans = in_chans
        self.image_size = image_size

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, num_features]``."""
        out: Tensor = self.model(x)
        return out


class TimmSpatialBackbone(ExternalBackbone):
    """A timm model with a spatial map: timm's ``forward_features`` as ``[B, D, h, w]``."""

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, num_features, h, w]`` (NHWC maps permuted; token
        sequences without their prefix tokens laid out on their square grid)."""
        f: Tensor = self.model.forward_features(x)  # type: ignore[operator]
        return _as_map(f, self.model, self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model.forward_head(  # type: ignore[operator]
            self.model.forward_features(x), pre_logits=True)  # type: ignore[operator]
        return out


class TorchvisionSpatialBackbone(ExternalBackbone):
    """A torchvision model whose submodule ``map_path`` outputs the map before the pool."""

    def __init__(self, model: nn.Module, source_name: str, num_features: int, in_chans: int,
                 image_size: int, map_path: str) -> None:
        super().__init__(model, source_name, num_features, in_chans, image_size)
        self.map_path = map_path

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> the output of ``model.<map_path>`` ``[B, D, h, w]``."""
        found: list[Tensor] = []
        hook = self.model.get_submodule(self.map_path).register_forward_hook(
            lambda _m, _i, out: found.append(out))
        try:
            self.model(x)
        finally:
            hook.remove()
        return found[-1]


def _as_map(f: Tensor, model: nn.Module, dim: int) -> Tensor:
    """timm ``forward_features`` output -> ``[B, dim, h, w]``.

    Raises:
        ConfigError: if the output is neither a map nor a square token grid of width ``dim``.
    """
    if f.dim() == 4:
        if getattr(model, "output_fmt", "NCHW") == "NHWC" or (f.shape[1] != dim
                                                             and f.shape[-1] == dim):
            f = f.permute(0, 3, 1, 2)
        if f.shape[1] == dim:
            return f
    elif f.dim() == 3 and f.shape[-1] == dim:
        tokens = f[:, int(getattr(model, "num_prefix_tokens", 0)):]
        side = math.isqrt(tokens.shape[1])
        if side * side == tokens.shape[1]:
            return tokens.transpose(1, 2).reshape(f.shape[0], dim, side, side)
    raise ConfigError(f"timm model {type(model).__name__}: forward_features gives "
                      f"{tuple(f.shape)}, not a [B, {dim}, h, w] map")


def unknown_model(source: str, model: str) -> ConfigError:
    names = [n.partition(":")[2] for n in list_external(source)]
    close = difflib.get_close_matches(model, names, n=5, cutoff=0.5)
    hint = f"; close: {', '.join(close)}" if close else ""
    return ConfigError(f"unknown backbone '{source}:{model}'{hint} "
                       f"(`selfsup list backbones --all {model[:4]}` lists the {source} models)")


def _dry_run(model: nn.Module, in_chans: int, image_size: int, who: str
             ) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Run ``[2, in_chans, size, size]`` zeros through ``model`` in eval mode; returns every
    submodule's ``(path, module, output shape)`` in the order they finished, the root last.

    Raises:
        ConfigError: naming ``who`` if the forward fails at this input size.
    """
    events: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(
        lambda mod, _i, out, p=path: events.append((p, mod, tuple(out.shape)))
        if isinstance(out, Tensor) else None) for path, m in model.named_modules()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, in_chans, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ConfigError(f"backbone '{who}' does not run on {in_chans} x {image_size} x "
                          f"{image_size} images: {str(e).splitlines()[0][:200]} (set "
                          "data.image_size, or choose another model)") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return events


def _plain_vit(model: nn.Module) -> bool:
    """timm's own ``VisionTransformer`` (not a subclass) with one class token and position
    embeddings on it: the layout selfsup's :class:`ViT` token access assumes."""
    from timm.models.vision_transformer import VisionTransformer

    return (type(model) is VisionTransformer and model.cls_token is not None
            and model.num_prefix_tokens == 1 and not model.no_embed_class)


def _timm_create(model_name: str, kwargs: dict[str, Any], options: dict[str, Any], who: str
                 ) -> nn.Module:
    """``timm.create_model`` with ``kwargs``; models without ``img_size`` (CNNs) are built
    again from the base arguments and the user's ``options`` only."""
    import timm

    try:
        return timm.create_model(model_name, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise ConfigError(f"backbone '{who}': {e} (backbone.kwargs go to "
                              "timm.create_model)") from None
    rest = {k: v for k, v in kwargs.items() if k not in ("img_size", "dynamic_img_size",
                                                         "dynamic_img_pad") or k in options}
    try:
        return timm.create_model(model_name, **rest)
    except TypeError as e:
        raise ConfigError(f"backbone '{who}': {e} (backbone.kwargs go to "
                          "timm.create_model)") from None


def _timm(model_name: str, in_chans: int, image_size: int, options: dict[str, Any]
          ) -> nn.Module:
    import timm

    from selfsup.nn.backbones.vit import ViT

    who = f"timm:{model_name}"
    if not timm.is_model(model_name):
        raise unknown_model("timm", model_name)
    base: dict[str, Any] = {"pretrained": False, "num_classes": 0, "in_chans": in_chans}
    model = _timm_create(model_name, {**base, "img_size": image_size, **options}, options, who)
    if _plain_vit(model) and "dynamic_img_size" not in options:
        # any input size (DINO's local crops), as selfsup's own ViTs: position embeddings
        # resampled to the input's grid, sides padded to whole patches
        model = _timm_create(model_name, {**base, "img_size": image_size,
                                          "dynamic_img_size": True, "dynamic_img_pad": True,
                                          **options}, options, who)
    if _plain_vit(model):
        # timm's plain ViT: selfsup's subclass adds token access for masked modeling; same
        # parameters, so state_dict keys stay timm's
        model.__class__ = ViT
        patch = int(getattr(model, "patch_embed").patch_size[0])  # noqa: B009
        model.patch_size = patch  # type: ignore[assignment]
        model.image_size = image_size  # type: ignore[assignment]
        model.num_patches = (image_size // patch) ** 2  # type: ignore[assignment]
        model.in_chans = in_chans  # type: ignore[assignment]
        model.source_name = who  # type: ignore[assignment]
        _dry_run(model, in_chans, image_size, who)
        return model
    events = _dry_run(model, in_chans, image_size, who)
    dim = int(getattr(model, "num_features"))  # noqa: B009
    if events[-1][2] != (2, dim):
        raise ConfigError(f"backbone '{who}': pooled output {events[-1][2]}, expected "
                          f"[B, {dim}]")
    features = getattr(model, "forward_features")  # noqa: B009
    with torch.no_grad():
        try:
            model.eval()
            _as_map(features(torch.zeros(2, in_chans, image_size, image_size)), model, dim)
            spatial = True
        except ConfigError:
            spatial = False
        finally:
            model.train()
    cls = TimmSpatialBackbone if spatial else ExternalBackbone
    return cls(model, who, dim, in_chans, image_size)


def _torchvision(model_name: str, in_chans: int, image_size: int, options: dict[str, Any]
                 ) -> nn.Module:
    import torchvision

    who = f"torchvision:{model_name}"
    if model_name not in torchvision.models.list_models(module=torchvision.models):
        raise unknown_model("torchvision", model_name)
    opts = dict(options)
    if model_name.startswith("vit_"):
        opts.setdefault("image_size", image_size)
    if model_name in ("googlenet", "inception_v3"):
        opts.setdefault("aux_logits", False)  # auxiliary classifiers are not features
        opts.setdefault("init_weights", True)  # torchvision's current init, without its warning
    try:
        model = torchvision.models.get_model(model_name, weights=None, **opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"backbone '{who}': {e} (backbone.kwargs go to "
                          "torchvision.models.get_model)") from None
    convs = [(p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(p, m) for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"backbone '{who}' has no Linear classifier to remove (its head is "
                          "convolutional); choose another model")
    if in_chans != 3:
        path, old = convs[0]
        new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size,  # type: ignore[arg-type]
                        old.stride, old.padding, old.dilation,  # type: ignore[arg-type]
                        old.groups, old.bias is not None, old.padding_mode)
        _set(model, path, new)
    dim = _drop_classifier(model, linears)
    events = _dry_run(model, in_chans, image_size, who)
    if events[-1][2] != (2, dim):
        raise ConfigError(f"backbone '{who}': output {events[-1][2]} without its classifier, "
                          f"expected [B, {dim}]")
    map_path = _map_before_pool(events, dim)
    if map_path is None:
        return ExternalBackbone(model, who, dim, in_chans, image_size)
    return TorchvisionSpatialBackbone(model, who, dim, in_chans, image_size, map_path)


def _map_before_pool(events: list[tuple[str, nn.Module, tuple[int, ...]]], dim: int
                     ) -> str | None:
    """The submodule whose output is the spatial map: the last ``[B, dim, h, w]`` output before
    the last global pool module (squeeze-excitation pools inside blocks come earlier; without a
    pool module, as DenseNet's functional one, before the end), with no token sequence
    ``[B, N, D]`` after it (a ViT's patch embedding is no feature map). None if there is none."""
    pools = [i for i, (_, m, _) in enumerate(events) if isinstance(m, _POOLS)]
    end = pools[-1] if pools else len(events) - 1
    found = None
    for i in range(end):
        path, m, shape = events[i]
        if len(shape) == 4 and shape[1] == dim and path:
            found = i
        elif len(shape) == 3:
            found = None
    return events[found][0] if found is not None else None


def _drop_classifier(model: nn.Module, linears: list[tuple[str, nn.Linear]]) -> int:
    """Remove the classifier in place; returns the width of the features it took.

    The classifier is the top-level child holding the last ``Linear`` (``fc``, ``classifier``,
    ``heads``, ``head``). A Linear child becomes ``Identity``; in a ``Sequential`` everything
    from its first ``Linear`` on goes, and its dropout layers (a hidden MLP of the classifier,
    as in MobileNetV3, VGG and MaxViT, is head, not features; normalisation before it, as
    ConvNeXt's ``LayerNorm2d``, stays).
    """
    name = linears[-1][0].split(".")[0]
    head = getattr(model, name)
    if isinstance(head, nn.Linear):
        setattr(model, name, nn.Identity())
        return int(head.in_features)
    if isinstance(head, nn.Sequential):
        children = list(head)
        first = next(i for i, m in enumerate(children)
                     if any(isinstance(x, nn.Linear) for x in m.modules()))
        lin = next(x for x in children[first].modules() if isinstance(x, nn.Linear))
        assert isinstance(lin, nn.Linear)
        setattr(model, name, nn.Sequential(*[m for m in children[:first]
                                             if not isinstance(m, nn.Dropout)]))
        return int(lin.in_features)
    path, last = linears[-1]
    _set(model, path, nn.Identity())
    return int(last.in_features)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def create_external(name: str, in_chans: int, image_size: int, **options: Any) -> nn.Module:
    """Build ``timm:NAME`` / ``torchvision:NAME`` with random weights (see the module docstring).

    Raises:
        ConfigError: for an unknown model (with close names), options the constructor rejects,
            a model that does not run at this input size, or one without a Linear classifier.
    """
    source, model = source_of(name)
    if "cifar_stem" in options or ("patch_size" in options and source == "torchvision"):
        bad = "cifar_stem" if "cifar_stem" in options else "patch_size"
        raise ConfigError(f"backbone '{name}' has no option '{bad}' (that is for selfsup's own "
                          "backbones; pass the model's own arguments as backbone.kwargs)")
    build = _timm if source == "timm" else _torchvision
    return build(model, in_chans, image_size, options)
