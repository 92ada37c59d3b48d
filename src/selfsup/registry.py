"""A timm-style registry: ``@register(kind, name)`` on a class or factory, ``create(kind, name, **kw)``.

Kinds used by the library: ``"method"``, ``"backbone"``, ``"preset"`` (view presets) and
``"dataset"`` (built-in named datasets). Registration happens when the module defining the object is
imported; :mod:`selfsup` imports every built-in module, so ``list_names`` is complete after
``import selfsup``.

``create`` drops keyword arguments whose value is ``None`` (as timm's ``create_model`` does), so CLI
options the user did not set never override the object's own defaults.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from selfsup.types import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered object.

    Attributes:
        kind: registry kind (``"method"``, ``"backbone"``, ...).
        name: the registry name used on the command line.
        obj: the registered class or factory.
        description: one line shown by ``selfsup list``.
        reference: the paper (authors, year, title) the object implements; may be empty.
    """

    kind: str
    name: str
    obj: Any
    description: str
    reference: str


_REGISTRY: dict[str, dict[str, Entry]] = {}


def register(
    kind: str, name: str, *, description: str = "", reference: str = ""
) -> Callable[[T], T]:
    """Decorator registering ``obj`` under ``(kind, name)``.

    Raises:
        ValueError: if the name is already registered for that kind (two objects would shadow).
    """

    def deco(obj: T) -> T:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name].obj is not obj:
            raise ValueError(f"{kind} '{name}' is registered twice ({table[name].obj} and {obj})")
        desc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
        table[name] = Entry(kind, name, obj, desc, reference)
        if isinstance(obj, type):
            with contextlib.suppress(TypeError):  # built-in types are immutable
                obj.registry_name = name  # type: ignore[attr-defined]
        return obj

    return deco


def get(kind: str, name: str) -> Entry:
    """Return the entry for ``(kind, name)``.

    Raises:
        UnknownNameError: naming the kind, the unknown name, close matches and all valid names.
    """
    table = _REGISTRY.get(kind, {})
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        valid = ", ".join(sorted(table)) or "(none registered)"
        raise UnknownNameError(f"unknown {kind} '{name}'.{hint} Valid {kind}s: {valid}")
    return table[name]


def create(kind: str, name: str, /, **kwargs: Any) -> Any:
    """Build the object registered as ``(kind, name)``, dropping ``None`` keyword arguments."""
    return get(kind, name).obj(**{k: v for k, v in kwargs.items() if v is not None})


def list_names(kind: str) -> list[str]:
    """Sorted names registered for ``kind``."""
    return sorted(_REGISTRY.get(kind, {}))


def entries(kind: str) -> list[Entry]:
    """All entries of ``kind``, sorted by name."""
    table = _REGISTRY.get(kind, {})
    return [table[k] for k in sorted(table)]
