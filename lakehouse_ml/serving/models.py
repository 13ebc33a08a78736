"""Load a model artifact folder (``model.json`` + ``arrays.npz`` / ``booster.json``, as the local
BigQuery ML engine writes it) into a predictor that turns JSON instances into prediction objects.

Prediction objects have the shape Vertex AI gives a BigQuery ML model of that type (the export
serving signature, :mod:`lakehouse_ml.bigquery.served`, ``docs/serving-format.md``), with the
values of ``ML.PREDICT`` on the same rows.

Fast path (the model families that declare ``fast_serving``, GLM and k-means, without TIMESTAMP
features): the preprocessing is
compiled at load time into numpy arrays (per numeric feature: NULL value, centre, scale; per
categorical feature: a dict from category to its one-hot column). A request fills one float
matrix and one integer code matrix straight from the JSON values, then the scores are a dense
product and a gather: no pandas on the request path. Other model types (boosted trees, random
forests, TIMESTAMP features) go through the engine's own ``ML.PREDICT`` on a DataFrame: the same
values, slower.

Every instance is validated first: it must be a JSON object with exactly the model's features
(names as trained, or matching case-insensitively), numeric features take JSON numbers, BOOL
features JSON booleans, the other categorical features JSON strings. NULL: for a model without
``TRANSFORM``, JSON ``null`` (BigQuery ML imputes it, as in ``ML.PREDICT``); for a model with a
``TRANSFORM`` clause, the documented sentinels (``123456789.0e10`` / ``1234567890000000000`` for
numbers, ``' __MISSING__ '`` for strings), and JSON ``null`` is refused, naming the sentinel to
send. A violation raises :class:`BadInstance` naming the instance and the feature.

Start-up: the engine (the model families, scikit-learn, XGBoost) and DuckDB are imported with the
first model that needs them, not with this module, so the server answers ``/health`` without them
(``benchmarks/startup.py``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lakehouse_ml.bigquery import model_types, served
from lakehouse_ml.bigquery.model_types import Kind
from lakehouse_ml.engine.artifacts import ARRAYS_NPZ, MODEL_JSON


def servable_model_types() -> list[str]:
    """The model types the local server can serve: those the local engine trains (its model
    families) that Vertex AI serves in the prediction format of their kind (the BigQuery ML
    catalog, lakehouse_ml/bigquery/model_types.py). ARIMA_PLUS-like types register but cannot be
    deployed."""
    from lakehouse_ml.engine.models import FAMILIES  # lazy: loads the engine (see the module docstring)

    return [t for t in FAMILIES if model_types.is_served(t)]


_NUMERIC = ("INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC")


class BadInstance(ValueError):
    """An instance that does not fit the model (a 400 INVALID_ARGUMENT)."""


class NotServable(ValueError):
    """An artifact that the local server cannot serve."""


def read_meta(artifact_uri: str | Path) -> dict:
    path = Path(artifact_uri) / MODEL_JSON
    if not path.is_file():
        raise NotServable(f"{artifact_uri} holds no BigQuery ML model ({MODEL_JSON} missing).")
    return json.loads(path.read_text())


def load_predictor(artifact_uri: str | Path) -> "Predictor":
    """A predictor for the model in ``artifact_uri``; raises :class:`NotServable`."""
    meta = read_meta(artifact_uri)
    model_type = meta.get("model_type")
    servable = servable_model_types()
    if model_type not in servable:
        raise NotServable(
            f"Model type {model_type} cannot be deployed to an endpoint (servable: {', '.join(servable)})."
        )
    arrays: dict[str, np.ndarray] = {}
    npz = Path(artifact_uri) / ARRAYS_NPZ
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    prep = meta["preprocessing"]
    from lakehouse_ml.engine.models import FAMILIES  # lazy: loads the engine (see the module docstring)

    fast = FAMILIES[model_type].fast_serving and all(
        f["kind"] in ("numeric", "categorical") for f in prep["features"]
    )
    predictor = (FastPredictor if fast else EnginePredictor)(Path(artifact_uri), meta, arrays)
    if meta.get("transform_sql"):
        return TransformPredictor(Path(artifact_uri), meta, arrays, predictor)
    return predictor


class Predictor:
    """Validates instances and predicts. ``feature_names`` in training order."""

    # Whether instances carry a TRANSFORM clause's inputs (NULL sentinels instead of JSON null).
    transform = False

    def __init__(
        self, directory: Path, meta: dict, arrays: dict[str, np.ndarray], features: list[dict] | None = None
    ):
        self.directory = directory
        self.meta = meta
        self.model_type: str = meta["model_type"]
        # What the served predictions look like (the BigQuery ML catalog): by the type's kind.
        self.kind = model_types.kind_of(self.model_type)
        # The columns instances carry: the model's features (the TRANSFORM's inputs for a model
        # created with one).
        self.features: list[dict] = features if features is not None else meta["preprocessing"]["features"]
        self.feature_names = [f["name"] for f in self.features]
        self._exact = set(self.feature_names)
        self._lower = {n.lower(): n for n in self.feature_names}
        self.label: dict | None = meta.get("label")
        self.classes: list = list(self.label["classes"]) if self.label and self.label.get("classes") else []
        self.label_name = self.label["name"] if self.label else None
        self.descending = list(range(len(self.classes)))[::-1]  # ML.PREDICT lists labels descending
        self.values_desc = [self.classes[i] for i in self.descending]
        # per feature: "num" (JSON number), "bool" (JSON boolean), "str" (JSON string)
        self._expect = {
            f["name"]: "num" if f["kind"] == "numeric" else "bool" if f["bq_type"] == "BOOL" else "str"
            for f in self.features
        }

    # -- validation ------------------------------------------------------------------------------
    def rows(self, instances: list) -> list[dict]:
        """Each instance as a dict keyed by the training feature names (validated)."""
        out = []
        exact = self._exact
        expect = self._expect
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise BadInstance(
                    f"instances[{i}] is a JSON {_json_kind(inst)}; each instance must be a JSON object "
                    f"with the features {', '.join(self.feature_names)}."
                )
            if inst.keys() != exact:
                inst = self._rename(inst, i)
            for name, value in inst.items():
                if value is None:
                    if self.transform:
                        raise BadInstance(self._null_refused(i, name))
                    continue
                if self.transform and expect[name] != "bool" and served.is_null_sentinel(value, expect[name]):
                    inst = dict(inst) if inst is instances[i] else inst
                    inst[name] = None
                    continue
                want = expect[name]
                t = type(value)
                if want == "num":
                    if t is float:
                        if not math.isfinite(value):
                            raise BadInstance(f"instances[{i}].{name} must be a finite number.")
                        continue
                    if t is int:
                        if abs(value) > 2**63:
                            raise BadInstance(f"instances[{i}].{name} is out of the INT64/FLOAT64 range.")
                        continue
                    raise BadInstance(
                        f"instances[{i}].{name} must be a number (the model was trained on it as "
                        f"{self._type(name)}); got a JSON {_json_kind(value)}."
                    )
                if (want == "bool" and t is not bool) or (want == "str" and t is not str):
                    raise BadInstance(
                        f"instances[{i}].{name} must be a JSON {'boolean' if want == 'bool' else 'string'} "
                        f"(the model was trained on it as {self._type(name)}); got a JSON {_json_kind(value)}."
                    )
            out.append(inst)
        return out

    def _type(self, name: str) -> str:
        return next(f["bq_type"] for f in self.features if f["name"] == name)

    def _null_refused(self, i: int, name: str) -> str:
        if self._expect[name] == "bool":
            return (
                f"instances[{i}].{name} is NULL, but this model has a TRANSFORM clause and a BOOL input of such a "
                f"model has no NULL sentinel ({served.DOCS}, Supported data types): send true or false."
            )
        sentinel = served.NULL_STRING if self._expect[name] == "str" else served.NULL_FLOAT64
        return (
            f"instances[{i}].{name} is null, but this model has a TRANSFORM clause: send NULL as the sentinel "
            f"{sentinel!r} ({served.DOCS}, Supported data types)."
        )

    def _rename(self, inst: dict, i: int) -> dict:
        renamed: dict = {}
        extra = []
        for key, value in inst.items():
            name = key if key in self._exact else self._lower.get(str(key).lower())
            if name is None:
                extra.append(key)
            elif name in renamed:
                raise BadInstance(
                    f"instances[{i}] gives feature {name!r} twice (names are case-insensitive)."
                )
            else:
                renamed[name] = value
        if extra:
            raise BadInstance(
                f"instances[{i}] has unknown feature(s) {', '.join(repr(e) for e in extra)}; the model "
                f"takes exactly {', '.join(self.feature_names)}."
            )
        missing = [n for n in self.feature_names if n not in renamed]
        if missing:
            raise BadInstance(
                f"instances[{i}] is missing feature(s) {', '.join(repr(m) for m in missing)}; the model "
                f"takes exactly {', '.join(self.feature_names)} (send null for a missing value)."
            )
        return renamed

    def predict(self, instances: list, parameters: dict | None = None) -> tuple[list[dict], list[dict]]:
        """(validated rows, prediction objects)."""
        rows = self.rows(instances)
        threshold = self._threshold(parameters)
        return rows, self._predict(rows, threshold)

    def _threshold(self, parameters: dict | None) -> float | None:
        if not parameters:
            return None
        unknown = [k for k in parameters if str(k).lower() != "threshold"]
        if unknown:
            raise BadInstance(f"unknown parameter(s) {', '.join(map(repr, unknown))}; supported: threshold.")
        value = next(iter(parameters.values()))
        if len(self.classes) != 2:
            raise BadInstance("parameters.threshold applies to binary classification models only.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise BadInstance(f"parameters.threshold must be a number between 0 and 1; got {value!r}.")
        return float(value)

    def _predict(self, rows: list[dict], threshold: float | None) -> list[dict]:
        raise NotImplementedError

    # -- output ----------------------------------------------------------------------------------
    def _class_objects(self, probs: np.ndarray, threshold: float | None) -> list[dict]:
        if probs.shape[1] == 2:
            idx = (probs[:, 1] > (0.5 if threshold is None else threshold)).astype(np.int64)
        else:
            idx = np.argmax(probs, axis=1)
        # ML.PREDICT's order of the classes (descending), so index k of ``classes`` is position
        # descending.index(k) of the values.
        position = {k: j for j, k in enumerate(self.descending)}
        return served.classification_objects(
            self.label_name,
            self.values_desc,
            [position[k] for k in idx.tolist()],
            probs[:, self.descending].tolist(),
        )

    def _regression_objects(self, values: np.ndarray) -> list[dict]:
        return served.regression_objects(self.label_name, values.tolist())

    @staticmethod
    def _kmeans_objects(distances: np.ndarray) -> list[dict]:
        """``distances``: (rows, centroids), in centroid-id order."""
        return served.clustering_objects(distances.tolist())


class FastPredictor(Predictor):
    """GLM and k-means on precomputed numpy arrays."""

    def __init__(self, directory: Path, meta: dict, arrays: dict[str, np.ndarray]):
        super().__init__(directory, meta, arrays)
        prep = meta["preprocessing"]
        numeric = {s["name"]: s for s in prep["numeric"]}
        categorical = {s["name"]: s for s in prep["categorical"]}
        self._num_names = [f["name"] for f in self.features if f["kind"] == "numeric"]
        self._cat_names = [f["name"] for f in self.features if f["kind"] == "categorical"]
        self._cat_bool = [self._expect[n] == "bool" for n in self._cat_names]
        self._null = np.array([numeric[n]["mean"] for n in self._num_names], dtype=np.float64)
        self._center = np.array([numeric[n]["center"] for n in self._num_names], dtype=np.float64)
        self._scale = np.array([numeric[n]["scale"] for n in self._num_names], dtype=np.float64)
        # one-hot columns: a global index into the concatenated blocks; q = "contributes nothing"
        lookups, offset = [], 0
        for name in self._cat_names:
            spec = categorical[name]
            size = len(spec["vocab"]) + (1 if spec["has_null"] else 0)
            look = {key: offset + j for j, key in enumerate(spec["vocab"])}
            null_col = offset + len(spec["vocab"]) if spec["has_null"] else None
            dropped = spec.get("dropped")
            if dropped is not None:
                look = {k: v for k, v in look.items() if v != offset + dropped}
                if null_col == offset + dropped:
                    null_col = None
            lookups.append((look, null_col))
            offset += size
        self._q = offset
        self._lookups = lookups
        if self.kind is Kind.CLUSTERING:
            c_num = np.asarray(arrays["centroids_num"], dtype=np.float64)
            c_cat = np.asarray(arrays["centroids_cat"], dtype=np.float64)
            self._c_num_t = np.ascontiguousarray(c_num.T)
            self._c_cat_ext = np.vstack([c_cat.T, np.zeros((1, c_num.shape[0]))])  # (q+1, k)
            self._c_sq = np.einsum("ij,ij->i", c_num, c_num) + np.einsum("ij,ij->i", c_cat, c_cat)
            self._cosine = meta["options"].get("distance_type") == "COSINE"
        else:
            self._w_num = np.asarray(arrays["w_num"], dtype=np.float64)
            w_cat = np.asarray(arrays["w_cat"], dtype=np.float64)
            self._w_cat_ext = np.concatenate([w_cat, np.zeros((1,) + w_cat.shape[1:])])
            self._intercept = np.asarray(arrays["intercept"], dtype=np.float64)

    def _design(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        n = len(rows)
        num_names, cat_names = self._num_names, self._cat_names
        num = np.empty((n, len(num_names)), dtype=np.float64)
        codes = np.empty((n, len(cat_names)), dtype=np.int64)
        q = self._q
        null = self._null
        for r, row in enumerate(rows):
            if num_names:
                num[r] = [null[j] if (v := row[name]) is None else v for j, name in enumerate(num_names)]
            for j, name in enumerate(cat_names):
                look, null_col = self._lookups[j]
                v = row[name]
                if v is None:
                    codes[r, j] = q if null_col is None else null_col
                else:
                    if self._cat_bool[j]:
                        v = "true" if v else "false"
                    codes[r, j] = look.get(v, q)
        if num_names:
            num -= self._center
            num /= self._scale
        return num, codes

    def _predict(self, rows: list[dict], threshold: float | None) -> list[dict]:
        num, codes = self._design(rows)
        if self.kind is Kind.CLUSTERING:
            dots = num @ self._c_num_t
            if codes.shape[1]:
                dots += self._c_cat_ext[codes].sum(axis=1)
            xn = np.einsum("ij,ij->i", num, num) + (codes < self._q).sum(axis=1)
            if self._cosine:
                denom = np.sqrt(xn)[:, None] * np.sqrt(self._c_sq)[None, :]
                with np.errstate(invalid="ignore", divide="ignore"):
                    cos = np.where(denom > 0, dots / denom, 0.0)
                d = np.sqrt(np.clip(1.0 - cos, 0.0, None))
            else:
                d = np.sqrt(np.clip(xn[:, None] - 2.0 * dots + self._c_sq[None, :], 0.0, None))
            return self._kmeans_objects(d)
        z = num @ self._w_num
        if codes.shape[1]:
            z = z + self._w_cat_ext[codes].sum(axis=1)
        z = z + self._intercept
        if self.kind is Kind.REGRESSOR:
            return self._regression_objects(z)
        if z.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-z))
            probs = np.column_stack([1.0 - p, p])
        else:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            probs = e / e.sum(axis=1, keepdims=True)
        return self._class_objects(probs, threshold)


class EnginePredictor(Predictor):
    """Any other servable model: the engine's ML.PREDICT on a DataFrame of the instances."""

    def __init__(self, directory: Path, meta: dict, arrays: dict[str, np.ndarray]):
        super().__init__(directory, meta, arrays)
        from lakehouse_ml.engine.engine import BqmlEngine

        # The engine reads models by name from a folder: give it a private folder whose one entry
        # links to the artifact.
        self._root = Path(tempfile.mkdtemp(prefix="lakehouse-ml-serving-"))
        os.symlink(Path(directory).resolve(), self._root / "m")
        self._engine = BqmlEngine(self._root)

    def _predict(self, rows: list[dict], threshold: float | None) -> list[dict]:
        import pandas as pd

        frame = pd.DataFrame({name: [row[name] for row in rows] for name in self.feature_names})
        for f in self.features:
            if f["kind"] == "numeric":
                frame[f["name"]] = pd.to_numeric(frame[f["name"]], errors="coerce").astype("float64")
            elif f["kind"] == "timestamp":
                frame[f["name"]] = pd.to_datetime(frame[f["name"]], utc=True, errors="coerce")
        if self.kind is Kind.CLUSTERING:
            return self._kmeans_objects(self._engine.centroid_distances("m", frame))
        options = {"threshold": threshold} if threshold is not None else None
        table = self._engine.predict("m", frame, options)
        label = self.label_name
        predicted = table.column(f"predicted_{label}").to_pylist()
        if self.kind is not Kind.CLASSIFIER:
            return served.regression_objects(label, predicted)
        probs = table.column(f"predicted_{label}_probs").to_pylist()
        classes = [s["label"] for s in probs[0]] if probs else []
        return served.classification_objects(
            label, classes, [classes.index(v) for v in predicted], [[s["prob"] for s in p] for p in probs]
        )


