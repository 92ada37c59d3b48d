"""Where the time of one SimCLR training step goes, in selfsup and in lightly (wall-clock timers
around each phase, averaged over steady-state steps; optional ``torch.profiler`` op tables).

selfsup's phases replicate its trainer's step (``selfsup.engine.trainer``) with the same parts:
``fetch`` (the in-memory loader's gather), ``augment`` (``to_unit`` + ``MultiView``: both views),
``forward`` (backbone + projector + NT-Xent), ``backward``, ``optimizer`` (LARS step + zero_grad).
lightly's: ``fetch`` (waiting for the DataLoader: PIL decode + ``SimCLRTransform`` + collate in
the main process when ``num_workers=0``, only the wait otherwise), ``forward``, ``backward``,
``optimizer``. Each phase is summarised by its median over the measured steps; the pipelines
run one after the other (on an idle machine: the numbers are wall-clock).

Usage::

    python benchmarks/profile_split.py --dataset mnist --steps 20 [--lightly-workers 0 2]
        [--torch-profile] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import common
import torch
from common import Setting

from selfsup.config import RunConfig
from selfsup.data.datasets import make_loader
from selfsup.engine.optim import build_optimizer
from selfsup.engine.runs import build_parts
from selfsup.types import Batch


class PhaseTimer:
    """Wall-clock seconds per named phase and measured step; summarised by the median over the
    steps (robust to the spikes other processes on a shared machine cause)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.steps = 0
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def lap(self, name: str, measure: bool) -> None:
        now = time.perf_counter()
        if measure:
            self.times.setdefault(name, []).append(now - self._t)
        self._t = now

    def summary(self, batch: int) -> dict[str, Any]:
        per = {k: 1000 * statistics.median(v) for k, v in self.times.items()}
        mean = {k: 1000 * statistics.fmean(v) for k, v in self.times.items()}
        step_ms = sum(per.values())
        return {"ms_per_step": per, "mean_ms_per_step": mean, "step_ms": step_ms,
                "share": {k: v / step_ms for k, v in per.items()},
                "images_per_s": batch / (step_ms / 1000) if step_ms else 0.0,
                "measured_steps": self.steps}


def _cycle(make: Callable[[int], Any]) -> Iterator[Any]:
    epoch = 0
    while True:
        yield from make(epoch)
        epoch += 1


class SelfsupStep:
    """selfsup's training step, phase by phase (same parts and order as its trainer)."""

    def __init__(self, s: Setting) -> None:
        import selfsup_simclr

        cfg: RunConfig = selfsup_simclr.run_config(s, "/nonexistent")
        parts = build_parts(cfg)
        self.method, self.views, self.norm = parts.method, parts.views, parts.norm
        loader = make_loader(parts.train, s.batch_size, shuffle=True, drop_last=True,
                             seed=s.seed)

        def epoch_iter(epoch: int) -> Any:
            loader.set_epoch(epoch)
            return iter(loader)

        self.fmt = torch.channels_last if getattr(parts.cfg.train, "channels_last", False) \
            else torch.contiguous_format  # the trainer's memory format
        self.method.to(memory_format=self.fmt)  # type: ignore[call-overload]
        self.optimizer = build_optimizer(self.method, s.optim(), s.peak_lr())
        self.batches = _cycle(epoch_iter)
        self.method.train()

    def __call__(self, timer: PhaseTimer, measure: bool) -> None:
        timer.start()
        x, y, idx = next(self.batches)
        timer.lap("fetch", measure)
        with torch.no_grad():
            v, boxes = self.views(self.norm.to_unit(x))
            v = [t.contiguous(memory_format=self.fmt) for t in v]
        timer.lap("augment", measure)
        out = self.method(Batch(views=v, index=idx, labels=y, boxes=boxes))
        if not torch.isfinite(out.loss.detach()):
            raise FloatingPointError("non-finite loss while profiling")
        timer.lap("forward", measure)
        out.loss.backward()
        timer.lap("backward", measure)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        timer.lap("optimizer", measure)


