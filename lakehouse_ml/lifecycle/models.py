"""BigQuery ML models: their declarations, how they are trained, described and evaluated.

This is the logic behind the model assets, testable without Dagster. A model is declared once:
a BigQuery ML ``CREATE MODEL`` statement in ``sql/models/<name>.sql`` plus one :class:`ModelSpec`
entry below. Everything else is read from the SQL: the tables it trains on (lineage), its
options (model type, registry options), its training query (for evaluations that need rows).

Everything here goes through :class:`~lakehouse_ml.backends.warehouse.Warehouse` with BigQuery
SQL (the evaluation queries are templates in ``sql/models/evaluation/``), so the same code runs
on BigQuery and on the local warehouse, whose BigQuery ML engine runs the same statements.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.bigquery.dialect import CreateModel, parse_model_statement, rename_created_model
from lakehouse_ml.bigquery.model_types import CLASSIFIER_TYPES, CLUSTERING_TYPES, REGRESSOR_TYPES
from lakehouse_ml.bigquery.served import PredictionFormat
from lakehouse_ml.bigquery.sqlfiles import read_sql, referenced_tables
from lakehouse_ml.bigquery.templates import bind_template
from lakehouse_ml.core.errors import WarehouseError
from lakehouse_ml.core.identifiers import check_identifier

log = logging.getLogger(__name__)

__all__ = ["CLASSIFIER_TYPES", "CLUSTERING_TYPES", "REGRESSOR_TYPES"]


class Evaluation(str, enum.Enum):
    """What a model's evaluation asset runs and draws."""

    # ML.EVALUATE; ROC curve and confusion matrix (ML.ROC_CURVE / ML.CONFUSION_MATRIX).
    BINARY_CLASSIFICATION = "binary_classification"
    # ML.EVALUATE only.
    REGRESSION = "regression"
    # ML.EVALUATE; rows per centroid of the training rows (ML.PREDICT).
    CLUSTERING = "clustering"
    # CLUSTERING, plus anomalies per centroid (ML.DETECT_ANOMALIES at the spec's contamination).
    ANOMALY_DETECTION = "anomaly_detection"


# The model types of each evaluation: live views of the BigQuery ML catalog
# (lakehouse_ml/bigquery/model_types.py), so a model family that registers a type fits here.
_MODEL_TYPES_OF = {
    Evaluation.BINARY_CLASSIFICATION: CLASSIFIER_TYPES,
    Evaluation.REGRESSION: REGRESSOR_TYPES,
    Evaluation.CLUSTERING: CLUSTERING_TYPES,
    Evaluation.ANOMALY_DETECTION: CLUSTERING_TYPES,
}


@dataclass(frozen=True)
class Gate:
    """The metric a retrained candidate must match or beat on fresh rows before it replaces the
    serving version (:func:`lakehouse_ml.lifecycle.deployment.gate`): an ``ML.EVALUATE`` metric of a
    classifier or regressor, or ``davies_bouldin_index`` of a k-means model."""

    metric: str
    direction: Literal["higher", "lower"]

    def __post_init__(self) -> None:
        check_identifier(self.metric, "metric")
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"Gate direction must be 'higher' or 'lower', not {self.direction!r}.")

    def better_or_equal(self, candidate: float, serving: float) -> bool:
        return candidate >= serving if self.direction == "higher" else candidate <= serving


