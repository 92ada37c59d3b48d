"""Normalisation variants of a backbone: swap its BatchNorm layers for a per-sample norm.

BatchNorm normalises every sample with statistics of the whole batch, so in training mode the
output for one input depends on the other inputs of the batch. Methods whose batch rows are parts
of one image and must stay independent (CPC v2's patches: Hénaff et al. 2020, sec. 3, "layer
normalization") need a normalisation that sees one sample only.

``norm="layer"`` replaces each ``BatchNorm*d(C)`` by ``GroupNorm(1, C)``: LayerNorm over
``(C, H, W)`` of each sample (the statistics of ``nn.LayerNorm([C, H, W])``, as in the CPC v2
reimplementations Lightning-Universe/lightning-bolts ``pl_bolts/models/self_supervised/cpc/
networks.py`` ``CPCResNet`` and wilson1yan/cs294-158-ssl ``deepul_helper/resnet.py``
``norm_type='ln'``), with a per-channel affine instead of their per-element ``[C, H, W]`` one, so
the same weights apply to patches and to whole images of any size.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.types import ConfigError

__all__ = ["NORMS", "replace_batchnorm"]

NORMS = ("layer", "batch")  # "batch" keeps the backbone as built


def _layer_norm_like(bn: nn.modules.batchnorm._BatchNorm) -> nn.GroupNorm:
    """``GroupNorm(1, C)`` with ``bn``'s eps, affine flag and affine values (so an init such as
    torchvision's ``zero_init_residual`` carries over)."""
    gn = nn.GroupNorm(1, bn.num_features, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        gn.to(device=bn.weight.device, dtype=bn.weight.dtype)
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
    return gn


def replace_batchnorm(module: nn.Module, norm: str = "layer") -> nn.Module:
    """Replace every BatchNorm layer of ``module`` in place and return ``module``.

    Args:
        module: any network; its other layers, attributes (``num_features``, ...) and parameter
            names stay (``bn1.weight`` keeps its name, the BN buffers ``running_mean``,
            ``running_var``, ``num_batches_tracked`` disappear from ``state_dict``).
        norm: ``"layer"`` (``GroupNorm(1, C)``, see the module docstring) or ``"batch"`` (no
            change).

    Raises:
        ConfigError: for another ``norm``.
    """
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if norm == "batch":
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, _layer_norm_like(child))
        else:
            replace_batchnorm(child, norm)
    return module
