"""The monitoring report of a served model: feature drift, prediction drift and performance.

The logic behind the ``<model>_monitoring`` asset, testable without Dagster. For one monitoring
window (the request-response log since the previous report):

* **training data**: the rows the serving version was trained on, saved with their predictions
  when the version was registered (:func:`save_baseline`, table ``<model>_baseline_v<version>``:
  ``ML.PREDICT`` over the model's training query, ``sql/models/evaluation/labelled_predictions.sql``);
* **serving data**: the instances the serving version answered in the window, from the
  request-response log (:meth:`Endpoints.request_log`: Parquet files locally, Vertex AI's
  request-response logging table on gcp), loaded into ``<model>_monitoring_window``. Vertex AI
  writes that table asynchronously, so a report re-reads the backend's grace period
  (:meth:`RequestLog.request_log_grace_seconds`) before its window, counts the rows there that the
  previous report did not count (it keeps their request ids), and de-duplicates on request id;
  when the endpoint served predictions but the log holds none after the grace period, the report
  says so and is not judged (its check warns);
* **feature drift**: ``sql/monitoring/feature_drift.sql`` — ``ML.VALIDATE_DATA_DRIFT`` of the
  training features against the served ones, run by the warehouse (BigQuery itself on gcp), with
  the spec's thresholds;
* **prediction drift**: the served predictions (a classifier's positive-class probability and
  predicted class; a k-means model's nearest centroid and distance to it) against the version's
  predictions on its evaluation split (:func:`evaluation_rows`), with the same arithmetic;
* **performance**: served predictions whose ground truth has arrived since (the label of the same
  customer snapshot, matched on the logged features against ``sql/monitoring/<model>_ground_truth.sql``),
  per monitoring window, against the version's evaluation metric.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lakehouse_ml.backends.endpoints import Endpoints
from lakehouse_ml.backends.registry import ModelRegistry, ModelVersion
from lakehouse_ml.backends.request_log import RequestLog
from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.bigquery import drift as drift_stats
from lakehouse_ml.bigquery import metrics as bqml_metrics
from lakehouse_ml.bigquery import served
from lakehouse_ml.bigquery import split as bqml_split
from lakehouse_ml.bigquery.request_log import LOG_COLUMNS
from lakehouse_ml.bigquery.served import ServedFormatError, ServedPrediction
from lakehouse_ml.bigquery.sqlfiles import read_sql
from lakehouse_ml.bigquery.templates import bind_template
from lakehouse_ml.core.atomic import write_bytes
from lakehouse_ml.core.errors import RegistryError, WarehouseError
from lakehouse_ml.lifecycle.baseline import baseline_table
from lakehouse_ml.lifecycle.deployment import registry_model_id, serving_spec
from lakehouse_ml.lifecycle.models import CLASSIFIER_TYPES, CLUSTERING_TYPES, ModelSpec, positive_label
from lakehouse_ml.lifecycle.monitoring import report

# The first report of a model looks this far back in the request-response log.
FIRST_WINDOW = dt.timedelta(days=1)
# The performance trend covers this many windows, the current one included (two days of hourly
# reports): each report reads the request log over them once, however long the model has served.
TREND_WINDOWS = 48
# The prediction-drift columns of a k-means model: the nearest centroid (categorical: the shares of
# the clusters) and the distance to it (numerical: rows far from every centroid show here first).
CLUSTER_COLUMN = "centroid_id"
DISTANCE_COLUMN = "nearest_centroid_distance"


@dataclasses.dataclass
class MonitoringResult:
    model_id: str
    version: ModelVersion
    endpoint: str
    window_start: dt.datetime
    window_end: dt.datetime
    base_rows: int
    study_rows: int
    judged: bool
    drift: pd.DataFrame
    prediction_drift: pd.DataFrame
    performance: pd.DataFrame
    histograms: dict[str, report.FeatureHistogram]
    drifted: list[str]
    warned: list[str]
    max_ratio: float
    max_drift: float
    report_path: Path | None = None
    note: str = ""
    prediction_baseline: str = ""  # which training rows the prediction drift compares with
    late_rows: int = 0  # rows logged before the window that landed after the previous report
    log_problem: str = ""  # the endpoint served, but its request log holds nothing: why it is not judged

    @property
    def status(self) -> str:
        if not self.judged:
            return "NOT JUDGED"
        return "DRIFT" if self.drifted else "WARN" if self.warned else "PASS"


def _histograms(distributions: list[drift_stats.FeatureDistribution]) -> dict[str, report.FeatureHistogram]:
    out = {}
    for d in distributions:
        if len(d.labels) == 0:
            continue
        out[d.input] = report.FeatureHistogram(
            feature=d.input,
            kind="numerical" if d.kind.lower().startswith("num") else "categorical",
            labels=tuple(str(label) for label in d.labels),
            base=tuple(float(x) for x in d.base),
            study=tuple(float(x) for x in d.study),
        )
    return out


def parse_served(
    spec: ModelSpec, predictions: pd.Series, label_type: str | None = None
) -> list[ServedPrediction | None]:
    """The served predictions of a request log (JSON text or objects) with the model's one
    parser (:class:`~lakehouse_ml.bigquery.served.PredictionFormat`); None where a row holds
    nothing that parses (a log row without its response)."""
    fmt = spec.prediction_format(label_type)
    out: list[ServedPrediction | None] = []
    for text in predictions:
        try:
            out.append(fmt.parse(json.loads(text) if isinstance(text, str) else text))
        except (ServedFormatError, ValueError, TypeError):
            out.append(None)
    return out


def _positive_from_served(parsed: list[ServedPrediction], positive: Any) -> tuple[np.ndarray, np.ndarray]:
    probs = np.array([p.probability(positive) for p in parsed])
    classes = np.array([str(p.predicted) for p in parsed], dtype=object)
    return probs, classes


def evaluation_rows(spec: ModelSpec, baseline: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of the version's evaluation split among its saved training rows, and how they were
    found. BigQuery ML's split is recomputed where it is deterministic from the data (SEQ on
    DATA_SPLIT_COL, CUSTOM on its BOOL column); for AUTO_SPLIT and RANDOM, whose row hashing is
    BigQuery's own, every training row stands in."""
    if spec.model_type in CLUSTERING_TYPES:
        return baseline, f"all {len(baseline)} training rows (k-means models have no evaluation split)"
    options = spec.options
    method = str(options.get("data_split_method", "AUTO_SPLIT")).upper()
    column = options.get("data_split_col")
    if method in ("SEQ", "CUSTOM") and column in baseline.columns and len(baseline):
        fraction = options.get("data_split_eval_fraction")
        mask = bqml_split.split(
            baseline, method, None if fraction is None else float(fraction), column
        ).eval_mask
        if mask.any():
            return baseline[mask], f"the evaluation split ({method} on {column}, {int(mask.sum())} rows)"
    return baseline, f"all {len(baseline)} training rows ({method} split: not recomputed)"


