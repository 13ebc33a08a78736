"""Dagster definitions of lakehouse_ml.

``dagster dev`` (and ``dagster definitions validate``) load :func:`defs`. The backend is chosen
inside that function from the settings, never at import time.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from lakehouse_ml.backends import (
    build_endpoints,
    build_executor,
    build_registry,
    build_request_log,
    build_warehouse,
)
from lakehouse_ml.core.settings import Settings, load_settings
from lakehouse_ml.defs.deployment import GROUP as SERVING_GROUP
from lakehouse_ml.defs.deployment import serving_assets
from lakehouse_ml.defs.features import feature_asset
from lakehouse_ml.defs.models import GROUP as MODELS_GROUP
from lakehouse_ml.defs.models import model_assets
from lakehouse_ml.defs.monitoring import GROUP as MONITORING_GROUP
from lakehouse_ml.defs.monitoring import monitoring_assets, retraining_job
from lakehouse_ml.defs.raw import RAW_TABLES, landing_specs, raw_asset
from lakehouse_ml.defs.sensors import drift_retraining_sensor
from lakehouse_ml.lifecycle.features import FEATURE_TABLES
from lakehouse_ml.lifecycle.models import MODELS
from lakehouse_ml.lifecycle.sql_contract import check_model_sql


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """One partition per simulated day."""
    return dg.DailyPartitionsDefinition(
        start_date=settings.start_date.isoformat(),
        end_date=(settings.end_date + dt.timedelta(days=1)).isoformat(),
    )


def reports_dir(settings: Settings):
    """Where evaluation plots are written: ``$LAKEHOUSE_ML_HOME/reports/<model>/``."""
    return settings.home_dir / "reports"


def build_definitions(settings: Settings) -> dg.Definitions:
    check_model_sql(MODELS)  # a served model's serving and gate files name its features
    partitions = daily_partitions(settings)
    assets = [
        *landing_specs(settings.landing_dir),
        *(raw_asset(raw, settings.landing_dir, partitions) for raw in RAW_TABLES),
        *(feature_asset(table, partitions) for table in FEATURE_TABLES),
        *model_assets(MODELS, reports_dir(settings)),
        *serving_assets(MODELS),
        *monitoring_assets(MODELS, reports_dir(settings)),
    ]
    served = [spec for spec in MODELS if spec.serving is not None]
    retraining_jobs = [retraining_job(spec) for spec in served]
    status = dg.DefaultScheduleStatus.RUNNING if settings.schedules else dg.DefaultScheduleStatus.STOPPED
    sensor_status = dg.DefaultSensorStatus.RUNNING if settings.schedules else dg.DefaultSensorStatus.STOPPED
    jobs = [
        dg.define_asset_job(
            "dimensions_job",
            selection=dg.AssetSelection.assets("raw_customers", "raw_products"),
            description="Load the customer and product dimensions.",
        ),
        dg.define_asset_job(
            "daily_job",
            selection=dg.AssetSelection.assets("raw_orders", "raw_web_sessions", "transaction_features"),
            description="Load a day (or a range of days) of orders and sessions and build its transaction features.",
        ),
        dg.define_asset_job(
            "customer_features_job",
            selection=dg.AssetSelection.assets("customer_features"),
            description="Rebuild the customer snapshot features and churn labels.",
        ),
        dg.define_asset_job(
            "models_job",
            selection=dg.AssetSelection.groups(MODELS_GROUP),
            description="Train every BigQuery ML model on the current features, then evaluate it.",
        ),
        dg.define_asset_job(
            "serving_job",
            selection=dg.AssetSelection.groups(SERVING_GROUP),
            description=(
                "Register the served models' new versions, gate each against the serving version on fresh "
                "rows, and deploy the winners to their endpoints (canary, smoke test, promotion)."
            ),
        ),
        dg.define_asset_job(
            "monitoring_job",
            selection=dg.AssetSelection.groups(MONITORING_GROUP),
            description="Write the monitoring report of every served model over the traffic since its last report.",
        ),
    ]
    schedules = [
        dg.ScheduleDefinition(
            name="daily_features_schedule",
            job_name="customer_features_job",
            cron_schedule="0 2 * * *",
            default_status=status,
            description="Rebuild the customer snapshot features (and churn labels) every day at 02:00.",
        ),
        dg.ScheduleDefinition(
            name="hourly_monitoring_schedule",
            job_name="monitoring_job",
            cron_schedule="5 * * * *",
            default_status=status,
            description="Monitor every served model every hour; a failed drift check starts retraining.",
        ),
    ]
    sensors = []
    if served:
        sensors.append(
            drift_retraining_sensor(
                [spec.name for spec in served],
                jobs=retraining_jobs,
                cooldown_seconds=settings.retrain_cooldown_seconds,
                default_status=sensor_status,
            )
        )
    endpoints = build_endpoints(settings)
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources={
            "warehouse": build_warehouse(settings),
            "registry": build_registry(settings),
            "endpoints": endpoints,
            "request_log": build_request_log(settings, endpoints),
        },
        executor=build_executor(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())
