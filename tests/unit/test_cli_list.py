"""`selfsup list`: a method's hyper-parameters with their comments, dataset availability."""

from __future__ import annotations

import dataclasses
import json

import pytest

from selfsup.cli import main
from selfsup.cli_list import method_params


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() routes the selfsup logger to this test's captured stderr (and stops propagation):
    put it back, so later tests neither write to a closed stream nor lose caplog records."""
    import logging

    log = logging.getLogger("selfsup")
    saved = (list(log.handlers), log.propagate, log.level)
    yield
    log.handlers[:] = saved[0]
    log.propagate, log.level = saved[1], saved[2]


def test_every_method_lists_every_config_field_with_its_comment() -> None:
    import selfsup.methods  # noqa: F401
    from selfsup import registry

    for name in registry.list_names("method"):
        rows = method_params(name)
        cls = registry.get("method", name).obj.Config
        assert [r["name"] for r in rows] == [f.name for f in dataclasses.fields(cls)], name
        # the house rule: one comment per field, citing the paper
        assert all(r["comment"] for r in rows), (name, [r["name"] for r in rows
                                                        if not r["comment"]])


def test_list_methods_name(capsys) -> None:
    assert main(["list", "methods", "simclr", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    temp = next(p for p in r["params"] if p["name"] == "temperature")
    assert temp["default"] == 0.5 and "NT-Xent" in temp["comment"]
    assert main(["list", "methods", "simclr"]) == 0
    assert "method_args.NAME" in capsys.readouterr().out
    assert main(["list", "methods", "simclrr"]) == 2
    assert "simclr" in capsys.readouterr().err
    assert main(["list", "presets", "simclr"]) == 2
    assert "takes no name" in capsys.readouterr().err


def test_list_datasets_marks_availability(capsys, monkeypatch) -> None:
    monkeypatch.setenv("SELFSUP_SHARED_DATA", "/nonexistent")
    assert main(["list", "datasets", "--json"]) == 0
    found = {d["name"]: d["available"] for d in json.loads(capsys.readouterr().out)["datasets"]}
    assert found["digits"] is True and found["mnist"] is False
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "not available here: set SELFSUP_SHARED_DATA" in out


@pytest.mark.parametrize("what", ["backbones", "presets", "recipes"])
def test_other_lists_still_work(capsys, what: str) -> None:
    assert main(["list", what]) == 0
    assert capsys.readouterr().out.strip()
