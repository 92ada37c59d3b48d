"""Options of ``selfsup pretrain`` and their mapping onto :class:`~selfsup.config.RunConfig`.

Precedence: the method's paper defaults < ``--config FILE`` < explicit options < ``--set k=v``.
An option left unset stays ``None`` and never overrides a default.
"""

from __future__ import annotations

import argparse

from selfsup.config import RunConfig, apply_overrides, load_yaml, replace

# (flag, config section, field, type, help)
_OPTIONS: list[tuple[str, str, str, type, str]] = [
    ("--method", "", "method", str, "method name (`selfsup list methods`; default simclr)"),
    ("--data", "data", "path", str, "image folder, .npz/.npy file or built-in name (digits)"),
    ("--split", "data", "split", str, "split of a built-in/npz source: train | test | all"),
    ("--backbone", "backbone", "name", str, "encoder: a built-in, timm:NAME, torchvision:NAME "
     "or python:module:factory (`selfsup list backbones --all`; resnet18)"),
    ("--init", "backbone", "init", str, "start the backbone from these weights: a state_dict, "
     "timm/torchvision checkpoint, selfsup export or run checkpoint, .safetensors"),
    ("--epochs", "train", "epochs", int, "training epochs (100)"),
    ("--steps", "train", "steps", int, "cap on optimiser steps; overrides --epochs"),
    ("--batch-size", "train", "batch_size", int, "per-process batch size (256)"),
    ("--out", "train", "out", str, "run folder for checkpoints, config and metrics"),
    ("--seed", "train", "seed", int, "random seed (0)"),
    ("--device", "train", "device", str, "auto | cpu | cuda | cuda:N"),
    ("--precision", "train", "precision", str, "auto | fp32 | bf16 | fp16"),
    ("--ckpt-every", "train", "ckpt_every", int, "checkpoint every N steps (500)"),
    ("--log-every", "train", "log_every", int, "log metrics every N steps (10)"),
    ("--monitor-every", "train", "monitor_every", int,
     "online kNN on the held-out split every N epochs (needs --val-fraction and labels)"),
    ("--optimizer", "optim", "name", str, "sgd | adam | adamw | lars (method default)"),
    ("--lr", "optim", "lr", float, "base learning rate at batch 256 (method default)"),
    ("--weight-decay", "optim", "weight_decay", float, "weight decay (method default)"),
    ("--warmup-epochs", "optim", "warmup_epochs", float, "linear warm-up epochs"),
    ("--clip-grad", "optim", "clip_grad", float, "max gradient norm (off)"),
    ("--accumulate", "optim", "accumulate", int, "gradient accumulation steps (1)"),
    ("--recipe", "", "recipe", str, "auto | small | paper: small-image or paper settings "
     "(`selfsup list recipes`; auto = small for images <= 64 px where marked auto: small)"),
    ("--views", "", "views", str, "view preset (`selfsup list presets`; method default)"),
    ("--image-size", "data", "image_size", int, "resize images to this side (native size)"),
    ("--num-workers", "data", "num_workers", int, "DataLoader workers for folders (0)"),
    ("--val-fraction", "data", "val_fraction", float, "held-out fraction for the kNN monitor"),
    ("--labeled-fraction", "data", "labeled_fraction", float, "keep labels on this fraction"),
    ("--limit", "data", "limit", int, "use only the first N images"),
    ("--patch-size", "backbone", "patch_size", int, "ViT patch size"),
]


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (e.g. a run's config.yaml)")
    for flag, _, _, tp, help_ in _OPTIONS:
        p.add_argument(flag, type=tp, default=None, help=help_)
    p.add_argument("--cifar-stem", dest="cifar_stem", action="store_true", default=None,
                   help="ResNet 3x3 stride-1 stem without max-pool (auto for images <= 64 px)")
    p.add_argument("--no-cifar-stem", dest="cifar_stem", action="store_false")
    p.add_argument("--strict", action="store_true", default=None,
                   help="fail on unreadable images instead of skipping them")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile (GPU)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (when stderr is not a terminal, e.g. a log file, the bar "
                   "is redrawn every 30 s instead of every step)")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. optim.min_lr_ratio=0.01 or "
                   "method_args.temperature=0.2 (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object when done")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig described by parsed ``pretrain`` arguments.

    Raises:
        ConfigError: for an unreadable config file or an invalid option value.
    """
    cfg = load_yaml(args.config) if args.config else RunConfig()
    sections: dict[str, dict[str, object]] = {}
    for flag, section, field, _, _ in _OPTIONS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            sections.setdefault(section, {})[field] = value
    if args.cifar_stem is not None:
        sections.setdefault("backbone", {})["cifar_stem"] = args.cifar_stem
    if args.strict:
        sections.setdefault("data", {})["strict"] = True
    if args.compile:
        sections.setdefault("train", {})["compile"] = True
    if args.no_progress:
        sections.setdefault("train", {})["progress"] = False
    if args.no_tensorboard:
        sections.setdefault("train", {})["tensorboard"] = False
    top = sections.pop("", {})
    cfg = replace(cfg, **top)
    for section, values in sections.items():
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **values)})
    return apply_overrides(cfg, list(args.set))
