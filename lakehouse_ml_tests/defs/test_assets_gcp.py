"""Every data and model asset of the lakehouse, materialized through Dagster on the gcp backend.

The real google-cloud-bigquery client (inside dagster-gcp's BigQueryResource) talks to the local
BigQuery REST test double. The feature SQL files go over the wire unchanged, and the tables that
come out equal the local backend's: the double computes them with sqlglot and its own BigQuery
meanings, not with the project's translator. The model files go over the wire with only the
run's model name changed. (The whole loop, serving included, is the gcp run of lakehouse_ml_tests/test_demo.py.)
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.core.settings import load_settings
from lakehouse_ml.datagen import SimulationConfig, write_landing
from lakehouse_ml.lifecycle import features
from lakehouse_ml.runner import DATA_JOBS, MODEL_JOBS, materialize_all
from lakehouse_ml_tests.fakes import fake_bigquery_api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "lakehouse-test"
DATASET = "lakehouse_ml"


def _metrics(instance: dg.DagsterInstance, asset: str) -> dict[str, float]:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None, f"{asset} was not materialized"
    metadata = event.asset_materialization.metadata
    return {k: v.value for k, v in metadata.items() if k.startswith("metric/")}


def test_gcp_backend_materializes_every_asset_like_local(tmp_path):
    env = {"LAKEHOUSE_ML_HOME": str(tmp_path), "LAKEHOUSE_ML_DAYS": "130", "LAKEHOUSE_ML_CUSTOMERS": "200"}
    local = load_settings(env)
    write_landing(
        SimulationConfig(seed=5, start_date=local.start_date, days=local.days, customers=local.customers),
        local.landing_dir,
    )
    local_instance = dg.DagsterInstance.ephemeral()
    materialize_all(local, local_instance, jobs=DATA_JOBS + MODEL_JOBS)

    with fake_bigquery_api() as api:
        gcp = load_settings(
            {
                **env,
                "LAKEHOUSE_ML_BACKEND": "gcp",
                "LAKEHOUSE_ML_GCP_PROJECT": PROJECT,
                "LAKEHOUSE_ML_GCP_DATASET": DATASET,
                "LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT": api.url,
                "LAKEHOUSE_ML_GCP_ANONYMOUS_CREDENTIALS": "true",
            }
        )
        gcp_instance = dg.DagsterInstance.ephemeral()
        reports = materialize_all(gcp, gcp_instance, jobs=DATA_JOBS + MODEL_JOBS)
        checks = {name: passed for report in reports for name, passed in report.checks.items()}
        assert checks and all(checks.values()), checks

        # The feature SQL went to BigQuery as written in sql/features/, with the dataset as default.
        queries = [
            j["configuration"]["query"] for j in api.job_inserts() if "query" in j.get("configuration", {})
        ]
        for table in features.FEATURE_TABLES:
            sent = [q for q in queries if table.sql.strip() in q["query"]]
            assert sent, f"{table.name}: its SQL file was not sent unchanged"
            assert all(q["defaultDataset"] == {"projectId": PROJECT, "datasetId": DATASET} for q in sent)
        # Daily-partitioned tables are day-partitioned in BigQuery.
        assert (
            api.table_metadata(PROJECT, DATASET, "transaction_features")["timePartitioning"]["field"]
            == "order_date"
        )

        # Same rows as the local backend.
        warehouse = LocalWarehouse.at(local.duckdb_path)
        for table in features.FEATURE_TABLES:
            key = list(table.keys)
            remote = (
                api.table(PROJECT, DATASET, table.name).to_pandas().sort_values(key).reset_index(drop=True)
            )
            here = warehouse.query(f"SELECT * FROM {table.name}").sort_values(key).reset_index(drop=True)
            assert len(remote) == len(here) > 0
            # BigQuery TIMESTAMPs come back tz-aware (UTC); the local warehouse keeps them naive UTC.
            for column in remote.columns:
                if isinstance(remote[column].dtype, pd.DatetimeTZDtype):
                    remote[column] = remote[column].dt.tz_convert("UTC").dt.tz_localize(None)
            # Floats to a relative 1e-12 (a parallel SUM adds in any order), the rest as text.
            floats = [c for c in here.columns if pd.api.types.is_float_dtype(here[c])]
            other = [c for c in here.columns if c not in floats]
            pd.testing.assert_frame_equal(
                remote[other].astype(str), here[other].astype(str), check_dtype=False, obj=table.name
            )
            pd.testing.assert_frame_equal(
                remote[floats].astype("float64"), here[floats], check_exact=False, rtol=1e-12, obj=table.name
            )

        # BigQuery ML went over the wire as the model files say, each as the run's own model, and
        # the evaluations read that model. (Their numbers come from the project's own engine in the
        # double: comparing them with the local backend's would check the engine against itself.)
        for name in ("churn_model", "customer_segments_model", "transaction_anomaly_model"):
            text = (ROOT / "sql" / "models" / f"{name}.sql").read_text()
            run_model = (
                gcp_instance.get_latest_materialization_event(dg.AssetKey(name))
                .asset_materialization.metadata["bqml_model"]
                .value
            )
            assert run_model.startswith(name + "_")
            assert any(
                q["query"] == text.replace(f"MODEL {name}\n", f"MODEL {run_model}\n", 1) for q in queries
            ), f"{name}: its SQL file was not sent with only the model name changed"
            assert any(f"MODEL {run_model}" in q["query"] and "ML.EVALUATE" in q["query"] for q in queries)
            assert _metrics(gcp_instance, f"{name}_evaluation") and _metrics(
                local_instance, f"{name}_evaluation"
            )
    gcp_instance.dispose()
    local_instance.dispose()
