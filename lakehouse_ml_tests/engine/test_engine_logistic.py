"""LOGISTIC_REG: binary and multiclass training, class weights, and ML.EVALUATE's classification
metrics against scikit-learn on the same predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics
from sklearn.linear_model import LogisticRegression

from .engine_data import binary, engine, multiclass


@pytest.fixture
def eng(tmp_path):
    return engine(tmp_path)


def _positive_probs(table, label="label", positive=True) -> np.ndarray:
    probs = table.column(f"predicted_{label}_probs").to_pylist()
    return np.array([next(p["prob"] for p in row if p["label"] == positive) for row in probs])


def _design(frame: pd.DataFrame, reference: pd.DataFrame) -> np.ndarray:
    num = reference[["tenure", "spend", "visits"]].astype(float)
    values = frame[["tenure", "spend", "visits"]].astype(float).fillna(num.mean())
    Z = ((values - num.mean()) / num.std(ddof=1)).to_numpy()
    seg = np.column_stack(
        [(frame.segment == s).to_numpy() for s in ["bronze", "gold", "silver"]]
        + [frame.segment.isna().to_numpy()]
    )
    opt = np.column_stack([~frame.opt_in.to_numpy(), frame.opt_in.to_numpy()])
    return np.column_stack([Z, seg, opt]).astype(float)


def test_binary_metrics_equal_sklearn_on_the_same_predictions(eng):
    eng.create_model("churn", {"model_type": "LOGISTIC_REG"}, binary(3000))
    held_out = binary(2000, seed=5)
    y = held_out.label.to_numpy()
    prediction = eng.predict("churn", held_out)
    p = _positive_probs(prediction)
    for threshold in (None, 0.3, 0.62):
        t = 0.5 if threshold is None else threshold
        options = {} if threshold is None else {"threshold": threshold}
        got = eng.evaluate("churn", held_out, options).to_pylist()[0]
        pred = p > t
        assert got["precision"] == pytest.approx(metrics.precision_score(y, pred), rel=1e-12)
        assert got["recall"] == pytest.approx(metrics.recall_score(y, pred), rel=1e-12)
        assert got["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), rel=1e-12)
        assert got["f1_score"] == pytest.approx(metrics.f1_score(y, pred), rel=1e-12)
        assert got["log_loss"] == pytest.approx(metrics.log_loss(y, p), rel=1e-9)
        assert got["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, p), rel=1e-12)
        predicted_label = (
            eng.predict("churn", held_out, options).column("predicted_label").to_numpy(zero_copy_only=False)
        )
        np.testing.assert_array_equal(predicted_label, pred)
    assert metrics.roc_auc_score(y, p) > 0.75  # it really learned


def test_threshold_above_every_probability_gives_nan_precision(eng):
    eng.create_model("churn", {"model_type": "LOGISTIC_REG"}, binary(1000))
    got = eng.evaluate("churn", binary(500, seed=2), {"threshold": 1.0}).to_pylist()[0]
    assert np.isnan(got["precision"]) and got["recall"] == 0.0


def test_converged_model_matches_sklearn_logistic_regression(eng):
    frame = binary(2500, seed=11)
    eng.create_model(
        "conv",
        {
            "model_type": "LOGISTIC_REG",
            "data_split_method": "NO_SPLIT",
            "early_stop": False,
            "max_iterations": 300,
        },
        frame,
    )
    X = _design(frame, frame)
    reference = LogisticRegression(C=1e12, max_iter=5000, tol=1e-10).fit(X, frame.label)  # unregularized
    p = _positive_probs(eng.predict("conv", frame))
    np.testing.assert_allclose(p, reference.predict_proba(X)[:, 1], atol=2e-5)


def test_l2_regularization_matches_sklearn_ridge_logistic(eng):
    frame = binary(2000, seed=12)
    l2 = 25.0
    eng.create_model(
        "l2",
        {
            "model_type": "LOGISTIC_REG",
            "data_split_method": "NO_SPLIT",
            "early_stop": False,
            "max_iterations": 300,
            "l2_reg": l2,
        },
        frame,
    )
    X = _design(frame, frame)
    # sklearn minimizes ½‖w‖² + C Σ loss; BigQuery ML's Σ loss + L2_REG ‖w‖² is the same with
    # C = 1 / (2 L2_REG).
    reference = LogisticRegression(C=1 / (2 * l2), max_iter=5000, tol=1e-10).fit(X, frame.label)
    p = _positive_probs(eng.predict("l2", frame))
    np.testing.assert_allclose(p, reference.predict_proba(X)[:, 1], atol=2e-5)


def test_l1_regularization_zeroes_weights(eng):
    frame = binary(2000, seed=13)
    frame["noise"] = np.random.default_rng(0).normal(size=len(frame))
    eng.create_model(
        "l1",
        {
            "model_type": "LOGISTIC_REG",
            "l1_reg": 60.0,
            "early_stop": False,
            "max_iterations": 200,
            "data_split_method": "NO_SPLIT",
        },
        frame,
    )
    weights = eng.weights("l1", {"standardize": True}).to_pandas().set_index("processed_input").weight
    assert abs(weights["noise"]) < 1e-6
    assert abs(weights["tenure"]) > 0.1


def test_multiclass_macro_metrics_equal_sklearn(eng):
    eng.create_model("plan", {"model_type": "LOGISTIC_REG", "input_label_cols": ["plan"]}, multiclass(3000))
    held_out = multiclass(1500, seed=7)
    y = held_out.plan.to_numpy()
    prediction = eng.predict("plan", held_out)
    classes = ["basic", "plus", "pro"]
    probs = np.array(
        [
            [next(p["prob"] for p in row if p["label"] == c) for c in classes]
            for row in prediction.column("predicted_plan_probs").to_pylist()
        ]
    )
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    pred = np.array(classes, dtype=object)[probs.argmax(axis=1)]
    np.testing.assert_array_equal(prediction.column("predicted_plan").to_numpy(zero_copy_only=False), pred)
    got = eng.evaluate("plan", held_out).to_pylist()[0]
    assert got["precision"] == pytest.approx(metrics.precision_score(y, pred, average="macro"), rel=1e-12)
    assert got["recall"] == pytest.approx(metrics.recall_score(y, pred, average="macro"), rel=1e-12)
    assert got["f1_score"] == pytest.approx(metrics.f1_score(y, pred, average="macro"), rel=1e-12)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), rel=1e-12)
    assert got["roc_auc"] == pytest.approx(
        metrics.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=classes), rel=1e-12
    )
    # log_loss is macro-averaged too: the mean over classes of each class's one-vs-rest log loss.
    per_class = [metrics.log_loss(y == c, probs[:, i], labels=[False, True]) for i, c in enumerate(classes)]
    assert got["log_loss"] == pytest.approx(np.mean(per_class), rel=1e-9)
    assert got["accuracy"] > 0.5
    weights = eng.weights("plan").to_pandas()
    assert sorted(weights.class_label.unique()) == classes
    assert len(weights) == 3 * (5 + 1)


def test_auto_class_weights_formula(eng):
    frame = binary(2000, seed=3)
    frame["label"] = frame.label & (np.arange(len(frame)) % 3 == 0)  # imbalanced
    eng.create_model(
        "auto",
        {"model_type": "LOGISTIC_REG", "auto_class_weights": True, "data_split_method": "NO_SPLIT"},
        frame,
    )
    meta = eng.store.load_meta("auto")
    counts = frame.label.value_counts()
    n = len(frame)
    expected = [n / (counts[False] * 2), n / (counts[True] * 2)]  # total / (rows_in_class * classes)
    np.testing.assert_allclose(meta["class_weights"], expected, rtol=1e-12)
    unweighted = eng.create_model(
        "plain", {"model_type": "LOGISTIC_REG", "data_split_method": "NO_SPLIT"}, frame
    )
    assert unweighted
    p_auto = _positive_probs(eng.predict("auto", frame))
    p_plain = _positive_probs(eng.predict("plain", frame))
    assert p_auto.mean() > p_plain.mean() + 0.1  # balancing raises the minority class's probability


def test_class_weights_option(eng):
    frame = binary(1500, seed=4)
    eng.create_model(
        "cw",
        {
            "model_type": "LOGISTIC_REG",
            "class_weights": [("true", 3.0), ("false", 1.0)],
            "data_split_method": "NO_SPLIT",
        },
        frame,
    )
    assert eng.store.load_meta("cw")["class_weights"] == [1.0, 3.0]
    eng.create_model("plain", {"model_type": "LOGISTIC_REG", "data_split_method": "NO_SPLIT"}, frame)
    assert (
        _positive_probs(eng.predict("cw", frame)).mean() > _positive_probs(eng.predict("plain", frame)).mean()
    )


def test_string_and_integer_labels_keep_their_type(eng):
    frame = binary(800, seed=6)
    frame["label"] = frame.label.astype(int)
    eng.create_model("intlabel", {"model_type": "LOGISTIC_REG"}, frame)
    out = eng.predict("intlabel", frame.head(3))
    assert str(out.schema.field("predicted_label").type) == "int64"
    assert [p["label"] for p in out.column("predicted_label_probs")[0].as_py()] == [
        1,
        0,
    ]  # higher label first
