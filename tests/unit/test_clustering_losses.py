"""SwAV's swapped prediction loss against a loop over crop pairs, closed forms, and the
pseudo-label cross-entropy of DeepCluster(-v2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses.clustering import pseudo_label_cross_entropy, swapped_prediction_loss
from selfsup.nn.sinkhorn import sinkhorn
from selfsup.types import ConfigError, DataError


def _reference(scores: list[torch.Tensor], codes: list[torch.Tensor], assign: list[int],
               tau: float) -> torch.Tensor:
    """Loops over assigned crops, predicting crops and samples (main_swav.py's loss)."""
    total = torch.zeros((), dtype=torch.float64)
    b, k = scores[0].shape
    for q, s in zip(codes, assign):
        sub = torch.zeros((), dtype=torch.float64)
        for t in range(len(scores)):
            if t == s:
                continue
            for i in range(b):
                logits = scores[t][i].double() / tau
                log_p = logits - torch.logsumexp(logits, 0)
                sub -= sum(q[i, j].double() * log_p[j] for j in range(k)) / b
        total += sub / (len(scores) - 1)
    return total / len(codes)


@pytest.mark.parametrize(("views", "assign", "tau"),
                         [(2, [0, 1], 0.1), (4, [0, 1], 0.1), (5, [0], 0.5), (3, [1, 2], 0.2)])
def test_matches_loop_reference(views: int, assign: list[int], tau: float) -> None:
    g = torch.Generator().manual_seed(views)
    scores = [torch.randn(6, 5, generator=g) for _ in range(views)]
    codes = [sinkhorn(scores[c], 0.05, 3) for c in assign]
    out = swapped_prediction_loss(scores, codes, assign, tau)
    torch.testing.assert_close(out.double(), _reference(scores, codes, assign, tau),
                               rtol=1e-5, atol=1e-6)


def test_closed_forms_and_gradient_only_through_predictions() -> None:
    # uniform predictions: the loss is log K whatever the codes
    scores = [torch.zeros(4, 7), torch.zeros(4, 7)]
    codes = [torch.softmax(torch.randn(4, 7), 1), torch.softmax(torch.randn(4, 7), 1)]
    assert swapped_prediction_loss(scores, codes, [0, 1]).item() == pytest.approx(math.log(7))
    # one-hot codes: cross-entropy of the other crop's prediction
    s = [torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    q = F.one_hot(torch.tensor([0, 2, 1]), 4).float().requires_grad_()
    out = swapped_prediction_loss(s, [q], [0], temperature=0.1)
    torch.testing.assert_close(out, F.cross_entropy(s[1] / 0.1, torch.tensor([0, 2, 1])))
    out.backward()
    assert q.grad is None and s[0].grad is None and s[1].grad is not None


def test_swapped_prediction_bad_input() -> None:
    s = [torch.zeros(2, 3), torch.zeros(2, 3)]
    with pytest.raises(ConfigError, match="temperature"):
        swapped_prediction_loss(s, s[:1], [0], 0.0)
    with pytest.raises(DataError, match="at least 2"):
        swapped_prediction_loss(s[:1], s[:1], [0])
    with pytest.raises(ConfigError, match="outside"):
        swapped_prediction_loss(s, s[:1], [2])
    with pytest.raises(ConfigError, match="codes"):
        swapped_prediction_loss(s, s, [0])
    with pytest.raises(DataError, match="shape|\\[B, K\\]"):
        swapped_prediction_loss([torch.zeros(2, 3), torch.zeros(2, 4)], s[:1], [0])


def test_pseudo_label_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(5, 4, generator=g), torch.randn(5, 6, generator=g)]
    y = [torch.tensor([0, 1, 2, 3, 0]), torch.tensor([5, -1, 2, 0, 1])]
    ref = (F.cross_entropy(s[0] / 0.1, y[0])
           + F.cross_entropy(s[1][y[1] >= 0] / 0.1, y[1][y[1] >= 0])) / 2
    torch.testing.assert_close(pseudo_label_cross_entropy(s, y, 0.1), ref)
    with pytest.raises(ConfigError, match="temperature"):
        pseudo_label_cross_entropy(s, y, 0.0)
    with pytest.raises(DataError, match="heads"):
        pseudo_label_cross_entropy(s, y[:1])
