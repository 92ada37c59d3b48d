"""The pictures of a run report, as PNG bytes (matplotlib, Agg backend: no display needed).

Each function takes plain arrays and returns the encoded PNG, so the report writer
(:mod:`selfsup.engine.run_report`) embeds it in the HTML and saves it beside.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["confusion_png", "curves_png", "embedding_png", "image_grid_png"]

# metrics.jsonl keys plotted against the step, with their titles
CURVES = {
    "loss": "training loss",
    "lr": "learning rate",
    "images_per_s": "images / s",
    "std_ratio": "embedding std x sqrt(d) (1 = spread, 0 = collapsed)",
    "effective_rank": "effective rank (RankMe)",
    "monitor_knn_top1": "online kNN top-1 (%)",
}


def _figure(w: float, h: float):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(w, h), dpi=100)


def _png(fig) -> bytes:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves_png(rows: Sequence[Mapping[str, float]]) -> tuple[bytes, list[str]]:
    """One small panel per logged metric of :data:`CURVES` found in ``rows`` (metrics.jsonl
    records with a ``step``). Returns the PNG and the keys plotted (none: an empty list)."""
    keys = [k for k in CURVES if any(k in r for r in rows)]
    cols = 3
    n_rows = max(1, (len(keys) + cols - 1) // cols)
    fig = _figure(4.2 * cols, 2.8 * n_rows)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(n_rows, cols, i + 1)
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        steps, vals = zip(*pts, strict=True)
        ax.plot(steps, vals, marker="o" if len(pts) < 20 else None, lw=1.2)
        ax.set_title(CURVES[key], fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig), keys


def embedding_png(xy: np.ndarray, labels: np.ndarray, names: Sequence[str] | None,
                  title: str) -> bytes:
    """A 2-D map ``xy [N, 2]`` of the test set, one colour per label."""
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    classes = np.unique(labels)
    cmap = "tab10" if len(classes) <= 10 else "tab20"
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=cmap, s=8, alpha=0.8)
    if len(classes) <= 20:
        handles = sc.legend_elements()[0]
        tags = [names[int(c)] if names is not None and int(c) < len(names) else str(int(c))
                for c in classes]
        ax.legend(handles, tags, fontsize=7, loc="best", markerscale=0.8, ncol=2)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def confusion_png(matrix: np.ndarray, names: Sequence[str] | None, title: str) -> bytes:
    """The confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    c = matrix.shape[0]
    fig = _figure(min(1.0 + 0.45 * c, 12), min(0.8 + 0.45 * c, 11))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(matrix, cmap="Blues")
    tags = list(names) if names is not None and len(names) == c else [str(i) for i in range(c)]
    ax.set_xticks(range(c), tags, rotation=90, fontsize=7)
    ax.set_yticks(range(c), tags, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    if c <= 20:
        top = matrix.max() if matrix.size else 0
        for i in range(c):
            for j in range(c):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def image_grid_png(rows: Sequence[Sequence[np.ndarray]], row_titles: Sequence[str],
                   col_titles: Sequence[str], title: str) -> bytes:
    """A grid of ``[H, W, 3]`` images in ``[0, 1]`` (e.g. a retrieval query and its neighbours
    per row)."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = _figure(1.3 * n_cols + 0.6, 1.35 * n_rows + 0.5)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            ax = fig.add_subplot(n_rows, n_cols, i * n_cols + j + 1)
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(row_titles[i], fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
