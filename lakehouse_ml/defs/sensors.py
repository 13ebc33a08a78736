"""Sensors: ``drift_retraining_sensor`` turns a failed drift check into exactly one retraining run.

Contract with the monitoring and retraining definitions:

* every monitored model ``<model>`` has a monitoring report asset ``<model>_monitoring`` that
  carries the asset check ``feature_drift``. When a feature crosses its threshold the check
  fails with severity ERROR and metadata ``drifted_features`` (a JSON list, or text: a JSON list
  or comma-separated names) and ``max_drift`` (float). A WARN-severity failure (close to the
  threshold) is a warning for people, not a reason to retrain;
* every such model has a job ``<model>_retraining_job`` (retrain, evaluate, gate, register,
  deploy).

What the sensor does on each evaluation, for each model, in this order:

1. It reads the latest *completed* evaluation of ``<model>_monitoring:feature_drift`` from the
   instance (``event_log_storage.get_asset_check_summary_records``, as Dagster's own freshness
   check sensor does). An evaluation still in progress (PLANNED) is not looked at; it is read on
   a later tick once it has a result. Older evaluations are not looked at either: if drift was
   found and a newer evaluation passed, the newer one is what counts.
2. An evaluation at or below the cursor's ``handled_evaluation`` has been dealt with: skip.
3. A passed evaluation, or a failure of severity WARN, is marked handled: no run.
4. Retraining already in flight: if any run of ``<model>_retraining_job`` (started by this
   sensor or by hand) is QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING (or SUSPENDED), no
   second run starts. The failed evaluation is **dropped** (marked handled) and the skip reason
   names the run in flight. Why dropped rather than kept for later: the run in flight retrains on
   the current data, which already holds the drift this evaluation saw, and the evaluation
   measured drift against the model that run is replacing. Replaying it when the run finishes
   would start a second retrain on stale evidence. If the drift outlives the new model, the next
   scheduled monitoring run fails the check again and that evaluation triggers.
5. Cooldown: if this sensor started a retraining run for the model less than
   ``cooldown_seconds`` ago, no run starts and the skip reason gives the time left. The time of
   the last trigger is the later of the cursor's ``triggered_at`` and the creation time of the
   newest run of the job tagged ``lakehouse_ml/trigger=drift`` (so a reset cursor does not reset
   the cooldown). The failed evaluation is **kept** (not marked handled): when the cooldown is
   over and it is still the latest evaluation, it triggers then; if a newer evaluation passes in
   the meantime, it is superseded and nothing runs. The cooldown damps flapping; it does not
   lose a drift that persists.
6. Otherwise it requests one run of ``<model>_retraining_job`` with
   ``run_key = "<model>:drift:<check run id>:<evaluation id>"``, where the evaluation id is the
   instance's id of that check execution record. The Dagster daemon never launches two runs with
   the same run key from one sensor, and the cursor marks the evaluation handled as well, so
   re-evaluating the sensor (the daemon after a crash, or a test) never asks twice.

Run tags say why the run started (values are strings, long ones truncated):

* ``lakehouse_ml/trigger``: ``drift``
* ``lakehouse_ml/model``: the model
* ``lakehouse_ml/drifted_features``: comma-separated feature names, at most
  :data:`MAX_FEATURES_TAG_CHARS` characters, ending in ``,...(+N more)`` when cut
* ``lakehouse_ml/drifted_feature_count``: how many features drifted
* ``lakehouse_ml/max_drift``: the largest drift statistic (``unknown`` when the check had none)
* ``lakehouse_ml/check_run_id``: the run in which the check failed
* ``lakehouse_ml/check_evaluation_id``: the id of that check evaluation

The cursor is JSON::

    {"version": 1,
     "models": {"churn_model": {"handled_evaluation": 42, "triggered_at": 1718000000.0}}}

``handled_evaluation`` is the id of the last check evaluation dealt with (triggered, passed,
below ERROR, or dropped), ``triggered_at`` the Unix time of the last run requested. Models that
are no longer monitored keep their entry. An empty or unreadable cursor starts afresh: the latest
evaluation is then looked at again, and run keys still keep the daemon from repeating a run.

When no model triggers, the tick is skipped with one reason per model. When some model triggers,
the reasons for the others are written to the tick's log.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

CHECK_NAME = "feature_drift"
TAG_PREFIX = "lakehouse_ml"
TRIGGER_TAG = f"{TAG_PREFIX}/trigger"
MODEL_TAG = f"{TAG_PREFIX}/model"
DRIFTED_FEATURES_TAG = f"{TAG_PREFIX}/drifted_features"
DRIFTED_FEATURE_COUNT_TAG = f"{TAG_PREFIX}/drifted_feature_count"
MAX_DRIFT_TAG = f"{TAG_PREFIX}/max_drift"
CHECK_RUN_ID_TAG = f"{TAG_PREFIX}/check_run_id"
CHECK_EVALUATION_TAG = f"{TAG_PREFIX}/check_evaluation_id"
DRIFT_TRIGGER = "drift"
MAX_FEATURES_TAG_CHARS = 200
CURSOR_VERSION = 1

# Every status of a run that has not finished. MANAGED runs are run outside Dagster's control
# and never finish here, so they would block retraining for ever: they do not count.
IN_FLIGHT_STATUSES: tuple[dg.DagsterRunStatus, ...] = tuple(
    status
    for status in dg.DagsterRunStatus
    if status
    not in {
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
        dg.DagsterRunStatus.MANAGED,
    }
)

_MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def monitoring_asset_key(model: str) -> dg.AssetKey:
    """The monitoring report asset of ``model``."""
    return dg.AssetKey(f"{model}_monitoring")


def drift_check_key(model: str) -> dg.AssetCheckKey:
    """The drift check of ``model``'s monitoring report."""
    return dg.AssetCheckKey(monitoring_asset_key(model), CHECK_NAME)


