"""Keeps the layering rule of ../shared/STYLE.md true by parsing every import in src/selfsup.

utils (L0) -> nn, losses, data (L1) -> methods, eval (L2) -> engine (L3) -> cli, __init__ (L4).
A module imports only from lower layers, its own package, and the leaves config/registry/types;
a method file imports no other method file except methods/base.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "selfsup"
LEAVES = {"config", "registry", "types"}
LAYER = {"utils": 0, "nn": 1, "losses": 1, "data": 1, "methods": 2, "eval": 2, "engine": 3,
         "cli": 4, "cli_args": 4, "cli_list": 4, "api": 4, "__init__": 4, "__main__": 4}


def _unit(module: str) -> str:
    """First component below ``selfsup`` ('' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    pkg = ".".join(("selfsup", *path.relative_to(SRC).with_suffix("").parts))
    if pkg.endswith(".__init__"):
        pkg = pkg[: -len(".__init__")] + ".__init__"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("selfsup")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: -node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("selfsup"):
                names = [f"{mod}.{a.name}" for a in node.names]
                out += [mod] if mod != "selfsup" else names
    return out


FILES = sorted(SRC.rglob("*.py"))


def test_files_found() -> None:
    assert len(FILES) > 10


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_layering(path: Path) -> None:
    rel = path.relative_to(SRC).with_suffix("")
    me = rel.parts[0] if len(rel.parts) > 1 else rel.parts[0]
    for target in _imports(path):
        unit = _unit(target)
        if me in LEAVES:
            assert unit in LEAVES, f"{rel}: leaf module imports {target}"
            continue
        if unit in LEAVES:
            continue
        assert me in LAYER and unit in LAYER, f"{rel}: unknown unit importing {target}"
        if LAYER[me] == LAYER[unit] == 4:
            continue  # the application layer (CLI, entry points, public API) is one unit
        if unit == me:
            if me == "methods" and len(rel.parts) > 1 and rel.parts[1] != "__init__":
                sub = target.split(".")
                assert len(sub) < 3 or sub[2] == "base", (
                    f"{rel}: a method file may import only methods.base, not {target}")
            continue
        assert LAYER[unit] < LAYER[me], (
            f"{rel} (layer {LAYER[me]}) imports {target} (layer {LAYER[unit]})")
