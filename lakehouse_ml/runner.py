"""Run the Dagster jobs headless, against the persistent Dagster instance under the local home.

Runs go through the real Dagster machinery (``execute_in_process`` on a ``DagsterInstance`` at
``$LAKEHOUSE_ML_HOME/dagster``), so ``lakehouse-ml ui`` (``dagster dev`` with that
``DAGSTER_HOME``) shows their history afterwards.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import dagster as dg

from lakehouse_ml.core.settings import Settings
from lakehouse_ml.definitions import build_definitions, daily_partitions

# The jobs that build the data (raw tables, features), in dependency order.
DATA_JOBS = ("dimensions_job", "daily_job", "customer_features_job")
# The jobs that train and evaluate the BigQuery ML models on that data.
MODEL_JOBS = ("models_job",)
# Register, gate and deploy the served models (starts the local endpoint server when needed).
SERVING_JOBS = ("serving_job",)
# Every asset: what `lakehouse-ml materialize` and `lakehouse-ml demo` run.
ALL_JOBS = DATA_JOBS + MODEL_JOBS + SERVING_JOBS


@dataclass
class StepReport:
    job: str
    run_id: str
    seconds: float
    materializations: dict[str, int | None]  # asset -> row count
    checks: dict[str, bool]  # "asset:check" -> passed
    summaries: dict[str, str] = field(default_factory=dict)  # asset -> one line (model evaluations)


@contextmanager
def persistent_instance(settings: Settings) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance under the local home (created on first use)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            yield instance
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def _report(job: str, result: dg.ExecuteInProcessResult, seconds: float) -> StepReport:
    rows: dict[str, int | None] = {}
    summaries: dict[str, str] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        count = materialization.metadata.get("dagster/row_count")
        rows[materialization.asset_key.to_user_string()] = getattr(count, "value", None)
        summary = materialization.metadata.get("summary", materialization.metadata.get("gate"))
        if summary is not None:
            summaries[materialization.asset_key.to_user_string()] = str(getattr(summary, "value", summary))
    checks = {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed
        for e in (
            ev.event_specific_data
            for ev in result.all_events
            if ev.event_type_value == "ASSET_CHECK_EVALUATION"
        )
    }
    return StepReport(
        job=job,
        run_id=result.run_id,
        seconds=seconds,
        materializations=rows,
        checks=checks,
        summaries=summaries,
    )


def materialize_all(
    settings: Settings,
    instance: dg.DagsterInstance,
    progress: Callable[[str], None] = lambda _: None,
    jobs: tuple[str, ...] = ALL_JOBS,
    log_level: str = "WARNING",
    partition_range: tuple[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> list[StepReport]:
    """Run ``jobs`` in order: by default the data (dimensions, then all daily partitions in one
    run, then snapshots), then the models and their evaluations (``jobs=DATA_JOBS`` stops before
    the models). ``partition_range`` (first, last day) limits the partitioned jobs to those days."""
    definitions = build_definitions(settings)
    keys = daily_partitions(settings).get_partition_keys()
    if partition_range is not None:
        first, last = partition_range
        if first not in keys or last not in keys:
            raise ValueError(f"Partition range {first}..{last} is outside {keys[0]}..{keys[-1]}.")
        keys = keys[keys.index(first) : keys.index(last) + 1]
    reports = []
    for job in jobs:
        job_def = definitions.resolve_job_def(job)
        run_tags = dict(tags or {})
        if job_def.partitions_def is not None:
            run_tags |= {
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            }
        partitioned = job_def.partitions_def is not None
        progress(
            f"{job}: running"
            + (f" over {len(keys)} daily partitions ({keys[0]} .. {keys[-1]})" if partitioned else "")
        )
        start = time.perf_counter()
        result = job_def.execute_in_process(
            instance=instance,
            tags=run_tags,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        )
        report = _report(job, result, time.perf_counter() - start)
        if not result.success:
            failure = next((e for e in result.all_events if e.is_step_failure), None)
            reason = failure.event_specific_data.error.message.strip() if failure else "see the run's logs"
            raise RuntimeError(f"{job} failed (run {result.run_id}): {reason}")
        for asset, rows in report.materializations.items():
            detail = f": {rows:,} rows" if rows is not None else ""
            if asset in report.summaries:
                detail = f": {report.summaries[asset]}"
            progress(f"  materialized {asset}{detail}")
        for check, passed in report.checks.items():
            progress(f"  check {check}: {'passed' if passed else 'FAILED'}")
        reports.append(report)
    return reports
