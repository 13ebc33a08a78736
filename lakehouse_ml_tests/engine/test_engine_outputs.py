"""Output column names and Arrow types of every function, for every model type."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from .engine_data import binary, clusters, engine, multiclass, regression

F64, I64, STR, BOOL = pa.float64(), pa.int64(), pa.string(), pa.bool_()
INPUT = [("tenure", F64), ("spend", F64), ("visits", I64), ("segment", STR), ("opt_in", BOOL)]


def _schema(table: pa.Table) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in table.schema]


def _probs(label_type):
    return pa.list_(pa.struct([("label", label_type), ("prob", F64)]))


ATTRIBUTIONS = pa.list_(pa.struct([("feature", STR), ("attribution", F64)]))
CLASSIFICATION = [(c, F64) for c in ("precision", "recall", "accuracy", "f1_score", "log_loss", "roc_auc")]
REGRESSION = [
    (c, F64)
    for c in (
        "mean_absolute_error",
        "mean_squared_error",
        "mean_squared_log_error",
        "median_absolute_error",
        "r2_score",
        "explained_variance",
    )
]
FEATURE_INFO = [
    ("input", STR),
    ("min", F64),
    ("max", F64),
    ("mean", F64),
    ("median", F64),
    ("stddev", F64),
    ("category_count", I64),
    ("null_count", I64),
    ("dimension", I64),
]
TRAINING_INFO = [
    ("training_run", I64),
    ("iteration", I64),
    ("loss", F64),
    ("eval_loss", F64),
    ("learning_rate", F64),
    ("duration_ms", I64),
]
WEIGHTS = [
    ("processed_input", STR),
    ("weight", F64),
    ("category_weights", pa.list_(pa.struct([("category", STR), ("weight", F64)]))),
]
EXPLAIN_TAIL = [
    ("top_feature_attributions", ATTRIBUTIONS),
    ("baseline_prediction_value", F64),
    ("prediction_value", F64),
    ("approximation_error", F64),
]


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    e = engine(tmp_path_factory.mktemp("outputs"))
    e.create_model("logreg", {"model_type": "LOGISTIC_REG", "enable_global_explain": True}, binary(800))
    e.create_model(
        "multi",
        {"model_type": "LOGISTIC_REG", "input_label_cols": ["plan"], "enable_global_explain": True},
        multiclass(800),
    )
    e.create_model(
        "linreg",
        {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"], "enable_global_explain": True},
        regression(800),
    )
    e.create_model("km", {"model_type": "KMEANS", "num_clusters": 3}, clusters(600))
    e.create_model(
        "btc", {"model_type": "BOOSTED_TREE_CLASSIFIER", "enable_global_explain": True}, binary(800)
    )
    e.create_model(
        "rfr",
        {
            "model_type": "RANDOM_FOREST_REGRESSOR",
            "input_label_cols": ["revenue"],
            "enable_global_explain": True,
            "num_parallel_tree": 10,
        },
        regression(800),
    )
    return e


def test_predict_columns(eng):
    frame = binary(20, seed=1)
    for name in ("logreg", "btc"):
        out = eng.predict(name, frame)
        assert _schema(out) == [
            ("predicted_label", BOOL),
            ("predicted_label_probs", _probs(BOOL)),
        ] + INPUT + [("label", BOOL)]
        probs = out.column("predicted_label_probs").to_pylist()
        assert all(len(p) == 2 and abs(sum(e["prob"] for e in p) - 1) < 1e-6 for p in probs)
    out = eng.predict("multi", multiclass(20, seed=1))
    assert _schema(out)[:2] == [("predicted_plan", STR), ("predicted_plan_probs", _probs(STR))]
    assert [p["label"] for p in out.column("predicted_plan_probs")[0].as_py()] == ["pro", "plus", "basic"]
    for name in ("linreg", "rfr"):
        out = eng.predict(name, regression(20, seed=1))
        assert _schema(out) == [("predicted_revenue", F64)] + INPUT + [("revenue", F64)]
    out = eng.predict("km", clusters(20, seed=1))
    nearest = pa.list_(pa.struct([("CENTROID_ID", I64), ("DISTANCE", F64)]))
    assert _schema(out) == [
        ("CENTROID_ID", I64),
        ("NEAREST_CENTROIDS_DISTANCE", nearest),
        ("a", F64),
        ("b", F64),
        ("kind", STR),
    ]
    first = out.column("NEAREST_CENTROIDS_DISTANCE")[0].as_py()
    assert len(first) == 3 and first[0]["CENTROID_ID"] == out.column("CENTROID_ID")[0].as_py()
    assert [e["DISTANCE"] for e in first] == sorted(e["DISTANCE"] for e in first)


def test_evaluate_columns(eng):
    for name, frame in (
        ("logreg", binary(50, seed=2)),
        ("multi", multiclass(50, seed=2)),
        ("btc", binary(50, seed=2)),
    ):
        assert _schema(eng.evaluate(name, frame)) == CLASSIFICATION
        assert _schema(eng.evaluate(name, None)) == CLASSIFICATION
    for name in ("linreg", "rfr"):
        assert _schema(eng.evaluate(name, regression(50, seed=2))) == REGRESSION
        assert _schema(eng.evaluate(name, None)) == REGRESSION
    expected = [("davies_bouldin_index", F64), ("mean_squared_distance", F64)]
    assert _schema(eng.evaluate("km", clusters(50, seed=2))) == expected
    assert _schema(eng.evaluate("km", None)) == expected


def test_detect_anomalies_columns(eng):
    out = eng.detect_anomalies("km", clusters(30, seed=3), {"contamination": 0.1})
    assert _schema(out) == [
        ("is_anomaly", BOOL),
        ("normalized_distance", F64),
        ("CENTROID_ID", I64),
        ("a", F64),
        ("b", F64),
        ("kind", STR),
    ]


def test_explain_predict_columns(eng):
    frame = binary(10, seed=4)
    for name in ("logreg", "btc"):
        out = eng.explain_predict(name, frame, {"top_k_features": 3})
        assert _schema(out) == [("predicted_label", BOOL), ("probability", F64)] + EXPLAIN_TAIL + INPUT + [
            ("label", BOOL)
        ]
        assert all(len(r) == 3 for r in out.column("top_feature_attributions").to_pylist())
    out = eng.explain_predict("multi", multiclass(10, seed=4))
    assert _schema(out)[:2] == [("predicted_plan", STR), ("probability", F64)]
    assert all(len(r) == 5 for r in out.column("top_feature_attributions").to_pylist())  # default 5
    for name in ("linreg", "rfr"):
        out = eng.explain_predict(name, regression(10, seed=4), {"top_k_features": 100})
        assert _schema(out) == [("predicted_revenue", F64)] + EXPLAIN_TAIL + INPUT + [("revenue", F64)]
        assert all(len(r) == 5 for r in out.column("top_feature_attributions").to_pylist())  # all features
        rows = out.to_pylist()
        for row in rows:
            attributions = [a["attribution"] for a in row["top_feature_attributions"]]
            assert [abs(a) for a in attributions] == sorted((abs(a) for a in attributions), reverse=True)
            assert row["baseline_prediction_value"] + sum(attributions) == pytest.approx(
                row["prediction_value"], rel=1e-5
            )


def test_linear_explanations_are_weight_times_standardized_value(eng):
    frame = regression(5, seed=5)
    out = eng.explain_predict("linreg", frame, {"top_k_features": 10}).to_pylist()
    weights = eng.weights("linreg", {"standardize": True}).to_pandas().set_index("processed_input")
    info = eng.feature_info("linreg").to_pandas().set_index("input")
    for row, (_, values) in zip(out, frame.iterrows()):
        attr = {a["feature"]: a["attribution"] for a in row["top_feature_attributions"]}
        z = (values.spend - info.loc["spend", "mean"]) / info.loc["spend", "stddev"]
        assert attr["spend"] == pytest.approx(weights.weight["spend"] * z, rel=1e-9)
        assert row["baseline_prediction_value"] == pytest.approx(weights.weight["__INTERCEPT__"], rel=1e-12)
        assert row["prediction_value"] == pytest.approx(row["predicted_revenue"], rel=1e-12)


def test_global_explain_columns(eng):
    for name in ("logreg", "multi", "linreg", "btc", "rfr"):
        assert _schema(eng.global_explain(name)) == [("feature", STR), ("attribution", F64)]
    for name in ("logreg", "multi", "btc"):
        out = eng.global_explain(name, {"class_level_explain": True})
        assert _schema(out) == [("class_label", STR), ("feature", STR), ("attribution", F64)]
    assert set(
        eng.global_explain("multi", {"class_level_explain": True}).column("class_label").to_pylist()
    ) == {"basic", "plus", "pro"}


def test_feature_and_training_info_columns(eng):
    for name in ("logreg", "multi", "linreg", "km", "btc", "rfr"):
        assert _schema(eng.feature_info(name)) == FEATURE_INFO
    for name in ("logreg", "multi", "linreg", "btc", "rfr"):
        assert _schema(eng.training_info(name)) == TRAINING_INFO
    cluster_info = pa.list_(pa.struct([("centroid_id", I64), ("cluster_radius", F64), ("cluster_size", I64)]))
    assert _schema(eng.training_info("km")) == [
        ("training_run", I64),
        ("iteration", I64),
        ("loss", F64),
        ("learning_rate", F64),
        ("duration_ms", I64),
        ("cluster_info", cluster_info),
    ]
    iterations = eng.training_info("logreg").column("iteration").to_pylist()
    assert iterations == sorted(iterations, reverse=True) and iterations[-1] == 0


def test_weights_columns(eng):
    out = eng.weights("logreg")
    assert _schema(out) == WEIGHTS
    assert out.column("processed_input").to_pylist() == [
        "tenure",
        "spend",
        "visits",
        "segment",
        "opt_in",
        "__INTERCEPT__",
    ]
    assert out.column("weight").to_pylist()[3] is None
    assert _schema(eng.weights("multi")) == WEIGHTS + [("class_label", STR)]


def test_roc_curve_and_confusion_matrix(eng):
    frame = binary(300, seed=6)
    roc = eng.roc_curve("logreg", frame)
    assert _schema(roc) == [
        ("threshold", F64),
        ("recall", F64),
        ("false_positive_rate", F64),
        ("true_positives", I64),
        ("false_positives", I64),
        ("true_negatives", I64),
        ("false_negatives", I64),
    ]
    totals = (
        np.array(roc.column("true_positives"))
        + np.array(roc.column("false_positives"))
        + np.array(roc.column("true_negatives"))
        + np.array(roc.column("false_negatives"))
    )
    assert (totals == len(frame)).all()
    assert roc.num_rows <= 101
    custom = eng.roc_curve("logreg", frame, {"thresholds": [0.4, 0.5, 0.6]})
    assert custom.column("threshold").to_pylist() == [0.4, 0.5, 0.6]
    p = np.array(
        [
            [e["prob"] for e in r if e["label"]][0]
            for r in eng.predict("logreg", frame).column("predicted_label_probs").to_pylist()
        ]
    )
    y = frame.label.to_numpy()
    assert custom.column("true_positives")[1].as_py() == int(((p > 0.5) & y).sum())
    assert eng.roc_curve("logreg", None).num_rows > 0

    matrix = eng.confusion_matrix("logreg", frame)
    assert _schema(matrix) == [("expected_label", BOOL), ("false", I64), ("true", I64)]
    counts = matrix.to_pandas().set_index("expected_label")
    assert counts.loc[True, "true"] == int(((p > 0.5) & y).sum())
    assert counts.to_numpy().sum() == len(frame)
    multi = eng.confusion_matrix("multi", multiclass(100, seed=6))
    assert multi.column_names == ["expected_label", "basic", "plus", "pro"]
    assert _schema(eng.confusion_matrix("multi", None))[0] == ("expected_label", STR)