def _clusters_from_baseline(frame: pd.DataFrame) -> pd.DataFrame:
    """A k-means version's predictions on its training rows (``ML.PREDICT``'s ``CENTROID_ID`` and
    nearest ``NEAREST_CENTROIDS_DISTANCE``) as the prediction-drift columns."""
    return pd.DataFrame(
        {
            CLUSTER_COLUMN: frame["CENTROID_ID"].astype("int64").astype(str).to_numpy(dtype=object),
            DISTANCE_COLUMN: [
                float(min(d["DISTANCE"] for d in near)) for near in frame["NEAREST_CENTROIDS_DISTANCE"]
            ],
        }
    )


def _clusters_from_served(parsed: list[ServedPrediction]) -> pd.DataFrame:
    """Served k-means predictions (``nearest_centroid_id`` and the distance to it among
    ``centroid_distances``) as the prediction-drift columns."""
    return pd.DataFrame(
        {
            CLUSTER_COLUMN: np.array([str(p.predicted) for p in parsed], dtype=object),
            DISTANCE_COLUMN: np.array([p.nearest_distance for p in parsed], dtype=float),
        }
    )


def _positive_from_baseline(
    spec: ModelSpec, frame: pd.DataFrame, positive: Any
) -> tuple[np.ndarray, np.ndarray]:
    label = spec.label
    probs = np.array(
        [
            next((float(p["prob"]) for p in row if p["label"] == positive), 0.0)
            for row in frame[f"predicted_{label}_probs"]
        ]
    )
    return probs, frame[f"predicted_{label}"].astype(str).to_numpy(dtype=object)


