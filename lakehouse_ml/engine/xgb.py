"""The XGBoost layer of the local BigQuery ML engine: BigQuery ML's tree models.

BigQuery ML trains ``BOOSTED_TREE_CLASSIFIER`` / ``BOOSTED_TREE_REGRESSOR`` and
``RANDOM_FOREST_CLASSIFIER`` / ``RANDOM_FOREST_REGRESSOR`` with the XGBoost library. This module
maps their ``CREATE MODEL`` options onto XGBoost parameters, trains with BigQuery ML's
``EARLY_STOP`` / ``MIN_REL_PROGRESS`` semantics and class weights, and applies trained models
(predictions, SHAP feature contributions, ``ML.FEATURE_IMPORTANCE``).

It is a pure-function layer: it knows nothing about SQL, DataFrames or artifacts on disk.

Inputs
------
* ``X``: an already preprocessed 2-D numeric matrix (converted to ``float64``), one column per
  model feature, in a fixed order. ``NaN`` means *missing*: XGBoost sends it down the default
  branch learned for that split. BigQuery ML's automatic preprocessing for tree models is the
  engine's job (numerical ``NULL`` -> the training mean, no standardization; ``STRING``/``BOOL``
  -> label encoding, i.e. an integer code per category passed as a plain number; a ``NULL``
  category -> its own code). A category unseen in training has no code: pass it as ``NaN``.
* ``y``: regression targets as floats; for classifiers, class *indices* ``0 .. n_classes-1``
  (the engine keeps the mapping index -> label value, e.g. sorted label values).
* ``options``: the ``OPTIONS(...)`` values with lower-case keys and Python values, as the tree
  family resolved them, or as given: either way they go through the model type's options model
  (:data:`OPTIONS_MODELS`, :func:`validate`; validated options come back unchanged). Options not
  given take the documented default (:data:`OPTION_DEFAULTS`).

Outputs
-------
* :class:`TreeTrainingResult`: the model as XGBoost's own JSON model format (no pickle), one row
  per boosting round for ``ML.TRAINING_INFO`` and the final iteration.
* :func:`predict`: regression values, or class probabilities ``(n, n_classes)`` (binary models
  give two columns ``[p0, p1]``).
* :func:`feature_contributions`: SHAP values (``pred_contribs``), the last column is the bias.
* :func:`global_importance`: ``ML.FEATURE_IMPORTANCE``'s three columns for every feature.

Determinism: the seed is fixed (:data:`SEED`) and XGBoost's CPU algorithms are deterministic, so
the same inputs and options give byte-identical models, whatever ``nthread`` is (the tests check
both). Small inputs (under :data:`SMALL_DATA_CELLS` matrix cells) run single-threaded; larger ones
use every CPU this process may use.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import xgboost

from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine import options as opt

__all__ = [
    "TREE_MODEL_TYPES",
    "CLASSIFIER_TYPES",
    "REGRESSOR_TYPES",
    "OPTION_DEFAULTS",
    "OPTION_SOURCES",
    "OPTIONS_MODELS",
    "BOOSTED_TREE_DOC",
    "RANDOM_FOREST_DOC",
    "FEATURE_IMPORTANCE_DOC",
    "TRAINING_INFO_DOC",
    "SEED",
    "TreeTrainingResult",
    "xgboost_params",
    "validate",
    "check_options",
    "resolved_options",
    "resolve_approx_global_feature_contrib",
    "class_sample_weights",
    "train",
    "load_booster",
    "predict",
    "predict_margin",
    "feature_contributions",
    "global_importance",
    "default_nthread",
]

TREE_MODEL_TYPES = (
    "BOOSTED_TREE_CLASSIFIER",
    "BOOSTED_TREE_REGRESSOR",
    "RANDOM_FOREST_CLASSIFIER",
    "RANDOM_FOREST_REGRESSOR",
)
CLASSIFIER_TYPES = ("BOOSTED_TREE_CLASSIFIER", "RANDOM_FOREST_CLASSIFIER")
REGRESSOR_TYPES = ("BOOSTED_TREE_REGRESSOR", "RANDOM_FOREST_REGRESSOR")
RANDOM_FOREST_TYPES = ("RANDOM_FOREST_CLASSIFIER", "RANDOM_FOREST_REGRESSOR")

#: The fixed XGBoost seed (row / column subsampling, DART dropout). BigQuery ML has no seed option.
SEED = 0

# --------------------------------------------------------------------------------------------------
# The options, as pydantic models (one per model type).
#
# Every default and range below is read off the BigQuery ML reference pages (the "Arguments"
# paragraph of each option):
#   BOOSTED_TREE_DOC   The CREATE MODEL statement for boosted trees models using XGBoost
#   RANDOM_FOREST_DOC  The CREATE MODEL statement for random forest models
# An option missing from a page's syntax block is not an option of that model type (random
# forests have no LEARN_RATE, MAX_ITERATIONS, BOOSTER_TYPE, DART_NORMALIZE_TYPE, DROPOUT or
# CATEGORY_ENCODING_METHOD: they train one round of NUM_PARALLEL_TREE trees). The models are
# built with lakehouse_ml/engine/options.py's option_model over its value checkers, as the GLM
# and k-means options are; the tree family (lakehouse_ml/engine/models/tree.py) resolves CREATE
# MODEL's options through them, and so does this module for direct calls.
# --------------------------------------------------------------------------------------------------
BOOSTED_TREE_DOC = (
    "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-boosted-tree"
)
RANDOM_FOREST_DOC = (
    "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-random-forest"
)
FEATURE_IMPORTANCE_DOC = (
    "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-importance"
)
TRAINING_INFO_DOC = "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-train"

_ENCODINGS = ("ONE_HOT_ENCODING", "TARGET_ENCODING", "LABEL_ENCODING")
_FRACTION = opt.number(0.0, 1.0, low_open=True)  # (0, 1]


def _option_table(model_type: str) -> dict[str, tuple[Any, opt.Checker]]:
    """option -> (default, checker) for ``model_type``, in the pages' order. BT: the boosted tree
    page, RF: the random forest page."""
    forest = model_type in RANDOM_FOREST_TYPES
    classifier = model_type in CLASSIFIER_TYPES
    boosted_only: dict[str, tuple[Any, opt.Checker]] = {
        # BT: 'GBTREE … This is the default.'
        "booster_type": ("GBTREE", opt.enum("GBTREE", "DART")),
        # BT: 'TREE … This is the default value.'
        "dart_normalize_type": ("TREE", opt.enum("TREE", "FOREST")),
        # BT: 'The default value is 0.' (DART only)
        "dropout": (0.0, opt.number(0.0, 1.0)),
    }
    table: dict[str, tuple[Any, opt.Checker]] = {
        **({} if forest else boosted_only),
        # BT: 'The default value is 1.'; RF: '>= 2. The default value is 100.'
        "num_parallel_tree": (100, opt.integer(2)) if forest else (1, opt.integer(1)),
        # BT: 'The default value is 6.'; RF: '>= 1. The default value is 15.'
        "max_tree_depth": (15 if forest else 6, opt.integer(1)),
        # both: 'AUTO … This is the default.' (AUTO = HIST)
        "tree_method": ("AUTO", opt.enum("AUTO", "EXACT", "APPROX", "HIST")),
        # both: '>= 0. The default value is 1.'
        "min_tree_child_weight": (1, opt.integer(0)),
        # both: 'The default value is 0.'
        "min_split_loss": (0.0, opt.number(0.0)),
        "l1_reg": (0.0, opt.number(0.0)),
        # both: 'The default value is 1.0.'
        "l2_reg": (1.0, opt.number(0.0)),
        # BT: 'The default value is 0.3.'; RF: learning rate is 1 (one round)
        **({} if forest else {"learn_rate": (0.3, opt.number(0.0, low_open=True))}),
        # BT: 'between 0 and 1.0 … The default value is 1.0'; RF: '> 0 and < 1.0. The default value is 0.8.'
        "subsample": (0.8, opt.number(0.0, 1.0, low_open=True, high_open=True))
        if forest
        else (1.0, _FRACTION),
        # both: 'The default value is 1.0.'
        "colsample_bytree": (1.0, _FRACTION),
        "colsample_bylevel": (1.0, _FRACTION),
        # BT: 'The default value is 1.0.'; RF: 'The default value is 0.8.'
        "colsample_bynode": (0.8 if forest else 1.0, _FRACTION),
        # BT: 'The default value is 20.' (maximum boosting rounds)
        **({} if forest else {"max_iterations": (20, opt.integer(1))}),
        # both: 'The default value is TRUE.', 'The default value is 0.01.'
        "early_stop": (True, opt.boolean),
        "min_rel_progress": (0.01, opt.number(0.0)),
        # both, classifiers only: 'The default value is FALSE.'; CLASS_WEIGHTS: no default (unweighted)
        **({k: opt.SHARED[k] for k in ("auto_class_weights", "class_weights")} if classifier else {}),
        # both: no default (the engine passes the weights as sample_weight)
        "instance_weight_col": (None, opt.string),
        # both: 'The default value is FALSE.'
        "enable_global_explain": opt.SHARED["enable_global_explain"],
        # derived: TRUE when ENABLE_GLOBAL_EXPLAIN and NUM_PARALLEL_TREE >= 10 (BT) / >= 50 (RF), else
        # FALSE; see resolve_approx_global_feature_contrib()
        "approx_global_feature_contrib": (None, opt.boolean),
        # BT: 'LABEL_ENCODING. This is the default.' (the only one available locally: check_options)
        **({} if forest else {"category_encoding_method": ("LABEL_ENCODING", opt.enum(*_ENCODINGS))}),
        # both: "'0.9'. This is the default." (recorded only: XGBoost 3.x trains)
        "xgboost_version": ("0.9", opt.enum("0.9", "1.1")),
        # both: 'Defaults to label.', 'AUTO_SPLIT: This is the default value.', 'The default is 0.2.'
        **{k: opt.SHARED[k] for k in ("input_label_cols", "data_split_method", "data_split_eval_fraction")},
        # both: 'The default is 0.' (only with hyperparameter tuning: refused otherwise, check_options)
        "data_split_test_fraction": (0.0, opt.number(0.0, 1.0)),
        "data_split_col": opt.SHARED["data_split_col"],
        # hyperparameter tuning (NUM_TRIALS refused, check_options): NUM_TRIALS no default,
        # MAX_PARALLEL_TRIALS 'The default value is 1.', 'VIZIER_DEFAULT … This is the default',
        # HPARAM_TUNING_OBJECTIVES: classifier default ROC_AUC, regressor default R2_SCORE
        **{k: opt.TUNING[k] for k in ("num_trials", "max_parallel_trials", "hparam_tuning_algorithm")},
        "hparam_tuning_objectives": (["ROC_AUC"] if classifier else ["R2_SCORE"], opt.anything),
        # both: no default
        "kms_key_name": opt.COMMON["kms_key_name"],
    }
    return table


def _model_name(model_type: str) -> str:
    return "".join(word.capitalize() for word in model_type.split("_")) + "Options"


#: model_type -> its options model (``BoostedTreeClassifierOptions``, …): BigQuery ML's option
#: names in lower case, their defaults and their checkers.
OPTIONS_MODELS: dict[str, type[opt.Options]] = {
    t: opt.option_model(_model_name(t), _option_table(t)) for t in TREE_MODEL_TYPES
}

#: model_type -> {lower-case option name: BigQuery ML default}: the defaults of OPTIONS_MODELS.
#: ``None`` means "no default" (option unset) or, for ``approx_global_feature_contrib``,
#: "derived" (see resolve_approx_global_feature_contrib).
OPTION_DEFAULTS: dict[str, dict[str, object]] = {
    t: {name: copy.deepcopy(field.default) for name, field in model.model_fields.items()}
    for t, model in OPTIONS_MODELS.items()
}
#: model_type -> {option: URL of the reference page (and anchor) the default was read from}.
OPTION_SOURCES: dict[str, dict[str, str]] = {
    t: {
        name: f"{RANDOM_FOREST_DOC if t in RANDOM_FOREST_TYPES else BOOSTED_TREE_DOC}#{name}"
        for name in defaults
    }
    for t, defaults in OPTION_DEFAULTS.items()
}

#: Options every model type accepts and this module ignores: the registry options, which the
#: engine applies (docs/architecture.md, "registry").
GENERAL_OPTIONS = frozenset(
    {"model_type", "model_registry", "vertex_ai_model_id", "vertex_ai_model_version_aliases"}
)

# BigQuery ML's TREE_METHOD -> XGBoost's tree_method. The pages say: "AUTO: Faster histogram
# optimized approximate greedy algorithm. This is the default." and "HIST: Same as the AUTO tree
# method." So AUTO is XGBoost's "hist" (also the fast choice for large data).
_TREE_METHODS = {"AUTO": "hist", "HIST": "hist", "APPROX": "approx", "EXACT": "exact"}


# --------------------------------------------------------------------------------------------------
# Options -> XGBoost parameters
# --------------------------------------------------------------------------------------------------
def default_nthread() -> int:
    """The number of CPUs this process may use (XGBoost's ``nthread`` unless given)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


#: Below this many matrix cells XGBoost runs single-threaded: small jobs are faster without
#: OpenMP synchronisation and do not suffer from oversubscription when several processes share
#: the CPUs. The model does not depend on the thread count.
SMALL_DATA_CELLS = 2_000_000


def _threads_for(X: np.ndarray, nthread: int | None) -> int:
    if nthread is not None:
        return max(1, int(nthread))
    return 1 if X.size < SMALL_DATA_CELLS else default_nthread()


def _check_model_type(model_type: str) -> str:
    if not isinstance(model_type, str) or model_type.upper() not in TREE_MODEL_TYPES:
        raise ValueError(
            f"MODEL_TYPE {model_type!r} is not a tree model type; supported: {', '.join(TREE_MODEL_TYPES)}"
        )
    return model_type.upper()


def validate(model_type: str, options: Mapping[str, object] | None = None) -> dict[str, Any]:
    """``options`` validated by ``OPTIONS_MODELS[model_type]``, with every default filled in, and
    the rules between them (:func:`check_options`); raises :class:`BqmlError` naming the option.

    Keys are lower-cased. Fails for a value out of range, an option that another tree model type
    has but this one has not (``LEARN_RATE`` on a random forest), or an option no tree model has.
    Registry options (:data:`GENERAL_OPTIONS`) are left out (the engine applies them)."""
    model_type = _check_model_type(model_type)
    model = OPTIONS_MODELS[model_type]
    given = {str(k).lower(): v for k, v in (options or {}).items()}
    if model_type in REGRESSOR_TYPES:
        # Class weights are classifier options; their "off" values are harmless on a regressor.
        for option, off in (("auto_class_weights", False), ("class_weights", None)):
            if option in given and (given[option] is off or given[option] == off):
                del given[option]
    unknown = sorted(k for k in given if k not in model.model_fields and k not in GENERAL_OPTIONS)
    if unknown:
        supported = ", ".join(sorted(o.upper() for o in model.model_fields))
        names = ", ".join(u.upper() for u in unknown)
        raise BqmlError(
            f"option(s) {names} not supported for MODEL_TYPE {model_type}; supported: {supported}."
        )
    own = {k: v for k, v in given.items() if k in model.model_fields and v is not None}
    # Deep-copied: the resolved options never share the models' mutable defaults.
    resolved = copy.deepcopy(opt.validate_options(model, model_type, own))
    check_options(model_type, resolved)
    return resolved


def check_options(model_type: str, o: Mapping[str, Any]) -> None:
    """The rules between a tree model's options (``o``: validated, with defaults)."""
    if o["tree_method"] == "EXACT" and o["colsample_bynode"] < 1.0:
        # XGBoost's exact updater (colmaker) rejects per-node column sampling.
        raise BqmlError(
            f"Invalid value {o['colsample_bynode']!r} for option COLSAMPLE_BYNODE with TREE_METHOD "
            "'EXACT': allowed 1.0 (XGBoost's exact method has no per-node column sampling); or use "
            "TREE_METHOD 'AUTO', 'HIST' or 'APPROX'."
        )
    opt.check_class_weights(o)
    # Refused: hyperparameter tuning (NUM_TRIALS) and the test fraction it uses.
    if o["num_trials"] is not None:
        raise opt.refused("num_trials")
    if o["data_split_test_fraction"]:
        raise opt.refused("data_split_test_fraction")
    encoding = o.get("category_encoding_method")
    if encoding not in (None, "LABEL_ENCODING"):
        raise BqmlError(
            f"CATEGORY_ENCODING_METHOD={encoding!r} is not available locally for {model_type}; the local "
            "engine label-encodes categorical features (LABEL_ENCODING, the default)."
        )


def _value_error(exc: BqmlError) -> ValueError:
    # Direct calls of this module get ValueError, as for its other argument errors.
    return ValueError(str(exc).rstrip("."))


def resolved_options(model_type: str, options: Mapping[str, object] | None = None) -> dict[str, Any]:
    """:func:`validate` for direct calls: raises ``ValueError`` naming the option. Options that
    are already validated come back unchanged."""
    try:
        return validate(model_type, options)
    except BqmlError as exc:
        raise _value_error(exc) from None


def resolve_approx_global_feature_contrib(
    model_type: str, options: Mapping[str, object] | None = None
) -> bool:
    """``APPROX_GLOBAL_FEATURE_CONTRIB`` with its documented derived default: TRUE when
    ``ENABLE_GLOBAL_EXPLAIN`` is TRUE and ``NUM_PARALLEL_TREE >= 10`` (boosted trees) or
    ``>= 50`` (random forests), otherwise FALSE. Approximation needs both options TRUE."""
    opts = resolved_options(model_type, options)
    if not opts["enable_global_explain"]:
        return False
    if opts["approx_global_feature_contrib"] is not None:
        return bool(opts["approx_global_feature_contrib"])
    threshold = 50 if _check_model_type(model_type) in RANDOM_FOREST_TYPES else 10
    return opts["num_parallel_tree"] >= threshold


def _objective(model_type: str, n_classes: int | None) -> dict[str, Any]:
    if model_type in REGRESSOR_TYPES:
        # Training info reports mean squared error; XGBoost's rmse is squared (see _loss_from_metric).
        return {"objective": "reg:squarederror", "eval_metric": "rmse"}
    if n_classes is None or int(n_classes) < 2:
        raise ValueError(f"{model_type} needs at least 2 classes in the label column; got {n_classes}")
    if int(n_classes) > 1000:
        raise ValueError(f"{model_type} supports at most 1,000 classes in the label column; got {n_classes}")
    if int(n_classes) == 2:
        return {"objective": "binary:logistic", "eval_metric": "logloss"}
    return {"objective": "multi:softprob", "num_class": int(n_classes), "eval_metric": "mlogloss"}


def xgboost_params(model_type: str, options: Mapping[str, object], n_classes: int | None) -> tuple[dict, int]:
    """BigQuery ML options -> ``(XGBoost params, num_boost_round)``.

    Mapping (option -> XGBoost parameter): BOOSTER_TYPE -> ``booster`` (gbtree/dart),
    DART_NORMALIZE_TYPE -> ``normalize_type``, DROPOUT -> ``rate_drop``, NUM_PARALLEL_TREE ->
    ``num_parallel_tree``, MAX_TREE_DEPTH -> ``max_depth``, TREE_METHOD -> ``tree_method`` (AUTO and
    HIST -> hist), MIN_TREE_CHILD_WEIGHT -> ``min_child_weight``, COLSAMPLE_BY* -> ``colsample_by*``,
    MIN_SPLIT_LOSS -> ``gamma``, SUBSAMPLE -> ``subsample``, L1_REG -> ``alpha``, L2_REG ->
    ``lambda``, LEARN_RATE -> ``eta``, MAX_ITERATIONS -> ``num_boost_round``.

    Random forests are one round of NUM_PARALLEL_TREE trees with ``eta = 1`` (XGBoost averages
    the parallel trees of a round). Objectives: ``reg:squarederror`` for regressors,
    ``binary:logistic`` for 2 classes, ``multi:softprob`` for more. ``nthread`` is set to
    :func:`default_nthread`; :func:`train` picks it by data size unless given (results do not
    depend on it)."""
    model_type = _check_model_type(model_type)
    opts = resolved_options(model_type, options)
    forest = model_type in RANDOM_FOREST_TYPES
    params: dict[str, Any] = _objective(model_type, n_classes)
    params.update(
        {
            "booster": "gbtree",
            "tree_method": _TREE_METHODS[opts["tree_method"]],
            "num_parallel_tree": opts["num_parallel_tree"],
            "max_depth": opts["max_tree_depth"],
            "min_child_weight": float(opts["min_tree_child_weight"]),
            "gamma": opts["min_split_loss"],
            "subsample": opts["subsample"],
            "colsample_bytree": opts["colsample_bytree"],
            "colsample_bylevel": opts["colsample_bylevel"],
            "colsample_bynode": opts["colsample_bynode"],
            "alpha": opts["l1_reg"],
            "lambda": opts["l2_reg"],
            "seed": SEED,
            "nthread": default_nthread(),
            "verbosity": 1,
            "validate_parameters": True,
        }
    )
    if forest:
        params["eta"] = 1.0
        num_boost_round = 1
    else:
        params["eta"] = opts["learn_rate"]
        num_boost_round = opts["max_iterations"]
        if opts["booster_type"] == "DART":
            params["booster"] = "dart"
            params["normalize_type"] = opts["dart_normalize_type"].lower()
            params["rate_drop"] = opts["dropout"]
            params["sample_type"] = "uniform"
            params["skip_drop"] = 0.0
    return params, num_boost_round


# --------------------------------------------------------------------------------------------------
# Class weights
# --------------------------------------------------------------------------------------------------
def _class_weight_pairs(class_weights: Any) -> list[tuple[Any, float]]:
    """CLASS_WEIGHTS as ``[(label, weight), …]``, parsed by the option's checker
    (lakehouse_ml/engine/options.py)."""
    try:
        return [(label, weight) for label, weight in opt.class_weights("class_weights", class_weights)]
    except BqmlError as exc:
        raise _value_error(exc) from None


def class_sample_weights(
    y: np.ndarray,
    n_classes: int,
    *,
    auto_class_weights: bool = False,
    class_weights: Any = None,
    class_labels: Sequence[Any] | None = None,
) -> np.ndarray | None:
    """Per-row weights from AUTO_CLASS_WEIGHTS or CLASS_WEIGHTS, or ``None`` when unweighted.

    AUTO_CLASS_WEIGHTS: ``total_input_rows / (input_rows_for_class_n * number_of_unique_classes)``
    over the training rows (the pages' formula). CLASS_WEIGHTS: a weight for every class label;
    keys are matched against ``class_labels`` (the label value of each class index, compared as
    strings since BigQuery ML's class label is a STRING), or are class indices when
    ``class_labels`` is not given."""
    y = np.asarray(y)
    if auto_class_weights and class_weights is not None:
        raise ValueError("CLASS_WEIGHTS cannot be specified when AUTO_CLASS_WEIGHTS is TRUE")
    if auto_class_weights:
        classes, counts = np.unique(y.astype(np.int64), return_counts=True)
        per_class = np.zeros(n_classes, dtype=np.float64)
        per_class[classes] = len(y) / (counts.astype(np.float64) * len(classes))
        return per_class[y.astype(np.int64)]
    if class_weights is None:
        return None
    pairs = _class_weight_pairs(class_weights)
    if class_labels is not None:
        if len(class_labels) != n_classes:
            raise ValueError(f"class_labels has {len(class_labels)} entries for {n_classes} classes")
        index_of = {str(label): i for i, label in enumerate(class_labels)}
        names = [str(label) for label in class_labels]
    else:
        index_of = {str(i): i for i in range(n_classes)}
        names = [str(i) for i in range(n_classes)]
    per_class = np.full(n_classes, np.nan)
    for label, weight in pairs:
        key = str(label)
        if key not in index_of:
            raise ValueError(
                f"CLASS_WEIGHTS names label {label!r}, which is not a class label; labels: {', '.join(names)}"
            )
        per_class[index_of[key]] = weight
    missing = [names[i] for i in range(n_classes) if np.isnan(per_class[i])]
    if missing:
        raise ValueError(
            f"CLASS_WEIGHTS must give a weight for every class label; missing: {', '.join(missing)}"
        )
    return per_class[y.astype(np.int64)]


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
@dataclass
class TreeTrainingResult:
    """What :func:`train` returns.

    ``booster_json``: the model in XGBoost's JSON model format (``Booster.save_raw("json")``),
    the artifact to store. ``iterations``: one dict per boosting round, for ``ML.TRAINING_INFO``:
    ``iteration`` (from 0), ``loss`` (training loss), ``eval_loss`` (on the evaluation rows, or
    ``None``), ``duration_ms``, ``learning_rate``. Loss is log loss (binary), cross-entropy log
    loss (multiclass) or mean squared error (regression), weighted by the training weights.
    ``best_iteration``: the last iteration in the model: BigQuery ML stops *after* the first
    iteration whose relative improvement is below MIN_REL_PROGRESS and keeps that iteration, so
    every trained round is in the model."""

    booster_json: bytes
    iterations: list[dict]
    best_iteration: int
    params: dict = field(default_factory=dict)
    num_boost_round: int = 0
    stopped_early: bool = False
    early_stop_metric: str | None = None  # "eval_loss" or "loss": the loss early stopping watched
    n_classes: int | None = None
    feature_names: list[str] | None = None
    booster: xgboost.Booster | None = field(default=None, repr=False, compare=False)


def _as_matrix(name: str, X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix; got shape {X.shape}")
    if np.isinf(X).any():
        raise ValueError(f"{name} contains infinite values; pass missing values as NaN")
    return X


def _labels(model_type: str, y: Any, n_rows: int, n_classes: int | None, name: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) != n_rows:
        raise ValueError(f"{name} has {len(y)} labels for {n_rows} rows")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} contains NULL/NaN or infinite labels")
    if model_type in CLASSIFIER_TYPES:
        if (
            not (np.floor(y) == y).all()
            or (y < 0).any()
            or (n_classes is not None and (y >= n_classes).any())
        ):
            raise ValueError(f"{name} must hold class indices 0 .. n_classes-1 for {model_type}")
    return y


def _check_feature_names(feature_names: Sequence[str] | None, n_features: int) -> list[str] | None:
    if feature_names is None:
        return None
    names = [str(n) for n in feature_names]
    if len(names) != n_features:
        raise ValueError(f"{len(names)} feature names for {n_features} feature columns")
    if len(set(names)) != len(names):
        raise ValueError("feature names must be unique")
    bad = [n for n in names if not n or any(c in n for c in "[]<,")]
    if bad:
        raise ValueError(
            f"feature names may not be empty or contain '[', ']', '<' or ',': {', '.join(map(repr, bad))}"
        )
    return names


def _loss_from_metric(metric: str, value: float) -> float:
    # ML.TRAINING_INFO's loss for regression is mean squared error; XGBoost reports its root.
    return float(value) ** 2 if metric == "rmse" else float(value)


class _BqmlTrainingCallback(xgboost.callback.TrainingCallback):
    """Records ML.TRAINING_INFO rows and applies EARLY_STOP / MIN_REL_PROGRESS."""

    def __init__(
        self,
        *,
        metric: str,
        has_eval: bool,
        early_stop: bool,
        min_rel_progress: float,
        learning_rate: float,
        progress: Callable[[str], None] | None,
        total_rounds: int,
    ):
        super().__init__()
        self.metric = metric
        self.has_eval = has_eval
        self.early_stop = early_stop
        self.min_rel_progress = min_rel_progress
        self.learning_rate = learning_rate
        self.progress = progress
        self.total_rounds = total_rounds
        self.iterations: list[dict] = []
        self.stopped_early = False
        self._started = 0.0

    def before_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self._started = time.perf_counter()
        return False

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        duration_ms = int(round((time.perf_counter() - self._started) * 1000))
        loss = _loss_from_metric(self.metric, evals_log["train"][self.metric][-1])
        eval_loss = (
            _loss_from_metric(self.metric, evals_log["eval"][self.metric][-1]) if self.has_eval else None
        )
        self.iterations.append(
            {
                "iteration": epoch,
                "loss": loss,
                "eval_loss": eval_loss,
                "duration_ms": duration_ms,
                "learning_rate": self.learning_rate,
            }
        )
        if self.progress is not None:
            shown = f"iteration {epoch + 1}/{self.total_rounds}: loss={loss:.6g}"
            if eval_loss is not None:
                shown += f" eval_loss={eval_loss:.6g}"
            self.progress(shown)
        if not self.early_stop or len(self.iterations) < 2:
            return False
        # Evaluation data "is used to avoid overfitting by using early stopping" (DATA_SPLIT_METHOD):
        # watch the evaluation loss when there is one, otherwise the training loss.
        key = "eval_loss" if self.has_eval else "loss"
        previous, current = self.iterations[-2][key], self.iterations[-1][key]
        relative = (previous - current) / abs(previous) if previous != 0 else 0.0
        if relative < self.min_rel_progress:
            self.stopped_early = True
            if self.progress is not None:
                self.progress(
                    f"early stop after iteration {epoch + 1}: relative {key} improvement "
                    f"{relative:.4g} < MIN_REL_PROGRESS {self.min_rel_progress:g}"
                )
            return True
        return False


def train(
    model_type: str,
    options: Mapping[str, object],
    X_train: Any,
    y_train: Any,
    X_eval: Any = None,
    y_eval: Any = None,
    sample_weight: Any = None,
    n_classes: int | None = None,
    feature_names: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    class_labels: Sequence[Any] | None = None,
    eval_sample_weight: Any = None,
    nthread: int | None = None,
) -> TreeTrainingResult:
    """Train a BigQuery ML tree model with XGBoost.

    ``X_train``/``X_eval``: preprocessed float matrices (NaN = missing). ``y_*``: targets, or class
    indices for classifiers. ``n_classes``: number of classes (default: ``max(y_train) + 1``).
    ``sample_weight``: per-row training weights (INSTANCE_WEIGHT_COL); not allowed together with
    AUTO_CLASS_WEIGHTS / CLASS_WEIGHTS (as in BigQuery ML). ``class_labels``: the label value of
    each class index, to match CLASS_WEIGHTS keys. ``eval_sample_weight``: per-row weights of the
    evaluation rows (class weights are applied to them as well, so both losses measure the same
    weighted objective). ``progress``: called with one line per iteration.

    Early stopping (boosted trees; a random forest is a single round): with EARLY_STOP, training
    stops after the first iteration whose relative loss improvement
    ``(loss[i-1] - loss[i]) / loss[i-1]`` is below MIN_REL_PROGRESS. The evaluation loss is
    watched when evaluation rows are given, otherwise the training loss."""
    model_type = _check_model_type(model_type)
    opts = resolved_options(model_type, options)
    X_train = _as_matrix("X_train", X_train)
    classifier = model_type in CLASSIFIER_TYPES
    if n_classes is None and classifier:
        y_probe = np.asarray(y_train, dtype=np.float64)
        n_classes = int(np.nanmax(y_probe)) + 1 if y_probe.size else 0
    y_train = _labels(model_type, y_train, X_train.shape[0], n_classes, "y_train")
    if X_train.shape[0] == 0:
        raise ValueError("no training rows")
    if classifier and len(np.unique(y_train)) < 2:
        raise ValueError(f"{model_type} needs at least 2 distinct labels in the training data")
    names = _check_feature_names(feature_names, X_train.shape[1])
    params, num_boost_round = xgboost_params(model_type, opts, n_classes if classifier else None)
    params["nthread"] = _threads_for(X_train, nthread)

    # Weights: instance weights, or class weights (never both).
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    cls_w_train = cls_w_eval = None
    if classifier and (opts["auto_class_weights"] or opts["class_weights"] is not None):
        if weights is not None:
            raise ValueError("INSTANCE_WEIGHT_COL cannot be used with AUTO_CLASS_WEIGHTS or CLASS_WEIGHTS")
        cls_w_train = class_sample_weights(
            y_train,
            n_classes,
            auto_class_weights=opts["auto_class_weights"],
            class_weights=opts["class_weights"],
            class_labels=class_labels,
        )
        weights = cls_w_train
    if weights is not None:
        if len(weights) != X_train.shape[0] or not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("sample weights must be finite, non-negative, one per training row")

    use_quantile = params["tree_method"] == "hist"
    matrix = xgboost.QuantileDMatrix if use_quantile else xgboost.DMatrix
    dtrain = matrix(
        X_train, label=y_train, weight=weights, missing=np.nan, feature_names=names, nthread=params["nthread"]
    )
    evals = [(dtrain, "train")]
    has_eval = X_eval is not None and len(X_eval) > 0
    if has_eval:
        X_eval = _as_matrix("X_eval", X_eval)
        if X_eval.shape[1] != X_train.shape[1]:
            raise ValueError(f"X_eval has {X_eval.shape[1]} columns; X_train has {X_train.shape[1]}")
        if y_eval is None:
            raise ValueError("y_eval is required with X_eval")
        y_eval = _labels(model_type, y_eval, X_eval.shape[0], n_classes, "y_eval")
        eval_weights = (
            None
            if eval_sample_weight is None
            else np.asarray(eval_sample_weight, dtype=np.float64).reshape(-1)
        )
        if eval_weights is not None and (
            len(eval_weights) != X_eval.shape[0]
            or not np.isfinite(eval_weights).all()
            or (eval_weights < 0).any()
        ):
            raise ValueError("eval sample weights must be finite, non-negative, one per evaluation row")
        if cls_w_train is not None:
            cls_w_eval = class_sample_weights(
                y_eval,
                n_classes,
                auto_class_weights=False,
                class_weights=_per_class_weights(y_train, cls_w_train, n_classes),
                class_labels=None,
            )
            eval_weights = cls_w_eval if eval_weights is None else eval_weights * cls_w_eval
        extra = {"ref": dtrain} if use_quantile else {}
        deval = matrix(
            X_eval,
            label=y_eval,
            weight=eval_weights,
            missing=np.nan,
            feature_names=names,
            nthread=params["nthread"],
            **extra,
        )
        evals.append((deval, "eval"))

    metric = params["eval_metric"]
    callback = _BqmlTrainingCallback(
        metric=metric,
        has_eval=has_eval,
        early_stop=bool(opts["early_stop"]) and num_boost_round > 1,
        min_rel_progress=float(opts["min_rel_progress"]),
        learning_rate=float(params["eta"]),
        progress=progress,
        total_rounds=num_boost_round,
    )
    booster = xgboost.train(
        params, dtrain, num_boost_round=num_boost_round, evals=evals, verbose_eval=False, callbacks=[callback]
    )
    booster_json = bytes(booster.save_raw("json"))
    return TreeTrainingResult(
        booster_json=booster_json,
        iterations=callback.iterations,
        best_iteration=len(callback.iterations) - 1,
        params=params,
        num_boost_round=num_boost_round,
        stopped_early=callback.stopped_early,
        early_stop_metric=("eval_loss" if has_eval else "loss") if callback.early_stop else None,
        n_classes=int(n_classes) if classifier else None,
        feature_names=names,
        booster=booster,
    )


def _per_class_weights(y: np.ndarray, row_weights: np.ndarray, n_classes: int) -> dict[int, float]:
    """The per-class weight table behind per-row class weights (classes absent from y get 1)."""
    table = {i: 1.0 for i in range(n_classes)}
    for cls in np.unique(y.astype(np.int64)):
        table[int(cls)] = float(row_weights[np.argmax(y == cls)])
    return table


# --------------------------------------------------------------------------------------------------
# Applying a model
# --------------------------------------------------------------------------------------------------
def load_booster(booster_json: bytes) -> xgboost.Booster:
    """A booster from XGBoost's JSON model format (safe to load: no code, no pickle)."""
    booster = xgboost.Booster()
    booster.load_model(bytearray(booster_json))
    return booster


def _dmatrix(booster: xgboost.Booster, X: Any) -> xgboost.DMatrix:
    X = _as_matrix("X", X)
    n_features = booster.num_features()
    if X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} feature columns; the model has {n_features}")
    return xgboost.DMatrix(
        X, missing=np.nan, feature_names=booster.feature_names, nthread=_threads_for(X, None)
    )


