"""Manual preprocessing functions and the TRANSFORM clause.

The expected values are the examples of the BigQuery ML reference pages
(https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-<function>).
Each function is checked three ways where it applies: in a plain query (lowered to SQL), frozen
into a TRANSFORM clause (statistics of the training rows written in as literals), and through a
real model (``ML.TRANSFORM`` of a model created with that TRANSFORM clause)."""

from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlglot
from sqlglot import exp

from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.bigquery.dialect import parse_select_list
from lakehouse_ml.core.errors import BqmlError, WarehouseError
from lakehouse_ml.engine.sql import freeze_transform, lower_preprocessing
from lakehouse_ml.engine.translate import translate_query

ONE_TO_FIVE = [1, 2, 3, 4, 5]
WITH_NULL = [None, -3, 1, 2, 3, 4, 5]

# (values of f, TRANSFORM item, expected output per value) from the reference examples.
EXAMPLES = {
    "standard_scaler": (
        ONE_TO_FIVE,
        "ML.STANDARD_SCALER(f) OVER() AS output",
        [-1.2649110640673518, -0.6324555320336759, 0.0, 0.6324555320336759, 1.2649110640673518],
    ),
    "min_max_scaler": (ONE_TO_FIVE, "ML.MIN_MAX_SCALER(f) OVER() AS output", [0.0, 0.25, 0.5, 0.75, 1.0]),
    "max_abs_scaler": (
        WITH_NULL,
        "ML.MAX_ABS_SCALER(f) OVER () AS output",
        [None, -0.6, 0.2, 0.4, 0.6, 0.8, 1.0],
    ),
    "robust_scaler": (
        WITH_NULL,
        "ML.ROBUST_SCALER(f) OVER () AS output",
        [None, -1.6666666666666667, -0.3333333333333333, 0.0, 0.3333333333333333, 0.6666666666666666, 1.0],
    ),
    "quantile_bucketize": (
        ONE_TO_FIVE,
        "ML.QUANTILE_BUCKETIZE(f, 3) OVER() AS output",
        ["bin_1", "bin_2", "bin_2", "bin_3", "bin_3"],
    ),
    "quantile_bucketize_ranges": (
        ONE_TO_FIVE,
        "ML.QUANTILE_BUCKETIZE(f, 3, 'bucket_ranges') OVER() AS output",
        ["(-inf, 2)", "[2, 4)", "[2, 4)", "[4, +inf)", "[4, +inf)"],
    ),
    "quantile_bucketize_json": (
        ONE_TO_FIVE,
        "ML.QUANTILE_BUCKETIZE(f, 3, 'bucket_ranges_json') OVER() AS output",
        [
            json.dumps(v)
            for v in (
                {"start": "-Infinity", "end": "2"},
                {"start": "2", "end": "4"},
                {"start": "2", "end": "4"},
                {"start": "4", "end": "Infinity"},
                {"start": "4", "end": "Infinity"},
            )
        ],
    ),
    "imputer_mean": (
        [None, -3, -3, -3, 1, 2, 3, 4, 5],
        "ML.IMPUTER(f, 'mean') OVER () AS output",
        [0.75, -3.0, -3.0, -3.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    ),
    "imputer_median": (
        [None, -3, 1, 2, 3, 4, 5],
        "ML.IMPUTER(f, 'median') OVER () AS output",
        [2.0, -3.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    ),
    "imputer_most_frequent": (
        [None, None, None, None, "a", "a", "b", "b", "c", "c", "c"],
        "ML.IMPUTER(f, 'most_frequent') OVER () AS output",
        ["c", "c", "c", "c", "a", "a", "b", "b", "c", "c", "c"],
    ),
    "label_encoder": (
        [None, "a", "b", "b", "c", "c", "c", "d", "d"],
        "ML.LABEL_ENCODER(f, 2, 2) OVER () AS output",
        [0, 0, 1, 1, 2, 2, 2, 0, 0],
    ),
    "bucketize": (
        ONE_TO_FIVE,
        "ML.BUCKETIZE(f, [2, 4]) AS output",
        ["bin_1", "bin_2", "bin_2", "bin_3", "bin_3"],
    ),
}
# The ones that run in a plain query too (as window functions over the query's rows).
PLAIN_QUERY = ("standard_scaler", "min_max_scaler", "max_abs_scaler", "imputer_mean", "bucketize")


def _same(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        if e is None:
            assert a is None or (isinstance(a, float) and math.isnan(a))
        elif isinstance(e, float):
            assert a == pytest.approx(e, rel=1e-12, abs=1e-12)
        else:
            assert a == e


def _values_type(values):
    return pa.string() if any(isinstance(v, str) for v in values) else pa.float64()


def _run(conn, query: exp.Expression) -> pd.DataFrame:
    return conn.sql(translate_query(lower_preprocessing(query)).duckdb_sql).fetchdf()


def through_frozen_transform(values, item: str) -> tuple[list, str]:
    """Freeze ``item`` on ``values`` (column f) and apply it to the same rows; return the output
    and the frozen BigQuery SQL."""
    conn = duckdb.connect()
    conn.register("d", pa.table({"f": pa.array(values, _values_type(values))}))

    def evaluate(expression):
        return (
            pa.Table.from_pandas(_run(conn, exp.select(expression.copy().as_("v")).from_("d")))
            .column(0)
            .combine_chunks()
        )

    frozen = freeze_transform(parse_select_list(item), evaluate)
    frozen_sql = ", ".join(i.sql("bigquery") for i in frozen)
    out = _run(conn, exp.select(*[i.copy() for i in frozen]).from_("d"))["output"].tolist()
    return out, frozen_sql


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_frozen_transform_matches_the_reference_examples(case):
    values, item, expected = EXAMPLES[case]
    out, frozen_sql = through_frozen_transform(values, item)
    _same([None if isinstance(v, float) and math.isnan(v) else v for v in out], expected)
    # What is stored with the model is BigQuery SQL without analytic functions.
    reparsed = sqlglot.parse_one("SELECT " + frozen_sql, read="bigquery")
    assert not list(reparsed.find_all(exp.Window))


@pytest.mark.parametrize("case", PLAIN_QUERY)
def test_plain_queries_match_the_reference_examples(warehouse, case):
    values, item, expected = EXAMPLES[case]
    warehouse.load_dataframe(
        pd.DataFrame({"k": range(len(values)), "f": pd.Series(values, dtype="float64")}), "d"
    )
    sql = f"SELECT k, {item} FROM d ORDER BY k"
    _same(
        [None if isinstance(v, float) and math.isnan(v) else v for v in warehouse.query(sql)["output"]],
        expected,
    )


def test_bucketize_reference_example(warehouse):
    row = warehouse.query(
        """SELECT ML.BUCKETIZE(2.5, [1, 2, 3]) AS bucket,
                  ML.BUCKETIZE(2.5, [1, 2, 3], TRUE) AS bucket_without_boundaries,
                  ML.BUCKETIZE(2.5, [1, 2, 3], FALSE, "bucket_ranges") AS bucket_ranges,
                  ML.BUCKETIZE(2.5, [1, 2, 3], FALSE, "bucket_ranges_json") AS bucket_ranges_json,
                  ML.BUCKETIZE(CAST(NULL AS FLOAT64), [1, 2, 3]) AS null_bucket"""
    ).iloc[0]
    assert (row.bucket, row.bucket_without_boundaries, row.bucket_ranges) == ("bin_3", "bin_2", "[2, 3)")
    assert json.loads(row.bucket_ranges_json) == {"start": "2", "end": "3"}
    assert row.null_bucket is None


def test_statistics_come_from_training_rows_and_are_reused(warehouse):
    """Frozen on [1..5], MIN_MAX_SCALER caps new values to [0, 1] ("predicted values outside that
    range are similarly capped") and STANDARD_SCALER keeps the training mean and deviation."""
    warehouse.load_dataframe(pd.DataFrame({"f": [1.0, 2.0, 3.0, 4.0, 5.0]}), "train")
    warehouse.load_dataframe(pd.DataFrame({"f": [0.0, 3.0, 9.0], "extra": ["a", "b", "c"]}), "fresh")
    warehouse.execute(
        """CREATE MODEL scaled
           TRANSFORM(ML.MIN_MAX_SCALER(f) OVER () AS mm, ML.STANDARD_SCALER(f) OVER () AS z,
                     ML.QUANTILE_BUCKETIZE(f, 3) OVER () AS q)
           OPTIONS(model_type = 'KMEANS', num_clusters = 2) AS SELECT f FROM train"""
    )
    out = warehouse.query("SELECT * FROM ML.TRANSFORM(MODEL scaled, TABLE fresh)")
    assert list(out.columns) == ["mm", "z", "q", "f", "extra"]
    assert out["mm"].tolist() == [0.0, 0.5, 1.0]
    np.testing.assert_allclose(out["z"], (np.array([0.0, 3.0, 9.0]) - 3.0) / np.sqrt(2.5))
    assert out["q"].tolist() == ["bin_1", "bin_2", "bin_3"]


@pytest.mark.parametrize("case", sorted(set(EXAMPLES) - {"imputer_most_frequent", "label_encoder"}))
def test_a_model_with_the_transform_reproduces_the_examples(tmp_path, case):
    """ML.TRANSFORM of a KMEANS model created with the TRANSFORM item gives the example's output."""
    values, item, expected = EXAMPLES[case]
    warehouse = LocalWarehouse.at(tmp_path / "w.duckdb")
    warehouse.load_dataframe(
        pd.DataFrame({"k": range(len(values)), "f": pd.Series(values, dtype="float64")}), "d"
    )
    warehouse.execute(
        f"CREATE MODEL m TRANSFORM({item}) OPTIONS(model_type='KMEANS', num_clusters=2) AS SELECT f FROM d"
    )
    out = warehouse.query("SELECT output FROM ML.TRANSFORM(MODEL m, (SELECT k, f FROM d)) ORDER BY k")[
        "output"
    ].tolist()
    _same([None if isinstance(v, float) and math.isnan(v) else v for v in out], expected)


# -- TRANSFORM with supervised models ------------------------------------------------------------


def _frame(n=80, seed=1):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.uniform(1, 10, size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    y = (
        1.0
        + 2.0 * x1
        + 3.0 * np.log(x2)
        + np.where(colour == "red", 2.0, 0.0)
        + rng.normal(scale=0.05, size=n)
    )
    return pd.DataFrame(
        {"id": np.arange(n), "x1": x1, "x2": x2, "colour": colour, "y": y, "split": np.arange(n) % 5 == 0}
    )


@pytest.fixture()
def lab(tmp_path) -> LocalWarehouse:
    warehouse = LocalWarehouse.at(tmp_path / "w.duckdb")
    warehouse.load_dataframe(_frame(), "t")
    warehouse.execute(
        """CREATE MODEL tr
           TRANSFORM(x1 * 2 AS x1_twice, LN(x2) AS log_x2, ML.LABEL_ENCODER(colour, 10, 1) OVER () AS colour_code,
                     colour, y)
           OPTIONS(model_type = 'LINEAR_REG', input_label_cols = ['y'])
           AS SELECT * FROM t"""
    )
    return warehouse


def test_the_transform_is_applied_at_prediction(lab):
    """A model with TRANSFORM predicts on raw input exactly what the same model trained on the
    transformed rows predicts on transformed input."""
    lab.execute(
        """CREATE MODEL plain OPTIONS(model_type = 'LINEAR_REG', input_label_cols = ['y']) AS
           SELECT x1 * 2 AS x1_twice, LN(x2) AS log_x2,
                  CASE colour WHEN 'blue' THEN 1 WHEN 'green' THEN 2 WHEN 'red' THEN 3 ELSE 0 END AS colour_code,
                  colour, y
           FROM t"""
    )
    raw = lab.query("SELECT * FROM ML.PREDICT(MODEL tr, (SELECT id, x1, x2, colour FROM t)) ORDER BY id")
    transformed = lab.query(
        """SELECT * FROM ML.PREDICT(MODEL plain, (
             SELECT id, x1 * 2 AS x1_twice, LN(x2) AS log_x2,
                    CASE colour WHEN 'blue' THEN 1 WHEN 'green' THEN 2 WHEN 'red' THEN 3 ELSE 0 END
                      AS colour_code, colour
             FROM t)) ORDER BY id"""
    )
    np.testing.assert_allclose(raw["predicted_y"], transformed["predicted_y"], rtol=1e-12)
    # ML.PREDICT outputs the input columns as given, not the transformed ones; no label needed.
    assert list(raw.columns) == ["predicted_y", "id", "x1", "x2", "colour"]
    assert np.abs(raw["predicted_y"] - _frame()["y"]).max() < 0.5


def test_evaluate_and_feature_info_of_a_transform_model(lab):
    with_input = lab.query("SELECT * FROM ML.EVALUATE(MODEL tr, (SELECT x1, x2, colour, y FROM t))")
    assert with_input["r2_score"][0] > 0.99
    # ML.FEATURE_INFO describes the pre-transform columns.
    assert set(lab.query("SELECT input FROM ML.FEATURE_INFO(MODEL tr)")["input"]) >= {"x1", "x2", "colour"}
    stored = lab.bqml_engine().model_metadata("tr")["transform_sql"]
    assert (
        "LN(x2) AS log_x2" in stored and "CASE colour WHEN 'blue' THEN 1" in stored and "OVER" not in stored
    )


def test_star_except_and_pass_through_columns(lab):
    lab.execute(
        """CREATE MODEL starred TRANSFORM(* EXCEPT (id, x2), LN(x2) AS log_x2)
           OPTIONS(model_type = 'LINEAR_REG', input_label_cols = ['y'], data_split_method = 'CUSTOM',
                   data_split_col = 'split') AS SELECT * FROM t"""
    )
    features = {f["name"] for f in lab.bqml_engine().model_metadata("starred")["feature_columns"]}
    assert features == {"x1", "colour", "log_x2"}
    out = lab.query(
        "SELECT * FROM ML.PREDICT(MODEL starred, (SELECT id, x1, x2, colour FROM t WHERE id < 3))"
    )
    assert list(out.columns) == ["predicted_y", "id", "x1", "x2", "colour"] and len(out) == 3


@pytest.mark.parametrize(
    "transform, message",
    [
        ("x1 + 1, y", r"needs a name: write x1 \+ 1 AS name"),
        ("x1, y * 2 AS y", "Column y must appear in TRANSFORM without transformation"),
        ("x1", "Column y must appear in TRANSFORM"),
        ("x1, y, (SELECT 1) AS one", "subqueries"),
        ("SUM(x1) AS s, y", "aggregate"),
        ("ROW_NUMBER() OVER () AS r, y", "only BigQuery ML analytic functions"),
        (
            "ML.ONE_HOT_ENCODER(colour) OVER () AS c, y",
            "ML.ONE_HOT_ENCODER is not supported in a local TRANSFORM",
        ),
        ("ML.FEATURE_CROSS(STRUCT(colour, colour)) AS c, y", "ML.FEATURE_CROSS"),
        ("ML.STANDARD_SCALER(x1) AS z, y", r"write ML\.STANDARD_SCALER\(\.\.\.\) OVER\(\)"),
        ("ML.STANDARD_SCALER(x1) OVER (PARTITION BY colour) AS z, y", "empty OVER"),
        ("ML.BUCKETIZE(x1, [1, 0]) AS b, y", "increasing order"),
        ("ML.IMPUTER(colour, 'mean') OVER () AS c, y", "needs a numerical expression"),
        ("x1 AS a, x2 AS a, y", "more than once"),
        ("nope AS a, y", "nope"),
    ],
)
def test_bad_transforms_name_the_problem(lab, transform, message):
    with pytest.raises(WarehouseError, match=message):
        lab.execute(
            f"CREATE MODEL bad TRANSFORM({transform}) OPTIONS(model_type='LINEAR_REG', "
            "input_label_cols=['y']) AS SELECT * FROM t"
        )
    assert not lab.bqml_engine().model_exists("bad")


def test_prediction_input_must_have_the_transform_columns(lab):
    with pytest.raises(BqmlError, match="lacks column.*x2"):
        lab.query("SELECT * FROM ML.PREDICT(MODEL tr, (SELECT x1, colour FROM t))")
    with pytest.raises(BqmlError, match="no TRANSFORM clause|has none"):
        lab.execute("CREATE MODEL nt OPTIONS(model_type='KMEANS', num_clusters=2) AS SELECT x1 FROM t")
        lab.query("SELECT * FROM ML.TRANSFORM(MODEL nt, TABLE t)")


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT ML.QUANTILE_BUCKETIZE(x1, 3) OVER () FROM t", "only inside a CREATE MODEL TRANSFORM"),
        ("SELECT ML.IMPUTER(x1, 'median') OVER () FROM t", "'median'"),
        ("SELECT ML.STANDARD_SCALER(x1) FROM t", r"OVER\(\)"),
        ("SELECT ML.HASH_BUCKETIZE(colour, 10) FROM t", "ML.HASH_BUCKETIZE is not supported"),
        ("SELECT ML.DISTANCE([1.0], [2.0]) FROM t", "ML.DISTANCE is not supported"),
    ],
)
def test_unsupported_preprocessing_in_plain_queries(lab, sql, message):
    with pytest.raises(BqmlError, match=message):
        lab.query(sql)
