"""L2 evaluation of frozen encoders: feature extraction, weighted kNN, linear probe, collapse
metrics, the raw-pixel baseline and results tables. Takes an encoder (``[B, C, H, W] -> [B, D]``),
never a ``Method``."""

from selfsup.eval.collapse import (
    alignment,
    collapse_report,
    effective_rank,
    embedding_std,
    uniformity,
)
from selfsup.eval.features import BatchSource, Preprocess, extract_features
from selfsup.eval.knn import (
    OnlineKNN,
    infer_num_classes,
    knn_accuracy,
    knn_predict,
    topk_accuracy,
)
from selfsup.eval.linear import linear_probe, stratified_split, train_linear
from selfsup.eval.report import (
    PixelEncoder,
    evaluate_encoder,
    evaluate_features,
    format_table,
    raw_pixel_features,
)

__all__ = [
    "BatchSource",
    "OnlineKNN",
    "PixelEncoder",
    "Preprocess",
    "alignment",
    "collapse_report",
    "effective_rank",
    "embedding_std",
    "evaluate_encoder",
    "evaluate_features",
    "extract_features",
    "format_table",
    "infer_num_classes",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "raw_pixel_features",
    "stratified_split",
    "topk_accuracy",
    "train_linear",
    "uniformity",
]