def _is_classifier(model_type: str) -> bool:
    return _check_model_type(model_type) in CLASSIFIER_TYPES


def predict(booster: xgboost.Booster, X: Any, model_type: str) -> np.ndarray:
    """Regression values ``(n,)``, or class probabilities ``(n, n_classes)`` for classifiers
    (binary models: ``[p0, p1]`` with ``p0 = 1 - p1``). ``float64``."""
    classifier = _is_classifier(model_type)
    out = booster.predict(_dmatrix(booster, X), validate_features=False).astype(np.float64)
    if not classifier:
        return out.reshape(-1)
    if out.ndim == 1:  # binary:logistic
        return np.column_stack([1.0 - out, out])
    return out


def predict_margin(booster: xgboost.Booster, X: Any) -> np.ndarray:
    """Raw margins (log-odds for classifiers): ``(n,)``, or ``(n, n_classes)`` for multiclass."""
    return booster.predict(_dmatrix(booster, X), output_margin=True, validate_features=False).astype(
        np.float64
    )


def feature_contributions(booster: xgboost.Booster, X: Any, approximate: bool = False) -> np.ndarray:
    """SHAP feature contributions (XGBoost ``pred_contribs``), in margin space.

    Shape ``(n, n_features + 1)``, the last column being the bias (the expected margin); for
    multiclass models ``(n, n_classes, n_features + 1)``. Each row sums to the margin
    (:func:`predict_margin`). ``approximate=True`` uses XGBoost's fast approximation
    (APPROX_GLOBAL_FEATURE_CONTRIB)."""
    contribs = booster.predict(
        _dmatrix(booster, X), pred_contribs=True, approx_contribs=bool(approximate), validate_features=False
    )
    return np.asarray(contribs, dtype=np.float64)


