"""Method-level checks of InvaSpread beyond the registry contract: the loss the method computes
equals its formula on the method's own features (CPC v2 is in test_cpc_v2.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses.nce import invaspread_batch_loss, invaspread_loss
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError, DataError

SIZE, B = 16, 6


def _bb(in_chans: int = 1, size: int = SIZE):
    torch.manual_seed(0)
    return create_backbone("small_cnn", in_chans=in_chans, image_size=size, width=4)


def _batch(in_chans: int = 1, n: int = 2, size: int = SIZE, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, in_chans, size, size, generator=g) for _ in range(n)]
    return Batch(views=views, index=torch.tensor([3, 0, 7, 9, 1, 4]))


# ------------------------------------------------------------------ InvaSpread


@pytest.mark.parametrize("loss,symmetric", [("batch", False), ("paper", False), ("paper", True)])
def test_invaspread_step_is_the_configured_loss(loss: str, symmetric: bool) -> None:
    m = build_method("invaspread", _bb(), loss=loss, symmetric=symmetric).eval()
    batch = _batch()
    with torch.no_grad():
        out = m.training_step(batch)
        f1 = F.normalize(m.head(m.backbone(batch.views[0])), dim=1)
        f2 = F.normalize(m.head(m.backbone(batch.views[1])), dim=1)
        if loss == "batch":
            ref = invaspread_batch_loss(f1, f2, 0.1)
        else:
            ref = invaspread_loss(f1, f2, 0.1)
            if symmetric:
                ref = 0.5 * (ref + invaspread_loss(f2, f1, 0.1))
        torch.testing.assert_close(out.loss, ref)
    with pytest.raises(DataError, match="2 views"):
        m.training_step(Batch(views=batch.views[:1], index=batch.index))


def test_invaspread_defaults_to_the_official_criterion() -> None:
    m = build_method("invaspread", _bb()).eval()
    assert m.cfg.loss == "batch" and type(m).default_optim["decay_norm_bias"] is True
    batch = _batch()
    with torch.no_grad():
        f = F.normalize(m.head(m.backbone(torch.cat(batch.views))), dim=1)
        torch.testing.assert_close(m.training_step(batch).loss,
                                   invaspread_batch_loss(f[:B], f[B:], 0.1))
    with pytest.raises(ConfigError, match="method_args.loss"):
        build_method("invaspread", _bb(), loss="official")
    with pytest.raises(ConfigError, match="method_args.symmetric"):
        build_method("invaspread", _bb(), symmetric=True)
