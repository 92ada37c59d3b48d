"""Weight-decay groups of BYOL, PixPro, Barlow Twins, VICReg, DeepCluster and DeepCluster-v2 as
the trainer builds them (``build_optimizer(method, resolve(OptimConfig(), default_optim))``),
against each reference's optimiser (cited at each method's ``default_optim``):

* BYOL (byol_experiment.py ``_optimizer``), Barlow Twins (main.py), VICReg (main_vicreg.py) and
  PixPro (contrast/lars.py ``add_weight_decay``): LARS, biases and norm parameters (1-D) get no
  weight decay and no LARS adaptation.
* DeepCluster (main.py: SGD over ``model.parameters()``) and DeepCluster-v2
  (main_deepclusterv2.py: SGD over ``model.parameters()`` inside LARC): one weight decay for every
  parameter, biases and BatchNorm included.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup import registry
from selfsup.config import OptimConfig
from selfsup.engine.optim import LARS, build_optimizer, resolve
from selfsup.methods.base import Method, build_method
from selfsup.nn.backbones import create_backbone

SMALL: dict[str, dict[str, object]] = {
    "byol": {"proj_hidden_dim": 32, "proj_out_dim": 16, "pred_hidden_dim": 16},
    "pixpro": {"proj_hidden_dim": 32, "proj_out_dim": 16, "pred_hidden_dim": 16,
               "instance_weight": 1.0},
    "barlow_twins": {"proj_hidden_dim": 32, "proj_out_dim": 16},
    "vicreg": {"proj_hidden_dim": 32, "proj_out_dim": 16},
    "deepcluster": {"head_hidden_dim": 32, "num_clusters": 5, "pca_dim": 8},
    "deepcluster_v2": {"proj_hidden_dim": 32, "proj_out_dim": 16, "num_prototypes": [5, 6]},
}
# name -> (optimiser class, are biases and norm parameters decayed)
REFERENCE: dict[str, tuple[type[torch.optim.Optimizer], bool]] = {
    "byol": (LARS, False),
    "pixpro": (LARS, False),
    "barlow_twins": (LARS, False),
    "vicreg": (LARS, False),
    "deepcluster": (torch.optim.SGD, True),
    "deepcluster_v2": (LARS, True),
}


def _method(name: str) -> Method:
    torch.manual_seed(0)
    return build_method(name, create_backbone("small_cnn", 1, 16, width=8), **SMALL[name])


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_weight_decay_groups_follow_the_reference(name: str) -> None:
    cls = registry.get("method", name).obj
    ocfg = resolve(OptimConfig(), cls.default_optim)
    opt_cls, decay_norm_bias = REFERENCE[name]
    assert ocfg.decay_norm_bias is decay_norm_bias
    m = _method(name)
    opt = build_optimizer(m, ocfg, lr=0.1)
    assert type(opt) is opt_cls
    wd = ocfg.weight_decay
    assert wd is not None and wd > 0
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert len(group_of) == len(trainable)  # every trainable parameter once, no EMA copy
    for pname, p in m.named_parameters():
        if not p.requires_grad:
            assert id(p) not in group_of, pname
            continue
        g = group_of[id(p)]
        decayed = p.dim() >= 2 or decay_norm_bias
        assert g["weight_decay"] == (wd if decayed else 0.0), pname
        assert g["decay"] is decayed, pname  # the trainer's wd schedule writes decay=True groups
        if opt_cls is LARS and p.dim() < 2 and not decay_norm_bias:
            assert g["lars"] is False, pname  # no layer-wise adaptation either (references)
    # the parameters the references single out: BatchNorm gains and shifts, and biases
    bn = [mod.weight for mod in m.modules()
          if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.weight is not None
          and mod.weight.requires_grad]
    biases = [p for n, p in m.named_parameters() if n.endswith("bias") and p.requires_grad]
    assert bn and biases
    for p in bn + biases:
        assert (group_of[id(p)]["weight_decay"] > 0) is decay_norm_bias

