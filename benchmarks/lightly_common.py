"""The lightly side of the benchmarks: lightly's usual data path and one plain-PyTorch training
loop shared by every lightly row (``lightly_simclr.py`` and ``lightly_methods.py``).

* Data: a torchvision-style dataset (a ``uint8`` array turned into a PIL image per
  ``__getitem__``, as ``torchvision.datasets.MNIST``/``CIFAR10`` do) with a lightly transform in
  a ``torch.utils.data.DataLoader`` with ``num_workers`` processes.
* Loop (:func:`train_loop`): per step the lr of the shared warm-up + cosine schedule function,
  the recipe's ``before_step`` (momentum updates, prototype normalisation as in lightly's
  examples), its loss, backward, ``after_backward`` (e.g. DINO's frozen last layer), optional
  gradient clipping, the optimiser step; throughput windows as selfsup's trainer counts them.
* Optimiser (:func:`make_optimizer`): the selfsup method's resolved optimiser (LARS from
  ``lightly.utils.lars``, SGD, Adam or AdamW from torch) with lightly's weight-decay groups
  (``get_weight_decay_parameters``: no decay for biases and norms).
* Augmentation values (:func:`lightly_view_kwargs`): selfsup's view preset group turned into the
  keyword arguments of lightly's transforms (same crop scale, flip, jitter, grayscale, blur with
  the same pixel sigma, solarisation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import common
import numpy as np
import torch
from common import Setting
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from selfsup.config import ViewConfig
from selfsup.engine.optim import clip_gradients
from selfsup.utils.schedules import warmup_cosine

S = TypeVar("S", bound=Setting)


class ArrayImages(Dataset):
    """A torchvision-style dataset over ``[N, H, W, C]`` uint8 images: ``__getitem__`` builds a
    PIL image (mode ``L`` for one channel, ``RGB`` for three) and applies ``transform``, as
    ``torchvision.datasets.MNIST`` / ``CIFAR10`` do."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Any) -> None:
        if x.ndim != 4 or x.dtype != np.uint8 or x.shape[-1] not in (1, 3):
            raise ValueError(f"expected uint8 images [N, H, W, 1|3], got {x.shape} {x.dtype}")
        self.x = x[..., 0] if x.shape[-1] == 1 else x
        self.y = y.astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        img = Image.fromarray(self.x[i], mode="L" if self.x.ndim == 3 else "RGB")
        return self.transform(img), int(self.y[i])


def load_arrays(s: Setting) -> tuple[np.ndarray, np.ndarray]:
    """Training images ``[N, H, W, C]`` uint8 and labels of a setting (first ``s.limit``)."""
    with np.load(s.path) as d:
        x, y = d["x_train"], d["y_train"]
    if x.ndim == 3:
        x = x[..., None]
    if s.limit:
        x, y = x[: s.limit], y[: s.limit]
    return np.ascontiguousarray(x), np.asarray(y)


def multicrop_kwargs(groups: list[ViewConfig]) -> tuple[ViewConfig, ViewConfig,
                                                        ViewConfig | None, dict[str, Any]]:
    """``(global 1, global 2, local group or None, the local-crop keyword arguments of lightly's
    DINO-style transforms)`` of a multi-crop preset's view groups (two global crops only for the
    small recipes: ``n_local_views=0``)."""
    g1, g2 = groups[:2]
    loc = groups[2] if len(groups) > 2 else None
    local: dict[str, Any] = {"n_local_views": 0}
    if loc is not None:
        local = {"local_crop_size": loc.size, "local_crop_scale": loc.scale,
                 "n_local_views": loc.n}
    return g1, g2, loc, local


def lightly_view_kwargs(g: ViewConfig) -> dict[str, Any]:
    """Keyword arguments of lightly's single-view transforms (``SimCLRTransform``,
    ``BYOLView1Transform``, ...) equal to selfsup's view group ``g``.

    lightly's colour jitter is ``cj_strength x (cj_bright, cj_contrast, cj_sat, cj_hue)``, so the
    strength is 1 and the four values are selfsup's. selfsup's blur sigma is given at 224 px and
    scaled by ``size / 224``; lightly's is in pixels of the view, so it is passed pre-scaled.
    lightly's crops always reach scale 1.0 (only the lower bound is an argument)."""
    k = g.size / 224
    return {"cj_prob": g.jitter_p, "cj_strength": 1.0, "cj_bright": g.brightness,
            "cj_contrast": g.contrast, "cj_sat": g.saturation, "cj_hue": g.hue,
            "min_scale": g.scale[0], "random_gray_scale": g.grayscale_p,
            "gaussian_blur": g.blur_p, "sigmas": (g.blur_sigma[0] * k, g.blur_sigma[1] * k),
            "hf_prob": g.hflip_p}


def normalize_arg(norm: Any) -> dict[str, list[float]]:
    """selfsup's data mean/std as lightly's ``normalize`` argument."""
    return {"mean": list(norm.mean), "std": list(norm.std)}


