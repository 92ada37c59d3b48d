"""Projection/prediction heads: one :func:`mlp` builder for every method's MLP.

SimCLR's projector (Chen et al. 2020, sec. 2.1: ``z = W2 ReLU(BN(W1 h))``), BYOL's projector and
predictor (Grill et al. 2020, sec. 3.3: Linear-BN-ReLU-Linear), Barlow Twins' and VICReg's 3-layer
expanders and MoCo v3's heads (BN also on the output) are all ``mlp(dims, ...)`` with different
``dims`` and flags, so no head subclass differs only in widths.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from selfsup.types import ConfigError

__all__ = ["mlp"]


def mlp(
    dims: Sequence[int],
    *,
    batch_norm: bool = True,
    last_bn: bool = False,
    last_bn_affine: bool = True,
    activation: type[nn.Module] = nn.ReLU,
    bias: bool | None = None,
) -> nn.Sequential:
    """A multi-layer perceptron ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Hidden layers are ``Linear [-BatchNorm1d] - activation``; the last layer is ``Linear
    [-BatchNorm1d]`` with no activation. Input ``[B, dims[0]]``, output ``[B, dims[-1]]``.

    Args:
        dims: layer widths, input first; ``len(dims) - 1`` linear layers.
        batch_norm: BatchNorm1d after every hidden linear layer.
        last_bn: BatchNorm1d after the last linear layer too (SimCLR's code, MoCo v3).
        last_bn_affine: learnable scale and shift of the last BN (False: plain standardisation,
            as Barlow Twins' / SimSiam's output BN uses ``affine=False``).
        activation: activation class for hidden layers, instantiated with no arguments.
        bias: bias of the linear layers; None = bias only where no BN follows (BN's shift makes
            it redundant), True/False forces it on every linear layer.

    Returns:
        ``nn.Sequential`` of the layers, indexable like any Sequential.

    Raises:
        ConfigError: if fewer than two widths are given or any width is not a positive integer.
    """
    dims = list(dims)
    if len(dims) < 2:
        raise ConfigError(f"mlp needs at least an input and an output width, got dims={dims}")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(f"mlp widths must be positive integers, got dims={dims}")
    layers: list[nn.Module] = []
    n = len(dims) - 1
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == n - 1
        bn = last_bn if last else batch_norm
        layers.append(nn.Linear(d_in, d_out, bias=(not bn) if bias is None else bias))
        if bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine if last else True))
        if not last:
            layers.append(activation())
    return nn.Sequential(*layers)
