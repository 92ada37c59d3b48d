"""Smoke tests of the benchmark runner (benchmarks/): tiny settings, real MNIST data.

The lightly parts run only when ``lightly`` is importable (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
MNIST = Path("/work/shared/data/mnist/mnist.npz")
sys.path.insert(0, str(BENCH))

pytestmark = pytest.mark.skipif(not MNIST.is_file(), reason="shared MNIST file not present")
needs_lightly = pytest.mark.skipif(importlib.util.find_spec("lightly") is None,
                                   reason="lightly not installed (pip install -e '.[bench]')")


def _tiny(**kw):
    import common

    base = dict(steps=2, limit=256, batch_size=32)
    base.update(kw)
    return dataclasses.replace(common.SETTINGS["mnist"], **base)


def test_schedule_matches_the_trainer():
    """3 epochs of 60k at batch 256: 234 steps/epoch, 702 steps, warm-up capped at 351."""
    import common

    s = common.SETTINGS["mnist"]
    assert s.schedule(60000) == (234, 702, 351)
    assert s.peak_lr() == pytest.approx(0.3)
    assert dataclasses.replace(s, batch_size=512).peak_lr() == pytest.approx(0.6)
    assert common.SETTINGS["cifar10"].schedule(25000) == (97, 30, 15)


def test_throughput_skips_the_first_window(monkeypatch):
    import common

    clock = iter([0.0, 1.0, 2.0, 2.5])  # start, then window ends at 1 s, 2 s, 2.5 s
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    t = common.Throughput(every=2)
    for step in range(1, 6):
        t.step(step, 10, last=step == 5)
    assert t.rates == pytest.approx([20.0, 20.0, 20.0])  # 20 images / 1 s, 20 / 1, 10 / 0.5
    clock2 = iter([0.0, 4.0, 5.0])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock2))
    t2 = common.Throughput(every=1)
    t2.step(1, 8)
    t2.step(2, 8)
    assert t2.rates == pytest.approx([2.0, 8.0]) and t2.steady == pytest.approx(8.0)


def test_selfsup_row_and_same_knn_code(tmp_path):
    """The selfsup row trains through the public API, and the shared kNN function used for the
    lightly encoder gives exactly selfsup.evaluate's number on the same checkpoint."""
    import common
    import selfsup_simclr

    from selfsup.engine.runs import load_run

    s = _tiny()
    row = selfsup_simclr.run(s, out=str(tmp_path / "run"), eval_limit=300)
    assert row["library"] == "selfsup" and row["steps"] == 2
    assert row["images_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert 0 <= row["knn_top1"] <= 100 and row["knn_test"] == 300
    loaded = load_run(str(tmp_path / "run" / "last.pt"))
    again = common.knn_eval(loaded.encoder, s, loaded.norm, loaded.image_size, eval_limit=300)
    assert again["knn_top1"] == pytest.approx(row["knn_top1"])


@needs_lightly
def test_lightly_row():
    import lightly_simclr

    row = lightly_simclr.run(_tiny(num_workers=0), eval_limit=200)
    assert row["library"] == "lightly" and row["steps"] == 2
    assert row["images_per_s"] > 0 and 0 <= row["knn_top1"] <= 100
    assert row["final_loss"] == row["final_loss"]  # finite, not NaN


def test_runner_writes_markdown_and_json(tmp_path):
    """run.py --quick end to end on MNIST (selfsup only, no profile): JSON rows and a markdown
    section that a second run replaces in place, keeping the rest of the file."""
    import run

    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\nkept text\n")
    args = ["--quick", "--only", "mnist", "--skip-lightly", "--profile-steps", "0",
            "--out", str(out), "--results", str(tmp_path / "results")]
    assert run.main(args) == 0
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    (row,) = summary["rows"]["mnist"]
    assert row["library"] == "selfsup" and row["images_per_s"] > 0
    assert row["command"].startswith("python benchmarks/selfsup_simclr.py --dataset mnist")
    text = out.read_text()
    assert "kept text" in text and text.count("selfsup-simclr-benchmark:start") == 1
    assert f"{row['images_per_s']:.1f}" in text and "cores" in text
    import report

    report.write_section(out, report.render(summary))
    assert out.read_text().count("selfsup-simclr-benchmark:start") == 1
    assert "kept text" in out.read_text()


def test_report_ratios_and_targets():
    """The comparison lines compute selfsup / lightly and judge the targets."""
    import report

    rows = [
        {"name": "mnist_selfsup", "library": "selfsup", "images_per_s": 300.0, "knn_top1": 90.0},
        {"name": "mnist_lightly_w2", "library": "lightly", "images_per_s": 250.0,
         "knn_top1": 91.5},
        {"name": "mnist_lightly_w0", "library": "lightly", "images_per_s": 100.0},
    ]
    lines = report.comparison("mnist", rows, knn=True)
    assert "x1.20" in lines[0] and "target >= 1.5: **not met**" in lines[0]
    assert "-1.50 points" in lines[0]
    assert "x3.00" in lines[1]


# ----------------------------------------------------------------------------- per-method rows


def _tiny_method(method: str, **kw):
    import method_common

    s = _tiny(**kw)
    fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    return method_common.MethodSetting(**fields, method=method,
                                       method_args=method_common.method_args_for(method))


def test_method_setting_reads_the_registry():
    """Methods come from the registry; optimiser and views are each method's paper defaults,
    head sizes scaled only by the documented CPU overrides."""
    import method_common

    from selfsup import list_methods

    names = method_common.method_names()
    assert {"simclr", "byol", "dino"} <= set(names)
    assert names == list_methods()
    byol = _tiny_method("byol")
    assert byol.optim().name == "lars" and byol.peak_lr() == pytest.approx(0.2 * 32 / 256)
    assert byol.config().proj_hidden_dim == 512 and byol.views_name == "byol"
    assert _tiny_method("simsiam").optim().name == "sgd"
    paper = method_common.method_args_for("dino", paper_heads=True, sets=["teacher_temp=0.07"])
    assert paper == {"teacher_temp": 0.07}
    d = _tiny_method("dino").to_dict()
    assert d["method_config"]["out_dim"] == 4096 and "temperature" not in d


def test_selfsup_method_row(tmp_path):
    """A non-SimCLR method trains through the public API and is kNN-scored."""
    import selfsup_method

    row = selfsup_method.run(_tiny_method("byol", steps=1), eval_limit=200)
    assert row["library"] == "selfsup" and row["method"] == "byol" and row["steps"] == 1
    assert row["images_per_s"] > 0 and 0 <= row["knn_top1"] <= 100
    assert row["setting"]["method_config"]["proj_hidden_dim"] == 512


def test_methods_driver_and_report(tmp_path):
    """methods.py --quick (selfsup only): JSON rows and its own markdown section, which leaves
    the SimCLR section and other text alone; an unknown method name is refused."""
    import methods
    import methods_report

    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\n<!-- selfsup-simclr-benchmark:start -->\nold\n"
                   "<!-- selfsup-simclr-benchmark:end -->\n\nkept text\n")
    args = ["--quick", "--skip-lightly", "--methods", "simsiam", "--datasets", "mnist",
            "--out", str(out), "--results", str(tmp_path / "res")]
    assert methods.main(args) == 0
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    (row,) = summary["rows"]["mnist"]
    assert row["method"] == "simsiam" and row["images_per_s"] > 0
    assert row["command"].startswith("python benchmarks/selfsup_method.py --method simsiam")
    text = out.read_text()
    assert "kept text" in text and "\nold\n" in text
    assert text.count(methods_report.START) == 1 and "## Per-method benchmarks" in text
    assert methods.main(["--methods", "no_such_method", "--out", str(out)]) == 2


