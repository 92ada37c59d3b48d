"""The training loop: exact resume, atomic checkpoints, non-finite loss, Ctrl-C, run files."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from selfsup.config import load_yaml, replace
from selfsup.engine import checkpoint
from selfsup.engine.runs import build_parts
from selfsup.engine.trainer import Interrupted, pretrain
from selfsup.types import CheckpointError, NonFiniteLossError


def _params(method: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in method.parameters()]


def test_resume_is_exact(tiny_run) -> None:
    straight = pretrain(tiny_run("a", steps=8))
    part = pretrain(tiny_run("b", steps=8), stop_at=4)
    assert part.step == 4 and not part.completed
    assert checkpoint.load(part.checkpoint)["step"] == 4
    resumed = pretrain(tiny_run("b", steps=8), resume=True)
    assert resumed.step == 8 and resumed.completed
    assert resumed.final_loss == straight.final_loss
    for a, b in zip(_params(straight.method), _params(resumed.method)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_run_folder_contents(tiny_run) -> None:
    res = pretrain(tiny_run("c", steps=3))
    files = {p.name for p in res.run_dir.iterdir()}
    assert {"last.pt", "config.yaml", "metrics.jsonl", "metrics.csv"} <= files
    recs = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all({"loss", "lr", "images_per_s"} <= set(r) for r in recs)
    cfg = load_yaml(res.run_dir / "config.yaml")
    # 8-px digits: `recipe: auto` resolved to SimCLR's small-image recipe and saved by name
    assert cfg.recipe == "small" and cfg.optim.name == "sgd" and cfg.views == "simclr"
    assert cfg.data.mean is not None and cfg.method_args["proj_hidden_dim"] == 512
    header = (res.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "epoch"]


def test_refuses_to_overwrite_and_checks_method_on_resume(tiny_run) -> None:
    pretrain(tiny_run("d", steps=2))
    with pytest.raises(CheckpointError, match="already holds a run"):
        pretrain(tiny_run("d", steps=2))
    other = replace(tiny_run("d", steps=4), method="nonexistent_method")
    with pytest.raises(CheckpointError, match="trained with method 'simclr'"):
        pretrain(other, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        pretrain(tiny_run("e", steps=2), resume=True)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_run) -> None:
    cfg = replace(tiny_run("f", steps=10), train=replace(tiny_run("f").train, ckpt_every=2,
                                                           steps=10))
    parts = build_parts(cfg)
    original = parts.method.training_step
    calls = {"n": 0}

    def step(batch):
        calls["n"] += 1
        out = original(batch)
        if calls["n"] == 5:
            out.loss = out.loss * float("nan")
        return out

    parts.method.training_step = step  # type: ignore[method-assign]
    with pytest.raises(NonFiniteLossError, match="step 4.*last good checkpoint"):
        pretrain(cfg, parts=parts)
    saved = checkpoint.load(parts.cfg.train.out + "/last.pt")
    assert saved["step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_sigint_writes_checkpoint_then_resume_finishes(tiny_run) -> None:
    cfg = tiny_run("g", steps=8)
    parts = build_parts(cfg)
    original = parts.method.training_step
    calls = {"n": 0}

    def step(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(batch)

    parts.method.training_step = step  # type: ignore[method-assign]
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="step 3"):
        pretrain(cfg, parts=parts)
    assert checkpoint.load(parts.cfg.train.out + "/last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before
    res = pretrain(cfg, resume=True)
    assert res.step == 8


def test_gradient_accumulation_counts_optimizer_steps(tiny_run) -> None:
    cfg = tiny_run("h", steps=3, batch=32)
    cfg = replace(cfg, optim=replace(cfg.optim, accumulate=2))
    res = pretrain(cfg)
    assert res.step == 3
    assert checkpoint.load(res.checkpoint)["config"]["optim"]["accumulate"] == 2


def test_online_knn_monitor_logs_accuracy(tiny_run) -> None:
    cfg = tiny_run("m", steps=40, batch=64)  # ~17 steps per epoch: two monitor checks
    cfg = replace(cfg, data=replace(cfg.data, val_fraction=0.2),
                  train=replace(cfg.train, monitor_every=1))
    res = pretrain(cfg)
    recs = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    accs = [r["monitor_knn_top1"] for r in recs if "monitor_knn_top1" in r]
    assert len(accs) >= 2 and all(0 <= a <= 100 for a in accs)


def test_trainer_clips_with_the_resolved_clip_mode(tiny_run, monkeypatch) -> None:
    from selfsup.engine import trainer

    seen: list[tuple[float, str]] = []
    real = trainer.clip_gradients

    def spy(params, max_norm, mode):
        seen.append((max_norm, mode))
        return real(params, max_norm, mode)

    monkeypatch.setattr(trainer, "clip_gradients", spy)
    cfg = tiny_run("clip", steps=2)
    cfg = replace(cfg, optim=replace(cfg.optim, clip_grad=3.0, clip_mode="per_param"))
    pretrain(cfg)
    assert seen == [(3.0, "per_param")] * 2
