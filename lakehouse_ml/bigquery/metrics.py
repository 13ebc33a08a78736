"""``ML.EVALUATE`` metric definitions.

Source: "The ML.EVALUATE function", section Output,
https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-evaluate

* Regression (linear regression, boosted tree / random forest regressor): ``mean_absolute_error``,
  ``mean_squared_error``, ``mean_squared_log_error``, ``median_absolute_error``, ``r2_score``,
  ``explained_variance``.
* Classification (logistic regression, boosted tree / random forest classifier): ``precision``,
  ``recall``, ``accuracy``, ``f1_score``, ``log_loss``, ``roc_auc``. "For models that return
  them, the precision, recall, f1_score, log_loss, and roc_auc metrics are macro-averaged for all
  of the class labels" (computed per label, one-vs-rest, then an unweighted average); "accuracy
  is computed as a global total or micro-average". Binary models report the positive class (the
  higher label) at ``THRESHOLD`` (default 0.5; "predictions above the threshold are positive"):
  "A 0 value for precision or recall means that the selected threshold produced no true positive
  labels. A NaN value for precision means that the selected threshold produced no positive
  labels".
* K-means: ``davies_bouldin_index`` and ``mean_squared_distance`` ("the average of the distances
  between training data points to their closest centroid", squared).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

EVALUATE_DOC = "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-evaluate"

REGRESSION_COLUMNS = (
    "mean_absolute_error",
    "mean_squared_error",
    "mean_squared_log_error",
    "median_absolute_error",
    "r2_score",
    "explained_variance",
)
CLASSIFICATION_COLUMNS = ("precision", "recall", "accuracy", "f1_score", "log_loss", "roc_auc")
KMEANS_COLUMNS = ("davies_bouldin_index", "mean_squared_distance")

_EPS = 1e-15


def regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    err = y - pred
    var_y = float(np.var(y))
    if (y <= -1).any() or (pred <= -1).any():
        msle = float("nan")  # log(1 + x) is undefined
    else:
        msle = float(np.mean((np.log1p(y) - np.log1p(pred)) ** 2))
    return {
        "mean_absolute_error": float(np.mean(np.abs(err))),
        "mean_squared_error": float(np.mean(err**2)),
        "mean_squared_log_error": msle,
        "median_absolute_error": float(np.median(np.abs(err))),
        "r2_score": float(1.0 - np.mean(err**2) / var_y) if var_y > 0 else float("nan"),
        "explained_variance": float(1.0 - np.var(err) / var_y) if var_y > 0 else float("nan"),
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _prf(actual: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    tp = float(np.sum(actual & predicted))
    precision = _ratio(tp, float(predicted.sum()))
    recall = _ratio(tp, float(actual.sum()))
    if np.isnan(precision) or np.isnan(recall):
        f1 = float("nan")
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def _binary_log_loss(actual: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(np.where(actual, np.log(p), np.log1p(-p))))


def _auc(actual: np.ndarray, score: np.ndarray) -> float:
    if actual.all() or not actual.any():
        return float("nan")
    return float(roc_auc_score(actual, score))


def classification(y: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """``y``: class index of each row (-1 for a label the model never saw); ``probs``: (n, C)."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    if n_classes == 2:
        actual = y == 1
        predicted = probs[:, 1] > threshold
        precision, recall, f1 = _prf(actual, predicted)
        return {
            "precision": precision,
            "recall": recall,
            "accuracy": float(np.mean(predicted.astype(np.int64) == y)) if len(y) else float("nan"),
            "f1_score": f1,
            "log_loss": _binary_log_loss(actual, probs[:, 1]),
            "roc_auc": _auc(actual, probs[:, 1]),
        }
    predicted = np.argmax(probs, axis=1)
    per_class = []
    for c in range(n_classes):
        actual_c = y == c
        per_class.append(
            (
                *_prf(actual_c, predicted == c),
                _binary_log_loss(actual_c, probs[:, c]),
                _auc(actual_c, probs[:, c]),
            )
        )
    table = np.array(per_class, dtype=np.float64)
    with np.errstate(all="ignore"):
        macro = [
            float(np.nanmean(table[:, i])) if np.isfinite(table[:, i]).any() else float("nan")
            for i in range(5)
        ]
    return {
        "precision": macro[0],
        "recall": macro[1],
        "accuracy": float(np.mean(predicted == y)) if len(y) else float("nan"),
        "f1_score": macro[2],
        "log_loss": macro[3],
        "roc_auc": macro[4],
    }


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Weighted-free cross-entropy log loss (ML.TRAINING_INFO's loss for classifiers)."""
    p = np.clip(probs[np.arange(len(y)), y], _EPS, 1.0)
    return float(-np.mean(np.log(p)))
