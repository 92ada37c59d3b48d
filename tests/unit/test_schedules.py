from __future__ import annotations

import math

import pytest

from selfsup.utils.schedules import cosine, linear, warmup_cosine


def test_cosine_end_points_and_midpoint() -> None:
    assert cosine(0, 100, 1.0, 0.0) == pytest.approx(1.0)
    assert cosine(100, 100, 1.0, 0.0) == pytest.approx(0.0)
    assert cosine(50, 100, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine(150, 100, 1.0, 0.2) == pytest.approx(0.2)  # clamps past the end
    # BYOL's momentum schedule: 1 - (1 - 0.996) (cos(pi k / K) + 1) / 2
    k, K = 30, 100
    assert cosine(k, K, 0.996, 1.0) == pytest.approx(
        1 - (1 - 0.996) * (math.cos(math.pi * k / K) + 1) / 2)


def test_linear() -> None:
    assert linear(5, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert linear(20, 10, 0.04, 0.07) == pytest.approx(0.07)


def test_warmup_cosine() -> None:
    vals = [warmup_cosine(s, 100, 10, 1.0, 0.0) for s in range(100)]
    assert vals[0] == pytest.approx(0.1)
    assert vals[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(vals[:10], vals[1:10]))
    assert all(a >= b - 1e-12 for a, b in zip(vals[10:], vals[11:]))
    assert warmup_cosine(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    assert warmup_cosine(0, 100, 0, 2.0) == pytest.approx(2.0)
