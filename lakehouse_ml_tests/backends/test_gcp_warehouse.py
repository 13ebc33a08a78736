"""Wire-level tests of the gcp warehouse.

The real ``google-cloud-bigquery`` client (built by :func:`build_gcp_warehouse` from settings)
talks HTTP to a local test double of the BigQuery REST API (:mod:`lakehouse_ml_tests.fakes`),
which really runs the SQL on DuckDB. The tests check what goes over the wire (statements, typed
parameters, job configurations, uploads) and what comes back (values and dtypes).
"""

from __future__ import annotations

import datetime as dt
import re
import threading

import dagster as dg
import httpx
import numpy as np
import pandas as pd
import pytest
from google.auth.credentials import AnonymousCredentials

from lakehouse_ml.backends.gcp_warehouse import GcpWarehouse, LakehouseBigQueryResource, build_gcp_warehouse
from lakehouse_ml.backends.warehouse import PartitionWindow, Warehouse
from lakehouse_ml.core.errors import TableNotFoundError, WarehouseError
from lakehouse_ml.core.settings import load_settings
from lakehouse_ml_tests.fakes import FakeBigQueryApi, fake_bigquery_api

pytestmark = pytest.mark.timeout(60)

PROJECT = "lakehouse-test"
DATASET = "lakehouse_ml"
API = f"/bigquery/v2/projects/{PROJECT}"
UPLOAD = f"/upload/bigquery/v2/projects/{PROJECT}/jobs"
D1, D2, D3 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)


@pytest.fixture()
def api() -> FakeBigQueryApi:
    with fake_bigquery_api() as running:
        yield running
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("fake-bigquery-api")]
    assert leftovers == [], f"the test double left threads behind: {leftovers}"


@pytest.fixture()
def gcp_warehouse(api: FakeBigQueryApi) -> GcpWarehouse:
    settings = load_settings(
        {
            "LAKEHOUSE_ML_BACKEND": "gcp",
            "LAKEHOUSE_ML_GCP_PROJECT": PROJECT,
            "LAKEHOUSE_ML_GCP_DATASET": DATASET,
            "LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT": api.url,
            "LAKEHOUSE_ML_GCP_ANONYMOUS_CREDENTIALS": "true",
        }
    )
    return build_gcp_warehouse(settings)


def orders_frame() -> pd.DataFrame:
    """Three days of orders, three per day."""
    return pd.DataFrame(
        {
            "order_id": np.arange(1, 10, dtype="int64"),
            "order_date": [D1, D1, D1, D2, D2, D2, D3, D3, D3],
            "amount": [10.0, 20.0, 30.0, 1.5, 2.5, 3.0, 100.0, 0.5, 0.25],
            "channel": ["web", "app", "web", "store", "web", "app", "web", "web", "app"],
        }
    )


def query_configs(api: FakeBigQueryApi) -> list[dict]:
    return [body["configuration"]["query"] for body in api.job_inserts() if "query" in body["configuration"]]


def load_configs(api: FakeBigQueryApi) -> list[dict]:
    return [body["configuration"]["load"] for body in api.job_inserts() if "load" in body["configuration"]]


def table_rows(api: FakeBigQueryApi, table: str, sort_by: str) -> list[dict]:
    return sorted(api.table(PROJECT, DATASET, table).to_pylist(), key=lambda row: row[sort_by])


def by_name(parameters: list[dict]) -> dict[str, dict]:
    return {p["name"]: p for p in parameters}


# -- reading ---------------------------------------------------------------------------------------


