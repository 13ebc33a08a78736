"""The local BigQuery ML engine: the facade the SQL layer calls.

It knows nothing about SQL text: the BigQuery ML dialect (``lakehouse_ml/bigquery/dialect.py``)
parses statements and ``ML.*`` table functions; the SQL layer (``lakehouse_ml/engine/sql.py``)
evaluates input queries and ``TRANSFORM`` expressions on DuckDB, and hands this engine DataFrames.
The engine trains, stores and applies models with BigQuery ML's semantics and answers with Arrow
tables whose column names and types are BigQuery ML's.

Conventions:

* ``name``: a model name as the user wrote it, reduced by the SQL layer to a plain identifier
  (``churn_model``); models live in ``models_dir/<name>/``.
* ``options``: the ``OPTIONS(...)`` / ``STRUCT(...)`` values with lower-case keys and Python
  values (``str``, ``int``, ``float``, ``bool``, ``list``).
* Every failure is a :class:`BqmlError` that names the problem and what is supported; a failed
  ``create_model`` leaves no artifact behind.

Column names are matched case-insensitively, as in BigQuery. The reference page of each function
is linked next to its implementation; ``docs/bqml-coverage.md`` lists what runs locally.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost

from lakehouse_ml.bigquery.metrics import CLASSIFICATION_COLUMNS, KMEANS_COLUMNS, REGRESSION_COLUMNS
from lakehouse_ml.bigquery.metrics import classification as classification_metrics
from lakehouse_ml.bigquery.metrics import regression as regression_metrics
from lakehouse_ml.bigquery.model_types import Kind
from lakehouse_ml.bigquery.preprocess import Columns, Design, Preprocessor
from lakehouse_ml.bigquery.registry import deployed_model_message
from lakehouse_ml.bigquery.split import Split, split
from lakehouse_ml.bigquery.types import bigquery_type, string_key, to_float
from lakehouse_ml.core.errors import (
    BqmlError,
    ModelExistsError,
    ModelNotFoundError,
    VersionDeployedError,
    WarehouseError,
)
from lakehouse_ml.engine import options as opt
from lakehouse_ml.engine.artifacts import ModelStore, check_name
from lakehouse_ml.engine.models import tree
from lakehouse_ml.engine.models.base import (
    FAMILIES,
    ModelFamily,
    class_key,
    evaluation_arrays,
    family_of,
    list_of_structs,
)
from lakehouse_ml.engine.models.base import predicted_index as _predicted_index
from lakehouse_ml.engine.registry_hook import RegistryHook

__all__ = ["BqmlEngine", "BqmlError", "ModelExistsError", "ModelNotFoundError", "Progress"]

Progress = Callable[[str], None]

_REF = "https://cloud.google.com/bigquery/docs/reference/standard-sql/"
DOCS = {
    "predict": "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-predict",
    "evaluate": "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-evaluate",
    "detect_anomalies": _REF + "bigqueryml-syntax-detect-anomalies",
    "explain_predict": _REF + "bigqueryml-syntax-explain-predict",
    "global_explain": _REF + "bigqueryml-syntax-global-explain",
    "feature_info": "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-feature",
    "training_info": "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-train",
    "weights": "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-weights",
    "xai": "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-xai-overview",
    "e2e": "https://cloud.google.com/bigquery/docs/e2e-journey",
}


# Which model types each function accepts (the "End-to-end user journeys for ML models" page,
# DOCS["e2e"], restricted to the model types trained locally): each family declares its
# functions (ModelFamily.functions).
def function_model_types(function: str) -> list[str]:
    return [t for t, family in FAMILIES.items() if family.supports(t, function)]


_FUNCTION_NOTES = {
    "ML.DETECT_ANOMALIES": " (BigQuery also accepts ARIMA_PLUS, ARIMA_PLUS_XREG, PCA and AUTOENCODER models)",
    "ML.WEIGHTS": " (BigQuery also accepts MATRIX_FACTORIZATION; k-means centroids are ML.CENTROIDS, tree "
    "models have no weights function)",
    "ML.EXPLAIN_PREDICT": " (BigQuery also accepts DNN, wide-and-deep and AutoML models; k-means has no "
    "explanations)",
    "ML.GLOBAL_EXPLAIN": " (BigQuery also accepts DNN, wide-and-deep and AutoML models; k-means has no "
    "explanations)",
}

_LABEL_TYPES = {
    "INT64": pa.int64(),
    "STRING": pa.string(),
    "BOOL": pa.bool_(),
    "FLOAT64": pa.float64(),
    "NUMERIC": pa.float64(),
    "BIGNUMERIC": pa.float64(),
}


def _doc_error(function: str, model_type: str) -> BqmlError:
    allowed = function_model_types(function)
    return BqmlError(
        f"{function} does not support MODEL_TYPE {model_type}; it supports {', '.join(allowed)}"
        f"{_FUNCTION_NOTES.get(function, '')}."
    )


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _find(frame: pd.DataFrame, name: str) -> str | None:
    lower = name.lower()
    matches = [c for c in frame.columns if str(c).lower() == lower]
    if len(matches) > 1:
        raise BqmlError(
            f"Column name {name!r} is ambiguous: the input has {matches} (column names are case-insensitive)."
        )
    return matches[0] if matches else None


def _as_frame(data: Any) -> pd.DataFrame:
    if isinstance(data, pa.Table):
        return data.to_pandas()
    if not isinstance(data, pd.DataFrame):
        raise BqmlError(f"Expected a DataFrame of input rows, got {type(data).__name__}.")
    return data


def _native(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fn_options(
    function: str, options: Mapping[str, Any] | None, allowed: Mapping[str, Any]
) -> dict[str, Any]:
    given = {str(k).lower(): v for k, v in (options or {}).items()}
    unknown = sorted(k for k in given if k not in allowed)
    if unknown:
        raise BqmlError(
            f"{function} has no argument {', '.join(u.upper() for u in unknown)}; supported here: "
            f"{', '.join(a.upper() for a in allowed) or 'none'}."
        )
    return {k: given.get(k, default) for k, default in allowed.items()}


class _Model:
    """A model loaded from its artifacts."""

    def __init__(self, meta: dict, arrays: dict[str, np.ndarray], directory: Path, store: ModelStore):
        self.meta = meta
        self.arrays = arrays
        self.directory = directory
        self.model_type: str = meta["model_type"]
        self.family: ModelFamily = family_of(self.model_type)
        self.prep = Preprocessor.from_json(meta["preprocessing"])
        self.label: dict | None = meta.get("label")
        self._store = store
        self._booster: xgboost.Booster | None = None

    @property
    def booster(self) -> xgboost.Booster:
        """A tree model's XGBoost booster (read from its XGBoost JSON file when first used)."""
        if self._booster is None:
            self._booster = tree.load(self._store.read_file(self.directory, tree.BOOSTER_FILE))
        return self._booster

    @property
    def is_classifier(self) -> bool:
        return self.family.is_classifier(self.model_type)

    @property
    def classes(self) -> list[Any]:
        return list(self.label["classes"]) if self.label and self.label.get("classes") is not None else []

    @property
    def label_name(self) -> str:
        return self.label["name"]

    @property
    def label_arrow_type(self) -> pa.DataType:
        return _LABEL_TYPES.get(self.label["bq_type"], pa.string())

    def check_function(self, function: str) -> None:
        if not self.family.supports(self.model_type, function):
            raise _doc_error(function, self.model_type)

    def check_features(self, frame: pd.DataFrame, function: str) -> Columns:
        """The model's feature columns of ``frame`` (matched case-insensitively), under their
        training names."""
        mapping = {}
        missing = []
        for name in self.prep.feature_names:
            found = _find(frame, name)
            if found is None:
                missing.append(name)
            else:
                mapping[found] = name
        if missing:
            raise BqmlError(
                f"{function}: the input has no column {', '.join(repr(m) for m in missing)}; the model "
                f"{self.meta['name']!r} was trained on {', '.join(self.prep.feature_names)}."
            )
        return Columns({name: frame[found] for found, name in mapping.items()}, len(frame))

    # -- scores ------------------------------------------------------------------------------------
    def scores(self, features: pd.DataFrame) -> np.ndarray:
        """Regression values (n,), or class probabilities (n, C) in class order."""
        return self.family.scores(self, features)