@dataclass
class Recipe:
    """One lightly method ready for :func:`train_loop`.

    Attributes:
        model: every module of the method; ``model.backbone`` is the evaluated encoder.
        transform: lightly transform, PIL image -> list of view tensors.
        trainable: modules whose parameters the optimiser updates (no EMA copies).
        loss: ``(views, step, epoch) -> loss`` with ``views`` a list of ``[B, C, h, w]``.
        before_step: ``(step, total)`` hook before the forward (lightly's examples update
            momentum encoders and normalise prototypes there).
        after_backward: ``(step, epoch)`` hook between backward and the optimiser step.
        lr_scale: per-group lr factors ``{"decay": a, "no_decay": b}`` (Barlow Twins' bias lr).
        notes: what could not be aligned with selfsup's method (shown in the table notes).
    """

    model: nn.Module
    transform: Any
    trainable: list[nn.Module]
    loss: Callable[[list[Tensor], int, int], Tensor]
    before_step: Callable[[int, int], None] | None = None
    after_backward: Callable[[int, int], None] | None = None
    lr_scale: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def make_optimizer(s: Setting, modules: Iterable[nn.Module],
                   lr_scale: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """The setting's optimiser (``s.optim()``) over lightly's weight-decay groups; each group
    carries an ``lr_scale`` the loop multiplies into the scheduled lr."""
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.utils.lars import LARS

    o = s.optim()
    scale = lr_scale or {}
    decay, no_decay = get_weight_decay_parameters(list(modules))
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": o.weight_decay, "lr_scale": scale.get("decay", 1.0)},
        {"params": no_decay, "weight_decay": o.weight_decay if o.decay_norm_bias else 0.0,
         "lr_scale": scale.get("no_decay", 1.0)},
    ]
    lr = s.peak_lr()
    if o.name == "lars":
        return LARS(groups, lr=lr, momentum=o.momentum or 0.0)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum or 0.0)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=o.betas or (0.9, 0.999))
    if o.name == "adam":  # L2-coupled, as lightly's CIFAR-10 SwAV
        return torch.optim.Adam(groups, lr=lr, betas=o.betas or (0.9, 0.999))
    raise ValueError(f"no lightly-side optimiser for optim.name={o.name!r}")


def train_loop(s: Setting, recipe: Recipe, n_train: int, loader: Iterable[Any]) -> dict[str, Any]:
    """Train ``recipe`` for the setting's steps; the row without kNN (``model`` included)."""
    o = s.optim()
    assert o.min_lr_ratio is not None
    per_epoch, total, warmup = s.schedule(n_train)
    optimizer = make_optimizer(s, recipe.trainable, recipe.lr_scale)
    peak = s.peak_lr()
    params = [p for m in recipe.trainable for p in m.parameters() if p.requires_grad]
    thr = common.Throughput(s.log_every)
    recipe.model.train()
    step, loss = 0, torch.tensor(float("nan"))
    t_train = time.perf_counter()
    while step < total:
        for views, _ in loader:
            epoch = step // max(per_epoch, 1)
            lr = warmup_cosine(step, total, warmup, peak, peak * o.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            if recipe.before_step is not None:
                recipe.before_step(step, total)
            loss = recipe.loss(list(views), step, epoch)
            loss.backward()
            if recipe.after_backward is not None:
                recipe.after_backward(step, epoch)
            if o.clip_grad:
                clip_gradients(params, o.clip_grad, o.clip_mode or "global")
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            thr.step(step, views[0].shape[0], last=step == total)
            if step >= total:
                break
    end = time.perf_counter()
    row: dict[str, Any] = {
        "library": "lightly", "setting": s.to_dict(), "steps": step,
        "images_per_s": thr.steady, "window_rates": thr.rates, "loop_seconds": end - t_train,
        "final_loss": float(loss.detach()), "model": recipe.model, "notes": recipe.notes,
    }
    row.update(common.peak_rss_mb())
    return row


def run_recipe(s: S, build: Callable[[S, np.ndarray, Any], Recipe],
               eval_limit: int | None = None, data_loading: str = "") -> dict[str, Any]:
    """Load the data, ``build(s, x, norm)`` a recipe, train it, then kNN-evaluate its backbone
    with the shared evaluation (if ``s.knn``); returns the row."""
    t_start = time.perf_counter()
    x, y = load_arrays(s)
    norm = common.normalization(common.train_data(s))
    torch.manual_seed(s.seed)
    recipe = build(s, x, norm)
    dataset = ArrayImages(x, y, recipe.transform)
    g = torch.Generator().manual_seed(s.seed)
    loader = DataLoader(dataset, batch_size=s.batch_size, shuffle=True, drop_last=True,
                        num_workers=s.num_workers, generator=g)
    row = train_loop(s, recipe, len(dataset), loader)
    row["train_seconds"] = time.perf_counter() - t_start
    row["data_loading"] = data_loading or (
        f"PIL dataset + {type(recipe.transform).__name__} in DataLoader, "
        f"num_workers={s.num_workers}")
    model = row.pop("model")
    if s.knn:
        row.update(common.knn_eval(model.backbone, s, norm, int(x.shape[1]), eval_limit))
    row.update(common.machine_info())
    return row
