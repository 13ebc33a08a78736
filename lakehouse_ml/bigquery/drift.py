"""Data drift between two data sets with ``ML.VALIDATE_DATA_DRIFT``'s semantics.

``validate_data_drift(base, study, options)`` returns what BigQuery ML's
``SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE base, TABLE study, STRUCT(...))`` returns: one row
per input column with ``input`` STRING, ``metric`` STRING, ``threshold`` FLOAT64, ``value``
FLOAT64 and ``is_anomaly`` BOOL. ``drift_distributions`` returns, per column, the two
distributions the value was computed from (for the overlaid histograms of a report). The local
warehouse runs the SQL function through :func:`validate_data_drift_arrow`
(``lakehouse_ml/engine/sql.py`` runs the ``MLFunction`` nodes that
``lakehouse_ml/bigquery/dialect.py`` parses).

Sources, and every choice made
==============================

[BQ] https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-validate-data-drift
[DESCRIBE] https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-describe-data
     (the sister monitoring function; it documents how column types are treated).
[TFDV] github.com/tensorflow/data-validation, read at commit 710b32fa (2026-06-11):
     ``anomalies/metrics.cc`` (``JensenShannonDivergence``, ``AlignHistograms``,
     ``RebucketHistogram``, ``LInftyDistance``), ``anomalies/map_util.cc`` (``Normalize``),
     ``anomalies/feature_util.cc`` (the comparators), ``anomalies/statistics_view.cc``
     (``GetStringValuesWithCounts``, ``GetHistogramType``),
     ``statistics/generators/basic_stats_generator.py`` and ``utils/quantiles_util.py`` (the
     standard histogram), ``utils/top_k_uniques_stats_util.py`` (the rank histogram).
Where [BQ] and [TFDV] differ, [BQ] wins.

Options [BQ] (names case-insensitive; anything else is refused naming the allowed options):

* ``num_histogram_buckets`` INT64 in [1, 1000], default 10: equal-width buckets of numerical
  columns.
* ``num_quantiles_histogram_buckets`` INT64 in [1, 1000], default 10, and
  ``num_values_histogram_buckets`` INT64 in [1, 1000], default 10: validated and accepted; they
  do not change ``value``. TFDV's Jensen-Shannon divergence reads the STANDARD histogram (the
  default ``HistogramSelection`` in ``GetHistogramType``), not the quantiles one, and the values
  histogram (array lengths) feeds no drift metric. In TFDV the quantiles count only sets how
  finely its sketch approximates the standard histogram, which is counted exactly here.
* ``num_rank_histogram_buckets`` INT64 in [1, 10000], default 50: how many of the most frequent
  values of a categorical column enter its distribution (TFDV's rank histogram).
* ``categorical_default_threshold`` / ``numerical_default_threshold`` FLOAT64 in [0, 1),
  default 0.3.
* ``categorical_metric_type``: ``'L_INFTY'`` (default) or ``'JENSEN_SHANNON_DIVERGENCE'``;
  ``numerical_metric_type``: ``'JENSEN_SHANNON_DIVERGENCE'`` only (default). Case-insensitive.
* ``thresholds`` ``ARRAY<STRUCT<STRING, FLOAT64>>`` (``[('col_a', 0.1), ('col_b', 0.8)]``): a
  per-column threshold in [0, 1) that replaces the default one. A name that is no input column,
  or a column named twice, is refused (BigQuery column names are case-insensitive, so are these).
* The optional ``MODEL`` argument of [BQ] only adds ``visualization_link`` (a Vertex AI console
  URL); the SQL layer refuses it locally.

Output [BQ]: one row per input column, in the base input's column order, then the columns that
only the study input has. ``metric`` is ``JENSEN_SHANNON_DIVERGENCE`` for numerical columns and
``categorical_metric_type`` for categorical ones. ``is_anomaly`` is ``value > threshold``
(strictly: [BQ] "whether the value value is higher than the threshold value"; [TFDV]
``feature_util.cc`` reports an anomaly only when the distance is not ``<=`` the threshold).

Column types, as [DESCRIBE] documents them for BigQuery ML's monitoring functions:

* numerical: INT64, NUMERIC, BIGNUMERIC, FLOAT64 (cast to FLOAT64);
* categorical: STRING, BOOL, BYTES, DATE, DATETIME, TIME, TIMESTAMP (cast to STRING);
* ARRAY of those: the elements of every array, unnested (NULL elements dropped); STRUCT: each
  field is its own column, named ``column.field``;
* any other type (JSON, GEOGRAPHY, INTERVAL, ARRAY<STRUCT>, ...) fails, naming the column.
* A column that is numerical in one input and categorical in the other ([BQ] *Limitations*):
  with ``categorical_metric_type = 'JENSEN_SHANNON_DIVERGENCE'`` it is left out of the output;
  with ``'L_INFTY'`` both sides are cast to STRING and the L-infinity distance is reported.

Numerical columns: Jensen-Shannon divergence [TFDV ``metrics.cc``]:

1. Each input gets its own standard histogram: ``num_histogram_buckets`` equal-width buckets
   between that input's finite minimum and maximum (``np.linspace`` boundaries, as
   ``generate_equi_width_histogram``). TFDV interpolates the counts from a KLL quantiles sketch
   (100 × ``num_quantiles_histogram_buckets`` quantiles, epsilon 0.01); here they are exact
   (``[lo, hi)`` buckets, the last one closed), the values TFDV's sketch approximates. A column
   whose finite values are all equal gets one zero-width (point) bucket.
2. NULL is no value (it is in no bucket). NaN, +inf and -inf are counted apart (TFDV's
   ``num_nan`` and infinite buckets).
3. ``AlignHistograms``: point buckets and infinite buckets are set aside; when the two
   histograms' boundaries differ, both are rebucketed on the union of the boundaries, spreading
   each bucket's count uniformly over its width (``RebucketHistogram``). Then one bucket per
   distinct point value (both inputs' counts), then the infinite counts as *mismatching* buckets
   (base infinities against 0, 0 against study infinities), then, when either input has NaN,
   two mismatching NaN buckets (0 | base NaN, study NaN | 0). So NaN and infinite values never
   count as shared mass, exactly as in TFDV.
4. Both histograms are normalized to sum 1; JSD = (KL(P‖M) + KL(Q‖M)) / 2 with M = (P + Q) / 2,
   **log base 2**, terms with zero probability skipped, capped at 1.0.
5. An input with no value at all (every value NULL) has no histogram: TFDV's
   ``NormalizeHistogram`` refuses it ("Unable to normalize an empty histogram") and produces no
   measurement. [BQ] promises one row per column, so the row is there with ``value`` and
   ``is_anomaly`` NULL.

Categorical columns [TFDV ``statistics_view.cc``, ``top_k_uniques_stats_util.py``,
``metrics.cc``, ``map_util.cc``]:

* Each input's distribution is its rank histogram: the ``num_rank_histogram_buckets`` most
  frequent values, ordered by count then by value, both descending (the larger value wins a
  tie). NULLs are not values. Values outside the top N are not part of either distribution.
* ``L_INFTY``: each rank histogram normalized by its own total (the top N's counts;
  ``NormalizationMode::kSeparateTotal``), value = max over the union of labels of
  ``|p(v) - q(v)|``. An input with no value has an empty distribution (TFDV's ``Normalize``
  leaves an empty map as it is), so the distance is the other input's largest frequency, and 0
  when both are empty.
* ``JENSEN_SHANNON_DIVERGENCE``: the map form of TFDV's JSD on the same two rank histograms
  (log base 2, capped at 1.0); an input with no value gives NULL (TFDV: "Input maps must not be
  empty").

Empty inputs: when the base or the study input has no rows, TFDV has no statistics for any of
its features (``GetControlStats`` finds none: no measurement). [BQ] promises one row per column:
every row has ``value`` and ``is_anomaly`` NULL, with the metric and threshold that would apply.
A monitoring check should treat NULL as "not enough data", not as "no drift".

pandas inputs follow pyarrow's ``from_pandas`` convention: NaN / None / NaT are missing values
(NULL). Pass Arrow tables to keep IEEE NaN apart from NULL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lakehouse_ml.core.errors import BqmlError

L_INFTY = "L_INFTY"
JENSEN_SHANNON_DIVERGENCE = "JENSEN_SHANNON_DIVERGENCE"
NUMERICAL = "numerical"
CATEGORICAL = "categorical"

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("input", pa.string()),
        pa.field("metric", pa.string()),
        pa.field("threshold", pa.float64()),
        pa.field("value", pa.float64()),
        pa.field("is_anomaly", pa.bool_()),
    ]
)

_INT_OPTIONS = {
    "num_histogram_buckets": (1, 1_000),
    "num_quantiles_histogram_buckets": (1, 1_000),
    "num_values_histogram_buckets": (1, 1_000),
    "num_rank_histogram_buckets": (1, 10_000),
}
_THRESHOLD_OPTIONS = ("categorical_default_threshold", "numerical_default_threshold")
_METRIC_OPTIONS = {
    "categorical_metric_type": (L_INFTY, JENSEN_SHANNON_DIVERGENCE),
    "numerical_metric_type": (JENSEN_SHANNON_DIVERGENCE,),
}
OPTION_NAMES = (
    *_INT_OPTIONS,
    "categorical_default_threshold",
    "categorical_metric_type",
    "numerical_default_threshold",
    "numerical_metric_type",
    "thresholds",
)


class DriftError(BqmlError, ValueError):
    """Bad options or inputs of ``ML.VALIDATE_DATA_DRIFT``."""


# =================================================================================================
# Options
# =================================================================================================


def _threshold(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DriftError(f"ML.VALIDATE_DATA_DRIFT: {what} must be a FLOAT64 in [0, 1), got {value!r}.")
    if not 0 <= value < 1:
        raise DriftError(f"ML.VALIDATE_DATA_DRIFT: {what} must be in [0, 1), got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class DriftOptions:
    """The ``STRUCT`` options of ``ML.VALIDATE_DATA_DRIFT`` with BigQuery's defaults."""

    num_histogram_buckets: int = 10
    num_quantiles_histogram_buckets: int = 10
    num_values_histogram_buckets: int = 10
    num_rank_histogram_buckets: int = 50
    categorical_default_threshold: float = 0.3
    categorical_metric_type: str = L_INFTY
    numerical_default_threshold: float = 0.3
    numerical_metric_type: str = JENSEN_SHANNON_DIVERGENCE
    thresholds: tuple[tuple[str, float], ...] = field(default=())

    @classmethod
    def parse(cls, options: DriftOptions | Mapping[str, Any] | None) -> DriftOptions:
        """Validated options from a ``STRUCT`` (a name → value mapping, names case-insensitive)."""
        if options is None:
            return cls()
        if isinstance(options, DriftOptions):
            options = {k: getattr(options, k) for k in OPTION_NAMES}
        values: dict[str, Any] = {}
        for raw_name, value in options.items():
            name = str(raw_name).lower()
            if name not in OPTION_NAMES:
                raise DriftError(
                    f"ML.VALIDATE_DATA_DRIFT has no option {str(raw_name).upper()}. "
                    f"Its options are: {', '.join(n.upper() for n in OPTION_NAMES)}."
                )
            if name in values:
                raise DriftError(f"ML.VALIDATE_DATA_DRIFT: option {name.upper()} is given twice.")
            if value is None:
                raise DriftError(
                    f"ML.VALIDATE_DATA_DRIFT: option {name.upper()} is NULL; leave it out to use its default."
                )
            if name in _INT_OPTIONS:
                low, high = _INT_OPTIONS[name]
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise DriftError(
                        f"ML.VALIDATE_DATA_DRIFT: {name.upper()} must be "
                        f"an INT64 in [{low:,}, {high:,}], got {value!r}."
                    )
                if not low <= value <= high:
                    raise DriftError(
                        f"ML.VALIDATE_DATA_DRIFT: {name.upper()} must be in [{low:,}, {high:,}], got {value!r}."
                    )
                values[name] = int(value)
            elif name in _THRESHOLD_OPTIONS:
                values[name] = _threshold(value, name.upper())
            elif name in _METRIC_OPTIONS:
                allowed = _METRIC_OPTIONS[name]
                if not isinstance(value, str) or value.upper() not in allowed:
                    raise DriftError(
                        f"ML.VALIDATE_DATA_DRIFT: {name.upper()} must be one of "
                        f"{', '.join(repr(a) for a in allowed)}, got {value!r}."
                    )
                values[name] = value.upper()
            else:
                values[name] = _parse_thresholds(value)
        return cls(**values)

    def threshold_for(self, column: str, kind: str) -> float:
        for name, value in self.thresholds:
            if name.lower() == column.lower():
                return value
        return self.numerical_default_threshold if kind == NUMERICAL else self.categorical_default_threshold


