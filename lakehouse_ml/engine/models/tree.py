"""BOOSTED_TREE_* and RANDOM_FOREST_*: the engine side of :mod:`lakehouse_ml.engine.xgb`.

The matrix handed to XGBoost is the tree preprocessing of
https://cloud.google.com/bigquery/docs/auto-preprocessing : numerical columns as they are (a
NULL becomes the training mean), categorical columns label-encoded (sorted vocabulary -> 1..K,
NULL and unseen categories -> 0). One matrix column per input column, named after it.

Options: one pydantic model per model type, ``xgb.OPTIONS_MODELS`` (built with
``options.option_model`` over the shared value checkers, as ``GlmOptions`` and
``KmeansOptions``), with the rules between them in ``xgb.check_options``; :meth:`TreeFamily.resolve_options`
resolves CREATE MODEL's options through them. They sit in :mod:`lakehouse_ml.engine.xgb`, below
this module, because XGBoost training called directly validates its options through the same
models (the engine's packages may not import each other in a cycle).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import xgboost

from lakehouse_ml.bigquery.metrics import classification as classification_metrics
from lakehouse_ml.bigquery.metrics import regression as regression_metrics
from lakehouse_ml.bigquery.model_types import Kind
from lakehouse_ml.bigquery.types import to_float
from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine import options as opt
from lakehouse_ml.engine import xgb
from lakehouse_ml.engine.models import base

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


def load(booster_json: bytes) -> xgboost.Booster:
    return xgb.load_booster(booster_json)


def probabilities(booster: xgboost.Booster, X: np.ndarray, model_type: str) -> np.ndarray:
    return xgb.predict(booster, X, model_type)


def margins(booster: xgboost.Booster, X: np.ndarray) -> np.ndarray:
    return xgb.predict_margin(booster, X)


def contributions(booster: xgboost.Booster, X: np.ndarray, approximate: bool = False) -> np.ndarray:
    return xgb.feature_contributions(booster, X, approximate=approximate)


# ML.EXPLAIN_PREDICT and ML.GLOBAL_EXPLAIN
def explain(
    model: Any, X: np.ndarray, threshold: float | None, approximate: bool, class_level: bool
) -> base.Explanation:
    """Tree SHAP (XGBoost's feature contributions), baseline the bias; classifiers explain the
    predicted class in margin (logit) space."""
    names = model.prep.feature_names
    contrib = contributions(model.booster, X, approximate)
    n = X.shape[0]
    if not model.is_classifier:
        attr = contrib[:, :-1]
        bias = contrib[:, -1]
        return base.Explanation(names, attr, bias, attr.sum(axis=1) + bias)
    probs = probabilities(model.booster, X, model.model_type)
    predicted = base.predicted_index(probs, threshold)
    probability = probs[np.arange(n), predicted]
    if contrib.ndim == 2:  # binary: margin of the positive class
        sign = np.where(predicted == 1, 1.0, -1.0)
        attr = contrib[:, :-1] * sign[:, None]
        bias = contrib[:, -1] * sign
        per_class = [-contrib[:, :-1], contrib[:, :-1]] if class_level else None
        return base.Explanation(names, attr, bias, attr.sum(axis=1) + bias, predicted, probability, per_class)
    rows = np.arange(n)
    chosen = contrib[rows, predicted]
    per_class = [contrib[:, c, :-1] for c in range(contrib.shape[1])] if class_level else None
    return base.Explanation(
        names, chosen[:, :-1], chosen[:, -1], chosen.sum(axis=1), predicted, probability, per_class
    )


# --------------------------------------------------------------------------------------------------
# The family: BOOSTED_TREE_* and RANDOM_FOREST_*
# --------------------------------------------------------------------------------------------------
class TreeFamily(base.ModelFamily):
    kinds = {
        t: (Kind.CLASSIFIER if t in xgb.CLASSIFIER_TYPES else Kind.REGRESSOR) for t in xgb.TREE_MODEL_TYPES
    }
    preprocessing = "tree"
    functions = base.BASE_FUNCTIONS | {"ML.EXPLAIN_PREDICT", "ML.GLOBAL_EXPLAIN"}

    # One pydantic options model per model type (their defaults and ranges differ between the
    # boosted tree and random forest pages): xgb.OPTIONS_MODELS, declared next to the XGBoost
    # parameters they map onto, so that direct XGBoost training validates through them too.
    options_models = xgb.OPTIONS_MODELS

    def resolve_options(self, model_type: str, given: dict[str, Any]) -> dict[str, Any]:
        """The options model of ``model_type`` and the rules between its options
        (xgb.validate), then the registry options and KMS_KEY_NAME (options.resolve_common)."""
        resolved = xgb.validate(model_type, {k: v for k, v in given.items() if k not in opt.COMMON})
        resolved.update(opt.resolve_common(given))
        resolved["model_type"] = model_type
        return resolved

    def train(self, ctx: Any) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
        meta, prep, y_all, data_split, model_type = (
            ctx.meta,
            ctx.prep,
            ctx.y_all,
            ctx.data_split,
            ctx.model_type,
        )
        weight_series = ctx.frame[ctx.weight_col] if ctx.weight_col else None
        X = prep.tree_matrix(ctx.frame)
        train_mask = ~data_split.eval_mask
        has_eval = data_split.eval_rows > 0
        label = meta["label"]
        classifier = self.is_classifier(model_type)
        n_classes = len(label["classes"]) if classifier else None
        sample_weight = None
        if weight_series is not None:
            w = to_float(weight_series, str(weight_series.name))
            if np.isnan(w).any() or (w < 0).any():
                raise BqmlError(
                    f"INSTANCE_WEIGHT_COL {weight_series.name!r} must hold non-negative, non-NULL weights."
                )
            sample_weight = w[train_mask]
        options = dict(ctx.o)
        if options.get("class_weights") is not None:
            options["class_weights"] = [[base.class_key(k), w] for k, w in options["class_weights"]]
        result = train(
            model_type,
            options,
            X[train_mask],
            y_all[train_mask],
            X[data_split.eval_mask] if has_eval else None,
            y_all[data_split.eval_mask] if has_eval else None,
            sample_weight,
            n_classes,
            prep.feature_names,
            label.get("class_names") if classifier else None,
            ctx.say,
        )
        meta["training_info"] = result.iterations
        meta["strategy"] = (
            f"xgboost {result.params.get('booster', 'gbtree')}, {result.num_boost_round} round(s) max"
        )
        booster = result.booster if result.booster is not None else load(result.booster_json)
        rows = data_split.eval_mask if has_eval else train_mask
        scores = probabilities(booster, X[rows], model_type)
        arrays: dict[str, np.ndarray] = {}
        if classifier:
            meta["evaluation"] = classification_metrics(y_all[rows], scores, 0.5)
            arrays.update(base.evaluation_arrays(y_all[rows], scores))
        else:
            meta["evaluation"] = regression_metrics(y_all[rows], scores)
        meta["evaluation_rows"] = "evaluation" if has_eval else "training"
        if ctx.o.get("enable_global_explain"):
            ctx.say("computing global explanations")
            approx = xgb.resolve_approx_global_feature_contrib(
                model_type,
                {k: v for k, v in ctx.o.items() if k not in xgb.GENERAL_OPTIONS and k != "kms_key_name"},
            )
            meta["global_explain"] = ctx.global_explain(ctx.view({}, booster), X[rows], approx)
        return arrays, {BOOSTER_FILE: result.booster_json}

    def scores(self, model: Any, features: Any) -> np.ndarray:
        return probabilities(model.booster, model.prep.tree_matrix(features), model.model_type)

    def explain_approximation(self, arguments: Mapping[str, Any]) -> bool:
        """APPROX_FEATURE_CONTRIB: XGBoost's approximate contributions instead of Tree SHAP."""
        approximate = arguments["approx_feature_contrib"]
        if not isinstance(approximate, bool):
            raise BqmlError("ML.EXPLAIN_PREDICT: APPROX_FEATURE_CONTRIB must be TRUE or FALSE.")
        return approximate

    def explain(
        self,
        model: Any,
        features: Any,
        threshold: float | None,
        approximate: bool = False,
        *,
        prepared: np.ndarray | None = None,
        class_level: bool = False,
    ) -> base.Explanation:
        X = prepared if prepared is not None else model.prep.tree_matrix(features)
        return explain(model, X, threshold, approximate, class_level)


FAMILY = base.register(TreeFamily())
