"""BigQuery types of columns as the SQL layer hands them over (pandas and Arrow), and their
values as BigQuery casts them to STRING: what both the local engine's preprocessing and BigQuery's
data split (:mod:`lakehouse_ml.bigquery.split`) see of a column."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lakehouse_ml.core.errors import BqmlError

NUMERIC_TYPES = ("INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC")
CATEGORICAL_TYPES = ("STRING", "BOOL", "BYTES", "DATE", "DATETIME", "TIME")
TIMESTAMP_TYPES = ("TIMESTAMP",)


# --------------------------------------------------------------------------------------------------
def _arrow_type_name(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "BOOL"
    if pa.types.is_integer(t):
        return "INT64"
    if pa.types.is_floating(t):
        return "FLOAT64"
    if pa.types.is_decimal(t):
        return "NUMERIC" if getattr(t, "precision", 38) <= 38 else "BIGNUMERIC"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "STRING"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "BYTES"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"  # the local warehouse keeps BigQuery TIMESTAMPs as (naive UTC) timestamps
    if pa.types.is_time(t):
        return "TIME"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "ARRAY"
    if pa.types.is_struct(t):
        return "STRUCT"
    if pa.types.is_dictionary(t):
        return _arrow_type_name(t.value_type)
    if pa.types.is_null(t):
        return "NULL"
    return str(t).upper()


_INFERRED = {
    "string": "STRING",
    "unicode": "STRING",
    "boolean": "BOOL",
    "integer": "INT64",
    "floating": "FLOAT64",
    "mixed-integer-float": "FLOAT64",
    "decimal": "NUMERIC",
    "date": "DATE",
    "datetime": "TIMESTAMP",
    "datetime64": "TIMESTAMP",
    "time": "TIME",
    "bytes": "BYTES",
    "empty": "NULL",
}


def bigquery_type(series: pd.Series) -> str:
    """The BigQuery type of a column as the SQL layer hands it over (numpy, pandas nullable,
    Arrow-backed or object dtypes). ``NULL`` for a column with no non-NULL value."""
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype):
        return _arrow_type_name(dtype.pyarrow_dtype)
    if isinstance(dtype, pd.CategoricalDtype):
        return bigquery_type(pd.Series(dtype.categories)) if len(dtype.categories) else "NULL"
    if pd.api.types.is_bool_dtype(dtype):
        return "BOOL"
    if pd.api.types.is_integer_dtype(dtype):
        return "INT64"
    if pd.api.types.is_float_dtype(dtype):
        return "FLOAT64"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "TIMESTAMP"
    if isinstance(dtype, pd.StringDtype):
        return "STRING"
    if pd.api.types.is_timedelta64_dtype(dtype):
        return "INTERVAL"
    inferred = pd.api.types.infer_dtype(series, skipna=True)
    if inferred in _INFERRED:
        return _INFERRED[inferred]
    if inferred == "mixed":
        first = series.dropna()
        value = first.iloc[0] if len(first) else None
        if isinstance(value, (list, tuple, np.ndarray)):
            return "ARRAY"
        if isinstance(value, dict):
            return "STRUCT"
        return "MIXED"
    return inferred.upper()


def to_float(series: pd.Series, name: str | None = None) -> np.ndarray:
    """A numeric column as float64 with NaN for NULL."""
    dtype = series.dtype
    try:
        if isinstance(dtype, pd.ArrowDtype) or pd.api.types.is_extension_array_dtype(dtype):
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            return series.to_numpy(dtype=np.float64, copy=False)
        values = series.to_numpy(dtype=object)
        mask = pd.isna(values)
        out = np.full(len(values), np.nan)
        if (~mask).any():
            out[~mask] = np.array([float(v) for v in values[~mask]], dtype=np.float64)
        return out
    except (TypeError, ValueError, decimal.InvalidOperation) as exc:
        raise BqmlError(f"Column {name or series.name!r} is not numeric: {exc}") from None


def string_key(value: Any, bq_type: str) -> str:
    """The category name of a value, as BigQuery casts it to STRING."""
    if bq_type == "BOOL" or isinstance(value, (bool, np.bool_)):
        return "true" if bool(value) else "false"
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


def factorize(series: pd.Series, bq_type: str) -> tuple[np.ndarray, list[str]]:
    """``(codes, keys)``: codes index ``keys`` (distinct category names); -1 for NULL."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    keys = [
        string_key(u, bq_type) for u in (uniques.tolist() if hasattr(uniques, "tolist") else list(uniques))
    ]
    if len(set(keys)) != len(keys):  # distinct values with the same STRING form (e.g. 1 and '1')
        merged: dict[str, int] = {}
        remap = np.array([merged.setdefault(k, len(merged)) for k in keys], dtype=np.int64)
        codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
        keys = list(merged)
    return np.asarray(codes, dtype=np.int64), keys