def test_query_sends_sql_unchanged_with_typed_parameters(gcp_warehouse, api):
    sql = """
        SELECT @flag AS flag, @n AS n, @x AS x, @s AS s, @snapshot_date AS snapshot_date,
               @local_time AS local_time, @event_ts AS event_ts,
               (SELECT COUNT(*) FROM UNNEST(@ids)) AS n_ids, 'b' IN UNNEST(@tags) AS has_b
    """
    df = gcp_warehouse.query(
        sql,
        {
            "flag": True,
            "n": 42,
            "x": 0.25,
            "s": "it's; DROP TABLE x",
            "snapshot_date": D1,
            "local_time": dt.datetime(2026, 3, 1, 8, 30),
            "event_ts": dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "ids": [3, 1, 2],
            "tags": ["a", "b"],
        },
    )

    [config] = query_configs(api)
    assert config["query"] == sql  # byte for byte: the same file runs on both backends
    assert config["useLegacySql"] is False
    assert config["defaultDataset"] == {"projectId": PROJECT, "datasetId": DATASET}
    assert config["parameterMode"] == "NAMED"
    assert "destinationTable" not in config
    assert by_name(config["queryParameters"]) == {
        "flag": {"name": "flag", "parameterType": {"type": "BOOL"}, "parameterValue": {"value": "true"}},
        "n": {"name": "n", "parameterType": {"type": "INT64"}, "parameterValue": {"value": "42"}},
        "x": {"name": "x", "parameterType": {"type": "FLOAT64"}, "parameterValue": {"value": 0.25}},
        "s": {
            "name": "s",
            "parameterType": {"type": "STRING"},
            "parameterValue": {"value": "it's; DROP TABLE x"},
        },
        "snapshot_date": {
            "name": "snapshot_date",
            "parameterType": {"type": "DATE"},
            "parameterValue": {"value": "2026-03-01"},
        },
        "local_time": {
            "name": "local_time",
            "parameterType": {"type": "DATETIME"},
            "parameterValue": {"value": "2026-03-01T08:30:00.000000"},
        },
        "event_ts": {
            "name": "event_ts",
            "parameterType": {"type": "TIMESTAMP"},
            "parameterValue": {"value": "2026-03-01 10:00:00+00:00"},
        },
        "ids": {
            "name": "ids",
            "parameterType": {"type": "ARRAY", "arrayType": {"type": "INT64"}},
            "parameterValue": {"arrayValues": [{"value": "3"}, {"value": "1"}, {"value": "2"}]},
        },
        "tags": {
            "name": "tags",
            "parameterType": {"type": "ARRAY", "arrayType": {"type": "STRING"}},
            "parameterValue": {"arrayValues": [{"value": "a"}, {"value": "b"}]},
        },
    }
    # The job runs in the configured location and rows come from jobs.getQueryResults (no Storage API).
    [insert] = api.find_requests("POST", f"{API}/jobs")
    assert insert.json["jobReference"]["location"] == "US"
    reads = api.find_requests("GET", f"{API}/queries/[^/]+")
    assert reads and all(r.query["location"] == "US" for r in reads)

    assert df.to_dict("records") == [
        {
            "flag": True,
            "n": 42,
            "x": 0.25,
            "s": "it's; DROP TABLE x",
            "snapshot_date": D1,
            "local_time": pd.Timestamp("2026-03-01 08:30:00"),
            "event_ts": pd.Timestamp("2026-03-01 10:00:00", tz="UTC"),
            "n_ids": 3,
            "has_b": True,
        }
    ]
    dtypes = {name: str(dtype) for name, dtype in df.dtypes.items()}
    assert dtypes["flag"] == "bool"
    assert dtypes["n"] == dtypes["n_ids"] == "int64"
    assert dtypes["x"] == "float64"
    assert dtypes["s"] == dtypes["snapshot_date"] == "object"
    assert re.fullmatch(r"datetime64\[(us|ns)\]", dtypes["local_time"])
    assert re.fullmatch(r"datetime64\[(us|ns), UTC\]", dtypes["event_ts"])


def test_query_reads_every_page_of_a_large_result(gcp_warehouse, api):
    api.page_size = 40
    frame = pd.DataFrame({"id": np.arange(100, dtype="int64"), "value": np.linspace(0, 1, 100)})
    gcp_warehouse.load_dataframe(frame, "numbers")
    api.clear_requests()

    df = gcp_warehouse.query("SELECT id, value FROM numbers ORDER BY id")

    pd.testing.assert_frame_equal(df, frame)
    tokens = [
        r.query.get("pageToken")
        for r in api.find_requests("GET", f"{API}/queries/[^/]+")
        if r.query.get("maxResults") != "0"
    ]
    assert tokens == [None, "40", "80"]


def test_script_runs_statements_in_order_and_returns_the_last_query(gcp_warehouse, api):
    gcp_warehouse.execute("CREATE TABLE events (id INT64, kind STRING)")
    df = gcp_warehouse.query(
        "INSERT INTO events (id, kind) VALUES (1, @kind), (2, 'b');\n"
        "SELECT kind, COUNT(*) AS n FROM events GROUP BY kind ORDER BY kind",
        {"kind": "a"},
    )
    assert df.to_dict("records") == [{"kind": "a", "n": 1}, {"kind": "b", "n": 1}]
    # A statement without rows reads back as an empty frame.
    assert gcp_warehouse.query("DELETE FROM events WHERE kind = 'b'").empty
    assert gcp_warehouse.row_count("events") == 1
    assert gcp_warehouse.table_schema("events") == [("id", "INT64"), ("kind", "STRING")]
    # execute() made sure the dataset exists, in the configured location
    [create] = api.find_requests("POST", f"{API}/datasets")
    assert create.json["datasetReference"] == {"projectId": PROJECT, "datasetId": DATASET}
    assert create.json["location"] == "US"


# -- write_query -----------------------------------------------------------------------------------


