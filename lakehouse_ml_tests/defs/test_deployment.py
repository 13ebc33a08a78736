"""The registry version and endpoint deployment assets on the local backend: the chain
materializes, the endpoint server starts in the background, served predictions equal ML.PREDICT,
retraining goes through the champion/challenger gate, a canary and a promotion; a losing candidate
stays registered and undeployed; a rollback redeploys an older version."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from sklearn.metrics import davies_bouldin_score

from lakehouse_ml import deployment, models
from lakehouse_ml.backends import build_endpoints, build_registry, build_warehouse
from lakehouse_ml.defs.deployment import serving_assets
from lakehouse_ml.definitions import build_definitions
from lakehouse_ml.runner import materialize_all
from lakehouse_ml.serving import server
from lakehouse_ml.sqlfiles import read_sql
from lakehouse_ml_tests.local_chain import materialized_chain

SPEC = models.CHURN_MODEL


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    yield from materialized_chain(tmp_path_factory.mktemp("home"), days=130, customers=500, seed=3)


def _latest(instance, asset: str):
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None, f"{asset} was not materialized"
    return event.asset_materialization.metadata


def _check(instance, asset: str, check: str):
    records = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(dg.AssetKey(asset), check), limit=1)
    assert records, f"{asset}:{check} never ran"
    return records[0].evaluation


def _materialize(settings, instance, selection: str, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    definitions = build_definitions(settings)
    return dg.materialize(
        list(definitions.assets),
        instance=instance,
        resources=definitions.resources,
        selection=selection,
        run_config=run_config,
        raise_on_error=False,
    )


def test_registry_version_metadata(chain):
    settings, instance = chain
    meta = _latest(instance, "churn_model_registry_version")
    assert meta["model_id"].value == "churn_model"
    assert meta["version_id"].value == "1"
    assert set(meta["aliases"].value) == {"champion", "default"}
    assert meta["source"].value == "bqml://main.churn_model"
    assert meta["model_type"].value == "LOGISTIC_REG"
    assert 0.5 < meta["metrics"].value["roc_auc"] <= 1.0
    assert Path(meta["link"].value).is_dir()
    gate = _check(instance, "churn_model_registry_version", "champion_challenger")
    assert gate.passed and "first to serve" in gate.description


@pytest.mark.parametrize("name", ["customer_segments_model", "transaction_anomaly_model"])
def test_kmeans_models_are_registered_deployed_and_answer_ml_predict(chain, name):
    settings, instance = chain
    meta = _latest(instance, f"{name}_registry_version")
    assert meta["model_id"].value == name and meta["version_id"].value == "1"
    assert set(meta["aliases"].value) == {"champion", "default"}
    assert meta["source"].value == f"bqml://main.{name}"
    assert meta["model_type"].value == "KMEANS"
    assert meta["metrics"].value["davies_bouldin_index"] > 0
    assert Path(meta["link"].value).is_dir()
    gate = _check(instance, f"{name}_registry_version", "champion_challenger")
    assert gate.passed and "first to serve" in gate.description
    deployed = _latest(instance, f"{name}_deployment")
    assert deployed["version_id"].value == "1" and list(deployed["traffic_split"].value.values()) == [100]
    smoke = _check(instance, f"{name}_deployment", "smoke_test")
    assert smoke.passed, smoke.description
    assert set(smoke.metadata["example"].value["prediction"]) == {"nearest_centroid_id", "centroid_ids", "centroid_distances"}
    # Served clusters equal ML.PREDICT's on the same rows (customer_segments_model has a TRANSFORM
    # clause: the endpoint takes the raw columns and applies it, as ML.PREDICT does).
    warehouse, endpoints = build_warehouse(settings), build_endpoints(settings)
    query = read_sql(f"serving/{name}.sql")
    rows = warehouse.query(query)
    assert len(rows) > 20
    predicted = warehouse.query(f"SELECT * FROM ML.PREDICT(MODEL {name}, ({query}))")
    answer = endpoints.predict(name, deployment.to_instances(rows))
    assert answer["modelVersionId"] == "1" and answer["model"].endswith(f"/models/{name}")
    served = answer["predictions"]
    assert len(served) == len(predicted)
    for prediction, (_, expected) in zip(served, predicted.iterrows()):
        assert prediction["nearest_centroid_id"] == expected["CENTROID_ID"]
        near = list(expected["NEAREST_CENTROIDS_DISTANCE"])
        assert prediction["centroid_ids"] == [int(d["CENTROID_ID"]) for d in near]
        np.testing.assert_allclose(prediction["centroid_distances"], [d["DISTANCE"] for d in near], rtol=1e-9, atol=1e-12)


def test_a_registered_model_that_is_not_served_gets_an_ungated_registry_version_asset(chain):
    settings, instance = chain
    spec = dataclasses.replace(models.CUSTOMER_SEGMENTS_MODEL, serving=None)
    assets = serving_assets((spec,))
    assert [a.key.to_user_string() for a in assets] == ["customer_segments_model_registry_version"]
    assert assets[0].check_specs_by_output_name == {}
    result = dg.materialize(assets, instance=dg.DagsterInstance.ephemeral(), resources=build_definitions(settings).resources)
    assert result.success
    meta = result.asset_materializations_for_node("customer_segments_model_registry_version")[0].metadata
    assert meta["model_id"].value == "customer_segments_model"
    assert meta["version_id"].value == build_registry(settings).latest_version("customer_segments_model").version_id
    assert meta["model_type"].value == "KMEANS" and meta["metrics"].value["davies_bouldin_index"] > 0


def test_deployment_starts_the_server_and_serves_ml_predict(chain):
    settings, instance = chain
    meta = _latest(instance, "churn_model_deployment")
    assert meta["version_id"].value == "1"
    assert list(meta["traffic_split"].value.values()) == [100]
    assert server.pidfile(settings.home_dir).is_file()  # started in the background, tracked
    assert server.health(settings.serving_host, settings.serving_port) is not None
    smoke = _check(instance, "churn_model_deployment", "smoke_test")
    assert smoke.passed, smoke.description
    # predictions through the endpoint equal ML.PREDICT on the same rows
    warehouse, endpoints = build_warehouse(settings), build_endpoints(settings)
    query = read_sql("serving/churn_model.sql")
    rows = warehouse.query(query)
    assert len(rows) > 50
    predicted = warehouse.query(f"SELECT * FROM ML.PREDICT(MODEL churn_model, ({query}))")
    answer = endpoints.predict("churn_model", deployment.to_instances(rows))
    assert answer["modelVersionId"] == "1"
    assert answer["model"].endswith("/models/churn_model")
    served = answer["predictions"]
    assert len(served) == len(predicted)
    for prediction, (_, expected) in zip(served, predicted.iterrows()):
        assert prediction["predicted_churned"] == expected["predicted_churned"]
        probs = {p["label"]: p["prob"] for p in expected["predicted_churned_probs"]}
        assert prediction["churned_values"] == [p["label"] for p in expected["predicted_churned_probs"]]
        np.testing.assert_allclose(prediction["churned_probs"], [probs[v] for v in prediction["churned_values"]], rtol=1e-9, atol=1e-12)


def test_retraining_gates_canaries_promotes_then_a_loser_stays_undeployed_then_rollback(chain):
    settings, instance = chain
    registry, endpoints = build_registry(settings), build_endpoints(settings)
    # Retrain on the same data: the candidate ties with the serving version, so it may replace it
    # (>= for roc_auc), going through a canary first.
    materialize_all(settings, instance, jobs=("models_job", "serving_job"))
    gate = _check(instance, "churn_model_registry_version", "champion_challenger")
    assert gate.passed and "Candidate version 2 wins" in gate.description
    assert gate.metadata["serving_version"].value == "1"
    meta = _latest(instance, "churn_model_deployment")
    actions = meta["actions"].value
    assert "canary at 10%" in actions and "promoted" in actions and "undeployed" in actions
    info = endpoints.get_endpoint("churn_model")
    assert [(d["version_id"], d["traffic_percentage"]) for d in info["deployed_models"]] == [("2", 100)]
    assert set(registry.get_version("churn_model", "champion").aliases) == {"champion", "default"}
    assert registry.get_version("churn_model", "champion").version_id == "2"

    # A worse candidate: the same model trained on shuffled labels. It is registered (v3, alias
    # challenger), the blocking gate fails and says why, and the deployment does not run.
    sql = SPEC.sql.replace("  churned\nFROM customer_features", "  MOD(age, 2) = 0 AS churned\nFROM customer_features")
    assert sql != SPEC.sql
    build_warehouse(settings).execute(sql)
    result = _materialize(settings, instance, "churn_model_registry_version*")
    gate = _check(instance, "churn_model_registry_version", "champion_challenger")
    assert not gate.passed
    assert "Candidate version 3 loses" in gate.description and "not deployed" in gate.description
    assert gate.metadata["candidate_value"].value < gate.metadata["serving_value"].value
    assert registry.get_version("churn_model", "challenger").version_id == "3"
    assert registry.get_version("churn_model", "champion").version_id == "2"
    planned = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "churn_model_deployment" not in planned  # blocked by the failed blocking check
    assert [d["version_id"] for d in endpoints.get_endpoint("churn_model")["deployed_models"]] == ["2"]

    # A canary left at its share (promote: false), then a rollback to version 1.
    result = _materialize(
        settings, instance, "churn_model_deployment",
        {"ops": {"churn_model_deployment": {"config": {"version": "1", "canary_percent": 30, "promote": False}}}},
    )
    assert result.success
    split = {d["version_id"]: d["traffic_percentage"] for d in endpoints.get_endpoint("churn_model")["deployed_models"]}
    assert split == {"2": 70, "1": 30}
    smoke = _check(instance, "churn_model_deployment", "smoke_test")
    assert smoke.passed and "v1:" in smoke.description and "v2:" in smoke.description
    assert registry.get_version("churn_model", "champion").version_id == "1"
    result = _materialize(settings, instance, "churn_model_deployment")
    assert result.success
    info = endpoints.get_endpoint("churn_model")
    assert [(d["version_id"], d["traffic_percentage"]) for d in info["deployed_models"]] == [("1", 100)]
    assert json.loads(json.dumps(_latest(instance, "churn_model_deployment")["traffic_split"].value)) == info["traffic_split"]


def test_kmeans_gate_scores_both_versions_clusters_in_one_space_and_stops_a_worse_candidate(chain):
    """After the retraining above: customer_segments_model version 2, retrained on the same rows,
    tied with version 1 and took over. Its gate values equal scikit-learn's Davies-Bouldin index
    of the clusters in a feature space built here independently. Then a candidate trained on
    meaningless rows loses and is not deployed."""
    settings, instance = chain
    name = "customer_segments_model"
    warehouse, registry, endpoints = build_warehouse(settings), build_registry(settings), build_endpoints(settings)
    gate = _check(instance, f"{name}_registry_version", "champion_challenger")
    assert gate.passed and "Candidate version 2 wins" in gate.description and "one feature space" in gate.description
    assert gate.metadata["serving_version"].value == "1"
    rows = warehouse.query(read_sql(f"gate/{name}.sql"))
    assert gate.metadata["rows"].value == len(rows)
    # The TRANSFORM takes LN(1 + x) of the four RFM columns; k-means standardizes every column
    # (a uniform rescaling, e.g. ddof, leaves Davies-Bouldin unchanged).
    space = rows.astype("float64").copy()
    for column in ("recency_days", "frequency_orders", "monetary_total", "avg_order_value"):
        space[column] = np.log1p(space[column])
    space = space.fillna(space.mean())
    design = ((space - space.mean()) / space.std()).to_numpy()
    labels = [p["nearest_centroid_id"] for p in endpoints.predict(name, deployment.to_instances(rows))["predictions"]]
    expected = davies_bouldin_score(design, labels)
    assert gate.metadata["candidate_value"].value == pytest.approx(expected, rel=1e-9)
    assert gate.metadata["serving_value"].value == pytest.approx(expected, rel=1e-9)

    # A broken candidate: trained with recency counted from the wrong epoch (100,000 days too
    # many). Its centroids sit far from every real customer, so it puts them all in one cluster:
    # its Davies-Bouldin index is undefined and it loses.
    spec = models.CUSTOMER_SEGMENTS_MODEL
    sql = spec.sql.replace(
        "FROM customer_features\nWHERE snapshot_date",
        "FROM (SELECT * REPLACE (recency_days + 100000 AS recency_days) FROM customer_features)\nWHERE snapshot_date",
    )
    assert sql != spec.sql
    warehouse.execute(sql)
    result = _materialize(settings, instance, f"{name}_registry_version*")
    gate = _check(instance, f"{name}_registry_version", "champion_challenger")
    assert not gate.passed, gate.description
    assert "Candidate version 3 loses: its davies_bouldin_index is undefined" in gate.description
    assert "not deployed" in gate.description
    assert "| clusters | 1.0000 |" in gate.metadata["comparison"].value
    planned = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert f"{name}_deployment" not in planned
    assert registry.get_version(name, "champion").version_id == "2"
    assert registry.get_version(name, "challenger").version_id == "3"
    assert [d["version_id"] for d in endpoints.get_endpoint(name)["deployed_models"]] == ["2"]
