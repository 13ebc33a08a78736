"""Automatic feature preprocessing, as BigQuery ML documents it.

Source: "Automatic feature preprocessing",
https://cloud.google.com/bigquery/docs/auto-preprocessing (tables "Missing data imputation",
"Feature transformations", "TIMESTAMP feature transformation", "Category feature encoding").

* INT64, NUMERIC, BIGNUMERIC, FLOAT64: standardized for linear and logistic regression (k-means:
  per STANDARDIZE_FEATURES); as they are for boosted trees and random forests.
* BOOL, STRING, BYTES, DATE, DATETIME, TIME: one-hot encoded for linear / logistic regression
  and k-means (GLM: or dummy encoded, CATEGORY_ENCODING_METHOD); label encoded for tree models
  (sorted vocabulary -> 1..K, NULL and unseen -> 0).
* TIMESTAMP (linear / logistic regression, k-means): Unix seconds standardized, plus one-hot
  _TS_DOM_, _TS_DOW_, _TS_MOY_, _TS_HOD_, _TS_MOH_, _TS_WOY_, _TS_YEAR_ components. Tree models:
  refused with an error (not documented for them).
* ARRAY, STRUCT, JSON, …: refused with an error naming the type.

Missing values: a numerical NULL becomes the mean of the column "as calculated by the feature
column in the original input data" (all rows of the training query, before the data split), in
training and in prediction. A categorical NULL is its own category. A category unseen in
training contributes nothing (its one-hot row is all zeros; label encoding gives it 0).

The standardization statistics are the same ones ``ML.FEATURE_INFO`` reports (mean, and the
sample standard deviation ``STDDEV``); a constant column is centred and left unscaled.

The design matrix is kept in a compact form (:class:`Design`): the numeric columns as one dense
float64 block, and each one-hot encoded column as an integer code array (one-hot blocks are
applied with gathers and sparse products, never materialized densely), so that a million rows
preprocess in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lakehouse_ml.bigquery.types import (
    CATEGORICAL_TYPES,
    NUMERIC_TYPES,
    TIMESTAMP_TYPES,
    bigquery_type,
    factorize,
    to_float,
)
from lakehouse_ml.core.errors import BqmlError

AUTO_PREPROCESSING_DOC = "https://cloud.google.com/bigquery/docs/auto-preprocessing"


# "TIMESTAMP feature transformation" table: component -> processed_input prefix.
TIMESTAMP_COMPONENTS = (
    ("_TS_DOM_", "day of month"),
    ("_TS_DOW_", "day of week"),
    ("_TS_MOY_", "month of year"),
    ("_TS_HOD_", "hour of day"),
    ("_TS_MOH_", "minute of hour"),
    ("_TS_WOY_", "week of year (weeks begin on Sunday)"),
    ("_TS_YEAR_", "year"),
)


def feature_kind(bq_type: str) -> str:
    if bq_type in NUMERIC_TYPES:
        return "numeric"
    if bq_type in CATEGORICAL_TYPES or bq_type == "NULL":
        return "categorical"
    if bq_type in TIMESTAMP_TYPES:
        return "timestamp"
    raise BqmlError(
        f"Input columns of type {bq_type} are not supported by the local engine's automatic preprocessing; "
        f"supported: {', '.join(NUMERIC_TYPES + CATEGORICAL_TYPES + TIMESTAMP_TYPES)}. Cast or drop the "
        "column "
        "in the query (ARRAY and STRUCT columns are not expanded locally)."
    )


def timestamps_utc(series: pd.Series) -> pd.Series:
    """A TIMESTAMP column as ``datetime64[ns, UTC]`` (naive values are UTC)."""
    if isinstance(series.dtype, pd.ArrowDtype):
        series = series.astype("datetime64[ns, UTC]" if series.dtype.pyarrow_dtype.tz else "datetime64[ns]")
    return pd.to_datetime(series, utc=True)


def timestamp_parts(series: pd.Series) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Unix seconds (NaN for NULL) and each component of the TIMESTAMP transformation table as
    integers (-1 for NULL). Day of week is BigQuery's (1 = Sunday … 7); week of year counts
    weeks beginning on Sunday (days before the first Sunday are week 0, like ``%U``)."""
    ts = timestamps_utc(series)
    null = ts.isna().to_numpy()
    seconds = (
        ts.astype("int64", copy=False)
        if not null.any()
        else ts.fillna(pd.Timestamp(0, tz="UTC")).astype("int64")
    )
    unix = seconds.to_numpy(dtype=np.float64) / 1e9
    unix[null] = np.nan
    acc = ts.dt
    sunday0 = (acc.dayofweek.to_numpy(dtype=np.float64, na_value=0) + 1) % 7
    yday0 = acc.dayofyear.to_numpy(dtype=np.float64, na_value=1) - 1
    parts = {
        "_TS_DOM_": acc.day.to_numpy(dtype=np.float64, na_value=-1),
        "_TS_DOW_": sunday0 + 1,
        "_TS_MOY_": acc.month.to_numpy(dtype=np.float64, na_value=-1),
        "_TS_HOD_": acc.hour.to_numpy(dtype=np.float64, na_value=-1),
        "_TS_MOH_": acc.minute.to_numpy(dtype=np.float64, na_value=-1),
        "_TS_WOY_": np.floor((yday0 + 7 - sunday0) / 7),
        "_TS_YEAR_": acc.year.to_numpy(dtype=np.float64, na_value=-1),
    }
    out = {}
    for prefix, values in parts.items():
        ints = values.astype(np.int64)
        ints[null] = -1
        out[prefix] = ints
    return unix, out


