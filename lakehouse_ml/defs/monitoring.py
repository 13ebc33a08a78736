"""Monitoring report assets and their drift checks, the retraining jobs, the schedules.

* ``<model>_monitoring``: the monitoring report of the serving version over the window since the
  previous report (see :mod:`lakehouse_ml.lifecycle.monitoring.monitor`). Metadata: the drift table in
  Markdown, the window, the row counts, prediction drift, performance, and a link to the HTML
  report with its plots. Not partitioned: a window is "the request-response log since the last
  report", so an hourly schedule, a manual run and the demo all cover every served request once,
  however irregular the traffic (fixed hourly partitions would be mostly empty locally).
* ``feature_drift`` check (not blocking: the report is the evidence): fails with severity ERROR
  when a feature crosses its threshold and names the features; fails with severity WARN when a
  feature reaches ``warn_fraction`` of its threshold; passes otherwise, or when the window holds
  too few served instances to judge (it says so).
* ``<model>_retraining_job``: refresh the model's unpartitioned feature tables → the run's own BigQuery ML model
  → evaluate → register + champion/challenger gate (blocking) → deploy (canary, smoke test,
  promotion). ``drift_retraining_sensor`` starts it when ``feature_drift`` fails.
"""

from typing import Any

import dagster as dg

from lakehouse_ml.backends.endpoints import Endpoints
from lakehouse_ml.backends.registry import ModelRegistry
from lakehouse_ml.backends.request_log import RequestLog
from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.core.errors import EndpointError, RegistryError
from lakehouse_ml.defs.metadata import user_errors
from lakehouse_ml.defs.sensors import retraining_job_name
from lakehouse_ml.lifecycle import models
from lakehouse_ml.lifecycle.features import FEATURE_TABLES
from lakehouse_ml.lifecycle.monitoring import monitor, report

GROUP = "monitoring"
DRIFT_CHECK = "feature_drift"


