"""Served predictions of BigQuery ML models: what a Vertex AI endpoint answers and takes.

A BigQuery ML model deployed from the Vertex AI Model Registry (``MODEL_REGISTRY='VERTEX_AI'``)
answers ``:predict`` in the export serving signature of its model type: the *Prediction output
format* section of the "Export models" page (https://cloud.google.com/bigquery/docs/exporting-models).
``docs/serving-format.md`` is the table, field by field, with every source. In short, for a label
column ``<label>``:

* LOGISTIC_REG, BOOSTED_TREE_CLASSIFIER, RANDOM_FOREST_CLASSIFIER: ``predicted_<label>``, a
  one-element list holding the predicted class as a STRING (the page types it ``STRING``; its
  sample and every real response show ``['b']``); ``<label>_values``, the classes as STRINGs
  (an INT64 label answers ``['1', '0']``, a BOOL label ``'true'``/``'false'`` as BigQuery casts
  BOOL to STRING); ``<label>_probs``, their probabilities, aligned with ``<label>_values``. The
  classes come in the model's own order, which is not sorted (a real penguins response lists
  Gentoo, Adelie, Chinstrap): read a probability by its class, never by position.
* LINEAR_REG, BOOSTED_TREE_REGRESSOR, RANDOM_FOREST_REGRESSOR: ``predicted_<label>``, a
  one-element list holding a FLOAT (the page's sample ``[1.8]``).
* KMEANS: ``nearest_centroid_id``, a one-element list holding an INT64 (sample ``[1]``);
  ``centroid_ids``, every centroid's id in ascending order; ``centroid_distances``, the distance
  to each, aligned with ``centroid_ids`` (not sorted: a real 4-cluster response answers
  ``[17.1, 142.3, 14.7, 15.7]`` for ids ``[1, 2, 3, 4]`` and nearest ``[3]``).

Instances are JSON objects keyed by feature name. "Input should generally match that used for
BigQuery ML ``ML.PREDICT``. All numerical values in the exported model signatures are cast as
data type ``FLOAT64``" (the same page). NULL, for a model created with a ``TRANSFORM`` clause, is
sent as the sentinel of the input's type (*Supported data types*, the ``NULL`` row):
``123456789.0e10`` (FLOAT64), ``1234567890000000000`` (INT64), ``' __MISSING__ '`` (STRING and the
types sent as strings). Both numbers are the same double, which is how a JSON number reaches the
service (a protobuf ``Value``). The page documents no BOOL sentinel, so a NULL BOOL input of a
TRANSFORM model cannot be sent. For a model without ``TRANSFORM`` the page says nothing about
NULL; JSON ``null`` is ``ML.PREDICT``'s NULL there (not verified on Vertex AI: ``lakehouse-ml
gcp-check`` sends one and saves what comes back).

:class:`PredictionFormat` builds nothing: it parses a served prediction back into Python values
(labels in the label's type) and checks it. The local endpoint server builds its answers with
:func:`classification_objects`, :func:`regression_objects` and :func:`clustering_objects`.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

# Live views of the catalog (lakehouse_ml/bigquery/model_types.py): a family that registers a
# served type is served in the format of its kind.
from lakehouse_ml.bigquery.model_types import (
    CLASSIFIER_TYPES,
    CLUSTERING_TYPES,
    REGRESSOR_TYPES,
    SERVED_MODEL_TYPES,
)

# The NULL sentinels of a TRANSFORM model's inputs ("Export models", Supported data types).
NULL_FLOAT64 = 123456789.0e10
NULL_INT64 = 1234567890000000000
NULL_STRING = " __MISSING__ "
# Read back leniently: the page shows the string with a space on each side; accept it without.
_NULL_STRINGS = frozenset({NULL_STRING, NULL_STRING.strip()})

DOCS = "https://cloud.google.com/bigquery/docs/exporting-models"


class ServedFormatError(ValueError):
    """A served prediction or an instance that does not have the documented shape."""


# -- labels ------------------------------------------------------------------------------------------


def label_text(value: Any) -> str:
    """A class as a served prediction gives it: BigQuery's ``CAST(value AS STRING)``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # CAST(2.0 AS STRING) is '2', CAST(2.5 AS STRING) '2.5'
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def label_type_of(values: Sequence[Any]) -> str:
    """The BigQuery type of labels given as Python values (BOOL, INT64, FLOAT64 or STRING)."""
    present = [v.item() if isinstance(v, np.generic) else v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "BOOL"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "INT64"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "FLOAT64"
    return "STRING"


def label_from_text(text: Any, label_type: str | None) -> Any:
    """A served class (a STRING) back in the label's type; ``label_type`` None keeps the text."""
    if not isinstance(text, str):
        raise ServedFormatError(f"a served class is a STRING; got {text!r}")
    if label_type is None or label_type == "STRING":
        return text
    if label_type == "BOOL":
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise ServedFormatError(f"a BOOL class is served as 'true' or 'false'; got {text!r}")
        return lowered == "true"
    try:
        if label_type == "INT64":
            return int(text)
        return float(text)
    except ValueError:
        raise ServedFormatError(
            f"a served class of an {label_type} label must parse as one; got {text!r}"
        ) from None


# -- building (the local endpoint server) ------------------------------------------------------------


def classification_objects(
    label: str, classes: Sequence[Any], predicted: Sequence[int], probs: Sequence[Sequence[float]]
) -> list[dict[str, Any]]:
    """Classifier predictions of many rows: ``predicted[i]`` indexes ``classes``, ``probs[i]`` is
    aligned with ``classes``."""
    texts = [label_text(c) for c in classes]
    key_pred, key_values, key_probs = f"predicted_{label}", f"{label}_values", f"{label}_probs"
    return [
        {key_pred: [texts[k]], key_values: texts, key_probs: [float(x) for x in p]}
        for k, p in zip(predicted, probs)
    ]


def regression_objects(label: str, values: Sequence[float]) -> list[dict[str, Any]]:
    key = f"predicted_{label}"
    return [{key: [float(v)]} for v in values]


def clustering_objects(distances: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """k-means predictions of many rows: ``distances[i]`` holds row i's distance to every
    centroid, in centroid-id order (id = position + 1)."""
    out = []
    ids: list[int] | None = None
    for row in distances:
        values = [float(d) for d in row]
        if ids is None or len(ids) != len(values):
            ids = list(range(1, len(values) + 1))
        nearest = min(range(len(values)), key=values.__getitem__)
        out.append({"nearest_centroid_id": [nearest + 1], "centroid_ids": ids, "centroid_distances": values})
    return out


def expected_fields(model_type: str, label: str | None) -> list[str]:
    """The keys of a served prediction of this model type."""
    if model_type in CLASSIFIER_TYPES:
        return [f"predicted_{label}", f"{label}_values", f"{label}_probs"]
    if model_type in REGRESSOR_TYPES:
        return [f"predicted_{label}"]
    if model_type in CLUSTERING_TYPES:
        return ["nearest_centroid_id", "centroid_ids", "centroid_distances"]
    raise ServedFormatError(
        f"{model_type} models are not served here; served model types: {', '.join(SERVED_MODEL_TYPES)}."
    )


# -- parsing -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedPrediction:
    """One served prediction in Python values.

    ``predicted``: the class (in the label's type), the predicted value, or the nearest centroid's
    id. ``probabilities``: class -> probability (classifiers). ``distances``: centroid id ->
    distance (k-means)."""

    predicted: Any
    probabilities: dict[Any, float] = field(default_factory=dict)
    distances: dict[int, float] = field(default_factory=dict)

    def probability(self, label: Any) -> float:
        """The probability of class ``label`` (0 for a class the model does not know)."""
        return self.probabilities.get(label, 0.0)

    @property
    def nearest_distance(self) -> float:
        return self.distances[self.predicted]


def _one(value: Any, what: str) -> Any:
    """A one-element list's element (the documented form); a bare scalar is taken as it is."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ServedFormatError(f"{what} is a one-element list; got {len(value)} elements")
        return value[0]
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ServedFormatError(f"{what} must be a finite number; got {value!r}")
    return float(value)


class PredictionFormat:
    """The served-prediction format of one model: parses and checks its predictions."""

    def __init__(self, model_type: str, label: str | None = None, label_type: str | None = None):
        self.model_type = str(model_type).upper()
        self.label = label
        self.label_type = label_type
        self.fields = expected_fields(self.model_type, label)
        if self.model_type not in CLUSTERING_TYPES and not label:
            raise ServedFormatError(
                f"A {self.model_type} prediction is keyed by its label column: give the label."
            )

    def parse(self, prediction: Any) -> ServedPrediction:
        """A prediction object (a dict, or its JSON text's parsed value) as a
        :class:`ServedPrediction`; raises :class:`ServedFormatError` naming what is wrong."""
        if not isinstance(prediction, Mapping):
            raise ServedFormatError(f"a prediction is a JSON object; got {prediction!r}")
        missing = [f for f in self.fields if f not in prediction]
        if missing:
            raise ServedFormatError(
                f"the prediction has no {', '.join(missing)} (it has {', '.join(map(str, prediction))})"
            )
        if self.model_type in CLASSIFIER_TYPES:
            return self._classification(prediction)
        if self.model_type in REGRESSOR_TYPES:
            return ServedPrediction(
                _number(
                    _one(prediction[f"predicted_{self.label}"], f"predicted_{self.label}"),
                    f"predicted_{self.label}",
                )
            )
        return self._clustering(prediction)

    def _classification(self, prediction: Mapping[str, Any]) -> ServedPrediction:
        label = self.label
        values, probs = prediction[f"{label}_values"], prediction[f"{label}_probs"]
        if (
            not isinstance(values, list)
            or not isinstance(probs, list)
            or len(values) != len(probs)
            or not values
        ):
            raise ServedFormatError(
                f"{label}_values and {label}_probs are lists of one length; got {values!r} and {probs!r}"
            )
        classes = [label_from_text(v, self.label_type) for v in values]
        probabilities = {c: _number(p, f"{label}_probs") for c, p in zip(classes, probs)}
        if len(probabilities) != len(classes):
            raise ServedFormatError(f"{label}_values lists a class twice: {values!r}")
        predicted = label_from_text(
            _one(prediction[f"predicted_{label}"], f"predicted_{label}"), self.label_type
        )
        if predicted not in probabilities:
            raise ServedFormatError(
                f"predicted_{label} {predicted!r} is not one of {label}_values {values!r}"
            )
        return ServedPrediction(predicted, probabilities)

    @staticmethod
    def _clustering(prediction: Mapping[str, Any]) -> ServedPrediction:
        ids, distances = prediction["centroid_ids"], prediction["centroid_distances"]
        if (
            not isinstance(ids, list)
            or not isinstance(distances, list)
            or len(ids) != len(distances)
            or not ids
        ):
            raise ServedFormatError(
                f"centroid_ids and centroid_distances are lists of one length; got {ids!r} and {distances!r}"
            )
        if any(isinstance(i, bool) or not isinstance(i, (int, float)) or int(i) != i for i in ids):
            raise ServedFormatError(f"centroid_ids are integers; got {ids!r}")
        by_id = {int(i): _number(d, "centroid_distances") for i, d in zip(ids, distances)}
        if len(by_id) != len(ids):
            raise ServedFormatError(f"centroid_ids lists a centroid twice: {ids!r}")
        nearest = _one(prediction["nearest_centroid_id"], "nearest_centroid_id")
        if isinstance(nearest, bool) or not isinstance(nearest, (int, float)) or int(nearest) not in by_id:
            raise ServedFormatError(f"nearest_centroid_id {nearest!r} is not one of centroid_ids {ids!r}")
        return ServedPrediction(int(nearest), distances=by_id)

    def problems(self, prediction: Any, *, num_clusters: int | None = None) -> list[str]:
        """What is wrong with a prediction beyond parsing (empty when it is right): classifier
        probabilities that are not a distribution; k-means ids that are not 1..k ascending, or a
        nearest centroid that is not the nearest."""
        try:
            parsed = self.parse(prediction)
        except ServedFormatError as err:
            return [str(err)]
        out = []
        single = "nearest_centroid_id" if self.model_type in CLUSTERING_TYPES else f"predicted_{self.label}"
        if not isinstance(prediction[single], list):
            out.append(f"{single} is {prediction[single]!r}, documented as a one-element list")
        if self.model_type in CLASSIFIER_TYPES:
            probs = list(parsed.probabilities.values())
            if any(not 0.0 <= p <= 1.0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
                out.append(f"probabilities are not a distribution: {probs}")
        if self.model_type in CLUSTERING_TYPES:
            ids = [int(i) for i in prediction["centroid_ids"]]
            k = num_clusters or len(ids)
            if ids != list(range(1, k + 1)):
                out.append(f"centroid_ids are not every centroid in id order (1..{k}): {ids}")
            if any(d < 0 for d in parsed.distances.values()):
                out.append(f"negative centroid distances: {prediction['centroid_distances']}")
            if parsed.nearest_distance > min(parsed.distances.values()):
                out.append(
                    f"nearest_centroid_id {parsed.predicted} is not the nearest centroid: {prediction}"
                )
        return out


# -- instances ---------------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """One warehouse value as JSON: NULL/NaN/NaT/±inf -> None, numpy scalars -> Python, dates and
    timestamps -> ISO 8601 strings, Decimal -> float, arrays and structs recursively."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating, decimal.Decimal)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        return value
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return None

        import pandas as pd  # lazy: the endpoint server starts without pandas

        return pd.Timestamp(value).isoformat()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):  # pandas.Timestamp is a datetime
        return value.isoformat()
    if isinstance(value, (dt.timedelta, np.timedelta64)):
        return (
            float(value / dt.timedelta(seconds=1))
            if isinstance(value, dt.timedelta)
            else float(value / np.timedelta64(1, "s"))
        )
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def null_sentinel(arrow_type: Any, column: str) -> Any:
    """What a TRANSFORM model takes for NULL in a column of this Arrow type."""

    if pa.types.is_boolean(arrow_type):
        raise ServedFormatError(
            f"{column} is NULL, but a BOOL input of a model with a TRANSFORM clause has no NULL sentinel ({DOCS}, "
            f"Supported data types); fill it in the serving query (for example COALESCE({column}, FALSE))."
        )
    if pa.types.is_integer(arrow_type):
        return NULL_INT64
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return NULL_FLOAT64
    return NULL_STRING


def instances(table: Any, *, transform: bool = False) -> list[dict[str, Any]]:
    """The rows of a ``pyarrow.Table`` as prediction instances (JSON-safe dicts keyed by column).
    ``transform``: the model was created with a TRANSFORM clause, so a NULL goes as its type's
    sentinel; otherwise as JSON ``null``."""
    rows = [{str(k): json_safe(v) for k, v in row.items()} for row in table.to_pylist()]
    if not transform:
        return rows
    sentinels: dict[str, Any] = {}
    for name, arrow_type in zip(table.column_names, table.schema.types):
        if table.column(name).null_count:
            sentinels[name] = null_sentinel(arrow_type, name)
    for row in rows:
        for name, sentinel in sentinels.items():
            if row[name] is None:
                row[name] = sentinel
    return rows


def is_null_sentinel(value: Any, kind: str | None = None) -> bool:
    """Whether a value sent to a TRANSFORM model means NULL: the sentinel of the input's type
    (``kind``: ``"num"`` for numbers, ``"str"`` for strings and the types sent as strings; None:
    either). A sentinel of the other type is an ordinary value (and then most often the wrong type)."""
    if isinstance(value, str):
        return kind in (None, "str") and value in _NULL_STRINGS
    return (
        kind in (None, "num")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == NULL_FLOAT64
    )


def decode_null_sentinels(frame: Any, columns: Sequence[str]) -> Any:
    """A copy of a DataFrame of served instances with the NULL sentinels of ``columns`` as NULL
    (for instances of a TRANSFORM model read back from a request log)."""
    import pandas as pd  # lazy: the endpoint server starts without pandas

    out = frame.copy()
    for name in columns:
        column = out[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            out[name] = column.where(column != NULL_FLOAT64)
        elif column.dtype == object or pd.api.types.is_string_dtype(column):
            out[name] = column.where(~column.isin(list(_NULL_STRINGS)), None)
    return out