def test_write_query_replaces_the_whole_table_in_one_job(gcp_warehouse, api):
    gcp_warehouse.load_dataframe(orders_frame(), "raw_orders")
    sql = (
        "SELECT channel, SUM(amount) AS revenue, COUNT(*) AS orders FROM raw_orders "
        "WHERE order_date >= @since GROUP BY channel"
    )
    api.clear_requests()

    assert gcp_warehouse.write_query("channel_revenue", sql, {"since": D1}) == 3

    [config] = query_configs(api)
    assert config["query"] == sql
    assert config["destinationTable"] == {
        "projectId": PROJECT,
        "datasetId": DATASET,
        "tableId": "channel_revenue",
    }
    assert config["writeDisposition"] == "WRITE_TRUNCATE"
    assert config["createDisposition"] == "CREATE_IF_NEEDED"
    assert "timePartitioning" not in config
    assert config["defaultDataset"] == {"projectId": PROJECT, "datasetId": DATASET}
    assert config["queryParameters"] == [
        {"name": "since", "parameterType": {"type": "DATE"}, "parameterValue": {"value": "2026-03-01"}}
    ]
    assert {
        r["channel"]: r["revenue"] for r in table_rows(api, "channel_revenue", "channel")
    } == pytest.approx({"app": 23.25, "store": 1.5, "web": 143.0})

    # A second write replaces the table; the dataset is created once per resource.
    assert gcp_warehouse.write_query("channel_revenue", sql, {"since": D3}) == 2
    assert [r["orders"] for r in table_rows(api, "channel_revenue", "channel")] == [1, 2]
    assert api.find_requests("POST", f"{API}/datasets") == []

    # A failing write leaves the previous content.
    before = table_rows(api, "channel_revenue", "channel")
    with pytest.raises(WarehouseError, match="Unrecognized name: no_such_column"):
        gcp_warehouse.write_query("channel_revenue", "SELECT no_such_column FROM raw_orders")
    assert table_rows(api, "channel_revenue", "channel") == before


def test_windowed_write_creates_a_partitioned_table_then_replaces_only_its_window(gcp_warehouse, api):
    gcp_warehouse.load_dataframe(orders_frame(), "raw_orders")
    sql = (
        "SELECT order_date, SUM(amount) AS revenue FROM raw_orders "
        "WHERE order_date BETWEEN @start AND @end GROUP BY order_date"
    )
    api.clear_requests()

    written = gcp_warehouse.write_query(
        "daily_revenue", sql, {"start": D1, "end": D3}, window=PartitionWindow("order_date", D1, D3)
    )

    # The table is missing. Job 1 runs the SQL exactly as written into a staging table; job 2
    # creates the table, day-partitioned, from the staged rows behind the window guard.
    assert written == 3
    stage, create = query_configs(api)
    assert stage["query"] == sql
    assert stage["destinationTable"]["tableId"].startswith("_lakehouse_ml_staging_daily_revenue_")
    assert stage["writeDisposition"] == "WRITE_TRUNCATE"
    assert by_name(stage["queryParameters"])["start"]["parameterValue"] == {"value": "2026-03-01"}
    staging = stage["destinationTable"]["tableId"]
    assert create["destinationTable"]["tableId"] == "daily_revenue"
    assert create["timePartitioning"] == {"type": "DAY", "field": "order_date"}
    assert create["writeDisposition"] == "WRITE_EMPTY"
    assert create["createDisposition"] == "CREATE_IF_NEEDED"
    assert create["query"] == (
        f"SELECT * FROM (SELECT * FROM {staging}) AS lakehouse_ml_window_rows WHERE IF(order_date BETWEEN "
        "@lakehouse_window_start AND @lakehouse_window_end, TRUE, "
        "ERROR(CONCAT('lakehouse_ml: partition window violated: "
        "order_date = ', COALESCE(CAST(order_date AS STRING), 'NULL'), "
        "' is outside 2026-03-01..2026-03-03')))"
    )
    assert by_name(create["queryParameters"])["lakehouse_window_start"] == {
        "name": "lakehouse_window_start",
        "parameterType": {"type": "DATE"},
        "parameterValue": {"value": "2026-03-01"},
    }
    assert not api.has_table(PROJECT, DATASET, staging)  # dropped after publishing
    assert api.table_metadata(PROJECT, DATASET, "daily_revenue")["timePartitioning"] == {
        "type": "DAY",
        "field": "order_date",
    }

    # The table exists: one script replaces the window inside a transaction.
    api.clear_requests()
    rewrite = (
        "SELECT order_date, SUM(amount) * 10 AS revenue FROM raw_orders "
        "WHERE order_date = @day GROUP BY order_date"
    )
    written = gcp_warehouse.write_query(
        "daily_revenue", rewrite, {"day": D2}, window=PartitionWindow("order_date", D2, D2)
    )

    assert written == 1
    stage, script = query_configs(api)
    assert stage["query"] == rewrite
    staging = stage["destinationTable"]["tableId"]
    assert script["query"] == (
        "BEGIN TRANSACTION;\n"
        "DELETE FROM daily_revenue WHERE order_date BETWEEN @lakehouse_window_start AND @lakehouse_window_end;\n"
        f"INSERT INTO daily_revenue (order_date, revenue) SELECT order_date, revenue FROM (SELECT * FROM {staging}) AS "
        "lakehouse_ml_window_rows WHERE IF(order_date BETWEEN @lakehouse_window_start AND @lakehouse_window_end, TRUE, "
        "ERROR(CONCAT('lakehouse_ml: partition window violated: order_date = ', COALESCE(CAST(order_date AS "
        "STRING), 'NULL'), ' is outside 2026-03-02..2026-03-02')));\n"
        "COMMIT TRANSACTION;"
    )
    assert "destinationTable" not in script
    assert by_name(script["queryParameters"]) == {
        "lakehouse_window_start": {
            "name": "lakehouse_window_start",
            "parameterType": {"type": "DATE"},
            "parameterValue": {"value": "2026-03-02"},
        },
        "lakehouse_window_end": {
            "name": "lakehouse_window_end",
            "parameterType": {"type": "DATE"},
            "parameterValue": {"value": "2026-03-02"},
        },
    }
    # The row count comes from the INSERT child job of the script.
    [children] = api.find_requests("GET", f"{API}/jobs")
    assert (
        children.query["parentJobId"]
        == api.find_requests("POST", f"{API}/jobs")[1].json["jobReference"]["jobId"]
    )
    assert table_rows(api, "daily_revenue", "order_date") == [
        {"order_date": D1, "revenue": 60.0},
        {"order_date": D2, "revenue": 70.0},
        {"order_date": D3, "revenue": 100.75},
    ]