def retraining_job_name(model: str) -> str:
    """The job that retrains ``model``."""
    return f"{model}_retraining_job"


# ---------------------------------------------------------------------------------------------
# Cursor


@dataclass
class ModelCursor:
    """What the sensor remembers about one model between evaluations."""

    handled_evaluation: int | None = None
    triggered_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"handled_evaluation": self.handled_evaluation, "triggered_at": self.triggered_at}


def parse_cursor(raw: str | None) -> dict[str, ModelCursor]:
    """Read the sensor cursor. Raises ``ValueError`` on a cursor that is not this sensor's."""
    if not raw:
        return {}
    data = json.loads(raw)
    if (
        not isinstance(data, dict)
        or data.get("version") != CURSOR_VERSION
        or not isinstance(data.get("models"), dict)
    ):
        raise ValueError(f"not a version {CURSOR_VERSION} drift_retraining_sensor cursor")
    cursors: dict[str, ModelCursor] = {}
    for model, entry in data["models"].items():
        handled = entry.get("handled_evaluation")
        triggered = entry.get("triggered_at")
        cursors[str(model)] = ModelCursor(
            handled_evaluation=int(handled) if handled is not None else None,
            triggered_at=float(triggered) if triggered is not None else None,
        )
    return cursors


def serialize_cursor(cursors: Mapping[str, ModelCursor]) -> str:
    """Write the sensor cursor (see the module docstring for its format)."""
    return json.dumps(
        {"version": CURSOR_VERSION, "models": {model: cursors[model].to_json() for model in sorted(cursors)}},
        separators=(",", ":"),
    )


# ---------------------------------------------------------------------------------------------
# Reading the check's metadata


def drifted_features(metadata: Mapping[str, dg.MetadataValue]) -> list[str]:
    """The feature names in a check's ``drifted_features`` metadata.

    Accepts a JSON list, text holding a JSON list, or comma-separated text."""
    entry = metadata.get("drifted_features")
    if entry is None:
        return []
    value = entry.value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text.strip("[]").split(",")
        else:
            value = text.split(",")
    if isinstance(value, Mapping):  # {"feature": statistic, ...}
        value = list(value)
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [name for name in (str(v).strip().strip("'\"") for v in value) if name]


def max_drift(metadata: Mapping[str, dg.MetadataValue]) -> float | None:
    """The check's ``max_drift`` metadata as a float, or None when it is missing or not a number."""
    entry = metadata.get("max_drift")
    if entry is None:
        return None
    try:
        return float(entry.value)
    except (TypeError, ValueError):
        return None


def features_tag(features: Sequence[str], limit: int = MAX_FEATURES_TAG_CHARS) -> str:
    """Comma-separated feature names, cut to at most ``limit`` characters with ``,...(+N more)``."""
    joined = ",".join(features)
    if len(joined) <= limit:
        return joined
    kept: list[str] = []
    for index, name in enumerate(features):
        candidate = [*kept, name]
        if len(",".join(candidate)) + len(f",...(+{len(features) - index - 1} more)") > limit:
            break
        kept = candidate
    dropped = len(features) - len(kept)
    return (",".join(kept) + "," if kept else "") + f"...(+{dropped} more)"


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


