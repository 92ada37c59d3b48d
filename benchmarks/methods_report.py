"""Markdown rendering of the per-method benchmark summary written by ``benchmarks/methods.py``.

The section has its own markers, so it and the SimCLR section (``report.py``) are replaced
independently in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import math
from typing import Any

START = "<!-- selfsup-methods-benchmark:start -->"
END = "<!-- selfsup-methods-benchmark:end -->"
TITLES = {"mnist": "MNIST (60k train / 10k test), small CNN",
          "cifar10": "CIFAR-10, ResNet-18 (CIFAR stem), training throughput"}
COLUMNS = ("method", "library", "steps", "images/s", "peak RSS MB", "kNN top-1 %",
           "random-init kNN %", "ratio vs lightly", "command")


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def ratio_text(ours: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """``x<images/s ratio>; kNN <difference> pts`` of a selfsup row against its lightly row."""
    if not ref or not ref.get("images_per_s") or not ours.get("images_per_s"):
        return "-"
    text = f"x{ours['images_per_s'] / ref['images_per_s']:.2f} images/s"
    if ours.get("knn_top1") is not None and ref.get("knn_top1") is not None:
        text += f"; kNN {ours['knn_top1'] - ref['knn_top1']:+.2f} pts"
    return text


def row_line(r: dict[str, Any], ref: dict[str, Any] | None) -> str:
    method, lib = r.get("method", "?"), r.get("library", "?")
    if "skipped" in r:
        return f"| {method} | {lib} | skipped: {r['skipped']} |" + " |" * (len(COLUMNS) - 3)
    if "error" in r:
        err = " ".join(str(r["error"]).split()[-25:]).replace("|", "/")
        return (f"| {method} | {lib} | **failed**: {err} |" + " |" * (len(COLUMNS) - 4)
                + f" `{r['command']}` |")
    rss = _f(r.get("peak_rss_mb"), "{:.0f}")
    if r.get("peak_rss_worker_mb") and r.get("setting", {}).get("num_workers"):
        rss += f" (+ workers {r['peak_rss_worker_mb']:.0f})"
    cells = [method, lib, str(r.get("steps", "-")), _f(r.get("images_per_s")), rss,
             _f(r.get("knn_top1"), "{:.2f}"), _f(r.get("knn_random_init_top1"), "{:.2f}"),
             ratio_text(r, ref) if lib == "selfsup" else "-", f"`{r['command']}`"]
    return "| " + " | ".join(cells) + " |"


def hyper_text(r: dict[str, Any]) -> str:
    """One line of a method's resolved hyper-parameters (shared by both libraries' rows)."""
    s = r.get("setting", {})
    o = s.get("optim", {})
    over = ", ".join(f"{k}={v}" for k, v in s.get("method_args", {}).items())
    text = (f"{o.get('name')} peak lr {o.get('peak_lr', float('nan')):g} "
            f"({o.get('base_lr')} x B/256, {o.get('lr_scaling')}), weight decay "
            f"{o.get('weight_decay')}, warm-up {o.get('warmup_epochs')} epochs (capped at half "
            f"the run), cosine to x{o.get('min_lr_ratio')}")
    if o.get("decay_norm_bias"):
        text += " (biases and norm parameters decayed too)"
    if o.get("clip_grad"):
        mode = " per parameter" if o.get("clip_mode") == "per_param" else ""
        text += f", gradient clipping {o['clip_grad']}{mode}"
    text += f"; views `{s.get('views')}`"
    if over:
        text += f"; overrides of the paper Config: {over}"
    return text


def settings_text(rows: list[dict[str, Any]]) -> str:
    s = next((r["setting"] for r in rows if "setting" in r), None)
    if s is None:
        return ""
    what = f"{s['steps']} steps" if s.get("steps") else f"{s['epochs']} epochs"
    if s.get("limit"):
        what += f" on the first {s['limit']} images"
    return (f"Batch {s['batch_size']}, {what}, seed {s.get('seed', 0)}, fp32 on the CPU; "
            f"throughput windows of {s.get('log_every', 10)} steps (the first is not counted).")


def method_table(dataset: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", f"### {TITLES.get(dataset, dataset)}", "", settings_text(rows), "",
             "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    by_method: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(str(r.get("method")), {})[str(r.get("library"))] = r
    for libs in by_method.values():
        for lib in ("selfsup", "lightly"):
            if lib in libs:
                lines.append(row_line(libs[lib], libs.get("lightly")))
    notes: list[str] = []
    for method, libs in by_method.items():
        ours = libs.get("selfsup", {})
        if "setting" in ours:
            notes.append(f"- `{method}`: {hyper_text(ours)}.")
        light = libs.get("lightly", {})
        for n in light.get("notes", []):
            notes.append(f"  - lightly differs: {n}.")
    if notes:
        lines += ["", "Hyper-parameters (both libraries) and what could not be aligned:", ""]
        lines += notes
    return lines


def lightly_versions(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The lightly version(s) of the table's lightly rows (a table built in parts may hold rows
    of several runs, some with ``--skip-lightly``), else the last run's, else "not available"."""
    found = sorted({str(r["lightly"]) for r in rows
                    if r.get("library") == "lightly" and r.get("lightly")})
    return " and ".join(found) or summary.get("lightly_version") or "not available"


