"""`lakehouse-ml demo`: the whole loop, headless, through real Dagster, on the configured backend
(the local default; on gcp it runs in BigQuery and Vertex AI, and costs what they cost).

1. generate a simulated history whose last ``drift_days`` days follow a drift scenario;
2. materialize everything on the days before the drift (data, models, registry, deployment);
3. serve (the deployment started the local endpoint server);
4. send normal traffic (the newest customer snapshot, as the website would);
5. monitor: the drift check passes;
6. the drift days arrive: load them and refresh the features; traffic now comes from a drifted world;
7. monitor: the drift check fails;
8. ``drift_retraining_sensor`` is evaluated against the persistent instance and starts the retraining job;
9. the champion/challenger gate passes;
10. the new version is deployed (canary, then 100%);
11. traffic continues, and monitoring passes again.

Every run goes to the Dagster instance under ``$LAKEHOUSE_ML_HOME/dagster``, so ``lakehouse-ml ui``
shows the runs, the failed check and the sensor's run with its tags afterwards. Before each report
the demo waits until the traffic it sent has reached the request-response log (on Vertex AI the
log is written asynchronously), at most the backend's grace period.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from lakehouse_ml.backends import build_endpoints, build_registry, build_request_log, build_warehouse
from lakehouse_ml.backends.endpoints import stop_serving
from lakehouse_ml.backends.request_log import RequestLog
from lakehouse_ml.core.settings import Settings
from lakehouse_ml.datagen import DriftScenario, SimulationConfig, write_landing
from lakehouse_ml.definitions import build_definitions, daily_partitions
from lakehouse_ml.lifecycle import traffic
from lakehouse_ml.lifecycle.models import model_spec
from lakehouse_ml.runner import DATA_JOBS, MODEL_JOBS, SERVING_JOBS, materialize_all, persistent_instance

SENSOR = "drift_retraining_sensor"


@dataclass
class DemoSummary:
    model: str
    scenario: str
    versions_before: str = ""
    versions_after: str = ""
    stale_quality: float | None = None
    retrained_quality: float | None = None
    metric: str = ""
    gate: str = ""
    drift_values: list[tuple[str, float, float, bool]] = field(
        default_factory=list
    )  # input, value, threshold, anomaly
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # step, passed, description
    sensor_run_id: str | None = None
    sensor_tags: dict[str, str] = field(default_factory=dict)
    sensor_runs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    ui_command: str = "lakehouse-ml ui"

    def table(self) -> str:
        rows = [
            ("scenario", self.scenario),
            ("versions before", self.versions_before),
            ("versions after", self.versions_after),
            (f"{self.metric} on post-drift data, stale model", _fmt(self.stale_quality)),
            (f"{self.metric} on post-drift data, retrained model", _fmt(self.retrained_quality)),
            ("gate", self.gate),
        ]
        for step, passed, description in self.checks:
            rows.append((f"drift check ({step})", ("passed" if passed else "FAILED") + f": {description}"))
        drifted = [
            f"{name} {value:.3f} (threshold {threshold:g})"
            for name, value, threshold, anomaly in self.drift_values
            if anomaly
        ]
        rows.append(("drift values over threshold", ", ".join(drifted) or "none"))
        rows.append(("run started by the sensor", f"{self.sensor_run_id} ({self.sensor_runs} run(s) in all)"))
        rows.append(
            (
                "why",
                ", ".join(f"{k}={v}" for k, v in self.sensor_tags.items() if k.startswith("lakehouse_ml/")),
            )
        )
        rows.append(("time", ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())))
        rows.append(("open the UI", self.ui_command))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _versions(registry, model_id: str) -> str:
    return ", ".join(
        f"v{v.version_id}[{','.join(sorted(v.aliases))}]" for v in registry.list_versions(model_id)
    )


def _latest_check(instance: dg.DagsterInstance, asset: str, check: str):
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(asset), check), limit=1
    )
    return records[0].evaluation if records else None


def run_demo(
    settings: Settings,
    *,
    model: str = "churn_model",
    scenario: str = "channel_shift",
    intensity: float = 1.5,
    drift_days: int = 154,
    requests: int = 600,
    batch_size: int = 5,
    keep_serving: bool = False,
    progress: Callable[[str], None] = print,
) -> DemoSummary:
    """Run the loop (see the module docstring) and return its summary."""
    spec = model_spec(model)
    if spec.serving is None or spec.label is None:
        raise ValueError(
            f"The demo retrains a served, labelled model and scores it on post-drift labels; {model} is not one. "
            "Use churn_model."
        )
    keys = daily_partitions(settings).get_partition_keys()
    if not 30 <= drift_days <= len(keys) - 120:
        raise ValueError(
            f"drift_days must leave at least 120 days before the drift and be at least 30 (labels need 30 days); "
            f"got {drift_days} of {len(keys)} simulated days. Raise LAKEHOUSE_ML_DAYS or lower --drift-days."
        )
    onset = settings.start_date + dt.timedelta(days=len(keys) - drift_days)
    drift = DriftScenario(scenario, onset, intensity)
    summary = DemoSummary(model=model, scenario=str(drift))
    clock = time.perf_counter
    t0 = clock()

    def step(name: str, started: float) -> None:
        summary.seconds[name] = clock() - started

    progress(f"[1/11] generating {len(keys)} days for {settings.customers:,} customers, {drift} ...")
    started = clock()
    write_landing(
        SimulationConfig(
            seed=settings.seed,
            start_date=settings.start_date,
            days=settings.days,
            customers=settings.customers,
            scenarios=(drift,),
        ),
        settings.landing_dir,
    )
    step("generate", started)
    warehouse, registry, endpoints = (
        build_warehouse(settings),
        build_registry(settings),
        build_endpoints(settings),
    )
    request_log = build_request_log(settings, endpoints)
    model_id = spec.registry_options.get("vertex_ai_model_id", spec.name)
    before_drift = keys[keys.index(onset.isoformat()) - 1]
    try:
        with persistent_instance(settings) as instance:
            say = lambda m: progress("      " + m)  # noqa: E731
            progress(f"[2/11] materializing everything on {keys[0]} .. {before_drift} (before the drift)")
            started = clock()
            materialize_all(settings, instance, say, jobs=DATA_JOBS, partition_range=(keys[0], before_drift))
            materialize_all(settings, instance, say, jobs=MODEL_JOBS + SERVING_JOBS)
            step("materialize", started)
            summary.versions_before = _versions(registry, model_id)
            url, token = traffic.endpoint_predict_url(endpoints, spec.serving.endpoint)
            progress(f"[3/11] serving {model_id} {summary.versions_before} at {url}")

            def send(label: str) -> None:
                instances = traffic.serving_instances(warehouse, model, seed=settings.seed)
                since = dt.datetime.now(dt.timezone.utc)
                report = traffic.send_traffic(
                    url,
                    instances,
                    count=requests // batch_size,
                    rate=None,
                    batch_size=batch_size,
                    token=token,
                    prediction_format=spec.prediction_format(),
                )
                progress(f"      {label}: {report.summary()}")
                if report.failed:
                    raise RuntimeError(f"Traffic failed: {report.summary()}")
                expected = int(report.instances * spec.serving.logging_sampling_rate)
                found, waited = _await_log(request_log, spec.serving.endpoint, since, expected)
                if found < expected:
                    progress(
                        f"      the request-response log holds {found} of the {expected} instances after {waited:.0f} s"
                    )
                elif waited > 1.0:
                    progress(
                        f"      the request-response log holds the {expected} instances ({waited:.1f} s)"
                    )

            def monitor(step_name: str) -> bool:
                materialize_all(settings, instance, say, jobs=("monitoring_job",))
                check = _latest_check(instance, f"{model}_monitoring", "feature_drift")
                summary.checks.append((step_name, bool(check.passed), check.description or ""))
                return bool(check.passed)

            progress(f"[4/11] sending normal traffic: {requests} instances")
            send("normal traffic")
            progress("[5/11] monitoring")
            if not monitor("normal traffic"):
                progress("      (the drift check did not pass on normal traffic; see the report)")
            progress(
                f"[6/11] the drift starts: loading {onset} .. {keys[-1]} ({drift.name}) and refreshing features"
            )
            started = clock()
            materialize_all(
                settings, instance, say, jobs=DATA_JOBS, partition_range=(onset.isoformat(), keys[-1])
            )
            drift_onset = clock()  # the first drifted request
            send("drifted traffic")
            progress("[7/11] monitoring")
            monitor("after the drift")
            summary.drift_values = _drift_values(instance, model)
            progress(f"[8/11] evaluating {SENSOR}")
            definitions = build_definitions(settings)
            sensor = definitions.resolve_sensor_def(SENSOR)
            context = dg.build_sensor_context(
                instance=instance, definitions=definitions, cursor=_sensor_cursor(instance)
            )
            result = sensor.evaluate_tick(context)
            _save_sensor_cursor(instance, result.cursor)
            requests_made = list(result.run_requests or [])
            if not requests_made:
                reasons = result.skip_message or "no run requested"
                progress(f"      the sensor started nothing: {reasons}")
            for request in requests_made:
                tags = {**request.tags, "dagster/sensor_name": SENSOR, "dagster/run_key": request.run_key}
                progress(f"      run requested: {request.job_name}, run_key {request.run_key}")
                progress(
                    "[9/11] retraining: features -> a new BigQuery ML "
                    "model (a new version) -> evaluate -> gate -> deploy"
                )
                job = definitions.resolve_job_def(request.job_name)
                run = job.execute_in_process(
                    instance=instance,
                    tags=tags,
                    raise_on_error=False,
                    run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                )
                summary.sensor_run_id, summary.sensor_tags, summary.sensor_runs = (
                    run.run_id,
                    tags,
                    summary.sensor_runs + 1,
                )
                gate = _latest_check(instance, f"{model}_registry_version", "champion_challenger")
                if gate is not None:
                    summary.gate = ("passed: " if gate.passed else "FAILED: ") + (gate.description or "")
                    values = {k: v.value for k, v in gate.metadata.items()}
                    summary.stale_quality = values.get("serving_value")
                    summary.retrained_quality = values.get("candidate_value")
                    summary.metric = str(values.get("metric", spec.gate.metric))
                progress(f"      {summary.gate}")
                if not run.success:
                    raise RuntimeError(f"The retraining run {run.run_id} failed; open the UI to see why.")
            summary.versions_after = _versions(registry, model_id)
            progress(f"[10/11] serving {model_id} {summary.versions_after}")
            summary.seconds["drift onset -> retrained version serving"] = clock() - drift_onset
            step("drift", started)
            progress("[11/11] traffic continues; monitoring")
            send("drifted traffic, retrained model")
            monitor("after retraining")
    finally:
        if not keep_serving:
            stop_serving(endpoints)
    summary.seconds["total"] = clock() - t0
    summary.ui_command = f"LAKEHOUSE_ML_HOME={settings.home} lakehouse-ml ui"
    return summary


def _await_log(
    request_log: RequestLog, endpoint: str, since: dt.datetime, expected: int, poll_s: float = 0.5
) -> tuple[int, float]:
    """Wait until the request log holds ``expected`` rows logged since ``since`` (at most the
    backend's grace period); (rows found, seconds waited)."""
    grace = request_log.request_log_grace_seconds()
    started = time.monotonic()
    while True:
        now = dt.datetime.now(dt.timezone.utc)
        found = len(request_log.request_log(endpoint, since, now + dt.timedelta(seconds=1)))
        waited = time.monotonic() - started
        if found >= expected or waited >= grace:
            return found, waited
        time.sleep(poll_s)


def _drift_values(instance: dg.DagsterInstance, model: str) -> list[tuple[str, float, float, bool]]:
    """The latest monitoring report's drift rows (its ``drift_values`` metadata)."""
    event = instance.get_latest_materialization_event(dg.AssetKey(f"{model}_monitoring"))
    rows = event.asset_materialization.metadata.get("drift_values") if event else None
    if rows is None:
        return []
    return [
        (r["input"], float(r["value"]), float(r["threshold"]), bool(r["is_anomaly"]))
        for r in rows.value
        if r["value"] is not None
    ]


def _cursor_key() -> str:
    return f"lakehouse_ml/{SENSOR}/cursor"


def _sensor_cursor(instance: dg.DagsterInstance) -> str | None:
    values = instance.run_storage.get_cursor_values({_cursor_key()})
    return values.get(_cursor_key())


def _save_sensor_cursor(instance: dg.DagsterInstance, cursor: str | None) -> None:
    if cursor is not None:
        instance.run_storage.set_cursor_values({_cursor_key(): cursor})


__all__ = ["DemoSummary", "run_demo"]