@dataclass(frozen=True)
class Serving:
    """How a registered model is served and watched: its Vertex AI endpoint, the aliases that name
    the serving version and the candidate, the canary share, request-response logging, and the
    drift thresholds of its monitoring report (ML.VALIDATE_DATA_DRIFT's defaults are 0.3)."""

    endpoint: str
    serving_alias: str = "champion"
    candidate_alias: str = "challenger"
    canary_percent: int = 10
    machine_type: str = "n1-standard-2"
    logging_sampling_rate: float = 1.0
    numerical_threshold: float = 0.3
    categorical_threshold: float = 0.3
    drift_thresholds: tuple[tuple[str, float], ...] = ()
    # A feature whose drift reaches this fraction of its threshold makes the check warn.
    warn_fraction: float = 0.8
    # How many serving rows a monitoring window needs before drift is judged.
    min_window_rows: int = 100
    # Training runs whose BigQuery ML model is kept whatever it holds; older ones are dropped once
    # their version is neither deployed nor holds an alias (lakehouse_ml.lifecycle.deployment.collect_garbage).
    keep_models: int = 3

    def __post_init__(self) -> None:
        check_identifier(self.endpoint, "endpoint")
        if self.serving_alias == self.candidate_alias:
            raise ValueError("The serving and candidate aliases must differ.")
        if not 1 <= self.canary_percent <= 99:
            raise ValueError(f"canary_percent is in 1..99, got {self.canary_percent}.")
        if not 0.0 <= self.logging_sampling_rate <= 1.0:
            raise ValueError(f"logging_sampling_rate is in [0, 1], got {self.logging_sampling_rate}.")
        if not 0.0 < self.warn_fraction < 1.0:
            raise ValueError(f"warn_fraction is in (0, 1), got {self.warn_fraction}.")
        if self.keep_models < 1:
            raise ValueError(
                f"keep_models is at least 1 (the newest model is always kept), got {self.keep_models}."
            )
        for feature, threshold in self.drift_thresholds:
            check_identifier(feature, "feature")
            if not 0.0 < float(threshold) <= 1.0:
                raise ValueError(f"Drift threshold of {feature} is in (0, 1], got {threshold}.")


@dataclass(frozen=True)
class ModelSpec:
    """One model: ``sql/models/<name>.sql`` and how it is evaluated and gated."""

    name: str
    description: str
    evaluation: Evaluation
    gate: Gate
    # ML.DETECT_ANOMALIES contamination for ANOMALY_DETECTION models.
    contamination: float | None = None
    # Registered models that are deployed and monitored (None: trained and evaluated only).
    serving: Serving | None = None

    def __post_init__(self) -> None:
        check_identifier(self.name, "model")
        if (self.evaluation == Evaluation.ANOMALY_DETECTION) != (self.contamination is not None):
            raise ValueError(f"{self.name}: give a contamination exactly for anomaly detection models.")
        if self.contamination is not None and not 0 < self.contamination < 0.5:
            raise ValueError(f"{self.name}: contamination is in (0, 0.5), got {self.contamination}.")

    @property
    def sql_path(self) -> str:
        return f"models/{self.name}.sql"

    @property
    def sql(self) -> str:
        return read_sql(self.sql_path)

    @property
    def statement(self) -> CreateModel:
        """The parsed ``CREATE MODEL`` statement of the SQL file (checked against the spec)."""
        parsed = parse_model_statement(self.sql)
        if not isinstance(parsed, CreateModel):
            raise WarehouseError(f"sql/{self.sql_path} must hold one CREATE MODEL statement.")
        if parsed.model.name != self.name:
            raise WarehouseError(
                f"sql/{self.sql_path} creates model {parsed.model.name}, but the file is for {self.name}."
            )
        model_type = self.model_type_of(parsed)
        if model_type not in _MODEL_TYPES_OF[self.evaluation]:
            raise WarehouseError(
                f"{self.name}: MODEL_TYPE {model_type} does not fit its {self.evaluation.value} evaluation "
                f"(expected one of {', '.join(_MODEL_TYPES_OF[self.evaluation])})."
            )
        options = parsed.options
        if str(options.get("model_registry", "")).upper() == "VERTEX_AI" and not options.get(
            "vertex_ai_model_id"
        ):
            raise WarehouseError(
                f"sql/{self.sql_path} registers the model without VERTEX_AI_MODEL_ID: add vertex_ai_model_id = "
                f"'{self.name}' to its OPTIONS. Each training run creates a BigQuery ML model of its own name, and "
                "without the option each would register under its own name instead of as a new version of one model."
            )
        return parsed

    @staticmethod
    def model_type_of(statement: CreateModel) -> str:
        return str(statement.options.get("model_type", "")).upper()

    @property
    def model_type(self) -> str:
        return self.model_type_of(self.statement)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.statement.options)

    @property
    def training_query(self) -> str:
        return self.statement.query

    @property
    def upstream_tables(self) -> list[str]:
        """The tables the training query reads: the model asset's lineage."""
        return referenced_tables(self.training_query)

    @property
    def label(self) -> str | None:
        if self.evaluation in (Evaluation.CLUSTERING, Evaluation.ANOMALY_DETECTION):
            return None
        labels = self.options.get("input_label_cols") or ["label"]
        return str(labels[0])

    @property
    def registry_options(self) -> dict[str, Any]:
        names = ("model_registry", "vertex_ai_model_id", "vertex_ai_model_version_aliases")
        return {name: self.options[name] for name in names if name in self.options}

    def prediction_format(self, label_type: str | None = None) -> PredictionFormat:
        """How the model's served predictions look (:mod:`lakehouse_ml.bigquery.served`);
        ``label_type``: the label's BigQuery type, to read classes back in it."""
        return PredictionFormat(self.model_type, self.label, label_type)