def deduplicated(log: pd.DataFrame) -> pd.DataFrame:
    """The request log with each (request, instance) once (a BigQuery log can hold a row twice)."""
    if log.empty:
        return log
    return log.drop_duplicates(subset=["request_id", "instance_index"], keep="first").reset_index(drop=True)


def window_rows(
    history: pd.DataFrame, start: dt.datetime, end: dt.datetime, grace: dt.timedelta, counted_before: set[str]
) -> tuple[pd.DataFrame, int, list[str]]:
    """The rows a report over ``[start, end)`` counts: those logged since ``start - grace`` that the
    previous report did not count (``counted_before``: the request ids it counted in its last
    ``grace``); how many of them were logged before ``start`` (they landed late); and the request
    ids counted in this window's last ``grace``, for the next report."""
    times = pd.to_datetime(history["logging_time"], utc=True)
    ids = history["request_id"].astype(str)
    fresh = history[(times >= pd.Timestamp(start - grace)) & ~ids.isin(counted_before)]
    late = int((pd.to_datetime(fresh["logging_time"], utc=True) < pd.Timestamp(start)).sum())
    counted = counted_before | set(fresh["request_id"].astype(str))
    tail = sorted(set(ids[(times >= pd.Timestamp(end - grace)) & ids.isin(counted)]))
    return fresh, late, tail


def _log_problem(
    request_log: RequestLog,
    endpoint: str,
    history: pd.DataFrame,
    lo: dt.datetime,
    hi: dt.datetime,
    sampling_rate: float = 1.0,
) -> str:
    """Why the request log cannot be trusted for [lo, hi) (empty when it can): the endpoint
    answered predictions then (its served count, where the backend has one), yet the log holds
    less than half of what its sampling rate should have logged, although the grace period for
    late rows has passed. (Whether the count is of requests or of instances, a healthy log holds
    at least ``rate`` × count rows: one per logged instance.)"""
    if hi <= lo or sampling_rate <= 0:
        return ""
    count = request_log.served_predictions(endpoint, lo, hi)
    if not count:
        return ""
    times = pd.to_datetime(history["logging_time"], utc=True)
    logged = int(((times >= pd.Timestamp(lo)) & (times < pd.Timestamp(hi))).sum())
    expected = sampling_rate * count
    if expected < 5 or logged >= 0.5 * expected:  # too few to tell sampling from loss, or healthy
        return ""
    return (
        f"Endpoint {endpoint!r} served {count} prediction(s) between {lo:%Y-%m-%d %H:%M:%S} and {hi:%Y-%m-%d %H:%M:%S} "
        f"UTC, but its request-response log holds {logged} row(s) of them (about {expected:.0f} expected at sampling "
        f"rate {sampling_rate:g}) although the grace period for late rows has passed: the log is missing or not "
        "written. Check the endpoint's request-response logging (its BigQuery table exists, and the Vertex AI service "
        "agent may write to the dataset: see README, Running on Google Cloud), then run again."
    )


