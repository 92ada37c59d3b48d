"""Every method's small-image recipe (``--recipe small``, what ``auto`` picks on 16-px digits)
learns: the encoder beats its random init in kNN top-1, raw pixels reported beside.

Same protocol as the other learning tests (small CNN width 32, digits at 16 px, batch 128, 150
steps, crops 0.3-1, no flip, one warm-up epoch), the recipe's optimiser, heads and views otherwise
(``selfsup list recipes``). Margins are about half the measured gain (numbers in the comments,
one run each on 2 CPU cores), so a recipe that stops learning (a wrong optimiser name, lr or
head size reaching the run) fails while seed noise does not.
"""

from __future__ import annotations

import pytest

# measured kNN top-1 of the trained encoder (random init 85.79, raw pixels 94.99); the recipes
# `auto` does not pick (BYOL 86.35, SimSiam 87.19, Barlow Twins 49.58: below their paper
# recipes, docs/recipes.md) are left out, as they do not learn within this budget
MARGINS = {
    "simclr": 3.5,  # 93.04
    "simclr_v2": 3.0,  # 91.92
    "moco_v2": 4.0,  # 94.43
    "swav": 2.0,  # 90.53
    "dino": 2.5,  # 91.09
}


@pytest.mark.parametrize("method", sorted(MARGINS))
def test_small_recipe_beats_random_init(learn, method: str) -> None:
    r = learn(method, recipe="small", label=f"{method} (small recipe)")
    assert r["result"].cfg.recipe == "small"  # the saved, resolved name
    assert r["trained"] > r["random"] + MARGINS[method], r
