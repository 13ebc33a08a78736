"""The main job end to end: ``lakehouse-ml demo``'s loop at small scale, on the local default and
on the gcp backend against the BigQuery and Vertex AI test doubles, with the same assertions.

Data → models → registry → endpoint → normal traffic (the drift check passes) → the drift scenario
(the check fails) → the sensor starts one retraining run → the gate passes → the canary is
promoted → monitoring passes again. Everything goes through a persistent Dagster instance under the
local home, so the assertions read the same history the UI shows. On gcp the request-response log
lands a second after each predict (as Vertex AI writes it asynchronously) and a delete right after
an undeploy is refused once (googleapis/python-aiplatform#2807).
"""

from __future__ import annotations

import dagster as dg
import pytest

from lakehouse_ml import demo
from lakehouse_ml.backends import build_endpoints, build_registry, build_warehouse
from lakehouse_ml.core.errors import WarehouseError
from lakehouse_ml.lifecycle import deployment, models
from lakehouse_ml.runner import persistent_instance
from lakehouse_ml.serving import server
from lakehouse_ml_tests.fakes import fake_bigquery_api
from lakehouse_ml_tests.fakes.vertex_api import fake_vertex_api
from lakehouse_ml_tests.local_chain import local_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
DOUBLES: dict[str, object] = {}  # the gcp loop's Vertex AI double, for the tests that break it


@pytest.fixture(scope="module", params=["local", "gcp"])
def loop(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"demo_home_{request.param}")
    lines: list[str] = []
    if request.param == "local":
        settings = local_settings(home, customers="1500")
        try:
            summary = demo.run_demo(settings, progress=lines.append)
        finally:
            server.stop_server(settings.home_dir)
        yield settings, summary, lines
        return
    with (
        fake_bigquery_api() as bq,
        fake_vertex_api(bigquery=bq, log_delay_s=1.0, refuse_deletes_after_undeploy=1) as vertex,
    ):
        settings = local_settings(
            home,
            customers="1500",
            backend="gcp",
            gcp_project="lakehouse-test",
            gcp_anonymous_credentials="true",
            bigquery_api_endpoint=bq.url,
            vertex_api_endpoint=vertex.url,
            monitoring_api_endpoint=vertex.url,
            request_log_grace_seconds="5",
        )
        summary = demo.run_demo(settings, progress=lines.append)
        DOUBLES["vertex"] = vertex
        yield settings, summary, lines
        DOUBLES.clear()


def _check_history(instance: dg.DagsterInstance, asset: str, check: str):
    """The check's execution records, oldest first."""
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    return list(reversed(instance.event_log_storage.get_asset_check_execution_history(key, limit=20)))


def test_drift_check_passes_then_fails_then_passes(loop):
    settings, summary, _ = loop
    assert [(step, passed) for step, passed, _ in summary.checks] == [
        ("normal traffic", True),
        ("after the drift", False),
        ("after retraining", True),
    ]
    with persistent_instance(settings) as instance:
        history = _check_history(instance, "churn_model_monitoring", "feature_drift")
    assert [r.evaluation.passed for r in history] == [True, False, True]
    failed = history[1].evaluation
    assert failed.severity == dg.AssetCheckSeverity.ERROR
    drifted = [name for name, value, threshold, over in summary.drift_values if over]
    assert drifted and all(name in failed.description for name in drifted)
    assert all(value > threshold for _, value, threshold, over in summary.drift_values if over)


def test_exactly_one_run_started_by_the_sensor(loop):
    settings, summary, _ = loop
    with persistent_instance(settings) as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": demo.SENSOR}))
        check_run = _check_history(instance, "churn_model_monitoring", "feature_drift")[1]
    assert summary.sensor_runs == 1 and len(runs) == 1
    run = runs[0]
    assert run.run_id == summary.sensor_run_id
    assert run.job_name == "churn_model_retraining_job"
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["lakehouse_ml/trigger"] == "drift"
    assert run.tags["lakehouse_ml/model"] == "churn_model"
    assert run.tags["lakehouse_ml/drifted_features"]
    assert run.tags["dagster/run_key"].startswith("churn_model:drift:")
    # The run's trigger is the failed check evaluation recorded in the history.
    assert not check_run.evaluation.passed
    assert run.tags["lakehouse_ml/check_run_id"] == check_run.run_id


