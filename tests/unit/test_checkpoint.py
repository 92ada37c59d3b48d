from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfsup.engine import checkpoint
from selfsup.types import CheckpointError


def test_atomic_save_and_load(tmp_path: Path) -> None:
    p = checkpoint.save_atomic({"format": checkpoint.FORMAT, "x": torch.ones(3)}, tmp_path / "a.pt")
    assert not (tmp_path / "a.pt.tmp").exists()
    assert torch.equal(checkpoint.load(p)["x"], torch.ones(3))


def test_failed_save_keeps_previous(tmp_path: Path) -> None:
    p = checkpoint.save_atomic({"format": checkpoint.FORMAT, "v": 1}, tmp_path / "a.pt")

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "v": Boom()}, p)
    assert checkpoint.load(p)["v"] == 1


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        checkpoint.load(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(CheckpointError, match="not a selfsup"):
        checkpoint.load(other)
