"""The SQL layer of the local BigQuery ML engine: parsing every statement and argument form, and
routing BigQuery ML through the local warehouse — inside joins, WHERE, CTEs, subqueries, nested
calls, scripts, writes and ``lakehouse-ml query`` — with real models."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
import sqlglot
from sqlglot import exp

from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.cli import main
from lakehouse_ml.core.errors import BqmlError, SQLTranslationError, WarehouseError
from lakehouse_ml.engine.sql import attach_ctes, visible_ctes
from lakehouse_ml.engine.translate import translate


def test_the_word_model_in_ordinary_sql(warehouse):
    warehouse.execute("CREATE TABLE model AS SELECT 'x' AS model; INSERT INTO model VALUES ('y')")
    assert warehouse.query("SELECT model FROM model ORDER BY model")["model"].tolist() == ["x", "y"]


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
           INSERT INTO scores SELECT id + 1000, predicted_y
           FROM ML.PREDICT(MODEL reg, (SELECT * FROM t WHERE id < 5))"""
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
        "CREATE MODEL bad OPTIONS(model_type='LINEAR_REG', "
        "input_label_cols=['y'], no_such_option=1) AS SELECT x1, y FROM t",
        "CREATE MODEL bad OPTIONS(model_type='LINEAR_REG', input_label_cols=['y']) AS SELECT x1, y FROM t WHERE FALSE",
        "CREATE MODEL bad OPTIONS(model_type='LOGISTIC_REG', "
        "input_label_cols=['flag']) AS SELECT x1, TRUE AS flag FROM t",
        "CREATE MODEL bad TRANSFORM(ML.ONE_HOT_ENCODER(colour) OVER() AS c, y) "
        "OPTIONS(model_type='LINEAR_REG', input_label_cols=['y']) AS SELECT * FROM t",
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
    create = (
        "CREATE MODEL reg OPTIONS(model_type='LINEAR_REG', "
        "input_label_cols=['y']) AS SELECT x1, x2, colour, y FROM t"
    )
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