def monitoring_asset(spec: models.ModelSpec, reports_dir) -> dg.AssetsDefinition:
    serving = spec.serving
    name = f"{spec.name}_monitoring"

    @dg.asset(
        name=name,
        group_name=GROUP,
        description=(
            f"Monitoring report of the {spec.name} version serving on endpoint {serving.endpoint!r}: feature drift "
            f"(ML.VALIDATE_DATA_DRIFT, sql/monitoring/feature_drift.sql) of the served instances against the "
            "version's training rows, prediction drift, and performance once labels arrive. HTML report with plots."
        ),
        deps=[dg.AssetDep(f"{spec.name}_deployment")],
        kinds={"bigquery", "vertexai"},
        check_specs=[
            dg.AssetCheckSpec(
                DRIFT_CHECK,
                asset=name,
                description=(
                    "No feature crosses its drift threshold (ERROR names the features; WARN at "
                    f"{serving.warn_fraction:.0%} of a threshold)."
                ),
            )
        ],
    )
    def _monitoring(
        context: dg.AssetExecutionContext,
        warehouse: dg.ResourceParam[Warehouse],
        registry: dg.ResourceParam[ModelRegistry],
        endpoints: dg.ResourceParam[Endpoints],
        request_log: dg.ResourceParam[RequestLog],
    ) -> dg.MaterializeResult:
        with user_errors():
            try:
                result = monitor.monitor(warehouse, registry, endpoints, request_log, spec, reports_dir)
            except (RegistryError, EndpointError) as err:
                raise dg.Failure(description=str(err)) from err
        metadata: dict[str, Any] = {
            "status": dg.MetadataValue.text(result.status),
            "model_id": dg.MetadataValue.text(result.model_id),
            "version_id": dg.MetadataValue.text(result.version.version_id),
            "endpoint": dg.MetadataValue.text(result.endpoint),
            "window_start": dg.MetadataValue.timestamp(result.window_start),
            "window_end": dg.MetadataValue.timestamp(result.window_end),
            "training_rows": dg.MetadataValue.int(result.base_rows),
            "served_rows": dg.MetadataValue.int(result.study_rows),
            "report": dg.MetadataValue.path(str(result.report_path)),
            "summary": dg.MetadataValue.text(
                f"{result.status}: {result.study_rows} served instance(s) of version {result.version.version_id}"
                + (f"; drifted: {', '.join(result.drifted)}" if result.drifted else "")
                + (f"; max drift/threshold {result.max_ratio:.2f}" if result.judged else f"; {result.note}")
            ),
        }
        if result.judged:
            metadata["feature_drift"] = dg.MetadataValue.md(
                report.markdown_table(result.drift, serving.warn_fraction)
            )
            metadata["max_drift"] = dg.MetadataValue.float(result.max_drift)
            metadata["drift_values"] = dg.MetadataValue.json(
                [
                    {
                        "input": str(r.input),
                        "value": None if r.value is None or r.value != r.value else float(r.value),
                        "threshold": float(r.threshold),
                        "is_anomaly": bool(r.is_anomaly)
                        if r.is_anomaly is not None and r.is_anomaly == r.is_anomaly
                        else None,
                    }
                    for r in result.drift.itertuples()
                ]
            )
            if not result.prediction_drift.empty:
                metadata["prediction_drift"] = dg.MetadataValue.md(
                    report.markdown_table(result.prediction_drift, serving.warn_fraction)
                )
                metadata["prediction_baseline"] = dg.MetadataValue.text(result.prediction_baseline)
        if not result.performance.empty:
            metadata["performance"] = dg.MetadataValue.md(
                result.performance.to_markdown(index=False, floatfmt=".4f")
            )
            latest = result.performance.iloc[-1]
            metadata[f"performance/{latest['metric']}"] = dg.MetadataValue.float(float(latest["value"]))
        if result.late_rows:
            metadata["late_rows"] = dg.MetadataValue.int(result.late_rows)
        if result.log_problem:
            passed, severity = False, dg.AssetCheckSeverity.WARN
            description = f"Not judged: {result.log_problem}"
        elif result.drifted:
            passed, severity = False, dg.AssetCheckSeverity.ERROR
            description = f"Drift in {len(result.drifted)} feature(s): {', '.join(result.drifted)}."
        elif result.warned:
            passed, severity = False, dg.AssetCheckSeverity.WARN
            description = f"Near the drift threshold: {', '.join(result.warned)}."
        else:
            passed, severity = True, dg.AssetCheckSeverity.ERROR
            description = "No feature drifts." if result.judged else f"Not judged: {result.note}"
        check = dg.AssetCheckResult(
            check_name=DRIFT_CHECK,
            passed=passed,
            severity=severity,
            description=description,
            metadata={
                "drifted_features": dg.MetadataValue.json(result.drifted),
                "warned_features": dg.MetadataValue.json(result.warned),
                "max_drift": dg.MetadataValue.float(result.max_drift),
                "max_drift_ratio": dg.MetadataValue.float(result.max_ratio),
                "served_rows": dg.MetadataValue.int(result.study_rows),
                "version_id": dg.MetadataValue.text(result.version.version_id),
                "report": dg.MetadataValue.path(str(result.report_path)),
            },
        )
        context.log.info(metadata["summary"].value)
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    return _monitoring


def monitoring_assets(specs: tuple[models.ModelSpec, ...], reports_dir) -> list[dg.AssetsDefinition]:
    return [monitoring_asset(spec, reports_dir) for spec in specs if spec.serving is not None]


def refreshed_tables(spec: models.ModelSpec) -> list[str]:
    """The feature tables a retraining run rebuilds first: the unpartitioned ones the model trains
    on. Day-partitioned tables (transaction_features) are kept current by the daily job, one
    partition per day; a retraining run has no partition to give them."""
    partitioned = {table.name for table in FEATURE_TABLES if table.partition_column}
    return [name for name in spec.upstream_tables if name not in partitioned]


def retraining_job(spec: models.ModelSpec):
    refreshed = refreshed_tables(spec)
    selection = dg.AssetSelection.assets(
        *refreshed,
        spec.name,
        f"{spec.name}_evaluation",
        f"{spec.name}_registry_version",
        f"{spec.name}_deployment",
    )
    first = (
        f"refresh {', '.join(refreshed)} → "
        if refreshed
        else f"on the current {', '.join(spec.upstream_tables)}: "
    )
    return dg.define_asset_job(
        retraining_job_name(spec.name),
        selection=selection,
        description=(
            f"Retrain {spec.name}: {first}a BigQuery ML model of the run's own (a new registry "
            "version) → evaluate → champion/challenger gate (blocking) → promote → deploy as a canary, then 100%."
        ),
        tags={"lakehouse_ml/model": spec.name},
    )