def _missing_log(endpoints: Endpoints, request_log: RequestLog, endpoint: str, settled: dt.datetime) -> str:
    """Why the request log cannot be trusted though no served count says so: a model has been
    deployed on the endpoint since before ``settled`` (its deployment's smoke test was served
    then), yet the log's table does not exist. Empty when the log exists or the backend cannot
    tell."""
    if request_log.request_log_exists(endpoint) is not False:
        return ""
    info = endpoints.get_endpoint(endpoint) or {}
    times = [pd.Timestamp(d["create_time"]) for d in info.get("deployed_models", []) if d.get("create_time")]
    if not times or min(times) >= pd.Timestamp(settled):
        return ""
    return (
        f"Endpoint {endpoint!r} has served since {min(times):%Y-%m-%d %H:%M:%S} UTC (its deployment's smoke test at "
        "least), but its request-response log table does not exist although the grace period for late rows has "
        "passed: Vertex AI cannot write it. Check that the Vertex AI service agent may write to the dataset (see "
        "README, Running on Google Cloud), then run again."
    )


def _windows_file(reports_dir: Path, spec: ModelSpec) -> Path:
    return reports_dir / spec.name / "monitoring" / "windows.json"


def load_windows(reports_dir: Path, spec: ModelSpec) -> list[dict[str, Any]]:
    path = _windows_file(reports_dir, spec)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return []