def render(summary: dict[str, Any]) -> str:
    """The markdown section (between the markers) for a ``methods.py`` summary."""
    m = summary["machine"]
    end = summary.get("machine_end", {})
    lines = [START, "## Per-method benchmarks", ""]
    if summary.get("quick"):
        lines += ["**Quick smoke-test settings (`--quick`): these are not benchmark numbers.**",
                  ""]
    rows = [r for rs in summary.get("rows", {}).values() for r in rs]
    dates = sorted(str(r["date"])[:16].replace("T", " ") for r in rows if r.get("date"))
    when = f"between {dates[0]} and {dates[-1]}" if dates else str(m["date"])[:10]
    commands = summary.get("commands") or [summary.get("command", "make bench-methods")]
    loads = [m["load_average_1min"], end.get("load_average_1min", 0.0),
             *(r["load_average_1min"] for r in rows if r.get("load_average_1min") is not None)]
    lines += [
        f"Measured {when} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch "
        f"threads), Python {m['python']}, torch {m['torch']}; lightly "
        f"{lightly_versions(summary, rows)}. 1-minute load average at "
        f"the end of each row: up to {max(loads):.1f}.",
        "",
        "Reproduce (the table was built in parts; rows of a later command replace the same "
        "method's earlier rows): " + "; ".join(f"`{c}`" for c in commands if c)
        + f". Raw rows in `{summary.get('results', 'benchmarks/results/methods')}/*.json`; "
        "each row's own command is in the table.",
        "",
        "Protocol as the SimCLR section: every registered selfsup method trained through "
        "`selfsup.pretrain` with its paper defaults (registry `Config`, `default_optim`, "
        "`default_views`; head sizes scaled only where selfsup's docs give a CPU setting, "
        "listed as overrides), and lightly's implementation where it has one, built from the "
        "same resolved hyper-parameters and view preset (`benchmarks/lightly_methods.py`), "
        "same backbone module, batch, steps and lr schedule function, trained in a plain "
        "PyTorch loop on a PIL dataset in a DataLoader. Both encoders are scored by the same "
        "weighted kNN (k=200, T=0.1, train split as memory bank, test split scored). "
        "images/s = steady-state training images per second (data loading and augmentation "
        "included); peak RSS = the training process's maximum resident set (DataLoader "
        "workers in brackets). Ratio = selfsup / lightly images/s and selfsup - lightly "
        "kNN top-1.",
    ]
    load = max(loads)
    if load > 1.5 * (m["cores"] or 1):
        lines += ["", f"**Caution: the machine was busy (load average up to {load:.1f} on "
                  f"{m['cores']} cores); absolute numbers are low and ratios uncertain.**"]
    for dataset, ds_rows in summary.get("rows", {}).items():
        lines += method_table(dataset, ds_rows)
    lines += ["", END]
    return "\n".join(lines) + "\n"