def test_windowed_write_refuses_rows_outside_the_window_and_changes_nothing(gcp_warehouse, api):
    gcp_warehouse.load_dataframe(orders_frame(), "raw_orders")
    per_day = "SELECT order_date, SUM(amount) AS revenue FROM raw_orders GROUP BY order_date"
    gcp_warehouse.write_query("daily_revenue", per_day, window=PartitionWindow("order_date", D1, D3))
    before = table_rows(api, "daily_revenue", "order_date")

    # Existing table: the transaction fails on the first stray row and is rolled back.
    with pytest.raises(WarehouseError) as refused:
        gcp_warehouse.write_query("daily_revenue", per_day, window=PartitionWindow("order_date", D2, D2))
    message = str(refused.value)
    assert "outside 2026-03-02..2026-03-02" in message
    assert "left unchanged" in message
    assert table_rows(api, "daily_revenue", "order_date") == before

    # NULL partition values are outside every window too.
    with pytest.raises(WarehouseError, match="order_date = NULL is outside"):
        gcp_warehouse.write_query(
            "daily_revenue",
            "SELECT CAST(NULL AS DATE) AS order_date, 1.0 AS revenue",
            window=PartitionWindow("order_date", D2, D2),
        )
    assert table_rows(api, "daily_revenue", "order_date") == before

    # Missing table: the creating job fails and no table is left behind.
    with pytest.raises(WarehouseError, match="outside 2026-03-01..2026-03-01"):
        gcp_warehouse.write_query("fresh_daily", per_day, window=PartitionWindow("order_date", D1, D1))
    assert not api.has_table(PROJECT, DATASET, "fresh_daily")
    assert not gcp_warehouse.table_exists("fresh_daily")


def test_write_query_validates_before_sending(gcp_warehouse, api):
    with pytest.raises(WarehouseError, match="Invalid table name"):
        gcp_warehouse.write_query("daily-revenue", "SELECT 1 AS x")
    with pytest.raises(WarehouseError, match="Expected exactly one SELECT"):
        gcp_warehouse.write_query("t", "DELETE FROM t WHERE TRUE")
    with pytest.raises(WarehouseError, match="empty list"):
        gcp_warehouse.query("SELECT 1 AS x FROM UNNEST(@ids)", {"ids": []})
    assert query_configs(api) == []


# -- load_dataframe --------------------------------------------------------------------------------


def test_load_dataframe_uploads_parquet_and_replaces_the_table(gcp_warehouse, api):
    frame = pd.DataFrame(
        {
            "id": np.array([1, 2, 3], dtype="int64"),
            "amount": [1.25, -2.5, 1e6],
            "name": ["a", "b", None],
            "active": [True, False, True],
            "day": [D1, D2, D3],
            "naive_ts": pd.to_datetime(["2026-03-01 08:00:00", "2026-03-02 09:30:00", "2026-03-03 23:59:59"]),
            "event_ts": pd.to_datetime(
                ["2026-03-01 08:00:00", "2026-03-02 09:30:00", "2026-03-03 23:59:59"], utc=True
            ),
        }
    )

    assert gcp_warehouse.load_dataframe(frame, "customers") == 3

    [upload] = api.find_requests("POST", UPLOAD)
    assert upload.query["uploadType"] == "multipart"
    [load] = load_configs(api)
    assert load["sourceFormat"] == "PARQUET"
    assert load["writeDisposition"] == "WRITE_TRUNCATE"
    assert load["destinationTable"] == {"projectId": PROJECT, "datasetId": DATASET, "tableId": "customers"}
    assert [(f["name"], f["type"]) for f in load["schema"]["fields"]] == [
        ("id", "INTEGER"),
        ("amount", "FLOAT"),
        ("name", "STRING"),
        ("active", "BOOLEAN"),
        ("day", "DATE"),
        ("naive_ts", "TIMESTAMP"),  # naive datetimes are read as UTC, as the local backend does
        ("event_ts", "TIMESTAMP"),
    ]
    assert gcp_warehouse.table_schema("customers") == [
        ("id", "INT64"),
        ("amount", "FLOAT64"),
        ("name", "STRING"),
        ("active", "BOOL"),
        ("day", "DATE"),
        ("naive_ts", "TIMESTAMP"),
        ("event_ts", "TIMESTAMP"),
    ]
    back = gcp_warehouse.query("SELECT * FROM customers ORDER BY id")
    assert back["id"].tolist() == [1, 2, 3] and str(back["id"].dtype) == "int64"
    assert back["amount"].tolist() == [1.25, -2.5, 1e6]
    assert back["name"].tolist() == ["a", "b", None]
    assert back["active"].tolist() == [True, False, True] and str(back["active"].dtype) == "bool"
    assert back["day"].tolist() == [D1, D2, D3]
    assert back["naive_ts"].tolist() == frame["naive_ts"].dt.tz_localize("UTC").tolist()
    assert back["event_ts"].tolist() == frame["event_ts"].tolist()
    assert str(back["event_ts"].dt.tz) == "UTC"
    assert "naive_ts" in frame and frame["naive_ts"].dt.tz is None  # the caller's frame is not modified

    assert gcp_warehouse.load_dataframe(frame.head(1), "customers") == 1
    assert gcp_warehouse.row_count("customers") == 1


