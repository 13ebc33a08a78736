"""The main job end to end: ``lakehouse-ml demo``'s loop at small scale on the local default.

Data → models → registry → endpoint → normal traffic (the drift check passes) → the drift scenario
(the check fails) → the sensor starts one retraining run → the gate passes → the canary is
promoted → monitoring passes again. Everything goes through a persistent Dagster instance under the
local home, so the assertions read the same history the UI shows.
"""

from __future__ import annotations

import dagster as dg
import pytest

from lakehouse_ml import demo
from lakehouse_ml.backends import build_endpoints, build_registry
from lakehouse_ml.runner import persistent_instance
from lakehouse_ml.serving import server
from lakehouse_ml_tests.local_chain import local_settings


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo_home")
    settings = local_settings(home, customers="1500")
    lines: list[str] = []
    try:
        summary = demo.run_demo(settings, progress=lines.append)
    finally:
        server.stop_server(settings.home_dir)
    return settings, summary, lines


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
    assert [line.split("]")[0] + "]" for line in lines if line.startswith("[")] == [f"[{i}/11]" for i in range(1, 12)]
    table = summary.table()
    for row in ("versions before", "versions after", "stale model", "retrained model", "run started by the sensor", "open the UI"):
        assert row in table
    assert summary.sensor_run_id in table
    assert server.health(settings.serving_host, settings.serving_port) is None
    assert not server.pidfile(settings.home_dir).exists()
