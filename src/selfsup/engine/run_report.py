"""``selfsup report RUN``: one self-contained ``report.html`` per run (no network, every image
embedded), with each picture also saved as a PNG in ``RUN/report/``.

Sections: the run (method, backbone, data, steps) and its resolved ``config.yaml``; curves of the
logged metrics (loss, learning rate, images/s, collapse metrics, online kNN); when labeled data
is at hand (the run's own, or ``data`` / ``test_data``), the evaluation table with the random-init
and raw-pixel rows, a t-SNE map of the test features coloured by label, the linear probe's
confusion matrix and a nearest-neighbour retrieval grid (test queries and their 5 closest
training images by cosine similarity); for ViT runs the reconstruction / patch-PCA grid of
``selfsup visualize``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.engine.evaluate import eval_data
from selfsup.engine.runs import LoadedRun, load_run, pick_device, preprocessor
from selfsup.eval import plots
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.eval.report import raw_pixel_features
from selfsup.types import CheckpointError, ConfigError, DataError

__all__ = ["write_report"]

logger = logging.getLogger("selfsup")
_TSNE_POINTS = 1000  # test points on the map (t-SNE is quadratic)
_QUERIES, _NEIGHBOURS = 6, 5


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash; the others still plot
    return [r for r in rows if "step" in r]


def _display(raw: torch.Tensor, run: LoadedRun) -> list[np.ndarray]:
    """Raw images -> ``[H, W, 3]`` arrays in [0, 1] (grey repeated; the first 3 bands)."""
    unit = run.norm.to_unit(raw)
    unit = unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit[:, :3]
    if unit.shape[1] == 2:
        unit = torch.cat([unit, unit[:, :1]], dim=1)
    return [u.permute(1, 2, 0).numpy() for u in unit]


def _evaluation(run: LoadedRun, data: Any, test_data: Any, limit: int | None, seed: int,
                device: str) -> tuple[str, dict[str, bytes], dict[str, Any]]:
    ed = eval_data(data if data is not None else run.cfg.data.path, test_data, limit=limit,
                   seed=seed)
    if ed.train.channels != run.in_chans:
        raise DataError(f"'{ed.train.source}' has {ed.train.channels} channels, the encoder "
                        f"takes {run.in_chans}")
    dev = pick_device(device)
    prep = preprocessor(run.norm, run.image_size)
    feats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, enc in (("pretrained", run.encoder), ("random init", run.random_init(seed))):
        enc.to(dev)
        feats[name] = (extract_features(enc, ed.train, prep, device=dev)[0],
                       extract_features(enc, ed.test, prep, device=dev)[0])
    feats["raw pixels"] = (raw_pixel_features(ed.train, prep), raw_pixel_features(ed.test, prep))
    ytr, yte = ed.train.labels, ed.test.labels
    k = min(200, int((ytr >= 0).sum()))
    rows: dict[str, dict[str, float]] = {}
    pretrained_lin: dict[str, Any] = {}
    for name, (ftr, fte) in feats.items():
        knn = knn_accuracy(ftr, ytr, fte, yte, k=k, temperature=0.1)
        lin = linear_probe(ftr, ytr, fte, yte, seed=seed, device=dev,
                           return_predictions=name == "pretrained")
        rows[name] = {"knn_top1": knn["top1"], "knn_top5": knn["top5"],
                      "linear_top1": lin["top1"], "linear_top5": lin["top5"]}
        if name == "pretrained":
            pretrained_lin = lin
    head = "<tr><th>encoder</th><th>kNN top-1</th><th>kNN top-5</th><th>linear top-1</th>" \
           "<th>linear top-5</th></tr>"
    body = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(
        f"<td>{r[c]:.2f}</td>" for c in ("knn_top1", "knn_top5", "linear_top1", "linear_top5"))
        + "</tr>" for n, r in rows.items())
    table = (f"<table>{head}{body}</table><p class=note>train {len(ed.train)}, test "
             f"{len(ed.test)} images ({html.escape(ed.note)}); weighted kNN k={k}, T=0.1; "
             "linear probe on frozen features, weight decay chosen on a held-out part of "
             "train</p>")
    pngs: dict[str, bytes] = {}
    names = ed.train.class_names
    ftr, fte = feats["pretrained"]
    labeled = torch.nonzero(yte >= 0).flatten()
    pick = labeled[torch.randperm(len(labeled), generator=torch.Generator().manual_seed(seed))
                   [:_TSNE_POINTS]].sort().values
    pngs["embedding"] = plots.embedding_png(_tsne(fte[pick].numpy(), seed), yte[pick].numpy(),
                                            names, f"t-SNE of {len(pick)} test embeddings "
                                            "(pretrained encoder)")
    pred, true = pretrained_lin["predictions"].numpy(), pretrained_lin["targets"].numpy()
    c = int(max(pred.max(), true.max())) + 1
    matrix = np.zeros((c, c), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    pngs["confusion"] = plots.confusion_png(matrix, names, "linear probe on the test set "
                                            f"(top-1 {pretrained_lin['top1']:.2f} %)")
    q = labeled[:_QUERIES]
    sims = F.normalize(fte[q], dim=1) @ F.normalize(ftr, dim=1).T  # [Q, N_train]
    nn_idx = sims.topk(min(_NEIGHBOURS, ftr.shape[0]), dim=1).indices
    grid, titles = [], []

    def tag(y: int) -> str:
        return names[y] if names is not None and 0 <= y < len(names) else str(y)

    for i, qi in enumerate(q.tolist()):
        imgs = _display(ed.test.get_batch(torch.tensor([qi]))[0], run) + _display(
            ed.train.get_batch(nn_idx[i])[0], run)
        grid.append(imgs)
        titles.append(f"{tag(int(yte[qi]))} | " + " ".join(tag(int(ytr[j])) for j in nn_idx[i]))
    pngs["retrieval"] = plots.image_grid_png(
        grid, titles, ["query"] + [f"#{j + 1}" for j in range(_NEIGHBOURS)],
        "nearest training images of test queries (labels: query | neighbours)")
    return table, pngs, {"rows": rows, "train_size": len(ed.train), "test_size": len(ed.test),
                         "test": ed.note, "k": k}


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
    out: np.ndarray = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return out


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>selfsup report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
td {{ text-align: right; }} td:first-child {{ text-align: left; }}
pre {{ background: #f6f6f6; padding: 1em; overflow: auto; max-height: 28em; font-size: 0.8em; }}
img {{ max-width: 100%; }} .note {{ color: #666; font-size: 0.85em; }}
</style></head><body>
<h1>selfsup report: {title}</h1>
{body}
<p class=note id=status>loading</p>
<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) {{ return !(i.complete && i.naturalWidth > 0); }});
  if (bad.length) {{ console.error("report: " + bad.length + " images failed to load"); }}
  document.getElementById("status").textContent =
    (imgs.length - bad.length) + " of " + imgs.length + " images loaded";
}});
</script>
</body></html>
"""


