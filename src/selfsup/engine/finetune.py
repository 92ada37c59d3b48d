"""Semi-supervised evaluation of a checkpoint: fine-tune on a labeled fraction, then optionally
self-distill on all training images (SimCLR appendix B.5; SimCLR v2 sec. 2.2-2.3), always beside
the same procedure started from a random-init encoder."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from selfsup import registry
from selfsup.data.splits import split_labeled
from selfsup.engine.evaluate import eval_data
from selfsup.engine.runs import (
    LoadedRun,
    backbone_from,
    load_run,
    method_config,
    pick_device,
    preprocessor,
)
from selfsup.eval.finetune import (
    Classifier,
    FinetuneConfig,
    classify,
    finetune,
    mae_recipe,
    self_distill,
)
from selfsup.methods.base import Method, build_method
from selfsup.types import CheckpointError, ConfigError, DataError


def _method_of(run: LoadedRun, backbone: nn.Module, trained: bool) -> Method:
    """The checkpoint's method around ``backbone`` (its trained weights when ``trained``)."""
    method = build_method(run.cfg.method, backbone, **run.cfg.method_args)
    if trained:
        try:
            method.load_state_dict(run.payload["model"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint does not fit method '{run.cfg.method}': "
                                  f"{str(e)[:300]}") from None
    return method


def finetune_encoder(run: LoadedRun, head_layers: int, *, trained: bool, seed: int = 0
                     ) -> nn.Module:
    """The network to fine-tune: the encoder, or with ``head_layers`` > 0 the encoder followed by
    the first projection-head layers (SimCLR v2 sec. 2.2; methods with ``encoder_with_head``).

    ``trained=False`` gives the same architecture at random init (seeded), the baseline.

    Raises:
        ConfigError: if ``head_layers`` > 0 and the method keeps no head for fine-tuning.
    """
    if head_layers == 0:
        return copy.deepcopy(run.encoder) if trained else run.random_init(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = backbone_from(run.cfg, run.in_chans, run.image_size)
        method = _method_of(run, backbone, trained)
    with_head = getattr(method, "encoder_with_head", None)
    if not callable(with_head):
        raise ConfigError(f"--head-layers {head_layers}: method '{run.cfg.method}' has no "
                          "projection head to fine-tune from (simclr_v2 has); use 0")
    enc = with_head(head_layers)
    assert isinstance(enc, nn.Module)
    return enc


def default_head_layers(run: LoadedRun) -> int:
    """The method's own fine-tuning depth (the Config's ``finetune_layers``, e.g. simclr_v2's 1),
    else 0."""
    return int(getattr(method_config(run.cfg), "finetune_layers", 0))


FINETUNE_RECIPES = ("auto", "simclr", "mae")


def finetune_config(recipe: str, method: str, **overrides: Any) -> tuple[str, FinetuneConfig]:
    """``(resolved recipe, config)``: ``simclr`` (SimCLR appendix B.5, :class:`FinetuneConfig`'s
    defaults) or ``mae`` (:func:`~selfsup.eval.finetune.mae_recipe`); ``auto`` = MAE's for the
    methods that need a ViT (masked modeling), SimCLR's otherwise. ``overrides`` that are not
    None replace the recipe's values.

    Raises:
        ConfigError: for an unknown recipe.
    """
    if recipe not in FINETUNE_RECIPES:
        raise ConfigError(f"--recipe must be one of {FINETUNE_RECIPES}, got {recipe!r}")
    if recipe == "auto":
        kind = getattr(registry.get("method", method).obj, "backbone_kind", "any")
        recipe = "mae" if kind == "vit" else "simclr"
    over = {k: v for k, v in overrides.items() if v is not None}
    return recipe, (mae_recipe(**over) if recipe == "mae" else FinetuneConfig(**over))


def finetune_checkpoint(checkpoint: str, data: str | None = None, test_data: str | None = None,
                        *, labeled_fraction: float = 0.1, head_layers: int | None = None,
                        distill: bool = False, cfg: FinetuneConfig | None = None,
                        distill_epochs: int | None = None, baselines: bool = True,
                        device: str = "auto", limit: int | None = None, seed: int = 0,
                        recipe: str = "auto", overrides: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """Fine-tune the checkpoint's encoder on a stratified ``labeled_fraction`` of the training
    labels and report test accuracy; with ``distill``, then train a random-init student of the
    same architecture on the fine-tuned teacher's soft labels over all training images.

    Without ``cfg``, the settings are :func:`finetune_config`'s ``recipe`` with ``overrides``.

    Returns:
        ``{"rows": {"pretrained": {"finetune_top1", "finetune_top5"[, "distill_top1",
        "distill_top5"]}, "random init": {...}}, "labeled", "train_size", "test_size", "test",
        "head_layers", "checkpoint", "step"}``.

    Raises:
        ConfigError: bad fraction / head layers; DataError: unlabeled data or wrong channel count;
        CheckpointError: a bad checkpoint.
    """
    run = load_run(checkpoint)
    if cfg is None:
        recipe, cfg = finetune_config(recipe, run.cfg.method, **{"seed": seed, **(overrides or {})})
    else:
        recipe = "given"
    layers = default_head_layers(run) if head_layers is None else head_layers
    if layers < 0:
        raise ConfigError(f"--head-layers must be >= 0, got {layers}")
    ed = eval_data(data if data is not None else run.cfg.data.path, test_data, limit=limit, seed=seed)
    for ds in (ed.train, ed.test):
        if ds.channels != run.in_chans:
            raise DataError(f"'{ds.source}' has {ds.channels} channels but the encoder in "
                            f"'{checkpoint}' takes {run.in_chans}")
    train = split_labeled(ed.train, labeled_fraction, seed)
    labeled = torch.nonzero(train.labels >= 0).flatten()
    num_classes = int(ed.train.labels.max()) + 1
    dev = pick_device(device)
    prep = preprocessor(run.norm, run.image_size)
    dcfg = dataclasses.replace(cfg, epochs=distill_epochs or cfg.epochs)
    starts = {"pretrained": True, **({"random init": False} if baselines else {})}
    rows: dict[str, dict[str, float]] = {}
    for name, trained in starts.items():
        enc = finetune_encoder(run, layers, trained=trained, seed=seed).to(dev)
        teacher, _ = finetune(enc, train, labeled, num_classes, run.norm, run.image_size, cfg)
        acc = classify(teacher, ed.test, prep)
        rows[name] = {"finetune_top1": acc["top1"], "finetune_top5": acc["top5"]}
        if distill:
            s_enc = finetune_encoder(run, layers, trained=False, seed=seed + 1).to(dev)
            student = Classifier(s_enc, num_classes).to(dev)
            self_distill(teacher, student, train, torch.arange(len(train)), run.norm,
                         run.image_size, dcfg)
            acc = classify(student, ed.test, prep)
            rows[name].update({"distill_top1": acc["top1"], "distill_top5": acc["top5"]})
    return {"rows": rows, "labeled": len(labeled), "labeled_fraction": labeled_fraction,
            "train_size": len(ed.train), "test_size": len(ed.test), "test": ed.note,
            "head_layers": layers, "epochs": cfg.epochs, "recipe": recipe,
            "distill_epochs": dcfg.epochs if distill else 0, "checkpoint": str(checkpoint),
            "step": run.step}
