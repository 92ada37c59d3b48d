"""lightly's SimCLR on one benchmark setting, as one row of the benchmark table (run in its own
process so that its peak memory is its own).

What is lightly's and what is shared, so that the comparison is like with like:

* lightly (1.6.0): ``SimCLRTransform`` (two views per PIL image), ``SimCLRProjectionHead``,
  ``NTXentLoss``, ``lars.LARS`` with its weight-decay groups from
  ``models.utils.get_weight_decay_parameters``, and its usual data path: a torchvision-style
  dataset (a ``uint8`` array turned into a PIL image per ``__getitem__``, as
  ``torchvision.datasets.MNIST``/``CIFAR10`` do) in a ``torch.utils.data.DataLoader`` with
  ``num_workers`` processes; the training step follows lightly's plain-PyTorch SimCLR example
  (``examples/pytorch/simclr.py``: one forward per view).
* shared with selfsup: the backbone module (selfsup's ``create_backbone``), every
  hyper-parameter (batch, steps, projector sizes, temperature, LARS lr/wd/momentum, the
  warm-up + cosine schedule as the same pure function of the step), the data's mean/std, the
  throughput windows and the kNN evaluation (:func:`common.knn_eval`).

Augmentation settings: ``input_size`` = image side, random-resized-crop scale (0.08, 1), flip 0.5,
colour jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2, no Gaussian blur (small images,
as selfsup's ``simclr`` preset at <= 64 px).

Usage::

    python benchmarks/lightly_simclr.py --dataset mnist --epochs 3 --num-workers 2 --json out.json
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import common
import numpy as np
import torch
from common import Setting
from lightly_common import ArrayImages, Recipe, lightly_view_kwargs, load_arrays, normalize_arg
from lightly_common import run_recipe as _run_recipe
from torch import Tensor, nn

from selfsup.config import ViewConfig

__all__ = ["ArrayImages", "LightlySimCLRModel", "build", "load_arrays", "recipe", "run"]


class LightlySimCLRModel(nn.Module):
    """Backbone + lightly's ``SimCLRProjectionHead`` (lightly's SimCLR example model);
    ``num_layers=3`` is SimCLR v2's head in lightly's own parametrisation."""

    def __init__(self, backbone: nn.Module, hidden_dim: int, out_dim: int,
                 num_layers: int = 2) -> None:
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = backbone
        num_features = getattr(backbone, "num_features")  # noqa: B009  (a Backbone attribute)
        self.projection_head = SimCLRProjectionHead(int(num_features), hidden_dim, out_dim,
                                                    num_layers=num_layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def build(s: Setting, x: np.ndarray,
          num_layers: int = 2) -> tuple[LightlySimCLRModel, Any, Any]:
    """Model, lightly transform and the normalisation (selfsup's, computed from the data)."""
    from lightly.transforms import SimCLRTransform

    norm = common.normalization(common.train_data(s))
    size = int(x.shape[1])
    # a per-method row: the method's (recipe's) view group; the SimCLR table: selfsup's simclr
    # preset at <= 64 px (no blur, SimCLR's CIFAR-10 recipe)
    views = getattr(s, "views", None)
    view = views(size)[0] if callable(views) else ViewConfig(size=size, blur_p=0.0)
    transform = SimCLRTransform(input_size=size, **lightly_view_kwargs(view),
                                normalize=normalize_arg(norm))
    torch.manual_seed(s.seed)
    backbone = common.build_backbone(s, int(x.shape[-1]), size)
    model = LightlySimCLRModel(backbone, s.proj_hidden_dim, s.proj_out_dim, num_layers)
    return model, transform, norm


def recipe(s: Setting, x: np.ndarray, concat_views: bool = False,
           num_layers: int = 2) -> Recipe:
    """lightly's SimCLR example as a :class:`~lightly_common.Recipe` (``num_layers`` linear
    layers in the projection head: 2 for SimCLR, 3 for SimCLR v2)."""
    from lightly.loss import NTXentLoss

    model, transform, _ = build(s, x, num_layers)
    criterion = NTXentLoss(temperature=s.temperature)

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        x0, x1 = views
        if concat_views:
            z0, z1 = model(torch.cat([x0, x1])).chunk(2)
        else:  # lightly's example: one forward per view
            z0, z1 = model(x0), model(x1)
        return criterion(z0, z1)

    return Recipe(model=model, transform=transform,
                  trainable=[model.backbone, model.projection_head], loss=loss)


def run(s: Setting, concat_views: bool = False, eval_limit: int | None = None) -> dict[str, Any]:
    """Train, then kNN-evaluate with the shared evaluation (if ``s.knn``)."""
    row = _run_recipe(s, lambda s_, x, _norm: recipe(s_, x, concat_views), eval_limit,
                      "PIL dataset + SimCLRTransform in DataLoader, "
                      f"num_workers={s.num_workers}")
    row["concat_views"] = concat_views
    return row


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_setting_args(p)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--concat-views", action="store_true",
                   help="one forward of both views (as selfsup) instead of one per view")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    row = run(common.setting_from(a), a.concat_views, a.eval_limit)
    row["command"] = " ".join(["python", *sys.argv]) if argv is None else None
    common.write_json(a.json, row)


if __name__ == "__main__":
    main()
