"""CMC through the command line: its evaluated encoder is the concatenation of one encoder per
channel group (not the bare backbone), so ``eval``, ``embed`` and ``export`` must rebuild it from
the checkpoint's method options. Uses a tiny RGB slice of the shared CIFAR-10 file (skipped if it
is absent) or, failing that, random RGB images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

CIFAR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cifar10" / "cifar10.npz"
ARGS = ["--no-progress", "--no-tensorboard"]


def _run(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "selfsup", *args, "--json"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads([ln for ln in p.stdout.splitlines() if ln.strip()][-1])


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rgb") / "rgb.npz"
    rng = np.random.default_rng(0)
    if CIFAR.is_file():
        with np.load(CIFAR) as d:
            x, y = d["x_train"][:96], d["y_train"][:96]
    else:
        x = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, 96)
    np.savez(path, x=x, y=y)
    return path


def test_cmc_pretrain_eval_embed_export(rgb: Path, tmp_path: Path) -> None:
    r = _run("pretrain", "--method", "cmc", "--data", str(rgb), "--backbone", "small_cnn",
             "--steps", "2", "--batch-size", "16", "--image-size", "8", "--out",
             str(tmp_path / "run"), *ARGS, "--set", "backbone.kwargs.width=4")
    ckpt = r["checkpoint"]
    ev = _run("eval", "knn", "--checkpoint", ckpt, "--data", str(rgb), "--test-data", str(rgb))
    assert "pretrained" in json.dumps(ev)
    emb_path = tmp_path / "e.npy"
    _run("embed", "--checkpoint", ckpt, "--data", str(rgb), "--out", str(emb_path))
    emb = np.load(emb_path)
    assert emb.shape == (96, 2 * 32) and np.isfinite(emb).all()  # L and ab encoders, concatenated
    meta = _run("export", "--checkpoint", ckpt, "--out", str(tmp_path / "enc.pt"))
    assert meta["num_features"] == 64 and meta["in_chans"] == 3
    from selfsup.engine.export import load_encoder
    from selfsup.engine.runs import load_run

    enc, _ = load_encoder(tmp_path / "enc.pt")
    run = load_run(ckpt)
    ts = torch.export.load(str(tmp_path / "enc.pt2")).module()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), run.encoder(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(enc(x), ts(x), rtol=1e-4, atol=1e-5)
        assert run.random_init()(x).shape == (3, 64)
