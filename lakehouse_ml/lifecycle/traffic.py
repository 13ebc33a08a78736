"""The website: realistic prediction traffic for an endpoint, local or Vertex AI, with one code path.

Instances come from the model's serving query (``sql/serving/<model>.sql``: the rows the website
would score now) on a warehouse — or on a freshly simulated history with a drift scenario, to
make the monitoring report see drift. Requests go to Vertex AI's prediction REST route::

    POST {base_url}/v1/projects/{p}/locations/{l}/endpoints/{e}:predict   {"instances": [...]}

which the local endpoint server speaks as well, so the same :func:`send_traffic` drives both.

* :func:`serving_instances` — the serving query's rows as JSON-safe instances, shuffled by seed.
* :func:`scenario_instances` — the same from a temporary simulated lakehouse (optionally drifted).
* :func:`send_traffic` — ``count`` requests at about ``rate`` requests/second from ``concurrency``
  keep-alive workers; HTTP errors are counted, never raised; returns a :class:`TrafficReport`.
* :func:`endpoint_predict_url` — where to send them (the backend's ``predict_target``).
* :func:`add_traffic_arguments` / :func:`run_traffic_command` — the ``lakehouse-ml traffic`` command.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lakehouse_ml.backends import build_endpoints, build_warehouse
from lakehouse_ml.backends.endpoints import ensure_serving
from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.backends.warehouse import PartitionWindow, Warehouse
from lakehouse_ml.bigquery.served import PredictionFormat, ServedFormatError
from lakehouse_ml.bigquery.served import instances as encode_instances
from lakehouse_ml.bigquery.sqlfiles import read_sql, referenced_tables, sql_files
from lakehouse_ml.core.identifiers import check_identifier
from lakehouse_ml.datagen import DriftScenario, SimulationConfig, landing_files, write_landing
from lakehouse_ml.lifecycle import features
from lakehouse_ml.lifecycle.features import FEATURE_TABLES
from lakehouse_ml.lifecycle.models import MODELS
from lakehouse_ml.lifecycle.raw import RAW_TABLES

MAX_ERRORS_KEPT = 5
PROGRESS_INTERVAL = 0.1  # seconds: progress callbacks at most ~10 times per second

# -- instances ---------------------------------------------------------------------------------


def shuffled(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A permutation that depends on the seed and the rows only, not on the order the warehouse
    returned them in (a query without ORDER BY has none): rows are first put in a canonical order
    (by their JSON text), then permuted by ``seed``."""

    keys = [json.dumps(row, sort_keys=True, default=str) for row in rows]
    canonical = sorted(range(len(rows)), key=keys.__getitem__)
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[canonical[i]] for i in order]