# ---------------------------------------------------------------------------------------------
# The decision for one model


@dataclass
class Decision:
    """What one evaluation decided for one model: a run request, or why not."""

    model: str
    cursor: ModelCursor
    run_request: dg.RunRequest | None = None
    reason: str | None = None


def _in_flight_run(instance: dg.DagsterInstance, job_name: str) -> dg.RunRecord | None:
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=list(IN_FLIGHT_STATUSES)), limit=1
    )
    return records[0] if records else None


def _last_drift_run_time(instance: dg.DagsterInstance, model: str) -> float | None:
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=retraining_job_name(model), tags={TRIGGER_TAG: DRIFT_TRIGGER, MODEL_TAG: model}
        ),
        limit=1,
    )
    return records[0].create_timestamp.timestamp() if records else None


def decide(
    instance: dg.DagsterInstance,
    model: str,
    record: Any,
    previous: ModelCursor,
    *,
    cooldown_seconds: int,
    now: float,
) -> Decision:
    """Decide for one model, given the latest completed execution record of its drift check
    (an ``AssetCheckExecutionRecord`` or None). See the module docstring for the rules."""
    cursor = ModelCursor(previous.handled_evaluation, previous.triggered_at)
    check_name = drift_check_key(model).to_user_string()
    if record is None or record.evaluation is None:
        return Decision(model, cursor, reason=f"{check_name} has not been evaluated yet")
    evaluation = record.evaluation
    if cursor.handled_evaluation is not None and record.id <= cursor.handled_evaluation:
        return Decision(
            model, cursor, reason=f"no new evaluation of {check_name} since evaluation {record.id}"
        )
    if evaluation.passed:
        cursor.handled_evaluation = record.id
        return Decision(model, cursor, reason=f"{check_name} passed (run {record.run_id})")
    if evaluation.severity != dg.AssetCheckSeverity.ERROR:
        cursor.handled_evaluation = record.id
        return Decision(
            model,
            cursor,
            reason=f"{check_name} failed with severity {evaluation.severity.value} (run {record.run_id}); "
            "only ERROR retrains",
        )

    job_name = retraining_job_name(model)
    in_flight = _in_flight_run(instance, job_name)
    if in_flight is not None:
        cursor.handled_evaluation = record.id
        run = in_flight.dagster_run
        return Decision(
            model,
            cursor,
            reason=f"retraining run {run.run_id} of {job_name} is in flight ({run.status.value}); "
            f"drift evaluation {record.id} (run {record.run_id}) dropped: "
            "the run in flight retrains on current data",
        )

    last_trigger = max(
        (t for t in (cursor.triggered_at, _last_drift_run_time(instance, model)) if t is not None),
        default=None,
    )
    if last_trigger is not None and now - last_trigger < cooldown_seconds:
        elapsed = now - last_trigger
        return Decision(
            model,
            cursor,
            reason=f"cooldown: drift retraining of {model} started {_format_seconds(elapsed)} ago; "
            f"{_format_seconds(cooldown_seconds - elapsed)} remaining of {_format_seconds(cooldown_seconds)} "
            f"(drift evaluation {record.id} waits)",
        )

    metadata = evaluation.metadata
    features = drifted_features(metadata)
    worst = max_drift(metadata)
    tags = {
        TRIGGER_TAG: DRIFT_TRIGGER,
        MODEL_TAG: model,
        DRIFTED_FEATURES_TAG: features_tag(features),
        DRIFTED_FEATURE_COUNT_TAG: str(len(features)),
        MAX_DRIFT_TAG: f"{worst:.6g}" if worst is not None else "unknown",
        CHECK_RUN_ID_TAG: record.run_id,
        CHECK_EVALUATION_TAG: str(record.id),
    }
    cursor.handled_evaluation = record.id
    cursor.triggered_at = now
    request = dg.RunRequest(
        run_key=f"{model}:drift:{record.run_id}:{record.id}", job_name=job_name, tags=tags
    )
    return Decision(model, cursor, run_request=request)


# ---------------------------------------------------------------------------------------------
# The sensor


