"""Command line: ``selfsup pretrain | eval | report | embed | export | list | demo`` (also ``python -m selfsup``).

Every command that reports numbers takes ``--json`` and then prints exactly one JSON object on
stdout (progress and messages go to stderr). Errors caused by input print one line
``selfsup: error: ...`` and exit with status 2 (``--debug`` shows the traceback); Ctrl-C exits 130
after the trainer wrote its checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfsup.cli_args import add_pretrain_args, config_from_args
from selfsup.cli_list import add_list_args, cmd_list, emit
from selfsup.types import SelfsupError
from selfsup.utils.log import setup_logging

_emit = emit


def cmd_pretrain(args: argparse.Namespace) -> int:
    from selfsup.engine.trainer import pretrain
    from selfsup.utils import dist

    cfg = config_from_args(args)
    res = pretrain(cfg, resume=args.resume)
    if not dist.is_main():
        return 0  # under torchrun only rank 0 reports
    obj = {"run_dir": str(res.run_dir), "checkpoint": str(res.checkpoint), "step": res.step,
           "total_steps": res.total_steps, "final_loss": res.final_loss,
           "images_per_s": res.images_per_s, "peak_memory_mb": res.peak_memory_mb,
           "seconds": res.seconds}
    _emit(args, obj, f"done: {res.step} steps, loss {res.final_loss:.4f}, "
          f"{res.images_per_s:.0f} images/s; checkpoint {res.checkpoint}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from selfsup.engine.evaluate import evaluate_checkpoint
    from selfsup.eval.report import format_table

    if args.probe == "finetune":
        if args.report:
            from selfsup.types import ConfigError

            raise ConfigError("--report works with eval knn, linear and all (the report's "
                              "evaluation is the frozen-feature one)")
        return _cmd_finetune(args)
    which = ("knn", "linear") if args.probe == "all" else (args.probe,)
    r = evaluate_checkpoint(args.checkpoint, args.data, args.test_data, which=which, k=args.k,
                            temperature=args.temperature, batch_size=args.batch_size,
                            device=args.device, limit=args.limit,
                            baselines=not args.no_baselines, seed=args.seed)
    obj: dict[str, Any] = dict(r)  # selfsup.evaluate()'s schema (docs/evaluation.md)
    text = format_table(r["rows"]) + (f"\n(train {r['train_size']}, test {r['test_size']}: "
                                      f"{r['test']})")
    if args.report:
        from selfsup.engine.run_report import write_report

        rep = write_report(Path(args.checkpoint).parent, data=args.data, test_data=args.test_data,
                           limit=args.limit, seed=args.seed, device=args.device)
        obj["report"] = rep["report"]
        text += f"\nreport: {rep['report']}"
    _emit(args, obj, text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from selfsup.engine.run_report import write_report

    r = write_report(args.run, data=args.data, test_data=args.test_data, limit=args.limit,
                     evaluate=not args.no_eval, seed=args.seed, device=args.device)
    _emit(args, r, f"wrote {r['report']} ({len(r['pictures'])} pictures in "
          f"{Path(r['report']).parent / 'report'})")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from selfsup.engine.finetune import finetune_checkpoint
    from selfsup.eval.report import format_table

    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                 "crop_scale": (args.crop_min_scale, 1.0), "hflip_p": args.hflip_p,
                 "temperature": args.distill_temperature, "seed": args.seed}
    r = finetune_checkpoint(args.checkpoint, args.data, args.test_data,
                            labeled_fraction=args.labeled_fraction, head_layers=args.head_layers,
                            distill=args.distill, distill_epochs=args.distill_epochs,
                            baselines=not args.no_baselines, device=args.device,
                            limit=args.limit, seed=args.seed, recipe=args.recipe,
                            overrides=overrides)
    rows = r["rows"]
    obj: dict[str, Any] = {"probe": "finetune", **{k: v for k, v in r.items() if k != "rows"}}
    obj["top1"] = rows["pretrained"]["finetune_top1"]
    obj["top5"] = rows["pretrained"]["finetune_top5"]
    if args.distill:
        obj["distill_top1"] = rows["pretrained"]["distill_top1"]
    if "random init" in rows:
        obj["random_init_top1"] = rows["random init"]["finetune_top1"]
    obj["rows"] = rows
    text = format_table(rows) + (
        f"\n({r['labeled']} labeled of {r['train_size']} training images, {r['recipe']} recipe, "
        f"head layers {r['head_layers']}, {r['epochs']} epochs; test {r['test_size']}: "
        f"{r['test']})")
    _emit(args, obj, text)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import csv

    import numpy as np

    from selfsup.engine.evaluate import embed_rows

    f, y, names, classes = embed_rows(args.checkpoint, args.data, split=args.split,
                                      batch_size=args.batch_size, device=args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        np.savez(out, embeddings=f, labels=y, paths=np.array(names),
                 class_names=np.array(classes or []))
    else:
        np.save(out, f)
    rows = out.with_suffix(".rows.csv")  # row i of the embeddings is line i + 1 here
    with rows.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "path", "label", "class"])
        for i, (name, label) in enumerate(zip(names, y.tolist(), strict=True)):
            w.writerow([i, name, label, classes[label] if classes and label >= 0 else ""])
    _emit(args, {"out": str(out), "shape": list(f.shape), "rows": str(rows)},
          f"wrote {f.shape} embeddings to {out} (row i: line i + 1 of {rows})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from selfsup.engine.export import export_encoder

    formats = [f for group in (args.format or ["pt2"]) for f in group.split(",") if f]
    meta = export_encoder(args.checkpoint, args.out, formats=formats)
    _emit(args, meta, "wrote " + ", ".join(meta["files"].values()))
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from selfsup.engine.visualize import visualize

    res = visualize(args.checkpoint, args.out, data=args.data, num=args.num, seed=args.seed)
    _emit(args, res, f"wrote {res['out']} (rows: {', '.join(res['rows'])})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from selfsup.engine.demo import run_demo

    r = run_demo(out=args.out, steps=args.steps, epochs=args.epochs, progress=not args.json)
    _emit(args, r["json"], r["text"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("pretrain", help="pretrain an encoder with a self-supervised method")
    add_pretrain_args(sp)
    sp.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("eval", help="kNN / linear-probe / fine-tuning accuracy of a checkpoint's "
                        "encoder")
    ev.add_argument("probe", choices=["knn", "linear", "all", "finetune"],
                    help="which evaluation (all = knn + linear; finetune = fine-tune on a labeled "
                    "fraction, optionally then self-distil)")
    ev.add_argument("--checkpoint", required=True, help="a run's last.pt")
    ev.add_argument("--data", help="labeled data (default: the run's pretraining data)")
    ev.add_argument("--test-data", help="labeled test data (default: the data's test split, "
                    "else a seeded 20%% hold-out)")
    ev.add_argument("--k", type=int, default=200, help="kNN neighbours (default 200)")
    ev.add_argument("--temperature", type=float, default=0.1, help="kNN temperature (0.1)")
    ev.add_argument("--limit", type=int, help="use at most N train and N test images")
    ev.add_argument("--no-baselines", action="store_true", help="skip random-init / raw pixels")
    ev.add_argument("--seed", type=int, default=0)
    ft = ev.add_argument_group("finetune options (SimCLR appendix B.5, SimCLR v2 sec. 2.2-2.3)")
    ft.add_argument("--labeled-fraction", type=float, default=0.1,
                    help="stratified fraction of training labels used (0.1)")
    ft.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs (30)")
    ft.add_argument("--recipe", default="auto", choices=["auto", "simclr", "mae"],
                    help="simclr: Nesterov SGD, no regularisation (SimCLR B.5); mae: AdamW, "
                    "layer-wise lr decay 0.75, drop path 0.1, label smoothing 0.1, 5 warm-up "
                    "epochs (MAE A.2); auto (default): mae for masked-modeling methods")
    ft.add_argument("--lr", type=float, help="lr x batch/256 (the recipe's: simclr 0.05, mae "
                    "1e-3)")
    ft.add_argument("--head-layers", type=int,
                    help="projection-head layers kept (default: the method's, simclr_v2: 1)")
    ft.add_argument("--crop-min-scale", type=float, default=0.08,
                    help="random resized crop minimum area (0.08)")
    ft.add_argument("--hflip-p", type=float, default=0.5, help="horizontal flip probability (0.5)")
    ft.add_argument("--distill", action="store_true",
                    help="then train a random-init student on the teacher's soft labels")
    ft.add_argument("--distill-epochs", type=int, help="distillation epochs (default --epochs)")
    ft.add_argument("--distill-temperature", type=float, default=1.0,
                    help="distillation temperature (1.0)")
    ev.add_argument("--report", action="store_true",
                    help="also write the run's report.html with this evaluation's plots "
                    "(knn / linear / all)")
    _common(ev)
    ev.set_defaults(func=cmd_eval)

    rp = sub.add_parser("report", help="write a run's self-contained report.html (curves, "
                        "evaluation, embedding map, confusion matrix, retrieval grid)")
    rp.add_argument("run", help="the run folder (or its last.pt)")
    rp.add_argument("--data", help="labeled data for the evaluation (default: the run's data)")
    rp.add_argument("--test-data", help="labeled test data (default: the data's test split, "
                    "else a seeded 20%% hold-out)")
    rp.add_argument("--limit", type=int, default=2000,
                    help="at most N train and N test images in the evaluation (2000)")
    rp.add_argument("--no-eval", action="store_true", help="curves and configuration only")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    rp.add_argument("--json", action="store_true", help="print one JSON object")
    rp.set_defaults(func=cmd_report)

    em = sub.add_parser("embed", help="write embeddings of a dataset (.npy, or .npz with labels, "
                        "paths and class names) and OUT.rows.csv (row, path, label, class)")
    em.add_argument("--checkpoint", required=True, help="a run's last.pt")
    em.add_argument("--data", required=True, help="folder, array file or built-in name")
    em.add_argument("--split", default="all", help="split of a built-in/npz source (all)")
    em.add_argument("--out", required=True, help="output .npy (embeddings) or .npz (+labels)")
    _common(em)
    em.set_defaults(func=cmd_embed)

    ex = sub.add_parser("export", help="export the encoder (weights + metadata, torch.export, "
                        "ONNX, safetensors, timm/torchvision state_dict)")
    ex.add_argument("--checkpoint", required=True, help="a run's last.pt")
    ex.add_argument("--out", required=True, help="output file, e.g. enc.pt; the formats are "
                    "written beside it (enc.pt2, enc.onnx, ...) with the metadata in enc.json")
    ex.add_argument("--format", action="append", metavar="FORMAT",
                    help="pt2 (default) | onnx | safetensors | torchscript | native (a "
                    "state_dict timm / torchvision load); repeat or comma-separate for several")
    ex.add_argument("--json", action="store_true", help="print one JSON object")
    ex.set_defaults(func=cmd_export)

    vi = sub.add_parser("visualize", help="picture grid of a ViT run: masked input and "
                        "reconstruction (mae, simmim), patch-feature PCA (any ViT method)")
    vi.add_argument("--checkpoint", required=True, help="a run's last.pt")
    vi.add_argument("--out", required=True, help="output PNG, e.g. grid.png")
    vi.add_argument("--data", help="images to show (default: the run's own data)")
    vi.add_argument("--num", type=int, default=8, help="number of images (8)")
    vi.add_argument("--seed", type=int, default=0, help="seed of the masks drawn (0)")
    vi.add_argument("--json", action="store_true", help="print one JSON object")
    vi.set_defaults(func=cmd_visualize)

    ls = sub.add_parser("list", help="list registered methods (with their hyper-parameters), "
                        "backbones, presets, datasets or recipes")
    add_list_args(ls)
    ls.set_defaults(func=cmd_list)

    de = sub.add_parser("demo", help="pretrain SimCLR on scikit-learn's digits and evaluate it")
    de.add_argument("--out", default="runs/demo", help="parent folder of the demo run")
    de.add_argument("--steps", type=int, help="optimiser steps (default: the demo's epochs)")
    de.add_argument("--epochs", type=int, help="epochs (default chosen for ~2 minutes on CPU)")
    de.add_argument("--json", action="store_true", help="print one JSON object")
    de.set_defaults(func=cmd_demo)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=256, help="batch size of feature extraction and fine-tuning (256)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``selfsup`` command; returns the exit status."""
    import selfsup  # noqa: F401  (registers every built-in method, backbone, preset, dataset)

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return int(args.func(args))
    except SelfsupError as e:
        if args.debug:
            raise
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"selfsup: {e or 'interrupted'}", file=sys.stderr)
        return 130
    except (OSError, RuntimeError, ValueError) as e:
        if args.debug:
            raise
        print(f"selfsup: error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