_list_of_structs = list_of_structs


def _with_inputs(columns: list[tuple[str, pa.Array]], frame: pd.DataFrame) -> pa.Table:
    if not all(isinstance(c, str) for c in frame.columns):
        frame = frame.rename(columns=str)
    inputs = pa.Table.from_pandas(frame, preserve_index=False)
    arrays = [a for _, a in columns] + list(inputs.columns)
    names = [n for n, _ in columns] + list(inputs.column_names)
    return pa.Table.from_arrays(arrays, names=names)


class BqmlEngine:
    """Trains, stores and applies BigQuery ML models under ``models_dir``."""

    def __init__(self, models_dir: Path, registry: RegistryHook | None = None, dataset: str = "main"):
        """``registry``: the model registry (:class:`~lakehouse_ml.engine.registry_hook.RegistryHook`,
        e.g. the local backend's ``LocalModelRegistry``), or None. With one,
        ``MODEL_REGISTRY='VERTEX_AI'`` models register at CREATE MODEL, ``ALTER MODEL … SET
        OPTIONS(vertex_ai_model_id=…)`` registers an existing model, CREATE OR REPLACE replaces the
        registered version and DROP MODEL removes it (refused while deployed). Without one the
        registry options are only kept in the model's metadata. ``dataset`` names the models'
        dataset in the registered source (``bqml://<dataset>.<model>``)."""
        self.models_dir = Path(models_dir)
        self.store = ModelStore(self.models_dir)
        self._cache: dict[str, _Model] = {}
        self.registry: RegistryHook | None = registry
        self.dataset = dataset

    # -- registry hook ---------------------------------------------------------------------------
    def _source(self, name: str) -> str:
        return f"bqml://{self.dataset}.{name}"

    @staticmethod
    def _registered(meta: Mapping[str, Any]) -> bool:
        registry = meta.get("registry") or {}
        return registry.get("model_registry") == "VERTEX_AI" or registry.get("vertex_ai_model_id") is not None

    def _refuse_deployed(self, name: str) -> None:
        """BigQuery's FAILED_PRECONDITION when the registered version of ``name`` is deployed:
        replacing or dropping the model would delete that version."""
        try:
            self.registry.drop_bqml_model(self._source(name), check_only=True)
        except VersionDeployedError as err:
            raise BqmlError(
                deployed_model_message(err.endpoints)
                + f" (Model {name!r} is registered and that version is deployed: undeploy it, or create a model of "
                "another name with the same VERTEX_AI_MODEL_ID, which registers a new version.)"
            ) from None

    def _sync_registry(self, name: str, replaced_registered: bool) -> None:
        """After CREATE [OR REPLACE] MODEL: register the new model, replacing the old one's version."""
        if self.registry is None:
            return
        meta = self.model_metadata(name)
        registry = meta["registry"]
        model_id = None
        if registry.get("model_registry") == "VERTEX_AI":
            # VERTEX_AI_MODEL_ID: "If you don't specify a Vertex AI model ID, the BigQuery ML model
            # name is used" (opt.GLM_DOC, VERTEX_AI_MODEL_ID)
            model_id = registry.get("vertex_ai_model_id") or name
        if model_id is None and not replaced_registered:
            return
        try:
            self.registry.replace_bqml_version(
                self._source(name),
                model_id,
                model_type=meta["model_type"],
                artifact_dir=self.store.version_dir(name),
                aliases=registry.get("vertex_ai_model_version_aliases") or (),
                display_name=name,
                labels=(meta.get("descriptive") or {}).get("labels") or {},
                metrics=meta.get("evaluation") or {},
            )
        except WarehouseError as err:
            raise BqmlError(
                f"Model {name!r} was created, but registering it in the model registry failed: {err} "
                f"Fix that, then register it with ALTER MODEL {name} "
                f"SET OPTIONS(vertex_ai_model_id='{model_id or name}')."
            ) from None

    # -- loading -----------------------------------------------------------------------------------
    def _load(self, name: str) -> _Model:
        check_name(name)
        directory = self.store.version_dir(name)
        cached = self._cache.get(name)
        if cached is not None and cached.directory == directory:
            return cached
        meta, arrays, directory = self.store.load(name)
        model = _Model(meta, arrays, directory, self.store)
        self._cache[name] = model
        return model

    # -- statements ------------------------------------------------------------------------------
    def create_model(
        self,
        name: str,
        options: Mapping[str, Any],
        training: pd.DataFrame,
        *,
        replace: bool = False,
        if_not_exists: bool = False,
        transform_sql: str | None = None,
        progress: Progress | None = None,
        input_frame: pd.DataFrame | None = None,
    ) -> dict[str, Any]:
        """``CREATE [OR REPLACE] MODEL [IF NOT EXISTS]``: train on ``training`` (the rows of the
        AS query after any TRANSFORM) and store the model atomically. ``transform_sql`` (the
        TRANSFORM clause as BigQuery SQL) is kept with the model for the SQL layer. Returns the
        model's metadata (as :meth:`model_metadata`).

        ``input_frame``: with a TRANSFORM clause, the AS query's rows before the TRANSFORM;
        ML.FEATURE_INFO describes those columns ("If you used the TRANSFORM clause …,
        ML.FEATURE_INFO outputs the information of the pre-transform columns")."""
        check_name(name)
        if replace and if_not_exists:
            raise BqmlError("CREATE OR REPLACE MODEL cannot be combined with IF NOT EXISTS; use one of them.")
        if self.store.exists(name):
            if if_not_exists:
                return self.model_metadata(name)
            if not replace:
                raise ModelExistsError(
                    f"Model {name!r} already exists; use CREATE OR REPLACE MODEL to replace it, or "
                    "CREATE MODEL IF "
                    "NOT EXISTS to keep it."
                )
        say = progress or (lambda message: None)
        started = time.perf_counter()
        replaced_registered = (
            self.registry is not None
            and replace
            and self.store.exists(name)
            and self._registered(self.store.load_meta(name))
        )
        if replaced_registered:  # refused before any work: nothing is trained or written
            self._refuse_deployed(name)
        resolved = opt.resolve(options, FAMILIES)
        opt.check_model_name_for_vertex(name, resolved)
        given = {str(k).lower() for k, v in (options or {}).items() if v is not None}
        meta, arrays, files = _Trainer(
            name, resolved, given, _as_frame(training), transform_sql, input_frame, say
        ).run()
        meta["training_seconds"] = round(time.perf_counter() - started, 3)
        say(f"saving model {name}")
        try:
            self.store.save(name, meta, arrays, files, replace=replace)
        except ModelExistsError:
            if if_not_exists:
                return self.model_metadata(name)
            raise
        self._cache.pop(name, None)
        self._sync_registry(name, replaced_registered)
        say(f"model {name} created in {time.perf_counter() - started:.1f} s")
        return self.model_metadata(name)

    def drop_model(self, name: str, *, if_exists: bool = False) -> None:
        """``DROP MODEL [IF EXISTS]``."""
        check_name(name)
        self._cache.pop(name, None)
        registered = (
            self.registry is not None
            and self.store.exists(name)
            and self._registered(self.store.load_meta(name))
        )
        if registered:  # refused while its registered version is deployed
            self._refuse_deployed(name)
        dropped = self.store.drop(name)
        if dropped and registered:
            self.registry.drop_bqml_model(self._source(name))
        if not dropped and not if_exists:
            raise ModelNotFoundError(
                f"Model {name!r} not found; use DROP MODEL IF EXISTS to ignore a missing model."
            )

    def alter_model(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``ALTER MODEL … SET OPTIONS``: only the options BigQuery ML allows to change
        (https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-alter-model):
        VERTEX_AI_MODEL_ID (registers the model with Vertex AI under that ID), EXPIRATION_TIMESTAMP,
        KMS_KEY_NAME, DESCRIPTION, LABELS."""
        check_name(name)
        changes = opt.resolve_alter(options)
        register_as = changes.get("vertex_ai_model_id") if self.registry is not None else None
        if register_as is not None:
            self.store.version_dir(name)  # the model exists
            current = self.registry.find_bqml_version(self._source(name))
            if current is not None and current.model_id != register_as:
                raise BqmlError(
                    f"Model {name!r} is already registered as version {current.version_id} of {current.model_id!r}; "
                    "a BigQuery ML model can only be registered to one model ID. To register it elsewhere, "
                    f"CREATE OR REPLACE MODEL {name} with VERTEX_AI_MODEL_ID='{register_as}'."
                )
            if current is not None:
                register_as = None  # already registered there: nothing to do

        def change(meta: dict) -> dict:
            meta = dict(meta)
            registry = dict(meta.get("registry") or {})
            descriptive = dict(meta.get("descriptive") or {})
            for key, value in changes.items():
                if key == "vertex_ai_model_id":
                    registry["vertex_ai_model_id"] = value
                    if value is not None:
                        registry["model_registry"] = "VERTEX_AI"
                elif key == "kms_key_name":
                    meta["options"] = {**meta["options"], "kms_key_name": value}
                    descriptive[key] = value
                else:
                    descriptive[key] = value
            meta["registry"] = registry
            meta["descriptive"] = descriptive
            meta["last_modified_time"] = _now()
            return meta

        self.store.update_meta(name, change)
        self._cache.pop(name, None)
        meta = self.model_metadata(name)
        if register_as is not None:
            # "If you set it to a new ID …, the BigQuery ML model displays as model version 1 …; add the
            # existing model's ID - it automatically registers as the latest version." (update_vertex)
            self.registry.register_version(
                register_as,
                source=self._source(name),
                model_type=meta["model_type"],
                artifact_dir=self.store.version_dir(name),
                display_name=name,
                labels=meta["descriptive"].get("labels") or {},
                metrics=meta.get("evaluation") or {},
            )
        return meta

    def model_exists(self, name: str) -> bool:
        check_name(name)
        return self.store.exists(name)

    def model_metadata(self, name: str) -> dict[str, Any]:
        """model_type, options (with defaults), label column(s), feature columns and their types,
        transform_sql, registry options, creation time, training and evaluation summaries."""
        meta = self.store.load_meta(name)
        prep = meta["preprocessing"]
        label = meta.get("label")
        return {
            "name": meta["name"],
            "model_type": meta["model_type"],
            "options": meta["options"],
            "label_columns": [label["name"]] if label else [],
            "label_type": label["bq_type"] if label else None,
            "classes": label.get("classes") if label else None,
            "feature_columns": [{"name": f["name"], "type": f["bq_type"]} for f in prep["features"]],
            "transform_sql": meta.get("transform_sql"),
            "registry": meta.get("registry", {}),
            "descriptive": meta.get("descriptive", {}),
            "creation_time": meta["creation_time"],
            "last_modified_time": meta.get("last_modified_time", meta["creation_time"]),
            "data_split": meta["data_split"],
            "training": {
                "iterations": len(meta["training_info"]),
                "final_loss": meta["training_info"][-1]["loss"] if meta["training_info"] else None,
                "strategy": meta.get("strategy"),
                "seconds": meta.get("training_seconds"),
            },
            "evaluation": meta["evaluation"],
            "evaluation_rows": meta.get("evaluation_rows"),
            "path": str(self.store.link(name)),
            # changes with every CREATE OR REPLACE / ALTER (the published version directory)
            "version": self.store.version_dir(name).name,
        }

    # -- table functions -------------------------------------------------------------------------
    def predict(self, name: str, frame: pd.DataFrame, options: Mapping[str, Any] | None = None) -> pa.Table:
        """``ML.PREDICT``: prediction columns, then the input columns, as BigQuery ML outputs them.

        DOCS["predict"]: regression -> ``predicted_<label>`` (FLOAT64); classification ->
        ``predicted_<label>`` (the label's type) and ``predicted_<label>_probs``
        ``ARRAY<STRUCT<label, prob FLOAT64>>`` (labels in descending order, so a binary model's
        positive class comes first); k-means -> ``CENTROID_ID`` (INT64) and
        ``NEAREST_CENTROIDS_DISTANCE`` ``ARRAY<STRUCT<CENTROID_ID INT64, DISTANCE FLOAT64>>`` for
        the ``min(num_clusters, 5)`` nearest centroids. ``THRESHOLD`` (binary classifiers,
        default 0.5): "Predictions above the threshold are positive predictions"."""
        model = self._load(name)
        frame = _as_frame(frame)
        args = _fn_options("ML.PREDICT", options, {"threshold": None})
        threshold = self._threshold(model, args["threshold"], "ML.PREDICT")
        features = model.check_features(frame, "ML.PREDICT")
        n = len(frame)
        columns = model.family.predict_columns(model, features)
        if columns is not None:
            return _with_inputs(columns, frame)
        scores = model.scores(features)
        label = model.label_name
        if not model.is_classifier:
            return _with_inputs([(f"predicted_{label}", pa.array(scores, type=pa.float64()))], frame)
        return _with_inputs(self._class_columns(model, scores, threshold, n), frame)

    def centroid_distances(self, name: str, frame: pd.DataFrame) -> np.ndarray:
        """A k-means model's distance from each row of ``frame`` to every centroid, (rows,
        centroids) in centroid-id order: what the model's served predictions carry
        (``centroid_distances``), in the space ``ML.PREDICT``'s distances are measured in."""
        model = self._load(name)
        if model.family.kind(model.model_type) is not Kind.CLUSTERING:
            clustering = [t for t, f in FAMILIES.items() if f.kind(t) is Kind.CLUSTERING]
            raise BqmlError(
                f"Model {name!r} is a {model.model_type} model; centroid distances need a k-means model "
                f"({', '.join(clustering)})."
            )
        return model.family.centroid_distances(model, model.check_features(_as_frame(frame), "ML.PREDICT"))

    def _class_columns(self, model: _Model, probs: np.ndarray, threshold: float | None, n: int) -> list:
        label = model.label_name
        classes = pa.array(model.classes, type=model.label_arrow_type)
        predicted = classes.take(pa.array(_predicted_index(probs, threshold)))
        order = np.arange(len(model.classes))[::-1]  # descending label order
        k = len(order)
        probs_column = _list_of_structs(
            n,
            k,
            {
                "label": classes.take(pa.array(np.tile(order, n))),
                "prob": pa.array(probs[:, order].ravel(), type=pa.float64()),
            },
        )
        return [(f"predicted_{label}", predicted), (f"predicted_{label}_probs", probs_column)]

    @staticmethod
    def _threshold(model: _Model, value: Any, function: str) -> float | None:
        if value is None:
            return None
        if not model.is_classifier or len(model.classes) != 2:
            raise BqmlError(
                f"{function}: THRESHOLD applies to binary classification models only; "
                f"{model.meta['name']!r} is {model.model_type}"
                + (f" with {len(model.classes)} classes." if model.is_classifier else ".")
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise BqmlError(f"{function}: THRESHOLD must be a FLOAT64 between 0 and 1; got {value!r}.")
        return float(value)

    def evaluate(
        self, name: str, frame: pd.DataFrame | None, options: Mapping[str, Any] | None = None
    ) -> pa.Table:
        """``ML.EVALUATE``: on ``frame``, or on the evaluation split of training when None.

        DOCS["evaluate"]: "If you don't specify a table or query to provide input data, the
        evaluation metrics that are generated for the model during training are returned" (the
        evaluation split, or the training rows when there is none). THRESHOLD needs input data
        ("You must specify a value for either the TABLE or QUERY_STATEMENT argument in order to
        specify a threshold") and a binary classifier."""
        model = self._load(name)
        args = _fn_options("ML.EVALUATE", options, {"threshold": None})
        if frame is None:
            if args["threshold"] is not None:
                raise BqmlError(
                    "ML.EVALUATE: THRESHOLD needs input data (a TABLE or a query); without input data the "
                    "metrics computed at training are returned."
                )
            return _metrics_table(model, model.meta["evaluation"])
        threshold = self._threshold(model, args["threshold"], "ML.EVALUATE")
        frame = _as_frame(frame)
        features = model.check_features(frame, "ML.EVALUATE")
        metrics = model.family.evaluate(model, features)
        if metrics is not None:
            return _metrics_table(model, metrics)
        label_col = _find(frame, model.label_name)
        if label_col is None:
            raise BqmlError(
                f"ML.EVALUATE: the input has no label column {model.label_name!r}; the evaluation data "
                "must contain the label column the model was trained with."
            )
        labels = frame[label_col]
        keep = ~labels.isna().to_numpy()
        if not keep.all():
            features = Columns({c: features[c][keep] for c in features.columns}, int(keep.sum()))
            labels = labels[keep]
        if len(labels) == 0:
            raise BqmlError("ML.EVALUATE: the input has no row with a non-NULL label.")
        scores = model.scores(features)
        if model.is_classifier:
            y = _class_indices(labels, model.classes, model.label["bq_type"])
            metrics = classification_metrics(y, scores, 0.5 if threshold is None else threshold)
        else:
            metrics = regression_metrics(to_float(labels, model.label_name), scores)
        return _metrics_table(model, metrics)

    def _classification_inputs(
        self, model: _Model, frame: pd.DataFrame | None, function: str, threshold: float | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, pd.Series | None]:
        """(label index, predicted index, positive-class probability or None, labels as given)."""
        if not model.is_classifier:
            raise BqmlError(
                f"{function} applies to classification models ({', '.join(function_model_types(function))}); "
                f"{model.meta['name']!r} is {model.model_type}."
            )
        if frame is None:
            if threshold is not None:
                raise BqmlError(f"{function}: THRESHOLD needs input data (a TABLE or a query).")
            a = model.arrays
            return a["eval_label_index"], a["eval_predicted_index"], a.get("eval_positive_prob"), None
        frame = _as_frame(frame)
        features = model.check_features(frame, function)
        label_col = _find(frame, model.label_name)
        if label_col is None:
            raise BqmlError(f"{function}: the input has no label column {model.label_name!r}.")
        labels = frame[label_col]
        keep = ~labels.isna().to_numpy()
        if not keep.all():
            features = Columns({c: features[c][keep] for c in features.columns}, int(keep.sum()))
            labels = labels[keep]
        probs = model.scores(features)
        y = _class_indices(labels, model.classes, model.label["bq_type"])
        positive = probs[:, 1] if probs.shape[1] == 2 else None
        return y, _predicted_index(probs, threshold), positive, labels

    def roc_curve(
        self, name: str, frame: pd.DataFrame | None, options: Mapping[str, Any] | None = None
    ) -> pa.Table:
        """``ML.ROC_CURVE`` for binary classifiers
        (https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-roc):
        threshold, recall, false_positive_rate (FLOAT64), true_positives, false_positives,
        true_negatives, false_negatives (INT64), one row per threshold, thresholds ascending.
        Without ``thresholds`` (``GENERATE_ARRAY(...)``) the thresholds are the percentiles
        0, 1, …, 100 of the positive-class probabilities. Without input data: the evaluation split
        (or the training rows when there was no split). A row is positive when its probability is
        above the threshold."""
        model = self._load(name)
        args = _fn_options("ML.ROC_CURVE", options, {"thresholds": None})
        y, _, positive, _ = self._classification_inputs(model, frame, "ML.ROC_CURVE", None)
        if positive is None:
            raise BqmlError(
                "ML.ROC_CURVE applies to binary classification models; "
                f"{model.meta['name']!r} has {len(model.classes)} classes."
            )
        if args["thresholds"] is not None:
            values = args["thresholds"]
            if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise BqmlError(
                    "ML.ROC_CURVE: THRESHOLDS must be an ARRAY<FLOAT64> (GENERATE_ARRAY(start, end, step))."
                )
            thresholds = np.unique(np.asarray(values, dtype=np.float64))
        else:
            thresholds = (
                np.unique(np.quantile(positive, np.linspace(0.0, 1.0, 101))) if len(positive) else np.zeros(0)
            )
        actual = y == 1
        # rows above each threshold, among positives and negatives
        pos_scores = np.sort(positive[actual])
        neg_scores = np.sort(positive[~actual])
        tp = len(pos_scores) - np.searchsorted(pos_scores, thresholds, side="right")
        fp = len(neg_scores) - np.searchsorted(neg_scores, thresholds, side="right")
        fn = len(pos_scores) - tp
        tn = len(neg_scores) - fp
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
            fpr = np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1), np.nan)
        return pa.table(
            {
                "threshold": pa.array(thresholds, type=pa.float64()),
                "recall": pa.array(recall, type=pa.float64()),
                "false_positive_rate": pa.array(fpr, type=pa.float64()),
                "true_positives": pa.array(tp, type=pa.int64()),
                "false_positives": pa.array(fp, type=pa.int64()),
                "true_negatives": pa.array(tn, type=pa.int64()),
                "false_negatives": pa.array(fn, type=pa.int64()),
            }
        )

    def confusion_matrix(
        self, name: str, frame: pd.DataFrame | None, options: Mapping[str, Any] | None = None
    ) -> pa.Table:
        """``ML.CONFUSION_MATRIX``
        (https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-confusion):
        ``expected_label`` (one row per label value of the evaluation data, ascending, as passed
        in), then one INT64 column per class of the model in ascending label order, named after
        the label (made a valid column name: 0 and 1 become _0 and _1)."""
        model = self._load(name)
        args = _fn_options("ML.CONFUSION_MATRIX", options, {"threshold": None})
        threshold = self._threshold(model, args["threshold"], "ML.CONFUSION_MATRIX")
        y, predicted, _, labels = self._classification_inputs(model, frame, "ML.CONFUSION_MATRIX", threshold)
        classes = model.classes
        if labels is None:
            present, row_of = np.unique(y, return_inverse=True)
            expected_values = [classes[i] for i in present]
            expected_type = model.label_arrow_type
        else:
            row_of, uniques = pd.factorize(labels, sort=True)
            expected_values = [
                _native(u) for u in (uniques.tolist() if hasattr(uniques, "tolist") else list(uniques))
            ]
            expected_type = pa.array(labels.iloc[:1]).type if len(labels) else model.label_arrow_type
        k = len(classes)
        counts = np.bincount(
            np.asarray(row_of, dtype=np.int64) * k + predicted, minlength=len(expected_values) * k
        ).reshape(len(expected_values), k)
        columns: dict[str, pa.Array] = {"expected_label": pa.array(expected_values, type=expected_type)}
        used: set[str] = {"expected_label"}
        for j, cls in enumerate(classes):
            column = _column_name(cls)
            while column in used:
                column += "_"
            used.add(column)
            columns[column] = pa.array(counts[:, j], type=pa.int64())
        return pa.table(columns)

    def detect_anomalies(
        self, name: str, frame: pd.DataFrame | None, options: Mapping[str, Any] | None = None
    ) -> pa.Table:
        """``ML.DETECT_ANOMALIES`` for k-means: ``is_anomaly`` (BOOL), ``normalized_distance``
        (FLOAT64), ``CENTROID_ID`` (INT64), then the input columns (DOCS["detect_anomalies"]).
        ``CONTAMINATION`` (required, in [0, 0.5]) is the proportion of anomalies assumed in the
        training data: the cutoff is the ``1 - contamination`` quantile of the training rows'
        normalized distances; rows above it are anomalies."""
        model = self._load(name)
        model.check_function("ML.DETECT_ANOMALIES")
        args = _fn_options("ML.DETECT_ANOMALIES", options, {"contamination": None})
        contamination = args["contamination"]
        if contamination is None:
            raise BqmlError(
                "ML.DETECT_ANOMALIES on a k-means model needs STRUCT(<contamination> AS contamination), "
                "the proportion of anomalies in the training data, between 0 and 0.5."
            )
        if (
            isinstance(contamination, bool)
            or not isinstance(contamination, (int, float))
            or not 0 <= contamination <= 0.5
        ):
            raise BqmlError(
                f"ML.DETECT_ANOMALIES: CONTAMINATION must be a FLOAT64 in [0, 0.5]; got {contamination!r}."
            )
        if frame is None:
            raise BqmlError(
                "ML.DETECT_ANOMALIES on a k-means model needs input data (a TABLE or a query); only "
                "time series models detect anomalies in their training data."
            )
        frame = _as_frame(frame)
        features = model.check_features(frame, "ML.DETECT_ANOMALIES")
        columns = model.family.detect_anomalies(model, features, float(contamination))
        return _with_inputs(columns, frame)

    def explain_predict(
        self, name: str, frame: pd.DataFrame, options: Mapping[str, Any] | None = None
    ) -> pa.Table:
        """``ML.EXPLAIN_PREDICT`` (DOCS["explain_predict"]): ``predicted_<label>``,
        ``probability`` (classifiers), ``top_feature_attributions``
        ``ARRAY<STRUCT<feature STRING, attribution FLOAT64>>`` (the ``TOP_K_FEATURES``, default 5,
        largest by absolute value), ``baseline_prediction_value``, ``prediction_value``,
        ``approximation_error``, then the input columns. Linear models: Shapley values
        ``weight × standardized value`` per processed input, baseline = intercept; trees: Tree
        SHAP, baseline = bias. Classifiers explain the predicted class in logit space."""
        model = self._load(name)
        model.check_function("ML.EXPLAIN_PREDICT")
        args = _fn_options(
            "ML.EXPLAIN_PREDICT",
            options,
            {"top_k_features": 5, "threshold": None, **model.family.explain_arguments},
        )
        top_k = args["top_k_features"]
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise BqmlError(f"ML.EXPLAIN_PREDICT: TOP_K_FEATURES must be a positive INT64; got {top_k!r}.")
        approximate = model.family.explain_approximation(args)
        threshold = self._threshold(model, args["threshold"], "ML.EXPLAIN_PREDICT")
        frame = _as_frame(frame)
        features = model.check_features(frame, "ML.EXPLAIN_PREDICT")
        n = len(frame)
        ex = model.family.explain(model, features, threshold, approximate)
        names = pa.array(ex.names, type=pa.string())
        k = min(top_k, len(ex.names))
        order = np.argsort(-np.abs(ex.attributions), axis=1, kind="stable")[:, :k]
        top_attr = np.take_along_axis(ex.attributions, order, axis=1)
        columns: list[tuple[str, pa.Array]] = []
        label = model.label_name
        if model.is_classifier:
            classes = pa.array(model.classes, type=model.label_arrow_type)
            columns.append((f"predicted_{label}", classes.take(pa.array(ex.predicted))))
            columns.append(("probability", pa.array(ex.probability, type=pa.float64())))
        else:
            columns.append((f"predicted_{label}", pa.array(ex.prediction, type=pa.float64())))
        columns.append(
            (
                "top_feature_attributions",
                _list_of_structs(
                    n,
                    k,
                    {
                        "feature": names.take(pa.array(order.ravel())),
                        "attribution": pa.array(top_attr.ravel(), type=pa.float64()),
                    },
                ),
            )
        )
        diff = ex.prediction - ex.baseline
        with np.errstate(invalid="ignore", divide="ignore"):
            error = np.abs(diff - ex.attributions.sum(axis=1)) / np.abs(diff)
        error = np.where(np.abs(diff) > 0, error, 0.0)
        # Exact methods (linear Shapley values, Tree SHAP) have no approximation error (page: "this
        # column value is 0"); floating-point round-off is reported as 0.
        error = np.where(error < 1e-9, 0.0, error)
        columns += [
            ("baseline_prediction_value", pa.array(ex.baseline, type=pa.float64())),
            ("prediction_value", pa.array(ex.prediction, type=pa.float64())),
            ("approximation_error", pa.array(error, type=pa.float64())),
        ]
        return _with_inputs(columns, frame)

    def global_explain(self, name: str, options: Mapping[str, Any] | None = None) -> pa.Table:
        """``ML.GLOBAL_EXPLAIN`` (DOCS["global_explain"]): the mean absolute attribution of each
        feature over the evaluation rows, computed at training when ENABLE_GLOBAL_EXPLAIN=TRUE.
        ``feature``, ``attribution`` (descending); with ``CLASS_LEVEL_EXPLAIN`` on a classifier,
        ``class_label``, ``feature``, ``attribution`` with the top 10 features of each class."""
        model = self._load(name)
        model.check_function("ML.GLOBAL_EXPLAIN")
        args = _fn_options("ML.GLOBAL_EXPLAIN", options, {"class_level_explain": False})
        if not isinstance(args["class_level_explain"], bool):
            raise BqmlError("ML.GLOBAL_EXPLAIN: CLASS_LEVEL_EXPLAIN must be TRUE or FALSE.")
        explained = model.meta.get("global_explain")
        if not model.meta["options"].get("enable_global_explain") or explained is None:
            raise BqmlError(
                "ML.GLOBAL_EXPLAIN needs a model trained with ENABLE_GLOBAL_EXPLAIN=TRUE; "
                f"{model.meta['name']!r} was "
                "not. Retrain it with CREATE OR REPLACE MODEL … OPTIONS(…, ENABLE_GLOBAL_EXPLAIN=TRUE)."
            )
        if args["class_level_explain"] and model.is_classifier:
            rows = [(cls, f, a) for cls, items in explained["by_class"] for f, a in items]
            return pa.table(
                {
                    "class_label": pa.array([r[0] for r in rows], type=pa.string()),
                    "feature": pa.array([r[1] for r in rows], type=pa.string()),
                    "attribution": pa.array([r[2] for r in rows], type=pa.float64()),
                }
            )
        return pa.table(
            {
                "feature": pa.array([f for f, _ in explained["overall"]], type=pa.string()),
                "attribution": pa.array([a for _, a in explained["overall"]], type=pa.float64()),
            }
        )

    def feature_info(self, name: str) -> pa.Table:
        """``ML.FEATURE_INFO`` (DOCS["feature_info"]): input, min, max, mean, median, stddev
        (FLOAT64, NULL for non-numeric inputs), category_count (INT64, NULL for non-categorical),
        null_count (INT64), dimension (INT64, NULL: ARRAY<STRUCT> inputs are not supported)."""
        model = self._load(name)
        infos = model.prep.feature_info()
        stats = [f.stats for f in infos]
        return pa.table(
            {
                "input": pa.array([f.name for f in infos], type=pa.string()),
                **{
                    key: pa.array([s.get(key) for s in stats], type=pa.float64())
                    for key in ("min", "max", "mean", "median", "stddev")
                },
                **{
                    key: pa.array([s.get(key) for s in stats], type=pa.int64())
                    for key in ("category_count", "null_count", "dimension")
                },
            }
        )

    def training_info(self, name: str) -> pa.Table:
        """``ML.TRAINING_INFO`` (DOCS["training_info"]): training_run, iteration, loss, eval_loss,
        learning_rate, duration_ms; k-means: no eval_loss, plus cluster_info
        ``ARRAY<STRUCT<centroid_id INT64, cluster_radius FLOAT64, cluster_size INT64>>``. Latest
        iteration first, as in the page's example."""
        model = self._load(name)
        rows = list(reversed(model.meta["training_info"]))
        columns: dict[str, pa.Array] = {
            "training_run": pa.array([0] * len(rows), type=pa.int64()),
            "iteration": pa.array([r["iteration"] for r in rows], type=pa.int64()),
            "loss": pa.array([r["loss"] for r in rows], type=pa.float64()),
        }
        clustering = model.family.kind(model.model_type) is Kind.CLUSTERING
        if not clustering:
            columns["eval_loss"] = pa.array([r.get("eval_loss") for r in rows], type=pa.float64())
        columns["learning_rate"] = pa.array([r.get("learning_rate") for r in rows], type=pa.float64())
        columns["duration_ms"] = pa.array([r.get("duration_ms") for r in rows], type=pa.int64())
        if clustering:
            columns["cluster_info"] = pa.array(
                [r["cluster_info"] for r in rows],
                type=pa.list_(
                    pa.struct(
                        [
                            ("centroid_id", pa.int64()),
                            ("cluster_radius", pa.float64()),
                            ("cluster_size", pa.int64()),
                        ]
                    )
                ),
            )
        return pa.table(columns)

    def weights(self, name: str, options: Mapping[str, Any] | None = None) -> pa.Table:
        """``ML.WEIGHTS`` (DOCS["weights"]) for linear and logistic regression: processed_input,
        weight (numeric inputs and the ``__INTERCEPT__`` row; NULL for one-hot inputs),
        category_weights ``ARRAY<STRUCT<category STRING, weight FLOAT64>>`` (one-hot inputs; the
        NULL category has a NULL name), and class_label for multiclass models (one row per
        class and input). ``STANDARDIZE`` (default FALSE): FALSE gives the weights on the original
        feature scale, TRUE the weights of the standardized features."""
        model = self._load(name)
        model.check_function("ML.WEIGHTS")
        args = _fn_options("ML.WEIGHTS", options, {"standardize": False})
        if not isinstance(args["standardize"], bool):
            raise BqmlError("ML.WEIGHTS: STANDARDIZE must be TRUE or FALSE.")
        return model.family.weights(model, args["standardize"])


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
class _Trainer:
    def __init__(
        self,
        name: str,
        options: dict,
        given: set[str],
        frame: pd.DataFrame,
        transform_sql: str | None,
        input_frame: pd.DataFrame | None,
        say: Progress,
    ):
        self.name = name
        self.o = options
        self.given = given
        self.frame = frame
        self.transform_sql = transform_sql
        self.input_frame = input_frame
        self.say = say
        self.model_type = options["model_type"]
        self.family = family_of(self.model_type)
        # Set by run() for the family's train(): the training context.
        self.meta: dict[str, Any] = {}
        self.prep: Preprocessor | None = None
        self.y_all: np.ndarray | None = None
        self.data_split: Split | None = None
        self.init_col: str | None = None
        self.weight_col: str | None = None

    def _column(self, option: str, value: str | None, what: str) -> str | None:
        if value is None:
            return None
        found = _find(self.frame, value)
        if found is None:
            raise BqmlError(
                f"{option.upper()} names column {value!r} ({what}), but the training query has no such "
                "column; its "
                f"columns are {', '.join(map(str, self.frame.columns))}."
            )
        return found

    def run(self) -> tuple[dict, dict[str, np.ndarray], dict[str, bytes]]:
        o, frame, model_type = self.o, self.frame, self.model_type
        if len(frame) == 0:
            raise BqmlError(
                f"CREATE MODEL {self.name}: the training query returned no rows (empty training set)."
            )
        family = self.family
        supervised = family.is_supervised(model_type)
        label_col = (
            self._column("input_label_cols", o["input_label_cols"][0], "the label") if supervised else None
        )
        split_col = self._column("data_split_col", o.get("data_split_col"), "the data split column")
        init_col = self._column("kmeans_init_col", o.get("kmeans_init_col"), "the initial centroids")
        weight_col = self._column("instance_weight_col", o.get("instance_weight_col"), "the instance weights")
        special = {c for c in (label_col, split_col, init_col, weight_col) if c is not None}
        features = [c for c in frame.columns if c not in special]
        if not features:
            raise BqmlError(
                f"CREATE MODEL {self.name}: the training query has no feature column besides "
                f"{', '.join(map(str, special))}."
            )
        if len({str(c).lower() for c in frame.columns}) != frame.shape[1]:
            raise BqmlError(
                "The training query has two columns whose names differ only in case; BigQuery column "
                "names are case-insensitive."
            )

        # Label.
        label_meta: dict | None = None
        y_all = None
        if supervised:
            label_meta, y_all = self._label(frame[label_col], str(label_col))

        # Preprocessing statistics over the original input data (all rows).
        mode = family.preprocessing
        stats_columns = None
        if self.input_frame is not None:
            skip = {str(c).lower() for c in special}
            stats_columns = [c for c in self.input_frame.columns if str(c).lower() not in skip]
        prep = Preprocessor.fit(
            frame,
            features,
            mode,
            standardize=o.get("standardize_features", True),
            dummy_encoding=o.get("category_encoding_method") == "DUMMY_ENCODING",
            stats_frame=self.input_frame,
            stats_columns=stats_columns,
        )
        # Split (k-means has none: "K-means is an unsupervised learning technique, so model
        # training does not require labels or split data").
        if not family.splits:
            data_split = Split("NO_SPLIT", np.zeros(len(frame), dtype=bool))
        else:
            fraction = o["data_split_eval_fraction"] if "data_split_eval_fraction" in self.given else None
            data_split = split(frame, o["data_split_method"], fraction, split_col, prep._fitted_codes)
        train_mask = ~data_split.eval_mask
        if not train_mask.any():
            raise BqmlError(
                f"CREATE MODEL {self.name}: DATA_SPLIT_METHOD='{data_split.method}' left no training rows "
                "(empty training set); every row went to evaluation."
            )
        self.say(
            f"{len(frame):,} input rows: {data_split.train_rows:,} for training, "
            f"{data_split.eval_rows:,} for "
            f"evaluation ({data_split.method})"
        )

        meta: dict[str, Any] = {
            "name": self.name,
            "model_type": model_type,
            "options": {k: v for k, v in o.items() if k not in opt.REGISTRY_OPTIONS},
            "registry": {k: o.get(k) for k in opt.REGISTRY_OPTIONS},
            "descriptive": {"kms_key_name": o.get("kms_key_name")},
            "label": label_meta,
            "special_columns": {
                "data_split_col": split_col,
                "kmeans_init_col": init_col,
                "instance_weight_col": weight_col,
            },
            "transform_sql": self.transform_sql,
            "creation_time": _now(),
            "data_split": data_split.summary(),
            "preprocessing": prep.to_json(),
        }
        self.say(f"training {model_type}")
        self.meta, self.prep, self.y_all, self.data_split = meta, prep, y_all, data_split
        self.init_col, self.weight_col = init_col, weight_col
        arrays, files = family.train(self)
        return meta, arrays, files

    # -- for the families' train() -------------------------------------------------------------------
    def view(self, arrays: dict[str, np.ndarray], booster: xgboost.Booster | None = None) -> "_TrainedView":
        """The model being trained, with the interface of a loaded one (for explanations)."""
        return _TrainedView(self.meta, arrays, self.prep, booster)

    @staticmethod
    def global_explain(model: "_Model", prepared: Design | np.ndarray, approximate: bool = False) -> dict:
        """ML.GLOBAL_EXPLAIN's attributions over ``prepared`` (rows in the family's preprocessed
        form), stored with the model."""
        return _global_explain(model, prepared, approximate)

    # -- labels ------------------------------------------------------------------------------------
    def _label(self, series: pd.Series, name: str) -> tuple[dict, np.ndarray]:
        bq_type = bigquery_type(series)
        nulls = int(series.isna().sum())
        if nulls:
            raise BqmlError(
                f"The label column {name!r} has {nulls:,} NULL value(s); BigQuery ML needs a label on every "
                f"training row. Filter them out (WHERE {name} IS NOT NULL)."
            )
        if self.family.kind(self.model_type) is Kind.REGRESSOR:
            if bq_type not in ("INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC"):
                raise BqmlError(f"{self.model_type} needs a numeric label; column {name!r} is {bq_type}.")
            y = to_float(series, name)
            if not np.isfinite(y).all():
                raise BqmlError(
                    f"The label column {name!r} has +/- infinity or NaN values; {self.model_type} labels "
                    "must be real-valued."
                )
            return {"name": name, "bq_type": "FLOAT64" if bq_type != "INT64" else bq_type, "classes": None}, y
        if bq_type not in ("STRING", "INT64", "BOOL", "FLOAT64", "NUMERIC"):
            raise BqmlError(
                f"{self.model_type} needs a STRING, INT64, BOOL or FLOAT64 label; column {name!r} is "
                f"{bq_type}."
            )
        codes, uniques = pd.factorize(series)
        values = [_native(u) for u in (uniques.tolist() if hasattr(uniques, "tolist") else list(uniques))]
        if bq_type in ("FLOAT64", "NUMERIC"):
            values = [float(v) for v in values]
            bq_type = "FLOAT64"
        order = sorted(range(len(values)), key=lambda i: values[i])
        classes = [values[i] for i in order]
        if len(classes) < 2:
            raise BqmlError(
                f"{self.model_type} needs at least two distinct label values; the label column {name!r} "
                f"has only {classes[0]!r} (one-class label). Check the training query's filter, or use a "
                "regression model."
            )
        limit = self.family.max_classes
        if limit is not None and len(classes) > limit:
            raise BqmlError(
                f"{self.model_type} supports up to {limit} label values; column {name!r} has {len(classes)}."
            )
        rank = np.empty(len(values), dtype=np.int64)
        rank[order] = np.arange(len(values))
        y = rank[codes]
        names = [string_key(c, bq_type) for c in classes]
        return {"name": name, "bq_type": bq_type, "classes": classes, "class_names": names}, y


