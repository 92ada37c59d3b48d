"""Export a pretrained encoder for use outside selfsup.

``export_encoder`` writes ``enc.pt``: a plain ``torch.save`` dict with the encoder's ``state_dict``
and everything needed to rebuild and feed it (backbone name and options, input channels, image
size, feature dimension, normalisation, the input contract), the same metadata as ``enc.json``,
and the requested formats for other tools (:mod:`selfsup.engine.export_formats`; by default
``enc.pt2``, a ``torch.export`` program).

Feeding an exported encoder: ``unit = clamp((x - low) / (high - low), 0, 1)`` per channel, resize
to ``image_size``, ``(unit - mean) / std``; :func:`load_encoder` returns a ready module and this
metadata.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from selfsup import registry
from selfsup.config import BackboneConfig, from_dict, to_dict
from selfsup.data.stats import Normalization
from selfsup.engine import checkpoint
from selfsup.engine.export_formats import FORMATS, INPUT_CONTRACT, write_format
from selfsup.engine.runs import backbone_options, load_run
from selfsup.nn.backbones import create_backbone
from selfsup.nn.backbones.module import wrap_module
from selfsup.types import CheckpointError, ConfigError

FORMAT = "selfsup-encoder-v1"


def export_encoder(ckpt: str | Path, out: str | Path, *, formats: Sequence[str] = ("pt2",),
                   torchscript: bool = False, backbone: nn.Module | None = None
                   ) -> dict[str, Any]:
    """Write the encoder of pretraining checkpoint ``ckpt`` to ``out`` (``enc.pt``) and in each
    of ``formats`` beside it (:mod:`selfsup.engine.export_formats`: ``pt2``, ``onnx``,
    ``safetensors``, ``torchscript``, ``native``), plus ``out`` with ``.json`` (the metadata).

    Args:
        torchscript: also write ``torchscript`` (kept for older callers).
        backbone: the module a Python run trained (its checkpoint holds weights, not code).

    Returns:
        The metadata written, with ``path`` and ``files`` (format -> path).

    Raises:
        CheckpointError: for a missing/corrupt checkpoint; ConfigError: an unknown format, a
            missing optional package, a format the backbone cannot take; OSError if ``out`` is
            not writable.
    """
    wanted = list(dict.fromkeys([*formats, *(["torchscript"] if torchscript else [])]))
    bad = [f for f in wanted if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown export format '{bad[0]}'; expected one of "
                          f"{', '.join(FORMATS)}")
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
        "input": INPUT_CONTRACT,
    }
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out '{out}' is a folder; expected a file name such as enc.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_atomic({**meta, "state_dict": enc.state_dict()}, out)
    files = {"selfsup": str(out)}
    for fmt in wanted:
        files[fmt] = write_format(fmt, enc, out, meta)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    meta["path"] = str(out)
    meta["files"] = files
    if "torchscript" in files:
        meta["torchscript"] = files["torchscript"]
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
            enc = create_backbone(b.name, in_chans=c, image_size=size, **backbone_options(b))
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