def test_windowed_load_stages_the_frame_and_publishes_it_in_one_transaction(gcp_warehouse, api):
    gcp_warehouse.load_dataframe(orders_frame(), "raw_orders")
    api.clear_requests()
    day2 = pd.DataFrame(
        {"order_id": [20, 21], "order_date": [D2, D2], "amount": [7.0, 8.0], "channel": ["app", "app"]}
    )

    assert gcp_warehouse.load_dataframe(day2, "raw_orders", window=PartitionWindow("order_date", D2, D2)) == 2

    [load] = load_configs(api)
    staging = load["destinationTable"]["tableId"]
    assert re.fullmatch(r"_lakehouse_ml_staging_raw_orders_[0-9a-f]{12}", staging)
    assert load["writeDisposition"] == "WRITE_TRUNCATE" and load["sourceFormat"] == "PARQUET"
    # The staging table expires by itself (about a day) in case the process dies, and is dropped after.
    [expire] = api.find_requests("PATCH", f"{API}/datasets/{DATASET}/tables/{staging}")
    expires_in = int(expire.json["expirationTime"]) / 1000 - dt.datetime.now(dt.timezone.utc).timestamp()
    assert 0 < expires_in <= 86400
    [script] = query_configs(api)
    assert script["query"] == (
        "BEGIN TRANSACTION;\n"
        "DELETE FROM raw_orders WHERE order_date BETWEEN @lakehouse_window_start AND @lakehouse_window_end;\n"
        "INSERT INTO raw_orders (order_id, order_date, amount, channel) SELECT order_id, order_date, amount, "
        f"channel FROM (SELECT * FROM {staging}) AS lakehouse_ml_window_rows WHERE IF(order_date BETWEEN "
        "@lakehouse_window_start AND @lakehouse_window_end, TRUE, "
        "ERROR(CONCAT('lakehouse_ml: partition window violated: "
        "order_date = ', COALESCE(CAST(order_date AS STRING), 'NULL'), "
        "' is outside 2026-03-02..2026-03-02')));\n"
        "COMMIT TRANSACTION;"
    )
    assert api.find_requests("DELETE", f"{API}/datasets/{DATASET}/tables/{staging}")
    assert not api.has_table(PROJECT, DATASET, staging)
    assert [(r["order_date"], r["order_id"]) for r in table_rows(api, "raw_orders", "order_id")] == [
        (D1, 1),
        (D1, 2),
        (D1, 3),
        (D3, 7),
        (D3, 8),
        (D3, 9),
        (D2, 20),
        (D2, 21),
    ]

    # Rows outside the window: refused before anything is sent.
    api.clear_requests()
    before = table_rows(api, "raw_orders", "order_id")
    with pytest.raises(WarehouseError, match=r"1 row\(s\) for raw_orders fall outside .* 2026-03-03"):
        gcp_warehouse.load_dataframe(
            pd.DataFrame(
                {
                    "order_id": [30, 31],
                    "order_date": [D2, D3],
                    "amount": [1.0, 2.0],
                    "channel": ["web", "web"],
                }
            ),
            "raw_orders",
            window=PartitionWindow("order_date", D2, D2),
        )
    assert api.requests == []
    assert table_rows(api, "raw_orders", "order_id") == before


def test_windowed_load_into_a_missing_table_creates_it_partitioned(gcp_warehouse, api):
    frame = orders_frame()
    assert (
        gcp_warehouse.load_dataframe(frame, "raw_orders", window=PartitionWindow("order_date", D1, D3)) == 9
    )
    [create] = query_configs(api)
    assert create["timePartitioning"] == {"type": "DAY", "field": "order_date"}
    assert create["writeDisposition"] == "WRITE_EMPTY"
    assert gcp_warehouse.row_count("raw_orders") == 9
    # A later full load keeps the table's partitioning (BigQuery refuses to drop it silently).
    gcp_warehouse.load_dataframe(frame.head(2), "raw_orders")
    assert load_configs(api)[-1]["timePartitioning"] == {"type": "DAY", "field": "order_date"}
    assert gcp_warehouse.row_count("raw_orders") == 2


