"""Weight-decay groups of the contrastive / instance methods follow their reference code: the
optimiser built from each method's ``default_optim`` (``engine.optim.build_optimizer`` over
``resolve(OptimConfig(), Method.default_optim)``) decays BatchNorm and bias parameters exactly
where the reference hands ``model.parameters()`` whole to its optimiser."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup import registry
from selfsup.config import OptimConfig
from selfsup.engine.optim import build_optimizer, resolve
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone

# True: every parameter decayed (SGD/AdamW over model.parameters()); False: biases and norms
# excluded (SimCLR's LARS exclude_from_weight_decay, moco-v3's LARS skipping ndim <= 1)
REFERENCE = {
    "moco_v1": True,  # facebookresearch/moco main_moco.py
    "moco_v2": True,
    "simsiam": True,  # facebookresearch/simsiam main_simsiam.py
    "instdisc": True,  # zhirongw/lemniscate.pytorch main.py
    "cmc": True,  # HobbitLong/CMC train_CMC.py set_optimizer
    "invaspread": True,  # mangye16/Unsupervised_Embedding_Learning demo_seen.py
    "simclr": False,  # google-research/simclr model.py / lars_optimizer.py
    "simclr_v2": False,
    "moco_v3": False,  # facebookresearch/moco-v3 moco/optimizer.py (ResNet recipe)
}
SMALL = {"moco_v2": {"proj_hidden_dim": 16}, "moco_v3": {"proj_hidden_dim": 16, "proj_dim": 8},
         "simclr": {"proj_hidden_dim": 16}, "simclr_v2": {"proj_hidden_dim": 16},
         "simsiam": {"proj_hidden_dim": 16, "proj_out_dim": 16, "pred_hidden_dim": 8}}


def _decay_of(opt: torch.optim.Optimizer) -> dict[int, float]:
    return {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_weight_decay_groups_follow_the_reference(name: str) -> None:
    torch.manual_seed(0)
    bb = create_backbone("small_cnn", in_chans=3, image_size=16, width=4)
    m = build_method(name, bb, **SMALL.get(name, {}))
    cls = registry.get("method", name).obj
    assert cls.default_optim["decay_norm_bias"] is REFERENCE[name]
    cfg = resolve(OptimConfig(), cls.default_optim)
    wd = cfg.weight_decay
    assert wd is not None and wd > 0
    decay = _decay_of(build_optimizer(m, cfg, lr=0.1))
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert len(decay) == len(trainable)  # each trainable parameter in exactly one group
    bn = next(x for x in m.backbone.modules() if isinstance(x, nn.BatchNorm2d))
    conv = next(x for x in m.backbone.modules() if isinstance(x, nn.Conv2d))
    expected = wd if REFERENCE[name] else 0.0
    assert decay[id(conv.weight)] == wd  # kernels are always decayed
    assert decay[id(bn.weight)] == expected and decay[id(bn.bias)] == expected
    biases = [p for n, p in m.named_parameters() if p.requires_grad and n.endswith(".bias")]
    assert biases and all(decay[id(p)] == expected for p in biases)
