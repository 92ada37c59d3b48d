"""Recipes (``--recipe auto|small|paper``): which one ``auto`` picks, that the user's values win
over the recipe's and the recipe's over the paper's, that the run saves the resolved name, and
that every small recipe names only real options and the numbers of its source."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from selfsup import registry
from selfsup.cli import main
from selfsup.config import SMALL_IMAGE_MAX, OptimConfig, RunConfig, ViewConfig, load_yaml, replace
from selfsup.engine import recipes
from selfsup.engine.optim import build_optimizer, resolve
from selfsup.engine.runs import build_parts
from selfsup.engine.trainer import pretrain
from selfsup.types import ConfigError

WITH_SMALL = [n for n in registry.list_names("method") if recipes.small_recipe(n) is not None]


def test_auto_picks_small_up_to_the_cifar_stem_size_and_paper_above() -> None:
    assert recipes.choose("simclr", "auto", SMALL_IMAGE_MAX)[0] == "small"
    assert recipes.choose("simclr", "auto", SMALL_IMAGE_MAX + 1) == ("paper", None)
    assert recipes.choose("simclr", "paper", 16) == ("paper", None)
    name, r = recipes.choose("simclr", "small", 224)  # an explicit choice holds at any size
    assert name == "small" and r is not None
    assert recipes.choose("vicreg", "auto", 16) == ("paper", None)  # no small recipe
    assert recipes.choose("byol", "auto", 16) == ("paper", None)  # one that auto does not pick
    assert recipes.choose("byol", "small", 16)[0] == "small"


def test_small_for_a_method_without_one_and_unknown_names_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"method 'vicreg' has no small-image recipe.*paper"):
        recipes.choose("vicreg", "small", 16)
    with pytest.raises(ConfigError, match="recipe 'tiny' is unknown; expected one of auto"):
        recipes.choose("simclr", "tiny", 16)


def test_every_small_recipe_names_real_options_and_its_source() -> None:
    assert {"simclr", "moco_v2", "byol", "simsiam", "barlow_twins", "swav", "dino"} <= set(
        WITH_SMALL)
    optim_fields = {f.name for f in dataclasses.fields(OptimConfig)}
    view_fields = {f.name for f in dataclasses.fields(ViewConfig)}
    for name in WITH_SMALL:
        r = recipes.small_recipe(name)
        assert r is not None and "cifar10_benchmark.py" in r.source
        cls = registry.get("method", name).obj
        cfg_fields = {f.name for f in dataclasses.fields(cls.Config)}
        assert set(r.method_args) <= cfg_fields, name
        assert set(r.optim) <= optim_fields and set(r.view_args) <= view_fields, name
        resolve(OptimConfig(**r.optim), cls.default_optim)  # valid names and values
        if r.views is not None:
            registry.get("preset", r.views)


def test_small_recipes_carry_lightlys_cifar10_numbers() -> None:
    """lightly's benchmark: batch 128, lr 6e-2 * batch / 128 (SimSiam: 6e-2 unscaled), weight
    decay 5e-4, momentum 0.9; SwAV Adam 1e-3 * batch / 128, wd 1e-6; per-model heads."""

    def r(name: str):  # type: ignore[no-untyped-def]
        out = recipes.small_recipe(name)
        assert out is not None
        return out

    for name in ("simclr", "moco_v2", "byol", "barlow_twins", "dino"):
        o = r(name).optim
        assert o["name"] == "sgd" and o["lr_scaling"] == "linear"
        assert o["lr"] * 128 / 256 == pytest.approx(6e-2), name  # lr is quoted at batch 256
        assert o["weight_decay"] == 5e-4 and o["momentum"] == 0.9 and o["decay_norm_bias"]
        assert o["warmup_epochs"] == 0 and o["min_lr_ratio"] == 0.0
    ss = r("simsiam").optim
    assert ss["lr"] == 0.06 and ss["lr_scaling"] == "none"
    sw = r("swav").optim
    assert sw["name"] == "adam" and sw["lr"] * 128 / 256 == pytest.approx(1e-3)
    assert sw["weight_decay"] == 1e-6
    assert r("simclr").method_args == {"proj_hidden_dim": 512, "proj_out_dim": 128,
                                       "temperature": 0.5}
    assert r("moco_v2").method_args["temperature"] == 0.1
    assert r("moco_v2").method_args["queue_size"] == 4096
    assert r("moco_v2").method_args["batch_negatives"] is True  # lightly's fresh bank keys
    assert r("swav").method_args["num_prototypes"] == 512
    assert r("dino").method_args["out_dim"] == 2048 and r("dino").method_args["head_layers"] == 2
    assert r("simclr").view_args["brightness"] == 0.4 and r("simclr").view_args["hue"] == 0.1


def test_user_beats_recipe_beats_paper(tiny_run) -> None:
    base = replace(tiny_run("x"), method_args={"temperature": 0.2}, optim=OptimConfig(lr=0.5))
    parts = build_parts(base)
    assert parts.cfg.recipe == "small"
    assert parts.method.cfg.temperature == 0.2  # the user's
    assert parts.method.cfg.proj_hidden_dim == 512  # the recipe's (paper: 2048)
    assert parts.method.cfg.proj_layers == 2  # the paper's: the recipe does not set it
    o = resolve(parts.cfg.optim, {})
    assert o.lr == 0.5 and o.name == "sgd" and o.weight_decay == 5e-4
    assert parts.views.groups[0].brightness == 0.4  # the recipe's jitter strength 0.5
    paper = build_parts(replace(base, recipe="paper"))
    assert paper.cfg.recipe == "paper" and paper.method.cfg.proj_hidden_dim == 2048
    assert paper.cfg.optim.name is None  # left to the method's default_optim (LARS)
    assert paper.views.groups[0].brightness == 0.8


def test_a_named_view_preset_is_taken_as_it_is(tiny_run) -> None:
    parts = build_parts(replace(tiny_run("v"), views="moco_v2"))
    g = parts.views.groups[0]
    assert parts.cfg.recipe == "small" and g.blur_p == 0.5 and g.saturation == 0.4


def test_dino_small_recipe_drops_the_paper_decay_schedule_and_clipping(tiny_run) -> None:
    """The recipe's constant weight decay must not cosine to DINO's 0.4, nor keep its clip 3.0."""
    parts = build_parts(replace(tiny_run("d"), method="dino"))
    o = resolve(parts.cfg.optim, registry.get("method", "dino").obj.default_optim)
    assert o.name == "sgd" and o.weight_decay == 5e-4 and o.weight_decay_end is None
    assert o.clip_grad == 0.0
    assert parts.cfg.views == "byol" and len(parts.views.groups) == 2  # two global crops only
    assert all(g.scale == (0.4, 1.0) and g.blur_p == 0.0 for g in parts.views.groups)
    assert parts.views.groups[1].solarize_p == 0.2


def test_adam_is_l2_coupled_adam() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    ref = torch.nn.Linear(3, 2)
    ref.load_state_dict(lin.state_dict())
    cfg = resolve(OptimConfig(name="adam", weight_decay=0.1, decay_norm_bias=True), {})
    opt = build_optimizer(lin, cfg, lr=0.01)
    assert type(opt) is torch.optim.Adam
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01, weight_decay=0.1)
    x = torch.randn(4, 3)
    for m, o in ((lin, opt), (ref, ref_opt)):
        m(x).square().sum().backward()
        o.step()
    for a, b in zip(lin.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


def test_run_saves_and_prints_the_resolved_recipe_and_resumes_with_it(tiny_run, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="selfsup"):
        res = pretrain(tiny_run("r", steps=4), stop_at=2)
    assert any(m.startswith("recipe: small (8-px images") for m in caplog.messages)
    saved = load_yaml(res.run_dir / "config.yaml")
    assert saved.recipe == "small" and saved.optim.lr == 0.12
    resumed = pretrain(tiny_run("r", steps=4), resume=True)
    assert resumed.step == 4 and resumed.cfg.recipe == "small" and resumed.cfg.optim.lr == 0.12


def test_cli_lists_recipes_and_rejects_small_without_one(capsys, tmp_path) -> None:
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    assert "simclr" in out and "SimCLRModel" in out and "vicreg" in out and "paper only" in out
    code = main(["pretrain", "--method", "vicreg", "--recipe", "small", "--data", "digits",
                 "--backbone", "small_cnn", "--steps", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "has no small-image recipe" in err and len(err.strip().splitlines()) == 1


def test_default_config_is_auto() -> None:
    assert RunConfig().recipe == "auto"