def test_large_frames_use_the_resumable_upload(gcp_warehouse, api):
    frame = pd.DataFrame({"x": np.random.default_rng(0).random(700_000)})  # > 5 MB of Parquet
    assert gcp_warehouse.load_dataframe(frame, "big") == 700_000
    [start] = api.find_requests("POST", UPLOAD)
    assert start.query["uploadType"] == "resumable"
    assert start.json["configuration"]["load"]["sourceFormat"] == "PARQUET"
    chunks = api.find_requests("PUT", UPLOAD)
    assert chunks and re.fullmatch(r"bytes 0-\d+/\d+", chunks[-1].headers["content-range"])
    assert gcp_warehouse.row_count("big") == 700_000


def test_load_parquet_files_are_staged_then_published_atomically(gcp_warehouse, api, tmp_path):
    frame = orders_frame()
    paths = []
    for day in (D1, D2, D3):
        path = tmp_path / f"orders_{day:%Y%m%d}.parquet"
        frame[frame.order_date == day].to_parquet(path, index=False)
        paths.append(path)

    assert gcp_warehouse.load_parquet(paths, "raw_orders") == 9
    [load] = load_configs(api)  # the three files go up as one upload, into a staging table
    assert load["writeDisposition"] == "WRITE_TRUNCATE" and load["sourceFormat"] == "PARQUET"
    assert load["destinationTable"]["tableId"].startswith("_lakehouse_ml_staging_raw_orders_")
    publish = query_configs(api)[-1]
    assert publish["writeDisposition"] == "WRITE_TRUNCATE"
    assert publish["destinationTable"]["tableId"] == "raw_orders"
    assert re.fullmatch(r"SELECT \* FROM _lakehouse_ml_staging_raw_orders_[0-9a-f]{12}", publish["query"])

    replaced = frame[frame.order_date == D3].assign(amount=0.0)
    replaced.to_parquet(tmp_path / "day3.parquet", index=False)
    window = PartitionWindow("order_date", D3, D3)
    assert gcp_warehouse.load_parquet([tmp_path / "day3.parquet"], "raw_orders", window=window) == 3
    assert query_configs(api)[-1]["query"].startswith("BEGIN TRANSACTION;\nDELETE FROM raw_orders WHERE")
    rows = table_rows(api, "raw_orders", "order_id")
    assert [r["amount"] for r in rows] == [10.0, 20.0, 30.0, 1.5, 2.5, 3.0, 0.0, 0.0, 0.0]
    # Parquet rows outside the window are refused by the guard inside the transaction.
    with pytest.raises(WarehouseError, match="outside 2026-03-03..2026-03-03"):
        gcp_warehouse.load_parquet(paths, "raw_orders", window=window)
    assert table_rows(api, "raw_orders", "order_id") == rows
    staging_tables = {c["destinationTable"]["tableId"] for c in load_configs(api)}
    assert not any(api.has_table(PROJECT, DATASET, t) for t in staging_tables)


def test_the_projects_feature_sql_runs_through_the_client_like_on_the_local_backend(
    gcp_warehouse, api, tmp_path
):
    """Contract: each ``sql/features`` file goes over the wire byte for byte and builds the same
    rows and schema as the local backend."""
    from lakehouse_ml.backends.local_warehouse import LocalWarehouse
    from lakehouse_ml.lifecycle import features
    from lakehouse_ml_tests.conftest import DAY0, small_raw_tables

    local = LocalWarehouse.at(tmp_path / "warehouse.duckdb")
    for name, frame in small_raw_tables(customers=15, days=30).items():
        assert gcp_warehouse.load_dataframe(frame, name) == local.load_dataframe(frame, name)

    for table in features.FEATURE_TABLES:
        window = None
        if table.partition_column:
            window = PartitionWindow(
                table.partition_column, DAY0 + dt.timedelta(days=10), DAY0 + dt.timedelta(days=29)
            )
        # Short look-back and horizon so that 30 simulated days yield snapshots with labels.
        params = {
            k: v for k, v in {"lookback_days": 14, "churn_horizon_days": 7}.items() if k in table.params
        }
        api.clear_requests()
        written = features.build(gcp_warehouse, table, params, window)
        assert written > 0 and written == features.build(local, table, params, window)

        configs = query_configs(api)
        assert configs[0]["query"] == table.sql  # the file, byte for byte
        if window is None:
            assert len(configs) == 1 and configs[0]["destinationTable"]["tableId"] == table.name
        else:
            # Staged, then published behind the window guard into a day-partitioned table.
            assert "ERROR(CONCAT('lakehouse_ml: partition window violated" in configs[-1]["query"]
            assert configs[-1]["timePartitioning"] == {"type": "DAY", "field": table.partition_column}
        assert gcp_warehouse.table_schema(table.name) == local.table_schema(table.name)

        order = ", ".join(table.keys)
        remote = gcp_warehouse.query(f"SELECT * FROM {table.name} ORDER BY {order}")
        here = local.query(f"SELECT * FROM {table.name} ORDER BY {order}")
        for frame in (remote, here):  # TIMESTAMP: aware UTC from BigQuery, naive UTC from DuckDB
            for column in frame.columns:
                if pd.api.types.is_datetime64_any_dtype(frame[column]):
                    frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[ns, UTC]")
        pd.testing.assert_frame_equal(remote, here, check_dtype=False)


