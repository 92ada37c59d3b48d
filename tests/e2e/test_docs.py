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
