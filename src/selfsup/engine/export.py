"""Export a pretrained encoder for use outside selfsup.

``export_encoder`` writes ``enc.pt``: a plain ``torch.save`` dict with the encoder's ``state_dict``
and everything needed to rebuild and feed it (backbone name and options, input channels, image
size, feature dimension, normalisation), plus optionally ``enc.ts`` (TorchScript, loadable with
``torch.jit.load`` without selfsup, metadata in its ``selfsup.json`` extra file).

Feeding an exported encoder: ``unit = clamp((x - low) / (high - low), 0, 1)`` per channel, resize
to ``image_size``, ``(unit - mean) / std``; :func:`load_encoder` returns a ready module and this
metadata.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup import registry
from selfsup.config import BackboneConfig, from_dict, to_dict
from selfsup.data.stats import Normalization
from selfsup.engine import checkpoint
from selfsup.engine.runs import load_run
from selfsup.nn.backbones import create_backbone
from selfsup.nn.backbones.module import wrap_module
from selfsup.types import CheckpointError, ConfigError

FORMAT = "selfsup-encoder-v1"


def export_encoder(ckpt: str | Path, out: str | Path, *, torchscript: bool = True,
                   backbone: nn.Module | None = None) -> dict[str, Any]:
    """Write the encoder of pretraining checkpoint ``ckpt`` to ``out`` (and ``out`` with ``.ts``).

    ``backbone``: the module a Python run trained (its checkpoint holds weights, not code).

    Returns:
        The metadata written, with ``path`` (and ``torchscript`` when written).

    Raises:
        CheckpointError: for a missing/corrupt checkpoint; OSError if ``out`` is not writable.
    """
    run = load_run(str(ckpt), backbone=backbone)
    enc = run.encoder.cpu().eval()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": checkpoint.library_version(),
        "method": run.cfg.method,
        "method_args": dict(run.cfg.method_args),
        "step": run.step,
        "backbone": to_dict(run.cfg.backbone),
        "in_chans": run.in_chans,
        "image_size": run.image_size,
        "num_features": int(getattr(enc, "num_features", 0)),
        "normalization": run.norm.to_dict(),
    }
    out = Path(out)
    checkpoint.save_atomic({**meta, "state_dict": enc.state_dict()}, out)
    meta["path"] = str(out)
    if torchscript:
        ts_path = out.with_suffix(".ts")
        example = torch.zeros(2, run.in_chans, run.image_size, run.image_size)
        with torch.no_grad():
            traced = torch.jit.trace(enc, example, check_trace=False)
        tmp = ts_path.with_name(ts_path.name + ".tmp")
        extra = {"selfsup.json": json.dumps({k: v for k, v in meta.items() if k != "path"})}
        torch.jit.save(traced, str(tmp), _extra_files=extra)
        tmp.replace(ts_path)
        meta["torchscript"] = str(ts_path)
    return meta


def _method_encoder(payload: dict[str, Any], backbone: nn.Module) -> nn.Module:
    """The exported method's encoder around ``backbone`` (CMC: one copy per channel group);
    the backbone itself for methods without ``build_encoder`` and for older exports."""
    name = payload.get("method")
    if not name or name not in registry.list_names("method"):
        return backbone
    cls = registry.get("method", name).obj
    build = getattr(cls, "build_encoder", None)
    if build is None:
        return backbone
    cfg = from_dict(cls.Config, dict(payload.get("method_args", {})), where="method_args")
    enc: nn.Module = build(backbone, cfg)
    return enc


def load_encoder(path: str | Path, backbone: nn.Module | None = None
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported encoder (``enc.pt``) in eval mode; returns ``(encoder, metadata)``.
    ``backbone``: a copy of it receives the weights (exports of a module passed from Python).

    ``metadata["normalization"]`` is a :class:`~selfsup.data.stats.Normalization` ready to call on
    raw images.

    Raises:
        CheckpointError: if the file is missing, corrupt or not a selfsup encoder export.
    """
    payload = checkpoint.load(path, expect=FORMAT)
    b = from_dict(BackboneConfig, payload["backbone"])
    c, size = int(payload["in_chans"]), int(payload["image_size"])
    try:
        if backbone is not None:
            enc = wrap_module(copy.deepcopy(backbone), c, size, b.name)
        else:
            enc = create_backbone(b.name, in_chans=c, image_size=size, cifar_stem=b.cifar_stem,
                                  patch_size=b.patch_size, **b.kwargs)
    except ConfigError as e:
        raise CheckpointError(f"'{path}': {e}") from None
    enc = _method_encoder(payload, enc)
    try:
        enc.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"'{path}': weights do not fit '{b.name}': {str(e)[:300]}") from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["normalization"] = Normalization.from_dict(payload["normalization"])
    return enc.eval(), meta