# -- catalog and errors ----------------------------------------------------------------------------


def test_catalog_methods(gcp_warehouse, api):
    assert gcp_warehouse.table_exists("raw_orders") is False
    gcp_warehouse.load_dataframe(orders_frame(), "raw_orders")
    assert gcp_warehouse.table_exists("raw_orders") is True
    assert gcp_warehouse.table_schema("raw_orders") == [
        ("order_id", "INT64"),
        ("order_date", "DATE"),
        ("amount", "FLOAT64"),
        ("channel", "STRING"),
    ]
    assert gcp_warehouse.row_count("raw_orders") == 9
    gcp_warehouse.drop_table("raw_orders")
    assert gcp_warehouse.table_exists("raw_orders") is False
    gcp_warehouse.drop_table("raw_orders")  # dropping a missing table is fine
    deletes = api.find_requests("DELETE", f"{API}/datasets/{DATASET}/tables/raw_orders")
    assert [d.status for d in deletes] == [204, 404]
    assert gcp_warehouse.describe() == f"BigQuery dataset {PROJECT}.{DATASET} (location US) via {api.url}"
    assert gcp_warehouse.table_url("raw_orders") == (
        f"https://console.cloud.google.com/bigquery?project={PROJECT}"
        f"&ws=!1m5!1m4!4m3!1s{PROJECT}!2s{DATASET}!3sraw_orders"
    )


def test_missing_tables_raise_table_not_found_with_what_to_do(gcp_warehouse, api):
    gcp_warehouse.execute("CREATE TABLE present (x INT64)")
    with pytest.raises(TableNotFoundError) as missing:
        gcp_warehouse.query("SELECT * FROM raw_orders WHERE order_date = @d", {"d": D1})
    assert missing.value.table == "raw_orders"
    assert f"{PROJECT}.{DATASET}.raw_orders was not found in BigQuery" in str(missing.value)
    assert "Materialize the asset that builds it first" in str(missing.value)

    for call in (gcp_warehouse.table_schema, gcp_warehouse.row_count):
        with pytest.raises(
            TableNotFoundError, match=f"Table {PROJECT}.{DATASET}.nope was not found .* Materialize"
        ):
            call("nope")


def test_bad_sql_raises_warehouse_error_with_bigquery_message(gcp_warehouse, api):
    gcp_warehouse.load_dataframe(orders_frame(), "raw_orders")
    for sql in ("SELECT order_date, no_such_column FROM raw_orders", "SELECT FROM raw_orders WHERE"):
        api.clear_requests()
        with pytest.raises(WarehouseError) as bad:
            gcp_warehouse.query(sql)
        assert not isinstance(bad.value, TableNotFoundError)
        [insert] = api.find_requests("POST", f"{API}/jobs")
        bigquery_message = insert.response["status"]["errorResult"]["message"]
        assert bigquery_message in str(bad.value)
        assert "Fix the BigQuery SQL" in str(bad.value)
    assert "Syntax error" in str(bad.value)


def test_the_double_answers_in_bigquery_error_shape(api):
    response = httpx.get(f"{api.url}{API}/datasets/{DATASET}/tables/missing")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": 404,
            "message": f"Not found: Dataset {PROJECT}:{DATASET}",
            "errors": [
                {
                    "message": f"Not found: Dataset {PROJECT}:{DATASET}",
                    "domain": "global",
                    "reason": "notFound",
                }
            ],
            "status": "NOT_FOUND",
        }
    }


def test_dataset_in_another_location_is_reported(api):
    settings = {
        "LAKEHOUSE_ML_BACKEND": "gcp",
        "LAKEHOUSE_ML_GCP_PROJECT": PROJECT,
        "LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT": api.url,
        "LAKEHOUSE_ML_GCP_ANONYMOUS_CREDENTIALS": "true",
    }
    build_gcp_warehouse(load_settings({**settings, "LAKEHOUSE_ML_BIGQUERY_LOCATION": "EU"})).execute(
        "SELECT 1"
    )
    us = build_gcp_warehouse(load_settings(settings))
    with pytest.raises(WarehouseError, match="is in location EU, but LAKEHOUSE_ML_BIGQUERY_LOCATION is US"):
        us.write_query("t", "SELECT 1 AS x")


# -- settings and Dagster ----------------------------------------------------------------------------


