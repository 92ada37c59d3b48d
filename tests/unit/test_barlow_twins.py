"""Barlow Twins method details: the paper's smaller learning rate for biases and BN parameters
(0.0048 vs 0.2 for the weights, Zbontar et al. 2021 sec. 4) as a gradient scale on exactly the
parameters that the optimiser leaves without weight decay and LARS adaptation."""

from __future__ import annotations

import copy

import pytest
import torch

from selfsup.engine.optim import param_groups
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError


def _grads(**kw: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    backbone = create_backbone("small_cnn", in_chans=1, image_size=16, width=8)
    m = build_method("barlow_twins", backbone, proj_hidden_dim=32, proj_out_dim=32, **kw)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(8, 1, 16, 16, generator=g) for _ in range(2)]
    m.training_step(Batch(views=views, index=torch.arange(8))).loss.backward()
    copy.deepcopy(m)  # hooks keep the method copyable
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_bias_and_bn_gradients_scaled_by_the_paper_ratio() -> None:
    from selfsup.methods.barlow_twins import Config

    assert Config().bias_lr_ratio == pytest.approx(0.0048 / 0.2)
    scaled, plain = _grads(), _grads(bias_lr_ratio=1.0)
    assert scaled.keys() == plain.keys()
    for name, g in scaled.items():
        factor = 0.024 if plain[name].dim() < 2 else 1.0
        torch.testing.assert_close(g, plain[name] * factor, msg=name)
    # the scaled parameters are exactly the optimiser's no-decay, no-LARS group
    torch.manual_seed(0)
    m = build_method("barlow_twins", create_backbone("small_cnn", in_chans=1, image_size=16,
                                                     width=8), proj_hidden_dim=32, proj_out_dim=32)
    groups = param_groups(m, 1e-6)
    assert [g["lars"] for g in groups] == [True, False]
    assert all(p.dim() < 2 for p in groups[1]["params"])


def test_bias_lr_ratio_must_be_non_negative() -> None:
    with pytest.raises(ConfigError, match="bias_lr_ratio"):
        build_method("barlow_twins", create_backbone("small_cnn", image_size=16),
                     bias_lr_ratio=-1.0)
