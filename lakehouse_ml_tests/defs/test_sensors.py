"""``drift_retraining_sensor`` on a real ephemeral instance: toy monitoring assets write real
``feature_drift`` check evaluations, and the sensor is evaluated as the daemon would
(``evaluate_tick`` on a ``build_sensor_context``, with the definitions it is loaded in)."""

import json
import time
import uuid

import dagster as dg
import pytest

from lakehouse_ml.defs import sensors
from lakehouse_ml.defs.sensors import (
    CHECK_EVALUATION_TAG,
    CHECK_RUN_ID_TAG,
    DRIFTED_FEATURE_COUNT_TAG,
    DRIFTED_FEATURES_TAG,
    MAX_DRIFT_TAG,
    MODEL_TAG,
    TRIGGER_TAG,
    drift_retraining_sensor,
)

COOLDOWN = 3600
FEATURES = ["share_store", "avg_discount"]


class DriftConfig(dg.Config):
    """How the toy drift check comes out: ``pass``, ``error`` (retrain) or ``warn`` (near threshold)."""

    outcome: str = "pass"
    features: list[str] = FEATURES
    max_drift: float = 0.42


def monitoring_asset(model: str) -> dg.AssetsDefinition:
    name = f"{model}_monitoring"

    @dg.asset(name=name, check_specs=[dg.AssetCheckSpec("feature_drift", asset=name)])
    def _monitoring(config: DriftConfig) -> dg.MaterializeResult:
        passed = config.outcome == "pass"
        severity = dg.AssetCheckSeverity.WARN if config.outcome == "warn" else dg.AssetCheckSeverity.ERROR
        return dg.MaterializeResult(
            metadata={"report": dg.MetadataValue.md("| feature | drift |")},
            check_results=[
                dg.AssetCheckResult(
                    check_name="feature_drift",
                    passed=passed,
                    severity=severity,
                    metadata={
                        "drifted_features": dg.MetadataValue.json([] if passed else config.features),
                        "max_drift": dg.MetadataValue.float(config.max_drift),
                    },
                )
            ],
        )

    return _monitoring


def model_asset(model: str) -> dg.AssetsDefinition:
    @dg.asset(name=model)
    def _model() -> None:
        return None

    return _model


def retraining_job(model: str):
    return dg.define_asset_job(f"{model}_retraining_job", selection=[model])


class World:
    """Toy definitions for some models, an instance, and a clock the test moves."""

    def __init__(self, models: list[str], instance: dg.DagsterInstance, **sensor_kwargs):
        self.models = models
        self.instance = instance
        self.now = time.time()
        self.monitoring = {m: monitoring_asset(m) for m in models}
        self.jobs = [retraining_job(m) for m in models]
        self.sensor = drift_retraining_sensor(
            models, jobs=self.jobs, cooldown_seconds=COOLDOWN, clock=lambda: self.now, **sensor_kwargs
        )
        self.defs = dg.Definitions(
            assets=[*self.monitoring.values(), *(model_asset(m) for m in models)],
            jobs=self.jobs,
            sensors=[self.sensor],
        )
        self.cursor: str | None = None

    def check(self, model: str, outcome: str, **config) -> str:
        """Materialize the monitoring asset: a real ``feature_drift`` evaluation. Returns the run id."""
        result = dg.materialize(
            [self.monitoring[model]],
            instance=self.instance,
            run_config=dg.RunConfig({f"{model}_monitoring": DriftConfig(outcome=outcome, **config)}),
        )
        assert result.success
        return result.run_id

    def tick(self, cursor=...):
        """Evaluate the sensor as the daemon does, and keep its cursor (unless one is given)."""
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor if cursor is ... else cursor, definitions=self.defs
        )
        data = self.sensor.evaluate_tick(context)
        if cursor is ...:
            self.cursor = data.cursor
        return data

    def run(self, request: dg.RunRequest) -> dg.DagsterRun:
        """Launch the requested retraining run to completion, as the daemon would."""
        result = self.defs.resolve_job_def(request.job_name).execute_in_process(
            instance=self.instance, tags=request.tags
        )
        assert result.success
        return result.dagster_run

    def start_run(self, model: str, tags: dict[str, str] | None = None) -> dg.DagsterRun:
        """A retraining run in flight: created in the instance in STARTED status."""
        return self.instance.create_run_for_job(
            job_def=self.defs.resolve_job_def(f"{model}_retraining_job"),
            status=dg.DagsterRunStatus.STARTED,
            tags=tags or {},
        )


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def world(instance):
    return World(["churn_model"], instance)


