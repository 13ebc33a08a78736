"""``DATA_SPLIT_METHOD``: which input rows train the model and which evaluate it.

Source: "The CREATE MODEL statement for generalized linear models", DATA_SPLIT_METHOD,
DATA_SPLIT_EVAL_FRACTION and DATA_SPLIT_COL,
https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-glm
(the boosted tree and random forest pages say the same):

* ``AUTO_SPLIT`` (default): fewer than 500 rows -> all rows train; 500 to 50,000 rows -> 20% of
  the rows evaluate, at random; more than 50,000 rows -> 10,000 rows evaluate, at random.
* ``RANDOM``: random rows evaluate, ``DATA_SPLIT_EVAL_FRACTION`` of them; without that option
  the split is AUTO_SPLIT's. "A random split is deterministic: different training runs produce
  the same split results if the same underlying training data is used" — BigQuery bases it on
  the FARM_FINGERPRINT of the data; here it is a hash of each row's values and the column names
  (:func:`row_hashes`): the rows with the smallest hashes evaluate, so the same rows give the
  same split whatever their order.
* ``CUSTOM``: a BOOL ``DATA_SPLIT_COL``; TRUE or NULL evaluate, FALSE trains.
* ``SEQ``: rows sorted by ``DATA_SPLIT_COL``; the last ``DATA_SPLIT_EVAL_FRACTION`` evaluate:
  rows whose value is smaller than the threshold train, the rest (ties and NULLs included)
  evaluate.
* ``NO_SPLIT``: all rows train.

"The service maintains the accuracy of the input value to two decimal places": the fraction is
rounded to two decimals. The number of evaluation rows is ``round(fraction × rows)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lakehouse_ml.bigquery.types import bigquery_type, factorize
from lakehouse_ml.core.errors import BqmlError

AUTO_SPLIT_MIN_ROWS = 500
AUTO_SPLIT_FRACTION_MAX_ROWS = 50_000
AUTO_SPLIT_FRACTION = 0.2
AUTO_SPLIT_LARGE_EVAL_ROWS = 10_000


@dataclass
class Split:
    method: str
    eval_mask: np.ndarray  # True = evaluation row

    @property
    def train_rows(self) -> int:
        return int((~self.eval_mask).sum())

    @property
    def eval_rows(self) -> int:
        return int(self.eval_mask.sum())

    def summary(self) -> dict:
        return {"method": self.method, "training_rows": self.train_rows, "evaluation_rows": self.eval_rows}


def auto_eval_rows(n: int) -> int:
    if n < AUTO_SPLIT_MIN_ROWS:
        return 0
    if n <= AUTO_SPLIT_FRACTION_MAX_ROWS:
        return int(round(AUTO_SPLIT_FRACTION * n))
    return AUTO_SPLIT_LARGE_EVAL_ROWS


_PRIME = np.uint64(0x100000001B3)


def row_hashes(frame: pd.DataFrame, factorized: dict | None = None) -> np.ndarray:
    """A deterministic pseudo-random key per row, from the row's values and the column names
    (independent of the row order). ``factorized``: ``{column: (codes, keys)}`` already computed
    for categorical columns (hashing the distinct values only is much faster than hashing
    a million strings)."""
    n = len(frame)
    salt = pd.util.hash_array(np.array(["|".join(map(str, frame.columns))], dtype=object))[0]
    out = np.full(n, salt, dtype=np.uint64)
    for name in frame.columns:
        series = frame[name]
        dtype = series.dtype
        if factorized and name in factorized:
            codes, keys = factorized[name]
        elif pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
            # As float32 whatever the integer/float/nullable type: the same values, the same key,
            # also when a value differs in its last bits only (a warehouse that sums in parallel
            # adds in any order), so that seeds and splits do not change from run to run.
            values = series.to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32)
            column_hash = pd.util.hash_array(values)
            codes = None
        elif pd.api.types.is_datetime64_any_dtype(dtype) and not isinstance(dtype, pd.ArrowDtype):
            column_hash = pd.util.hash_array(series.to_numpy(dtype="datetime64[ns]"))
            codes = None
        else:
            codes, keys = factorize(series, bigquery_type(series))
        if codes is not None:
            distinct = pd.util.hash_array(np.array(list(keys) + ["\x00NULL"], dtype=object))
            column_hash = distinct[codes]  # NULL (-1) takes the last entry
        with np.errstate(over="ignore"):
            out = (out * _PRIME) ^ column_hash
    out = _avalanche(out)
    # Identical rows would share a key and so always land in the same split (with few distinct
    # rows, the evaluation split would hold only some of them): number the copies of each row
    # and mix the copy number in. Copies are interchangeable, so the result still does not
    # depend on the row order.
    copy = pd.Series(out).groupby(out, sort=False).cumcount().to_numpy().astype(np.uint64)
    if copy.any():
        with np.errstate(over="ignore"):
            out = _avalanche(out ^ (copy * np.uint64(0x9E3779B97F4A7C15)))
    return out


def _avalanche(out: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, so that the order of the keys is uniform."""
    out = out.copy()
    with np.errstate(over="ignore"):
        out ^= out >> np.uint64(30)
        out *= np.uint64(0xBF58476D1CE4E5B9)
        out ^= out >> np.uint64(27)
        out *= np.uint64(0x94D049BB133111EB)
        out ^= out >> np.uint64(31)
    return out