def test_a_new_version_holds_the_serving_alias(loop):
    settings, summary, _ = loop
    registry = build_registry(settings)
    versions = registry.list_versions("churn_model")
    assert [v.version_id for v in versions] == ["1", "2"]
    champion = registry.get_version("churn_model", "champion")
    assert champion.version_id == "2" and "default" in champion.aliases
    assert summary.versions_before == "v1[champion,default]"
    assert summary.versions_after.endswith("v2[champion,default]")
    endpoint = build_endpoints(settings).get_endpoint("churn_model")
    deployed = {d["version_id"]: d["deployed_model_id"] for d in endpoint["deployed_models"]}
    assert set(deployed) == {"2"}
    assert endpoint["traffic_split"] == {deployed["2"]: 100}


def test_quality_on_post_drift_data_is_better_after_retraining(loop):
    _, summary, _ = loop
    assert summary.metric == "roc_auc"
    assert summary.gate.startswith("passed")
    assert summary.retrained_quality > summary.stale_quality + 0.01


def test_progress_summary_and_no_process_left(loop):
    settings, summary, lines = loop
    assert [line.split("]")[0] + "]" for line in lines if line.startswith("[")] == [
        f"[{i}/11]" for i in range(1, 12)
    ]
    table = summary.table()
    for row in (
        "versions before",
        "versions after",
        "stale model",
        "retrained model",
        "run started by the sensor",
        "open the UI",
    ):
        assert row in table
    assert summary.sensor_run_id in table
    assert server.health(settings.serving_host, settings.serving_port) is None
    assert not server.pidfile(settings.home_dir).exists()


def test_the_deployed_model_is_never_replaced_and_old_models_are_collected(loop):
    """After the loop: forcing a CREATE OR REPLACE of the serving version's model fails with
    BigQuery's FAILED_PRECONDITION; garbage collection with keep=1 drops version 1's model (undeployed
    at the promotion, no alias left), through the refusal right after the undeploy, and keeps the
    deployed version 2's."""
    settings, _, _ = loop
    spec = models.CHURN_MODEL
    warehouse, registry, endpoints = (
        build_warehouse(settings),
        build_registry(settings),
        build_endpoints(settings),
    )
    champion = registry.get_version("churn_model", "champion")
    model = deployment.bqml_model_of(warehouse, registry, spec, champion)
    with pytest.raises(
        WarehouseError, match="code=FAILED_PRECONDITION, message=The Model is deployed or being deployed"
    ):
        warehouse.execute(models.training_sql(spec, model))
    assert [v.version_id for v in registry.list_versions("churn_model")] == ["1", "2"]
    sleeps: list[float] = []
    garbage = deployment.collect_garbage(
        warehouse, registry, endpoints, spec, keep=1, first_delay_s=0.25, sleep=sleeps.append
    )
    assert len(garbage.dropped) == 1 and not garbage.failed, garbage.describe()
    assert [v.version_id for v in registry.list_versions("churn_model")] == ["2"]
    assert [m for m, _ in models.training_models(warehouse, spec)] == [model]
    assert not warehouse.table_exists("churn_model_baseline_v1")
    if settings.backend == "gcp":
        assert sleeps == [0.25]  # refused once right after the undeploy, then dropped


def test_a_request_log_that_stays_empty_is_named_and_the_check_warns(loop):
    """gcp: the endpoint serves, but its request-response log never gets the rows (the service
    agent may not write to the dataset). After the grace period the report is not judged, says why,
    and its check warns (Cloud Monitoring's prediction count tells a dead log from no traffic)."""
    import time

    from lakehouse_ml.lifecycle import traffic
    from lakehouse_ml.runner import materialize_all

    settings, _, _ = loop
    if settings.backend != "gcp":
        pytest.skip("the local server writes its own log; Cloud Monitoring's count is Vertex AI's")
    vertex = DOUBLES["vertex"]
    vertex.log_writes_fail = True
    try:
        endpoints = build_endpoints(settings)
        url, token = endpoints.predict_target("churn_model")
        rows = traffic.serving_instances(build_warehouse(settings), "churn_model", limit=50)
        assert traffic.send_traffic(url, rows, count=10, rate=None, batch_size=5, token=token).ok == 10
        time.sleep(settings.request_log_grace_seconds + 1)
        with persistent_instance(settings) as instance:
            materialize_all(settings, instance, jobs=("monitoring_job",))
            check = demo._latest_check(instance, "churn_model_monitoring", "feature_drift")
    finally:
        vertex.log_writes_fail = False
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert (
        "Not judged" in check.description
        and "served" in check.description
        and "request-response log holds 0 row(s)" in check.description
    )
