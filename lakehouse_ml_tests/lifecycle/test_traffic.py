"""The website (lakehouse_ml.lifecycle.traffic): instances from the serving query, simulated drifted traffic,
requests to a real local endpoint server, errors counted not raised, the send schedule under an
injected clock, and the command."""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import tempfile
import threading

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlglot

from lakehouse_ml.backends.local_endpoints import LocalEndpoints
from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.bigquery.served import json_safe
from lakehouse_ml.bigquery.sqlfiles import read_sql
from lakehouse_ml.core.errors import EndpointError, WarehouseError
from lakehouse_ml.core.settings import Settings
from lakehouse_ml.engine.engine import BqmlEngine
from lakehouse_ml.lifecycle.traffic import (
    add_traffic_arguments,
    endpoint_predict_url,
    run_traffic_command,
    scenario_instances,
    send_schedule,
    send_traffic,
    serving_instances,
)
from lakehouse_ml.serving import server
from lakehouse_ml_tests.local_chain import stop_server
from lakehouse_ml_tests.serving.conftest import artifact, free_port, instances, training_frame

SERVING_COLUMNS = sqlglot.parse_one(read_sql("serving/churn_model.sql"), read="bigquery").named_selects


# -- fixtures: a trained model, a real local endpoint server (always stopped) -------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = BqmlEngine(tmp_path_factory.mktemp("models"))
    frame = training_frame()
    engine.create_model("churn", {"model_type": "LOGISTIC_REG", "input_label_cols": ["churned"]}, frame)
    engine.create_model(
        "churn2", {"model_type": "LOGISTIC_REG", "input_label_cols": ["churned"], "l2_reg": 5.0}, frame
    )
    return engine


def _start(endpoints: LocalEndpoints, home):
    return server.start_background(
        home, endpoints.host, endpoints.port, endpoints.token, extra_args=["--log-flush-seconds", "0.2"]
    )


@pytest.fixture
def running(tmp_path):
    home = tmp_path / "home"
    endpoints = LocalEndpoints(home=str(home), port=free_port())
    process = _start(endpoints, home)
    try:
        yield endpoints
    finally:
        stop_server(process)


@pytest.fixture
def churn_url(running, engine):
    running.create_endpoint("churn", endpoint_id="churn-ep")
    running.deploy("churn-ep", "churn", "1", artifact(engine, "churn"))
    url, token = endpoint_predict_url(running, "churn")
    return url


GOOD = instances(training_frame().head(50))


# -- sending to a real server ------------------------------------------------------------------


