from __future__ import annotations

from pathlib import Path

import pytest

from selfsup.config import (
    DataConfig,
    RunConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    replace,
    save_yaml,
    to_dict,
)
from selfsup.types import ConfigError


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(RunConfig(), ["optim.lr=0.5", "method_args.temperature=0.2",
                                        "view_args.blur_p=0", "data.mean=[0.1, 0.2]"])
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(tmp_path / "c.yaml")
    assert back == cfg
    assert back.optim.lr == 0.5 and back.method_args == {"temperature": 0.2}
    assert back.data.mean == [0.1, 0.2]


def test_override_types_are_checked() -> None:
    assert apply_overrides(RunConfig(), ["train.epochs=3"]).train.epochs == 3
    assert apply_overrides(RunConfig(), ["train.progress=false"]).train.progress is False
    with pytest.raises(ConfigError, match="train.epochs.*integer"):
        apply_overrides(RunConfig(), ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="train.epochs.*integer"):
        apply_overrides(RunConfig(), ["train.epochs=1.5"])


def test_unknown_option_names_it_and_lists_valid() -> None:
    with pytest.raises(ConfigError, match="unknown option 'train.epoch'.*epochs"):
        apply_overrides(RunConfig(), ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown option 'nope'"):
        apply_overrides(RunConfig(), ["nope.x=3"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(RunConfig(), ["train.epochs"])
    with pytest.raises(ConfigError, match="unknown option 'data.pth'"):
        from_dict(RunConfig, {"data": {"pth": "x"}})


def test_replace_keeps_defaults_for_none() -> None:
    d = replace(DataConfig(), path="x", image_size=None)
    assert d.path == "x" and d.image_size is None
    assert to_dict(replace(RunConfig(), method="byol"))["method"] == "byol"


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(bad)