def _parse_thresholds(value: Any) -> tuple[tuple[str, float], ...]:
    usage = "THRESHOLDS must be an ARRAY<STRUCT<STRING, FLOAT64>>, e.g. [('col_a', 0.1), ('col_b', 0.8)]"
    if isinstance(value, Mapping):  # the Python API: {"col_a": 0.1}
        items: Iterable[Any] = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise DriftError(f"ML.VALIDATE_DATA_DRIFT: {usage}; got {value!r}.")
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for item in items:
        pair = list(item.values()) if isinstance(item, Mapping) else item
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str):
            raise DriftError(f"ML.VALIDATE_DATA_DRIFT: {usage}; got the element {item!r}.")
        name, threshold = pair
        if name.lower() in seen:
            raise DriftError(f"ML.VALIDATE_DATA_DRIFT: THRESHOLDS names column {name!r} twice.")
        seen.add(name.lower())
        out.append((name, _threshold(threshold, f"the THRESHOLDS value of {name!r}")))
    return tuple(out)


# =================================================================================================
# Columns: what one input holds for one feature
# =================================================================================================


@dataclass
class _Numeric:
    """The standard histogram of one input's column (TFDV ``NumericStatistics.histograms``)."""

    edges: np.ndarray | None  # regular buckets' boundaries (None: no regular bucket)
    counts: np.ndarray  # per regular bucket
    point: tuple[float, float] | None  # (value, count): all finite values equal
    num_inf: float
    num_nan: float

    @property
    def total(self) -> float:
        point = self.point[1] if self.point else 0.0
        return float(self.counts.sum()) + point + self.num_inf + self.num_nan