def test_every_request_is_sent_and_answered(running, churn_url):
    assert (
        churn_url
        == f"http://127.0.0.1:{running.port}/v1/projects/local/locations/us-central1/endpoints/churn-ep:predict"
    )
    calls = []
    report = send_traffic(
        churn_url,
        GOOD,
        count=60,
        rate=None,
        batch_size=3,
        concurrency=4,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert (report.sent, report.ok, report.failed, report.instances) == (60, 60, 0, 180)
    assert report.status_counts == {200: 60}
    assert report.versions == {"1": 60}
    assert report.errors == [] and not report.interrupted
    assert report.p50_ms is not None and 0 < report.p50_ms <= report.p99_ms
    # With the model's prediction format every answer is parsed, and the report counts the classes.
    from lakehouse_ml.bigquery.served import PredictionFormat

    parsed = send_traffic(
        churn_url,
        GOOD,
        count=10,
        rate=None,
        batch_size=2,
        prediction_format=PredictionFormat("LOGISTIC_REG", "churned"),
    )
    assert (
        parsed.ok == 10 and sum(parsed.outcomes.values()) == 20 and set(parsed.outcomes) <= {"true", "false"}
    )
    assert "Predictions: " in parsed.summary()
    wrong = send_traffic(
        churn_url, GOOD, count=2, rate=None, prediction_format=PredictionFormat("LOGISTIC_REG", "other")
    )
    assert wrong.failed == 2 and "no predicted_other" in wrong.errors[0]
    assert calls[-1] == (60, 60) and calls.count((60, 60)) == 1
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    summary = report.summary()
    assert (
        "Sent 60 request(s) (180 instance(s))" in summary
        and "60 OK, 0 failed" in summary
        and "v1: 60" in summary
    )


def test_versions_of_a_traffic_split_are_counted(running, engine, churn_url):
    running.deploy("churn-ep", "churn", "2", artifact(engine, "churn2"), traffic_percentage=50)
    report = send_traffic(churn_url, GOOD, count=200, rate=None, concurrency=4)
    assert report.ok == 200
    assert set(report.versions) == {"1", "2"} and sum(report.versions.values()) == 200


def test_http_errors_are_counted_not_raised(running, churn_url):
    bad = [{**GOOD[0], "x1": "not a number"}, {k: v for k, v in GOOD[1].items() if k != "x2"}]
    mixed = [GOOD[0], bad[0], GOOD[1], bad[1]]
    report = send_traffic(churn_url, mixed, count=40, rate=None, concurrency=3)
    assert (report.sent, report.ok, report.failed) == (40, 20, 20)
    assert report.status_counts == {200: 20, 400: 20}
    assert report.versions == {"1": 20}
    assert 1 <= len(report.errors) <= 5 and len(set(report.errors)) == len(report.errors)
    assert all(e.startswith("400 INVALID_ARGUMENT: ") for e in report.errors)
    assert any("x1" in e for e in report.errors) and any("x2" in e for e in report.errors)

    unknown = churn_url.replace("churn-ep", "no-such-endpoint")
    report = send_traffic(unknown, GOOD, count=5, rate=None)
    assert report.status_counts == {404: 5} and report.failed == 5 and report.ok == 0
    assert report.errors and report.errors[0].startswith("404 NOT_FOUND")


def test_connection_failures_are_counted_not_raised():
    url = f"http://127.0.0.1:{free_port()}/v1/projects/p/locations/l/endpoints/e:predict"
    report = send_traffic(url, GOOD, count=4, rate=None, concurrency=2, timeout=5)
    assert (report.sent, report.ok, report.failed) == (4, 0, 4)
    assert report.status_counts == {"ConnectError": 4}
    assert report.errors[0].startswith("ConnectError") and report.p50_ms is None
    assert "ConnectError: 4" in report.summary()


def test_bearer_token(tmp_path, engine):
    home = tmp_path / "home"
    endpoints = LocalEndpoints(home=str(home), port=free_port(), token="s3cret-token")
    process = _start(endpoints, home)
    try:
        endpoints.create_endpoint("churn", endpoint_id="churn-ep")
        endpoints.deploy("churn-ep", "churn", "1", artifact(engine, "churn"))
        url, token = endpoint_predict_url(endpoints, "churn-ep")
        assert token == "s3cret-token"
        assert send_traffic(url, GOOD, count=5, rate=None, token=token).ok == 5
        refused = send_traffic(url, GOOD, count=5, rate=None)
        assert refused.status_counts == {401: 5} and refused.errors[0].startswith("401 ")
    finally:
        stop_server(process)


def test_unknown_endpoint_name_says_what_to_do(running):
    with pytest.raises(EndpointError, match="Deploy the model first"):
        endpoint_predict_url(running, "nope")


# -- the schedule, with an injected clock (no timed assertions) ------------------------------


class FakeClock:
    """Time that moves only when someone sleeps (thread-safe)."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.lock = threading.Lock()
        self.sleeps: list[float] = []

    def clock(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


def _recording_transport(clock: FakeClock, seen: list, status=200):
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with lock:
            seen.append(
                (clock.clock(), [i["id"] for i in body["instances"]], request.headers.get("authorization"))
            )
        if status != 200:
            return httpx.Response(
                status,
                json={"error": {"code": status, "message": "quota exceeded", "status": "RESOURCE_EXHAUSTED"}},
            )
        return httpx.Response(200, json={"predictions": [{}] * len(body["instances"]), "modelVersionId": "7"})

    return httpx.MockTransport(handler)


def test_send_schedule():
    assert send_schedule(5, 10) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert send_schedule(3, None) == [0.0, 0.0, 0.0]
    assert send_schedule(0, 50) == []
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate"):
            send_schedule(3, bad)


def test_requests_start_on_schedule_with_one_worker():
    clock, seen = FakeClock(), []
    pool = [{"id": i} for i in range(4)]
    report = send_traffic(
        "http://test/v1/x:predict",
        pool,
        count=10,
        rate=20,
        batch_size=2,
        token="t",
        concurrency=1,
        clock=clock.clock,
        sleep=clock.sleep,
        transport=_recording_transport(clock, seen),
    )
    assert report.ok == 10 and report.versions == {"7": 10} and report.instances == 20
    times = [t - 1000.0 for t, _, _ in seen]
    assert times == pytest.approx([i / 20 for i in range(10)])  # exactly request i at i / rate
    assert [ids for _, ids, _ in seen] == [
        [(2 * i) % 4, (2 * i + 1) % 4] for i in range(10)
    ]  # cycling, batched
    assert {auth for _, _, auth in seen} == {"Bearer t"}


def test_requests_are_never_early_with_many_workers():
    clock, seen = FakeClock(), []
    pool = [{"id": i} for i in range(50)]
    report = send_traffic(
        "http://test/v1/x:predict",
        pool,
        count=50,
        rate=100,
        concurrency=4,
        clock=clock.clock,
        sleep=clock.sleep,
        transport=_recording_transport(clock, seen),
    )
    assert report.sent == 50 and report.ok == 50
    assert sorted(ids[0] for _, ids, _ in seen) == list(range(50))  # each request once
    for sent_at, ids, _ in seen:
        assert sent_at - 1000.0 >= ids[0] / 100 - 1e-9


def test_as_fast_as_possible_never_sleeps_and_server_errors_are_counted():
    clock, seen = FakeClock(), []
    report = send_traffic(
        "http://test/v1/x:predict",
        [{"id": 0}],
        count=12,
        rate=None,
        concurrency=3,
        clock=clock.clock,
        sleep=clock.sleep,
        transport=_recording_transport(clock, seen, status=429),
    )
    assert clock.sleeps == []
    assert report.status_counts == {429: 12} and report.failed == 12
    assert report.errors == ["429 RESOURCE_EXHAUSTED: quota exceeded"]


def test_progress_is_throttled():
    import time as real_time

    def slow(request):
        real_time.sleep(0.002)
        return httpx.Response(200, json={"predictions": [{}], "modelVersionId": "1"})

    calls = []
    started = real_time.monotonic()
    report = send_traffic(
        "http://test/v1/x:predict",
        [{"id": 0}],
        count=300,
        rate=None,
        concurrency=2,
        transport=httpx.MockTransport(slow),
        progress=lambda d, t: calls.append(d),
    )
    elapsed = real_time.monotonic() - started
    assert report.ok == 300 and calls[-1] == 300
    assert len(calls) <= elapsed / 0.1 + 2  # at most ~10 a second, plus the final call


def test_bad_arguments_are_refused():
    for kwargs, match in (
        (dict(count=-1), "count"),
        (dict(batch_size=0), "batch_size"),
        (dict(concurrency=0), "concurrency"),
        (dict(rate=0), "rate"),
    ):
        with pytest.raises(ValueError, match=match):
            send_traffic("http://test/x:predict", GOOD, **{"count": 1, "rate": None, **kwargs})
    with pytest.raises(ValueError, match="No instances"):
        send_traffic("http://test/x:predict", [], count=1, rate=None)


# -- instances from the warehouse --------------------------------------------------------------


def test_json_safe():
    assert json_safe(np.int64(3)) == 3 and type(json_safe(np.int64(3))) is int
    assert type(json_safe(np.float32(0.5))) is float
    assert json_safe(np.bool_(True)) is True and json_safe(True) is True
    for missing in (None, pd.NA, pd.NaT, float("nan"), np.nan, float("inf"), np.datetime64("NaT")):
        assert json_safe(missing) is None
    assert json_safe(decimal.Decimal("1.25")) == 1.25
    assert json_safe(dt.date(2026, 5, 1)) == "2026-05-01"
    assert json_safe(pd.Timestamp("2026-05-01 12:30:00", tz="UTC")) == "2026-05-01T12:30:00+00:00"
    assert json_safe(np.datetime64("2026-05-01T12:30:00")) == "2026-05-01T12:30:00"
    assert json_safe(np.array([1, np.nan])) == [1.0, None]
    assert json_safe({"a": [np.int8(1)]}) == {"a": [1]}


def _customer_features(rows: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({column: rng.uniform(0, 1, rows) for column in SERVING_COLUMNS})
    frame["tenure_days"] = np.arange(rows, dtype=np.int64) + 100  # a distinct key per row
    frame["age"] = pd.array([30 + i if i % 4 else None for i in range(rows)], dtype="Int64")
    frame["region"] = [["north", "south", None][i % 3] for i in range(rows)]
    frame["acquisition_channel"] = "organic"
    frame["top_category"] = "grocery"
    frame["email_opt_in"] = pd.array([[True, False, None][i % 3] for i in range(rows)], dtype="boolean")
    frame.loc[::5, "avg_discount"] = np.nan
    frame["customer_id"] = np.arange(rows)
    frame["snapshot_date"] = [
        dt.date(2026, 5, 1) if i < rows - 2 else dt.date(2026, 4, 24) for i in range(rows)
    ]
    return frame


def test_serving_instances_are_json_safe_and_deterministic(tmp_path):
    frame = _customer_features()
    warehouse = LocalWarehouse.at(tmp_path / "a.duckdb")
    warehouse.load_dataframe(frame, "customer_features")
    got = serving_instances(warehouse, "churn_model", seed=1)
    assert len(got) == 10  # the newest snapshot only
    assert all(list(row) == list(SERVING_COLUMNS) for row in got)  # exactly the query's columns, in order
    json.dumps(got, allow_nan=False)
    by_tenure = {row["tenure_days"]: row for row in got}
    source = frame.set_index("tenure_days")
    for tenure, row in by_tenure.items():
        want = source.loc[tenure]
        assert type(row["tenure_days"]) is int
        assert (
            row["age"] is None
            if pd.isna(want["age"])
            else (row["age"] == want["age"] and type(row["age"]) is int)
        )
        assert row["region"] == (None if want["region"] is None else want["region"])
        assert row["email_opt_in"] is (None if pd.isna(want["email_opt_in"]) else bool(want["email_opt_in"]))
        assert (
            row["avg_discount"] is None
            if np.isnan(want["avg_discount"])
            else row["avg_discount"] == pytest.approx(want["avg_discount"])
        )
    assert any(r["avg_discount"] is None for r in got) and any(r["age"] is None for r in got)

    # Deterministic by seed, whatever order the warehouse returns the rows in.
    reversed_warehouse = LocalWarehouse.at(tmp_path / "b.duckdb")
    reversed_warehouse.load_dataframe(frame.iloc[::-1].reset_index(drop=True), "customer_features")
    assert serving_instances(reversed_warehouse, "churn_model", seed=1) == got
    other = serving_instances(warehouse, "churn_model", seed=2)
    assert other != got and sorted(r["tenure_days"] for r in other) == sorted(by_tenure)
    assert serving_instances(warehouse, "churn_model", seed=1, limit=3) == got[:3]


def test_serving_instances_dates_and_timestamps(tmp_path, monkeypatch):
    sql_dir = tmp_path / "sql"
    (sql_dir / "serving").mkdir(parents=True)
    (sql_dir / "serving" / "dated_model.sql").write_text("SELECT d, ts, n FROM t")
    monkeypatch.setenv("LAKEHOUSE_ML_SQL_DIR", str(sql_dir))
    warehouse = LocalWarehouse.at(tmp_path / "w.duckdb")
    warehouse.load_dataframe(
        pd.DataFrame(
            {
                "d": [dt.date(2026, 5, 1)],
                "ts": [pd.Timestamp("2026-05-01 08:00:00", tz="UTC")],
                "n": [np.int32(4)],
            }
        ),
        "t",
    )
    (row,) = serving_instances(warehouse, "dated_model")
    assert row["d"] == "2026-05-01" and row["ts"].startswith("2026-05-01T08:00:00") and row["n"] == 4


def test_serving_instances_refuses_bad_and_unknown_models(warehouse):
    with pytest.raises(WarehouseError, match="Invalid model name"):
        serving_instances(warehouse, "churn_model; DROP TABLE x")
    with pytest.raises(FileNotFoundError, match=r"sql/serving/no_such_model\.sql.*churn_model"):
        serving_instances(warehouse, "no_such_model")


# -- instances from a simulated (drifted) history ----------------------------------------------


@pytest.fixture(scope="module")
def simulated():
    common = dict(customers=300, days=100, seed=3, start_date=dt.date(2026, 1, 1))
    clean = scenario_instances("churn_model", None, **common)
    shifted = scenario_instances("churn_model", "channel_shift@2026-02-15:3", **common)
    return clean, shifted


def test_scenario_instances_have_the_serving_columns(simulated):
    clean, shifted = simulated
    for rows in (clean, shifted):
        assert len(rows) >= 30
        assert all(list(row) == list(SERVING_COLUMNS) for row in rows)
        json.dumps(rows, allow_nan=False)


def test_a_drift_scenario_changes_the_instances(simulated):
    clean, shifted = (pd.DataFrame(rows) for rows in simulated)
    # channel_shift moves store orders to the app.
    assert shifted["share_store"].mean() < clean["share_store"].mean() - 0.05
    assert shifted["share_app"].mean() > clean["share_app"].mean() + 0.05


def test_scenario_instances_cleans_up_and_explains_a_too_short_history(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(ValueError, match="simulate more days than the features look back"):
        scenario_instances("churn_model", None, customers=50, days=30, seed=1)
    assert list(scratch.iterdir()) == []
    with pytest.raises(ValueError, match="Unknown drift scenario"):
        scenario_instances("churn_model", "heatwave@2026-01-05", customers=50, days=30)


# -- the command -------------------------------------------------------------------------------


def test_traffic_command_end_to_end(tmp_path, capsys):
    settings = Settings(home=tmp_path / "home", serving_port=free_port(), seed=4)
    frame = _customer_features(40)
    frame["email_opt_in"] = frame["email_opt_in"].fillna(False)
    warehouse = LocalWarehouse.at(settings.duckdb_path)
    warehouse.load_dataframe(frame, "customer_features")
    engine = BqmlEngine(tmp_path / "models")
    training = frame[list(SERVING_COLUMNS)].assign(churned=np.arange(len(frame)) % 3 == 0)
    engine.create_model(
        "churn_model", {"model_type": "LOGISTIC_REG", "input_label_cols": ["churned"]}, training
    )
    endpoints = LocalEndpoints(home=str(settings.home_dir), port=settings.serving_port)
    process = _start(endpoints, settings.home_dir)
    try:
        endpoints.create_endpoint("churn_model")
        endpoints.deploy("churn_model", "churn_model", "1", artifact(engine, "churn_model"))
        parser = add_traffic_arguments(argparse.ArgumentParser())
        args = parser.parse_args(["--count", "25", "--rate", "0", "--batch-size", "2"])
        assert (args.model, args.endpoint, args.concurrency, args.scenario) == ("churn_model", None, 4, None)
        assert run_traffic_command(args, settings) == 0
        out = capsys.readouterr()
        assert "Sent 25 request(s) (50 instance(s))" in out.out and "25 OK, 0 failed" in out.out
        assert "from 38 distinct instances" in out.err
        assert parser.parse_args([]).rate == 50 and parser.parse_args([]).count == 500
    finally:
        stop_server(process)
