"""The Warehouse port's contract (lakehouse_ml/backends/warehouse.py), on both backends."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from lakehouse_ml.backends.warehouse import PartitionWindow, Warehouse
from lakehouse_ml.core.errors import TableNotFoundError, WarehouseError

from .conftest import labelled_rows


def test_the_implementations_are_the_port(backend):
    assert isinstance(backend.warehouse, Warehouse)


def test_query_takes_named_parameters(backend):
    frame = backend.warehouse.query("SELECT @n + 1 AS m, @s AS s", {"n": 41, "s": "x"})
    assert frame.to_dict("records") == [{"m": 42, "s": "x"}]


def test_a_none_parameter_is_refused_before_anything_runs(backend):
    with pytest.raises(WarehouseError, match="@n is None"):
        backend.warehouse.query("SELECT @n AS n", {"n": None})


def test_load_write_and_read_back(backend):
    wh = backend.warehouse
    assert wh.load_dataframe(labelled_rows(10), "rows") == 10
    assert wh.table_exists("rows") and wh.row_count("rows") == 10
    assert [c for c, _ in wh.table_schema("rows")] == ["a", "b", "y"]
    assert dict(wh.table_schema("rows")) == {"a": "FLOAT64", "b": "FLOAT64", "y": "BOOL"}
    assert wh.write_query("positives", "SELECT a FROM rows WHERE y") == int(labelled_rows(10)["y"].sum())
    wh.drop_table("positives")
    assert not wh.table_exists("positives")


def test_a_missing_table_is_named(backend):
    with pytest.raises(TableNotFoundError) as err:
        backend.warehouse.table_schema("no_such_table")
    assert err.value.table == "no_such_table"


def test_a_window_replaces_only_its_days(backend):
    wh = backend.warehouse
    days = [dt.date(2026, 1, d) for d in (1, 2, 3)]
    wh.load_dataframe(pd.DataFrame({"day": days, "v": [1, 2, 3]}), "daily")
    window = PartitionWindow("day", days[1], days[1])
    wh.load_dataframe(pd.DataFrame({"day": [days[1]], "v": [20]}), "daily", window=window)
    rows = wh.query("SELECT day, v FROM daily ORDER BY day")
    assert rows["v"].tolist() == [1, 20, 3]


def test_a_window_refuses_rows_outside_it(backend):
    wh = backend.warehouse
    days = [dt.date(2026, 1, d) for d in (1, 2)]
    wh.load_dataframe(pd.DataFrame({"day": days, "v": [1, 2]}), "daily")
    with pytest.raises(WarehouseError):
        wh.write_query(
            "daily",
            "SELECT DATE '2026-01-09' AS day, 9 AS v",
            window=PartitionWindow("day", days[0], days[0]),
        )
    assert wh.query("SELECT v FROM daily ORDER BY day")["v"].tolist() == [1, 2]


def test_bigquery_ml_runs_and_lists_the_model(backend):
    wh = backend.warehouse
    wh.load_dataframe(labelled_rows(), "rows")
    wh.execute(
        "CREATE MODEL contract_model OPTIONS(model_type='LOGISTIC_REG', input_label_cols=['y']) "
        "AS SELECT a, b, y FROM rows"
    )
    assert "contract_model" in [name for name, _ in wh.list_models()]
    predicted = wh.query("SELECT * FROM ML.PREDICT(MODEL contract_model, (SELECT a, b FROM rows LIMIT 5))")
    assert len(predicted) == 5 and "predicted_y" in predicted.columns
    assert wh.model_source("contract_model").startswith("bqml://") and wh.model_source(
        "contract_model"
    ).endswith(".contract_model")