def serving_instances(
    warehouse: Warehouse, model: str, limit: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """The rows of ``sql/serving/<model>.sql`` on ``warehouse`` as prediction instances (JSON-safe
    dicts with exactly the query's columns, a NULL as the served model takes it: see
    :func:`lakehouse_ml.bigquery.served.instances`), shuffled deterministically by ``seed`` and
    cut to ``limit``."""

    check_identifier(model, "model")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None; got {limit!r}.")
    try:
        sql = read_sql(f"serving/{model}.sql")
    except FileNotFoundError:
        known = ", ".join(p.stem for p in sql_files("serving")) or "none"
        raise FileNotFoundError(
            f"No serving query for model {model!r}: write sql/serving/{model}.sql (a SELECT of the "
            f"model's features for the rows to score). Models with one: {known}."
        ) from None
    # Arrow keeps the warehouse's types (an INT64 column with NULLs stays integers; pandas would
    # make it float64), which a TRANSFORM model's NULL sentinels depend on.
    rows = shuffled(encode_instances(warehouse.query_arrow(sql), transform=_has_transform(model)), seed)
    return rows if limit is None else rows[:limit]


def _has_transform(model: str) -> bool:
    """Whether the declared model of that name was created with a TRANSFORM clause (an
    undeclared name: no)."""

    return any(spec.name == model and spec.statement.transform for spec in MODELS)


def _needed_tables(sql: str) -> tuple[list, list]:
    """The feature tables (in build order) and raw tables a serving query needs, from its SQL."""

    by_name = {t.name: t for t in FEATURE_TABLES}
    ordered: list = []
    raw: set[str] = set()

    def visit(name: str, seen: frozenset[str]) -> None:
        if name in seen:
            raise ValueError(f"Feature tables depend on each other in a cycle through {name}.")
        table = by_name.get(name)
        if table is None:
            raw.add(name)
            return
        for upstream in table.upstream_tables:
            visit(upstream, seen | {name})
        if table not in ordered:
            ordered.append(table)

    for name in referenced_tables(sql):
        visit(name, frozenset())
    raws = [r for r in RAW_TABLES if r.name in raw]
    unknown = raw - {r.name for r in raws}
    if unknown:
        raise ValueError(
            f"The serving query reads tables that are neither raw nor feature tables: {', '.join(sorted(unknown))}."
        )
    return ordered, raws


def scenario_instances(
    model: str,
    scenario: str | None = None,
    *,
    customers: int = 2000,
    days: int = 120,
    seed: int = 42,
    start_date: dt.date = dt.date(2026, 1, 1),
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Instances from a freshly simulated lakehouse: the Cymbal simulator writes ``days`` days for
    ``customers`` customers (with ``scenario``, e.g. ``'price_shock@2026-05-01:1.5'``) to a
    temporary folder; the raw tables the serving query needs are loaded into a temporary local
    DuckDB warehouse and its feature tables built with the project's own SQL; then
    :func:`serving_instances`. The temporary folder is removed afterwards."""

    check_identifier(model, "model")
    say = progress or (lambda message: None)
    scenarios = (DriftScenario.parse(scenario),) if scenario else ()
    config = SimulationConfig(
        seed=seed, start_date=start_date, days=days, customers=customers, scenarios=scenarios
    )
    feature_tables, raw_tables = _needed_tables(read_sql(f"serving/{model}.sql"))
    with tempfile.TemporaryDirectory(prefix="lakehouse_ml_traffic_") as tmp:
        landing = Path(tmp) / "landing"
        say(
            f"Simulating {config.days} days for {config.customers:,} customers"
            + (f" with {scenarios[0]}" if scenarios else "")
        )
        write_landing(config, landing)
        warehouse = LocalWarehouse.at(Path(tmp) / "warehouse.duckdb", models_dir=Path(tmp) / "models")
        for raw in raw_tables:
            warehouse.load_parquet(landing_files(landing, raw.landing), raw.name)
        for table in feature_tables:
            say(f"Building {table.name}")
            window = (
                PartitionWindow(table.partition_column, config.start_date, config.end_date)
                if table.partition_column
                else None
            )
            features.build(warehouse, table, window=window)
        instances = serving_instances(warehouse, model, limit=limit, seed=seed)
    if not instances and limit != 0:
        params = "; ".join(f"{t.name}: {dict(t.params)}" for t in feature_tables if t.params)
        raise ValueError(
            f"The simulated history ({config.days} days, {config.customers:,} customers) gives no rows to "
            f"sql/serving/{model}.sql: simulate more days than the features look back ({params or 'no parameters'}) "
            "or more customers."
        )
    return instances


# -- sending -----------------------------------------------------------------------------------


@dataclasses.dataclass
class TrafficReport:
    """What happened to the requests of one :func:`send_traffic` run.

    ``status_counts`` counts HTTP status codes (int keys) and, for requests that got no HTTP
    answer, the transport error's class name (e.g. ``"ConnectError"``). ``errors`` keeps the first
    few distinct error messages (Vertex's ``{"error": {"code", "message", "status"}}`` when the
    server sent one). ``p50_ms``/``p99_ms`` are latencies of the requests that got an answer.
    ``versions`` counts the ``modelVersionId`` of successful answers (a traffic split shows here).
    """

    sent: int = 0
    ok: int = 0
    failed: int = 0
    status_counts: Counter = dataclasses.field(default_factory=Counter)
    errors: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    versions: Counter = dataclasses.field(default_factory=Counter)
    instances: int = 0
    interrupted: bool = False
    # What the model answered, by predicted class (or nearest centroid), when the sender was given
    # the model's PredictionFormat.
    outcomes: Counter = dataclasses.field(default_factory=Counter)

    @property
    def requests_per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"Sent {self.sent:,} request(s) ({self.instances:,} instance(s)) in {self.seconds:.1f} s "
            f"({self.requests_per_second:,.1f} req/s): {self.ok:,} OK, {self.failed:,} failed"
            + (" — interrupted" if self.interrupted else "")
        ]
        if self.p50_ms is not None:
            lines.append(f"Latency: p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms")
        if self.status_counts:
            lines.append(
                "Status: "
                + ", ".join(
                    f"{k}: {v:,}" for k, v in sorted(self.status_counts.items(), key=lambda kv: str(kv[0]))
                )
            )
        if self.versions:
            lines.append(
                "Model versions: "
                + ", ".join(
                    f"v{k}: {v:,}" for k, v in sorted(self.versions.items(), key=lambda kv: str(kv[0]))
                )
            )
        if self.outcomes:
            lines.append(
                "Predictions: "
                + ", ".join(
                    f"{k}: {v:,}" for k, v in sorted(self.outcomes.items(), key=lambda kv: str(kv[0]))
                )
            )
        for error in self.errors:
            lines.append(f"Error: {error}")
        return "\n".join(lines)


def send_schedule(count: int, rate: float | None) -> list[float]:
    """When request ``i`` is due, in seconds after the start: ``i / rate`` (all 0 when ``rate`` is
    None: as fast as possible). Requests start on schedule whatever the others' latency, so the
    rate holds overall, as long as ``concurrency`` workers can keep up."""
    _check_rate(rate)
    if rate is None:
        return [0.0] * count
    return [i / rate for i in range(count)]


def _check_rate(rate: float | None) -> None:
    if rate is not None and not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ValueError(
            f"rate must be a positive number of requests per second, or None for as fast as possible; got {rate!r}."
        )


def _error_message(response) -> str:
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error.get('status', '')}: {error.get('message', '')}".replace(
            "  ", " "
        )
    except Exception:
        text = response.text.strip().replace("\n", " ")
        return f"{response.status_code}: {text[:300]}"


class _Tally:
    """Results collected from the workers under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.report = TrafficReport()
        self.latencies: list[float] = []
        self.done = 0
        self.next_index = 0

    def take(self, count: int) -> int | None:
        with self.lock:
            if self.next_index >= count:
                return None
            index = self.next_index
            self.next_index += 1
            return index

    def record(
        self,
        instances: int,
        status: int | str,
        latency: float | None,
        error: str | None,
        version: str | None,
        outcomes: Counter | None = None,
    ) -> None:
        with self.lock:
            report = self.report
            if outcomes:
                report.outcomes.update(outcomes)
            report.sent += 1
            report.instances += instances
            report.status_counts[status] += 1
            if latency is not None:
                self.latencies.append(latency)
            if error is None:
                report.ok += 1
                if version is not None:
                    report.versions[str(version)] += 1
            else:
                report.failed += 1
                if len(report.errors) < MAX_ERRORS_KEPT and error not in report.errors:
                    report.errors.append(error)
            self.done += 1


def send_traffic(
    url: str,
    instances: Sequence[Mapping[str, Any]],
    *,
    count: int,
    rate: float | None,
    batch_size: int = 1,
    token: str | None = None,
    concurrency: int = 4,
    timeout: float = 30,
    progress: Callable[[int, int], None] | None = None,
    parameters: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    transport: Any = None,
    prediction_format: PredictionFormat | None = None,
) -> TrafficReport:
    """Send ``count`` prediction requests to ``url`` (the full ``...:predict`` URL).

    Request ``i`` carries ``batch_size`` instances, cycling through ``instances``, and is due
    :func:`send_schedule` seconds after the start (``rate`` requests/second overall; None: as fast
    as possible). ``concurrency`` threads each hold one keep-alive ``httpx.Client``; ``token``
    adds ``Authorization: Bearer``. An HTTP error or a failed connection is counted in the report,
    never raised. ``progress(done, total)`` is called at most about 10 times a second (and once at
    the end). Ctrl-C stops the run and returns what was sent so far (``interrupted``).

    ``prediction_format``: the served model's format; every prediction is parsed with it (one
    that does not parse makes the request count as failed) and the report counts the predicted
    classes or nearest centroids.

    ``clock``/``sleep`` (the schedule's time source) and ``transport`` (an httpx transport) can be
    injected for tests.
    """

    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer; got {count!r}.")
    _check_rate(rate)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer; got {concurrency!r}.")
    pool = list(instances)
    if count and not pool:
        raise ValueError("No instances to send: the serving query returned no rows.")

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    tally = _Tally()
    stop = threading.Event()
    start = clock()
    schedule_step = None if rate is None else 1.0 / rate

    def body(index: int) -> dict[str, Any]:
        first = index * batch_size
        payload: dict[str, Any] = {"instances": [pool[(first + k) % len(pool)] for k in range(batch_size)]}
        if parameters is not None:
            payload["parameters"] = dict(parameters)
        return payload

    def worker() -> None:
        client = httpx.Client(timeout=timeout, headers=headers, transport=transport)
        try:
            while not stop.is_set():
                index = tally.take(count)
                if index is None:
                    return
                if schedule_step is not None:
                    wait = start + index * schedule_step - clock()
                    if wait > 0:
                        sleep(wait)
                payload = body(index)
                sent_at = clock()
                try:
                    response = client.post(url, json=payload)
                except httpx.HTTPError as err:
                    tally.record(batch_size, type(err).__name__, None, f"{type(err).__name__}: {err}", None)
                    continue
                latency = clock() - sent_at
                if 200 <= response.status_code < 300:
                    try:
                        answer = response.json()
                        version = answer.get("modelVersionId")
                        if not isinstance(answer.get("predictions"), list):
                            raise ValueError("no 'predictions' list in the answer")
                        outcomes = (
                            Counter(str(prediction_format.parse(p).predicted) for p in answer["predictions"])
                            if prediction_format is not None
                            else None
                        )
                    except (ValueError, ServedFormatError) as err:
                        tally.record(
                            batch_size,
                            response.status_code,
                            latency,
                            f"{response.status_code}: bad answer ({err})",
                            None,
                        )
                        continue
                    tally.record(batch_size, response.status_code, latency, None, version, outcomes)
                else:
                    tally.record(batch_size, response.status_code, latency, _error_message(response), None)
        finally:
            client.close()

    threads = [
        threading.Thread(target=worker, name=f"traffic-{k}", daemon=True)
        for k in range(min(concurrency, count))
    ]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    interrupted = False
    reported, reported_at = -1, time.monotonic()
    try:
        while True:
            alive = [t for t in threads if t.is_alive()]
            if not alive:
                break
            alive[0].join(PROGRESS_INTERVAL)
            now = time.monotonic()
            if (
                progress is not None
                and now - reported_at >= PROGRESS_INTERVAL
                and tally.done not in (reported, count)
            ):
                reported, reported_at = tally.done, now
                progress(reported, count)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for thread in threads:
            thread.join(timeout + 1)
    report = tally.report
    report.seconds = time.perf_counter() - wall
    report.interrupted = interrupted
    if tally.latencies:
        millis = np.asarray(tally.latencies) * 1000.0
        report.p50_ms = float(np.percentile(millis, 50))
        report.p99_ms = float(np.percentile(millis, 99))
    if progress is not None:
        progress(tally.done, count)
    return report


# -- where to send -----------------------------------------------------------------------------


def endpoint_predict_url(endpoints: Any, endpoint_name: str) -> tuple[str, str | None]:
    """The ``:predict`` URL and bearer token of an endpoint (by id or display name) on any backend
    (:meth:`~lakehouse_ml.backends.endpoints.Endpoints.predict_target`)."""
    return endpoints.predict_target(endpoint_name)


# -- the command -------------------------------------------------------------------------------


def add_traffic_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``lakehouse-ml traffic`` (wire with
    ``sub.add_parser("traffic", help=...)``, then ``set_defaults(func=...)``)."""
    parser.add_argument(
        "--model",
        default="churn_model",
        help="model whose serving query gives the instances (default churn_model)",
    )
    parser.add_argument("--endpoint", help="endpoint display name or id (default: the model's name)")
    parser.add_argument("--count", type=int, default=500, help="number of requests (default 500)")
    parser.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="requests per second overall; 0 = as fast as possible (default 50)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="instances per request (default 1)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="parallel keep-alive connections (default 4)"
    )
    parser.add_argument(
        "--scenario",
        metavar="NAME@YYYY-MM-DD[:INTENSITY]",
        help="send instances from a freshly simulated history with this drift scenario "
        "(e.g. price_shock@2026-05-01:1.5) instead of the warehouse's current features",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of the instance order (and the simulation) (default: $LAKEHOUSE_ML_SEED)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    return parser


def _progress_printer(label: str = "requests") -> Callable[[int, int], None]:
    state = {"last": 0.0}

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - state["last"] >= 1.0:
            state["last"] = now
            print(f"  {label}: {done:,}/{total:,}", file=sys.stderr, flush=True)

    return progress


def run_traffic_command(args: argparse.Namespace, settings: Any) -> int:
    """``lakehouse-ml traffic``: send the model's serving rows to its endpoint; print the report.
    Exit status 0 when every request succeeded, 1 otherwise."""

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    model = check_identifier(args.model, "model")
    endpoint = args.endpoint or model
    rate = None if not args.rate else float(args.rate)
    seed = settings.seed if args.seed is None else args.seed
    if args.scenario:
        instances = scenario_instances(
            model,
            args.scenario,
            customers=settings.customers,
            days=settings.days,
            seed=seed,
            start_date=settings.start_date,
            progress=say,
        )
    else:
        instances = serving_instances(build_warehouse(settings), model, seed=seed)
    if not instances:
        say(f"error: sql/serving/{model}.sql returned no rows; materialize the feature tables first.")
        return 2

    endpoints = build_endpoints(settings)
    url, token = endpoints.predict_target(endpoint)
    ensure_serving(endpoints)
    spec = next((s for s in MODELS if s.name == model), None)
    shown_rate = "as fast as possible" if rate is None else f"{rate:g} req/s"
    say(
        f"Sending {args.count:,} request(s) of {args.batch_size} instance(s) to {url} at {shown_rate} "
        f"over {args.concurrency} connection(s), from {len(instances):,} distinct instances"
    )
    report = send_traffic(
        url,
        instances,
        count=args.count,
        rate=rate,
        batch_size=args.batch_size,
        token=token,
        concurrency=args.concurrency,
        timeout=args.timeout,
        progress=_progress_printer(),
        prediction_format=spec.prediction_format() if spec is not None else None,
    )
    print(report.summary())
    return 0 if report.failed == 0 and not report.interrupted else 1