CHURN_MODEL = ModelSpec(
    name="churn_model",
    description=(
        "Logistic regression of `churned` (no order in the next 30 days) on the labelled customer "
        "snapshots; evaluated on the newest 20% of snapshots; registered in Vertex AI as churn_model."
    ),
    evaluation=Evaluation.BINARY_CLASSIFICATION,
    gate=Gate(metric="roc_auc", direction="higher"),
    # Recency, frequency, spend and the channel mix drive churn most: their drift gets tighter
    # thresholds than ML.VALIDATE_DATA_DRIFT's default 0.3 (normal weeks stay under 0.03 on the
    # simulator).
    serving=Serving(
        endpoint="churn_model",
        drift_thresholds=(
            ("recency_days", 0.1),
            ("frequency_orders", 0.1),
            ("monetary_total", 0.1),
            ("share_web", 0.15),
            ("share_app", 0.15),
            ("share_store", 0.15),
            ("share_mobile", 0.15),
        ),
    ),
)

TRANSACTION_ANOMALY_MODEL = ModelSpec(
    name="transaction_anomaly_model",
    description=(
        "KMEANS clusters of orders (basket, amount, discount, time of day, the order against the "
        "customer's history); ML.DETECT_ANOMALIES flags the orders farthest from their centroid."
    ),
    evaluation=Evaluation.ANOMALY_DETECTION,
    gate=Gate(metric="davies_bouldin_index", direction="lower"),
    contamination=0.02,
    # Scored online at checkout: the endpoint answers each order's nearest centroid and distances.
    serving=Serving(endpoint="transaction_anomaly_model"),
)

CUSTOMER_SEGMENTS_MODEL = ModelSpec(
    name="customer_segments_model",
    description="KMEANS customer segments on log recency, frequency and monetary value of the latest snapshot.",
    evaluation=Evaluation.CLUSTERING,
    gate=Gate(metric="davies_bouldin_index", direction="lower"),
    # Looked up online by the CRM: the endpoint answers a customer's segment (nearest centroid).
    serving=Serving(endpoint="customer_segments_model"),
)

MODELS: tuple[ModelSpec, ...] = (CHURN_MODEL, TRANSACTION_ANOMALY_MODEL, CUSTOMER_SEGMENTS_MODEL)


def model_spec(name: str) -> ModelSpec:
    for spec in MODELS:
        if spec.name == name:
            return spec
    raise KeyError(f"No model named {name!r}; declared: {', '.join(s.name for s in MODELS)}.")


# -- training ----------------------------------------------------------------------------------


def training_model_name(spec: ModelSpec, run_id: str | None = None, now: dt.datetime | None = None) -> str:
    """The BigQuery ML model a training run creates: ``<name>_<YYYYMMDDHHMMSS>_<8 hex>`` (UTC
    time, then the first characters of the run id, or random ones), so names sort by time."""
    when = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    suffix = re.sub(r"[^0-9a-f]", "", (run_id or uuid.uuid4().hex).lower())[:8] or uuid.uuid4().hex[:8]
    return check_identifier(f"{spec.name}_{when:%Y%m%d%H%M%S}_{suffix}", "model")


def _run_model_pattern(spec: ModelSpec) -> re.Pattern:
    return re.compile(rf"^{re.escape(spec.name)}(_\d{{14}}_[0-9a-f]{{1,8}})?$")


def is_training_model(spec: ModelSpec, model: str) -> bool:
    """Whether ``model`` is one of the spec's BigQuery ML models: a training run's, or the SQL
    file's own name (the file run as it is)."""
    return bool(_run_model_pattern(spec).match(model))


def training_models(warehouse: Warehouse, spec: ModelSpec) -> list[tuple[str, dt.datetime]]:
    """The spec's BigQuery ML models in the warehouse, (name, creation time), newest first."""
    found = [(name, created) for name, created in warehouse.list_models() if is_training_model(spec, name)]
    return sorted(found, key=lambda item: (item[1], item[0]), reverse=True)


