"""The command line end to end, as a user runs it (subprocesses of ``python -m selfsup``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ENV_ARGS = ["--no-progress", "--no-tensorboard"]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "selfsup", *args], capture_output=True, text=True,
                       timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def one_json(p: subprocess.CompletedProcess[str]) -> dict:
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    p = run("pretrain", "--method", "simclr", "--data", "digits", "--backbone", "small_cnn",
            "--steps", "6", "--batch-size", "64", "--image-size", "8", "--out", str(out),
            "--json", *ENV_ARGS, "--set", "backbone.kwargs.width=8")
    r = one_json(p)
    assert r["step"] == 6 and Path(r["checkpoint"]).is_file()
    return Path(r["checkpoint"])


def test_eval_knn_and_linear_json(ckpt: Path) -> None:
    r = one_json(run("eval", "knn", "--checkpoint", str(ckpt), "--data", "digits", "--json"))
    assert set(r["rows"]) == {"pretrained", "random init", "raw pixels"}
    assert 0 <= r["rows"]["pretrained"]["knn_top1"] <= 100 and r["test_size"] > 300
    assert r["knn"] == {"k": 200, "temperature": 0.1} and "linear" not in r
    assert r["probes"] == ["knn"] and "top1" not in r  # no unlabelled shortcut
    # one schema: the CLI prints what selfsup.evaluate() returns
    import selfsup

    api = selfsup.evaluate(ckpt, "digits", which=("knn",))
    assert set(api) == set(r) and api["rows"] == r["rows"]
    r = one_json(run("eval", "linear", "--checkpoint", str(ckpt), "--json", "--no-baselines"))
    assert set(r["rows"]) == {"pretrained"} and "linear_top1" in r["rows"]["pretrained"]
    assert "knn" not in r and r["linear"]["val_fraction"] == 0.2
    text = run("eval", "knn", "--checkpoint", str(ckpt)).stdout
    assert "random init" in text and "raw pixels" in text


def test_eval_finetune_json(ckpt: Path) -> None:
    r = one_json(run("eval", "finetune", "--checkpoint", str(ckpt), "--epochs", "1", "--limit",
                     "200", "--labeled-fraction", "0.2", "--distill", "--distill-epochs", "1",
                     "--hflip-p", "0", "--json"))
    assert {"top1", "top5", "random_init_top1", "distill_top1", "labeled"} <= set(r)
    assert r["head_layers"] == 0 and 0 < r["labeled"] <= 40
    p = run("eval", "finetune", "--checkpoint", str(ckpt), "--head-layers", "1", ok=False)
    assert p.returncode == 2 and "no projection head" in p.stderr


def test_embed_and_export(ckpt: Path, tmp_path: Path) -> None:
    r = one_json(run("embed", "--checkpoint", str(ckpt), "--data", "digits",
                     "--out", str(tmp_path / "e.npy"), "--json"))
    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (1797, r["shape"][1]) and np.isfinite(emb).all()
    rows = (tmp_path / "e.rows.csv").read_text().splitlines()  # row i of emb: line i + 1
    assert r["rows"] == str(tmp_path / "e.rows.csv") and len(rows) == 1798
    assert rows[0] == "row,path,label,class" and rows[1].startswith("0,digits (all)#0,0,0")
    r = one_json(run("export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "enc.pt"),
                     "--json"))
    assert r["in_chans"] == 1 and r["image_size"] == 8 and r["num_features"] == emb.shape[1]
    from selfsup.engine.export import load_encoder

    enc, meta = load_encoder(tmp_path / "enc.pt")
    ts = torch.export.load(str(tmp_path / "enc.pt2")).module()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(enc(x), ts(x), rtol=1e-4, atol=1e-5)
    raw = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert meta["normalization"](raw).shape == (3, 1, 8, 8)


def test_list_and_help() -> None:
    r = one_json(run("list", "methods", "--json"))
    assert "simclr" in [m["name"] for m in r["methods"]]
    assert "Chen" in run("list", "methods").stdout
    for what in ("backbones", "presets", "datasets"):
        assert run("list", what).stdout.strip()
    for cmd in ("pretrain", "eval", "embed", "export", "list", "demo"):
        assert "usage" in run(cmd, "--help").stdout


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--method", "simclrr", "--data", "digits"], "unknown method 'simclrr'"),
    (["pretrain", "--backbone", "resnet99", "--data", "digits"], "unknown backbone 'resnet99'"),
    (["pretrain", "--data", "/nonexistent/folder"], "/nonexistent/folder"),
    (["pretrain", "--data", "digits", "--set", "train.epoch=3"], "unknown option 'train.epoch'"),
    (["eval", "knn", "--checkpoint", "/nonexistent.pt"], "does not exist"),
])
def test_errors_are_one_clear_line(args: list[str], message: str, tmp_path: Path) -> None:
    p = run(*args, "--out", str(tmp_path / "x"), ok=False) if args[0] == "pretrain" else \
        run(*args, ok=False)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_empty_folder_and_other_method_checkpoint(tmp_path: Path, ckpt: Path) -> None:
    (tmp_path / "empty").mkdir()
    p = run("pretrain", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), ok=False)
    assert p.returncode == 2 and "empty" in p.stderr and "Traceback" not in p.stderr
    p = run("pretrain", "--method", "simclr", "--data", "digits", "--resume", "--out",
            str(ckpt.parent), "--backbone", "resnet18", ok=False)
    assert p.returncode == 2 and "backbone 'small_cnn'" in p.stderr


def test_python_api(tmp_path: Path) -> None:
    import selfsup

    m = selfsup.create_method("simclr", "small_cnn", in_chans=1, image_size=8, temperature=0.2)
    assert m.cfg.temperature == 0.2
    res = selfsup.pretrain("simclr", data="digits", backbone="small_cnn", steps=2,
                           batch_size=64, out=str(tmp_path / "api"),
                           overrides=["data.image_size=8", "train.progress=false",
                                      "train.tensorboard=false"])
    r = selfsup.evaluate(res.checkpoint, which=("knn",))
    assert set(r["rows"]) == {"pretrained", "random init", "raw pixels"}


def test_help_is_instant_and_imports_no_torch() -> None:
    """--help and `import selfsup` must not import torch, torchvision or timm (5.3 s before)."""
    code = ("import sys, time; t = time.perf_counter(); import selfsup, selfsup.cli; "
            "p = selfsup.cli.build_parser(); p.format_help(); "
            "print(time.perf_counter() - t, sorted(m for m in ('torch', 'torchvision', 'timm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=1)
    assert out[1].strip() == "[]", out
    assert float(out[0]) < 1.0
    p = subprocess.run([sys.executable, "-m", "selfsup", "list", "datasets"], capture_output=True,
                       text=True, check=True)
    assert "digits" in p.stdout


def test_public_namespace_is_all() -> None:
    import selfsup

    assert dir(selfsup) == sorted([*selfsup.__all__, "__version__"])
    assert not {"np", "Path", "Any", "replace", "torch"} & set(dir(selfsup))
    for name in selfsup.__all__:
        assert getattr(selfsup, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'np'"):
        selfsup.np  # noqa: B018
