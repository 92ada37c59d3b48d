"""Recipes: which published settings a run starts from, chosen per data scale.

``RunConfig.recipe`` names one:

* ``paper``: the method's own defaults, the paper's ImageNet recipe (its ``Config``,
  ``default_optim`` and ``default_views``);
* ``small``: the method's ``small_recipe``, the settings an anchor library publishes for small
  images and short schedules (lightly's CIFAR-10 benchmark), applied where the user left a value
  unset;
* ``auto`` (the default): ``small`` when the encoder's input side is at most
  :data:`~selfsup.config.SMALL_IMAGE_MAX` pixels (the rule of the ResNet CIFAR stem) and the
  method's small recipe is marked ``auto`` (it measured at least as good as the paper's on small
  images, ``docs/recipes.md``), else ``paper``.

Precedence: what the user sets (``--lr``, ``--set method_args.temperature=...``, a config file)
> the recipe > the paper. A user who names a view preset (``--views``) gets that preset as it is:
the recipe's views and view arguments are then not applied. The saved ``config.yaml`` holds the
resolved recipe name and every resolved value, so a resume or a re-run reproduces the run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from selfsup import registry
from selfsup.config import RECIPES, SMALL_IMAGE_MAX, Recipe, RunConfig, replace
from selfsup.types import ConfigError


def small_recipe(method: str) -> Recipe | None:
    """The registered method's small-image recipe, or ``None`` when it has none."""
    recipe: Recipe | None = getattr(registry.get("method", method).obj, "small_recipe", None)
    return recipe


def choose(method: str, choice: str, image_size: int) -> tuple[str, Recipe | None]:
    """Resolve ``choice`` (auto | small | paper) for ``method`` at ``image_size``.

    Returns:
        ``(name, recipe)``: ``("small", recipe)`` or ``("paper", None)``.

    Raises:
        ConfigError: for an unknown choice, or ``small`` for a method without a small recipe.
    """
    if choice not in RECIPES:
        raise ConfigError(f"recipe '{choice}' is unknown; expected one of {', '.join(RECIPES)}")
    if choice == "paper":
        return "paper", None
    recipe = small_recipe(method)
    if choice == "small":
        if recipe is None:
            with_small = [n for n in registry.list_names("method") if small_recipe(n)]
            raise ConfigError(f"recipe 'small': method '{method}' has no small-image recipe "
                              f"(methods with one: {', '.join(with_small)}); use --recipe paper")
        return "small", recipe
    if recipe is not None and recipe.auto and image_size <= SMALL_IMAGE_MAX:
        return "small", recipe
    return "paper", None


def apply(cfg: RunConfig, recipe: Recipe | None) -> RunConfig:
    """``cfg`` with ``recipe``'s values filled in where the user left them unset.

    Method arguments and optimiser fields the user set win; the recipe's view preset and view
    arguments apply only when the user named no preset (``cfg.views is None``), and then the
    user's own ``view_args`` still win field by field.
    """
    if recipe is None:
        return cfg
    optim = dataclasses.asdict(cfg.optim)
    unknown = sorted(set(recipe.optim) - set(optim))
    if unknown:
        raise ConfigError(f"recipe of '{cfg.method}': unknown optim field '{unknown[0]}'")
    filled = {k: v for k, v in recipe.optim.items() if optim.get(k) is None}
    changes: dict[str, Any] = {
        "method_args": {**recipe.method_args, **cfg.method_args},
        "optim": replace(cfg.optim, **filled),
    }
    if cfg.views is None:
        changes["views"] = recipe.views
        changes["view_args"] = {**recipe.view_args, **cfg.view_args}
    return replace(cfg, **changes)


def describe(method: str, name: str, recipe: Recipe | None, image_size: int) -> str:
    """The one line the trainer prints at the start of a run."""
    if recipe is None:
        alt = small_recipe(method)
        why = (f"; `--recipe small` takes {alt.source.split()[0]}'s small-image settings"
               + ("" if alt.auto else ", not picked by auto: " + alt.note)
               if alt is not None else "")
        return f"recipe: paper ({method}'s paper defaults, {image_size}-px images{why})"
    return (f"recipe: small ({image_size}-px images <= {SMALL_IMAGE_MAX} px; {recipe.source}; "
            "`--recipe paper` for the paper's)")


def table() -> list[dict[str, Any]]:
    """One row per registered method: its recipes and where the small one comes from."""
    rows = []
    for name in registry.list_names("method"):
        r = small_recipe(name)
        rows.append({"method": name, "recipes": ["paper", "small"] if r else ["paper"],
                     "auto": "small" if r and r.auto else "paper",
                     "small_source": r.source if r else None,
                     "small": None if r is None else {
                         "optim": dict(r.optim), "method_args": dict(r.method_args),
                         "views": r.views, "view_args": dict(r.view_args), "note": r.note,
                         "auto": r.auto}})
    return rows
