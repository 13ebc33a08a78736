"""Monitoring windows over a request-response log that lands late (Vertex AI writes it to
BigQuery asynchronously): each report re-reads a grace period before its window, counts each
logged instance once, de-duplicates on request id, and names an endpoint that served but whose
log holds nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd

from lakehouse_ml.backends.endpoints import Endpoints
from lakehouse_ml.lifecycle.monitoring import monitor as mon

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
MIN = dt.timedelta(minutes=1)
GRACE = 10 * MIN


def log(*rows: tuple[int, str, int]) -> pd.DataFrame:
    """(minutes after T0, request id, instance index) rows, as a request log has them."""
    return pd.DataFrame(
        {
            "logging_time": [T0 + m * MIN for m, _, _ in rows],
            "request_id": [r for _, r, _ in rows],
            "instance_index": [i for _, _, i in rows],
            "model_version_id": ["1"] * len(rows),
        }
    )


def test_late_rows_are_counted_once_by_the_next_report():
    # Report 1 over [0, 60): rows at 5 and 55 have landed; the row logged at 58 lands late.
    first, late, tail = mon.window_rows(log((5, "a", 0), (55, "b", 0)), T0, T0 + 60 * MIN, GRACE, set())
    assert list(first["request_id"]) == ["a", "b"] and late == 0 and tail == ["b"]
    # Report 2 over [60, 120) re-reads from 50: "b" was counted already, "c" (58) landed late.
    history = log((55, "b", 0), (58, "c", 0), (58, "c", 1), (70, "d", 0), (115, "e", 0))
    second, late, tail = mon.window_rows(history, T0 + 60 * MIN, T0 + 120 * MIN, GRACE, set(tail))
    assert list(zip(second["request_id"], second["instance_index"])) == [
        ("c", 0),
        ("c", 1),
        ("d", 0),
        ("e", 0),
    ]
    assert late == 2 and tail == ["e"]
    # Report 3 right after (a window shorter than the grace period): nothing twice.
    third, late, tail = mon.window_rows(history, T0 + 120 * MIN, T0 + 121 * MIN, GRACE, set(tail))
    assert third.empty and late == 0 and tail == ["e"]


def test_a_row_logged_twice_counts_once():
    twice = log((5, "a", 0), (5, "a", 0), (5, "a", 1))
    assert list(mon.deduplicated(twice)["instance_index"]) == [0, 1]


class StubEndpoints(Endpoints):
    """The Endpoints port with the calls monitoring does not make here refused."""

    def _unused(self, *args, **kwargs):
        raise AssertionError("monitoring does not call this here")

    create_endpoint = get_endpoint = deploy = undeploy = delete_endpoint = _unused
    set_traffic_split = predict = request_log = predict_target = _unused


@dataclasses.dataclass
class Served(StubEndpoints):
    """An Endpoints whose served-prediction count is known (what Cloud Monitoring answers on gcp)."""

    count: int | None = 0

    def served_predictions(self, endpoint, start, end):
        return self.count


def test_an_endpoint_that_served_but_logged_nothing_is_named():
    history = log((5, "a", 0))
    lo, hi = T0 + 30 * MIN, T0 + 60 * MIN
    assert mon._log_problem(Served(count=None), "churn", history, lo, hi) == ""  # unknown: nothing said
    assert mon._log_problem(Served(count=0), "churn", history, lo, hi) == ""  # no traffic
    problem = mon._log_problem(Served(count=12), "churn", history, lo, hi)
    assert (
        "served 12 prediction(s)" in problem
        and "log holds 0 row(s)" in problem
        and "service agent" in problem
    )
    six = log(*[(40, f"b{i}", 0) for i in range(6)])
    assert (
        mon._log_problem(Served(count=12), "churn", six, lo, hi) == ""
    )  # half logged: within the sampling's reach
    assert "holds 1 row(s)" in mon._log_problem(
        Served(count=12), "churn", six.head(1), lo, hi
    )  # most rows lost
    assert (
        mon._log_problem(Served(count=12), "churn", six.head(1), lo, hi, sampling_rate=0.1) == ""
    )  # sampled
    assert mon._log_problem(Served(count=12), "churn", history, hi, lo) == ""  # grace not passed yet


@dataclasses.dataclass
class NoLogTable(StubEndpoints):
    """A deployment since ``deployed``, whose request-log table does not exist (``exists``)."""

    exists: bool | None = False
    deployed: str = "2026-03-01T12:00:00+00:00"

    def request_log_exists(self, endpoint):
        return self.exists

    def get_endpoint(self, endpoint):
        return {"deployed_models": [{"create_time": self.deployed}]}


def test_a_log_table_that_never_appears_is_named_without_a_served_count():
    settled = T0 + 30 * MIN
    absent = NoLogTable()
    problem = mon._missing_log(absent, absent, "churn", settled)
    assert "served since 2026-03-01 12:00:00 UTC" in problem and "log table does not exist" in problem
    present, unknown = NoLogTable(exists=True), NoLogTable(exists=None)
    assert mon._missing_log(present, present, "churn", settled) == ""
    assert mon._missing_log(unknown, unknown, "churn", settled) == ""  # cannot tell: nothing said
    recent = NoLogTable(deployed=(T0 + 40 * MIN).isoformat())
    assert mon._missing_log(recent, recent, "churn", settled) == ""  # too recent
