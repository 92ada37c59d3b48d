"""The one MLP builder: layer order, BN/bias placement, options and input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.nn.heads import mlp
from selfsup.types import ConfigError


def _kinds(m: nn.Sequential) -> list[str]:
    return [type(layer).__name__ for layer in m]


def test_default_is_linear_bn_relu_then_linear() -> None:
    m = mlp([8, 16, 16, 4])
    assert _kinds(m) == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    linears = [layer for layer in m if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(8, 16), (16, 16), (16, 4)]
    # bias only where no BN follows
    assert [lin.bias is not None for lin in linears] == [False, False, True]
    assert m(torch.randn(5, 8)).shape == (5, 4)


def test_last_bn_and_its_affine_flag() -> None:
    m = mlp([8, 32, 4], last_bn=True)
    assert _kinds(m) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert m[3].bias is None and m[4].affine
    plain = mlp([8, 32, 4], last_bn=True, last_bn_affine=False)
    assert not plain[4].affine and plain[1].affine  # only the output BN loses its affine
    out = plain.train()(torch.randn(64, 8))
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)


def test_without_batch_norm_every_linear_has_bias() -> None:
    m = mlp([3, 5, 2], batch_norm=False)
    assert _kinds(m) == ["Linear", "ReLU", "Linear"]
    assert m[0].bias is not None and m[2].bias is not None


def test_forced_bias_and_activation() -> None:
    m = mlp([3, 5, 2], bias=True, activation=nn.GELU, last_bn=True)
    assert _kinds(m) == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d"]
    assert m[0].bias is not None and m[3].bias is not None
    m = mlp([3, 5, 2], bias=False, batch_norm=False)
    assert m[0].bias is None and m[2].bias is None


def test_single_layer() -> None:
    assert _kinds(mlp([6, 3])) == ["Linear"]
    assert _kinds(mlp([6, 3], last_bn=True)) == ["Linear", "BatchNorm1d"]


@pytest.mark.parametrize("dims", [[], [8], [8, 0], [8, -1, 4], [8, 2.5, 4], [True, 4]])
def test_bad_dims_rejected(dims: list) -> None:
    with pytest.raises(ConfigError, match="dims"):
        mlp(dims)
