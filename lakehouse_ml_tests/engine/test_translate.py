"""BigQuery → DuckDB translation: semantics BigQuery users rely on, and named errors."""

from __future__ import annotations

import datetime as dt

import pytest

from lakehouse_ml.core.errors import SQLTranslationError, WarehouseError
from lakehouse_ml.engine.translate import to_duckdb, translate


@pytest.mark.parametrize(
    "sql, expected",
    [
        # BigQuery DAYOFWEEK: Sunday = 1 … Saturday = 7. 2026-01-04 is a Sunday.
        ("SELECT EXTRACT(DAYOFWEEK FROM DATE '2026-01-04')", 1),
        ("SELECT EXTRACT(DAYOFWEEK FROM DATE '2026-01-10')", 7),
        # TIMESTAMP_DIFF counts whole units (BigQuery reference example: 13410 hours).
        (
            "SELECT TIMESTAMP_DIFF(TIMESTAMP '2010-07-07 10:20:00', TIMESTAMP '2008-12-25 15:30:00', HOUR)",
            13410,
        ),
        ("SELECT TIMESTAMP_DIFF(TIMESTAMP '2026-01-01 14:00:00', TIMESTAMP '2026-01-01 13:59:59', HOUR)", 0),
        # DATE_DIFF counts day boundaries.
        ("SELECT DATE_DIFF(DATE '2026-03-01', DATE '2026-02-01', DAY)", 28),
        ("SELECT SAFE_DIVIDE(1, 0)", None),
        ("SELECT SAFE_DIVIDE(3, 4)", 0.75),
        ("SELECT COUNTIF(x > 1) FROM UNNEST([1, 2, 3]) AS x", 2),
        # COUNTIF over no rows is 0, as COUNT (DuckDB's COUNT_IF would give NULL).
        ("SELECT COUNTIF(x > 1) FROM UNNEST([1, 2, 3]) AS x WHERE FALSE", 0),
        ("SELECT COUNTIF(x > 1) OVER (ORDER BY x) FROM UNNEST([3]) AS x", 1),
        ("SELECT ARRAY_LENGTH(GENERATE_DATE_ARRAY(DATE '2026-01-01', DATE '2026-01-31', INTERVAL 7 DAY))", 5),
        ("SELECT DATE_ADD(DATE '2026-01-31', INTERVAL 1 DAY)", dt.date(2026, 2, 1)),
        ("SELECT IF(1 > 2, 'a', 'b')", "b"),
        ("SELECT IFNULL(NULL, 5)", 5),
        ("SELECT CAST('12' AS INT64) + 1", 13),
        ("SELECT FORMAT_DATE('%Y-%m', DATE '2026-07-04')", "2026-07"),
        ("SELECT UNIX_SECONDS(TIMESTAMP '1970-01-02 00:00:00')", 86400),
        ("SELECT LOGICAL_OR(x) FROM UNNEST([FALSE, TRUE]) AS x", True),
    ],
)
def test_bigquery_semantics(warehouse, sql, expected):
    value = warehouse.query(sql).iloc[0, 0]
    if expected is None:
        assert value is None or value != value  # NULL or NaN
    else:
        assert value == expected


def test_parameters_become_duckdb_parameters(warehouse):
    sql = "SELECT @d AS d, @n + 1 AS n, @s AS s, @b AS b, @f * 2 AS f"
    (statement,) = translate(sql)
    assert statement.parameters == ("b", "d", "f", "n", "s")
    row = warehouse.query(sql, {"d": dt.date(2026, 3, 1), "n": 1, "s": "x", "b": True, "f": 1.5}).iloc[0]
    assert (row.d, row.n, row.s, row.b, row.f) == (dt.date(2026, 3, 1), 2, "x", True, 3.0)


def test_scripts_run_statement_by_statement(warehouse):
    frame = warehouse.query(
        "CREATE TABLE t AS SELECT 1 AS x UNION ALL SELECT 2; INSERT INTO t VALUES (3); SELECT SUM(x) AS s FROM t"
    )
    assert frame.s[0] == 6


@pytest.mark.parametrize(
    "sql, named",
    [
        ("SELECT ARRAY_AGG(x ORDER BY x LIMIT 1) FROM UNNEST([1]) AS x", "LIMIT inside ARRAY_AGG"),
        ("SELECT * FROM ML.PREDICT(MODEL m, TABLE t)", "ML.PREDICT"),
        ("SELECT ML.STANDARD_SCALER(x) OVER () FROM t", "ML.STANDARD_SCALER"),
        ("CREATE MODEL m OPTIONS(model_type='linear_reg') AS SELECT 1 AS label", "CREATE MODEL"),
        ("EXPORT DATA OPTIONS(uri='gs://b/*') AS SELECT 1", "EXPORT"),
    ],
)
def test_untranslatable_constructs_are_named(sql, named):
    with pytest.raises(SQLTranslationError, match=named.replace("(", r"\(").replace(".", r"\.")):
        translate(sql)


def test_bad_sql_names_the_position():
    with pytest.raises(WarehouseError, match=r"line 1, column \d+"):
        translate("SELECT FROM WHERE")


def test_comments_are_dropped():
    assert "@" not in to_duckdb("-- uses @x\nSELECT @x AS y")
