"""The monitoring report of a served model: feature drift, prediction drift and performance.

The logic behind the ``<model>_monitoring`` asset, testable without Dagster. For one monitoring
window (the request-response log since the previous report):

* **training data**: the rows the serving version was trained on, saved with their predictions
  when the version was registered (:func:`save_baseline`, table ``<model>_baseline_v<version>``:
  ``ML.PREDICT`` over the model's training query, ``sql/models/evaluation/labelled_predictions.sql``);
* **serving data**: the instances the serving version answered in the window, from the
  request-response log (:meth:`Endpoints.request_log`: Parquet files locally, Vertex AI's
  request-response logging table on gcp), loaded into ``<model>_monitoring_window``;
* **feature drift**: ``sql/monitoring/feature_drift.sql`` — ``ML.VALIDATE_DATA_DRIFT`` of the
  training features against the served ones, run by the warehouse (BigQuery itself on gcp), with
  the spec's thresholds;
* **prediction drift**: the served predictions (positive-class probability and predicted class)
  against the predictions on the training rows, with the same arithmetic;
* **performance**: served predictions whose ground truth has arrived since (the label of the same
  customer snapshot, matched on the logged features against ``sql/monitoring/<model>_ground_truth.sql``),
  per monitoring window, against the version's evaluation metric.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lakehouse_ml.atomic import write_bytes
from lakehouse_ml.backends.endpoints import Endpoints
from lakehouse_ml.backends.registry import ModelRegistry, ModelVersion, RegistryError
from lakehouse_ml.backends.warehouse import Warehouse, WarehouseError, check_identifier
from lakehouse_ml.bqml import metrics as bqml_metrics
from lakehouse_ml.bqml.sql import TokenType, bind_template, tokenize
from lakehouse_ml.deployment import registry_model_id, serving_spec
from lakehouse_ml.models import CLASSIFIER_TYPES, ModelSpec, positive_label
from lakehouse_ml.monitoring import drift as drift_stats
from lakehouse_ml.monitoring import report
from lakehouse_ml.sqlfiles import read_sql

LOG_COLUMNS = ("endpoint_id", "deployed_model_id", "model_id", "model_version_id", "logging_time", "request_id", "instance_index", "prediction")
# The first report of a model looks this far back in the request-response log.
FIRST_WINDOW = dt.timedelta(days=1)


def baseline_table(spec: ModelSpec, version_id: str) -> str:
    if not str(version_id).isdigit():
        raise RegistryError(f"Unexpected version id {version_id!r}: Vertex AI version ids are numbers.")
    return check_identifier(f"{spec.name}_baseline_v{version_id}", "table")


def save_baseline(warehouse: Warehouse, spec: ModelSpec, version_id: str) -> int:
    """Keep the training rows of a new version with its predictions on them (right after
    ``CREATE OR REPLACE MODEL``, while the BigQuery ML model is that version)."""
    sql = bind_template(read_sql("models/evaluation/labelled_predictions.sql"), spec.name, spec.training_query)
    return warehouse.write_query(baseline_table(spec, version_id), sql)


def bind_tables(sql: str, tables: dict[str, str], values: dict[str, float], thresholds: tuple[tuple[str, float], ...]) -> str:
    """A ``sql/monitoring`` template bound at the token level: ``TABLE <name>`` → ``TABLE <table>``
    for each checked identifier in ``tables``, ``@<name>`` → the finite number ``values[name]``,
    and ``@thresholds`` → an ``ARRAY<STRUCT<STRING, FLOAT64>>`` literal of checked feature names."""
    tokens = tokenize(sql)
    pieces: list[str] = []
    position = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        replacement = None
        if token.token_type == TokenType.TABLE and nxt is not None and nxt.text in tables:
            token, replacement = nxt, check_identifier(tables[nxt.text], "table")
            i += 1
        elif token.token_type == TokenType.PARAMETER and nxt is not None and (nxt.text in values or nxt.text == "thresholds"):
            if nxt.text == "thresholds":
                items = [f"('{check_identifier(name, 'feature')}', {float(value)!r})" for name, value in thresholds]
                replacement = "[" + ", ".join(items) + "]"
            else:
                value = values[nxt.text]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise WarehouseError(f"Template value @{nxt.text} must be a finite number, got {value!r}.")
                replacement = repr(float(value))
            pieces.append(sql[position : token.start])
            pieces.append(replacement)
            position = nxt.end + 1
            i += 2
            continue
        if replacement is not None:
            pieces.append(sql[position : token.start])
            pieces.append(replacement)
            position = token.end + 1
        i += 1
    pieces.append(sql[position:])
    return "".join(pieces)


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


def _positive_from_served(spec: ModelSpec, predictions: pd.Series, positive: Any) -> tuple[np.ndarray, np.ndarray]:
    label = spec.label
    probs, classes = [], []
    for text in predictions:
        p = json.loads(text) if isinstance(text, str) else text
        values, ps = p.get(f"{label}_values", []), p.get(f"{label}_probs", [])
        probs.append(next((float(pr) for v, pr in zip(values, ps) if v == positive), 0.0))
        classes.append(str(p.get(f"predicted_{label}")))
    return np.array(probs), np.array(classes, dtype=object)


def _positive_from_baseline(spec: ModelSpec, frame: pd.DataFrame, positive: Any) -> tuple[np.ndarray, np.ndarray]:
    label = spec.label
    probs = np.array(
        [next((float(p["prob"]) for p in row if p["label"] == positive), 0.0) for row in frame[f"predicted_{label}_probs"]]
    )
    return probs, frame[f"predicted_{label}"].astype(str).to_numpy(dtype=object)


def _windows_file(reports_dir: Path, spec: ModelSpec) -> Path:
    return reports_dir / spec.name / "monitoring" / "windows.json"


def load_windows(reports_dir: Path, spec: ModelSpec) -> list[dict[str, Any]]:
    path = _windows_file(reports_dir, spec)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return []


def _performance(
    warehouse: Warehouse, spec: ModelSpec, endpoints: Endpoints, windows: list[dict[str, Any]], features: list[str]
) -> pd.DataFrame:
    """The gate metric of served predictions whose label has arrived, per monitoring window."""
    columns = ["window_end", "metric", "value", "version", "rows"]
    if spec.model_type not in CLASSIFIER_TYPES or not windows:
        return pd.DataFrame(columns=columns)
    truth = warehouse.query(read_sql(f"monitoring/{spec.name}_ground_truth.sql"))
    label = spec.label
    start = dt.datetime.fromisoformat(windows[0]["start"])
    end = dt.datetime.fromisoformat(windows[-1]["end"])
    log = endpoints.request_log(serving_spec(spec).endpoint, start, end)
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
    served = normal(log).assign(_time=pd.to_datetime(log["logging_time"], utc=True), _prediction=log["prediction"].to_numpy(), _version=log["model_version_id"].to_numpy())
    joined = served.merge(truth_keys, on=keys, how="inner")
    rows = []
    if joined.empty:
        return pd.DataFrame(columns=columns)
    positive = positive_label(truth[label])
    for window in windows:
        lo, hi = pd.Timestamp(window["start"]), pd.Timestamp(window["end"])
        part = joined[(joined["_time"] >= lo) & (joined["_time"] < hi)]
        if len(part) < 20 or part["_label"].nunique() < 2:
            continue
        scores, _ = _positive_from_served(spec, part["_prediction"], positive)
        actual = (part["_label"] == positive).to_numpy().astype(np.int64)
        value = bqml_metrics.classification(actual, np.column_stack([1 - scores, scores]))[spec.gate.metric]
        rows.append({"window_end": hi, "metric": spec.gate.metric, "value": float(value), "version": ",".join(sorted(set(part["_version"]))), "rows": len(part)})
    return pd.DataFrame(rows, columns=columns)


def monitor(
    warehouse: Warehouse,
    registry: ModelRegistry,
    endpoints: Endpoints,
    spec: ModelSpec,
    reports_dir: Path,
    now: dt.datetime | None = None,
) -> MonitoringResult:
    """Write the monitoring report of the serving version for the window since the last report."""
    serving = serving_spec(spec)
    model_id = registry_model_id(spec)
    version = registry.find_alias(model_id, serving.serving_alias)
    if version is None:
        raise RegistryError(f"No version of {model_id} holds '{serving.serving_alias}': nothing serves to monitor yet.")
    end = now or dt.datetime.now(dt.timezone.utc)
    windows = load_windows(reports_dir, spec)
    start = dt.datetime.fromisoformat(windows[-1]["end"]) if windows else end - FIRST_WINDOW
    log = endpoints.request_log(serving.endpoint, start, end)
    log = log[log["model_version_id"].astype(str) == version.version_id] if not log.empty else log
    features = [c for c in log.columns if c not in LOG_COLUMNS]
    table = baseline_table(spec, version.version_id)
    if not warehouse.table_exists(table):
        raise WarehouseError(
            f"The training rows of {model_id} version {version.version_id} were not saved ({table} is missing): "
            f"materialize {spec.name} and {spec.name}_registry_version to register a version with its baseline."
        )
    baseline = warehouse.query(f"SELECT * FROM {table}")
    empty = pd.DataFrame(columns=list(report.DRIFT_COLUMNS))
    result = MonitoringResult(
        model_id=model_id, version=version, endpoint=serving.endpoint, window_start=start, window_end=end,
        base_rows=len(baseline), study_rows=len(log), judged=False, drift=empty, prediction_drift=empty,
        performance=pd.DataFrame(columns=["window_end", "metric", "value"]), histograms={}, drifted=[], warned=[],
        max_ratio=0.0, max_drift=0.0,
    )
    if len(log) < serving.min_window_rows:
        result.note = (
            f"{len(log)} served instance(s) of version {version.version_id} in the window, fewer than the "
            f"{serving.min_window_rows} needed to judge drift: send traffic (lakehouse-ml traffic) and run it again."
        )
    else:
        study = log[features].reset_index(drop=True)
        base = baseline[features].reset_index(drop=True)
        warehouse.load_dataframe(base, f"{spec.name}_monitoring_baseline")
        warehouse.load_dataframe(study, f"{spec.name}_monitoring_window")
        sql = bind_tables(
            read_sql("monitoring/feature_drift.sql"),
            {"baseline_rows": f"{spec.name}_monitoring_baseline", "serving_rows": f"{spec.name}_monitoring_window"},
            {"numerical_threshold": serving.numerical_threshold, "categorical_threshold": serving.categorical_threshold},
            serving.drift_thresholds,
        )
        result.drift = warehouse.query(sql)
        options = {
            "numerical_default_threshold": serving.numerical_threshold,
            "categorical_default_threshold": serving.categorical_threshold,
            "thresholds": list(serving.drift_thresholds),
        }
        result.histograms = _histograms(drift_stats.drift_distributions(base, study, options))
        if spec.model_type in CLASSIFIER_TYPES:
            positive = positive_label(baseline[spec.label])
            base_p, base_c = _positive_from_baseline(spec, baseline, positive)
            study_p, study_c = _positive_from_served(spec, log["prediction"], positive)
            name = f"{spec.label}_probability"
            prediction_options = {k: v for k, v in options.items() if k != "thresholds"}
            result.prediction_drift = drift_stats.validate_data_drift(
                pd.DataFrame({name: base_p, f"predicted_{spec.label}": base_c}),
                pd.DataFrame({name: study_p, f"predicted_{spec.label}": study_c}),
                prediction_options,
            )
        result.judged = True
        rows = report.drift_rows(result.drift, serving.warn_fraction)
        result.drifted = [str(r.input) for r in rows.itertuples() if r.status == report.DRIFT]
        result.warned = [str(r.input) for r in rows.itertuples() if r.status == report.WARN]
        values = result.drift.dropna(subset=["value"])
        if not values.empty:
            result.max_drift = float(values["value"].max())
            result.max_ratio = float((values["value"] / values["threshold"]).max())
    windows = windows + [{"start": start.isoformat(), "end": end.isoformat(), "version": version.version_id, "rows": len(log)}]
    result.performance = _performance(warehouse, spec, endpoints, windows, features)
    folder = reports_dir / spec.name / "monitoring"
    stamp = end.strftime("%Y%m%dT%H%M%SZ")
    metric = spec.gate.metric
    baseline_metric = version.metrics.get(metric) if isinstance(version.metrics, dict) else None
    result.report_path = report.write_html_report(
        folder / f"report-{stamp}.html",
        model_id=model_id, version_id=version.version_id, endpoint=serving.endpoint,
        window_start=start, window_end=end, base_rows=len(baseline), study_rows=len(log),
        drift=result.drift if result.judged else None,
        histograms={k: v for k, v in result.histograms.items() if not k.startswith("prediction:")},
        prediction_drift=result.prediction_drift if result.judged else None,
        performance=result.performance,
        baseline={metric: float(baseline_metric)} if isinstance(baseline_metric, (int, float)) else None,
        warn_fraction=serving.warn_fraction,
    )
    write_bytes(_windows_file(reports_dir, spec), json.dumps(windows, indent=1).encode())
    return result
