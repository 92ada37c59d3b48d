from __future__ import annotations

import pytest

from selfsup import registry
from selfsup.types import UnknownNameError


def test_register_create_drops_none() -> None:
    @registry.register("_test", "thing", description="a thing", reference="Nobody 2020")
    def make(a: int = 1, b: int = 2) -> tuple[int, int]:
        return a, b

    assert registry.create("_test", "thing", a=5, b=None) == (5, 2)
    assert registry.list_names("_test") == ["thing"]
    e = registry.get("_test", "thing")
    assert e.description == "a thing" and e.reference == "Nobody 2020"


def test_unknown_name_suggests_and_lists() -> None:
    @registry.register("_test2", "simclr")
    class A:
        pass

    with pytest.raises(UnknownNameError, match="unknown _test2 'simclrr'.*Did you mean 'simclr'"):
        registry.get("_test2", "simclrr")
    assert A.registry_name == "simclr"  # type: ignore[attr-defined]


def test_duplicate_registration_fails() -> None:
    registry.register("_test3", "x")(int)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("_test3", "x")(float)
