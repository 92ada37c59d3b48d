"""Contract of every registered backbone: shapes, attributes, finite outputs, a gradient for every
parameter, random weights built without any network access, and a spatial ``forward_features`` map
whose pooled value is consistent with ``forward``."""

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


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", registry.list_names("backbone"))
def test_backbone_feature_map_contract(name: str, in_chans: int) -> None:
    torch.manual_seed(0)
    opts = {"patch_size": 8} if name.startswith("vit") else {}
    m = create_backbone(name, in_chans=in_chans, image_size=SIZE, **opts)
    x = torch.randn(2, in_chans, SIZE, SIZE)
    fmap = m.forward_features(x)
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, m.num_features) and fmap.shape[2] >= 1
    assert torch.isfinite(fmap).all()
    fmap.square().mean().backward()
    # every parameter used by the map gets a gradient (ViT's CLS token and head-only parts aside)
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(g.isfinite().all() for g in grads)
    if not name.startswith("vit"):  # CNNs: forward is exactly the average-pooled map
        m.eval()
        with torch.no_grad():
            torch.testing.assert_close(m(x), m.forward_features(x).mean(dim=(2, 3)))
