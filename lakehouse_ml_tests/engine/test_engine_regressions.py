"""Cases that once went wrong: numeric-only logistic regression, splits of data with many
identical rows, and the anomaly rate of overlapping k-means clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.bigquery.split import split
from lakehouse_ml.engine.engine import BqmlEngine


@pytest.fixture()
def eng(tmp_path):
    return BqmlEngine(tmp_path / "models")


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_regression_with_numeric_features_only(eng, classes):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=800), "b": rng.normal(size=800)})
    frame["label"] = np.digitize(
        frame.a + 0.3 * rng.normal(size=800), np.linspace(-0.5, 0.5, classes - 1)
    ).astype(str)
    eng.create_model("m", {"model_type": "LOGISTIC_REG", "input_label_cols": ["label"]}, frame)
    metrics = eng.evaluate("m", None).to_pylist()[0]
    # Chance is 1/2 or 1/3; the noise keeps accuracy near 0.7-0.8, depending on the random split.
    assert metrics["accuracy"] > 0.65 and metrics["roc_auc"] > 0.85


def test_logistic_regression_with_categorical_features_only(eng):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"c": rng.choice(list("xyz"), 900)})
    frame["label"] = np.where(frame.c == "x", "p", np.where(rng.random(900) < 0.5, "q", "r"))
    eng.create_model("m", {"model_type": "LOGISTIC_REG", "input_label_cols": ["label"]}, frame)
    predictions = eng.predict("m", pd.DataFrame({"c": ["x", "y"]})).column("predicted_label").to_pylist()
    assert predictions[0] == "p" and predictions[1] in ("q", "r")


def test_random_split_of_identical_rows_is_not_all_or_nothing():
    # 6 distinct rows, each repeated 100 times: a split keyed on the values alone would put every
    # copy of a row on the same side.
    frame = pd.DataFrame({"c": list("abcdef") * 100, "label": [True, False, True, False, True, False] * 100})
    result = split(frame, "RANDOM", 0.2, None)
    per_row = pd.Series(result.eval_mask).groupby(frame.c).mean()
    assert result.eval_mask.sum() == 120
    assert ((per_row > 0.05) & (per_row < 0.4)).all(), per_row.to_dict()
    # Still independent of the row order.
    shuffled = frame.sample(frac=1, random_state=3)
    again = split(shuffled, "RANDOM", 0.2, None)
    assert pd.Series(again.eval_mask, index=shuffled.index).groupby(shuffled.c).sum().to_dict() == (
        pd.Series(result.eval_mask).groupby(frame.c).sum().to_dict()
    )


def test_anomaly_rate_on_training_rows_is_the_contamination_for_overlapping_clusters(eng):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(5000, 4)), columns=list("abcd"))  # one blob, 6 clusters
    eng.create_model("km", {"model_type": "KMEANS", "num_clusters": 6}, frame)
    for contamination in (0.02, 0.1):
        flagged = eng.detect_anomalies("km", frame, {"contamination": contamination}).column("is_anomaly")
        assert np.mean(flagged.to_numpy(zero_copy_only=False)) == pytest.approx(contamination, abs=0.003)
    out = eng.detect_anomalies("km", frame, {"contamination": 0.02})
    assert out.column("CENTROID_ID").to_pylist() == eng.predict("km", frame).column("CENTROID_ID").to_pylist()


def test_kmeans_model_does_not_depend_on_row_order(tmp_path):
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(size=(3000, 3)), columns=list("abc"))
    frame["segment"] = rng.choice(["x", "y", "z"], 3000)
    first, second = BqmlEngine(tmp_path / "one"), BqmlEngine(tmp_path / "two")
    for method in ("RANDOM", "KMEANS++"):
        options = {"model_type": "KMEANS", "num_clusters": 5, "kmeans_init_method": method}
        first.create_model("km", options, frame, replace=True)
        second.create_model(
            "km", options, frame.sample(frac=1, random_state=9).reset_index(drop=True), replace=True
        )
        a, b = first.evaluate("km", None).to_pylist()[0], second.evaluate("km", None).to_pylist()[0]
        assert a == pytest.approx(b, rel=1e-9)
        assert first.predict("km", frame).column("CENTROID_ID").to_pylist() == (
            second.predict("km", frame).column("CENTROID_ID").to_pylist()
        )


def test_kmeans_model_does_not_depend_on_integer_or_float_types(tmp_path):
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"a": rng.integers(0, 50, 2000), "b": rng.normal(size=2000)})
    as_float = frame.astype({"a": "float64"})
    as_nullable = frame.astype({"a": "Int64"})
    results = []
    for i, variant in enumerate((frame, as_float, as_nullable)):
        engine = BqmlEngine(tmp_path / str(i))
        engine.create_model(
            "km", {"model_type": "KMEANS", "num_clusters": 4, "kmeans_init_method": "KMEANS++"}, variant
        )
        results.append(engine.evaluate("km", None).to_pylist()[0])
    assert results[1] == pytest.approx(results[0], rel=1e-12)
    assert results[2] == pytest.approx(results[0], rel=1e-12)