def newest_model(warehouse: Warehouse, spec: ModelSpec) -> str:
    """The spec's newest BigQuery ML model (what the model asset last trained, when its
    materialization is not at hand)."""
    found = training_models(warehouse, spec)
    if not found:
        raise WarehouseError(
            f"{spec.name} has no BigQuery ML model in {warehouse.describe()}: materialize {spec.name} first."
        )
    return found[0][0]


def training_sql(spec: ModelSpec, model: str) -> str:
    """``sql/models/<name>.sql`` creating ``model`` (only the name changes)."""
    spec.statement  # noqa: B018 - validates the file against the spec before any work
    return rename_created_model(spec.sql, model)


def train(warehouse: Warehouse, spec: ModelSpec, model: str | None = None) -> str:
    """Run the model's ``CREATE MODEL`` statement as the BigQuery ML model ``model`` (default: a
    new :func:`training_model_name`); BigQuery trains it on gcp, the local BigQuery ML engine
    locally. Returns the model's name."""
    model = model or training_model_name(spec)
    warehouse.execute(training_sql(spec, model))
    return model


def _template(name: str, spec: ModelSpec, model: str, values: Mapping[str, float] | None = None) -> str:
    return bind_template(read_sql(f"models/evaluation/{name}.sql"), model, spec.training_query, values)


def feature_info(warehouse: Warehouse, spec: ModelSpec, model: str) -> pd.DataFrame:
    return warehouse.query(_template("feature_info", spec, model))


def training_info(warehouse: Warehouse, spec: ModelSpec, model: str) -> pd.DataFrame:
    return warehouse.query(_template("training_info", spec, model))


# -- evaluation --------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """What an evaluation found: ML.EVALUATE's metrics and the tables behind the plots."""

    metrics: dict[str, float | None]
    roc: pd.DataFrame | None = None  # false_positive_rate, recall, threshold
    roc_auc: float | None = None
    confusion: pd.DataFrame | None = None  # index: expected label; columns: predicted label
    cluster_sizes: pd.DataFrame | None = None  # centroid_id, row_count[, anomalies]
    anomalies: pd.DataFrame | None = None
    sources: dict[str, str] = field(default_factory=dict)  # what each table was computed from


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def evaluation_metrics(warehouse: Warehouse, spec: ModelSpec, model: str) -> dict[str, float | None]:
    """``ML.EVALUATE`` without input data: the metrics of ``model`` on its evaluation split."""
    frame = warehouse.query(_template("evaluate", spec, model))
    if frame.empty:
        raise WarehouseError(f"ML.EVALUATE returned no rows for {model}.")
    row = frame.iloc[0]
    return {str(column): _float_or_none(row[column]) for column in frame.columns if _is_metric(row[column])}