def _smallest(keys: np.ndarray, count: int) -> np.ndarray:
    mask = np.zeros(len(keys), dtype=bool)
    if count > 0:
        order = np.argsort(keys, kind="stable")
        mask[order[:count]] = True
    return mask


def split(
    frame: pd.DataFrame,
    method: str,
    eval_fraction: float | None,
    split_col: str | None,
    factorized: dict | None = None,
) -> Split:
    """The split of ``frame`` (all input rows, with the split column). ``eval_fraction``: the
    DATA_SPLIT_EVAL_FRACTION the user gave, or None. ``factorized``: see :func:`row_hashes`."""
    n = len(frame)
    fraction_given = eval_fraction is not None
    fraction = round(float(eval_fraction if fraction_given else AUTO_SPLIT_FRACTION), 2)
    if method == "NO_SPLIT":
        return Split(method, np.zeros(n, dtype=bool))
    if method in ("AUTO_SPLIT", "RANDOM"):
        data = frame.drop(columns=[split_col]) if split_col else frame
        count = (
            auto_eval_rows(n) if method == "AUTO_SPLIT" or not fraction_given else int(round(fraction * n))
        )
        return Split(method, _smallest(row_hashes(data, factorized), count))
    column = frame[split_col]
    if method == "CUSTOM":
        bq_type = bigquery_type(column)
        if bq_type not in ("BOOL", "NULL"):
            raise BqmlError(
                f"DATA_SPLIT_METHOD='CUSTOM' needs a BOOL DATA_SPLIT_COL; {split_col!r} is {bq_type} "
                "(TRUE or NULL = evaluation row, FALSE = training row)."
            )
        if pd.api.types.is_bool_dtype(column.dtype) and not pd.api.types.is_extension_array_dtype(
            column.dtype
        ):
            is_false = ~column.to_numpy(dtype=bool)
        else:
            is_false = (column.astype("boolean") == False).fillna(False).to_numpy(dtype=bool)  # noqa: E712
        return Split(method, ~is_false)
    if method == "SEQ":
        bq_type = bigquery_type(column)
        if bq_type in ("ARRAY", "STRUCT", "BOOL"):
            raise BqmlError(
                f"DATA_SPLIT_METHOD='SEQ' needs an orderable DATA_SPLIT_COL; {split_col!r} is {bq_type}."
            )
        count = int(round(fraction * n))
        null = column.isna().to_numpy()
        eval_mask = null.copy()
        if count > 0:
            present = column[~null]
            ordered = present.sort_values(kind="stable")
            first_eval = n - count  # position, in the sorted order, of the first evaluation row
            if first_eval < len(ordered):
                threshold = ordered.iloc[max(first_eval, 0)]
                eval_mask[~null] = (present >= threshold).to_numpy()
        return Split(method, eval_mask)
    raise BqmlError(
        f"Unknown DATA_SPLIT_METHOD {method!r}; supported: AUTO_SPLIT, RANDOM, CUSTOM, SEQ, NO_SPLIT."
    )
