"""docs/cli.md documents every option of every command (regenerate it when the CLI changes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfsup.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_every_cli_option_is_documented() -> None:
    text = DOC.read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"## `selfsup {name}`" in text
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in text, f"{name} {flag} missing from docs/cli.md"


def test_readme_starts_with_the_two_commands() -> None:
    head = (DOC.parents[1] / "README.md").read_text().splitlines()[:8]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def _readme() -> str:
    return (DOC.parents[1] / "README.md").read_text()


def test_readme_method_table_is_the_registry() -> None:
    import re

    import selfsup

    table = _readme().split("## Methods", 1)[1].split("\n\n", 1)[0]
    named = {n for row in table.splitlines()[2:] for n in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert named == set(selfsup.list_methods())


def test_readme_backbones_and_presets_exist() -> None:
    import re

    import selfsup

    text = _readme()
    backbones = text.split("Backbones: ", 1)[1].split("View presets:", 1)[0]
    named = set(re.findall(r"`(\w+)`", backbones)) - {"forward_features"}
    assert named == set(selfsup.list_backbones())
    presets = text.split("View presets:", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`(\w+)`", presets)) - {"selfsup"} <= set(selfsup.list_presets())


def test_method_args_named_in_the_docs_exist() -> None:
    """Every `method_args.KEY` in README and docs/ is a field of some method's Config."""
    import dataclasses
    import re

    import selfsup.methods  # noqa: F401
    from selfsup import registry

    fields = {f.name for n in registry.list_names("method")
              for f in dataclasses.fields(registry.get("method", n).obj.Config)}
    docs = [DOC.parents[1] / "README.md", *sorted((DOC.parent).rglob("*.md"))]
    unknown = {(p.name, k) for p in docs for k in re.findall(r"method_args\.(\w+)", p.read_text())
               if k not in fields | {"NAME", "KEY"}}
    assert not unknown, sorted(unknown)
