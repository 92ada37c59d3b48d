"""Contract of every registered method on the small CNN, for grey and RGB inputs: a finite scalar
loss, a finite gradient for every trainable parameter, ``state_dict`` round trip, ``on_step_end``,
and paper-default metadata the trainer relies on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import selfsup.methods  # noqa: F401  (registers the methods)
from method_grid import grid_backbone, tokenizer_args
from selfsup import registry
from selfsup.config import OptimConfig
from selfsup.methods.base import Method, build_method
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError

SIZE = 16
B = 4
METHODS = registry.list_names("method")


def _view_sizes(method: Method) -> list[int]:
    """Side of every view the method's default preset produces at ``SIZE`` (multi-crop presets
    give smaller local crops after the global ones); at least two views."""
    from selfsup.data.views import get_preset

    sizes = [g.size for g in get_preset(type(method).default_views, SIZE) for _ in range(g.n)]
    return sizes + [sizes[0]] * (2 - len(sizes))


WIDE = 1024  # head widths at least this large (DINO's K = 65536, BYOL's 4096) are shrunk ...
NARROW = 128  # ... to this, so the contract runs fast; the paper defaults are checked below


def _small_heads(name: str) -> dict[str, int]:
    cfg = registry.get("method", name).obj.Config
    return {f.name: NARROW for f in dataclasses.fields(cfg)
            if f.name.endswith("_dim") and isinstance(f.default, int) and f.default >= WIDE}


def _build(name: str, in_chans: int, seed: int) -> Method:
    torch.manual_seed(seed)
    backbone = grid_backbone(name, in_chans, SIZE, width=8)
    # BEiT: a random frozen tokenizer module on the ViT's patch grid
    return build_method(name, backbone, **_small_heads(name),
                        **tokenizer_args(name, in_chans, SIZE))


def _channels_or_skip(name: str, in_chans: int) -> None:
    """A method declaring ``input_channels`` (colorization: RGB only) must refuse other channel
    counts with a ConfigError; the rest of the contract is then skipped for that count."""
    chans = getattr(registry.get("method", name).obj, "input_channels", None)
    if chans is not None and in_chans not in chans:
        with pytest.raises(ConfigError):
            _build(name, in_chans, seed=0)
        pytest.skip(f"{name} takes {chans}-channel data only (its ConfigError is checked)")


def _batch(method: Method, in_chans: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    sizes = _view_sizes(method)
    n = len(sizes)
    views = [torch.randn(B, in_chans, s, s, generator=g) for s in sizes]
    lo = torch.rand(B, 2, generator=g) * 0.5
    boxes = [torch.cat([lo, lo + 0.5], dim=1) for _ in range(n)]
    return Batch(views=views, index=torch.arange(B), labels=None, boxes=boxes)


def _loss(method: Method, batch: Batch, seed: int = 123) -> torch.Tensor:
    torch.manual_seed(seed)  # methods may draw masks or noise
    return method.training_step(batch).loss


def test_methods_are_registered() -> None:
    assert "simclr" in METHODS


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", METHODS)
def test_step_loss_and_gradients(name: str, in_chans: int) -> None:
    _channels_or_skip(name, in_chans)
    method = _build(name, in_chans, seed=0).train()
    batch = _batch(method, in_chans)
    out = method.training_step(batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss.detach())
    if out.embeddings is not None:
        assert out.embeddings.shape[0] == B and out.embeddings.dim() == 2
        assert not out.embeddings.requires_grad
    for key, value in out.logs.items():
        assert not (isinstance(value, torch.Tensor) and value.requires_grad), key
    out.loss.backward()
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"trainable parameters without gradient: {missing[:5]}"
    bad = [n for n, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    frozen = [n for n, p in method.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen, f"frozen (e.g. EMA teacher) parameters with a gradient: {frozen[:5]}"
    # the trainer's hook after optimizer.step(), then a second step still works
    method.on_step_end(0, 10)
    assert torch.isfinite(method.training_step(batch).loss.detach())


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip(name: str, in_chans: int) -> None:
    _channels_or_skip(name, in_chans)
    a = _build(name, in_chans, seed=0).train()
    state = {k: v.clone() for k, v in a.state_dict().items()}
    b = _build(name, in_chans, seed=1).train()
    batch = _batch(method=a, in_chans=in_chans)
    before = _loss(b, batch).item()
    b.load_state_dict(state)
    la, lb = _loss(a, batch).item(), _loss(b, batch).item()
    assert lb == pytest.approx(la, rel=1e-5, abs=1e-6)
    assert la != pytest.approx(before, rel=1e-6)  # the weights did change b's loss


@pytest.mark.parametrize("name", METHODS)
def test_metadata(name: str) -> None:
    entry = registry.get("method", name)
    cls = entry.obj
    assert issubclass(cls, Method) and entry.reference and entry.description
    assert dataclasses.is_dataclass(cls.Config)
    for f in dataclasses.fields(cls.Config):  # every hyper-parameter has a paper default
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    optim_keys = {f.name for f in dataclasses.fields(OptimConfig)}
    assert set(cls.default_optim) <= optim_keys
    method = _build(name, 3, seed=0)
    assert method.encoder() is method.backbone and method.name == name
    if registry.list_names("preset"):
        registry.get("preset", cls.default_views)


# ------------------------------------------------------------------ SimCLR specifics


def test_simclr_projector_and_defaults() -> None:
    from torch import nn

    from selfsup.methods.simclr import Config

    m = build_method("simclr", create_backbone("small_cnn", 3, SIZE, width=8))  # paper widths
    kinds = [type(layer).__name__ for layer in m.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert (m.projector[0].in_features, m.projector[0].out_features) == (64, 2048)
    assert m.projector[3].out_features == 128
    assert Config().temperature == 0.5 and m.criterion.temperature == 0.5
    assert type(m).default_optim == {
        "name": "lars", "lr": 0.3, "lr_scaling": "linear", "weight_decay": 1e-6,
        "momentum": 0.9, "warmup_epochs": 10, "min_lr_ratio": 0.0, "decay_norm_bias": False,
    }
    v2 = build_method("simclr", create_backbone("small_cnn", 1, SIZE), proj_layers=3,
                      proj_hidden_dim=32, proj_out_dim=16, temperature=0.1)
    assert sum(isinstance(x, nn.Linear) for x in v2.projector) == 3
    assert v2.projector[-2].out_features == 16 and v2.criterion.temperature == 0.1


def test_simclr_pairs_view0_with_view1() -> None:
    from selfsup.losses.contrastive import nt_xent

    m = _build("simclr", 1, seed=0)
    batch = _batch(m, 1)
    m.train()
    m.training_step(batch)  # populate BN running statistics
    m.eval()  # BN then uses running stats, so one concatenated pass equals two separate ones
    with torch.no_grad():
        out = m.training_step(batch)
        z1 = m.projector(m.backbone(batch.views[0]))
        z2 = m.projector(m.backbone(batch.views[1]))
        torch.testing.assert_close(out.loss, nt_xent(z1, z2, 0.5))
        assert out.embeddings is not None
        torch.testing.assert_close(out.embeddings, z1)
        # a mismatched pairing gives a different loss
        assert abs(nt_xent(z1, z2.roll(1, 0), 0.5).item() - out.loss.item()) > 1e-4


def test_simclr_bad_input() -> None:
    from selfsup.types import ConfigError, DataError

    m = _build("simclr", 1, seed=0)
    x = torch.randn(B, 1, SIZE, SIZE)
    with pytest.raises(DataError, match="2 views"):
        m.training_step(Batch(views=[x], index=torch.arange(B)))
    with pytest.raises(DataError, match="same shape"):
        m.training_step(Batch(views=[x, x[:, :, :8, :8]], index=torch.arange(B)))
    backbone = create_backbone("small_cnn", 1, SIZE)
    for bad in ({"temperature": 0.0}, {"proj_layers": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build_method("simclr", backbone, **bad)
    with pytest.raises(ConfigError, match="unknown option 'method_args.temp'"):
        build_method("simclr", backbone, temp=0.1)
