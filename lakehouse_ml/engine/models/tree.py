"""BOOSTED_TREE_* and RANDOM_FOREST_*: the engine side of :mod:`lakehouse_ml.engine.xgb`.

The matrix handed to XGBoost is the tree preprocessing of
https://cloud.google.com/bigquery/docs/auto-preprocessing : numerical columns as they are (a
NULL becomes the training mean), categorical columns label-encoded (sorted vocabulary -> 1..K,
NULL and unseen categories -> 0). One matrix column per input column, named after it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine import xgb

BOOSTER_FILE = "booster.json"


def train(
    model_type: str,
    options: dict,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_eval: np.ndarray | None,
    y_eval: np.ndarray | None,
    sample_weight: np.ndarray | None,
    n_classes: int | None,
    feature_names: list[str],
    class_labels: list[str] | None,
    progress: Callable[[str], None] | None,
) -> xgb.TreeTrainingResult:
    tree_options = {k: v for k, v in options.items() if k not in xgb.GENERAL_OPTIONS and k != "kms_key_name"}
    try:
        return xgb.train(
            model_type,
            tree_options,
            X_train,
            y_train,
            X_eval if X_eval is not None and len(X_eval) else None,
            y_eval if X_eval is not None and len(X_eval) else None,
            sample_weight,
            n_classes,
            [_safe(n) for n in feature_names],
            progress,
            class_labels=class_labels,
        )
    except ValueError as exc:
        raise BqmlError(f"{model_type}: {exc}.") from None


def _safe(name: str) -> str:
    # XGBoost feature names may not contain '[', ']', '<' or ','; BigQuery column names never do.
    return name


def load(booster_json: bytes) -> Any:
    return xgb.load_booster(booster_json)


def probabilities(booster: Any, X: np.ndarray, model_type: str) -> np.ndarray:
    return xgb.predict(booster, X, model_type)


def margins(booster: Any, X: np.ndarray) -> np.ndarray:
    return xgb.predict_margin(booster, X)


def contributions(booster: Any, X: np.ndarray, approximate: bool = False) -> np.ndarray:
    return xgb.feature_contributions(booster, X, approximate=approximate)