def write_report(run: str | Path, *, data: Any = None, test_data: Any = None,
                 limit: int | None = 2000, evaluate: bool = True, seed: int = 0,
                 device: str = "auto", backbone: torch.nn.Module | None = None
                 ) -> dict[str, Any]:
    """Write ``RUN/report.html`` and ``RUN/report/*.png``; returns what was written.

    Args:
        run: the run folder (or its ``last.pt``).
        data, test_data: labeled data for the evaluation sections (default: the run's own data
            and its test split); without labels the report says so and shows the rest.
        limit: at most this many train and test images in the evaluation (t-SNE: 1000 points).
        evaluate: False skips the evaluation sections (curves, config and pictures only).
        backbone: the module a run on your own ``nn.Module`` trained.

    Raises:
        CheckpointError: if ``run`` holds no ``last.pt`` or it cannot be read.
    """
    run_dir = Path(run)
    run_dir = run_dir.parent if run_dir.is_file() else run_dir
    ckpt = run_dir / "last.pt"
    if not ckpt.is_file():
        raise CheckpointError(f"'{run_dir}' holds no run (no last.pt); pass a run folder")
    loaded = load_run(str(ckpt), backbone=backbone)
    cfg = loaded.cfg
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, bytes] = {}
    parts = [f"<p>method <b>{html.escape(cfg.method)}</b>, backbone <b>"
             f"{html.escape(cfg.backbone.name)}</b>, data <b>{html.escape(str(cfg.data.path))}"
             f"</b> ({loaded.in_chans} channels, {loaded.image_size} px), step "
             f"{loaded.step}, recipe {html.escape(str(cfg.recipe))}</p>"]
    rows = _metrics(run_dir)
    if rows:
        pngs["curves"], keys = plots.curves_png(rows)
        parts.append(f"<h2>Training curves</h2>{_img('curves', pngs)}<p class=note>from "
                     f"metrics.jsonl ({len(rows)} records): {', '.join(keys)}</p>")
    summary: dict[str, Any] = {}
    if evaluate:
        try:
            table, more, summary = _evaluation(loaded, data, test_data, limit, seed, device)
        except (DataError, ConfigError) as e:
            parts.append(f"<h2>Evaluation</h2><p>not evaluated: {html.escape(str(e))}</p>")
        else:
            pngs.update(more)
            parts.append(f"<h2>Evaluation</h2>{table}")
            parts.append(f"<h2>Embedding map</h2>{_img('embedding', pngs)}")
            parts.append(f"<h2>Linear probe: confusion matrix</h2>{_img('confusion', pngs)}")
            parts.append(f"<h2>Nearest-neighbour retrieval</h2>{_img('retrieval', pngs)}")
    vit = loaded.encoder
    if hasattr(vit, "forward_tokens") and isinstance(getattr(vit, "patch_size", None), int):
        from selfsup.engine.visualize import visualize

        src = data if isinstance(data, str) else None
        try:
            visualize(str(ckpt), str(out_dir / "reconstructions.png"), data=src, seed=seed)
            pngs["reconstructions"] = (out_dir / "reconstructions.png").read_bytes()
            parts.append("<h2>Reconstructions and patch features</h2>"
                         f"{_img('reconstructions', pngs)}")
        except (DataError, ConfigError) as e:
            logger.info("report: no reconstruction grid (%s)", e)
    config = run_dir / "config.yaml"
    if config.is_file():
        parts.append(f"<h2>Resolved configuration</h2><pre>{html.escape(config.read_text())}"
                     "</pre>")
    for name, png in pngs.items():
        (out_dir / f"{name}.png").write_bytes(png)
    page = _PAGE.format(title=html.escape(f"{cfg.method} on {cfg.data.path}"),
                        body="\n".join(parts))
    path = run_dir / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(path)
    if summary:
        (out_dir / "eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("wrote %s (%s)", path, ", ".join(pngs) or "no pictures")
    return {"report": str(path), "pictures": [str(out_dir / f"{n}.png") for n in pngs],
            **({"eval": summary} if summary else {})}


def _img(name: str, pngs: dict[str, bytes]) -> str:
    b64 = base64.b64encode(pngs[name]).decode("ascii")
    return f'<img alt="{name}" src="data:image/png;base64,{b64}">'
