"""Contract of every registered backbone: shapes, attributes, finite outputs, a gradient for every
parameter, random weights built without any network access."""

from __future__ import annotations

import socket

import pytest
import torch

import selfsup.nn.backbones  # noqa: F401  (registers the backbones)
from selfsup import registry
from selfsup.nn.backbones import create_backbone

SIZE = 32


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (e.g. a weight download) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("backbone construction tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("in_chans", [1, 3, 13])
@pytest.mark.parametrize("name", registry.list_names("backbone"))
def test_backbone_contract(name: str, in_chans: int, no_network: None) -> None:
    torch.manual_seed(0)
    opts = {"patch_size": 8} if name.startswith("vit") else {}
    m = create_backbone(name, in_chans=in_chans, image_size=SIZE, **opts)
    assert (m.in_chans, m.image_size) == (in_chans, SIZE)
    assert isinstance(m.num_features, int) and m.num_features > 0
    out = m(torch.randn(2, in_chans, SIZE, SIZE))
    assert out.shape == (2, m.num_features)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [n for n, p in m.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
