"""Optimisers (SGD, Adam, AdamW, LARS), weight-decay groups and the resolved optimisation settings.

Weight decay groups follow each method's reference code (``optim.decay_norm_bias``): by default it
is applied only to weights with ``p.dim() >= 2`` (conv and linear kernels) and biases and
normalisation parameters get none, as in SimCLR (appendix B.1), BYOL, Barlow Twins and nanoGPT;
MoCo, SimSiam, InstDisc, DeepCluster and SwAV pass ``model.parameters()`` whole to SGD with one
weight decay, so for them every parameter is decayed. LARS's layer-wise adaptation is skipped for
``dim < 2`` parameters either way (SimCLR's ``exclude_from_layer_adaptation``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.config import OptimConfig, from_dict, to_dict
from selfsup.types import ConfigError
from selfsup.utils.schedules import cosine

OPTIMIZERS = ("sgd", "adam", "adamw", "lars")
SCALINGS = ("linear", "sqrt", "none")

# Used where neither the user nor the method's paper sets a value.
FALLBACK: dict[str, Any] = {
    "name": "adamw",
    "lr": 1e-3,
    "lr_scaling": "linear",
    "weight_decay": 0.05,
    "momentum": 0.9,
    "betas": (0.9, 0.999),
    "warmup_epochs": 10.0,
    "min_lr_ratio": 0.0,
    "clip_grad": 0.0,
    "clip_mode": "global",
    "decay_norm_bias": False,
}
CLIP_MODES = ("global", "per_param")


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017, "Large Batch Training of Convolutional Networks", Algorithm 1) with
    SGD momentum, as used by SimCLR and BYOL.

    For a parameter with ``lars=True`` in its group: ``g <- g + wd * w``, then
    ``g <- g * eta * ||w|| / ||g||`` (trust ratio, 1 if either norm is 0), then momentum SGD.
    Groups with ``lars=False`` (biases, norms) get plain momentum SGD with their own weight decay.

    Raises:
        ConfigError: for a negative learning rate, momentum or trust coefficient.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        if lr < 0 or momentum < 0 or eta <= 0:
            raise ConfigError(f"LARS: invalid lr={lr}, momentum={momentum} or eta={eta}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One LARS step, vectorised over each group's parameters with ``torch._foreach_*``
        (a handful of kernels per group instead of ~10 per parameter)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params: list[Tensor] = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads: list[Tensor] = [p.grad for p in params]  # type: ignore[misc]
            if group["weight_decay"] != 0:
                grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
            if group["lars"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0),
                                    group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                grads = list(torch._foreach_mul(grads, list(trust.unbind())))
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)  # first step: buf = g
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def resolve(user: OptimConfig, method_defaults: dict[str, Any]) -> OptimConfig:
    """Fill every ``None`` of ``user`` from the method's paper defaults, then the fallback.

    Raises:
        ConfigError: for an unknown optimiser or lr scaling, or a negative value.
    """
    merged = dict(FALLBACK)
    merged.update(method_defaults)
    merged.update({k: v for k, v in to_dict(user).items() if v is not None})
    if user.weight_decay is not None and user.weight_decay_end is None:
        merged["weight_decay_end"] = None  # a weight decay set by the user stays constant
    cfg = from_dict(OptimConfig, merged, where="optim")
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name '{cfg.name}' is unknown; expected one of {', '.join(OPTIMIZERS)}")
    if cfg.lr_scaling not in SCALINGS:
        raise ConfigError(
            f"optim.lr_scaling '{cfg.lr_scaling}' is unknown; expected one of {', '.join(SCALINGS)}"
        )
    for k in ("lr", "weight_decay", "weight_decay_end", "warmup_epochs", "min_lr_ratio",
              "clip_grad"):
        if (getattr(cfg, k) or 0) < 0:
            raise ConfigError(f"optim.{k} must be >= 0, got {getattr(cfg, k)}")
    if cfg.clip_mode not in CLIP_MODES:
        raise ConfigError(f"optim.clip_mode '{cfg.clip_mode}' is unknown; expected one of "
                          f"{', '.join(CLIP_MODES)}")
    if cfg.accumulate < 1:
        raise ConfigError(f"optim.accumulate must be >= 1, got {cfg.accumulate}")
    return cfg


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Peak learning rate: ``lr * B/256`` (linear, Goyal et al. 2017), ``lr * sqrt(B/256)`` or ``lr``."""
    assert cfg.lr is not None
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch / 256
    if cfg.lr_scaling == "sqrt":
        return float(cfg.lr * (global_batch / 256) ** 0.5)
    return cfg.lr


def param_groups(model: nn.Module, weight_decay: float,
                 decay_norm_bias: bool = False) -> list[dict[str, Any]]:
    """Two groups: kernels (``dim >= 2``, decayed, LARS-adapted) and the rest (biases and norm
    parameters: no LARS adaptation, decayed only with ``decay_norm_bias``).

    Parameters with ``requires_grad=False`` are left out (e.g. EMA teachers).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars": True, "decay": True}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": weight_decay if decay_norm_bias else 0.0,
                       "lars": False, "decay": decay_norm_bias})
    return groups


def weight_decay_at(cfg: OptimConfig, step: int, total: int) -> float:
    """The decayed groups' weight decay at ``step``: constant, or cosine from ``weight_decay`` to
    ``weight_decay_end`` over the run (DINO, Caron et al. 2021, appendix: 0.04 -> 0.4)."""
    assert cfg.weight_decay is not None
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    return cosine(step, total, cfg.weight_decay, cfg.weight_decay_end)


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimiser named by the resolved ``cfg`` over :func:`param_groups` of ``model``."""
    assert cfg.weight_decay is not None and cfg.momentum is not None
    groups = param_groups(model, cfg.weight_decay, bool(cfg.decay_norm_bias))
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name in ("adam", "adamw"):
        for g in groups:
            g.pop("lars")
        betas = cfg.betas or (0.9, 0.999)
        if cfg.name == "adam":  # L2 weight decay added to the gradient (lightly's SwAV on CIFAR)
            return torch.optim.Adam(groups, lr=lr, betas=betas)
        return torch.optim.AdamW(groups, lr=lr, betas=betas)  # decoupled (Loshchilov & Hutter)
    return LARS(groups, lr=lr, momentum=cfg.momentum)


@torch.no_grad()
def clip_gradients(params: Iterable[nn.Parameter], max_norm: float, mode: str) -> Tensor:
    """Clip the gradients of ``params`` in place and return their global L2 norm before clipping.

    ``mode="global"``: one norm over all gradients, scaled to at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``). ``mode="per_param"``: each parameter's gradient norm on
    its own, ``g <- g * max_norm / (||g|| + 1e-6)`` where that factor is below 1, as DINO's
    ``utils.clip_gradients`` (facebookresearch/dino ``utils.py``). ``max_norm <= 0``: no clipping,
    only the norm. The returned norm (a 0-d tensor) is what the trainer checks for NaN/inf, so the
    finiteness check costs no extra pass over the gradients.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch.stack(torch._foreach_norm(grads))  # [P], one fused kernel per device/dtype
    total = torch.linalg.vector_norm(norms)
    if max_norm > 0:
        if mode == "per_param":
            coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        else:
            coef = (max_norm / (total + 1e-6)).clamp(max=1.0).expand_as(norms)
        torch._foreach_mul_(grads, list(coef.to(grads[0].dtype).unbind()))
    return total
