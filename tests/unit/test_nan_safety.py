"""NaN safety of the loop: non-finite gradients stop before the update, and no checkpoint is ever
written with non-finite parameters (the last good ``last.pt`` on disk stays finite and loads)."""

from __future__ import annotations

import pytest
import torch

from selfsup.config import RunConfig, from_dict, replace
from selfsup.engine import checkpoint
from selfsup.engine.runs import build_parts
from selfsup.engine.trainer import pretrain
from selfsup.types import (
    ConfigError,
    NonFiniteGradientError,
    NonFiniteParameterError,
)


def _finite_and_loads(path: str, step: int) -> None:
    saved = checkpoint.load(path)
    assert saved["step"] == step
    floats = [v for v in saved["model"].values() if v.is_floating_point()]
    assert floats and all(torch.isfinite(v).all() for v in floats)
    parts = build_parts(from_dict(RunConfig, saved["config"]))
    parts.method.load_state_dict(saved["model"])  # the file is a usable checkpoint


def _cfg(tiny_run, name: str, **train):
    cfg = tiny_run(name, steps=10)
    return replace(cfg, train=replace(cfg.train, ckpt_every=2, **train))


def test_nan_gradient_with_finite_loss_stops_before_the_update(tiny_run) -> None:
    """A finite loss whose gradient is NaN at step 5: without the gradient check the update makes
    the weight NaN and the step-6 checkpoint saves it as the last good one."""
    cfg = _cfg(tiny_run, "g")
    parts = build_parts(cfg)
    weight = next(p for p in parts.method.parameters() if p.dim() >= 2)
    calls = {"n": 0}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 6 else grad

    weight.register_hook(poison)
    with pytest.raises(NonFiniteGradientError, match="step 5 .*loss .* was finite"):
        pretrain(cfg, parts=parts)
    assert torch.isfinite(weight).all()  # the update was not taken
    _finite_and_loads(cfg.train.out + "/last.pt", 4)


def test_nan_parameter_at_a_checkpoint_step_raises_parameter_error(tiny_run) -> None:
    cfg = _cfg(tiny_run, "q")
    parts = build_parts(cfg)
    original = parts.method.on_step_end

    def on_step_end(step: int, total: int) -> None:
        original(step, total)
        if step == 5:  # becomes step 6, a checkpoint step, before any forward sees it
            with torch.no_grad():
                next(parts.method.parameters()).view(-1)[0] = float("nan")

    parts.method.on_step_end = on_step_end  # type: ignore[method-assign]
    with pytest.raises(NonFiniteParameterError, match="by step 6; nothing was saved"):
        pretrain(cfg, parts=parts)
    _finite_and_loads(cfg.train.out + "/last.pt", 4)


def test_grad_norm_is_logged(tiny_run) -> None:
    import json

    res = pretrain(tiny_run("n", steps=2))
    recs = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 for r in recs)


def test_out_naming_a_file_is_a_clear_error(tiny_run, tmp_path) -> None:
    f = tmp_path / "taken"
    f.write_text("user data")
    cfg = tiny_run("x")
    cfg = replace(cfg, train=replace(cfg.train, out=str(f)))
    with pytest.raises(ConfigError, match="--out .*taken' is a file"):
        pretrain(cfg)
    assert f.read_text() == "user data"