@dataclass
class _Categorical:
    """The rank histogram of one input's column: labels and counts, most frequent first."""

    labels: np.ndarray  # of str
    counts: np.ndarray


def _kind_of(dtype: pa.DataType) -> str | None:
    if pa.types.is_dictionary(dtype):
        return _kind_of(dtype.value_type)
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return NUMERICAL
    if (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
        or pa.types.is_date(dtype)
        or pa.types.is_timestamp(dtype)
        or pa.types.is_time(dtype)
    ):
        return CATEGORICAL
    if pa.types.is_null(dtype):
        return "null"
    return None


_SUPPORTED = (
    "numerical: INT64, NUMERIC, BIGNUMERIC, FLOAT64; categorical: STRING, BOOL, BYTES, DATE, "
    "DATETIME, TIME, TIMESTAMP; ARRAY of those; STRUCT of those"
)


def _column_kind(name: str, column: pa.ChunkedArray) -> str:
    dtype = column.type
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        dtype = dtype.value_type
    kind = _kind_of(dtype)
    if kind is None:
        raise DriftError(
            f"ML.VALIDATE_DATA_DRIFT cannot compare column {name!r} of type {column.type}. "
            f"Supported column types: {_SUPPORTED}. Leave the column out of the input queries or cast it."
        )
    return kind