class LightlyStep:
    """The lightly training step of :mod:`lightly_simclr`, phase by phase."""

    def __init__(self, s: Setting) -> None:
        import lightly_simclr as ls
        from lightly.loss import NTXentLoss
        from lightly.models.utils import get_weight_decay_parameters
        from lightly.utils.lars import LARS
        from torch.utils.data import DataLoader

        x, y = ls.load_arrays(s)
        self.model, transform, _ = ls.build(s, x)
        loader = DataLoader(ls.ArrayImages(x, y, transform), batch_size=s.batch_size,
                            shuffle=True, drop_last=True, num_workers=s.num_workers,
                            persistent_workers=s.num_workers > 0)
        self.criterion = NTXentLoss(temperature=s.temperature)
        decay, no_decay = get_weight_decay_parameters([self.model.backbone,
                                                       self.model.projection_head])
        o = s.optim()
        self.optimizer = LARS([{"params": decay, "weight_decay": o.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=s.peak_lr(),
                              momentum=o.momentum)
        self.batches = _cycle(lambda _e: iter(loader))
        self.model.train()

    def __call__(self, timer: PhaseTimer, measure: bool) -> None:
        timer.start()
        (x0, x1), _ = next(self.batches)
        timer.lap("fetch", measure)
        loss = self.criterion(self.model(x0), self.model(x1))
        timer.lap("forward", measure)
        loss.backward()
        timer.lap("backward", measure)
        self.optimizer.step()
        self.optimizer.zero_grad()
        timer.lap("optimizer", measure)


def measure(step: Any, steps: int, warmup: int, batch: int) -> dict[str, Any]:
    """Phase summary of ``warmup + steps`` calls of one pipeline's step (the first ``warmup``
    not measured). Pipelines are measured one after the other, never interleaved: alternating
    with lightly's in-process PIL pipeline made selfsup's small-op phases ~50x slower (260 ->
    1400 ms per step), an artefact of sharing one process."""
    timer = PhaseTimer()
    for i in range(warmup + steps):
        step(timer, i >= warmup)
        timer.steps += i >= warmup
    return timer.summary(batch)


def _op_table(step: Any, steps: int) -> str:
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    timer = PhaseTimer()
    with prof:
        for _ in range(steps):
            step(timer, False)
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def run(s: Setting, steps: int = 20, warmup: int = 3, lightly_workers: tuple[int, ...] = (0, 2),
        torch_profile: bool = False) -> dict[str, Any]:
    """Phase splits of selfsup and (if importable) lightly with each of ``lightly_workers``
    DataLoader workers, for ``steps`` steps after ``warmup``, one pipeline after the other."""
    out: dict[str, Any] = {"setting": s.to_dict(), "steps": steps, "warmup": warmup}
    pipelines: dict[str, Any] = {"selfsup": lambda: SelfsupStep(s)}
    if importlib.util.find_spec("lightly") is not None:
        for nw in lightly_workers:
            pipelines[f"lightly_workers{nw}"] = \
                lambda nw=nw: LightlyStep(dataclasses.replace(s, num_workers=nw))
    for key, make in pipelines.items():
        step = make()
        out[key] = measure(step, steps, warmup, s.batch_size)
        if torch_profile:
            out[f"{key}_ops"] = _op_table(step, 3)
        del step
    out.update(common.machine_info())
    return out


def format_split(result: dict[str, Any]) -> str:
    """A markdown table of the phase splits (ms per step and share)."""
    keys = [k for k in ("selfsup", "lightly_workers0", "lightly_workers2") if k in result]
    phases = ["fetch", "augment", "forward", "backward", "optimizer"]
    lines = ["| pipeline | " + " | ".join(f"{p} ms" for p in phases) + " | step ms | images/s |",
             "|---" * (len(phases) + 3) + "|"]
    for k in keys:
        r = result[k]
        cells = [f"{r['ms_per_step'][p]:.0f} ({100 * r['share'][p]:.0f}%)"
                 if p in r["ms_per_step"] else "-" for p in phases]
        lines.append(f"| {k} | " + " | ".join(cells) +
                     f" | {r['step_ms']:.0f} | {r['images_per_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(common.SETTINGS), default="mnist")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--lightly-workers", type=int, nargs="*", default=[0, 2])
    p.add_argument("--torch-profile", action="store_true", help="also print op tables")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    s = common.SETTINGS[a.dataset]
    s = dataclasses.replace(s, **{k: v for k, v in (("batch_size", a.batch_size),
                                                    ("limit", a.limit)) if v is not None})
    r = run(s, a.steps, a.warmup, tuple(a.lightly_workers), a.torch_profile)
    print(format_split(r))
    for k, v in r.items():
        if k.endswith("_ops"):
            print(f"\n## {k}\n{v}")
    if a.json:
        common.write_json(a.json, r)


if __name__ == "__main__":
    main()
