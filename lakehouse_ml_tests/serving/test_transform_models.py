"""Models created with a TRANSFORM clause: the endpoint's predictor takes the TRANSFORM's input
columns, NULL as the documented sentinels, applies the TRANSFORM (its training statistics frozen
in) and answers what ML.PREDICT answers; the instances are checked against the input columns."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.bigquery import served
from lakehouse_ml.serving.models import BadInstance, TransformPredictor, load_predictor


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("transform")
    warehouse = LocalWarehouse.at(root / "warehouse.duckdb", models_dir=root / "models")
    rng = np.random.default_rng(11)
    n = 300
    frame = pd.DataFrame(
        {
            "spend": rng.lognormal(3.0, 1.0, n),
            "visits": rng.integers(0, 40, n).astype("int64"),
            "channel": rng.choice(["web", "app", "store"], n),
            "member": rng.random(n) < 0.4,
        }
    )
    frame.loc[::19, "spend"] = np.nan
    frame.loc[::23, "channel"] = None
    z = (
        0.8 * np.log1p(frame["spend"].fillna(20))
        - 0.05 * frame["visits"]
        + np.where(frame["member"], 0.6, 0.0)
    )
    frame["churned"] = rng.random(n) < 1 / (1 + np.exp(-(z - z.mean())))
    warehouse.load_dataframe(frame, "customers")
    warehouse.execute(
        """
        CREATE MODEL segments
        TRANSFORM (
          LN(1 + spend) AS log_spend,
          ML.STANDARD_SCALER(visits) OVER () AS visits_scaled,
          CONCAT(IFNULL(channel, 'none'), IF(member, '+', '-')) AS channel_member
        )
        OPTIONS (model_type = 'KMEANS', num_clusters = 4) AS
        SELECT spend, visits, channel, member FROM customers
        """
    )
    warehouse.execute(
        """
        CREATE MODEL churn
        TRANSFORM (LN(1 + spend) AS log_spend, visits, channel, member, churned)
        OPTIONS (model_type = 'LOGISTIC_REG', input_label_cols = ['churned']) AS
        SELECT * FROM customers
        """
    )
    return warehouse, frame


def _instances(frame: pd.DataFrame) -> list[dict]:
    """The rows as a client sends them to a TRANSFORM model: NULL as the sentinel of its type
    (123456789.0e10 for FLOAT64, ' __MISSING__ ' for STRING)."""
    rows = []
    for record in frame[["spend", "visits", "channel", "member"]].to_dict("records"):
        rows.append(
            {
                "spend": served.NULL_FLOAT64 if pd.isna(record["spend"]) else float(record["spend"]),
                "visits": int(record["visits"]),
                "channel": served.NULL_STRING
                if record["channel"] is None or pd.isna(record["channel"])
                else str(record["channel"]),
                "member": bool(record["member"]),
            }
        )
    return rows


def _distances(near) -> list[float]:
    """ML.PREDICT's NEAREST_CENTROIDS_DISTANCE in centroid-id order (a served prediction's order)."""
    return [d["DISTANCE"] for d in sorted(near, key=lambda d: d["CENTROID_ID"])]


def test_kmeans_with_transform_answers_ml_predict_on_the_raw_columns(warehouse):
    warehouse, frame = warehouse
    predictor = load_predictor(warehouse.bqml_engine().store.version_dir("segments"))
    assert isinstance(predictor, TransformPredictor)
    assert predictor.feature_names == ["spend", "visits", "channel", "member"]
    expected = warehouse.query(
        "SELECT * FROM ML.PREDICT(MODEL segments, (SELECT spend, visits, channel, member FROM customers))"
    )
    assert frame["spend"].isna().any() and frame["channel"].isna().any()  # NULLs went as sentinels
    _, answers = predictor.predict(_instances(frame))
    assert [p["nearest_centroid_id"] for p in answers] == [[c] for c in expected["CENTROID_ID"].tolist()]
    for prediction, near in zip(answers, expected["NEAREST_CENTROIDS_DISTANCE"]):
        assert prediction["centroid_ids"] == [1, 2, 3, 4]
        np.testing.assert_allclose(prediction["centroid_distances"], _distances(near), rtol=1e-9, atol=1e-12)


def test_classifier_with_transform_answers_ml_predict_without_the_label(warehouse):
    warehouse, frame = warehouse
    predictor = load_predictor(warehouse.bqml_engine().store.version_dir("churn"))
    assert predictor.feature_names == ["spend", "visits", "channel", "member"]  # the label is not an input
    expected = warehouse.query(
        "SELECT * FROM ML.PREDICT(MODEL churn, (SELECT spend, visits, channel, member FROM customers))"
    )
    _, answers = predictor.predict(_instances(frame))
    assert [p["predicted_churned"] for p in answers] == [
        [str(v).lower()] for v in expected["predicted_churned"]
    ]
    for prediction, probs in zip(answers, expected["predicted_churned_probs"]):
        by_label = {str(p["label"]).lower(): p["prob"] for p in probs}
        np.testing.assert_allclose(
            prediction["churned_probs"],
            [by_label[v] for v in prediction["churned_values"]],
            rtol=1e-9,
            atol=1e-12,
        )


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        ({"spend": 1.0, "visits": 2, "channel": "web"}, "missing feature(s) 'member'"),
        ({"log_spend": 1.0, "visits": 2, "channel": "web", "member": True}, "unknown feature(s) 'log_spend'"),
        (
            {"spend": "much", "visits": 2, "channel": "web", "member": True},
            "instances[0].spend must be a number",
        ),
        (
            {"spend": 1.0, "visits": 2, "channel": 3, "member": True},
            "instances[0].channel must be a JSON string",
        ),
    ],
)
def test_instances_are_checked_against_the_transform_inputs(warehouse, instance, message):
    warehouse, _ = warehouse
    predictor = load_predictor(warehouse.bqml_engine().store.version_dir("segments"))
    with pytest.raises(BadInstance, match=re.escape(message)):
        predictor.predict([instance])


def test_a_fractional_value_for_an_integer_input_is_used_as_given(warehouse):
    warehouse, _ = warehouse
    predictor = load_predictor(warehouse.bqml_engine().store.version_dir("segments"))
    whole = {"spend": 10.0, "visits": 3, "channel": "web", "member": True}
    _, (a, b) = predictor.predict([whole, whole | {"visits": 3.0}])
    assert a == b
    expected = warehouse.query(
        "SELECT * FROM ML.PREDICT(MODEL segments, (SELECT 10.0 AS "
        "spend, 3.5 AS visits, 'web' AS channel, TRUE AS member))"
    )
    _, (half,) = predictor.predict([whole | {"visits": 3.5}])
    assert half["centroid_distances"] == pytest.approx(_distances(expected["NEAREST_CENTROIDS_DISTANCE"][0]))


def test_null_goes_as_the_documented_sentinel_and_json_null_is_refused(warehouse):
    """ "Export models", Supported data types: a TRANSFORM model's NULL inputs are 123456789.0e10
    (FLOAT64), 1234567890000000000 (INT64) and ' __MISSING__ ' (STRING); no BOOL sentinel."""
    warehouse, _ = warehouse
    predictor = load_predictor(warehouse.bqml_engine().store.version_dir("segments"))
    expected = warehouse.query(
        "SELECT * FROM ML.PREDICT(MODEL segments, "
        "(SELECT CAST(NULL AS FLOAT64) AS spend, CAST(NULL AS INT64) "
        "AS visits, CAST(NULL AS STRING) AS channel, TRUE AS member))"
    )
    sentinels = {
        "spend": served.NULL_FLOAT64,
        "visits": served.NULL_INT64,
        "channel": served.NULL_STRING,
        "member": True,
    }
    rows, (answer,) = predictor.predict([sentinels])
    assert rows == [{"spend": None, "visits": None, "channel": None, "member": True}]
    assert answer["centroid_distances"] == pytest.approx(
        _distances(expected["NEAREST_CENTROIDS_DISTANCE"][0])
    )
    for name, sentinel in (
        ("spend", "1.23456789e+18"),
        ("visits", "1.23456789e+18"),
        ("channel", "' __MISSING__ '"),
    ):
        with pytest.raises(BadInstance, match=re.escape(f"instances[0].{name} is null")) as err:
            predictor.predict([sentinels | {name: None}])
        assert f"sentinel {sentinel}" in str(err.value)
    with pytest.raises(BadInstance, match="BOOL input of such a model has no NULL sentinel"):
        predictor.predict([sentinels | {"member": None}])
