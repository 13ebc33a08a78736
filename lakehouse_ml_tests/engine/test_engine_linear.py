"""LINEAR_REG: the normal equation against a closed-form least-squares fit, gradient descent,
and ML.EVALUATE's regression metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics
from sklearn.datasets import load_diabetes

from lakehouse_ml.core.errors import BqmlError

from .engine_data import engine, regression

REL = 1e-8


@pytest.fixture
def eng(tmp_path):
    return engine(tmp_path)


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    return load_diabetes(as_frame=True).frame  # 442 rows: AUTO_SPLIT keeps every row for training


def _lstsq_standardized(frame: pd.DataFrame, label: str):
    X = frame.drop(columns=[label]).to_numpy(dtype=float)
    y = frame[label].to_numpy(dtype=float)
    Z = (X - X.mean(axis=0)) / X.std(axis=0, ddof=1)
    design = np.column_stack([Z, np.ones(len(Z))])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    return design @ coef, coef


def test_diabetes_matches_closed_form_least_squares(eng, diabetes):
    eng.create_model("diabetes", {"model_type": "LINEAR_REG", "input_label_cols": ["target"]}, diabetes)
    fitted, coef = _lstsq_standardized(diabetes, "target")

    predicted = (
        eng.predict("diabetes", diabetes.drop(columns=["target"])).column("predicted_target").to_numpy()
    )
    np.testing.assert_allclose(predicted, fitted, rtol=REL)

    y = diabetes.target.to_numpy()
    expected = {
        "mean_absolute_error": metrics.mean_absolute_error(y, fitted),
        "mean_squared_error": metrics.mean_squared_error(y, fitted),
        "mean_squared_log_error": metrics.mean_squared_log_error(y, fitted),
        "median_absolute_error": metrics.median_absolute_error(y, fitted),
        "r2_score": metrics.r2_score(y, fitted),
        "explained_variance": metrics.explained_variance_score(y, fitted),
    }
    for evaluated in (eng.evaluate("diabetes", None), eng.evaluate("diabetes", diabetes)):
        assert evaluated.column_names == list(expected)
        for name, value in expected.items():
            assert evaluated.column(name)[0].as_py() == pytest.approx(value, rel=REL), name

    # ML.WEIGHTS: standardized weights are the closed form's; the default ones are on the raw scale.
    standardized = (
        eng.weights("diabetes", {"standardize": True}).to_pandas().set_index("processed_input").weight
    )
    names = list(diabetes.columns[:-1])
    np.testing.assert_allclose(standardized[names].to_numpy(), coef[:-1], rtol=1e-7)
    assert standardized["__INTERCEPT__"] == pytest.approx(coef[-1], rel=REL)
    raw = eng.weights("diabetes").to_pandas().set_index("processed_input").weight
    raw_coef = np.linalg.lstsq(
        np.column_stack([diabetes[names].to_numpy(), np.ones(len(diabetes))]),
        diabetes.target.to_numpy(),
        rcond=None,
    )[0]
    np.testing.assert_allclose(raw[names].to_numpy(), raw_coef[:-1], rtol=1e-7)
    assert raw["__INTERCEPT__"] == pytest.approx(raw_coef[-1], rel=1e-7)

    info = eng.training_info("diabetes").to_pandas()
    assert len(info) == 1 and info.iteration[0] == 0
    assert info.loss[0] == pytest.approx(expected["mean_squared_error"], rel=REL)
    assert eng.model_metadata("diabetes")["training"]["strategy"] == "NORMAL_EQUATION"


def test_ridge_normal_equation_matches_closed_form(eng, diabetes):
    l2 = 5.0
    eng.create_model(
        "ridge", {"model_type": "LINEAR_REG", "input_label_cols": ["target"], "l2_reg": l2}, diabetes
    )
    X = diabetes.drop(columns=["target"]).to_numpy(dtype=float)
    Z = (X - X.mean(axis=0)) / X.std(axis=0, ddof=1)
    A = np.column_stack([Z, np.ones(len(Z))])
    penalty = np.diag([l2] * Z.shape[1] + [0.0])  # the intercept is not regularized
    coef = np.linalg.solve(A.T @ A + penalty, A.T @ diabetes.target.to_numpy())
    predicted = eng.predict("ridge", diabetes).column("predicted_target").to_numpy()
    np.testing.assert_allclose(predicted, A @ coef, rtol=REL)


def test_categorical_normal_equation_fitted_values_match_lstsq(eng):
    frame = regression(2000, seed=3)
    eng.create_model(
        "rev",
        {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"], "data_split_method": "NO_SPLIT"},
        frame,
    )
    assert eng.model_metadata("rev")["training"]["strategy"] == "NORMAL_EQUATION"
    # Closed form on BigQuery ML's design: standardized numerics (NULL -> mean), one-hot categories
    # with a NULL category, one-hot BOOL.
    num = frame[["tenure", "spend", "visits"]].astype(float)
    num = num.fillna(num.mean())
    stats = frame[["tenure", "spend", "visits"]].astype(float)
    Z = ((num - stats.mean()) / stats.std(ddof=1)).to_numpy()
    seg = pd.get_dummies(frame.segment.fillna("__null__")).to_numpy(dtype=float)
    opt = pd.get_dummies(frame.opt_in).to_numpy(dtype=float)
    A = np.column_stack([Z, seg, opt, np.ones(len(frame))])
    fitted = A @ np.linalg.lstsq(A, frame.revenue.to_numpy(), rcond=None)[0]
    predicted = eng.predict("rev", frame).column("predicted_revenue").to_numpy()
    np.testing.assert_allclose(predicted, fitted, rtol=1e-9)


def test_gradient_descent_metrics_match_sklearn_on_its_predictions(eng):
    frame = regression(3000, seed=1)
    eng.create_model(
        "bgd",
        {
            "model_type": "LINEAR_REG",
            "input_label_cols": ["revenue"],
            "optimize_strategy": "BATCH_GRADIENT_DESCENT",
            "l1_reg": 1.0,
        },
        frame,
    )
    meta = eng.model_metadata("bgd")
    assert meta["training"]["strategy"] == "BATCH_GRADIENT_DESCENT"
    assert meta["data_split"] == {"method": "AUTO_SPLIT", "training_rows": 2400, "evaluation_rows": 600}
    held_out = regression(1000, seed=9)
    y = held_out.revenue.to_numpy()
    pred = eng.predict("bgd", held_out).column("predicted_revenue").to_numpy()
    evaluated = eng.evaluate("bgd", held_out).to_pylist()[0]
    assert evaluated["mean_absolute_error"] == pytest.approx(metrics.mean_absolute_error(y, pred), rel=1e-12)
    assert evaluated["mean_squared_error"] == pytest.approx(metrics.mean_squared_error(y, pred), rel=1e-12)
    assert evaluated["mean_squared_log_error"] == pytest.approx(
        metrics.mean_squared_log_error(y, pred), rel=1e-12
    )
    assert evaluated["median_absolute_error"] == pytest.approx(
        metrics.median_absolute_error(y, pred), rel=1e-12
    )
    assert evaluated["r2_score"] == pytest.approx(metrics.r2_score(y, pred), rel=1e-12)
    assert evaluated["explained_variance"] == pytest.approx(
        metrics.explained_variance_score(y, pred), rel=1e-12
    )
    assert evaluated["r2_score"] > 0.9  # it really learned
    info = eng.training_info("bgd").to_pandas()
    assert 1 <= len(info) <= 20 and info.eval_loss.notna().all()
    assert (np.diff(info.sort_values("iteration").loss) <= 1e-9).all()  # the loss goes down


def test_auto_strategy_rules(eng):
    frame = regression(600, seed=2)
    # fewer than 10 rows per unit of cardinality -> batch gradient descent
    few = frame.head(60)
    eng.create_model("few", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, few)
    assert eng.model_metadata("few")["training"]["strategy"] == "BATCH_GRADIENT_DESCENT"
    # L1_REG -> batch gradient descent; NORMAL_EQUATION refuses it
    eng.create_model(
        "l1", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"], "l1_reg": 0.5}, frame
    )
    assert eng.model_metadata("l1")["training"]["strategy"] == "BATCH_GRADIENT_DESCENT"
    with pytest.raises(BqmlError, match="NORMAL_EQUATION.*L1_REG"):
        eng.create_model(
            "ne",
            {
                "model_type": "LINEAR_REG",
                "input_label_cols": ["revenue"],
                "l1_reg": 0.5,
                "optimize_strategy": "NORMAL_EQUATION",
            },
            frame,
        )


def test_constant_learning_rate_uses_the_given_rate(eng):
    frame = regression(800, seed=4)
    eng.create_model(
        "const",
        {
            "model_type": "LINEAR_REG",
            "input_label_cols": ["revenue"],
            "optimize_strategy": "BATCH_GRADIENT_DESCENT",
            "learn_rate_strategy": "CONSTANT",
            "learn_rate": 0.2,
            "max_iterations": 7,
            "early_stop": False,
        },
        frame,
    )
    info = eng.training_info("const").to_pandas()
    assert sorted(info.iteration) == list(range(7))
    assert (info.learning_rate == 0.2).all()
