"""The SQL layer of the local BigQuery ML engine: parsing every statement and argument form, and
routing BigQuery ML through the local warehouse — inside joins, WHERE, CTEs, subqueries, nested
calls, scripts, writes and ``lakehouse-ml query`` — with real models."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest
import sqlglot
from sqlglot import exp

from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.bigquery.dialect import (
    AlterModel,
    CreateModel,
    DropModel,
    find_ml_calls,
    literal_value,
    mentions_bigquery_ml,
    parse_model_name,
    parse_model_statement,
    split_statements,
    statement_returns_rows,
)
from lakehouse_ml.bigquery.templates import bind_template
from lakehouse_ml.cli import main
from lakehouse_ml.core.errors import BqmlError, SQLTranslationError, WarehouseError
from lakehouse_ml.engine.sql import attach_ctes, visible_ctes
from lakehouse_ml.engine.translate import translate


def value(text: str, params=None):
    return literal_value(sqlglot.parse_one(text, read="bigquery"), params)


# =================================================================================================
# Parsing (no engine)
# =================================================================================================


def test_statements_split_at_semicolons_outside_strings_and_comments():
    sql = "SELECT ';' AS a; -- a comment; with a semicolon\nSELECT 2 /* ; */ AS b;\n  ;SELECT 3"
    assert [s.strip() for s in split_statements(sql)] == [
        "SELECT ';' AS a",
        "-- a comment; with a semicolon\nSELECT 2 /* ; */ AS b",
        "SELECT 3",
    ]


def test_mentions_bigquery_ml_is_a_token_test():
    assert mentions_bigquery_ml("SELECT * FROM ML.PREDICT(MODEL m, TABLE t)")
    assert mentions_bigquery_ml("drop model m")
    assert not mentions_bigquery_ml("SELECT 'ML.PREDICT(MODEL m)' AS s -- ML.EVALUATE(")
    assert not mentions_bigquery_ml("SELECT html.x FROM t AS html")


@pytest.mark.parametrize(
    "text, name",
    [
        ("m", "m"),
        ("ds.m", "m"),
        ("`my-project.ds.churn_model`", "churn_model"),
        ("my-project.ds.churn_model", "churn_model"),
        ("`my-project`.`ds`.`m_1`", "m_1"),
        ("my-project-2.ds.m", "m"),
    ],
)
def test_model_names_map_to_the_plain_identifier(text, name):
    assert parse_model_name(text).name == name


@pytest.mark.parametrize("text", ["`a.b.c.d`", "`m-1`", "ds.`m n`", "`p`.``.m"])
def test_bad_model_names_are_refused(text):
    with pytest.raises(WarehouseError, match="name"):
        parse_model_name(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("'linear_reg'", "linear_reg"),
        ('"double"', "double"),
        ("42", 42),
        ("-0.5", -0.5),
        ("1e-3", 0.001),
        ("TRUE", True),
        ("false", False),
        ("NULL", None),
        ("['a', 'b']", ["a", "b"]),
        ("[-1, 2.5]", [-1, 2.5]),
        ("STRUCT(0.6 AS threshold)", {"threshold": 0.6}),
        ("STRUCT(3 AS TOP_K_FEATURES, TRUE AS approx)", {"top_k_features": 3, "approx": True}),
        ("[STRUCT('a', 0.2), STRUCT('b', 0.8)]", [["a", 0.2], ["b", 0.8]]),
        ("DATE '2026-03-01'", dt.date(2026, 3, 1)),
        ("TIMESTAMP '2030-01-01 00:00:00 UTC'", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
        ("GENERATE_ARRAY(0.4, 0.6, 0.1)", [0.4, 0.5, 0.6]),
        ("GENERATE_ARRAY(1, 3)", [1, 2, 3]),
        ("INTERVAL 8 HOUR", dt.timedelta(hours=8)),
        ("(7)", 7),
    ],
)
def test_literal_values_become_python_values(text, expected):
    assert value(text) == expected


def test_query_parameters_in_literals():
    assert value("STRUCT(@t AS threshold)", {"t": 0.7}) == {"threshold": 0.7}
    with pytest.raises(BqmlError, match="@t has no value"):
        value("@t")


@pytest.mark.parametrize("text", ["1 + 2", "CONCAT('a', 'b')", "x", "STRUCT(1 AS a, 2)"])
def test_non_literals_are_refused(text):
    with pytest.raises(BqmlError):
        value(text)


def test_create_model_every_part():
    sql = """
        CREATE OR REPLACE MODEL `my-project.ds.churn`
        TRANSFORM(ML.STANDARD_SCALER(x) OVER() AS x_scaled, * EXCEPT(x))  -- a comment with ; and )
        OPTIONS (MODEL_TYPE = 'LOGISTIC_REG', input_label_cols = ['churned'], l2_reg = -0.0,
                 auto_class_weights = TRUE, vertex_ai_model_version_aliases = ['champion'],
                 class_weights = NULL)
        AS SELECT x, y, churned FROM features WHERE note != 'OPTIONS(' """
    statement = parse_model_statement(sql)
    assert isinstance(statement, CreateModel)
    assert statement.model.name == "churn" and statement.replace and not statement.if_not_exists
    assert statement.transform.strip() == "ML.STANDARD_SCALER(x) OVER() AS x_scaled, * EXCEPT(x)"
    assert statement.options == {
        "model_type": "LOGISTIC_REG",
        "input_label_cols": ["churned"],
        "l2_reg": -0.0,
        "auto_class_weights": True,
        "vertex_ai_model_version_aliases": ["champion"],
        "class_weights": None,
    }
    assert statement.query.strip() == "SELECT x, y, churned FROM features WHERE note != 'OPTIONS('"


def test_create_model_if_not_exists_without_options():
    statement = parse_model_statement("create model if not exists ds.m as (select 1 as label)")
    assert isinstance(statement, CreateModel)
    assert statement.if_not_exists and not statement.replace and statement.options == {}
    assert statement.transform is None and statement.query == "(select 1 as label)"


def test_drop_and_alter_model():
    assert parse_model_statement("DROP MODEL `p.d.m`") == DropModel(
        model=parse_model_name("`p.d.m`"), if_exists=False
    )
    drop = parse_model_statement("drop model if exists m")
    assert isinstance(drop, DropModel) and drop.if_exists and drop.model.name == "m"
    alter = parse_model_statement(
        "ALTER MODEL IF EXISTS ds.m SET OPTIONS (vertex_ai_model_id = 'churn', description = 'x')"
    )
    assert isinstance(alter, AlterModel) and alter.if_exists and alter.model.name == "m"
    assert alter.options == {"vertex_ai_model_id": "churn", "description": "x"}


def test_other_statements_are_not_model_statements():
    for sql in (
        "SELECT 1",
        "CREATE TABLE t AS SELECT 1 AS x",
        "DROP TABLE t",
        "ALTER TABLE t ADD COLUMN y INT64",
        "CREATE TABLE model AS SELECT 1 AS model",
        "DROP TABLE model",
    ):
        assert parse_model_statement(sql) is None
    with pytest.raises(BqmlError, match="CREATE TEMP MODEL is not supported"):
        parse_model_statement("CREATE TEMP MODEL m OPTIONS(model_type='kmeans') AS SELECT 1 AS x")


def test_the_word_model_in_ordinary_sql(warehouse):
    warehouse.execute("CREATE TABLE model AS SELECT 'x' AS model; INSERT INTO model VALUES ('y')")
    assert warehouse.query("SELECT model FROM model ORDER BY model")["model"].tolist() == ["x", "y"]


@pytest.mark.parametrize(
    "sql, message",
    [
        (
            "CREATE OR REPLACE MODEL IF NOT EXISTS m OPTIONS(model_type='kmeans') AS SELECT 1",
            "cannot be combined",
        ),
        ("CREATE MODEL m OPTIONS(model_type='kmeans')", "needs AS"),
        ("CREATE MODEL m REMOTE WITH CONNECTION c OPTIONS(endpoint='x')", "REMOTE"),
        ("CREATE MODEL m INPUT(x INT64) OUTPUT(y FLOAT64) OPTIONS(model_type='xgboost')", "INPUT"),
        (
            "CREATE MODEL m OPTIONS(model_type='kmeans') TRANSFORM(x) AS SELECT 1",
            "TRANSFORM(...) goes before",
        ),
        ("CREATE MODEL m OPTIONS(a=1, A=2) AS SELECT 1", "given twice"),
        ("CREATE MODEL m OPTIONS(a) AS SELECT 1", "name = value"),
        ("CREATE MODEL m OPTIONS(a=1,) AS SELECT 1", "empty entry"),
        ("CREATE MODEL m OPTIONS(a=1 + 1) AS SELECT 1", "not a literal"),
        ("CREATE MODEL m TRANSFORM() OPTIONS(a=1) AS SELECT 1", "TRANSFORM() is empty"),
        (
            "CREATE MODEL m OPTIONS(model_type='arima_plus') AS (training_data AS (SELECT 1), custom_holiday AS (SELECT 2))",
            "ARIMA_PLUS",
        ),
        ("ALTER MODEL m SET DESCRIPTION = 'x'", "SET OPTIONS"),
        ("DROP MODEL m CASCADE", "Unexpected"),
        ("CREATE MODEL `a-b` AS SELECT 1", "Invalid model name"),
    ],
)
def test_bad_model_statements_name_the_problem(sql, message):
    with pytest.raises(
        WarehouseError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        parse_model_statement(sql)


def test_every_table_function_and_argument_form():
    sql = """
      SELECT * FROM ML.PREDICT(MODEL m, TABLE ds.t)
      JOIN ML.PREDICT(MODEL `p.d.m`, (SELECT a FROM t WHERE s = ')'), STRUCT(0.6 AS threshold)) USING (a)
      JOIN ML.EVALUATE(MODEL m) ON TRUE
      JOIN ML.EVALUATE(MODEL m, TABLE t, STRUCT(0.6 AS threshold)) ON TRUE
      JOIN ML.DETECT_ANOMALIES(MODEL k, STRUCT(0.02 AS contamination), TABLE t) ON TRUE
      JOIN ML.DETECT_ANOMALIES(MODEL k, STRUCT(0.1 AS contamination)) ON TRUE
      JOIN ML.EXPLAIN_PREDICT(MODEL m, TABLE t, STRUCT(3 AS top_k_features)) ON TRUE
      JOIN ML.GLOBAL_EXPLAIN(MODEL m, STRUCT(TRUE AS class_level_explain)) ON TRUE
      JOIN ML.FEATURE_INFO(MODEL m) ON TRUE
      JOIN ML.TRAINING_INFO(MODEL m,) ON TRUE
      JOIN ML.WEIGHTS(MODEL m, STRUCT(TRUE AS standardize)) ON TRUE
      JOIN ML.ROC_CURVE(MODEL m, TABLE t, GENERATE_ARRAY(0.4, 0.6, 0.1)) ON TRUE
      JOIN ML.CONFUSION_MATRIX(MODEL m, (SELECT * FROM t), STRUCT(0.4 AS threshold)) ON TRUE
      JOIN ML.TRANSFORM(MODEL m, TABLE t) ON TRUE
    """
    calls = find_ml_calls(sql)
    summary = [
        (
            c.function,
            c.model.name,
            c.input.table if c.input else None,
            (c.input.query or "").strip() if c.input else None,
            c.options,
            c.thresholds,
        )
        for c in calls
    ]
    assert summary == [
        ("PREDICT", "m", "t", "", {}, None),
        ("PREDICT", "m", None, "SELECT a FROM t WHERE s = ')'", {"threshold": 0.6}, None),
        ("EVALUATE", "m", None, None, {}, None),
        ("EVALUATE", "m", "t", "", {"threshold": 0.6}, None),
        ("DETECT_ANOMALIES", "k", "t", "", {"contamination": 0.02}, None),
        ("DETECT_ANOMALIES", "k", None, None, {"contamination": 0.1}, None),
        ("EXPLAIN_PREDICT", "m", "t", "", {"top_k_features": 3}, None),
        ("GLOBAL_EXPLAIN", "m", None, None, {"class_level_explain": True}, None),
        ("FEATURE_INFO", "m", None, None, {}, None),
        ("TRAINING_INFO", "m", None, None, {}, None),
        ("WEIGHTS", "m", None, None, {"standardize": True}, None),
        ("ROC_CURVE", "m", "t", "", {}, [0.4, 0.5, 0.6]),
        ("CONFUSION_MATRIX", "m", None, "SELECT * FROM t", {"threshold": 0.4}, None),
        ("TRANSFORM", "m", "t", "", {}, None),
    ]
    # Each call is located exactly: replacing them leaves a statement sqlglot parses.
    assert all(
        sql[c.start : c.end] == c.text and c.text.startswith("ML.") and c.text.endswith(")") for c in calls
    )


def test_only_outermost_calls_are_found_and_strings_or_comments_are_ignored():
    sql = """SELECT 'ML.PREDICT(MODEL x, TABLE y)' AS s /* ML.EVALUATE(MODEL z) */
             FROM ML.EVALUATE(MODEL m, (SELECT * FROM ML.PREDICT(MODEL m, TABLE t)))  -- ML.WEIGHTS(MODEL w)"""
    (call,) = find_ml_calls(sql)
    assert call.function == "EVALUATE"
    (inner,) = find_ml_calls(call.input.query)
    assert inner.function == "PREDICT" and inner.input.table == "t"


def test_scalar_ml_functions_are_not_table_calls():
    assert find_ml_calls("SELECT ML.BUCKETIZE(x, [1, 2]) FROM t") == []


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT * FROM ML.GENERATE_TEXT(MODEL m, TABLE t)", "ML.GENERATE_TEXT is not supported"),
        ("SELECT * FROM ML.FORECAST(MODEL m, STRUCT(7 AS horizon))", "ML.FORECAST is not supported"),
        ("SELECT * FROM AI.FORECAST(MODEL m, TABLE t)", "AI.FORECAST is not supported"),
        ("SELECT * FROM ML.PREDICT(MODEL m)", "needs an input"),
        ("SELECT * FROM ML.PREDICT(MODEL m, STRUCT(0.5 AS threshold), TABLE t)", "does not take a STRUCT"),
        (
            "SELECT * FROM ML.EVALUATE(MODEL m, STRUCT(0.5 AS threshold), TABLE t)",
            "does not take an input relation",
        ),
        (
            "SELECT * FROM ML.DETECT_ANOMALIES(MODEL m, TABLE t, STRUCT(0.1 AS contamination))",
            "does not take a STRUCT",
        ),
        ("SELECT * FROM ML.FEATURE_INFO(MODEL m, TABLE t)", "does not take an input"),
        ("SELECT * FROM ML.PREDICT(MODEL m, TABLE t, STRUCT(0.5))", "name the STRUCT fields"),
        ("SELECT * FROM ML.PREDICT(MODEL m n, TABLE t)", "Unexpected 'n'"),
        ("SELECT * FROM ML.PREDICT(MODEL m, t)", "does not take the argument"),
        ("SELECT * FROM ML.PREDICT(MODEL m, ())", "empty input query"),
        ("SELECT * FROM ML.PREDICT(MODEL m, TABLE t", "never closed"),
        ("SELECT * FROM ML.ROC_CURVE(MODEL m, TABLE t, ['a'])", "ARRAY<FLOAT64>"),
    ],
)
def test_bad_calls_name_the_problem(sql, message):
    with pytest.raises(WarehouseError, match=message.replace("(", r"\(").replace("[", r"\[")):
        find_ml_calls(sql)


def test_visible_ctes_follow_scoping():
    parsed = sqlglot.parse_one(
        """WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM p1), c AS (SELECT 2 AS y)
           SELECT * FROM c, (WITH d AS (SELECT 3 AS z) SELECT * FROM p2)""",
        read="bigquery",
    )
    tables = {t.name: t for t in parsed.find_all(exp.Table)}
    assert [c.alias for c in visible_ctes(tables["p1"])] == ["a"]  # a CTE sees the earlier ones
    assert [c.alias for c in visible_ctes(tables["p2"])] == ["a", "b", "c", "d"]


def test_attach_ctes_carries_only_what_is_referenced():
    outer = sqlglot.parse_one(
        "WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM a), c AS (SELECT 2 AS y) SELECT 1", read="bigquery"
    )
    ctes = list(outer.args["with_"].expressions)
    query = attach_ctes(sqlglot.parse_one("SELECT * FROM b", read="bigquery"), ctes)
    assert query.sql("bigquery") == "WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM a) SELECT * FROM b"
    own = attach_ctes(
        sqlglot.parse_one("WITH c AS (SELECT 9 AS y) SELECT * FROM c, a", read="bigquery"), ctes
    )
    assert (
        own.sql("bigquery") == "WITH a AS (SELECT 1 AS x), c AS (SELECT 9 AS y) SELECT * FROM c CROSS JOIN a"
    )


def test_statement_returns_rows():
    assert statement_returns_rows("SELECT * FROM ML.PREDICT(MODEL m, TABLE t)")
    assert statement_returns_rows("WITH p AS (SELECT * FROM ML.PREDICT(MODEL m, TABLE t)) SELECT * FROM p")
    assert not statement_returns_rows("CREATE TABLE x AS SELECT * FROM ML.PREDICT(MODEL m, TABLE t)")
    assert not statement_returns_rows("CREATE MODEL m OPTIONS(model_type='kmeans') AS SELECT 1 AS x")


def test_bind_template_fills_in_checked_pieces():
    template = (
        "SELECT COUNTIF(is_anomaly) AS n FROM ML.DETECT_ANOMALIES(MODEL model, "
        "STRUCT(@contamination AS contamination), TABLE training_rows) WHERE 'TABLE training_rows' != ''"
    )
    bound = bind_template(template, "k", "SELECT a FROM t WHERE b", {"contamination": 0.02})
    assert bound == (
        "SELECT COUNTIF(is_anomaly) AS n FROM ML.DETECT_ANOMALIES(MODEL k, "
        "STRUCT(0.02 AS contamination), (SELECT a FROM t WHERE b)) WHERE 'TABLE training_rows' != ''"
    )
    with pytest.raises(WarehouseError, match="model"):
        bind_template(template, "k; DROP TABLE t", "SELECT 1")
    with pytest.raises(BqmlError, match="one query"):
        bind_template(template, "k", "DELETE FROM t WHERE TRUE")
    with pytest.raises(BqmlError, match="finite number"):
        bind_template(template, "k", "SELECT 1", {"contamination": "0.1); DROP TABLE t; --"})


def test_bind_template_binds_tables_and_per_feature_thresholds():
    template = (
        "SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE baseline_rows, TABLE serving_rows, "
        "STRUCT(@numerical AS numerical_default_threshold, @thresholds AS thresholds))"
    )
    values = {"numerical": 0.3, "thresholds": (("recency_days", 0.1), ("share_store", 0.15))}
    bound = bind_template(template, tables={"baseline_rows": "b_v2", "serving_rows": "window"}, values=values)
    assert bound == (
        "SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE b_v2, TABLE window, STRUCT(0.3 AS numerical_default_threshold, "
        "ARRAY<STRUCT<STRING, FLOAT64>>[('recency_days', 0.1), ('share_store', 0.15)] AS thresholds))"
    )
    # Names outside `tables` stay as written; the model template name needs a model.
    assert "TABLE serving_rows" in bind_template(template, tables={"baseline_rows": "b"}, values=values)
    with pytest.raises(BqmlError, match="model's name"):
        bind_template("SELECT * FROM ML.PREDICT(MODEL model, TABLE t)")
    with pytest.raises(WarehouseError, match="table"):
        bind_template(template, tables={"baseline_rows": "b; DROP TABLE t"}, values=values)
    with pytest.raises(WarehouseError, match="feature"):
        bind_template(template, tables={}, values={"numerical": 0.3, "thresholds": (("x') OR ('1", 0.1),)})
    with pytest.raises(BqmlError, match="pairs"):
        bind_template(template, tables={}, values={"numerical": 0.3, "thresholds": ("recency_days",)})
    with pytest.raises(BqmlError, match="pairs"):
        bind_template(template, tables={}, values={"numerical": 0.3, "thresholds": (("a", (0.1,)),)})
    with pytest.raises(BqmlError, match="finite number"):
        bind_template(template, tables={}, values={"numerical": 0.3, "thresholds": (("a", float("nan")),)})


def test_the_translator_alone_points_to_the_warehouse():
    for sql in (
        "SELECT * FROM ML.PREDICT(MODEL m, TABLE t)",
        "CREATE MODEL m OPTIONS(model_type='kmeans') AS SELECT 1 AS x",
    ):
        with pytest.raises(SQLTranslationError, match="local warehouse"):
            translate(sql)


# =================================================================================================
# Routing through the local warehouse, with real models
# =================================================================================================


def _data(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    y = 3.0 + 2.0 * x1 - 1.0 * x2 + np.where(colour == "red", 1.5, 0.0) + rng.normal(scale=0.1, size=n)
    logit = 1.5 * x1 - x2
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x1": x1,
            "x2": x2,
            "colour": colour,
            "y": y,
            "flag": rng.random(n) < 1 / (1 + np.exp(-logit)),
            "grp": np.arange(n) % 3,
        }
    )


@pytest.fixture()
def lab(tmp_path) -> LocalWarehouse:
    warehouse = LocalWarehouse.at(tmp_path / "warehouse.duckdb")
    warehouse.load_dataframe(_data(), "t")
    warehouse.execute(
        """
        CREATE MODEL reg OPTIONS(model_type='LINEAR_REG', input_label_cols=['y']) AS
          SELECT x1, x2, colour, y FROM t;
        CREATE MODEL `my-project.lab.clf` OPTIONS(model_type='LOGISTIC_REG', input_label_cols=['flag'],
                                               enable_global_explain=TRUE) AS
          SELECT x1, x2, colour, flag FROM t;
        CREATE MODEL km OPTIONS(model_type='KMEANS', num_clusters=3) AS SELECT x1, x2 FROM t
        """
    )
    return warehouse


def test_models_are_created_in_the_models_folder(lab, tmp_path):
    engine = lab.bqml_engine()
    assert {n for n in ("reg", "clf", "km") if engine.model_exists(n)} == {"reg", "clf", "km"}
    assert lab.models_path() == tmp_path / "models"
    assert (tmp_path / "models" / "reg").exists()
    assert lab.model_url("reg") == str(tmp_path / "models" / "reg")


def test_predict_outputs_predictions_then_every_input_column(lab):
    frame = lab.query("SELECT * FROM ML.PREDICT(MODEL reg, TABLE t)")
    data = _data()
    assert list(frame.columns) == ["predicted_y", *data.columns]
    assert len(frame) == len(data)
    pd.testing.assert_series_equal(frame["id"], data["id"], check_names=False)
    assert np.abs(frame["predicted_y"] - frame["y"]).max() < 0.5


def test_ml_calls_in_joins_where_ctes_and_subqueries(lab):
    sql = """
        WITH recent AS (SELECT * FROM t WHERE id >= @since),
             scored AS (SELECT id, predicted_y FROM ML.PREDICT(MODEL `my-project.lab.reg`, TABLE recent))
        SELECT s.id, s.predicted_y, k.CENTROID_ID, c.predicted_flag
        FROM scored AS s
        JOIN ML.PREDICT(MODEL km, (SELECT id, x1, x2 FROM recent WHERE id IN (SELECT id FROM scored))) AS k USING (id)
        LEFT JOIN (SELECT id, predicted_flag FROM ML.PREDICT(MODEL lab.clf, (SELECT * FROM t))) AS c USING (id)
        WHERE s.id IN (SELECT id FROM ML.PREDICT(MODEL reg, TABLE t) WHERE predicted_y > 0)
          AND EXISTS (SELECT 1 FROM ML.EVALUATE(MODEL reg) WHERE r2_score > 0.9)
        ORDER BY s.id
    """
    frame = lab.query(sql, {"since": 30})
    expected = lab.query(
        "SELECT id, predicted_y FROM ML.PREDICT(MODEL reg, TABLE t) WHERE id >= 30 AND predicted_y > 0 ORDER BY id"
    )
    assert frame["id"].tolist() == expected["id"].tolist() and len(frame) > 10
    np.testing.assert_allclose(frame["predicted_y"], expected["predicted_y"])
    assert set(frame["CENTROID_ID"]) <= {1, 2, 3}
    assert frame["predicted_flag"].notna().all()


def test_nested_calls_and_ctes_seen_by_inputs(lab):
    # The EVALUATE input is a query over a CTE whose body holds another ML call.
    nested = lab.query(
        """WITH p AS (SELECT * EXCEPT (predicted_y) FROM ML.PREDICT(MODEL reg, TABLE t))
           SELECT * FROM ML.EVALUATE(MODEL reg, (SELECT * FROM p WHERE id < 40))"""
    )
    direct = lab.query("SELECT * FROM ML.EVALUATE(MODEL reg, (SELECT * FROM t WHERE id < 40))")
    pd.testing.assert_frame_equal(nested, direct)
    # A call inside the input of a call inside the input of a call.
    deep = lab.query(
        """SELECT COUNT(*) AS n FROM ML.PREDICT(MODEL km,
             (SELECT x1, x2 FROM ML.PREDICT(MODEL reg,
               (SELECT * FROM t WHERE id IN (SELECT id FROM ML.PREDICT(MODEL km, TABLE t) WHERE CENTROID_ID = 1)))))"""
    )
    ones = lab.query("SELECT COUNT(*) AS n FROM ML.PREDICT(MODEL km, TABLE t) WHERE CENTROID_ID = 1")
    assert deep["n"][0] == ones["n"][0] > 0


def test_evaluate_with_and_without_input_and_threshold(lab):
    on_training = lab.query("SELECT * FROM ML.EVALUATE(MODEL clf)")
    assert {"precision", "recall", "accuracy", "f1_score", "log_loss", "roc_auc"} <= set(on_training.columns)
    low = lab.query("SELECT * FROM ML.EVALUATE(MODEL clf, TABLE t, STRUCT(@low AS threshold))", {"low": 0.05})
    high = lab.query("SELECT * FROM ML.EVALUATE(MODEL clf, TABLE t, STRUCT(0.95 AS threshold))")
    assert low["recall"][0] > high["recall"][0]
    assert low["roc_auc"][0] == pytest.approx(high["roc_auc"][0])


def test_every_other_function_runs(lab):
    anomalies = lab.query(
        "SELECT * FROM ML.DETECT_ANOMALIES(MODEL km, STRUCT(0.1 AS contamination), TABLE t)"
    )
    assert {"is_anomaly", "normalized_distance", "id", "colour"} <= set(anomalies.columns)
    assert anomalies["is_anomaly"].sum() >= 1
    explained = lab.query(
        "SELECT * FROM ML.EXPLAIN_PREDICT(MODEL reg, (SELECT * FROM t LIMIT 5), STRUCT(2 AS top_k_features))"
    )
    assert (
        len(explained) == 5 and "top_feature_attributions" in explained.columns and "id" in explained.columns
    )
    assert not lab.query("SELECT * FROM ML.GLOBAL_EXPLAIN(MODEL clf)").empty
    assert set(lab.query("SELECT input FROM ML.FEATURE_INFO(MODEL reg)")["input"]) == {"x1", "x2", "colour"}
    assert len(lab.query("SELECT * FROM ML.TRAINING_INFO(MODEL clf)")) >= 1
    weights = lab.query(
        "SELECT processed_input, weight FROM ML.WEIGHTS(MODEL reg, STRUCT(FALSE AS standardize))"
    )
    assert weights.set_index("processed_input").loc["x1", "weight"] == pytest.approx(2.0, abs=0.1)


def test_statements_and_writes_with_ml_calls(lab):
    lab.execute(
        """CREATE TABLE scores AS SELECT id, predicted_y FROM ML.PREDICT(MODEL reg, TABLE t);
           INSERT INTO scores SELECT id + 1000, predicted_y FROM ML.PREDICT(MODEL reg, (SELECT * FROM t WHERE id < 5))"""
    )
    assert lab.row_count("scores") == 65
    rows = lab.write_query(
        "cluster_of", "SELECT id, CENTROID_ID AS centroid FROM ML.PREDICT(MODEL km, TABLE t)"
    )
    assert rows == 60 and lab.table_schema("cluster_of") == [("id", "INT64"), ("centroid", "INT64")]
    result = lab.run(
        "ALTER MODEL reg SET OPTIONS (description = 'demand'); SELECT COUNT(*) AS n FROM ML.FEATURE_INFO(MODEL reg)"
    )
    assert result.to_pydict() == {"n": [3]}
    assert lab.bqml_engine().model_metadata("reg")["descriptive"]["description"] == "demand"
    lab.execute(
        "DROP MODEL km; DROP MODEL IF EXISTS km; ALTER MODEL IF EXISTS km SET OPTIONS(description = 'x')"
    )
    assert not lab.bqml_engine().model_exists("km")


def test_create_model_variants(lab):
    before = lab.bqml_engine().model_metadata("reg")["creation_time"]
    lab.execute("CREATE MODEL IF NOT EXISTS reg OPTIONS(model_type='KMEANS') AS SELECT x1 FROM t")
    assert lab.bqml_engine().model_metadata("reg")["model_type"] == "LINEAR_REG"
    with pytest.raises(BqmlError, match="already exists"):
        lab.execute("CREATE MODEL reg OPTIONS(model_type='KMEANS') AS SELECT x1 FROM t")
    lab.execute(
        "CREATE OR REPLACE MODEL reg OPTIONS(model_type='KMEANS', num_clusters=2) AS SELECT x1 FROM t WHERE grp = @g",
        {"g": 1},
    )
    metadata = lab.bqml_engine().model_metadata("reg")
    assert metadata["model_type"] == "KMEANS" and metadata["creation_time"] >= before


def test_a_failing_statement_leaves_nothing_behind(lab, tmp_path):
    models_before = sorted(p.name for p in (tmp_path / "models").iterdir())
    failing = [
        "CREATE MODEL bad OPTIONS(model_type='LINEAR_REG', input_label_cols=['y'], no_such_option=1) AS SELECT x1, y FROM t",
        "CREATE MODEL bad OPTIONS(model_type='LINEAR_REG', input_label_cols=['y']) AS SELECT x1, y FROM t WHERE FALSE",
        "CREATE MODEL bad OPTIONS(model_type='LOGISTIC_REG', input_label_cols=['flag']) AS SELECT x1, TRUE AS flag FROM t",
        "CREATE MODEL bad TRANSFORM(ML.ONE_HOT_ENCODER(colour) OVER() AS c, y) OPTIONS(model_type='LINEAR_REG', input_label_cols=['y']) AS SELECT * FROM t",
        "CREATE MODEL bad OPTIONS(model_type='DNN_CLASSIFIER') AS SELECT * FROM t",
        "CREATE MODEL bad OPTIONS(model_type='LINEAR_REG') AS SELECT * FROM missing_table",
    ]
    for sql in failing:
        with pytest.raises(WarehouseError):
            lab.execute(sql)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == models_before
    # Results of ML calls are registered on the statement's connection only: nothing persists.
    with pytest.raises(WarehouseError):
        lab.query(
            "SELECT * FROM ML.PREDICT(MODEL reg, TABLE t) JOIN ML.PREDICT(MODEL nope, TABLE t) USING (id)"
        )
    with duckdb.connect(lab.duckdb.database, read_only=True) as conn:
        names = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    assert not [n for n in names if n.startswith("__bqml")] and "t" in names


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT * FROM ML.PREDICT(MODEL nope, TABLE t)", "Model nope does not exist"),
        ("SELECT * FROM ML.PREDICT(MODEL reg, TABLE missing)", "missing does not exist"),
        # A missing table is missing even when a Python variable of that name is on the stack.
        ("SELECT * FROM ML.PREDICT(MODEL reg, TABLE training)", "training does not exist"),
        ("SELECT * FROM ML.PREDICT(MODEL reg, TABLE source)", "source does not exist"),
        ("SELECT * FROM ML.PREDICT(MODEL reg, (SELECT x1 FROM t))", "no column"),
        ("SELECT * FROM ML.WEIGHTS(MODEL km)", "ML.WEIGHTS does not support MODEL_TYPE KMEANS"),
        ("SELECT * FROM ML.EVALUATE(MODEL reg, TABLE t, STRUCT(0.5 AS threshold))", "THRESHOLD"),
        ("SELECT * FROM ML.PREDICT(MODEL reg, TABLE t, STRUCT(1 AS nonsense))", "NONSENSE"),
        ("SELECT * FROM ML.GENERATE_TEXT(MODEL reg, TABLE t)", "ML.GENERATE_TEXT is not supported"),
        ("SELECT ML.PREDICT(MODEL reg, TABLE t)", "must be used as a table"),
        ("SELECT * FROM ML.PREDICT(MODEL reg, (DELETE FROM t WHERE TRUE))", "Expected a query"),
        ("SELECT * FROM ML.PREDICT(MODEL reg, (SELECT * FROM t WHERE id > @missing))", "@missing"),
    ],
)
def test_routing_errors_name_the_problem(lab, sql, message):
    with pytest.raises(WarehouseError, match=message):
        lab.query(sql)


def test_roc_curve_and_confusion_matrix_go_to_the_engine(lab):
    engine = lab.bqml_engine()
    for function, method in (("ROC_CURVE", "roc_curve"), ("CONFUSION_MATRIX", "confusion_matrix")):
        if hasattr(engine, method):
            frame = lab.query(f"SELECT * FROM ML.{function}(MODEL clf, TABLE t)")
            assert len(frame) >= 2
        else:
            with pytest.raises(BqmlError, match=f"ML.{function} is not supported locally yet"):
                lab.query(f"SELECT * FROM ML.{function}(MODEL clf, TABLE t)")


def test_lakehouse_ml_query_runs_create_model_and_predict(tmp_path, capsys, monkeypatch):
    for var in ("LAKEHOUSE_ML_HOME", "LAKEHOUSE_ML_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    LocalWarehouse.at(tmp_path / "warehouse.duckdb").load_dataframe(_data(), "t")
    create = "CREATE MODEL reg OPTIONS(model_type='LINEAR_REG', input_label_cols=['y']) AS SELECT x1, x2, colour, y FROM t"
    assert main(["--home", str(tmp_path), "query", create]) == 0
    err = capsys.readouterr().err
    assert "Ran 1 statement(s)" in err and "reg" in err  # the engine's progress is shown
    assert (
        main(
            [
                "--home",
                str(tmp_path),
                "query",
                "--format",
                "csv",
                "SELECT id, ROUND(predicted_y, 6) AS p FROM ML.PREDICT(MODEL reg, TABLE t) WHERE id < @n ORDER BY id",
                "--param",
                "n=3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "id,p" and len(out) == 4
    assert main(["--home", str(tmp_path), "query", "SELECT * FROM ML.PREDICT(MODEL nope, TABLE t)"]) == 2
    assert "Model nope does not exist" in capsys.readouterr().err
