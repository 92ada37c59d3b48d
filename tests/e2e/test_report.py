"""`selfsup report`: a self-contained page, checked in a real headless browser (chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig
from selfsup.engine.run_report import write_report
from selfsup.engine.trainer import pretrain

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# set to a file path to keep the test's screenshot (docs/report.md's picture was made this way)
SHOT_ENV = "SELFSUP_REPORT_SCREENSHOT"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = RunConfig(method="simclr", backbone=BackboneConfig(name="small_cnn", kwargs={"width": 8}),
                    data=DataConfig(path="digits", image_size=8),
                    train=TrainConfig(steps=12, batch_size=64, out=str(out), progress=False,
                                      tensorboard=False, log_every=2))
    pretrain(cfg)
    return out


def test_report_sections_and_pictures(run_dir: Path) -> None:
    r = write_report(run_dir, limit=600, device="cpu")
    page = Path(r["report"]).read_text()
    for title in ("Training curves", "Evaluation", "Embedding map", "confusion matrix",
                  "Nearest-neighbour retrieval", "Resolved configuration"):
        assert title in page, title
    # self-contained: every picture inline, nothing fetched
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert page.count("data:image/png;base64,") == 4
    names = sorted(Path(p).name for p in r["pictures"])
    assert names == ["confusion.png", "curves.png", "embedding.png", "retrieval.png"]
    for p in r["pictures"]:
        assert Image.open(p).size[0] > 200
    rows = r["eval"]["rows"]
    assert set(rows) == {"pretrained", "random init", "raw pixels"}
    # the table shows the numbers the evaluation computed
    assert f"{rows['random init']['knn_top1']:.2f}" in page
    saved = json.loads((run_dir / "report" / "eval.json").read_text())
    assert saved["rows"] == rows


def test_unlabeled_data_still_gives_a_report(run_dir: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "u.npy", x)
    r = write_report(run_dir, data=str(tmp_path / "u.npy"), device="cpu")
    page = Path(r["report"]).read_text()
    assert "not evaluated" in page and "no labels" in page and "Training curves" in page


def test_cli_report_and_eval_report(run_dir: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "selfsup", "report", str(run_dir), "--no-eval",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["report"] == str(run_dir / "report.html")
    p = subprocess.run([sys.executable, "-m", "selfsup", "eval", "knn", "--checkpoint",
                        str(run_dir / "last.pt"), "--limit", "200", "--report", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["report"].endswith("report.html")
    saved = json.loads((run_dir / "report" / "eval.json").read_text())
    assert saved["train_size"] == 200 and saved["rows"]["pretrained"]["knn_top1"] == \
        r["rows"]["pretrained"]["knn_top1"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_loads_in_a_browser_without_console_errors(run_dir: Path, tmp_path: Path) -> None:
    page = Path(write_report(run_dir, limit=600, device="cpu")["report"])
    flags = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0", "--allow-file-access-from-files"]
    shot = tmp_path / "shot.png"
    p = subprocess.run([*flags, "--window-size=1200,3200", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    console = [line for line in p.stderr.splitlines() if "CONSOLE" in line]
    assert not [c for c in console if "error" in c.lower() or "uncaught" in c.lower()], console
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert re.search(r'id="status">4 of 4 images loaded<', dom), dom[-500:]
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (3200, 1200) and img.std() > 20  # a page with pictures, not a blank one
    if os.environ.get(SHOT_ENV):
        shutil.copy(shot, os.environ[SHOT_ENV])