def test_methods_summary_merges_partial_runs(tmp_path):
    """A later run replaces only the methods it measures; --fresh, a --quick mismatch or an
    unreadable file start from nothing."""
    import methods

    old = [{"method": "byol", "library": "selfsup", "images_per_s": 1.0},
           {"method": "byol", "library": "lightly", "images_per_s": 2.0},
           {"method": "dino", "library": "selfsup", "images_per_s": 3.0}]
    new = [{"method": "dino", "library": "selfsup", "images_per_s": 4.0}]
    merged = methods.merge_rows(old, new)
    assert [(r["method"], r["images_per_s"]) for r in merged] == \
        [("byol", 1.0), ("byol", 2.0), ("dino", 4.0)]
    path = tmp_path / "summary.json"
    assert methods.previous_summary(path, quick=False, fresh=False) is None
    path.write_text(json.dumps({"quick": False, "rows": {"mnist": old}}))
    assert methods.previous_summary(path, quick=False, fresh=False)["rows"]["mnist"] == old
    assert methods.previous_summary(path, quick=True, fresh=False) is None
    assert methods.previous_summary(path, quick=False, fresh=True) is None
    path.write_text("{not json")
    assert methods.previous_summary(path, quick=False, fresh=False) is None


def test_methods_report_names_lightly_version_of_its_rows():
    """A later --skip-lightly run must not make the header say lightly was not available."""
    import methods_report

    rows = [{"library": "selfsup"}, {"library": "lightly", "lightly": "1.6.0"}]
    assert methods_report.lightly_versions({"lightly_version": None}, rows) == "1.6.0"
    assert methods_report.lightly_versions({"lightly_version": None}, rows[:1]) == \
        "not available"
    assert methods_report.lightly_versions({"lightly_version": "1.5.0"}, rows[:1]) == "1.5.0"


def test_methods_report_ratio():
    import methods_report

    ours = {"images_per_s": 300.0, "knn_top1": 90.0}
    assert methods_report.ratio_text(ours, {"images_per_s": 200.0, "knn_top1": 91.0}) == \
        "x1.50 images/s; kNN -1.00 pts"
    assert methods_report.ratio_text(ours, None) == "-"


@needs_lightly
@pytest.mark.parametrize("method", ["byol", "dino", "swav"])
def test_lightly_method_rows(method):
    import lightly_methods

    row = lightly_methods.run(_tiny_method(method, num_workers=0, steps=1), eval_limit=200)
    assert row["library"] == "lightly" and row["steps"] == 1
    assert row["final_loss"] == row["final_loss"] and 0 <= row["knn_top1"] <= 100