def test_settings_point_the_client_at_the_api_endpoint(gcp_warehouse, api):
    resource = gcp_warehouse.bigquery
    assert isinstance(resource, LakehouseBigQueryResource)
    assert (resource.project, resource.location, resource.api_endpoint) == (PROJECT, "US", api.url)
    assert resource.anonymous_credentials is True and gcp_warehouse.dataset == DATASET
    with resource.get_client() as client:
        assert client._connection.API_BASE_URL == api.url
        assert isinstance(client._credentials, AnonymousCredentials)
        assert (client.project, client.location) == (PROJECT, "US")

    gcp_warehouse.query("SELECT 1 AS one")
    assert api.requests and all("authorization" not in r.headers for r in api.requests)

    with pytest.raises(WarehouseError, match="LAKEHOUSE_ML_GCP_PROJECT"):
        build_gcp_warehouse(load_settings({"LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT": api.url}))


def test_the_warehouse_is_a_dagster_resource(gcp_warehouse, api):
    @dg.asset
    def channel_totals(warehouse: dg.ResourceParam[Warehouse]) -> dg.MaterializeResult:
        rows = warehouse.write_query(
            "channel_totals", "SELECT @channel AS channel, 3 AS orders", {"channel": "web"}
        )
        return dg.MaterializeResult(
            metadata={"rows": rows, "table": dg.MetadataValue.url(warehouse.table_url("channel_totals"))}
        )

    result = dg.materialize([channel_totals], resources={"warehouse": gcp_warehouse})

    assert result.success
    [event] = result.asset_materializations_for_node("channel_totals")
    assert event.metadata["rows"].value == 1
    assert event.metadata["table"].value.endswith("!3schannel_totals")
    assert table_rows(api, "channel_totals", "channel") == [{"channel": "web", "orders": 3}]


# -- the k-means gate ------------------------------------------------------------------------------


def test_the_kmeans_gate_scores_clusterings_through_the_client_like_on_the_local_backend(
    gcp_warehouse, api, tmp_path
):
    """customer_segments_model's gate on BigQuery: its model file (as a run's model) and gate file
    go over the wire, the numbered rows are uploaded once, both versions' ML.PREDICT and the
    candidate's ML.TRANSFORM read that table, and the scores equal the local backend's."""
    from lakehouse_ml.backends.local_warehouse import LocalWarehouse
    from lakehouse_ml.bigquery.sqlfiles import read_sql
    from lakehouse_ml.lifecycle import deployment, models

    spec = models.CUSTOMER_SEGMENTS_MODEL
    rng = np.random.default_rng(2)
    n = 240
    snapshot = rng.choice([D1, D2], n)
    frame = pd.DataFrame(
        {
            "snapshot_date": snapshot,
            "recency_days": rng.integers(0, 90, n).astype("int64"),
            "frequency_orders": rng.integers(1, 30, n).astype("int64"),
            "monetary_total": rng.lognormal(5.0, 1.0, n),
            "avg_order_value": rng.lognormal(3.5, 0.5, n),
            "distinct_categories": rng.integers(1, 8, n).astype("int64"),
            "share_app": rng.random(n),
        }
    )
    local = LocalWarehouse.at(tmp_path / "warehouse.duckdb")
    scores = {}
    for warehouse in (gcp_warehouse, local):
        warehouse.load_dataframe(frame, "customer_features")
        warehouse.execute(models.training_sql(spec, "segments_candidate"))
        # a serving version with fewer clusters
        warehouse.execute(
            models.training_sql(spec, "segments_serving").replace("num_clusters = 5", "num_clusters = 2")
        )
        rows = warehouse.query(read_sql(f"gate/{spec.name}.sql"))
        assert len(rows) == int((snapshot == D2).sum())
        api.clear_requests()
        scores[warehouse is local] = deployment.score_clusterings(
            warehouse, spec, rows, "segments_candidate", "segments_serving"
        )
        if warehouse is gcp_warehouse:
            sent, loads = [c["query"] for c in query_configs(api)], load_configs(api)
    assert scores[False]["candidate"] == pytest.approx(scores[True]["candidate"], rel=1e-9)
    assert scores[False]["serving"] == pytest.approx(scores[True]["serving"], rel=1e-9)
    assert (
        scores[False]["candidate"]["davies_bouldin_index"] < scores[False]["serving"]["davies_bouldin_index"]
    )

    table = f"{spec.name}_gate_rows"
    assert len(sent) == 3
    assert sent[0].endswith(f"SELECT * FROM ML.PREDICT(MODEL segments_candidate, TABLE {table})")
    assert sent[1].endswith(f"SELECT * FROM ML.PREDICT(MODEL segments_serving, TABLE {table})")
    assert sent[2].endswith(f"SELECT * FROM ML.TRANSFORM(MODEL segments_candidate, TABLE {table})")
    (load,) = loads
    assert load["destinationTable"]["tableId"] == table and load["writeDisposition"] == "WRITE_TRUNCATE"
    uploaded = api.table(PROJECT, DATASET, table).to_pandas()
    assert uploaded["gate_row"].tolist() == list(range(len(rows)))