def _latest_check_record(instance, model="churn_model"):
    key = dg.AssetCheckKey(dg.AssetKey(f"{model}_monitoring"), "feature_drift")
    return instance.event_log_storage.get_asset_check_summary_records([key])[
        key
    ].last_completed_check_execution_record


def test_no_evaluation_yet_skips(world):
    data = world.tick()
    assert not data.run_requests
    assert "churn_model: churn_model_monitoring:feature_drift has not been evaluated yet" in data.skip_message


def test_passed_check_requests_no_run(world):
    run_id = world.check("churn_model", "pass")
    data = world.tick()
    assert not data.run_requests
    assert "passed" in data.skip_message and run_id in data.skip_message
    assert (
        json.loads(data.cursor)["models"]["churn_model"]["handled_evaluation"]
        == _latest_check_record(world.instance).id
    )


def test_failed_error_check_requests_exactly_one_run_with_tags(world):
    check_run = world.check("churn_model", "error", max_drift=0.4375)
    data = world.tick()
    assert data.skip_message is None
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    record = _latest_check_record(world.instance)
    assert record.run_id == check_run
    assert request.job_name == "churn_model_retraining_job"
    assert request.run_key == f"churn_model:drift:{check_run}:{record.id}"
    assert request.tags[TRIGGER_TAG] == "drift"
    assert request.tags[MODEL_TAG] == "churn_model"
    assert request.tags[DRIFTED_FEATURES_TAG] == "share_store,avg_discount"
    assert request.tags[DRIFTED_FEATURE_COUNT_TAG] == "2"
    assert request.tags[MAX_DRIFT_TAG] == "0.4375"
    assert request.tags[CHECK_RUN_ID_TAG] == check_run
    assert request.tags[CHECK_EVALUATION_TAG] == str(record.id)
    assert all(isinstance(v, str) for v in request.tags.values())
    assert json.loads(data.cursor) == {
        "version": 1,
        "models": {"churn_model": {"handled_evaluation": record.id, "triggered_at": world.now}},
    }
    # The requested run launches, with its tags, on the job the sensor targets.
    run = world.run(request)
    assert run.tags[TRIGGER_TAG] == "drift" and run.tags[CHECK_RUN_ID_TAG] == check_run


def test_the_same_evaluation_never_requests_twice(world):
    world.check("churn_model", "error")
    first = world.tick()
    assert len(first.run_requests) == 1
    again = world.tick()  # the daemon evaluates again with the returned cursor
    assert not again.run_requests
    assert "no new evaluation" in again.skip_message
    assert again.cursor == first.cursor
    # Even long after the cooldown, the same evaluation stays handled.
    world.now += 10 * COOLDOWN
    assert not world.tick().run_requests
    # Without the cursor, the run key is the same, so the daemon still launches one run only.
    fresh = world.tick(cursor=None)
    assert [r.run_key for r in fresh.run_requests] == [first.run_requests[0].run_key]


def test_warn_severity_requests_no_run(world):
    run_id = world.check("churn_model", "warn")
    data = world.tick()
    assert not data.run_requests
    assert (
        "severity WARN" in data.skip_message
        and run_id in data.skip_message
        and "only ERROR retrains" in data.skip_message
    )


def test_a_newer_pass_supersedes_an_older_failure(world):
    world.check("churn_model", "error")
    world.check("churn_model", "pass")
    data = world.tick()
    assert not data.run_requests and "passed" in data.skip_message


