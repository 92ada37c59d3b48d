"""THE training loop: one explicit loop over optimiser steps (read it top to bottom).

Per step: raw batch -> device -> unit range -> batched augmentation (fp32) -> method forward under
autocast -> loss / accumulate -> backward; every ``accumulate`` micro-batches:
``method.before_optimizer_step(step)`` (gradient edits such as DINO's frozen last layer), clip,
optimiser step,
``method.on_step_end(step, total)`` (EMA, queues), per-step lr from a pure schedule. Checkpoints
are atomic; Ctrl-C/SIGTERM finishes the current step, writes ``last.pt`` and exits.

NaN safety: a non-finite loss stops at once; a finite loss whose gradients are NaN/inf (their
global norm, computed anyway for clipping and logging) stops before the optimiser step; and a
checkpoint is never written while any floating parameter or buffer is non-finite (e.g. made so by
an EMA or bank update), so ``last.pt`` on disk is always the last good state. With fp16 autocast
the ``GradScaler`` skips steps with inf gradients itself, so only the loss is checked there.

Distributed runs save the RNG states of every rank (``rng_per_rank``) and each rank resumes its
own stream; a stop request on any rank stops all ranks at the same step.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from selfsup.config import RunConfig, from_dict, replace, save_yaml, to_dict
from selfsup.data.datasets import make_loader
from selfsup.engine import checkpoint, recipes
from selfsup.engine.guards import StopFlag, closing, non_finite_state
from selfsup.engine.optim import (
    build_optimizer,
    clip_gradients,
    resolve,
    scaled_lr,
    weight_decay_at,
)
from selfsup.engine.runs import Parts, build_parts, pick_device, preprocessor
from selfsup.eval.collapse import collapse_report
from selfsup.eval.features import extract_features
from selfsup.eval.knn import OnlineKNN
from selfsup.methods.base import Method
from selfsup.types import (
    Batch,
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteGradientError,
    NonFiniteLossError,
    NonFiniteParameterError,
)
from selfsup.utils import dist
from selfsup.utils.log import MetricsWriter, logger
from selfsup.utils.schedules import warmup_cosine
from selfsup.utils.seed import rng_state, seed_everything

MONITOR_BANK = 10_000  # training images used as the online kNN monitor's memory bank


class Interrupted(KeyboardInterrupt):
    """Raised after Ctrl-C/SIGTERM once the checkpoint is written."""


@dataclass
class PretrainResult:
    """Summary of a (possibly partial) run."""

    run_dir: Path
    checkpoint: Path
    step: int
    total_steps: int
    final_loss: float
    images_per_s: float
    peak_memory_mb: float
    seconds: float
    method: Any  # the trained Method (on the training device)
    cfg: RunConfig

    @property
    def completed(self) -> bool:
        return self.step >= self.total_steps


def _precision(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _resume_config(cfg: RunConfig, path: Path) -> tuple[RunConfig, dict[str, Any]]:
    payload = checkpoint.load(path)
    saved = from_dict(RunConfig, payload["config"])
    for what, a, b in (("method", saved.method, cfg.method),
                       ("backbone", saved.backbone.name, cfg.backbone.name)):
        if a != b:
            raise CheckpointError(f"cannot resume '{path}': it was trained with {what} '{a}', "
                                  f"but this run asks for '{b}'")
    # the run continues exactly as saved (same step budget and schedules); only where it lives
    # and how it reports may change
    train = replace(saved.train, progress=cfg.train.progress, out=cfg.train.out,
                    tensorboard=cfg.train.tensorboard)
    return replace(saved, train=train), payload


def pretrain(cfg: RunConfig, *, resume: bool = False, stop_at: int | None = None,
             parts: Parts | None = None, backbone: torch.nn.Module | None = None,
             data: Any = None) -> PretrainResult:
    """Pretrain ``cfg.method`` on ``cfg.data``; write checkpoints, config and metrics to ``cfg.train.out``.

    Args:
        cfg: the run configuration (``None`` fields take the method's paper defaults).
        resume: continue from ``<out>/last.pt`` exactly (model, optimiser, step, RNG states).
        stop_at: end (with a checkpoint) after this optimiser step, as a preemption would;
            ``--resume`` then finishes the run identically to an uninterrupted one.
        parts: pre-built parts (Python API); by default built from ``cfg``.
        backbone: a user's ``nn.Module`` to pretrain in place of ``cfg.backbone`` (trained in
            place: it holds the pretrained weights afterwards).
        data: images from Python in place of ``cfg.data.path`` (:mod:`selfsup.data.python_data`).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        Interrupted: Ctrl-C/SIGTERM, after writing ``last.pt``.
        DataError, ConfigError, CheckpointError: bad input, named in the message.
    """
    t_start = time.time()
    device = pick_device(cfg.train.device)
    dist.init_from_env(device.type)
    if device.type == "cuda" and dist.is_initialized():
        device = torch.device("cuda", dist.local_rank())
        torch.cuda.set_device(device)
    out = Path(cfg.train.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; expected a folder for the run (it is "
                          "created if missing)")
    ckpt_path = out / "last.pt"
    payload: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.is_file():
            raise CheckpointError(f"--resume: no checkpoint at '{ckpt_path}' to continue from")
        cfg, payload = _resume_config(cfg, ckpt_path)
    elif ckpt_path.exists():
        raise CheckpointError(f"'{out}' already holds a run (last.pt); pass --resume to continue "
                              "it or choose another --out")
    seed_everything(cfg.train.seed + dist.rank())
    # on --resume the checkpoint's weights replace any backbone.init weights
    parts = parts or build_parts(cfg, backbone, init=not resume, data=data)
    cfg, method, views = parts.cfg, parts.method, parts.views
    method.to(device)
    views.to(device)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    method.to(memory_format=fmt)  # type: ignore[call-overload]

    B, accum, world = cfg.train.batch_size, cfg.optim.accumulate, dist.world_size()
    loader = make_loader(parts.train, B, shuffle=True, drop_last=True, seed=cfg.train.seed,
                         num_workers=cfg.data.num_workers, rank=dist.rank(), world_size=world)
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch == 0:
        raise DataError(f"dataset '{cfg.data.path}' has {len(parts.train)} images, fewer than one "
                        f"batch ({B} x {world} processes x {accum} accumulation); lower "
                        "--batch-size")
    used = steps_per_epoch * accum * B * world
    if used < 0.75 * len(parts.train) and dist.is_main():  # over a quarter dropped
        logger.warning("batch %d x %d process(es) x %d accumulation uses %d of the %d images per "
                       "epoch (incomplete batches are dropped); lower --batch-size to train on "
                       "more of them", B, world, accum, used, len(parts.train))
    total = cfg.train.steps or cfg.train.epochs * steps_per_epoch
    ocfg = resolve(cfg.optim, type(method).default_optim)
    cfg = replace(cfg, optim=ocfg)
    peak_lr = scaled_lr(ocfg, B * world * accum)
    assert ocfg.warmup_epochs is not None and ocfg.min_lr_ratio is not None
    warmup = min(round(ocfg.warmup_epochs * steps_per_epoch), total // 2)
    optimizer = build_optimizer(method, ocfg, peak_lr)
    amp_dtype = _precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    model: torch.nn.Module = method
    if world > 1:
        # buffers (memory banks, queues, EMA statistics) start equal (DDP broadcasts rank 0's
        # parameters and buffers once at init, like the one-process state) and are then kept in
        # sync by the methods' own collectives; broadcasting them from rank 0 at every forward
        # would cost N x D copies
        model = DistributedDataParallel(method, device_ids=[device] if device.type == "cuda"
                                        else None, forward_sync_buffers=False)
    if cfg.train.compile:
        model = torch.compile(model)  # type: ignore[assignment]

    method.on_train_start(steps_per_epoch, total)
    step = 0
    if payload is not None:
        method.load_state_dict(payload["model"])
        checkpoint.restore_rank_buffers(method, payload)  # after DDP's init broadcast
        optimizer.load_state_dict(payload["optimizer"])
        scaler.load_state_dict(payload["scaler"])
        step = int(payload["step"])
        checkpoint.restore_rng(payload, cfg.train.seed, step)
        logger.info("resumed '%s' at step %d/%d", ckpt_path, step, total)

    main = dist.is_main()
    if main:
        logger.info("%s", recipes.describe(cfg.method, cfg.recipe, parts.recipe, parts.image_size))
        if parts.init is not None:
            logger.info("%s", parts.init.summary())
    writer = MetricsWriter(out, tensorboard=cfg.train.tensorboard) if main else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml")
    monitor = None
    if cfg.train.monitor_every > 0 and parts.val is not None and parts.val.has_labels:
        # a labeled memory bank of at most MONITOR_BANK training images keeps each check cheap
        labeled = torch.nonzero(parts.train.labels >= 0).flatten()[:MONITOR_BANK]
        monitor = OnlineKNN(parts.train.subset(labeled), parts.val,
                            preprocessor(parts.norm, parts.image_size), device=device)

    def save() -> None:
        # parameters agree across ranks, BatchNorm statistics need not: all ranks raise together
        bad = non_finite_state(method)
        if dist.any_rank(bad is not None, device):
            bad = bad or "a buffer of another rank"
            raise NonFiniteParameterError(
                f"'{bad}' became NaN/inf by step {step}; nothing was saved and the last good "
                f"checkpoint is kept at '{ckpt_path}'. Try a lower optim.lr or optim.clip_grad=1.0")
        rngs = dist.all_gather_object(rng_state())  # a collective: every rank takes part
        per_rank = checkpoint.rank_buffers(method)  # a collective too
        if not main:
            return
        checkpoint.save_atomic({
            "format": checkpoint.FORMAT, "version": checkpoint.library_version(), "method": cfg.method,
            "config": to_dict(cfg), "model": method.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
            "rng": rngs[0], "rng_per_rank": rngs, "buffers_per_rank": per_rank,
            "normalization": parts.norm.to_dict(),
            "data": {"channels": parts.train.channels, "image_size": parts.image_size,
                     "num_classes": parts.train.num_classes},
        }, ckpt_path)

    from tqdm.auto import tqdm

    # redirected to a file or pipe (CI logs, nohup): a bar update every 30 s, not every step
    bar = tqdm(total=total, initial=step, disable=not (cfg.train.progress and main),
               dynamic_ncols=True, desc=f"{cfg.method}",
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    method.train()
    last_loss, seen, t_window, ips = float("nan"), 0, time.perf_counter(), 0.0
    grad_norm: torch.Tensor | None = None
    run_ips: list[float] = []
    stop = StopFlag()
    with stop.installed(), closing(bar):
        while step < total:
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            if done_in_epoch == 0:  # mid-epoch resume: the epoch's state is in the checkpoint
                _start_epoch(method, optimizer, parts, epoch, cfg.train.seed, device)
            loader.set_epoch(epoch, balance=method.epoch_sample_labels())
            micro = 0
            for i, (x, y, idx) in enumerate(loader):
                if i < done_in_epoch * accum:
                    continue  # resuming mid-epoch: same permutation, skip what was trained
                lr = warmup_cosine(step, total, warmup, peak_lr, peak_lr * ocfg.min_lr_ratio)
                wd = weight_decay_at(ocfg, step, total)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                    if g.get("decay"):
                        g["weight_decay"] = wd
                x = x.to(device, non_blocking=True)
                with torch.no_grad():
                    v, boxes = views(parts.norm.to_unit(x))
                    v = [t.contiguous(memory_format=fmt) for t in v]
                batch = Batch(views=v, index=idx.to(device), labels=y.to(device), boxes=boxes)
                sync = contextlib.nullcontext()
                if world > 1 and micro < accum - 1:
                    sync = model.no_sync()  # type: ignore[operator]
                with sync, torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                          enabled=amp_dtype is not None):
                    result = model(batch)
                    loss = result.loss
                    if not torch.isfinite(loss.detach()):
                        raise NonFiniteLossError(
                            f"loss became {loss.item()} at step {step}; stopped. The last good "
                            f"checkpoint is kept at '{ckpt_path}'. Try a lower optim.lr, "
                            "optim.clip_grad=1.0 or train.precision=fp32")
                    scaler.scale(loss / accum).backward()
                micro += 1
                seen += x.shape[0]
                if micro < accum:
                    continue
                micro = 0
                method.before_optimizer_step(step)
                if ocfg.clip_grad or not scaler.is_enabled():
                    # fp16: the scaler finds inf gradients and skips the step itself
                    scaler.unscale_(optimizer)
                    grad_norm = clip_gradients(method.parameters(), ocfg.clip_grad or 0.0,
                                               ocfg.clip_mode or "global")
                    if not scaler.is_enabled() and not torch.isfinite(grad_norm):
                        raise NonFiniteGradientError(
                            f"gradients became NaN/inf at step {step} (loss "
                            f"{float(loss.detach()):.4g} was finite); stopped before the update. "
                            f"The last good checkpoint is kept at '{ckpt_path}'. Try a lower "
                            "optim.lr, optim.clip_grad=1.0 or train.precision=fp32")
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                method.on_step_end(step, total)
                step += 1
                bar.update(1)

                if step % cfg.train.log_every == 0 or step == total:
                    last_loss = float(loss.detach())
                    now = time.perf_counter()
                    ips = seen * world / max(now - t_window, 1e-9)
                    run_ips.append(ips)
                    seen, t_window = 0, now
                    rec: dict[str, Any] = {"epoch": step / steps_per_epoch, "loss": last_loss,
                                           "lr": lr, "images_per_s": ips}
                    if grad_norm is not None:
                        rec["grad_norm"] = float(grad_norm)
                    rec.update({k: float(v) for k, v in result.logs.items()})
                    ce = cfg.train.collapse_every
                    if ce and result.embeddings is not None and step % ce < cfg.train.log_every:
                        rec.update(_collapse(result.embeddings, step))
                    if writer:
                        writer.write(step, rec)
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}",
                                    refresh=False)
                if monitor and step % steps_per_epoch == 0 and \
                        (step // steps_per_epoch) % cfg.train.monitor_every == 0:
                    acc = monitor(method.encoder())
                    method.train()
                    if writer:
                        writer.write(step, {"monitor_knn_top1": acc["top1"]})
                    logger.info("epoch %d: online kNN top-1 %.2f%%", step // steps_per_epoch,
                                acc["top1"])
                stopping = dist.any_rank(stop.set, device) if world > 1 else stop.set
                if step % cfg.train.ckpt_every == 0 or step in (total, stop_at) or stopping:
                    save()
                if stopping:
                    raise Interrupted(f"interrupted at step {step}; checkpoint written to "
                                      f"'{ckpt_path}' (continue with --resume)")
                if step >= total or step == stop_at:
                    break
            if step == stop_at:
                break
    if writer:
        writer.close()
    peak = _peak_memory_mb(device)
    steady = run_ips[1:] or run_ips
    return PretrainResult(out, ckpt_path, step, total, last_loss,
                          sum(steady) / max(len(steady), 1), peak, time.time() - t_start,
                          method, cfg)


def _start_epoch(method: Method, optimizer: torch.optim.Optimizer, parts: Parts, epoch: int,
                 seed: int, device: torch.device) -> None:
    """``method.on_epoch_start``: with the features of this rank's shard of the training set
    (evaluation transform, no augmentation) when the method wants them (DeepCluster); the
    optimiser forgets the momentum of parameters the method re-initialised."""
    feats = index = None
    if method.wants_epoch_features(epoch):
        index = torch.arange(dist.rank(), len(parts.train), dist.world_size())
        feats, _ = extract_features(method.epoch_feature_encoder(), parts.train.subset(index),
                                    preprocessor(parts.norm, parts.image_size), device=device)
        feats, index = feats.to(device), index.to(device)
    for p in method.on_epoch_start(epoch, feats, index, seed):
        optimizer.state.pop(p, None)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _collapse(z: torch.Tensor, step: int) -> dict[str, float]:
    """Collapse metrics of ``z`` (see :func:`selfsup.eval.collapse.collapse_report`), with a
    warning when the std ratio or the effective rank says the embeddings collapsed."""
    r = collapse_report(z.detach().float())
    if r["collapsed"]:
        logger.warning("step %d: embeddings look collapsed (std ratio %.3f, effective rank %.2f)",
                       step, r["std_ratio"], r["effective_rank"])
    return {k: float(r[k]) for k in ("embedding_std", "std_ratio", "effective_rank")}
