"""The local warehouse: atomic writes, partition windows, catalog, clear errors."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakehouse_ml.backends.warehouse import PartitionWindow
from lakehouse_ml.core.errors import TableNotFoundError, WarehouseError

D = dt.date(2026, 1, 1)


def _frame(days, value):
    return pd.DataFrame({"d": [D + dt.timedelta(days=i) for i in days], "v": [value] * len(days)})


def test_write_query_replaces_whole_table(warehouse):
    assert warehouse.write_query("t", "SELECT x FROM UNNEST([1, 2, 3]) AS x") == 3
    assert (
        warehouse.write_query("t", "SELECT x * 10 AS x FROM UNNEST([1, 2]) AS x WHERE x > @m", {"m": 1}) == 1
    )
    assert warehouse.query("SELECT x FROM t").x.tolist() == [20]


def test_windowed_load_replaces_only_the_window(warehouse):
    warehouse.load_dataframe(
        _frame(range(5), 1), "t", window=PartitionWindow("d", D, D + dt.timedelta(days=4))
    )
    warehouse.load_dataframe(
        _frame([2, 3], 2),
        "t",
        window=PartitionWindow("d", D + dt.timedelta(days=2), D + dt.timedelta(days=3)),
    )
    got = warehouse.query("SELECT d, v FROM t ORDER BY d")
    assert got.v.tolist() == [1, 1, 2, 2, 1]


def test_rows_outside_the_window_are_refused_and_nothing_changes(warehouse):
    warehouse.load_dataframe(
        _frame(range(3), 1), "t", window=PartitionWindow("d", D, D + dt.timedelta(days=2))
    )
    with pytest.raises(WarehouseError, match="outside the partition window"):
        warehouse.load_dataframe(
            _frame([1, 7], 9),
            "t",
            window=PartitionWindow("d", D + dt.timedelta(days=1), D + dt.timedelta(days=1)),
        )
    assert warehouse.query("SELECT v FROM t ORDER BY d").v.tolist() == [1, 1, 1]


def test_failed_write_leaves_previous_content(warehouse):
    warehouse.write_query("t", "SELECT 1 AS x")
    with pytest.raises(WarehouseError):
        warehouse.write_query("t", "SELECT CAST('not a number' AS INT64) AS x")
    assert warehouse.query("SELECT x FROM t").x.tolist() == [1]


def test_load_parquet(warehouse, tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.Table.from_pandas(_frame([i], i), preserve_index=False), path)
        paths.append(path)
    assert warehouse.load_parquet(paths, "t", window=PartitionWindow("d", D, D + dt.timedelta(days=2))) == 3
    assert warehouse.table_schema("t") == [("d", "DATE"), ("v", "INT64")]
    assert warehouse.row_count("t") == 3
    with pytest.raises(WarehouseError, match="No Parquet files"):
        warehouse.load_parquet([], "t")


def test_catalog_and_missing_tables(warehouse):
    assert not warehouse.table_exists("nope")
    with pytest.raises(TableNotFoundError, match="does not exist.*Materialize the asset"):
        warehouse.query("SELECT * FROM nope")
    with pytest.raises(TableNotFoundError):
        warehouse.table_schema("nope")
    warehouse.write_query("t", "SELECT 1 AS x")
    warehouse.drop_table("t")
    assert not warehouse.table_exists("t")


@pytest.mark.parametrize("name", ["a-b", "1abc", "x; DROP TABLE y", ""])
def test_identifiers_are_checked(warehouse, name):
    with pytest.raises(WarehouseError, match="Invalid table name"):
        warehouse.write_query(name, "SELECT 1 AS x")


def test_parameter_errors(warehouse):
    with pytest.raises(WarehouseError, match="@x but no value"):
        warehouse.query("SELECT @x")
    with pytest.raises(WarehouseError, match="is None"):
        warehouse.query("SELECT @x", {"x": None})
    with pytest.raises(WarehouseError, match="exactly one SELECT"):
        warehouse.write_query("t", "SELECT 1; SELECT 2")