def test_no_second_run_while_one_is_in_flight(world):
    world.check("churn_model", "error")
    request = world.tick().run_requests[0]
    world.now += 2 * COOLDOWN  # the cooldown is not what stops it
    in_flight = world.start_run("churn_model", tags=request.tags)
    world.check("churn_model", "error")
    data = world.tick()
    assert not data.run_requests
    assert in_flight.run_id in data.skip_message and "in flight (STARTED)" in data.skip_message
    assert "dropped" in data.skip_message
    # The evaluation seen during the retrain is dropped: once the run is over it does not fire.
    world.instance.report_run_canceled(in_flight)
    assert world.instance.get_run_by_id(in_flight.run_id).status == dg.DagsterRunStatus.CANCELED
    after = world.tick()
    assert not after.run_requests and "no new evaluation" in after.skip_message
    # The next failed evaluation, after the retrain, triggers.
    check_run = world.check("churn_model", "error")
    again = world.tick()
    assert len(again.run_requests) == 1 and again.run_requests[0].tags[CHECK_RUN_ID_TAG] == check_run


@pytest.mark.parametrize(
    "status",
    [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING],
)
def test_every_unfinished_status_counts_as_in_flight(world, status):
    # A run record as a launcher leaves it. (A QUEUED run record needs a code location origin to
    # exist at all, so QUEUED is checked on the status list below.)
    run = world.instance.add_run(
        dg.DagsterRun(job_name="churn_model_retraining_job", run_id=str(uuid.uuid4()), status=status)
    )
    assert world.instance.get_run_by_id(run.run_id).status == status
    world.check("churn_model", "error")
    data = world.tick()
    assert not data.run_requests and run.run_id in data.skip_message and status.value in data.skip_message


def test_in_flight_statuses():
    assert set(sensors.IN_FLIGHT_STATUSES) == set(dg.DagsterRunStatus) - {
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
        dg.DagsterRunStatus.MANAGED,
    }
    assert dg.DagsterRunStatus.QUEUED in sensors.IN_FLIGHT_STATUSES


def test_a_finished_manual_retrain_does_not_block(world):
    world.run(dg.RunRequest(job_name="churn_model_retraining_job"))  # SUCCESS, not drift-triggered
    world.check("churn_model", "error")
    assert len(world.tick().run_requests) == 1


def test_cooldown_then_trigger(world):
    world.check("churn_model", "error")
    run = world.run(world.tick().run_requests[0])  # the retrain ran and finished
    # The cooldown counts from the later of the tick and the run's creation: align the clock on it.
    created = world.instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()
    assert created >= world.now
    world.now = created + 600
    check_run = world.check("churn_model", "error")
    data = world.tick()
    assert not data.run_requests
    assert "cooldown" in data.skip_message and "50m 00s remaining" in data.skip_message
    # The waiting evaluation is not marked handled ...
    assert (
        json.loads(data.cursor)["models"]["churn_model"]["handled_evaluation"]
        < _latest_check_record(world.instance).id
    )
    world.now += COOLDOWN - 600 - 1
    assert "1s remaining" in world.tick().skip_message
    # ... so it triggers once the cooldown is over.
    world.now += 1
    data = world.tick()
    assert len(data.run_requests) == 1 and data.run_requests[0].tags[CHECK_RUN_ID_TAG] == check_run


def test_cooldown_survives_a_reset_cursor(world):
    world.check("churn_model", "error")
    world.run(world.tick().run_requests[0])
    world.check("churn_model", "error")
    data = world.tick(cursor=None)  # the run's drift tags, not the cursor, hold the cooldown
    assert not data.run_requests and "cooldown" in data.skip_message


def test_cooldown_is_superseded_by_a_newer_pass(world):
    world.check("churn_model", "error")
    assert world.tick().run_requests
    world.check("churn_model", "error")
    assert "cooldown" in world.tick().skip_message
    world.check("churn_model", "pass")
    world.now += COOLDOWN + 1
    data = world.tick()
    assert not data.run_requests and "passed" in data.skip_message