_evaluation_arrays = evaluation_arrays


def _column_name(label: Any) -> str:
    """A class label as a column name (CONFUSION_MATRIX page: labels that don't conform to the
    column naming rules are altered to conform, e.g. 0 and 1 become _0 and _1)."""
    text = re.sub(r"[^A-Za-z0-9_]", "_", class_key(label))
    return text if text and (text[0].isalpha() or text[0] == "_") else "_" + text


class _TrainedView(_Model):
    """A model still in memory (during CREATE MODEL), with the interface of :class:`_Model`."""

    def __init__(
        self,
        meta: dict,
        arrays: dict[str, np.ndarray],
        prep: Preprocessor,
        booster: xgboost.Booster | None = None,
    ):
        self.meta = meta
        self.arrays = arrays
        self.model_type = meta["model_type"]
        self.family = family_of(self.model_type)
        self.prep = prep
        self.label = meta.get("label")
        self._booster = booster


def _class_indices(labels: pd.Series, classes: list[Any], bq_type: str) -> np.ndarray:
    codes, uniques = pd.factorize(labels)
    index = {string_key(c, bq_type): i for i, c in enumerate(classes)}
    values = [_native(u) for u in (uniques.tolist() if hasattr(uniques, "tolist") else list(uniques))]
    lookup = np.array(
        [
            index.get(
                string_key(float(v) if bq_type == "FLOAT64" and not isinstance(v, str) else v, bq_type), -1
            )
            for v in values
        ]
        + [-1],
        dtype=np.int64,
    )
    return lookup[codes]