def drift_retraining_sensor(
    models: Sequence[str],
    *,
    jobs: Sequence[dg.JobDefinition | UnresolvedAssetJobDefinition],
    cooldown_seconds: int = 3600,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    name: str = "drift_retraining_sensor",
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """One sensor for all ``models``: a failed ERROR-severity ``feature_drift`` check on
    ``<model>_monitoring`` requests one run of ``<model>_retraining_job``.

    Args:
        models: the monitored model names.
        jobs: the retraining jobs, exactly one ``<model>_retraining_job`` per model. A sensor
            that requests runs of several jobs must be given the job objects (Dagster resolves
            ``job_name=`` for one job only). Pass the same objects to ``Definitions(jobs=...)``,
            or leave them out there: Dagster adds a sensor's jobs to the definitions.
        cooldown_seconds: the least time between two drift-triggered runs of one model.
        minimum_interval_seconds: how often the daemon evaluates the sensor.
        default_status: RUNNING, so retraining starts by itself when drift is found.
        name: the sensor's name.
        clock: the current Unix time (tests inject one to step over the cooldown).

    The rules (ERROR only, one run per evaluation, none while one is in flight, cooldown), the
    run tags and the cursor format are in this module's docstring.
    """
    models = list(models)
    if not models:
        raise dg.DagsterInvalidDefinitionError(f"{name}: give at least one model to watch")
    for model in models:
        if not isinstance(model, str) or not _MODEL_NAME.match(model):
            raise dg.DagsterInvalidDefinitionError(
                f"{name}: model name {model!r} must be letters, digits and underscores"
            )
    duplicates = sorted({m for m in models if models.count(m) > 1})
    if duplicates:
        raise dg.DagsterInvalidDefinitionError(f"{name}: models listed twice: {', '.join(duplicates)}")
    if cooldown_seconds < 0:
        raise dg.DagsterInvalidDefinitionError(
            f"{name}: cooldown_seconds must be >= 0, got {cooldown_seconds}"
        )
    jobs = list(jobs)
    expected = {retraining_job_name(m) for m in models}
    given = [job.name for job in jobs]
    missing = sorted(expected - set(given))
    extra = sorted(set(given) - expected)
    if missing or extra or len(given) != len(set(given)):
        raise dg.DagsterInvalidDefinitionError(
            f"{name}: needs exactly one retraining job per model. "
            + (f"Missing: {', '.join(missing)}. " if missing else "")
            + (f"Not a retraining job of a listed model: {', '.join(extra)}. " if extra else "")
            + "Pass jobs=[<model>_retraining_job, ...] for the models given."
        )

    check_keys = {model: drift_check_key(model) for model in models}
    description = (
        "Requests one retraining run when a drift check fails with severity ERROR: "
        + ", ".join(f"{check_keys[m].to_user_string()} -> {retraining_job_name(m)}" for m in models)
        + ". No run while one is in flight; "
        + f"cooldown {_format_seconds(cooldown_seconds)} between drift retrains."
    )

    @dg.sensor(
        name=name,
        jobs=jobs,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=description,
    )
    def _drift_retraining_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        try:
            cursors = parse_cursor(context.cursor)
        except (ValueError, TypeError, AttributeError) as error:
            context.log.warning(f"Ignoring unreadable cursor ({error}); starting afresh: {context.cursor!r}")
            cursors = {}
        summaries = context.instance.event_log_storage.get_asset_check_summary_records(
            list(check_keys.values())
        )
        now = clock()
        requests: list[dg.RunRequest] = []
        reasons: list[str] = []
        for model in models:
            summary = summaries.get(check_keys[model])
            record = summary.last_completed_check_execution_record if summary is not None else None
            decision = decide(
                context.instance,
                model,
                record,
                cursors.get(model, ModelCursor()),
                cooldown_seconds=cooldown_seconds,
                now=now,
            )
            cursors[model] = decision.cursor
            if decision.run_request is not None:
                requests.append(decision.run_request)
                tags = decision.run_request.tags
                context.log.info(
                    f"{model}: drift in {tags[DRIFTED_FEATURES_TAG] or '(features not given)'} "
                    f"(max {tags[MAX_DRIFT_TAG]}, check run {tags[CHECK_RUN_ID_TAG]}): "
                    f"requesting {decision.run_request.job_name} with run key {decision.run_request.run_key}"
                )
            else:
                reasons.append(f"{model}: {decision.reason}")
        cursor = serialize_cursor(cursors)
        if requests:
            for reason in reasons:
                context.log.info(reason)
            return dg.SensorResult(run_requests=requests, cursor=cursor)
        return dg.SensorResult(skip_reason="; ".join(reasons), cursor=cursor)

    return _drift_retraining_sensor