def _is_metric(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _positive_probability(probs: Any, positive: Any) -> float:
    for entry in probs:
        if entry["label"] == positive:
            return float(entry["prob"])
    return 0.0


def positive_label(labels: pd.Series) -> Any:
    """The positive class of a binary label: TRUE for BOOL, else the larger of the two values."""
    values = sorted(v for v in pd.unique(labels.dropna()))
    if not values:
        raise WarehouseError("No labelled rows to evaluate on.")
    if any(isinstance(v, (bool, np.bool_)) for v in values):
        return True
    return values[-1]


def roc_from_scores(y_true: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """The ROC curve of scores for boolean truths: one point per distinct score, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = y_true[order].astype(bool), scores[order]
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise WarehouseError("The ROC curve needs labelled rows of both classes.")
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.diff(s) != 0, True]  # the last row of each run of equal scores
    return pd.DataFrame(
        {
            "threshold": np.r_[np.inf, s[last]],
            "recall": np.r_[0.0, tp[last] / positives],
            "false_positive_rate": np.r_[0.0, fp[last] / negatives],
        }
    )


def auc(roc: pd.DataFrame) -> float:
    """Area under a ROC curve (trapezoids over false_positive_rate)."""
    points = roc.sort_values(["false_positive_rate", "recall"])
    x = np.r_[0.0, points["false_positive_rate"].to_numpy(float), 1.0]
    y = np.r_[0.0, points["recall"].to_numpy(float), 1.0]
    return float(np.trapezoid(y, x) if hasattr(np, "trapezoid") else np.trapz(y, x))


def confusion_from_labels(expected: pd.Series, predicted: pd.Series) -> pd.DataFrame:
    labels = sorted(set(pd.unique(expected.dropna())) | set(pd.unique(predicted.dropna())))
    table = pd.crosstab(expected, predicted).reindex(index=labels, columns=labels, fill_value=0)
    table.index.name, table.columns.name = "expected_label", "predicted_label"
    return table


def _confusion_from_function(frame: pd.DataFrame) -> pd.DataFrame:
    table = frame.set_index("expected_label")
    table.columns.name = "predicted_label"
    return table.fillna(0).astype(int)


def classification_plots_data(
    warehouse: Warehouse, spec: ModelSpec, model: str, result: EvaluationResult
) -> None:
    """ROC curve and confusion matrix: ML.ROC_CURVE and ML.CONFUSION_MATRIX on the evaluation
    split where the warehouse runs them (BigQuery); else computed from ML.PREDICT over the
    labelled training rows (both splits), which the result's ``sources`` says."""
    predictions: pd.DataFrame | None = None

    def labelled_predictions() -> pd.DataFrame:
        nonlocal predictions
        if predictions is None:
            predictions = warehouse.query(_template("labelled_predictions", spec, model))
        return predictions

    label = spec.label
    try:
        roc = warehouse.query(_template("roc_curve", spec, model))
        result.roc = roc[["threshold", "recall", "false_positive_rate"]].copy()
        result.sources["roc_curve"] = "ML.ROC_CURVE on the evaluation split"
    except WarehouseError as err:
        log.info("ML.ROC_CURVE unavailable (%s); computing the ROC curve from ML.PREDICT", err)
        frame = labelled_predictions()
        positive = positive_label(frame[label])
        scores = np.array([_positive_probability(p, positive) for p in frame[f"predicted_{label}_probs"]])
        result.roc = roc_from_scores((frame[label] == positive).to_numpy(), scores)
        result.sources["roc_curve"] = (
            "ML.PREDICT on all labelled training rows (ML.ROC_CURVE is not available on this warehouse)"
        )
    result.roc_auc = auc(result.roc)
    try:
        result.confusion = _confusion_from_function(
            warehouse.query(_template("confusion_matrix", spec, model))
        )
        result.sources["confusion_matrix"] = "ML.CONFUSION_MATRIX on the evaluation split"
    except WarehouseError as err:
        log.info("ML.CONFUSION_MATRIX unavailable (%s); computing it from ML.PREDICT", err)
        frame = labelled_predictions()
        result.confusion = confusion_from_labels(frame[label], frame[f"predicted_{label}"])
        result.sources["confusion_matrix"] = (
            "ML.PREDICT on all labelled training rows at threshold 0.5 "
            "(ML.CONFUSION_MATRIX is not available on this warehouse)"
        )


def evaluate(warehouse: Warehouse, spec: ModelSpec, model: str) -> EvaluationResult:
    """Run the evaluation of the spec's BigQuery ML model ``model`` (see :class:`Evaluation`)."""
    result = EvaluationResult(metrics=evaluation_metrics(warehouse, spec, model))
    result.sources["metrics"] = "ML.EVALUATE on the evaluation split"
    if spec.evaluation == Evaluation.BINARY_CLASSIFICATION:
        classification_plots_data(warehouse, spec, model, result)
    if spec.evaluation in (Evaluation.CLUSTERING, Evaluation.ANOMALY_DETECTION):
        if spec.evaluation == Evaluation.ANOMALY_DETECTION:
            anomalies = warehouse.query(
                _template("anomalies", spec, model, {"contamination": spec.contamination})
            )
            result.anomalies = anomalies
            result.cluster_sizes = anomalies[["centroid_id", "row_count", "anomalies"]].copy()
            result.sources["cluster_sizes"] = (
                f"ML.DETECT_ANOMALIES (contamination {spec.contamination}) on all training rows"
            )
        else:
            result.cluster_sizes = warehouse.query(_template("cluster_sizes", spec, model))
            result.sources["cluster_sizes"] = "ML.PREDICT on all training rows"
        result.cluster_sizes["centroid_id"] = result.cluster_sizes["centroid_id"].astype(int)
    return result
