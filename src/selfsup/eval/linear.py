"""Linear probe on frozen, cached features.

The linear evaluation protocol (Zhang et al. 2016) done as L2-regularised multinomial logistic
regression solved by full-batch L-BFGS, as in SimCLR's transfer linear evaluation (Chen et al.
2020, appendix B) and CLIP's linear probes (Radford et al. 2021, appendix A.3): features are
standardised with the train mean/std and a single ``nn.Linear`` is fitted to the convex objective

    ``L(W, b) = mean_i CE(W x_i + b, y_i) + (lambda / 2) * ||W||_F^2``

(``lambda`` is the weight decay; the bias is not decayed). ``lambda`` is chosen on a stratified
held-out part of train by walking the regularisation path from the largest value down, each fit
warm-started from the previous one (the first from zero), and the probe is refitted on all of
train with the chosen value. The solver needs no learning rate or batch size, so the result
depends only on the data and the split seed. The loss is accumulated over row chunks so memory
stays bounded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data import arrays
from selfsup.types import ConfigError, DataError


def _check(name: str, f: Tensor, y: Tensor) -> None:
    if f.dim() != 2 or y.dim() != 1 or f.shape[0] != y.shape[0]:
        raise DataError(
            f"linear probe {name} set needs features [N, D] and labels [N]; got "
            f"{tuple(f.shape)} and {tuple(y.shape)}"
        )
    if not torch.isfinite(f).all():
        raise DataError(f"linear probe {name} features contain NaN or inf")


def stratified_split(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices of ``y`` ``[N]`` into ``(fit, held_out)`` with ``fraction`` of each class held out.

    Every class keeps at least one sample in the fit part. Deterministic given ``seed``
    (:func:`selfsup.data.arrays.stratified_split` with ``min_rest=1``, parts swapped).
    """
    held, fit = arrays.stratified_split(y, fraction, seed, min_rest=1)
    return fit, held


def train_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    weight_decay: float = 0.0,
    max_iter: int = 200,
    chunk_size: int = 65536,
    init: nn.Linear | None = None,
) -> nn.Linear:
    """Fit ``nn.Linear(D, num_classes)`` to minimise the objective in the module docstring.

    Args:
        x: (standardised) features ``[N, D]``; the layer is created on their device.
        y: labels ``[N]`` in ``[0, num_classes)``.
        weight_decay: ``lambda >= 0``.
        max_iter: L-BFGS iterations (each evaluates the full-batch loss at least once).
        chunk_size: rows per forward/backward block inside one loss evaluation.
        init: start from a copy of this layer's parameters (a warm start along the
            regularisation path) instead of zero.

    Returns:
        The fitted layer, in eval mode with ``requires_grad`` off.
    """
    # fits also when the caller runs under torch.inference_mode / no_grad (evaluation code)
    with torch.inference_mode(False), torch.enable_grad():
        # inference tensors cannot be saved for backward: work on ordinary copies
        x = x.clone() if x.is_inference() else x
        y = y.clone() if y.is_inference() else y
        layer = nn.Linear(x.shape[1], num_classes, device=x.device)
        with torch.no_grad():
            layer.weight.copy_(init.weight if init is not None else torch.zeros_like(layer.weight))
            layer.bias.copy_(init.bias if init is not None else torch.zeros_like(layer.bias))
        opt = torch.optim.LBFGS(
            layer.parameters(),
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )
        n = x.shape[0]

        def closure() -> Tensor:
            opt.zero_grad()
            total = torch.zeros((), device=x.device)
            for s in range(0, n, chunk_size):
                loss = F.cross_entropy(
                    layer(x[s : s + chunk_size]), y[s : s + chunk_size], reduction="sum"
                )
                (loss / n).backward()
                total += loss.detach() / n
            reg = 0.5 * weight_decay * layer.weight.square().sum()
            if weight_decay > 0:
                reg.backward()
            return total + reg.detach()

        opt.step(closure)
    layer.requires_grad_(False)
    return layer.eval()