def _values(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The non-NULL values of a column (array elements unnested)."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pa.chunked_array([pc.list_flatten(c) for c in column.chunks], type=column.type.value_type)
    if column.null_count:
        column = pc.drop_null(column)
    return column


def _numeric_array(column: pa.ChunkedArray) -> np.ndarray:
    values = _values(column)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if not pa.types.is_float64(values.type):
        values = values.cast(pa.float64(), safe=False)
    if values.num_chunks == 1:
        return values.chunk(0).to_numpy(zero_copy_only=False)
    return values.to_numpy()


def _standard_histogram(values: np.ndarray, buckets: int) -> _Numeric:
    """Equal-width buckets between the finite min and max of ``values`` (see module doc, 1-2)."""
    if values.size == 0:
        return _Numeric(None, np.zeros(0), None, 0.0, 0.0)
    lo, hi = values.min(), values.max()
    num_nan = num_inf = 0.0
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or ±inf somewhere: set them apart
        nan = np.isnan(values)
        num_nan = float(nan.sum())
        finite = np.isfinite(values)
        num_inf = float(values.size - num_nan - finite.sum())
        values = values[finite]
        if values.size == 0:
            return _Numeric(None, np.zeros(0), None, num_inf, num_nan)
        lo, hi = values.min(), values.max()
    if lo == hi:
        return _Numeric(None, np.zeros(0), (float(lo), float(values.size)), num_inf, num_nan)
    edges = np.linspace(lo, hi, buckets + 1)
    scale = buckets / (hi - lo)
    if not (np.isfinite(edges).all() and math.isfinite(scale)):
        # TFDV (generate_equi_width_histogram): "probably overflow", an empty histogram.
        return _Numeric(None, np.zeros(0), None, num_inf, num_nan)
    return _Numeric(edges, _bucket_counts(values, lo, scale, buckets), None, num_inf, num_nan)


_BLOCK = 1 << 16


def _bucket_counts(values: np.ndarray, lo: float, scale: float, buckets: int) -> np.ndarray:
    """Bucket ``floor((v - lo) * scale)`` of each finite value, the maximum in the last bucket
    (``[lo, hi)`` buckets, the last one closed). In blocks, so the temporaries stay in cache."""
    counts = np.zeros(buckets, dtype=np.int64)
    for start in range(0, values.size, _BLOCK):
        block = values[start : start + _BLOCK] - lo
        block *= scale
        index = block.astype(np.intp)
        np.minimum(index, buckets - 1, out=index)
        counts += np.bincount(index, minlength=buckets)
    return counts.astype(np.float64)


def _labels(values: pa.Array) -> np.ndarray:
    """Distinct values as STRING (BigQuery casts categorical types to STRING [DESCRIBE])."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return np.asarray(values.to_pylist(), dtype=object)
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        return np.asarray([v.decode("utf-8", "replace") for v in values.to_pylist()], dtype=object)
    if pa.types.is_boolean(values.type):
        return np.asarray(["true" if v else "false" for v in values.to_pylist()], dtype=object)
    return np.asarray(pc.cast(values, pa.string()).to_pylist(), dtype=object)


def _rank_histogram_from_counts(labels: np.ndarray, counts: np.ndarray, top: int) -> _Categorical:
    if labels.size == 0:
        return _Categorical(labels, counts.astype(np.float64))
    # Equal labels can come from different types cast to STRING: merge them.
    unique, inverse = np.unique(labels.astype(str), return_inverse=True)
    merged = np.bincount(inverse, weights=counts.astype(np.float64), minlength=unique.size)
    # Descending by (count, value): lexsort sorts ascending by its last key first.
    order = np.lexsort((np.arange(unique.size), merged))[::-1]
    # np.unique sorted the labels ascending, so a higher index is a larger value: ties resolve to
    # the larger value first, as TFDV's sorted(..., key=(count, value), reverse=True).
    order = order[:top]
    return _Categorical(unique[order].astype(object), merged[order])


def _categorical_counts(column: pa.ChunkedArray, top: int) -> _Categorical:
    values = _values(column)
    if len(values) == 0:
        return _Categorical(np.zeros(0, dtype=object), np.zeros(0))
    if pa.types.is_dictionary(values.type):
        labels_parts, count_parts = [], []
        for chunk in values.chunks:
            indices = chunk.indices.to_numpy(zero_copy_only=False)
            counts = np.bincount(indices, minlength=len(chunk.dictionary))
            labels_parts.append(_labels(chunk.dictionary))
            count_parts.append(counts)
        labels = np.concatenate(labels_parts) if labels_parts else np.zeros(0, dtype=object)
        counts = np.concatenate(count_parts) if count_parts else np.zeros(0)
        keep = counts > 0
        return _rank_histogram_from_counts(labels[keep], counts[keep], top)
    counted = pc.value_counts(values)
    labels = _labels(counted.field("values"))
    counts = counted.field("counts").to_numpy(zero_copy_only=False)
    return _rank_histogram_from_counts(labels, counts, top)


# =================================================================================================
# Metrics (TFDV anomalies/metrics.cc)
# =================================================================================================


def _rebucket(edges: np.ndarray, counts: np.ndarray, union: np.ndarray) -> np.ndarray:
    """``RebucketHistogram``: counts on the ``union`` boundaries (which hold every one of
    ``edges``), each bucket's count spread uniformly over its width."""
    mids = (union[:-1] + union[1:]) / 2
    j = np.searchsorted(edges, mids, side="right") - 1
    inside = (j >= 0) & (j < counts.size)
    jj = np.clip(j, 0, counts.size - 1)
    widths = np.diff(union)
    return np.where(inside, counts[jj] * widths / (edges[jj + 1] - edges[jj]), 0.0)


@dataclass
class _Aligned:
    edges: np.ndarray | None
    labels: list[str]
    base: np.ndarray  # counts
    study: np.ndarray


def _align(h1: _Numeric, h2: _Numeric) -> _Aligned:
    """``AlignHistograms``: both histograms on the same buckets (module doc, step 3)."""
    e1, e2 = h1.edges, h2.edges
    edges: np.ndarray | None
    if e1 is None and e2 is None:
        edges, c1, c2 = None, np.zeros(0), np.zeros(0)
    elif e1 is not None and e2 is not None and e1.size == e2.size and np.array_equal(e1, e2):
        edges, c1, c2 = e1, h1.counts, h2.counts
    else:
        edges = np.union1d(e1 if e1 is not None else [], e2 if e2 is not None else [])
        c1 = _rebucket(e1, h1.counts, edges) if e1 is not None else np.zeros(edges.size - 1)
        c2 = _rebucket(e2, h2.counts, edges) if e2 is not None else np.zeros(edges.size - 1)
    labels = (
        [
            f"[{edges[k]:.6g}, {edges[k + 1]:.6g}{']' if k == edges.size - 2 else ')'}"
            for k in range(edges.size - 1)
        ]
        if edges is not None
        else []
    )
    extra_labels: list[str] = []
    extra1: list[float] = []
    extra2: list[float] = []
    points = sorted({p[0] for p in (h1.point, h2.point) if p is not None})
    for value in points:
        extra_labels.append(f"= {value:.6g}")
        extra1.append(h1.point[1] if h1.point and h1.point[0] == value else 0.0)
        extra2.append(h2.point[1] if h2.point and h2.point[0] == value else 0.0)
    if h1.num_inf:
        extra_labels.append("±inf (base)")
        extra1.append(h1.num_inf)
        extra2.append(0.0)
    if h2.num_inf:
        extra_labels.append("±inf (study)")
        extra1.append(0.0)
        extra2.append(h2.num_inf)
    if h1.num_nan or h2.num_nan:
        extra_labels += ["NaN (study)", "NaN (base)"]
        extra1 += [0.0, h1.num_nan]
        extra2 += [h2.num_nan, 0.0]
    return _Aligned(
        edges,
        labels + extra_labels,
        np.concatenate([c1, np.asarray(extra1, dtype=np.float64)]),
        np.concatenate([c2, np.asarray(extra2, dtype=np.float64)]),
    )


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two probability vectors, log base 2, capped at 1.0."""
    m = (p + q) / 2
    total = 0.0
    for x in (p, q):
        nz = x > 0
        total += float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))
    return min(total / 2, 1.0)


def _normalized(counts: np.ndarray) -> np.ndarray | None:
    total = counts.sum()
    return counts / total if total > 0 else None


def _union_distributions(a: _Categorical, b: _Categorical) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The two rank histograms on the union of their labels (base's order, then study-only)."""
    index = {label: k for k, label in enumerate(a.labels)}
    labels = list(a.labels)
    for label in b.labels:
        if label not in index:
            index[label] = len(labels)
            labels.append(label)
    ca = np.zeros(len(labels))
    cb = np.zeros(len(labels))
    ca[: a.counts.size] = a.counts
    cb[[index[label] for label in b.labels]] = b.counts
    return labels, ca, cb


# =================================================================================================
# Results
# =================================================================================================


@dataclass(frozen=True)
class FeatureDistribution:
    """One input column: its drift row and the two distributions it was computed from.

    ``labels``, ``base`` and ``study`` are aligned: one entry per bucket, ``base``/``study`` the
    relative frequencies (each sums to 1, or is all zero for an input without values). For a
    numerical column the first ``len(edges) - 1`` buckets are the regular ones between ``edges``
    (the union of both inputs' boundaries), followed by the special buckets TFDV adds (a constant
    value ``= v``, ``±inf``, ``NaN``); ``edges`` is None for a categorical column, whose labels
    are the most frequent values (base's order, then the study's own).
    """

    input: str
    kind: str
    metric: str
    threshold: float
    value: float | None
    is_anomaly: bool | None
    labels: tuple[str, ...] = ()
    edges: np.ndarray | None = None
    base: np.ndarray = field(default_factory=lambda: np.zeros(0))
    study: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _as_table(data: pa.Table | pd.DataFrame, what: str) -> pa.Table:
    if isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pd.DataFrame):
        try:
            table = pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise DriftError(
                f"ML.VALIDATE_DATA_DRIFT: the {what} frame cannot be read as columns: {err}"
            ) from None
    else:
        raise DriftError(
            f"ML.VALIDATE_DATA_DRIFT: the {what} input must be a pyarrow Table or a pandas DataFrame."
        )
    # STRUCT fields are columns of their own (column.field), as in ML.DESCRIBE_DATA.
    while any(pa.types.is_struct(t) for t in table.schema.types):
        table = table.flatten()
    names = [n.lower() for n in table.column_names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DriftError(
            f"ML.VALIDATE_DATA_DRIFT: the {what} input has column(s) {', '.join(duplicates)} more than once."
        )
    return table


def _compare(
    name: str,
    base: pa.ChunkedArray | None,
    study: pa.ChunkedArray | None,
    empty: bool,
    options: DriftOptions,
) -> FeatureDistribution | None:
    kinds = {_column_kind(name, c) for c in (base, study) if c is not None}
    kinds.discard("null")
    mismatch = kinds == {NUMERICAL, CATEGORICAL}
    if mismatch and options.categorical_metric_type == JENSEN_SHANNON_DIVERGENCE:
        return None  # [BQ] Limitations: not included in the report
    kind = NUMERICAL if kinds == {NUMERICAL} else CATEGORICAL
    metric = JENSEN_SHANNON_DIVERGENCE if kind == NUMERICAL else options.categorical_metric_type
    threshold = options.threshold_for(name, kind)
    if empty or base is None or study is None:
        return FeatureDistribution(name, kind, metric, threshold, None, None)
    if kind == NUMERICAL:
        h1 = _standard_histogram(_numeric_array(base), options.num_histogram_buckets)
        h2 = _standard_histogram(_numeric_array(study), options.num_histogram_buckets)
        aligned = _align(h1, h2)
        p, q = _normalized(aligned.base), _normalized(aligned.study)
        value = _jsd(p, q) if p is not None and q is not None else None
        return FeatureDistribution(
            name,
            kind,
            metric,
            threshold,
            value,
            None if value is None else value > threshold,
            tuple(aligned.labels),
            aligned.edges,
            p if p is not None else np.zeros(aligned.base.size),
            q if q is not None else np.zeros(aligned.study.size),
        )
    top = options.num_rank_histogram_buckets
    if mismatch:
        base, study = (
            c.cast(pa.string()) if _column_kind(name, c) == NUMERICAL else c for c in (base, study)
        )
    r1, r2 = _categorical_counts(base, top), _categorical_counts(study, top)
    labels, c1, c2 = _union_distributions(r1, r2)
    p, q = _normalized(c1), _normalized(c2)
    pp = p if p is not None else np.zeros(len(labels))
    qq = q if q is not None else np.zeros(len(labels))
    if metric == L_INFTY:
        value: float | None = float(np.max(np.abs(pp - qq))) if labels else 0.0
    else:
        value = _jsd(pp, qq) if p is not None and q is not None else None
    return FeatureDistribution(
        name,
        kind,
        metric,
        threshold,
        value,
        None if value is None else value > threshold,
        tuple(str(label) for label in labels),
        None,
        pp,
        qq,
    )


def _run(
    base: pa.Table | pd.DataFrame, study: pa.Table | pd.DataFrame, options: Any
) -> list[FeatureDistribution]:
    parsed = DriftOptions.parse(options)
    base_t, study_t = _as_table(base, "base"), _as_table(study, "study")
    base_cols = {n.lower(): n for n in base_t.column_names}
    study_cols = {n.lower(): n for n in study_t.column_names}
    names = [*base_t.column_names, *(n for n in study_t.column_names if n.lower() not in base_cols)]
    unknown = [n for n, _ in parsed.thresholds if n.lower() not in base_cols and n.lower() not in study_cols]
    if unknown:
        raise DriftError(
            f"ML.VALIDATE_DATA_DRIFT: THRESHOLDS names {', '.join(repr(u) for u in unknown)}, which "
            f"is no input column. Input columns: {', '.join(names)}."
        )
    empty = base_t.num_rows == 0 or study_t.num_rows == 0

    def one(name: str) -> FeatureDistribution | None:
        b = base_t.column(base_cols[name.lower()]) if name.lower() in base_cols else None
        s = study_t.column(study_cols[name.lower()]) if name.lower() in study_cols else None
        return _compare(name, b, s, empty, parsed)

    if len(names) > 1 and not empty and base_t.num_rows + study_t.num_rows > 200_000:
        with ThreadPoolExecutor(max_workers=2) as pool:  # numpy and Arrow release the GIL
            results = list(pool.map(one, names))
    else:
        results = [one(n) for n in names]
    return [r for r in results if r is not None]


def drift_distributions(
    base: pa.Table | pd.DataFrame,
    study: pa.Table | pd.DataFrame,
    options: DriftOptions | Mapping[str, Any] | None = None,
) -> list[FeatureDistribution]:
    """Per input column, the drift row and both distributions (bucket labels, numerical edges),
    for plotting overlaid histograms of the drifted features."""
    return _run(base, study, options)


def _table(results: Sequence[FeatureDistribution]) -> pa.Table:
    return pa.table(
        {
            "input": pa.array([r.input for r in results], pa.string()),
            "metric": pa.array([r.metric for r in results], pa.string()),
            "threshold": pa.array([r.threshold for r in results], pa.float64()),
            "value": pa.array([r.value for r in results], pa.float64()),
            "is_anomaly": pa.array([r.is_anomaly for r in results], pa.bool_()),
        },
        schema=OUTPUT_SCHEMA,
    )


def validate_data_drift_arrow(
    base: pa.Table | pd.DataFrame,
    study: pa.Table | pd.DataFrame,
    options: DriftOptions | Mapping[str, Any] | None = None,
) -> pa.Table:
    """``ML.VALIDATE_DATA_DRIFT`` as an Arrow table with BigQuery's column names and types."""
    return _table(_run(base, study, options))


def validate_data_drift(
    base: pa.Table | pd.DataFrame,
    study: pa.Table | pd.DataFrame,
    options: DriftOptions | Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """``ML.VALIDATE_DATA_DRIFT(base, study, STRUCT(options))`` as a DataFrame: ``input``,
    ``metric``, ``threshold``, ``value``, ``is_anomaly`` (``value``/``is_anomaly`` are NULL —
    None/NaN, pandas ``boolean`` dtype — where the drift cannot be measured)."""
    frame = validate_data_drift_arrow(base, study, options).to_pandas()
    frame["is_anomaly"] = frame["is_anomaly"].astype("boolean")
    return frame


def drift_markdown(result: pd.DataFrame | pa.Table) -> str:
    """The drift rows as a Markdown table (for Dagster metadata), anomalies marked in bold."""
    frame = result.to_pandas() if isinstance(result, pa.Table) else result
    lines = ["| input | metric | threshold | value | is_anomaly |", "| --- | --- | --- | --- | --- |"]
    for row in frame.itertuples(index=False):
        value = "NULL" if row.value is None or pd.isna(row.value) else f"{row.value:.4f}"
        anomaly = (
            "NULL" if row.is_anomaly is None or pd.isna(row.is_anomaly) else str(bool(row.is_anomaly)).lower()
        )
        if anomaly == "true":
            anomaly = "**true**"
        lines.append(f"| {row.input} | {row.metric} | {row.threshold:g} | {value} | {anomaly} |")
    return "\n".join(lines)


__all__ = [
    "CATEGORICAL",
    "JENSEN_SHANNON_DIVERGENCE",
    "L_INFTY",
    "NUMERICAL",
    "OPTION_NAMES",
    "OUTPUT_SCHEMA",
    "DriftError",
    "DriftOptions",
    "FeatureDistribution",
    "drift_distributions",
    "drift_markdown",
    "validate_data_drift",
    "validate_data_drift_arrow",
]
