"""Boosted tree and random forest models through the engine: label encoding, metrics against
scikit-learn, Tree SHAP explanations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics

from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine import xgb

from .engine_data import binary, engine, multiclass, regression


@pytest.fixture
def eng(tmp_path):
    return engine(tmp_path)


def _probs(table, label, classes):
    rows = table.column(f"predicted_{label}_probs").to_pylist()
    return np.array([[next(p["prob"] for p in row if p["label"] == c) for c in classes] for row in rows])


@pytest.mark.parametrize("model_type", ["BOOSTED_TREE_CLASSIFIER", "RANDOM_FOREST_CLASSIFIER"])
def test_tree_classifier_metrics_equal_sklearn(eng, model_type):
    eng.create_model("tc", {"model_type": model_type, "enable_global_explain": True}, binary(1500))
    held_out = binary(800, seed=8)
    y = held_out.label.to_numpy()
    p = _probs(eng.predict("tc", held_out), "label", [True])[:, 0]
    got = eng.evaluate("tc", held_out).to_pylist()[0]
    pred = p > 0.5
    assert got["precision"] == pytest.approx(metrics.precision_score(y, pred), rel=1e-12)
    assert got["recall"] == pytest.approx(metrics.recall_score(y, pred), rel=1e-12)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), rel=1e-12)
    assert got["f1_score"] == pytest.approx(metrics.f1_score(y, pred), rel=1e-12)
    assert got["log_loss"] == pytest.approx(metrics.log_loss(y, p), rel=1e-9)
    assert got["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, p), rel=1e-12)
    assert got["roc_auc"] > 0.7

    explained = eng.explain_predict("tc", held_out.head(50), {"top_k_features": 10})
    rows = explained.to_pylist()
    for row in rows:
        total = row["baseline_prediction_value"] + sum(
            a["attribution"] for a in row["top_feature_attributions"]
        )
        assert total == pytest.approx(row["prediction_value"], abs=1e-5)
        # prediction_value is the logit of the predicted class
        assert 1 / (1 + np.exp(-row["prediction_value"])) == pytest.approx(row["probability"], abs=1e-5)
        assert row["approximation_error"] == 0.0
    features = eng.global_explain("tc").to_pandas()
    assert set(features.feature) == {"tenure", "spend", "visits", "segment", "opt_in"}
    assert features.attribution.is_monotonic_decreasing


def test_boosted_tree_multiclass(eng):
    eng.create_model(
        "bt", {"model_type": "BOOSTED_TREE_CLASSIFIER", "input_label_cols": ["plan"]}, multiclass(1500)
    )
    held_out = multiclass(600, seed=4)
    classes = ["basic", "plus", "pro"]
    probs = _probs(eng.predict("bt", held_out), "plan", classes)
    y = held_out.plan.to_numpy()
    pred = np.array(classes, dtype=object)[probs.argmax(axis=1)]
    got = eng.evaluate("bt", held_out).to_pylist()[0]
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), rel=1e-12)
    assert got["f1_score"] == pytest.approx(metrics.f1_score(y, pred, average="macro"), rel=1e-12)
    assert got["roc_auc"] == pytest.approx(
        metrics.roc_auc_score(y, probs, multi_class="ovr", labels=classes), rel=1e-9
    )


@pytest.mark.parametrize("model_type", ["BOOSTED_TREE_REGRESSOR", "RANDOM_FOREST_REGRESSOR"])
def test_tree_regressor_metrics_equal_sklearn(eng, model_type):
    eng.create_model("tr", {"model_type": model_type, "input_label_cols": ["revenue"]}, regression(1500))
    held_out = regression(600, seed=6)
    y = held_out.revenue.to_numpy()
    pred = eng.predict("tr", held_out).column("predicted_revenue").to_numpy()
    got = eng.evaluate("tr", held_out).to_pylist()[0]
    assert got["mean_squared_error"] == pytest.approx(metrics.mean_squared_error(y, pred), rel=1e-12)
    assert got["r2_score"] == pytest.approx(metrics.r2_score(y, pred), rel=1e-12)
    assert got["median_absolute_error"] == pytest.approx(metrics.median_absolute_error(y, pred), rel=1e-12)
    assert got["r2_score"] > 0.6
    info = eng.training_info("tr").to_pandas()
    if model_type.startswith("RANDOM_FOREST"):
        assert len(info) == 1  # one round of NUM_PARALLEL_TREE trees
    row = eng.explain_predict("tr", held_out.head(1)).to_pylist()[0]
    assert row["prediction_value"] == pytest.approx(row["predicted_revenue"], rel=1e-5)


def test_tree_label_encoding_and_defaults(eng):
    frame = binary(600, seed=2)
    eng.create_model("bt", {"model_type": "BOOSTED_TREE_CLASSIFIER"}, frame)
    model = eng._load("bt")
    X = model.prep.tree_matrix(frame.assign(segment=frame.segment.where(frame.index != 0, "platinum")))
    segment = X[:, model.prep.feature_names.index("segment")]
    # sorted vocabulary bronze, gold, silver -> 1, 2, 3; NULL and unseen -> 0 (auto-preprocessing page)
    expected = frame.segment.map({"bronze": 1.0, "gold": 2.0, "silver": 3.0}).fillna(0.0).to_numpy()
    expected[0] = 0.0
    np.testing.assert_array_equal(segment, expected)
    np.testing.assert_array_equal(
        X[:, model.prep.feature_names.index("opt_in")], frame.opt_in.astype(float) + 1
    )
    tenure = X[:, model.prep.feature_names.index("tenure")]
    assert tenure[frame.tenure.isna().to_numpy()] == pytest.approx(
        frame.tenure.mean()
    )  # NULL -> mean, unscaled
    assert (
        eng.model_metadata("bt")["options"]["max_tree_depth"]
        == xgb.OPTION_DEFAULTS["BOOSTED_TREE_CLASSIFIER"]["max_tree_depth"]
    )


def test_tree_options_are_validated(eng):
    with pytest.raises(BqmlError, match="LEARN_RATE"):
        eng.create_model(
            "rf",
            {"model_type": "RANDOM_FOREST_REGRESSOR", "input_label_cols": ["revenue"], "learn_rate": 0.1},
            regression(100),
        )
    assert not eng.model_exists("rf")