def _accuracy(layer: nn.Linear, x: Tensor, y: Tensor, chunk_size: int) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of ``layer`` on ``(x, y)``; top-5 clamps to C."""
    k = min(5, layer.out_features)
    hit1 = hit5 = 0
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk_size):
            pred = layer(x[s : s + chunk_size]).topk(k, dim=1).indices
            hit = pred == y[s : s + chunk_size, None]
            hit1 += int(hit[:, 0].sum())
            hit5 += int(hit.any(dim=1).sum())
    return 100.0 * hit1 / x.shape[0], 100.0 * hit5 / x.shape[0]


def linear_probe(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    *,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2),
    val_fraction: float = 0.2,
    max_iter: int = 200,
    chunk_size: int = 65536,
    seed: int = 0,
    device: str | torch.device | None = None,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Train a linear classifier on frozen features and report its test accuracy.

    Rows labelled ``-1`` (unlabeled) are dropped from train and test. With more than one weight
    decay, each is fitted on the stratified ``1 - val_fraction`` of train and scored on the rest;
    the best (ties: the smaller value) is refitted on all of train, warm-started from its
    held-out fit.

    Args:
        train_f, train_y: train features ``[N, D]`` and labels ``[N]``.
        test_f, test_y: test features ``[M, D]`` and labels ``[M]``.
        num_classes: ``C``; None = largest label + 1.
        weight_decays: candidate ``lambda`` values (>= 0) of the L2 penalty.
        val_fraction: held-out fraction of train for the search, in ``(0, 1)``.
        max_iter: L-BFGS iterations per fit.
        chunk_size: rows per block when evaluating the loss.
        seed: seed of the held-out split (the fit itself is deterministic).
        device: where to fit; None = ``train_f``'s device.
        return_predictions: also return ``"predictions"``, the predicted class ``[M']`` (int64,
            CPU) of every labeled test row in order, and ``"targets"``, their labels (for a
            confusion matrix).

    Returns:
        ``{"top1", "top5"}`` test accuracy in percent, the chosen ``"weight_decay"`` and its
        held-out ``"val_top1"`` (NaN when there was no search).

    Raises:
        DataError: for mismatched shapes, non-finite features, no labeled rows, or labels
            >= ``num_classes``.
        ConfigError: for an empty/negative ``weight_decays``, ``val_fraction`` outside
            ``(0, 1)``, or ``max_iter`` / ``chunk_size`` < 1.
    """
    _check("train", train_f, train_y)
    _check("test", test_f, test_y)
    if train_f.shape[1] != test_f.shape[1]:
        raise DataError(
            f"linear probe train and test features differ in dimension: {train_f.shape[1]} vs "
            f"{test_f.shape[1]}"
        )
    wds = [float(w) for w in weight_decays]
    if not wds or min(wds) < 0:
        raise ConfigError(f"linear probe weight_decays must be non-empty and >= 0, got {wds}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"linear probe val_fraction must be in (0, 1), got {val_fraction}")
    if max_iter < 1 or chunk_size < 1:
        raise ConfigError(
            f"linear probe max_iter and chunk_size must be >= 1, got {max_iter}, {chunk_size}"
        )
    dev = torch.device(device) if device is not None else train_f.device
    keep_tr, keep_te = train_y >= 0, test_y >= 0
    if not bool(keep_tr.any()) or not bool(keep_te.any()):
        raise DataError("linear probe needs labeled train and test samples (labels >= 0)")
    xtr = train_f[keep_tr].to(dev, torch.float32)
    ytr = train_y[keep_tr].to(dev, torch.long)
    xte = test_f[keep_te].to(dev, torch.float32)
    yte = test_y[keep_te].to(dev, torch.long)
    top = max(int(ytr.max()), int(yte.max()))
    if num_classes is None:
        num_classes = top + 1
    if top >= num_classes:
        raise DataError(f"linear probe: label {top} is out of range for num_classes={num_classes}")

    mean = xtr.mean(dim=0)
    std = xtr.std(dim=0, correction=0).clamp_min(1e-6)
    xtr = (xtr - mean) / std
    xte = (xte - mean) / std

    best_wd, best_val, best = wds[0], float("nan"), None
    if len(wds) > 1:
        fit, held = stratified_split(ytr, val_fraction, seed)
        fit, held = fit.to(dev), held.to(dev)
        if len(held) > 0:
            layer = None
            # strongest regularisation first, each fit warm-started from the previous one
            for wd in sorted(wds, reverse=True):
                layer = train_linear(
                    xtr[fit], ytr[fit], num_classes, wd, max_iter, chunk_size, init=layer
                )
                val = _accuracy(layer, xtr[held], ytr[held], chunk_size)[0]
                if not val < best_val:  # at least as good (ties: the smaller decay), or first
                    best_wd, best_val, best = wd, val, layer
    layer = train_linear(xtr, ytr, num_classes, best_wd, max_iter, chunk_size, init=best)
    top1, top5 = _accuracy(layer, xte, yte, chunk_size)
    out: dict[str, Any] = {"top1": top1, "top5": top5, "weight_decay": best_wd,
                           "val_top1": best_val}
    if return_predictions:
        with torch.no_grad():
            out["predictions"] = torch.cat([layer(xte[i:i + chunk_size]).argmax(dim=1).cpu()
                                            for i in range(0, len(xte), chunk_size)])
        out["targets"] = yte.cpu()
    return out