def _performance(
    warehouse: Warehouse,
    spec: ModelSpec,
    log: pd.DataFrame,
    windows: list[dict[str, Any]],
    features: list[str],
) -> pd.DataFrame:
    """The gate metric of served predictions whose label has arrived, per monitoring window
    (``log``: the request-response log over every window)."""
    columns = ["window_end", "metric", "value", "version", "rows"]
    if spec.model_type not in CLASSIFIER_TYPES or not windows:
        return pd.DataFrame(columns=columns)
    truth = warehouse.query(read_sql(f"monitoring/{spec.name}_ground_truth.sql"))
    label = spec.label
    keys = [f for f in features if f in truth.columns and f in log.columns]
    if log.empty or truth.empty or not keys:
        return pd.DataFrame(columns=columns)

    def normal(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[keys].copy()
        for key in keys:
            if pd.api.types.is_numeric_dtype(out[key]) and not pd.api.types.is_bool_dtype(out[key]):
                out[key] = out[key].astype("float64")
            else:
                out[key] = out[key].astype(object).where(out[key].notna(), None).astype(str)
        return out

    truth_keys = normal(truth).assign(_label=truth[label].to_numpy()).drop_duplicates(subset=keys, keep=False)
    logged = normal(log).assign(
        _time=pd.to_datetime(log["logging_time"], utc=True),
        _prediction=log["prediction"].to_numpy(),
        _version=log["model_version_id"].to_numpy(),
    )
    joined = logged.merge(truth_keys, on=keys, how="inner")
    rows = []
    if joined.empty:
        return pd.DataFrame(columns=columns)
    positive = positive_label(truth[label])
    for window in windows:
        lo, hi = pd.Timestamp(window["start"]), pd.Timestamp(window["end"])
        part = joined[(joined["_time"] >= lo) & (joined["_time"] < hi)]
        if len(part) < 20 or part["_label"].nunique() < 2:
            continue
        parsed = parse_served(spec, part["_prediction"], served.label_type_of([positive]))
        readable = np.array(
            [p is not None for p in parsed], dtype=bool
        )  # a row without a response is left out
        part = part[readable]
        if len(part) < 20 or part["_label"].nunique() < 2:
            continue
        scores, _ = _positive_from_served([p for p in parsed if p is not None], positive)
        actual = (part["_label"] == positive).to_numpy().astype(np.int64)
        value = bqml_metrics.classification(actual, np.column_stack([1 - scores, scores]))[spec.gate.metric]
        rows.append(
            {
                "window_end": hi,
                "metric": spec.gate.metric,
                "value": float(value),
                "version": ",".join(sorted({str(v) for v in part["_version"] if v is not None})) or "unknown",
                "rows": len(part),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def monitor(
    warehouse: Warehouse,
    registry: ModelRegistry,
    endpoints: Endpoints,
    request_log: RequestLog,
    spec: ModelSpec,
    reports_dir: Path,
    now: dt.datetime | None = None,
) -> MonitoringResult:
    """Write the monitoring report of the serving version for the window since the last report."""
    serving = serving_spec(spec)
    model_id = registry_model_id(spec)
    version = registry.find_alias(model_id, serving.serving_alias)
    if version is None:
        raise RegistryError(
            f"No version of {model_id} holds '{serving.serving_alias}': nothing serves to monitor yet."
        )
    end = now or dt.datetime.now(dt.timezone.utc)
    windows = load_windows(reports_dir, spec)
    start = dt.datetime.fromisoformat(windows[-1]["end"]) if windows else end - FIRST_WINDOW
    # Log rows can land after their logging_time (Vertex AI writes the request-response log to
    # BigQuery asynchronously): each report re-reads the grace period before its window and counts
    # the rows there that the previous report did not (it kept their request ids).
    grace = dt.timedelta(seconds=float(request_log.request_log_grace_seconds()))
    read_from = start - grace
    # One read of the log over the trend's windows: this window's rows judge drift, all of them
    # the performance trend (classifiers only: the other models have no trend, so only this window).
    trend = (
        windows[-(TREND_WINDOWS - 1) :] if TREND_WINDOWS > 1 and spec.model_type in CLASSIFIER_TYPES else []
    )
    first = min(dt.datetime.fromisoformat(trend[0]["start"]), read_from) if trend else read_from
    history = deduplicated(request_log.request_log(serving.endpoint, first, end))
    counted_before = set(windows[-1].get("tail_request_ids") or []) if windows else set()
    fresh, late, tail = window_rows(history, start, end, grace, counted_before)
    log = fresh[fresh["model_version_id"].astype(str) == version.version_id]
    features = [c for c in log.columns if c not in LOG_COLUMNS]
    if spec.statement.transform:  # a TRANSFORM model's NULLs arrive as the documented sentinels
        log = served.decode_null_sentinels(log, features)
    table = baseline_table(spec, version.version_id)
    if not warehouse.table_exists(table):
        raise WarehouseError(
            f"The training rows of {model_id} version {version.version_id} were not saved ({table} is missing): "
            f"materialize {spec.name} and {spec.name}_registry_version to register a version with its baseline."
        )
    baseline = warehouse.query(f"SELECT * FROM {table}")
    empty = pd.DataFrame(columns=list(report.DRIFT_COLUMNS))
    result = MonitoringResult(
        model_id=model_id,
        version=version,
        endpoint=serving.endpoint,
        window_start=start,
        window_end=end,
        base_rows=len(baseline),
        study_rows=len(log),
        judged=False,
        drift=empty,
        prediction_drift=empty,
        performance=pd.DataFrame(columns=["window_end", "metric", "value"]),
        histograms={},
        drifted=[],
        warned=[],
        max_ratio=0.0,
        max_drift=0.0,
        late_rows=late,
    )
    result.log_problem = _log_problem(
        request_log, serving.endpoint, history, start, end - grace, serving.logging_sampling_rate
    ) or (_missing_log(endpoints, request_log, serving.endpoint, end - grace) if history.empty else "")
    if result.log_problem:
        result.note = result.log_problem
    elif len(log) < serving.min_window_rows:
        result.note = (
            f"{len(log)} served instance(s) of version {version.version_id} in the window, fewer than the "
            f"{serving.min_window_rows} needed to judge drift: send traffic (lakehouse-ml traffic) and run it again."
        )
    else:
        study = log[features].reset_index(drop=True)
        base = baseline[features].reset_index(drop=True)
        warehouse.load_dataframe(base, f"{spec.name}_monitoring_baseline")
        warehouse.load_dataframe(study, f"{spec.name}_monitoring_window")
        sql = bind_template(
            read_sql("monitoring/feature_drift.sql"),
            tables={
                "baseline_rows": f"{spec.name}_monitoring_baseline",
                "serving_rows": f"{spec.name}_monitoring_window",
            },
            values={
                "numerical_threshold": serving.numerical_threshold,
                "categorical_threshold": serving.categorical_threshold,
                "thresholds": serving.drift_thresholds,
            },
        )
        result.drift = warehouse.query(sql)
        options = {
            "numerical_default_threshold": serving.numerical_threshold,
            "categorical_default_threshold": serving.categorical_threshold,
            "thresholds": list(serving.drift_thresholds),
        }
        result.histograms = _histograms(drift_stats.drift_distributions(base, study, options))
        prediction_options = {k: v for k, v in options.items() if k != "thresholds"}
        if spec.model_type in CLASSIFIER_TYPES:
            positive = positive_label(baseline[spec.label])
            evaluation, result.prediction_baseline = evaluation_rows(spec, baseline)
            base_p, base_c = _positive_from_baseline(spec, evaluation, positive)
            parsed = [
                p
                for p in parse_served(spec, log["prediction"], served.label_type_of([positive]))
                if p is not None
            ]
            study_p, study_c = _positive_from_served(parsed, positive)
            name = f"{spec.label}_probability"
            result.prediction_drift = drift_stats.validate_data_drift(
                pd.DataFrame({name: base_p, f"predicted_{spec.label}": base_c}),
                pd.DataFrame({name: study_p, f"predicted_{spec.label}": study_c}),
                prediction_options,
            )
        elif spec.model_type in CLUSTERING_TYPES:
            evaluation, result.prediction_baseline = evaluation_rows(spec, baseline)
            parsed = [p for p in parse_served(spec, log["prediction"]) if p is not None]
            result.prediction_drift = drift_stats.validate_data_drift(
                _clusters_from_baseline(evaluation), _clusters_from_served(parsed), prediction_options
            )
        result.judged = True
        rows = report.drift_rows(result.drift, serving.warn_fraction)
        result.drifted = [str(r.input) for r in rows.itertuples() if r.status == report.DRIFT]
        result.warned = [str(r.input) for r in rows.itertuples() if r.status == report.WARN]
        values = result.drift.dropna(subset=["value"])
        if not values.empty:
            result.max_drift = float(values["value"].max())
            result.max_ratio = float((values["value"] / values["threshold"]).max())
    for window in windows:  # only the newest window keeps the request ids of its tail
        window.pop("tail_request_ids", None)
    windows = windows + [
        {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "version": version.version_id,
            "rows": len(log),
            "late_rows": late,
            "tail_request_ids": tail,
        }
    ]
    result.performance = _performance(warehouse, spec, history, windows[-TREND_WINDOWS:], features)
    folder = reports_dir / spec.name / "monitoring"
    stamp = end.strftime("%Y%m%dT%H%M%SZ")
    metric = spec.gate.metric
    baseline_metric = version.metrics.get(metric) if isinstance(version.metrics, dict) else None
    result.report_path = report.write_html_report(
        folder / f"report-{stamp}.html",
        model_id=model_id,
        version_id=version.version_id,
        endpoint=serving.endpoint,
        window_start=start,
        window_end=end,
        base_rows=len(baseline),
        study_rows=len(log),
        drift=result.drift if result.judged else None,
        histograms={k: v for k, v in result.histograms.items() if not k.startswith("prediction:")},
        prediction_drift=result.prediction_drift if result.judged else None,
        performance=result.performance,
        baseline={metric: float(baseline_metric)} if isinstance(baseline_metric, (int, float)) else None,
        warn_fraction=serving.warn_fraction,
        performance_note=None
        if spec.label
        else (
            f"{spec.model_type} models have no labels to score; prediction drift watches the shares of "
            "the clusters and the distance to the nearest centroid"
        ),
    )
    write_bytes(_windows_file(reports_dir, spec), json.dumps(windows, indent=1).encode())
    return result
