"""The BigQuery ML dialect of the bigquery layer: model statements, ``ML.*`` calls, model names,
literal values, statement splitting and the SQL template binder (no engine)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlglot
from sqlglot import exp

from lakehouse_ml.bigquery.dialect import (
    _SIGNATURE_TEXT,
    SIGNATURES,
    AlterModel,
    CreateModel,
    DropModel,
    MLFunction,
    find_ml_calls,
    literal_value,
    mentions_bigquery_ml,
    parse_model_name,
    parse_model_statement,
    split_statements,
    statement_returns_rows,
)
from lakehouse_ml.bigquery.templates import bind_template
from lakehouse_ml.core.errors import BqmlError, WarehouseError


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
            "CREATE MODEL m OPTIONS(model_type='arima_plus') AS "
            "(training_data AS (SELECT 1), custom_holiday AS (SELECT 2))",
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
    # Each call is its own node of the parsed tree, and generates BigQuery ML SQL again.
    assert all(
        isinstance(c.node, MLFunction)
        and c.node.function == c.function
        and c.text.startswith(f"ML.{c.function}(")
        for c in calls
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
        "STRUCT(0.02 AS contamination), (SELECT a FROM t WHERE b)) WHERE 'TABLE training_rows' <> ''"
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
        "SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE b_v2, TABLE `window`, STRUCT(0.3 AS numerical_default_threshold, "
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


# =================================================================================================
# Every ML table function, anywhere a table can appear
# =================================================================================================

# One well-formed call per function, in its documented argument shape.
CALLS = {
    "PREDICT": "ML.PREDICT(MODEL m, TABLE t)",
    "EVALUATE": "ML.EVALUATE(MODEL m, TABLE t)",
    "DETECT_ANOMALIES": "ML.DETECT_ANOMALIES(MODEL m, STRUCT(0.1 AS contamination), TABLE t)",
    "EXPLAIN_PREDICT": "ML.EXPLAIN_PREDICT(MODEL m, TABLE t)",
    "GLOBAL_EXPLAIN": "ML.GLOBAL_EXPLAIN(MODEL m)",
    "FEATURE_INFO": "ML.FEATURE_INFO(MODEL m)",
    "TRAINING_INFO": "ML.TRAINING_INFO(MODEL m)",
    "WEIGHTS": "ML.WEIGHTS(MODEL m)",
    "ROC_CURVE": "ML.ROC_CURVE(MODEL m, TABLE t)",
    "CONFUSION_MATRIX": "ML.CONFUSION_MATRIX(MODEL m, TABLE t)",
    "TRANSFORM": "ML.TRANSFORM(MODEL m, TABLE t)",
    "VALIDATE_DATA_DRIFT": "ML.VALIDATE_DATA_DRIFT(TABLE t, TABLE u)",
}
PLACES = {
    "from": "SELECT * FROM {call}",
    "join": "SELECT * FROM s JOIN {call} AS c ON TRUE",
    "subquery": "SELECT * FROM (SELECT * FROM {call}) AS q",
    "cte": "WITH c AS (SELECT * FROM {call}) SELECT * FROM c",
    "where_in": "SELECT * FROM s WHERE x IN (SELECT x FROM {call})",
}


def test_the_table_of_calls_covers_every_signature():
    assert set(CALLS) == set(SIGNATURES)


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("function", sorted(CALLS))
def test_each_ml_function_is_found_wherever_a_table_can_appear(function, place):
    call_text = CALLS[function]
    sql = PLACES[place].format(call=call_text)
    (call,) = find_ml_calls(sql)
    assert call.function == function
    assert (
        call.text == call_text
        and isinstance(call.node, MLFunction)
        and isinstance(call.node.parent, exp.Table)
    )
    if function == "VALIDATE_DATA_DRIFT":
        assert call.model is None and [i.table for i in call.inputs] == ["t", "u"]
    else:
        assert call.model.name == "m"
        assert (call.input.table if call.input else None) == ("t" if "TABLE t" in call_text else None)
    # With the call cut out, what is left is one ordinary statement that returns rows.
    assert statement_returns_rows(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'ML.PREDICT(MODEL m, TABLE t)' AS s FROM t",
        'SELECT "ML.PREDICT(" AS s FROM t',
        "SELECT 1 AS x FROM t -- ML.PREDICT(MODEL m, TABLE t)",
        "SELECT 1 AS x /* ML.PREDICT(MODEL m, TABLE t) */ FROM t",
        "SELECT `ML.PREDICT(` FROM t",
    ],
)
def test_strings_comments_and_quoted_names_holding_a_call_are_not_calls(sql):
    assert find_ml_calls(sql) == []
    assert not mentions_bigquery_ml(sql)


def test_alter_and_drop_model_name_their_parts():
    assert parse_model_statement("ALTER MODEL IF EXISTS `p.d.m` SET OPTIONS(description='x')") == AlterModel(
        model=parse_model_name("`p.d.m`"), if_exists=True, options={"description": "x"}
    )
    assert parse_model_statement("DROP MODEL d.m") == DropModel(
        model=parse_model_name("d.m"), if_exists=False
    )
    assert parse_model_statement("DROP MODEL IF EXISTS m").if_exists
    with pytest.raises(BqmlError, match="ALTER MODEL"):
        parse_model_statement("ALTER MODEL m OPTIONS(description='x')")


@pytest.mark.parametrize(
    "sql, function",
    [
        ("SELECT * FROM ML.PREDICT(MODEL m)", "PREDICT"),
        ("SELECT * FROM ML.WEIGHTS(MODEL m, TABLE t)", "WEIGHTS"),
        ("SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE a)", "VALIDATE_DATA_DRIFT"),
        ("SELECT * FROM ML.TRANSFORM(MODEL m)", "TRANSFORM"),
    ],
)
def test_a_malformed_call_names_the_function_and_its_documented_shape(sql, function):
    with pytest.raises(BqmlError) as caught:
        find_ml_calls(sql)
    message = str(caught.value)
    assert message.startswith(f"ML.{function} ")
    assert f"Syntax: {_SIGNATURE_TEXT[function]}." in message
