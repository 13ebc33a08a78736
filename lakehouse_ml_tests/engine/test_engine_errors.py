"""Each failure names the problem and what is supported, and leaves no artifact behind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine.engine import BqmlEngine

from .engine_data import binary, clusters, regression


@pytest.fixture
def models(tmp_path):
    return tmp_path / "models"


@pytest.fixture
def eng(models):
    return BqmlEngine(models)


def _nothing_left(models, eng, name):
    assert not eng.model_exists(name)
    assert not [p for p in models.iterdir() if not p.name.startswith(".lock-")] if models.exists() else True


@pytest.mark.parametrize(
    "options, frame, message",
    [
        (
            {"model_type": "LOGISTIC_REG", "l2_regularization": 1.0},
            binary(100),
            r"Unknown option\(s\) L2_REGULARIZATION for MODEL_TYPE LOGISTIC_REG; supported options: .*L2_REG",
        ),
        (
            {"model_type": "KMEANS", "input_label_cols": ["label"]},
            clusters(100),
            r"Unknown option\(s\) INPUT_LABEL_COLS for MODEL_TYPE KMEANS; supported options: .*NUM_CLUSTERS",
        ),
        (
            {"model_type": "LINEAR_REG", "auto_class_weights": True, "input_label_cols": ["revenue"]},
            regression(100),
            r"Unknown option\(s\) AUTO_CLASS_WEIGHTS for MODEL_TYPE LINEAR_REG",
        ),
        (
            {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"], "description": "x"},
            regression(100),
            r"DESCRIPTION is not a CREATE MODEL option in BigQuery ML; set it afterwards with ALTER MODEL",
        ),
        (
            {"model_type": "BOOSTED_TREE_CLASSIFIER", "num_clusters": 3},
            binary(100),
            r"NUM_CLUSTERS not supported for MODEL_TYPE BOOSTED_TREE_CLASSIFIER; supported: .*MAX_TREE_DEPTH",
        ),
        (
            {"model_type": "DNN_CLASSIFIER"},
            binary(100),
            r"MODEL_TYPE 'DNN_CLASSIFIER' is a BigQuery ML model type the local engine does not train; "
            r"supported "
            r"locally: LINEAR_REG, LOGISTIC_REG, KMEANS, BOOSTED_TREE_CLASSIFIER",
        ),
        (
            {"model_type": "FANCY"},
            binary(100),
            r"MODEL_TYPE 'FANCY' is not a model type; supported locally: LINEAR_REG",
        ),
        ({}, binary(100), r"needs OPTIONS\(MODEL_TYPE=...\); supported model types: LINEAR_REG"),
        (
            {"model_type": "LOGISTIC_REG", "input_label_cols": ["churned"]},
            binary(100),
            r"INPUT_LABEL_COLS names column 'churned' \(the label\), but the training query has no such",
        ),
        (
            {"model_type": "LOGISTIC_REG"},
            binary(100).drop(columns=["label"]),
            r"INPUT_LABEL_COLS names column 'label'",
        ),
        (
            {"model_type": "LOGISTIC_REG"},
            binary(100).assign(label=False),
            r"LOGISTIC_REG needs at least two distinct label values; the label column 'label' has only "
            r"False \(one-class",
        ),
        ({"model_type": "BOOSTED_TREE_CLASSIFIER"}, binary(100).assign(label="yes"), r"one-class label"),
        ({"model_type": "LOGISTIC_REG"}, binary(100).iloc[:0], r"returned no rows \(empty training set\)"),
        (
            {"model_type": "LOGISTIC_REG"},
            binary(100).assign(label=[True, None] * 50),
            r"label column 'label' has 50 NULL value\(s\)",
        ),
        (
            {"model_type": "LINEAR_REG", "input_label_cols": ["segment"]},
            regression(100).dropna(),
            r"LINEAR_REG needs a numeric label; column 'segment' is STRING",
        ),
        (
            {"model_type": "LINEAR_REG", "input_label_cols": "revenue"},
            regression(100),
            r"INPUT_LABEL_COLS: expected an ARRAY<STRING>",
        ),
        (
            {"model_type": "LOGISTIC_REG", "max_iterations": "ten"},
            binary(100),
            r"MAX_ITERATIONS: expected an INT64",
        ),
        (
            {"model_type": "LOGISTIC_REG", "data_split_method": "HALF"},
            binary(100),
            r"DATA_SPLIT_METHOD: expected one of 'AUTO_SPLIT', 'RANDOM', 'CUSTOM', 'SEQ', 'NO_SPLIT'",
        ),
        ({"model_type": "LOGISTIC_REG", "num_trials": 10}, binary(100), r"hyperparameter tuning"),
        ({"model_type": "LOGISTIC_REG", "warm_start": True}, binary(100), r"WARM_START=TRUE"),
        (
            {"model_type": "LOGISTIC_REG", "learn_rate": 0.3},
            binary(100),
            r"LEARN_RATE can only be set with "
            r"LEARN_RATE_STRATEGY='CONSTANT'",
        ),
        (
            {"model_type": "LOGISTIC_REG", "auto_class_weights": True, "class_weights": [("true", 1.0)]},
            binary(100),
            r"CLASS_WEIGHTS cannot be specified when AUTO_CLASS_WEIGHTS is TRUE",
        ),
        (
            {"model_type": "LOGISTIC_REG", "class_weights": [("true", 2.0)]},
            binary(100),
            r"CLASS_WEIGHTS must give a weight for every class label; missing: false",
        ),
        (
            {"model_type": "LOGISTIC_REG", "class_weights": [("yes", 2.0), ("true", 1.0), ("false", 1.0)]},
            binary(100),
            r"CLASS_WEIGHTS names label 'yes', which is not a label value; labels: false, true",
        ),
        (
            {"model_type": "KMEANS", "num_clusters": 1},
            clusters(100),
            r"NUM_CLUSTERS: expected an INT64 in \[2, 100\]",
        ),
        ({"model_type": "KMEANS", "num_clusters": 50}, clusters(20), r"needs at least 50 training rows"),
        ({"model_type": "KMEANS", "kmeans_init_method": "CUSTOM"}, clusters(100), r"needs KMEANS_INIT_COL"),
        (
            {"model_type": "LOGISTIC_REG", "vertex_ai_model_id": "churn"},
            binary(100),
            r"VERTEX_AI_MODEL_ID can only be set when MODEL_REGISTRY='VERTEX_AI'",
        ),
        (
            {
                "model_type": "LOGISTIC_REG",
                "model_registry": "VERTEX_AI",
                "vertex_ai_model_id": "Churn-Model",
            },
            binary(100),
            r"Invalid VERTEX_AI_MODEL_ID 'Churn-Model': a Vertex AI model ID has up to 63 characters",
        ),
        (
            {"model_type": "LOGISTIC_REG", "model_registry": "VERTEX_AI", "vertex_ai_model_id": "x" * 64},
            binary(100),
            r"Invalid VERTEX_AI_MODEL_ID",
        ),
        (
            {
                "model_type": "LOGISTIC_REG",
                "model_registry": "VERTEX_AI",
                "vertex_ai_model_version_aliases": ["2024"],
            },
            binary(100),
            r"Invalid Vertex AI model version alias '2024'",
        ),
        (
            {
                "model_type": "LOGISTIC_REG",
                "model_registry": "VERTEX_AI",
                "vertex_ai_model_version_aliases": ["Prod"],
            },
            binary(100),
            r"Invalid Vertex AI model version alias 'Prod'",
        ),
        (
            {
                "model_type": "LOGISTIC_REG",
                "model_registry": "VERTEX_AI",
                "vertex_ai_model_version_aliases": ["a", "ok"],
            },
            binary(100),
            r"Invalid Vertex AI model version alias 'a'",
        ),
        (
            {
                "model_type": "LOGISTIC_REG",
                "model_registry": "VERTEX_AI",
                "vertex_ai_model_version_aliases": ["prod", "prod"],
            },
            binary(100),
            r"lists an alias more than once",
        ),
        (
            {"model_type": "LOGISTIC_REG", "model_registry": "MLFLOW"},
            binary(100),
            r"MODEL_REGISTRY: expected one of 'VERTEX_AI'",
        ),
    ],
)
def test_create_model_errors(eng, models, options, frame, message):
    with pytest.raises(BqmlError, match=message):
        eng.create_model("m", options, frame)
    _nothing_left(models, eng, "m")


def test_model_name_must_be_a_vertex_id_when_registering_without_one(eng, models):
    with pytest.raises(BqmlError, match="'Churn' is not a valid Vertex AI model ID"):
        eng.create_model("Churn", {"model_type": "LOGISTIC_REG", "model_registry": "VERTEX_AI"}, binary(100))
    _nothing_left(models, eng, "Churn")
    with pytest.raises(BqmlError, match="Invalid model name"):
        eng.create_model("../evil", {"model_type": "LOGISTIC_REG"}, binary(100))


@pytest.fixture
def trained(eng):
    eng.create_model("linreg", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, regression(300))
    eng.create_model("logreg", {"model_type": "LOGISTIC_REG"}, binary(300))
    eng.create_model(
        "multi",
        {"model_type": "LOGISTIC_REG", "input_label_cols": ["segment"]},
        binary(300).dropna(subset=["segment"]),
    )
    eng.create_model("km", {"model_type": "KMEANS", "num_clusters": 3}, clusters(300))
    eng.create_model(
        "bt", {"model_type": "BOOSTED_TREE_REGRESSOR", "input_label_cols": ["revenue"]}, regression(300)
    )
    return eng


def test_functions_refuse_model_types_bigquery_does_not_support(trained):
    with pytest.raises(
        BqmlError,
        match=r"ML.WEIGHTS does not support MODEL_TYPE KMEANS; it supports LINEAR_REG, "
        r"LOGISTIC_REG \(BigQuery also accepts MATRIX_FACTORIZATION",
    ):
        trained.weights("km")
    with pytest.raises(BqmlError, match="ML.WEIGHTS does not support MODEL_TYPE BOOSTED_TREE_REGRESSOR"):
        trained.weights("bt")
    with pytest.raises(
        BqmlError,
        match=r"ML.DETECT_ANOMALIES does not support MODEL_TYPE LINEAR_REG; it supports "
        r"KMEANS",
    ):
        trained.detect_anomalies("linreg", regression(10), {"contamination": 0.1})
    with pytest.raises(BqmlError, match="ML.EXPLAIN_PREDICT does not support MODEL_TYPE KMEANS"):
        trained.explain_predict("km", clusters(10))
    with pytest.raises(BqmlError, match="ML.GLOBAL_EXPLAIN does not support MODEL_TYPE KMEANS"):
        trained.global_explain("km")
    with pytest.raises(
        BqmlError, match="ML.GLOBAL_EXPLAIN needs a model trained with ENABLE_GLOBAL_EXPLAIN=TRUE"
    ):
        trained.global_explain("logreg")
    with pytest.raises(BqmlError, match="ML.ROC_CURVE applies to binary classification models"):
        trained.roc_curve("multi", None)
    with pytest.raises(BqmlError, match="ML.CONFUSION_MATRIX applies to classification models"):
        trained.confusion_matrix("linreg", None)


def test_function_argument_errors(trained):
    with pytest.raises(BqmlError, match="THRESHOLD applies to binary classification models only"):
        trained.predict("linreg", regression(5), {"threshold": 0.4})
    with pytest.raises(BqmlError, match="THRESHOLD applies to binary classification models only.*3 classes"):
        trained.evaluate("multi", binary(20).dropna(), {"threshold": 0.4})
    with pytest.raises(BqmlError, match="THRESHOLD needs input data"):
        trained.evaluate("logreg", None, {"threshold": 0.4})
    with pytest.raises(BqmlError, match="THRESHOLD must be a FLOAT64 between 0 and 1"):
        trained.predict("logreg", binary(5), {"threshold": 2})
    with pytest.raises(
        BqmlError, match=r"ML.PREDICT has no argument KEEP_ORIGINAL_COLUMNS; supported here: THRESHOLD"
    ):
        trained.predict("logreg", binary(5), {"keep_original_columns": True})
    with pytest.raises(BqmlError, match=r"needs STRUCT\(<contamination> AS contamination\)"):
        trained.detect_anomalies("km", clusters(10))
    with pytest.raises(BqmlError, match=r"CONTAMINATION must be a FLOAT64 in \[0, 0.5\]"):
        trained.detect_anomalies("km", clusters(10), {"contamination": 0.7})
    with pytest.raises(BqmlError, match="needs input data"):
        trained.detect_anomalies("km", None, {"contamination": 0.1})
    with pytest.raises(BqmlError, match="TOP_K_FEATURES must be a positive INT64"):
        trained.explain_predict("linreg", regression(5), {"top_k_features": 0})
    with pytest.raises(BqmlError, match="the input has no label column 'revenue'"):
        trained.evaluate("linreg", regression(5).drop(columns=["revenue"]))
    with pytest.raises(BqmlError, match="the input has no column 'a'"):
        trained.predict("km", pd.DataFrame({"b": [1.0]}))
    assert np.isfinite(trained.evaluate("linreg", regression(50, seed=3)).column("r2_score")[0].as_py())
