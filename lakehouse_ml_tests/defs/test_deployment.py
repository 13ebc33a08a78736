"""The registry version and endpoint deployment assets on the local backend: the chain
materializes, the endpoint server starts in the background, served predictions equal ML.PREDICT
in the export serving shape, retraining creates a new BigQuery ML model and version (never
replacing the deployed one) and goes through the champion/challenger gate (both versions scored
with ML.PREDICT), a canary and a promotion; a losing candidate stays registered and undeployed; a
rollback redeploys an older version; old models are garbage-collected."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from sklearn.metrics import davies_bouldin_score

from lakehouse_ml.backends import build_endpoints, build_registry, build_warehouse
from lakehouse_ml.bigquery.sqlfiles import read_sql
from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.definitions import build_definitions
from lakehouse_ml.defs.deployment import serving_assets
from lakehouse_ml.lifecycle import deployment, models
from lakehouse_ml.runner import materialize_all
from lakehouse_ml.serving import server
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
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(asset), check), limit=1
    )
    assert records, f"{asset}:{check} never ran"
    return records[0].evaluation


def _variant(monkeypatch, tmp_path, model: str, old: str, new: str) -> None:
    """Point the definitions at a copy of sql/ whose sql/models/<model>.sql has ``old`` replaced."""
    import shutil

    from lakehouse_ml.bigquery.sqlfiles import sql_dir

    copy = tmp_path / "sql"
    if not copy.exists():
        shutil.copytree(sql_dir(), copy)
    path = copy / "models" / f"{model}.sql"
    text = (sql_dir() / "models" / f"{model}.sql").read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    monkeypatch.setenv("LAKEHOUSE_ML_SQL_DIR", str(copy))


def _retrain(model: str) -> dg.AssetSelection:
    """The model, then its registry version and what depends on it (the gate blocks the rest)."""
    return (
        dg.AssetSelection.assets(model) | dg.AssetSelection.assets(f"{model}_registry_version").downstream()
    )


def _materialize(settings, instance, selection, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
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
    model = _latest(instance, "churn_model")["bqml_model"].value
    assert meta["bqml_model"].value == model and meta["source"].value == f"bqml://main.{model}"
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
    model = _latest(instance, name)["bqml_model"].value
    assert meta["source"].value == f"bqml://main.{model}"
    assert meta["model_type"].value == "KMEANS"
    assert meta["metrics"].value["davies_bouldin_index"] > 0
    assert Path(meta["link"].value).is_dir()
    gate = _check(instance, f"{name}_registry_version", "champion_challenger")
    assert gate.passed and "first to serve" in gate.description
    deployed = _latest(instance, f"{name}_deployment")
    assert deployed["version_id"].value == "1" and list(deployed["traffic_split"].value.values()) == [100]
    smoke = _check(instance, f"{name}_deployment", "smoke_test")
    assert smoke.passed, smoke.description
    assert set(smoke.metadata["example"].value["prediction"]) == {
        "nearest_centroid_id",
        "centroid_ids",
        "centroid_distances",
    }
    # Served clusters equal ML.PREDICT's on the same rows, in the export serving shape: every
    # centroid in id order (customer_segments_model has a TRANSFORM clause: the endpoint takes the
    # raw columns, NULLs as the documented sentinels, and applies it, as ML.PREDICT does).
    warehouse, endpoints = build_warehouse(settings), build_endpoints(settings)
    spec = models.model_spec(name)
    query = read_sql(f"serving/{name}.sql")
    rows = warehouse.query_arrow(query)
    assert rows.num_rows > 20
    predicted = warehouse.query(f"SELECT * FROM ML.PREDICT(MODEL {model}, ({query}))")
    answer = endpoints.predict(name, deployment.to_instances(spec, rows))
    assert answer["modelVersionId"] == "1" and answer["model"].endswith(f"/models/{name}")
    answers = answer["predictions"]
    assert len(answers) == len(predicted)
    k = spec.options["num_clusters"]
    for prediction, (_, expected) in zip(answers, predicted.iterrows()):
        assert prediction["nearest_centroid_id"] == [expected["CENTROID_ID"]]
        assert prediction["centroid_ids"] == list(range(1, k + 1))
        for near in expected["NEAREST_CENTROIDS_DISTANCE"]:
            assert prediction["centroid_distances"][near["CENTROID_ID"] - 1] == pytest.approx(
                near["DISTANCE"], rel=1e-9, abs=1e-12
            )


def test_a_registered_model_that_is_not_served_gets_an_ungated_registry_version_asset(chain):
    settings, instance = chain
    spec = dataclasses.replace(models.CUSTOMER_SEGMENTS_MODEL, serving=None)
    assets = serving_assets((spec,))
    assert [a.key.to_user_string() for a in assets] == ["customer_segments_model_registry_version"]
    assert assets[0].check_specs_by_output_name == {}
    result = dg.materialize(
        assets, instance=dg.DagsterInstance.ephemeral(), resources=build_definitions(settings).resources
    )
    assert result.success
    meta = result.asset_materializations_for_node("customer_segments_model_registry_version")[0].metadata
    assert meta["model_id"].value == "customer_segments_model"
    assert (
        meta["version_id"].value
        == build_registry(settings).latest_version("customer_segments_model").version_id
    )
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
    # predictions through the endpoint equal ML.PREDICT on the same rows, in the export serving
    # shape (a BOOL class as 'true'/'false', the predicted class as a one-element list)
    warehouse, endpoints = build_warehouse(settings), build_endpoints(settings)
    model = _latest(instance, "churn_model")["bqml_model"].value
    query = read_sql("serving/churn_model.sql")
    rows = warehouse.query_arrow(query)
    assert rows.num_rows > 50
    predicted = warehouse.query(f"SELECT * FROM ML.PREDICT(MODEL {model}, ({query}))")
    answer = endpoints.predict("churn_model", deployment.to_instances(SPEC, rows))
    assert answer["modelVersionId"] == "1"
    assert answer["model"].endswith("/models/churn_model")
    answers = answer["predictions"]
    assert len(answers) == len(predicted)
    fmt = SPEC.prediction_format("BOOL")
    for prediction, (_, expected) in zip(answers, predicted.iterrows()):
        assert prediction["predicted_churned"] == ["true" if expected["predicted_churned"] else "false"]
        parsed = fmt.parse(prediction)
        assert parsed.predicted == expected["predicted_churned"]
        for p in expected["predicted_churned_probs"]:
            assert parsed.probability(p["label"]) == pytest.approx(p["prob"], rel=1e-9, abs=1e-12)


def test_retraining_gates_canaries_promotes_then_a_loser_stays_undeployed_then_rollback(
    chain, monkeypatch, tmp_path
):
    settings, instance = chain
    registry, endpoints, warehouse = (
        build_registry(settings),
        build_endpoints(settings),
        build_warehouse(settings),
    )
    first = _latest(instance, "churn_model")["bqml_model"].value
    # Retrain on the same data while version 1 serves: the run creates a BigQuery ML model of its
    # own, registered as version 2; version 1 and its model are not replaced.
    materialize_all(settings, instance, jobs=("models_job", "serving_job"))
    second = _latest(instance, "churn_model")["bqml_model"].value
    assert second != first and {first, second} <= {m for m, _ in warehouse.list_models()}
    gate = _check(instance, "churn_model_registry_version", "champion_challenger")
    # It ties with the serving version, so it may replace it (>= for roc_auc), through a canary.
    assert (
        gate.passed
        and "Candidate version 2 wins" in gate.description
        and "both scored with ML.PREDICT" in gate.description
    )
    assert gate.metadata["serving_version"].value == "1"
    assert (gate.metadata["candidate_model"].value, gate.metadata["serving_model"].value) == (second, first)
    assert gate.metadata["candidate_value"].value == pytest.approx(
        gate.metadata["serving_value"].value, abs=1e-12
    )
    meta = _latest(instance, "churn_model_deployment")
    actions = meta["actions"].value
    assert "canary at 10%" in actions and "promoted" in actions and "undeployed" in actions
    info = endpoints.get_endpoint("churn_model")
    assert [(d["version_id"], d["traffic_percentage"]) for d in info["deployed_models"]] == [("2", 100)]
    assert set(registry.get_version("churn_model", "champion").aliases) == {"champion", "default"}
    assert registry.get_version("churn_model", "champion").version_id == "2"
    assert [v.version_id for v in registry.list_versions("churn_model")] == ["1", "2"]  # nothing was replaced

    # Forcing a CREATE OR REPLACE of the deployed version's model fails as BigQuery does.
    with pytest.raises(
        BqmlError,
        match=r"code=FAILED_PRECONDITION, message=The Model is deployed "
        r"or being deployed at the following Endpoint\(s\)",
    ):
        warehouse.execute(models.training_sql(SPEC, second))
    assert [v.version_id for v in registry.list_versions("churn_model")] == ["1", "2"]

    # A worse candidate: the same model trained on meaningless labels. It is registered (v3, alias
    # challenger), the blocking gate fails and says why, and the deployment does not run. The
    # serving version is scored with ML.PREDICT of its own model: its score is that model's
    # ROC AUC on the gate rows, computed here with scikit-learn.
    _variant(
        monkeypatch,
        tmp_path,
        "churn_model",
        "  churned\nFROM customer_features",
        "  MOD(age, 2) = 0 AS churned\nFROM customer_features",
    )
    result = _materialize(settings, instance, _retrain("churn_model"))
    third = _latest(instance, "churn_model")["bqml_model"].value
    gate = _check(instance, "churn_model_registry_version", "champion_challenger")
    assert not gate.passed
    assert "Candidate version 3 loses" in gate.description and "not deployed" in gate.description
    assert gate.metadata["candidate_value"].value < gate.metadata["serving_value"].value
    assert (gate.metadata["candidate_model"].value, gate.metadata["serving_model"].value) == (third, second)
    from sklearn.metrics import roc_auc_score

    scored = warehouse.query(
        f"SELECT * FROM ML.PREDICT(MODEL {second}, ({read_sql('gate/churn_model.sql')}))"
    )
    truth = scored["churned"].astype(bool)
    champion_scores = [
        next(p["prob"] for p in probs if p["label"] is True) for probs in scored["predicted_churned_probs"]
    ]
    assert gate.metadata["serving_value"].value == pytest.approx(
        roc_auc_score(truth, champion_scores), rel=1e-9
    )
    assert gate.metadata["serving_value"].value > 0.6  # the champion is known to be good
    assert registry.get_version("churn_model", "challenger").version_id == "3"
    assert registry.get_version("churn_model", "champion").version_id == "2"
    planned = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "churn_model_deployment" not in planned  # blocked by the failed blocking check
    assert [d["version_id"] for d in endpoints.get_endpoint("churn_model")["deployed_models"]] == ["2"]
    monkeypatch.delenv("LAKEHOUSE_ML_SQL_DIR")

    # A canary left at its share (promote: false), then a rollback to version 1.
    result = _materialize(
        settings,
        instance,
        "churn_model_deployment",
        {
            "ops": {
                "churn_model_deployment": {"config": {"version": "1", "canary_percent": 30, "promote": False}}
            }
        },
    )
    assert result.success
    split = {
        d["version_id"]: d["traffic_percentage"]
        for d in endpoints.get_endpoint("churn_model")["deployed_models"]
    }
    assert split == {"2": 70, "1": 30}
    smoke = _check(instance, "churn_model_deployment", "smoke_test")
    assert smoke.passed and "v1:" in smoke.description and "v2:" in smoke.description
    assert registry.get_version("churn_model", "champion").version_id == "1"
    result = _materialize(settings, instance, "churn_model_deployment")
    assert result.success
    info = endpoints.get_endpoint("churn_model")
    assert [(d["version_id"], d["traffic_percentage"]) for d in info["deployed_models"]] == [("1", 100)]
    assert (
        json.loads(json.dumps(_latest(instance, "churn_model_deployment")["traffic_split"].value))
        == info["traffic_split"]
    )


def test_old_models_are_garbage_collected_after_the_undeploy(chain):
    """After the retraining above: version 1 serves (champion, default), version 3 lost (challenger)
    and is the newest, version 2 was undeployed and holds no alias. With keep_models=1, the
    deployment drops version 2's BigQuery ML model, which deletes its registry version and its
    baseline, and keeps version 1's (deployed) and version 3's (the newest)."""
    settings, instance = chain
    registry, warehouse = build_registry(settings), build_warehouse(settings)
    models_before = [m for m, _ in models.training_models(warehouse, SPEC)]
    assert len(models_before) == 3
    by_version = {registry.find_bqml_version(warehouse.model_source(m)).version_id: m for m in models_before}
    assert warehouse.table_exists("churn_model_baseline_v2")
    result = _materialize(
        settings,
        instance,
        "churn_model_deployment",
        {"ops": {"churn_model_deployment": {"config": {"keep_models": 1}}}},
    )
    assert result.success
    meta = _latest(instance, "churn_model_deployment")
    assert meta["models_dropped"].value == [by_version["2"]]
    assert (
        f"kept {by_version['1']} (version 1 is deployed (projects/local/locations/us-central1/endpoints/"
        in meta["garbage_collection"].value
    )
    assert [v.version_id for v in registry.list_versions("churn_model")] == ["1", "3"]
    assert {m for m, _ in models.training_models(warehouse, SPEC)} == {by_version["1"], by_version["3"]}
    assert not warehouse.table_exists("churn_model_baseline_v2") and warehouse.table_exists(
        "churn_model_baseline_v1"
    )


def test_a_refused_drop_is_retried_with_backoff_then_reported(chain):
    """googleapis/python-aiplatform#2807: a delete right after an undeploy can fail. collect_garbage
    retries with exponential backoff; a drop that keeps failing is reported, not raised."""
    settings, _ = chain
    registry, endpoints, real = build_registry(settings), build_endpoints(settings), build_warehouse(settings)
    refusals = {"left": 2, "error": "The Model is deployed or being deployed (still undeploying)"}
    calls: list[str] = []

    class Refusing(type(real)):
        def execute(self, sql, params=None):
            if sql.rstrip().endswith(tuple(f"DROP MODEL {m}" for m, _ in models.training_models(real, SPEC))):
                calls.append(sql.rstrip().rsplit(" ", 1)[-1])
                if refusals["left"]:
                    refusals["left"] -= 1
                    raise models.WarehouseError(refusals["error"])
            return super().execute(sql, params)

    warehouse = Refusing(duckdb=real.duckdb)
    models.train(real, SPEC)  # version 4, the newest now
    registry.merge_version_aliases("churn_model", "3", ["-challenger"])  # version 3 holds nothing
    sleeps: list[float] = []
    result = deployment.collect_garbage(
        warehouse, registry, endpoints, SPEC, keep=1, first_delay_s=2.0, sleep=sleeps.append
    )
    assert sleeps == [2.0, 4.0] and len(calls) == 3 and result.dropped == calls[-1:]
    assert [v.version_id for v in registry.list_versions("churn_model")] == ["1", "4"]
    # A version beyond keep that holds an alias stays.
    models.train(real, SPEC)  # version 5, the newest now
    registry.merge_version_aliases("churn_model", "4", ["audited"])
    result = deployment.collect_garbage(warehouse, registry, endpoints, SPEC, keep=1, sleep=sleeps.append)
    assert not result.dropped and any("version 4 holds audited" in why for why in result.kept.values())
    registry.merge_version_aliases("churn_model", "4", ["-audited"])
    # Always refused as deployed: reported after the attempts, nothing raised, nothing dropped.
    refusals.update(left=99)
    result = deployment.collect_garbage(
        warehouse, registry, endpoints, SPEC, keep=1, attempts=3, first_delay_s=0.5, sleep=sleeps.append
    )
    assert (
        sleeps[2:] == [0.5, 1.0]
        and not result.dropped
        and "still undeploying" in next(iter(result.failed.values()))
    )
    # Refused for another reason: not retried.
    refusals.update(left=99, error="Access Denied: Dataset lakehouse_ml: permission bigquery.models.delete")
    result = deployment.collect_garbage(
        warehouse, registry, endpoints, SPEC, keep=1, first_delay_s=0.5, sleep=sleeps.append
    )
    assert sleeps[4:] == [] and "Access Denied" in next(iter(result.failed.values()))
    assert result.kept and [v.version_id for v in registry.list_versions("churn_model")] == ["1", "4", "5"]
    with pytest.raises(ValueError, match="at least 1"):
        deployment.collect_garbage(warehouse, registry, endpoints, SPEC, keep=0)


def test_kmeans_gate_scores_both_versions_clusters_in_one_space_and_stops_a_worse_candidate(
    chain, monkeypatch, tmp_path
):
    """After the retraining above: customer_segments_model version 2, retrained on the same rows,
    tied with version 1 and took over. Its gate values equal scikit-learn's Davies-Bouldin index
    of the clusters in a feature space built here independently. Then a candidate trained on
    meaningless rows loses and is not deployed."""
    settings, instance = chain
    name = "customer_segments_model"
    spec = models.CUSTOMER_SEGMENTS_MODEL
    warehouse, registry, endpoints = (
        build_warehouse(settings),
        build_registry(settings),
        build_endpoints(settings),
    )
    gate = _check(instance, f"{name}_registry_version", "champion_challenger")
    assert (
        gate.passed
        and "Candidate version 2 wins" in gate.description
        and "one feature space" in gate.description
    )
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
    fmt = spec.prediction_format()
    answer = endpoints.predict(
        name, deployment.to_instances(spec, warehouse.query_arrow(read_sql(f"gate/{name}.sql")))
    )
    labels = [fmt.parse(p).predicted for p in answer["predictions"]]
    expected = davies_bouldin_score(design, labels)
    assert gate.metadata["candidate_value"].value == pytest.approx(expected, rel=1e-9)
    assert gate.metadata["serving_value"].value == pytest.approx(expected, rel=1e-9)

    # A broken candidate: trained with recency counted from the wrong epoch (100,000 days too
    # many). Its centroids sit far from every real customer, so it puts them all in one cluster:
    # its Davies-Bouldin index is undefined and it loses.
    _variant(
        monkeypatch,
        tmp_path,
        name,
        "FROM customer_features\nWHERE snapshot_date",
        "FROM (SELECT * REPLACE (recency_days + 100000 AS recency_days) FROM customer_features)\nWHERE snapshot_date",
    )
    result = _materialize(settings, instance, _retrain(name))
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
