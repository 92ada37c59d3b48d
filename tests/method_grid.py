"""Shared by the grids that run every registered method (resume, DDP equivalence): the generic
shrink of a method's Config so that a newly registered method runs fast with no entry of its own."""

from __future__ import annotations

import dataclasses
from typing import Any

from selfsup import registry


def shrunk_args(name: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``overrides[name]`` over the generic shrink: int ``*_dim`` fields >= 64 become 16."""
    cfg = registry.get("method", name).obj.Config
    args: dict[str, Any] = {
        f.name: 16 for f in dataclasses.fields(cfg)
        if f.name.endswith("_dim") and isinstance(f.default, int) and f.default >= 64
    }
    return {**args, **overrides.get(name, {})}
