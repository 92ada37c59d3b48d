"""Markdown rendering of the benchmark summary written by ``benchmarks/run.py``.

The section is delimited by HTML comments so that re-running the benchmark replaces it in place
and leaves the rest of ``docs/benchmarks.md`` alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

START = "<!-- selfsup-simclr-benchmark:start -->"
END = "<!-- selfsup-simclr-benchmark:end -->"
TARGETS = {"mnist": 1.5, "cifar": 1.0, "augment": 3.0}  # images/s ratio selfsup / reference


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _data_path(row: dict[str, Any]) -> str:
    if row.get("library") == "selfsup":
        return "in-memory batches, batched augmentation"
    s = row.get("setting", {})
    return f"PIL + SimCLRTransform, DataLoader num_workers={s.get('num_workers', '?')}"


def _rows_by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(r.get("name", "")).split("_", 1)[-1]: r for r in rows}


def training_table(rows: list[dict[str, Any]], knn: bool) -> list[str]:
    """One line per row: library, data path, steps, images/s, peak RSS, kNN, wall time, command."""
    head = "| library | data path | steps | images/s | peak RSS MB"
    head += " | kNN top-1 % | kNN top-5 %" if knn else ""
    lines = [head + " | train s | load | command |", "|---" * (head.count("|") + 3) + "|"]
    for r in rows:
        lib = r.get("library", r.get("name", "?"))
        if "skipped" in r:
            lines.append(f"| {lib} | skipped: {r['skipped']} |")
            continue
        if "error" in r:
            err = " ".join(str(r["error"]).split()[-30:])
            lines.append(f"| {r.get('name')} | **failed**: {err} | | | | | `{r['command']}` |")
            continue
        rss = _f(r.get("peak_rss_mb"), "{:.0f}")
        if r.get("peak_rss_worker_mb") and r.get("setting", {}).get("num_workers"):
            rss += f" (+ workers {r['peak_rss_worker_mb']:.0f} each)"
        cells = [lib, _data_path(r), str(r.get("steps", "-")), _f(r.get("images_per_s")), rss]
        if knn:
            cells += [_f(r.get("knn_top1"), "{:.2f}"), _f(r.get("knn_top5"), "{:.2f}")]
        cells += [_f(r.get("train_seconds"), "{:.0f}"), _f(r.get("load_average_1min")),
                  f"`{r['command']}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison(section: str, rows: list[dict[str, Any]], knn: bool) -> list[str]:
    """Ratio lines selfsup / lightly with the targets."""
    by = _rows_by_name(rows)
    ours = by.get("selfsup", {})
    out: list[str] = []
    if "images_per_s" not in ours:
        return out
    if knn and "knn_random_init_top1" in ours:
        out.append(f"- selfsup baselines with the same kNN: random-init encoder "
                   f"{ours['knn_random_init_top1']:.2f}%, raw pixels "
                   f"{ours['knn_raw_pixels_top1']:.2f}%.")
    for key, label in (("lightly_w2", "lightly, num_workers=2"),
                       ("lightly_w0", "lightly, num_workers=0")):
        ref = by.get(key, {})
        if not ref.get("images_per_s"):
            continue
        ratio = ours["images_per_s"] / ref["images_per_s"]
        line = f"- selfsup / {label}: images/s x{ratio:.2f}"
        if key == "lightly_w2":
            line += f" (target >= {TARGETS[section]}: {_met(ratio >= TARGETS[section])})"
        if knn and "knn_top1" in ref and "knn_top1" in ours:
            d = ours["knn_top1"] - ref["knn_top1"]
            line += f"; kNN top-1 {d:+.2f} points (target >= 0: {_met(d >= 0)})"
        out.append(line + ".")
    return out


def settings_text(rows: list[dict[str, Any]]) -> str:
    s = next((r["setting"] for r in rows if "setting" in r), None)
    if s is None:
        return ""
    o = s["optim"]
    what = f"{s['steps']} steps" if s.get("steps") else f"{s['epochs']} epochs"
    if s.get("limit"):
        what += f" on the first {s['limit']} images"
    return (f"Batch {s['batch_size']}, {what}; LARS peak lr {o['peak_lr']:g} "
            f"(0.3 x B/256), weight decay {o['weight_decay']:g}, momentum {o['momentum']:g}, "
            f"warm-up {o['warmup_epochs']:g} epochs capped at half the run, cosine to 0; "
            f"projector 2 layers {s['proj_hidden_dim']}-{s['proj_out_dim']} with BN; NT-Xent "
            f"T={s['temperature']:g}; fp32; throughput windows of {s.get('log_every', 10)} "
            "steps.")


def render(summary: dict[str, Any]) -> str:
    """The markdown section (between the markers) for a run.py summary."""
    m = summary["machine"]
    end = summary.get("machine_end", {})
    lines = [START, "## SimCLR on CPU: selfsup vs lightly", ""]
    if summary.get("quick"):
        lines += ["**Quick smoke-test settings (`--quick`): these are not benchmark numbers.**",
                  ""]
    lines += [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch "
        f"threads), Python {m['python']}, torch {m['torch']}, torchvision "
        f"{m.get('torchvision', '-')}, lightly {m.get('lightly') or 'not installed'}. "
        f"1-minute load average {m['load_average_1min']:.1f} at the start and "
        f"{end.get('load_average_1min', float('nan')):.1f} at the end (the benchmark itself "
        f"keeps about {m['torch_threads']} busy; more means other processes shared the cores).",
        "",
        "Reproduce: `make bench` (= `python benchmarks/run.py --out docs/benchmarks.md`); raw "
        "numbers in `benchmarks/results/*.json`; each row's own command is in its table.",
        "",
        "Both libraries train the same backbone module (`selfsup.nn.backbones.create_backbone`) "
        "with the same hyper-parameters and the same lr schedule function, on the same data with "
        "the same mean/std; augmentation: random resized crop scale (0.08, 1), flip 0.5, colour "
        "jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2, no blur (selfsup's `simclr` "
        "preset; lightly's `SimCLRTransform` with these values). lightly uses its "
        "`SimCLRProjectionHead`, `NTXentLoss`, `LARS` (decay groups from "
        "`get_weight_decay_parameters`) in a plain PyTorch loop as in its SimCLR example (one "
        "forward per view). images/s = training images per second in steady state (mean over "
        "fixed step windows after the first, data loading and augmentation included; window "
        "size in each table's settings). Both "
        "encoders are scored by the same weighted kNN code (`selfsup.eval`: k=200, T=0.1, "
        "cosine; memory bank = training split features, scored on the test split). Peak RSS = "
        "the training process's maximum resident set (DataLoader workers listed separately); "
        "load = the machine's 1-minute load average when the row finished (about 2 is the "
        "benchmark itself; more means other processes competed for the 2 cores).",
    ]
    load = max(m["load_average_1min"], end.get("load_average_1min", 0.0))
    if load > 1.5 * (m["cores"] or 1):
        lines += ["", f"**Caution: the machine was busy (load average up to {load:.1f} on "
                  f"{m['cores']} cores) while this ran; other processes took CPU time from the "
                  "rows unevenly, so absolute numbers are low and ratios are uncertain. Rerun "
                  "`make bench` on an idle machine for reference numbers.**"]
    rows = summary.get("rows", {})
    titles = {"mnist": "MNIST (60k train / 10k test), small CNN",
              "cifar": "CIFAR-10, ResNet-18 (CIFAR stem), training throughput"}
    for section in rows:  # "mnist", "cifar" (run.py), or extra keys such as "mnist_3_epochs"
        kind = "mnist" if section.startswith("mnist") else "cifar"
        knn = kind == "mnist"
        extra = section.split("_", 1)[-1].replace("_", " ")
        title = titles.get(section, f"{titles[kind]}, {extra}")
        lines += ["", f"### {title}", "", settings_text(rows[section]), ""]
        lines += training_table(rows[section], knn)
        lines += [""] + comparison(kind, rows[section], knn)
        lines += [f"- Note: {n}" for n in summary.get("notes", {}).get(section, [])]
    if "profile" in summary:
        lines += profile_lines(summary["profile"])
    if "augment" in summary:
        lines += augment_lines(summary["augment"])
    lines += ["", END]
    return "\n".join(lines) + "\n"


def profile_lines(p: dict[str, Any]) -> list[str]:
    import profile_split

    return ["", "### Where a MNIST training step's time goes", "",
            f"Wall-clock timers around each phase, median over {p['steps']} steps after "
            f"{p['warmup']} warm-up steps (`{p['command']}`, {p.get('date', '')}, load average "
            f"{p.get('load_average_1min', float('nan')):.1f}; one pipeline after the other). "
            "fetch = waiting for the next batch "
            "(for lightly with num_workers=0: PIL conversion + `SimCLRTransform` + collate; with "
            "workers: only the wait, the workers' CPU time competes with the step); augment = "
            "selfsup's batched two-view augmentation.", "",
            profile_split.format_split(p)]


def augment_lines(a: dict[str, Any]) -> list[str]:
    ratio = a["ratio"]
    return ["", "### Two-view SimCLR augmentation throughput (CIFAR-10, 32 px)", "",
            "| pipeline | images/s | command |", "|---|---|---|",
            f"| selfsup `MultiView` (batched, torch) | {a['ours_images_per_s']:.0f} | "
            f"`{a['command']}` |",
            f"| torchvision per-sample PIL | {a['torchvision_images_per_s']:.0f} | "
            f"`{a['command']}` |", "",
            f"- ratio x{ratio:.2f} (target >= {TARGETS['augment']}: "
            f"{_met(ratio >= TARGETS['augment'])}); {a['n']} images, {a['threads']} threads."]


def write_section(path: Path, text: str, start: str = START, end: str = END) -> None:
    """Replace the section between ``start`` and ``end`` of ``path`` (or append it / create the
    file); the default markers are the SimCLR section's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)