# --------------------------------------------------------------------------------------------------
# Fitted feature specifications
# --------------------------------------------------------------------------------------------------
@dataclass
class NumericSpec:
    """A processed numeric input: NULL -> ``mean``; value -> ``(value - center) / scale``."""

    name: str
    mean: float
    center: float
    scale: float

    def to_json(self) -> dict:
        return {"name": self.name, "mean": self.mean, "center": self.center, "scale": self.scale}

    @classmethod
    def from_json(cls, d: dict) -> "NumericSpec":
        return cls(d["name"], float(d["mean"]), float(d["center"]), float(d["scale"]))

    def transform(self, values: np.ndarray) -> np.ndarray:
        out = np.where(np.isnan(values), self.mean, values)
        if self.center != 0.0:
            out -= self.center
        if self.scale != 1.0:
            out /= self.scale
        return out


@dataclass
class CategoricalSpec:
    """A processed categorical input: ``vocab`` sorted; the NULL category (when NULLs were seen in
    training) follows it. ``dropped`` is the category DUMMY_ENCODING drops (always weight 0)."""

    name: str
    vocab: list[str]
    has_null: bool
    dropped: int | None = None
    _index: dict[str, int] | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.vocab) + (1 if self.has_null else 0)

    @property
    def categories(self) -> list[str | None]:
        return list(self.vocab) + ([None] if self.has_null else [])

    def to_json(self) -> dict:
        return {"name": self.name, "vocab": self.vocab, "has_null": self.has_null, "dropped": self.dropped}

    @classmethod
    def from_json(cls, d: dict) -> "CategoricalSpec":
        return cls(d["name"], list(d["vocab"]), bool(d["has_null"]), d.get("dropped"))

    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.vocab)}
        return self._index

    def onehot_codes(self, codes: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        """One-hot column of each row; ``size`` (the sentinel) means 'contributes nothing'."""
        sentinel = self.size
        index = self.index()
        lookup = np.array(
            [index.get(k, sentinel) for k in keys] + [len(self.vocab) if self.has_null else sentinel],
            dtype=np.int64,
        )
        out = lookup[codes]  # codes == -1 (NULL) picks the last entry
        if self.dropped is not None:
            out[out == self.dropped] = sentinel
        return out

    def label_codes(self, codes: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        """Label encoding: vocabulary sorted alphabetically -> 1..K; NULL and unseen -> 0."""
        index = self.index()
        lookup = np.array([index.get(k, -1) + 1 for k in keys] + [0], dtype=np.float64)
        return lookup[codes]


@dataclass
class InputFeature:
    """One input column of the model and its ML.FEATURE_INFO statistics."""

    name: str
    bq_type: str
    kind: str  # numeric | categorical | timestamp
    stats: dict[str, Any]

    def to_json(self) -> dict:
        return {"name": self.name, "bq_type": self.bq_type, "kind": self.kind, "stats": self.stats}

    @classmethod
    def from_json(cls, d: dict) -> "InputFeature":
        return cls(d["name"], d["bq_type"], d["kind"], dict(d["stats"]))


class Columns:
    """Named columns of ``n`` rows, without copying them into a new DataFrame."""

    def __init__(self, data: dict[str, pd.Series], n: int):
        self._data = data
        self._n = n

    def __getitem__(self, name: str) -> pd.Series:
        return self._data[name]

    def __len__(self) -> int:
        return self._n

    @property
    def columns(self) -> list[str]:
        return list(self._data)


@dataclass
class Design:
    """A preprocessed design matrix: ``num`` (n × p dense float64) and one integer code array per
    one-hot block (values in ``[0, size]``; ``size`` contributes nothing)."""

    num: np.ndarray
    codes: list[np.ndarray]
    sizes: list[int]
    _onehot: sp.csr_matrix | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return self.num.shape[0]

    @property
    def q(self) -> int:
        return int(sum(self.sizes))

    def onehot(self) -> sp.csr_matrix:
        """The one-hot blocks as one sparse CSR matrix (n × q), built once."""
        if self._onehot is None:
            n = self.n
            if not self.codes:
                self._onehot = sp.csr_matrix((n, 0))
            else:
                offsets = np.cumsum([0] + self.sizes[:-1])
                cols = np.stack([c + o for c, o in zip(self.codes, offsets)], axis=1)
                valid = np.stack([c < s for c, s in zip(self.codes, self.sizes)], axis=1)
                counts = valid.sum(axis=1)
                indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                indices = cols[valid].astype(np.int32 if self.q < 2**31 else np.int64)
                data = np.ones(len(indices))
                self._onehot = sp.csr_matrix((data, indices, indptr), shape=(n, self.q))
        return self._onehot

    def rows(self, mask: np.ndarray) -> "Design":
        return Design(self.num[mask], [c[mask] for c in self.codes], list(self.sizes))

    def dense(self) -> np.ndarray:
        return np.hstack([self.num, self.onehot().toarray()]) if self.codes else self.num.copy()

    def _offsets(self) -> list[int]:
        return list(np.cumsum([0] + self.sizes[:-1])) if self.sizes else []

    def matvec(self, w_num: np.ndarray, w_cat: np.ndarray) -> np.ndarray:
        """``X @ w`` for ``w = [w_num; w_cat]``, ``w`` a vector or a matrix (one column per class)."""
        out = self.num @ w_num
        for codes, size, offset in zip(self.codes, self.sizes, self._offsets()):
            block = w_cat[offset : offset + size]
            # Gather the weight of each row's category; the sentinel (code == size) gathers 0.
            ext = np.concatenate([block, np.zeros((1,) + block.shape[1:])])
            out += ext[codes]
        return out

    def rmatvec(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``X.T @ r`` split as ``(numeric part, one-hot part)``."""
        g_num = self.num.T @ r
        if not self.codes:
            return g_num, np.zeros((0,) + r.shape[1:])
        if r.ndim == 1:
            g_cat = np.concatenate(
                [np.bincount(c, weights=r, minlength=s + 1)[:s] for c, s in zip(self.codes, self.sizes)]
            )
        else:
            g_cat = np.asarray(self.onehot().T @ r)
        return g_num, g_cat

    def row_sq_norms(self) -> np.ndarray:
        out = np.einsum("ij,ij->i", self.num, self.num)
        for c, s in zip(self.codes, self.sizes):
            out += c < s
        return out


# --------------------------------------------------------------------------------------------------
# The preprocessor
# --------------------------------------------------------------------------------------------------
class Preprocessor:
    """Automatic preprocessing fitted on the training query's rows.

    ``mode``: ``linear`` (GLM: standardize, one-hot or dummy encoding), ``kmeans`` (one-hot;
    numeric standardized per STANDARDIZE_FEATURES) or ``tree`` (no standardization, label
    encoding)."""

    def __init__(
        self,
        mode: str,
        features: list[InputFeature],
        numeric: list[NumericSpec],
        categorical: list[CategoricalSpec],
        standardize: bool = True,
        info_features: list[InputFeature] | None = None,
    ):
        self.mode = mode
        self.info_features = info_features
        self.features = features
        self.numeric = numeric
        self.categorical = categorical
        self.standardize = standardize
        self._numeric_by_name = {s.name: s for s in numeric}
        self._categorical_by_name = {s.name: s for s in categorical}

    # -- persistence ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "standardize": self.standardize,
            "features": [f.to_json() for f in self.features],
            "numeric": [s.to_json() for s in self.numeric],
            "categorical": [s.to_json() for s in self.categorical],
            "info_features": None
            if self.info_features is None
            else [f.to_json() for f in self.info_features],
        }

    @classmethod
    def from_json(cls, d: dict) -> "Preprocessor":
        return cls(
            d["mode"],
            [InputFeature.from_json(f) for f in d["features"]],
            [NumericSpec.from_json(s) for s in d["numeric"]],
            [CategoricalSpec.from_json(s) for s in d["categorical"]],
            bool(d.get("standardize", True)),
            None
            if d.get("info_features") is None
            else [InputFeature.from_json(f) for f in d["info_features"]],
        )

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    # -- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        columns: Sequence[str],
        mode: str,
        *,
        standardize: bool = True,
        dummy_encoding: bool = False,
        stats_frame: pd.DataFrame | None = None,
        stats_columns: Sequence[str] | None = None,
    ) -> "Preprocessor":
        """Fit on ``frame[columns]`` (all input rows). ``stats_frame``/``stats_columns``: the
        pre-TRANSFORM input whose columns ML.FEATURE_INFO describes (default: the features)."""
        features: list[InputFeature] = []
        numeric: list[NumericSpec] = []
        categorical: list[CategoricalSpec] = []
        factorized: dict[str, tuple[np.ndarray, list[str]]] = {}
        do_scale = standardize and mode != "tree"
        for name in columns:
            series = frame[name]
            bq_type = bigquery_type(series)
            kind = feature_kind(bq_type)
            if kind == "numeric":
                values = to_float(series, name)
                stats = numeric_stats(values)
                center = stats["mean"] if do_scale and stats["mean"] is not None else 0.0
                scale = stats["stddev"] if do_scale and stats["stddev"] not in (None, 0.0) else 1.0
                numeric.append(
                    NumericSpec(name, stats["mean"] if stats["mean"] is not None else 0.0, center, scale)
                )
            elif kind == "categorical":
                codes, keys = factorize(series, bq_type)
                factorized[name] = (codes, keys)
                stats = categorical_stats(codes, len(keys))
                categorical.append(_categorical_spec(name, codes, keys, dummy_encoding))
            else:
                if mode == "tree":
                    raise BqmlError(
                        f"Column {name!r} is a TIMESTAMP: BigQuery ML documents the TIMESTAMP "
                        "transformation for linear and logistic regression only, and the local engine "
                        "does not preprocess TIMESTAMP columns for tree models. Use e.g. "
                        f"UNIX_SECONDS({name}) or EXTRACT(...) in the query."
                    )
                unix, parts = timestamp_parts(series)
                stats = {"null_count": int(np.isnan(unix).sum())}
                ustats = numeric_stats(unix)
                center = ustats["mean"] if do_scale and ustats["mean"] is not None else 0.0
                scale = ustats["stddev"] if do_scale and ustats["stddev"] not in (None, 0.0) else 1.0
                numeric.append(
                    NumericSpec(name, ustats["mean"] if ustats["mean"] is not None else 0.0, center, scale)
                )
                for prefix, ints in parts.items():
                    codes, keys = _int_codes(ints)
                    categorical.append(_categorical_spec(prefix + name, codes, keys, dummy_encoding))
            features.append(InputFeature(name, bq_type, kind, stats))
        info = None
        if stats_frame is not None:
            info = feature_info_stats(stats_frame, stats_columns)
        prep = cls(mode, features, numeric, categorical, standardize=do_scale, info_features=info)
        prep._fitted_codes = factorized  # reused once by design()/tree_matrix() on the same frame
        return prep

    _fitted_codes: dict | None = None

    def _codes(self, series: pd.Series, feature: "InputFeature") -> tuple[np.ndarray, list[str]]:
        cached = self._fitted_codes.pop(feature.name, None) if self._fitted_codes else None
        if cached is not None and len(cached[0]) == len(series):
            return cached
        return factorize(series, feature.bq_type)

    # -- applying --------------------------------------------------------------------------------
    def _column(self, frame: pd.DataFrame, feature: InputFeature) -> pd.Series:
        series = frame[feature.name]
        got = bigquery_type(series)
        if got == "NULL" or got == feature.bq_type:
            return series
        compatible = {
            "numeric": NUMERIC_TYPES,
            "categorical": (feature.bq_type,),
            "timestamp": TIMESTAMP_TYPES,
        }[feature.kind]
        if got not in compatible:
            raise BqmlError(
                f"Column {feature.name!r} is {got}, but the model was trained on it as {feature.bq_type}; "
                "cast it in the query."
            )
        return series

    def design(self, frame: pd.DataFrame) -> Design:
        """The design matrix for linear and k-means models."""
        n = len(frame)
        num = np.empty((n, len(self.numeric)), dtype=np.float64)
        codes: list[np.ndarray] = []
        sizes: list[int] = []
        j = 0
        for feature in self.features:
            series = self._column(frame, feature)
            if feature.kind == "numeric":
                spec = self._numeric_by_name[feature.name]
                num[:, j] = spec.transform(to_float(series, feature.name))
                j += 1
            elif feature.kind == "categorical":
                spec = self._categorical_by_name[feature.name]
                c, keys = self._codes(series, feature)
                codes.append(spec.onehot_codes(c, keys))
                sizes.append(spec.size)
            else:
                unix, parts = timestamp_parts(series)
                num[:, j] = self._numeric_by_name[feature.name].transform(unix)
                j += 1
                for prefix, ints in parts.items():
                    spec = self._categorical_by_name[prefix + feature.name]
                    c, keys = _int_codes(ints)
                    codes.append(spec.onehot_codes(c, keys))
                    sizes.append(spec.size)
        return Design(np.ascontiguousarray(num), codes, sizes)

    def tree_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The label-encoded matrix for tree models: one column per input feature."""
        out = np.empty((len(frame), len(self.features)), dtype=np.float64)
        for j, feature in enumerate(self.features):
            series = self._column(frame, feature)
            if feature.kind == "numeric":
                out[:, j] = self._numeric_by_name[feature.name].transform(to_float(series, feature.name))
            else:
                spec = self._categorical_by_name[feature.name]
                c, keys = self._codes(series, feature)
                out[:, j] = spec.label_codes(c, keys)
        return out

    # -- processed inputs (ML.WEIGHTS, ML.EXPLAIN_PREDICT) ---------------------------------------
    def processed_inputs(self) -> list[dict]:
        """One entry per processed input, in design order: numeric entries index ``num`` columns,
        categorical entries index one-hot blocks."""
        out: list[dict] = []
        j = 0
        b = 0
        for feature in self.features:
            if feature.kind in ("numeric", "timestamp"):
                out.append(
                    {"processed_input": feature.name, "kind": "numeric", "index": j, "spec": self.numeric[j]}
                )
                j += 1
            if feature.kind in ("categorical", "timestamp"):
                count = 1 if feature.kind == "categorical" else len(TIMESTAMP_COMPONENTS)
                for _ in range(count):
                    spec = self.categorical[b]
                    out.append(
                        {"processed_input": spec.name, "kind": "categorical", "index": b, "spec": spec}
                    )
                    b += 1
        return out

    def feature_info(self) -> list[InputFeature]:
        return self.info_features if self.info_features is not None else self.features


def _categorical_spec(name: str, codes: np.ndarray, keys: list[str], dummy: bool) -> CategoricalSpec:
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    vocab = [keys[i] for i in order]
    has_null = bool((codes < 0).any())
    dropped = None
    if dummy and vocab:
        # AUTO_PREPROCESSING_DOC, "Dummy encoding": "The category with the most occurrences in the
        # training dataset is dropped." Ties: the first in vocabulary order (the page says random).
        counts = np.bincount(codes[codes >= 0], minlength=len(keys))
        ranked = [counts[i] for i in order]
        dropped = int(np.argmax(ranked))
    return CategoricalSpec(name, vocab, has_null, dropped)


def _int_codes(ints: np.ndarray) -> tuple[np.ndarray, list[str]]:
    uniques, inverse = np.unique(ints, return_inverse=True)
    keys = [str(int(u)) for u in uniques]
    codes = inverse.astype(np.int64)
    if len(uniques) and uniques[0] == -1:  # NULL
        codes = codes - 1
        keys = keys[1:]
    return codes, keys


# --------------------------------------------------------------------------------------------------
# ML.FEATURE_INFO statistics
# --------------------------------------------------------------------------------------------------
def numeric_stats(values: np.ndarray) -> dict[str, Any]:
    valid = values[~np.isnan(values)]
    n = len(valid)
    return {
        "min": float(valid.min()) if n else None,
        "max": float(valid.max()) if n else None,
        "mean": float(valid.mean()) if n else None,
        "median": float(np.median(valid)) if n else None,
        # BigQuery's STDDEV is the sample standard deviation.
        "stddev": float(valid.std(ddof=1)) if n > 1 else None,
        "category_count": None,
        "null_count": int(len(values) - n),
        "dimension": None,
    }


def categorical_stats(codes: np.ndarray, n_keys: int) -> dict[str, Any]:
    return {
        "min": None,
        "max": None,
        "mean": None,
        "median": None,
        "stddev": None,
        "category_count": int(n_keys),
        "null_count": int((codes < 0).sum()),
        "dimension": None,
    }


def feature_info_stats(frame: pd.DataFrame, columns: Iterable[str] | None = None) -> list[InputFeature]:
    out = []
    for name in columns if columns is not None else frame.columns:
        series = frame[name]
        bq_type = bigquery_type(series)
        if bq_type in NUMERIC_TYPES:
            stats = numeric_stats(to_float(series, name))
            kind = "numeric"
        elif bq_type in TIMESTAMP_TYPES:
            stats = {
                **categorical_stats(np.zeros(0, dtype=np.int64), 0),
                "category_count": None,
                "null_count": int(series.isna().sum()),
            }
            kind = "timestamp"
        else:
            codes, keys = (
                factorize(series, bq_type)
                if bq_type not in ("ARRAY", "STRUCT")
                else (np.where(series.isna(), -1, 0), ["?"])
            )
            stats = categorical_stats(codes, len(keys))
            kind = "categorical"
        out.append(InputFeature(name, bq_type, kind, stats))
    return out