class TransformPredictor(Predictor):
    """A model created with a ``TRANSFORM`` clause. As with ``ML.PREDICT`` and with BigQuery ML
    models served by Vertex AI, instances carry the TRANSFORM's input columns (those
    ``ML.FEATURE_INFO`` describes), NULLs as the documented sentinels; the TRANSFORM, stored with
    its training statistics frozen in, runs on an in-memory DuckDB over the request's rows (the
    SQL the local warehouse runs for ``ML.PREDICT``), then ``inner`` predicts on its output."""

    _INPUT = "__instances"
    transform = True

    def __init__(self, directory: Path, meta: dict, arrays: dict[str, np.ndarray], inner: Predictor):
        info = meta["preprocessing"].get("info_features")
        if not info:
            raise NotServable(
                f"{directory}: a model with a TRANSFORM clause needs its input columns (info_features)."
            )
        super().__init__(directory, meta, arrays, features=info)
        import duckdb

        from lakehouse_ml.engine.sql import model_transform_query
        from lakehouse_ml.engine.translate import translate_query

        self.inner = inner
        metadata = {
            "transform_sql": meta["transform_sql"],
            "options": meta.get("options") or {},
            "label_columns": [meta["label"]["name"]] if meta.get("label") else [],
        }
        self._sql = translate_query(
            model_transform_query(metadata, self.feature_names, self._INPUT)
        ).duckdb_sql
        self._connection = duckdb.connect(":memory:")
        self._lock = threading.Lock()

    def _column(self, feature: dict, values: list) -> pa.Array:
        bq_type = feature["bq_type"]
        if feature["kind"] == "numeric":
            integral = bq_type == "INT64" and all(
                v is None or isinstance(v, int) or float(v).is_integer() for v in values
            )
            if integral:
                return pa.array([None if v is None else int(v) for v in values], type=pa.int64())
            return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
        if bq_type == "BOOL":
            return pa.array(values, type=pa.bool_())
        if feature["kind"] == "timestamp":
            import pandas as pd

            return pa.array(pd.to_datetime(pd.Series(values, dtype=object), utc=True, errors="coerce"))
        return pa.array(values, type=pa.string())

    def _predict(self, rows: list[dict], threshold: float | None) -> list[dict]:
        from lakehouse_ml.engine.translate import arrow_table

        table = pa.table(
            {f["name"]: self._column(f, [row[f["name"]] for row in rows]) for f in self.features}
        )
        with self._lock:
            self._connection.register(self._INPUT, table)
            try:
                transformed = arrow_table(self._connection.sql(self._sql))
            finally:
                self._connection.unregister(self._INPUT)
        return self.inner._predict(transformed.to_pylist(), threshold)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