_METRIC_COLUMNS = {
    Kind.CLUSTERING: KMEANS_COLUMNS,
    Kind.CLASSIFIER: CLASSIFICATION_COLUMNS,
    Kind.REGRESSOR: REGRESSION_COLUMNS,
}


def _metrics_table(model: _Model, metrics: Mapping[str, Any]) -> pa.Table:
    columns = _METRIC_COLUMNS[model.family.kind(model.model_type)]
    return pa.table({c: pa.array([metrics.get(c)], type=pa.float64()) for c in columns})


# --------------------------------------------------------------------------------------------------
# ML.GLOBAL_EXPLAIN, at training
# --------------------------------------------------------------------------------------------------
def _global_explain(model: _Model, prepared: Design | np.ndarray, approximate: bool = False) -> dict:
    """Mean absolute attribution per feature over the evaluation rows (XAI overview page:
    "ML.GLOBAL_EXPLAIN returns the global explainability obtained by taking the mean absolute
    attribution that each feature receives for all the rows in the evaluation dataset")."""
    ex = model.family.explain(
        model, None, None, approximate, prepared=prepared, class_level=model.is_classifier
    )
    mean_abs = np.abs(ex.attributions).mean(axis=0) if ex.attributions.shape[0] else np.zeros(len(ex.names))
    order = np.argsort(-mean_abs, kind="stable")
    result: dict[str, Any] = {"overall": [[ex.names[i], float(mean_abs[i])] for i in order], "by_class": []}
    if ex.per_class is not None:
        for c, attr in enumerate(ex.per_class):
            values = np.abs(attr).mean(axis=0)
            top = np.argsort(-values, kind="stable")[:10]  # "only the top 10 most important features"
            result["by_class"].append(
                [model.label["class_names"][c], [[ex.names[i], float(values[i])] for i in top]]
            )
    return result