def global_importance(
    booster: xgboost.Booster, feature_names: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """``ML.FEATURE_IMPORTANCE`` for every feature, 0 for features no split uses.

    ``importance_weight``: the number of times the feature is used to split the data across all
    trees (XGBoost ``weight``); ``importance_gain``: the average gain across all splits that use
    it (``gain``); ``importance_cover``: the average coverage across those splits (``cover``).
    Keys are ``feature_names`` (default: the booster's feature names, else ``f0, f1, …``)."""
    n_features = booster.num_features()
    if feature_names is None:
        feature_names = booster.feature_names or [f"f{i}" for i in range(n_features)]
    names = [str(n) for n in feature_names]
    if len(names) != n_features:
        raise ValueError(f"{len(names)} feature names for a model with {n_features} features")
    # get_score keys are the booster's own feature names (or f0, f1, … when it has none).
    internal = booster.feature_names or [f"f{i}" for i in range(n_features)]
    scores = {kind: booster.get_score(importance_type=kind) for kind in ("weight", "gain", "cover")}
    return {
        name: {
            "importance_weight": float(scores["weight"].get(key, 0.0)),
            "importance_gain": float(scores["gain"].get(key, 0.0)),
            "importance_cover": float(scores["cover"].get(key, 0.0)),
        }
        for name, key in zip(names, internal)
    }
