"""A toy model family in one module, proving that a model type is one module: TOY_MEAN_REGRESSOR
predicts, for each combination of the categorical features' values, the mean label of the
training rows that have it, shrunk towards the overall mean by the option SMOOTHING (the weight,
in rows, of the overall mean: 0 to 100, default 0). Numeric features are ignored; a combination
not seen in training gets the overall mean.

Importing this module registers the family (``docs/adding-a-model-type.md``); nothing else in
the project names it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic

from lakehouse_ml.bigquery.metrics import regression as regression_metrics
from lakehouse_ml.bigquery.model_types import Kind
from lakehouse_ml.engine.models import base

MODEL_TYPE = "TOY_MEAN_REGRESSOR"


class ToyOptions(base.Options):
    smoothing: float = pydantic.Field(default=0.0, ge=0.0, le=100.0)


def _keys(prep: Any, frame: Any) -> np.ndarray:
    """The label-encoded categorical features of each row (rows, categorical features)."""
    matrix = prep.tree_matrix(frame)
    columns = [j for j, f in enumerate(prep.features) if f.kind != "numeric"]
    return matrix[:, columns].astype(np.int64)


class ToyFamily(base.ModelFamily):
    kinds = {MODEL_TYPE: Kind.REGRESSOR}
    options_model = ToyOptions
    shared_options = ("input_label_cols", "data_split_method", "data_split_eval_fraction", "data_split_col")
    preprocessing = "tree"  # label-encoded categories

    def train(self, ctx: Any) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
        train_rows = ~ctx.data_split.eval_mask
        keys = _keys(ctx.prep, ctx.frame)
        y = ctx.y_all[train_rows]
        overall = float(y.mean())
        unique, inverse = np.unique(keys[train_rows], axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        counts = np.bincount(inverse, minlength=len(unique)).astype(np.float64)
        sums = np.bincount(inverse, weights=y, minlength=len(unique))
        smoothing = ctx.o["smoothing"]
        means = (sums + smoothing * overall) / (counts + smoothing)
        arrays = {"keys": unique, "means": means, "overall_mean": np.array(overall)}
        ctx.meta["training_info"] = [{"iteration": 0, "loss": float(np.mean((means[inverse] - y) ** 2))}]
        rows = ctx.data_split.eval_mask if ctx.data_split.eval_rows else train_rows
        predicted = _predict(arrays, keys[rows])
        ctx.meta["evaluation"] = regression_metrics(ctx.y_all[rows], predicted)
        ctx.meta["evaluation_rows"] = "evaluation" if ctx.data_split.eval_rows else "training"
        return arrays, {}

    def scores(self, model: Any, features: Any) -> np.ndarray:
        return _predict(model.arrays, _keys(model.prep, features))


def _predict(arrays: dict[str, np.ndarray], keys: np.ndarray) -> np.ndarray:
    lookup = {tuple(k): float(m) for k, m in zip(arrays["keys"].tolist(), arrays["means"])}
    overall = float(arrays["overall_mean"])
    return np.array([lookup.get(tuple(k), overall) for k in keys.tolist()], dtype=np.float64)


FAMILY = base.register(ToyFamily())
