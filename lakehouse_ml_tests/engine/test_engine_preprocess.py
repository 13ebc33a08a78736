"""Automatic preprocessing: NULLs, unseen categories, BOOL/DATE/TIMESTAMP inputs, ML.FEATURE_INFO."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.core.errors import BqmlError

from .engine_data import binary, engine, regression


@pytest.fixture
def eng(tmp_path):
    return engine(tmp_path)


def _weights(eng, name):
    table = eng.weights(name).to_pandas().set_index("processed_input")
    numeric = table.weight.dropna().to_dict()
    categories = {
        k: {c["category"]: c["weight"] for c in v} for k, v in table.category_weights.items() if len(v)
    }
    return numeric, categories


def _predict(eng, name, frame, label="revenue"):
    return eng.predict(name, frame).column(f"predicted_{label}").to_numpy()


def test_numeric_null_is_the_training_mean(eng):
    frame = regression(1500)
    eng.create_model("rev", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, frame)
    mean = eng.feature_info("rev").to_pandas().set_index("input").loc["tenure", "mean"]
    assert mean == pytest.approx(frame.tenure.mean(), rel=1e-12)  # over the original input data
    probe = frame.head(5).copy()
    probe["tenure"] = np.nan
    np.testing.assert_allclose(
        _predict(eng, "rev", probe), _predict(eng, "rev", probe.assign(tenure=mean)), rtol=1e-12
    )


def test_categorical_null_is_its_own_category_and_unseen_contributes_nothing(eng):
    frame = regression(1500)
    eng.create_model("rev", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, frame)
    _, categories = _weights(eng, "rev")
    segment = categories["segment"]
    assert set(segment) == {"bronze", "gold", "silver", None}  # NULL is a category of its own
    assert segment[None] != 0.0
    assert set(categories["opt_in"]) == {"false", "true"}  # BOOL is one-hot encoded too

    probe = frame.head(6).copy()
    probe["segment"] = "gold"
    gold = _predict(eng, "rev", probe)
    np.testing.assert_allclose(
        _predict(eng, "rev", probe.assign(segment=None)) - gold, segment[None] - segment["gold"], rtol=1e-9
    )
    # An unseen category contributes nothing: gold's contribution is removed and nothing added.
    np.testing.assert_allclose(
        _predict(eng, "rev", probe.assign(segment="platinum")), gold - segment["gold"], rtol=1e-9
    )


def test_null_in_prediction_without_nulls_in_training_contributes_nothing(eng):
    frame = regression(800, seed=1)
    frame["segment"] = frame.segment.fillna("gold")
    eng.create_model("rev", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, frame)
    _, categories = _weights(eng, "rev")
    assert None not in categories["segment"]
    probe = frame.head(3).assign(segment="gold")
    np.testing.assert_allclose(
        _predict(eng, "rev", probe.assign(segment=None)),
        _predict(eng, "rev", probe) - categories["segment"]["gold"],
        rtol=1e-9,
    )


def test_dummy_encoding_drops_the_most_frequent_category(eng):
    frame = regression(1200, seed=2)
    frame.loc[:700, "segment"] = "silver"
    eng.create_model(
        "dummy",
        {
            "model_type": "LINEAR_REG",
            "input_label_cols": ["revenue"],
            "category_encoding_method": "DUMMY_ENCODING",
        },
        frame,
    )
    _, categories = _weights(eng, "dummy")
    assert categories["segment"]["silver"] == 0.0  # still listed by ML.WEIGHTS, with weight 0


def test_date_and_timestamp_inputs(eng):
    frame = regression(900, seed=3)
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2024-01-01")
    frame["signup_date"] = [
        d.date() for d in start + pd.to_timedelta(rng.integers(0, 5, len(frame)), unit="D")
    ]
    frame["last_seen"] = start + pd.to_timedelta(rng.integers(0, 86400 * 60, len(frame)), unit="s")
    frame.loc[3, "last_seen"] = pd.NaT
    eng.create_model("dates", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, frame)
    numeric, categories = _weights(eng, "dates")
    assert set(categories["signup_date"]) == {f"2024-01-0{d}" for d in range(1, 6)}  # DATE: one-hot
    assert "last_seen" in numeric  # TIMESTAMP: Unix seconds, standardized ...
    for prefix in ("_TS_DOM_", "_TS_DOW_", "_TS_MOY_", "_TS_HOD_", "_TS_MOH_", "_TS_WOY_", "_TS_YEAR_"):
        assert prefix + "last_seen" in categories  # ... plus one-hot components
    assert set(categories["_TS_DOW_last_seen"]) == {str(d) for d in range(1, 8)} | {None}  # 1 = Sunday … 7
    assert set(categories["_TS_MOY_last_seen"]) == {"1", "2", None}  # 60 days from 2024-01-01
    # 2024-01-07 is a Sunday: week 1 (weeks begin on Sunday; the days before are week 0)
    model = eng._load("dates")
    probe = frame.head(2).assign(
        last_seen=[pd.Timestamp("2024-01-06 10:00"), pd.Timestamp("2024-01-07 10:00")]
    )
    design = model.prep.design(probe)
    woy = model.prep.categorical[[s.name for s in model.prep.categorical].index("_TS_WOY_last_seen")]
    assert [
        woy.categories[c]
        for c in design.codes[[s.name for s in model.prep.categorical].index("_TS_WOY_last_seen")]
    ] == ["0", "1"]
    info = eng.feature_info("dates").to_pandas().set_index("input")
    assert info.loc["last_seen", "null_count"] == 1
    assert info.loc["signup_date", "category_count"] == 5

    with pytest.raises(BqmlError, match="TIMESTAMP"):
        eng.create_model(
            "tree", {"model_type": "BOOSTED_TREE_REGRESSOR", "input_label_cols": ["revenue"]}, frame
        )
    assert not eng.model_exists("tree")


def test_feature_info_statistics(eng):
    frame = binary(1000, seed=4)
    eng.create_model("churn", {"model_type": "LOGISTIC_REG"}, frame)
    info = eng.feature_info("churn")
    assert info.column_names == [
        "input",
        "min",
        "max",
        "mean",
        "median",
        "stddev",
        "category_count",
        "null_count",
        "dimension",
    ]
    assert [str(t) for t in info.schema.types] == ["string"] + ["double"] * 5 + ["int64"] * 3
    table = info.to_pandas().set_index("input")
    assert list(table.index) == [
        "tenure",
        "spend",
        "visits",
        "segment",
        "opt_in",
    ]  # the label is not a feature
    tenure = frame.tenure
    assert table.loc["tenure", "min"] == tenure.min() and table.loc["tenure", "max"] == tenure.max()
    assert table.loc["tenure", "mean"] == pytest.approx(tenure.mean(), rel=1e-12)
    assert table.loc["tenure", "median"] == pytest.approx(tenure.median(), rel=1e-12)
    assert table.loc["tenure", "stddev"] == pytest.approx(tenure.std(ddof=1), rel=1e-12)
    assert table.loc["tenure", "null_count"] == tenure.isna().sum()
    assert pd.isna(table.loc["tenure", "category_count"])
    assert table.loc["segment", "category_count"] == 3
    assert table.loc["segment", "null_count"] == frame.segment.isna().sum()
    assert pd.isna(table.loc["segment", "mean"])
    assert table.loc["opt_in", "category_count"] == 2
    assert info.column("dimension").null_count == info.num_rows


def test_feature_info_describes_the_pre_transform_columns(eng):
    raw = regression(600, seed=5)
    transformed = raw.assign(spend=np.log1p(raw.spend)).drop(columns=["visits"])
    eng.create_model(
        "t",
        {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]},
        transformed,
        transform_sql="LOG(1 + spend) AS spend, * EXCEPT (spend, visits)",
        input_frame=raw,
    )
    info = eng.feature_info("t").to_pandas().set_index("input")
    assert "visits" in info.index
    assert info.loc["spend", "mean"] == pytest.approx(raw.spend.mean(), rel=1e-12)
    assert eng.model_metadata("t")["transform_sql"].startswith("LOG(1 + spend)")


def test_unsupported_input_type_is_named(eng):
    frame = regression(100)
    frame["tags"] = [["a", "b"]] * len(frame)
    with pytest.raises(BqmlError, match="type ARRAY"):
        eng.create_model("arr", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, frame)


def test_prediction_input_types_are_checked(eng):
    frame = regression(300)
    eng.create_model("rev", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, frame)
    with pytest.raises(BqmlError, match="'segment' is INT64, but the model was trained on it as STRING"):
        eng.predict("rev", frame.assign(segment=1))
    # integers for a FLOAT64 feature, and columns that are entirely NULL, are fine
    out = eng.predict("rev", frame.assign(tenure=frame.tenure.fillna(0).astype(int), segment=None))
    assert out.num_rows == len(frame)
    # column names match case-insensitively
    assert eng.predict("rev", frame.rename(columns={"tenure": "TENURE"})).num_rows == len(frame)
    with pytest.raises(BqmlError, match="has no column 'spend'"):
        eng.predict("rev", frame.drop(columns=["spend"]))
    assert dt  # noqa: B018 - imported for the DATE helpers above
