from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.nn.ema import EMA
from selfsup.types import ConfigError


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_update_rule_matches_formula() -> None:
    torch.manual_seed(0)
    student = _net()
    ema = EMA(student)
    assert all(not p.requires_grad for p in ema.parameters())
    old = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(8, 3))  # changes BN running stats
    ema.update(student, 0.9)
    for o, t, s in zip(old, ema.parameters(), student.parameters()):
        torch.testing.assert_close(t, 0.9 * o + 0.1 * s)
    for tb, sb in zip(ema.buffers(), student.buffers()):
        assert torch.equal(tb, sb)


def test_momentum_limits_and_state_dict() -> None:
    student = _net()
    ema = EMA(student)
    frozen = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(2).add_(1)
    ema.update(student, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, ema.parameters()))
    ema.update(student, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), ema.parameters()))
    assert set(ema.state_dict()) == {f"module.{k}" for k in student.state_dict()}
    with pytest.raises(ConfigError, match="momentum"):
        ema.update(student, 1.5)


def test_no_gradient_reaches_teacher() -> None:
    student = _net()
    ema = EMA(student)
    loss = (student(torch.randn(4, 3)) - ema(torch.randn(4, 3))).pow(2).sum()
    loss.backward()
    assert all(p.grad is None for p in ema.parameters())
    assert all(p.grad is not None for p in student.parameters())
