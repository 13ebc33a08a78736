"""Materialize every asset of the lakehouse on the local backend, in a temporary home, and check
the metadata and the check results that the UI shows."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from lakehouse_ml.core.settings import load_settings
from lakehouse_ml.datagen import ARROW_SCHEMAS, SimulationConfig, read_manifest, write_landing
from lakehouse_ml.definitions import build_definitions, daily_partitions
from lakehouse_ml.lifecycle import features
from lakehouse_ml.runner import DATA_JOBS, materialize_all

ASSETS = [
    "raw_customers",
    "raw_products",
    "raw_orders",
    "raw_web_sessions",
    "customer_features",
    "transaction_features",
]


COUNT_STAR_COLUMNS = {
    "customer_features": {"active_days", "distinct_categories", "sessions"},
    "transaction_features": {"n_lines", "customer_orders_90d"},
}


def _settings(home, days=130, customers=500):
    return load_settings(
        {
            "LAKEHOUSE_ML_HOME": str(home),
            "LAKEHOUSE_ML_DAYS": str(days),
            "LAKEHOUSE_ML_CUSTOMERS": str(customers),
        }
    )


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    settings = _settings(home)
    write_landing(
        SimulationConfig(
            seed=3, start_date=settings.start_date, days=settings.days, customers=settings.customers
        ),
        settings.landing_dir,
    )
    instance = dg.DagsterInstance.ephemeral()
    reports = materialize_all(settings, instance, jobs=DATA_JOBS)  # models: test_model_assets.py
    yield settings, instance, reports
    instance.dispose()


def _latest(instance, asset):
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None, f"{asset} was not materialized"
    return event.asset_materialization.metadata


def test_every_asset_is_materialized_with_rows(materialized):
    settings, instance, reports = materialized
    rows = {asset: n for report in reports for asset, n in report.materializations.items()}
    assert set(rows) == set(ASSETS)
    manifest = read_manifest(settings.landing_dir)
    assert rows["raw_orders"] == manifest["row_counts"]["orders"]
    assert rows["raw_customers"] == manifest["row_counts"]["customers"]
    assert all(n > 0 for n in rows.values())


def test_daily_partitions_are_all_materialized_in_one_run(materialized):
    settings, instance, reports = materialized
    daily = next(r for r in reports if r.job == "daily_job")
    run = instance.get_run_by_id(daily.run_id)
    assert run.tags["dagster/asset_partition_range_start"] == settings.start_date.isoformat()
    expected = set(daily_partitions(settings).get_partition_keys())
    assert len(expected) == settings.days
    assert instance.get_materialized_partitions(dg.AssetKey("raw_orders")) == expected


def test_feature_metadata(materialized):
    settings, instance, _ = materialized
    for table in features.FEATURE_TABLES:
        metadata = _latest(instance, table.name)
        schema = metadata["dagster/column_schema"].schema
        names = [c.name for c in schema.columns]
        assert set(table.keys) <= set(names) and set(table.required) <= set(names)
        assert metadata["dagster/row_count"].value > 0
        assert "|" in metadata["preview"].value  # a Markdown table
        lineage = metadata["dagster/column_lineage"].column_lineage.deps_by_column
        # Every column has lineage except row counts (COUNT(*)), which come from no column.
        assert set(lineage) <= set(names)
        assert set(names) - set(lineage) <= COUNT_STAR_COLUMNS[table.name]
    lineage = _latest(instance, "customer_features")["dagster/column_lineage"].column_lineage.deps_by_column
    assert {(d.asset_key.to_user_string(), d.column_name) for d in lineage["tenure_days"]} == {
        ("raw_customers", "signup_date"),
        ("raw_orders", "order_date"),
    }
    raw = _latest(instance, "raw_orders")
    assert [c.name for c in raw["dagster/column_schema"].schema.columns] == list(
        ARROW_SCHEMAS["orders"].names
    )


def test_checks_pass_on_simulated_data(materialized):
    _, instance, reports = materialized
    checks = {name: passed for report in reports for name, passed in report.checks.items()}
    assert checks == {
        "raw_customers:matches_landing": True,
        "raw_products:matches_landing": True,
        "raw_orders:matches_landing": True,
        "raw_web_sessions:matches_landing": True,
        "customer_features:unique_keys": True,
        "customer_features:required_columns_not_null": True,
        "customer_features:label_rate_in_band": True,
        "transaction_features:unique_keys": True,
        "transaction_features:required_columns_not_null": True,
    }
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("customer_features"), "label_rate_in_band")]
    )[dg.AssetCheckKey(dg.AssetKey("customer_features"), "label_rate_in_band")]
    evaluation = record.event.dagster_event.event_specific_data
    assert 0.05 <= evaluation.metadata["label_rate"].value <= 0.85


def test_checks_fail_on_bad_rows(warehouse):
    frame = pd.DataFrame(
        {
            "customer_id": [1, 1, 2],
            "snapshot_date": pd.to_datetime(["2026-02-01"] * 3).date,
            "tenure_days": [10, 10, None],
            "region": ["north", "north", "south"],
            "recency_days": [1, 1, 2],
            "frequency_orders": [1, 1, 1],
            "monetary_total": [5.0, 5.0, 6.0],
            "top_category": ["toys", "toys", "books"],
            "churned": [True, True, True],
        }
    )
    warehouse.load_dataframe(frame, "customer_features")
    outcomes = {o.name: o for o in features.quality_checks(warehouse, features.CUSTOMER_FEATURES)}
    assert not outcomes["unique_keys"].passed and outcomes["unique_keys"].metadata["duplicate_keys"] == 1
    assert not outcomes["required_columns_not_null"].passed
    assert outcomes["required_columns_not_null"].metadata["columns_with_nulls"] == "tenure_days"
    assert (
        not outcomes["label_rate_in_band"].passed
        and outcomes["label_rate_in_band"].metadata["label_rate"] == 1.0
    )


def test_missing_landing_data_is_a_clear_failure(tmp_path):
    settings = _settings(tmp_path, days=3)
    definitions = build_definitions(settings)
    result = definitions.resolve_job_def("dimensions_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.message
    assert "No landing data" in message and "lakehouse-ml generate" in message


def test_missing_raw_table_is_a_clear_failure(tmp_path):
    settings = _settings(tmp_path, days=3)
    definitions = build_definitions(settings)
    result = definitions.resolve_job_def("customer_features_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).event_specific_data.error.message
    assert "raw_" in message and "does not exist" in message and "Materialize" in message


def test_asset_graph_lineage():
    definitions = build_definitions(load_settings({}))
    graph = definitions.resolve_asset_graph()
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents["raw_orders"] == {"landing/orders"}
    assert parents["customer_features"] == {"raw_customers", "raw_orders", "raw_products", "raw_web_sessions"}
    assert parents["transaction_features"] == {"raw_customers", "raw_orders", "raw_products"}
