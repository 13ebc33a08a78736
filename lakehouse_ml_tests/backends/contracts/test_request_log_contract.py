"""The RequestLog port's contract (lakehouse_ml/backends/request_log.py), on both backends: the
local server's Parquet log (written by the server's own writer) and Vertex AI's BigQuery table
(a row as Vertex AI writes it, in the BigQuery double), read through the same port."""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from lakehouse_ml.backends.local_endpoints import LocalEndpoints
from lakehouse_ml.backends.request_log import RequestLog
from lakehouse_ml.backends.vertex import build_vertex_endpoints
from lakehouse_ml.bigquery.request_log import LOG_COLUMNS
from lakehouse_ml.serving.log import RequestLog as ServerLogWriter
from lakehouse_ml_tests.backends.test_vertex import (
    DATASET,
    LOG_TABLE,
    PROJECT,
    REGION,
    seed_churn,
    settings_for,
)
from lakehouse_ml_tests.fakes.bigquery_api import fake_bigquery_api
from lakehouse_ml_tests.fakes.vertex_api import DEFAULT_PROJECT_NUMBER, REQUEST_LOG_SCHEMA, fake_vertex_api

INSTANCES = [{"tenure": 3.0, "plan": "basic"}, {"tenure": 10.5, "plan": None}]
PREDICTIONS = [
    {"predicted_y": ["true"], "y_probs": [0.75, 0.25]},
    {"predicted_y": ["false"], "y_probs": [0.25, 0.75]},
]
HOUR = dt.timedelta(hours=1)


@dataclass
class Logged:
    log: RequestLog
    when: dt.datetime  # when the one request below was logged
    write: Callable[[], None]  # log one request of INSTANCES answered with PREDICTIONS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=["local", "gcp"])
def logged(request, tmp_path) -> Iterator[Logged]:
    if request.param == "local":
        endpoints = LocalEndpoints(home=str(tmp_path), port=_free_port())
        endpoints.create_endpoint("churn", endpoint_id="churn-ep")

        def write() -> None:
            writer = ServerLogWriter(tmp_path / "serving" / "logs")
            writer.add("churn-ep", "dm-1", "churn", "2", "req-1", ["tenure", "plan"], INSTANCES, PREDICTIONS)
            writer.flush()

        yield Logged(endpoints, dt.datetime.now(dt.timezone.utc), write)
        return
    with fake_bigquery_api() as bq, fake_vertex_api(bigquery=bq) as vertex:
        endpoints = build_vertex_endpoints(settings_for(vertex, bigquery=bq))
        seed_churn(vertex)
        bq.create_dataset(PROJECT, DATASET)
        endpoints.create_endpoint("churn", endpoint_id="churn-ep")
        deployed = endpoints.deploy("churn-ep", "churn", "2", "", logging_sampling_rate=1.0)
        when = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)

        def write() -> None:
            row = {
                "endpoint": f"projects/{DEFAULT_PROJECT_NUMBER}/locations/{REGION}/endpoints/churn-ep",
                "deployed_model_id": deployed,
                "logging_time": when,
                "request_id": 1234,
                "request_payload": [json.dumps(i) for i in INSTANCES],
                "response_payload": [json.dumps(p) for p in PREDICTIONS],
            }
            bq.append_rows(PROJECT, DATASET, LOG_TABLE, [row], REQUEST_LOG_SCHEMA)

        yield Logged(endpoints, when, write)


def test_the_implementations_are_the_port(logged):
    assert isinstance(logged.log, RequestLog)
    assert float(logged.log.request_log_grace_seconds()) >= 0


def test_one_request_is_one_row_per_instance_in_the_shared_schema(logged):
    logged.write()
    log = logged.log.request_log("churn-ep", logged.when - HOUR, logged.when + HOUR)
    columns = list(log.columns)
    # The shared columns lead, the prediction ends, the features sit between (in an order each
    # backend chooses: Vertex AI's logged instances keep no key order).
    assert columns[: len(LOG_COLUMNS) - 1] == list(LOG_COLUMNS[:-1]) and columns[-1] == "prediction"
    assert set(columns[len(LOG_COLUMNS) - 1 : -1]) == {"tenure", "plan"}
    assert log["instance_index"].tolist() == [0, 1]
    assert log["tenure"].tolist() == [3.0, 10.5]
    assert log["plan"].iloc[0] == "basic" and log["plan"].isna().iloc[1]
    assert [json.loads(p) for p in log["prediction"]] == PREDICTIONS
    assert set(log["endpoint_id"]) == {"churn-ep"} and set(log["model_id"]) == {"churn"}
    assert set(log["model_version_id"]) == {"2"} and log["request_id"].nunique() == 1


def test_a_window_without_requests_is_empty_with_the_shared_columns(logged):
    logged.write()
    empty = logged.log.request_log("churn-ep", logged.when - 3 * HOUR, logged.when - 2 * HOUR)
    assert len(empty) == 0
    assert list(empty.columns)[: len(LOG_COLUMNS) - 1] == list(LOG_COLUMNS[:-1])