def test_models_are_independent(instance):
    world = World(["churn_model", "ltv_model"], instance)
    world.check("churn_model", "error")
    world.check("ltv_model", "pass")
    data = world.tick()
    assert [r.job_name for r in data.run_requests] == ["churn_model_retraining_job"]
    world.start_run("churn_model")
    world.check("churn_model", "error")
    ltv_run = world.check("ltv_model", "error", features=["basket_size"], max_drift=0.9)
    data = world.tick()  # churn is busy and cooling down; ltv retrains
    assert [r.job_name for r in data.run_requests] == ["ltv_model_retraining_job"]
    request = data.run_requests[0]
    assert request.tags[MODEL_TAG] == "ltv_model" and request.tags[DRIFTED_FEATURES_TAG] == "basket_size"
    assert request.tags[CHECK_RUN_ID_TAG] == ltv_run and request.run_key.startswith("ltv_model:drift:")
    cursor = json.loads(data.cursor)["models"]
    assert set(cursor) == {"churn_model", "ltv_model"}
    data = world.tick()
    assert not data.run_requests
    assert (
        "churn_model: no new evaluation" in data.skip_message
        and "ltv_model: no new evaluation" in data.skip_message
    )


def test_the_sensor_loads_with_the_jobs(world):
    dg.Definitions.validate_loadable(world.defs)
    sensor = world.defs.resolve_sensor_def("drift_retraining_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    assert {t.job_name for t in sensor.targets} == {"churn_model_retraining_job"}
    # The jobs may also come only through the sensor.
    alone = dg.Definitions(assets=list(world.defs.assets), sensors=[world.sensor])
    dg.Definitions.validate_loadable(alone)
    assert alone.resolve_job_def("churn_model_retraining_job").name == "churn_model_retraining_job"


def test_factory_rejects_jobs_that_do_not_match_the_models():
    jobs = [retraining_job("churn_model")]
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="Missing: ltv_model_retraining_job"):
        drift_retraining_sensor(["churn_model", "ltv_model"], jobs=jobs)
    with pytest.raises(
        dg.DagsterInvalidDefinitionError,
        match="Not a retraining job of a listed model: churn_model_retraining_job",
    ):
        drift_retraining_sensor(["ltv_model"], jobs=[*jobs, retraining_job("ltv_model")])
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="letters, digits and underscores"):
        drift_retraining_sensor(["churn model"], jobs=jobs)
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="at least one model"):
        drift_retraining_sensor([], jobs=[])


def test_an_unreadable_cursor_starts_afresh(world):
    world.check("churn_model", "error")
    data = world.tick(cursor="not json")
    assert len(data.run_requests) == 1
    assert json.loads(data.cursor)["version"] == 1


def test_metadata_parsing_and_tag_truncation():
    text = dg.MetadataValue.text
    assert sensors.drifted_features({"drifted_features": dg.MetadataValue.json(FEATURES)}) == FEATURES
    assert sensors.drifted_features({"drifted_features": text('["a", "b"]')}) == ["a", "b"]
    assert sensors.drifted_features({"drifted_features": text("a, b")}) == ["a", "b"]
    assert sensors.drifted_features({}) == []
    assert sensors.max_drift({"max_drift": dg.MetadataValue.float(0.5)}) == 0.5
    assert sensors.max_drift({"max_drift": text("n/a")}) is None
    many = [f"feature_{i:03d}" for i in range(50)]
    tag = sensors.features_tag(many)
    assert len(tag) <= sensors.MAX_FEATURES_TAG_CHARS
    kept = tag.split(",...")[0].split(",")
    assert kept == many[: len(kept)] and tag.endswith(f",...(+{50 - len(kept)} more)")
    assert sensors.features_tag(["x" * 300]) == "...(+1 more)"
