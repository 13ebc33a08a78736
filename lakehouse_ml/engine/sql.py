"""BigQuery ML in SQL, run: model statements and ``ML.*`` functions inside the local warehouse.

Parsing lives in :mod:`lakehouse_ml.bigquery.dialect` (model statements, ``ML.*`` calls, names,
literal values), shared with the lifecycle; this module executes what it finds:

* ``CREATE MODEL``, ``DROP MODEL`` and ``ALTER MODEL`` statements are run by the engine;
* in every other statement each ``ML.<function>(MODEL m, ...)`` call is replaced by a placeholder
  table name. Its input relation (``TABLE t`` or ``(query)``) is evaluated first — recursively,
  because the input query can hold ML calls itself, and with those CTEs of the enclosing ``WITH``
  clauses that it references carried into it — then the engine computes the function, its Arrow
  result is registered on the DuckDB connection under the placeholder name, and the rewritten
  statement runs through the ordinary BigQuery → DuckDB translation. ML calls therefore work
  anywhere a table can appear: joins, subqueries, CTEs, ``WHERE … IN (SELECT … FROM
  ML.PREDICT(...))``, ``CREATE TABLE … AS``, ``INSERT … SELECT``, scripts.
  ``ML.VALIDATE_DATA_DRIFT(base, study [, STRUCT])`` takes no model: both its input relations are
  evaluated the same way and compared by :mod:`lakehouse_ml.bigquery.drift`;
* the manual preprocessing functions (``ML.BUCKETIZE``, ``ML.STANDARD_SCALER(x) OVER()`` …) are
  lowered to plain SQL (:func:`lower_preprocessing`); inside a ``TRANSFORM`` clause the analytic
  ones are *frozen* with the statistics of the training data (:func:`freeze_transform`), and the
  frozen clause is stored with the model as BigQuery SQL, so ``ML.PREDICT`` and the other
  functions re-apply exactly the training-time transformation to their input.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from lakehouse_ml.bigquery.dialect import (
    AlterModel,
    CreateModel,
    DropModel,
    MLCall,
    literal_value,
    ml_call,
    ml_function_name,
    ml_functions,
    one_ml_statement,
    parse_model_statement,
    parse_select_list,
    split_statements,
    transform_output_names,
)
from lakehouse_ml.bigquery.drift import DriftOptions, validate_data_drift_arrow
from lakehouse_ml.core.errors import BqmlError, WarehouseError
from lakehouse_ml.engine.translate import TranslatedStatement, translate_query

log = logging.getLogger("lakehouse_ml.engine")

# Functions whose output has one row per input row: prediction columns, then the input columns.
_ROW_FUNCTIONS = ("PREDICT", "EXPLAIN_PREDICT", "DETECT_ANOMALIES")
# Engine methods that the lead adds later; until then the function fails with a clear error.
_OPTIONAL_ENGINE_METHODS = {"ROC_CURVE": "roc_curve", "CONFUSION_MATRIX": "confusion_matrix"}

# Manual preprocessing functions (bigqueryml-syntax-<name> pages).
SCALAR_PREPROCESSING = ("BUCKETIZE",)
ANALYTIC_PREPROCESSING = (
    "STANDARD_SCALER",
    "MIN_MAX_SCALER",
    "MAX_ABS_SCALER",
    "ROBUST_SCALER",
    "IMPUTER",
    "QUANTILE_BUCKETIZE",
    "LABEL_ENCODER",
)
# Analytic ones that also run outside TRANSFORM, as window functions over the query's rows.
_WINDOW_PREPROCESSING = ("STANDARD_SCALER", "MIN_MAX_SCALER", "MAX_ABS_SCALER", "IMPUTER")
# Columns that must pass through TRANSFORM unchanged (CREATE MODEL reference, "select_list").
_PASS_THROUGH_OPTIONS = ("data_split_col", "kmeans_init_col", "instance_weight_col")
_UNSUPERVISED = ("KMEANS", "PCA", "AUTOENCODER", "MATRIX_FACTORIZATION", "ARIMA_PLUS", "TRANSFORM_ONLY")


# =================================================================================================
# CTEs of the enclosing WITH clauses
# =================================================================================================


def _with_of(node: exp.Expression) -> exp.With | None:
    value = node.args.get("with_") if "with_" in node.args else node.args.get("with")
    return value if isinstance(value, exp.With) else None


def visible_ctes(table: exp.Expression) -> list[exp.CTE]:
    """The CTEs a table reference at ``table`` can see, outermost first (a CTE sees the ones
    defined before it in its own WITH)."""
    scopes: list[list[exp.CTE]] = []
    node = table
    while node.parent is not None:
        parent = node.parent
        if isinstance(parent, exp.With):
            index = next(k for k, cte in enumerate(parent.expressions) if cte is node)
            scopes.append(list(parent.expressions[:index]))
            owner = parent.parent
            if owner is None:
                break
            node = owner
            continue
        with_ = _with_of(parent)
        if with_ is not None and with_ is not node:
            scopes.append(list(with_.expressions))
        node = parent
    ordered: list[exp.CTE] = [cte for scope in reversed(scopes) for cte in scope]
    # An inner CTE shadows an outer one of the same name.
    last = {cte.alias_or_name: k for k, cte in enumerate(ordered)}
    return [cte for k, cte in enumerate(ordered) if last[cte.alias_or_name] == k]


def _references(node: exp.Expression) -> set[str]:
    return {t.name for t in node.find_all(exp.Table) if not t.args.get("db") and t.name}


def attach_ctes(query: exp.Expression, ctes: Sequence[exp.CTE]) -> exp.Expression:
    """``query`` with the CTEs of ``ctes`` that it references (directly or through each other)
    prepended to its own WITH clause."""
    if not ctes or not isinstance(query, exp.Query):
        return query
    own = _with_of(query)
    own_names = {cte.alias_or_name for cte in own.expressions} if own else set()
    by_name = {cte.alias_or_name: cte for cte in ctes}
    needed: set[str] = set()
    frontier = _references(query) - own_names
    while frontier:
        name = frontier.pop()
        if name in by_name and name not in needed:
            needed.add(name)
            frontier |= _references(by_name[name]) - needed
    chosen = [
        cte.copy() for cte in ctes if cte.alias_or_name in needed and cte.alias_or_name not in own_names
    ]
    if not chosen:
        return query
    if own is not None:
        own.set("expressions", chosen + list(own.expressions))
    else:
        query.set("with_", exp.With(expressions=chosen))
    return query


# =================================================================================================
# Manual preprocessing functions
# =================================================================================================


def _ml_args(node: exp.Dot) -> list[exp.Expression]:
    func = node.expression
    if isinstance(func, exp.Anonymous):
        return list(func.expressions)
    return [a for a in [func.this, *func.expressions] if a is not None]


def _float_literal(value: float) -> exp.Expression:
    if value < 0:
        return exp.Neg(this=exp.Literal.number(repr(-float(value))))
    return exp.Literal.number(repr(float(value)))


def _literal(value: Any) -> exp.Expression:
    if value is None:
        return exp.null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(value) if value >= 0 else exp.Neg(this=exp.Literal.number(-value))
    if isinstance(value, float):
        return _float_literal(value)
    return exp.Literal.string(str(value))


def _format_number(value: float) -> str:
    """A FLOAT64 as BigQuery's CAST(x AS STRING) writes it (2.0 → '2', 2.5 → '2.5')."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def bucket_labels(splits: Sequence[float], output_format: str) -> list[str]:
    """Bucket names for ``len(splits) + 1`` buckets (ML.BUCKETIZE / ML.QUANTILE_BUCKETIZE)."""
    output_format = output_format.lower()
    bounds = [None, *splits, None]
    labels = []
    for k in range(len(splits) + 1):
        low, high = bounds[k], bounds[k + 1]
        if output_format == "bucket_names":
            labels.append(f"bin_{k + 1}")
        elif output_format == "bucket_ranges":
            left = "(-inf" if low is None else f"[{_format_number(low)}"
            right = "+inf)" if high is None else f"{_format_number(high)})"
            labels.append(f"{left}, {right}")
        elif output_format == "bucket_ranges_json":
            start = "-Infinity" if low is None else _format_number(low)
            end = "Infinity" if high is None else _format_number(high)
            labels.append(json.dumps({"start": start, "end": end}))
        else:
            raise BqmlError(
                f"Invalid bucket output_format {output_format!r}: use 'bucket_names', 'bucket_ranges' "
                "or 'bucket_ranges_json'."
            )
    return labels


def bucketize_case(
    value: exp.Expression, splits: Sequence[float], output_format: str = "bucket_names"
) -> exp.Expression:
    """``ML.BUCKETIZE`` as a CASE expression: bucket k holds [split k-1, split k)."""
    labels = bucket_labels(splits, output_format)
    ifs = [exp.If(this=exp.Is(this=value.copy(), expression=exp.null()), true=exp.null())]
    for split, label in zip(splits, labels):
        ifs.append(
            exp.If(
                this=exp.LT(this=value.copy(), expression=_float_literal(split)),
                true=exp.Literal.string(label),
            )
        )
    return exp.Case(ifs=ifs, default=exp.Literal.string(labels[-1]))


def _bucketize_args(args: list[exp.Expression]) -> tuple[exp.Expression, list[float], str]:
    if not 2 <= len(args) <= 4:
        raise BqmlError(
            "ML.BUCKETIZE(numerical_expression, array_split_points [, exclude_boundaries] [, output_format])."
        )
    splits = literal_value(args[1])
    if not isinstance(splits, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in splits
    ):
        raise BqmlError("ML.BUCKETIZE: array_split_points must be an array of numbers.")
    splits = [float(v) for v in splits]
    if any(not math.isfinite(v) for v in splits) or splits != sorted(splits):
        raise BqmlError("ML.BUCKETIZE: array_split_points must be finite and in increasing order.")
    exclude = literal_value(args[2]) if len(args) > 2 else False
    output_format = literal_value(args[3]) if len(args) > 3 else "bucket_names"
    if not isinstance(exclude, bool) or not isinstance(output_format, str):
        raise BqmlError("ML.BUCKETIZE: exclude_boundaries is a BOOL and output_format a STRING.")
    if exclude:
        splits = splits[1:-1]
    return args[0], splits, output_format


def _window_stat(func: str, value: exp.Expression) -> exp.Expression:
    return exp.Window(this=exp.func(func, value.copy()), over="OVER")


def _nonzero(divisor: exp.Expression) -> exp.Expression:
    """A divisor that is 1 when the spread is 0 or NULL (a constant column scales to 0)."""
    return exp.Coalesce(
        this=exp.Nullif(this=divisor, expression=exp.Literal.number(0)), expressions=[exp.Literal.number(1)]
    )


def _clamp01(value: exp.Expression) -> exp.Expression:
    return exp.Case(
        ifs=[
            exp.If(
                this=exp.LT(this=value.copy(), expression=exp.Literal.number(0)),
                true=exp.Literal.number("0.0"),
            ),
            exp.If(
                this=exp.GT(this=value.copy(), expression=exp.Literal.number(1)),
                true=exp.Literal.number("1.0"),
            ),
        ],
        default=value,
    )


def _as_float(value: exp.Expression) -> exp.Expression:
    return exp.cast(value.copy(), "DOUBLE")


def _window_lowering(name: str, args: list[exp.Expression]) -> exp.Expression:
    """An analytic preprocessing function over the query's rows, as window functions."""
    e = args[0]
    if name == "STANDARD_SCALER":
        return exp.Div(
            this=exp.paren(exp.Sub(this=e.copy(), expression=_window_stat("AVG", e))),
            expression=_nonzero(_window_stat("STDDEV_SAMP", e)),
        )
    if name == "MIN_MAX_SCALER":
        low, high = _window_stat("MIN", e), _window_stat("MAX", e)
        scaled = exp.Div(
            this=exp.paren(exp.Sub(this=_as_float(e), expression=low)),
            expression=_nonzero(exp.paren(exp.Sub(this=high, expression=low.copy()))),
        )
        return _clamp01(scaled)
    if name == "MAX_ABS_SCALER":
        return exp.Div(this=_as_float(e), expression=_nonzero(_window_stat("MAX", exp.Abs(this=e.copy()))))
    if name == "IMPUTER":
        strategy = literal_value(args[1]) if len(args) == 2 else None
        if strategy != "mean":
            raise BqmlError(
                "Outside TRANSFORM the local warehouse runs ML.IMPUTER(expression, 'mean') OVER() only; "
                "'median' and 'most_frequent' run inside a CREATE MODEL TRANSFORM clause."
            )
        return exp.Coalesce(this=_as_float(e), expressions=[_window_stat("AVG", e)])
    raise AssertionError(name)


def lower_preprocessing(statement: exp.Expression) -> exp.Expression:
    """Rewrite the manual preprocessing functions of ``statement`` as plain SQL; return it.

    ``ML.BUCKETIZE`` becomes a CASE expression anywhere; ``ML.STANDARD_SCALER``,
    ``ML.MIN_MAX_SCALER``, ``ML.MAX_ABS_SCALER`` and ``ML.IMPUTER(x, 'mean')`` with ``OVER()``
    become window functions over the query's rows. Other ``ML.*`` functions fail naming them.
    """
    targets = [n for n in statement.walk(bfs=False) if isinstance(n, exp.Dot) and ml_function_name(n)]
    for node in reversed(targets):  # innermost first
        name = ml_function_name(node)
        window = node.parent if isinstance(node.parent, exp.Window) and node.parent.this is node else None
        args = _ml_args(node)
        if name in SCALAR_PREPROCESSING and window is None:
            value, splits, output_format = _bucketize_args(args)
            replacement, target = bucketize_case(value, splits, output_format), node
        elif name in _WINDOW_PREPROCESSING and window is not None:
            _check_empty_over(window, name)
            replacement, target = _window_lowering(name, args), window
        elif name in ANALYTIC_PREPROCESSING:
            if window is None:
                raise BqmlError(f"ML.{name} is an analytic function: write ML.{name}(...) OVER().")
            raise BqmlError(
                f"ML.{name}(...) OVER() runs locally only inside a CREATE MODEL TRANSFORM clause (where "
                "its statistics are computed on the training data). Outside TRANSFORM the local warehouse "
                f"runs ML.BUCKETIZE and ML.{', ML.'.join(_WINDOW_PREPROCESSING)}."
            )
        else:
            raise BqmlError(
                f"ML.{name} is not supported by the local warehouse. Manual preprocessing functions it runs: "
                f"ML.{', ML.'.join(SCALAR_PREPROCESSING + ANALYTIC_PREPROCESSING)} (see docs/bqml-coverage.md)."
            )
        if target is statement:
            return replacement
        target.replace(replacement)
    return statement


def _check_empty_over(window: exp.Window, name: str) -> None:
    if window.args.get("partition_by") or window.args.get("order") or window.args.get("spec"):
        raise BqmlError(f"ML.{name} takes an empty OVER() clause.")


# -- freezing TRANSFORM statistics ---------------------------------------------------------------


def _quantile(sorted_values: Sequence[Any], numerator: int, denominator: int) -> Any:
    """The value of rank ceil(n · numerator / denominator) (1-based) of sorted values, as
    BigQuery's APPROX_QUANTILES returns it on data it holds exactly: [1..5] at 1/3 → 2, at 2/3 → 4
    (the ML.QUANTILE_BUCKETIZE example); [-3, 1, 2, 3, 4, 5] at 1/2 → 2 (ML.ROBUST_SCALER example)."""
    n = len(sorted_values)
    rank = max(-(-n * numerator // denominator), 1)
    return sorted_values[min(rank, n) - 1]


def _numbers(values: pa.Array, name: str) -> list[float]:
    if not (
        pa.types.is_integer(values.type)
        or pa.types.is_floating(values.type)
        or pa.types.is_decimal(values.type)
    ):
        raise BqmlError(f"ML.{name} takes a numerical expression, not {values.type}.")
    return sorted(
        float(v) for v in values.to_pylist() if v is not None and not (isinstance(v, float) and math.isnan(v))
    )


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance)


def _divisor(value: float | None) -> float:
    return value if value is not None and value != 0 and math.isfinite(value) else 1.0


def freeze_function(name: str, args: list[exp.Expression], values: pa.Array) -> exp.Expression:
    """The analytic preprocessing function ``ML.name(args) OVER()`` with the statistics of
    ``values`` (its first argument over the training rows) written in as literals.

    The result is BigQuery SQL that needs no statistics: ``(x - 12.5) / 3.1``, ``CASE …``,
    ``ML.BUCKETIZE(x, [2.0, 4.0], FALSE, 'bucket_names')``.
    """
    e = args[0]

    def constant(k: int, default: Any) -> Any:
        return literal_value(args[k]) if len(args) > k else default

    if name == "STANDARD_SCALER":
        mean, std = _mean_std(_numbers(values, name))
        if mean is None:
            return exp.cast(exp.null(), "DOUBLE")
        return exp.Div(
            this=exp.paren(exp.Sub(this=e.copy(), expression=_float_literal(mean))),
            expression=_float_literal(_divisor(std)),
        )
    if name == "MIN_MAX_SCALER":
        numbers = _numbers(values, name)
        if not numbers:
            return exp.cast(exp.null(), "DOUBLE")
        low, high = numbers[0], numbers[-1]
        scaled = exp.Div(
            this=exp.paren(exp.Sub(this=_as_float(e), expression=_float_literal(low))),
            expression=_float_literal(_divisor(high - low)),
        )
        return _clamp01(scaled)
    if name == "MAX_ABS_SCALER":
        numbers = _numbers(values, name)
        top = max((abs(v) for v in numbers), default=None)
        return exp.Div(this=_as_float(e), expression=_float_literal(_divisor(top)))
    if name == "ROBUST_SCALER":
        numbers = _numbers(values, name)
        quantile_range = constant(1, [25, 75])
        with_median = constant(2, True)
        with_range = constant(3, True)
        if (
            not isinstance(quantile_range, list)
            or len(quantile_range) != 2
            or not all(isinstance(q, int) and not isinstance(q, bool) for q in quantile_range)
            or not 0 < quantile_range[0] < quantile_range[1] < 100
        ):
            raise BqmlError(
                "ML.ROBUST_SCALER: quantile_range is [low, high] with 0 < low < high < 100, e.g. [25, 75]."
            )
        if not numbers:
            return exp.cast(exp.null(), "DOUBLE")
        result: exp.Expression = _as_float(e)
        if with_median:
            result = exp.paren(exp.Sub(this=result, expression=_float_literal(_quantile(numbers, 1, 2))))
        if with_range:
            spread = _quantile(numbers, quantile_range[1], 100) - _quantile(numbers, quantile_range[0], 100)
            result = exp.Div(this=result, expression=_float_literal(_divisor(spread)))
        return result
    if name == "IMPUTER":
        if len(args) != 2:
            raise BqmlError(
                "ML.IMPUTER(expression, strategy) OVER(): strategy is 'mean', 'median' or 'most_frequent'."
            )
        strategy = literal_value(args[1])
        present = [
            v for v in values.to_pylist() if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        is_string = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
        if strategy in ("mean", "median") and is_string:
            raise BqmlError(
                f"ML.IMPUTER: strategy '{strategy}' needs a numerical expression; use 'most_frequent' for STRING."
            )
        if strategy == "mean":
            fill: Any = math.fsum(float(v) for v in present) / len(present) if present else None
        elif strategy == "median":
            fill = _quantile(sorted(float(v) for v in present), 1, 2) if present else None
        elif strategy == "most_frequent":
            counts: dict[Any, int] = {}
            for v in present:
                counts[v] = counts.get(v, 0) + 1
            # Ties go to the smallest value (BigQuery does not document its tie-break).
            fill = min(counts, key=lambda v: (-counts[v], v)) if counts else None
            if fill is not None and not is_string:
                fill = float(fill)
        else:
            raise BqmlError(
                f"ML.IMPUTER: unknown strategy {strategy!r}; use 'mean', 'median' or 'most_frequent'."
            )
        target = e.copy() if is_string else _as_float(e)
        return exp.Coalesce(this=target, expressions=[_literal(fill)])
    if name == "QUANTILE_BUCKETIZE":
        if len(args) not in (2, 3):
            raise BqmlError(
                "ML.QUANTILE_BUCKETIZE(numerical_expression, num_buckets [, output_format]) OVER()."
            )
        buckets = literal_value(args[1])
        output_format = constant(2, "bucket_names")
        if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 1:
            raise BqmlError("ML.QUANTILE_BUCKETIZE: num_buckets is a positive INT64.")
        bucket_labels([], str(output_format))  # validates the format
        numbers = _numbers(values, name)
        splits: list[float] = []
        for k in range(1, buckets):
            if numbers:
                split = _quantile(numbers, k, buckets)
                if not splits or split > splits[-1]:
                    splits.append(split)
        return exp.Dot(
            this=exp.to_identifier("ML"),
            expression=exp.Anonymous(
                this="BUCKETIZE",
                expressions=[
                    e.copy(),
                    exp.Array(expressions=[_float_literal(s) for s in splits]),
                    exp.false(),
                    exp.Literal.string(output_format),
                ],
            ),
        )
    if name == "LABEL_ENCODER":
        top_k = constant(1, 32000)
        threshold = constant(2, 5)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (top_k, threshold)) or top_k < 1:
            raise BqmlError(
                "ML.LABEL_ENCODER(string_expression [, top_k] [, frequency_threshold]) OVER(): INT64 arguments."
            )
        counts = {}
        for v in values.to_pylist():
            if v is not None:
                counts[v] = counts.get(v, 0) + 1
        frequent = sorted((v for v, n in counts.items() if n >= threshold), key=lambda v: (-counts[v], v))[
            :top_k
        ]
        vocabulary = sorted(frequent)
        if not vocabulary:
            return exp.Literal.number(0)
        return exp.Case(
            this=e.copy(),
            ifs=[exp.If(this=_literal(v), true=exp.Literal.number(k + 1)) for k, v in enumerate(vocabulary)],
            default=exp.Literal.number(0),
        )
    raise AssertionError(name)


def freeze_transform(
    items: list[exp.Expression], evaluate: Callable[[exp.Expression], pa.Array]
) -> list[exp.Expression]:
    """Freeze the analytic preprocessing functions of a TRANSFORM select list with the statistics
    of the training rows; ``evaluate(expression)`` returns its values over those rows.

    Unsupported ``ML.*`` functions fail, naming themselves and the supported ones.
    """
    frozen = [item.copy() for item in items]
    for k, item in enumerate(frozen):
        targets = [n for n in item.walk(bfs=False) if isinstance(n, exp.Dot) and ml_function_name(n)]
        for node in reversed(targets):  # innermost first: an outer function sees frozen inner ones
            name = ml_function_name(node)
            window = node.parent if isinstance(node.parent, exp.Window) and node.parent.this is node else None
            if name in SCALAR_PREPROCESSING:
                if window is not None:
                    raise BqmlError(f"ML.{name} is a scalar function: it takes no OVER() clause.")
                _bucketize_args(_ml_args(node))  # validate now
                continue
            if name not in ANALYTIC_PREPROCESSING:
                raise BqmlError(
                    f"ML.{name} is not supported in a local TRANSFORM clause. Supported: "
                    f"ML.{', ML.'.join(SCALAR_PREPROCESSING + ANALYTIC_PREPROCESSING)}. Other manual "
                    "preprocessing functions (ML.ONE_HOT_ENCODER, ML.FEATURE_CROSS, ML.HASH_BUCKETIZE, …) "
                    "run on the gcp backend."
                )
            if window is None:
                raise BqmlError(f"ML.{name} is an analytic function: write ML.{name}(...) OVER().")
            _check_empty_over(window, name)
            args = _ml_args(node)
            if not args:
                raise BqmlError(f"ML.{name} needs an expression to transform.")
            replacement = freeze_function(name, args, evaluate(args[0]))
            if window is item:
                frozen[k] = item = replacement
            else:
                window.replace(replacement)
    return frozen


def _check_transform_items(items: list[exp.Expression]) -> None:
    for item in items:
        text = item.sql("bigquery")
        if not isinstance(item, (exp.Alias, exp.Column, exp.Star)):
            raise BqmlError(f"TRANSFORM column {text} needs a name: write {text} AS name.")
        for node in item.walk():
            if isinstance(node, (exp.Select, exp.Subquery)):
                raise BqmlError(f"TRANSFORM cannot hold subqueries ({text}).")
            if isinstance(node, exp.AggFunc) and not isinstance(node.parent, exp.Window):
                raise BqmlError(f"TRANSFORM cannot hold aggregate functions ({text}).")
            if isinstance(node, exp.Window) and not (
                isinstance(node.this, exp.Dot) and ml_function_name(node.this)
            ):
                raise BqmlError(
                    f"TRANSFORM allows only BigQuery ML analytic functions, not {node.sql('bigquery')}."
                )


def _passes_through(items: Sequence[exp.Expression], column: str) -> bool:
    """Whether ``column`` reaches the output untransformed: named bare, or through ``*``."""
    for item in items:
        if isinstance(item, exp.Column) and item.name.lower() == column.lower():
            return True
        if isinstance(item, exp.Star):
            excluded = {c.name.lower() for c in item.args.get("except_") or item.args.get("except") or []}
            replaced = {r.alias_or_name.lower() for r in item.args.get("replace") or []}
            if column.lower() not in excluded | replaced:
                return True
    return False


def special_columns(options: Mapping[str, Any]) -> list[str]:
    """The columns that must pass through TRANSFORM untransformed: the label (supervised models)
    and DATA_SPLIT_COL, KMEANS_INIT_COL, INSTANCE_WEIGHT_COL."""
    model_type = str(options.get("model_type", "")).upper()
    columns: list[str] = []
    if model_type not in _UNSUPERVISED:
        labels = options.get("input_label_cols") or ["label"]
        columns.extend(str(c) for c in (labels if isinstance(labels, list) else [labels]))
    columns.extend(str(options[o]) for o in _PASS_THROUGH_OPTIONS if options.get(o))
    return columns


def check_pass_through(
    items: Sequence[exp.Expression], options: Mapping[str, Any], input_columns: Sequence[str]
) -> None:
    present = {c.lower() for c in input_columns}
    for column in special_columns(options):
        if column.lower() in present and not _passes_through(items, column):
            raise BqmlError(
                f"Column {column} must appear in TRANSFORM without transformation and without an alias "
                "(by name, or through *): the label, DATA_SPLIT_COL, KMEANS_INIT_COL and "
                "INSTANCE_WEIGHT_COL pass through TRANSFORM unchanged."
            )


def select_over(items: Sequence[exp.Expression], table: str) -> exp.Expression:
    """``SELECT items FROM table`` with the manual preprocessing functions lowered to plain SQL."""
    return lower_preprocessing(exp.select(*[i.copy() for i in items]).from_(exp.to_table(table)))


def model_transform_query(
    metadata: Mapping[str, Any], input_columns: Sequence[str], table: str
) -> exp.Expression | None:
    """The query that applies a model's TRANSFORM (``transform_sql``, its training statistics
    frozen in) to the rows of ``table``, whose columns are ``input_columns``: None for a model
    without one. The label and the other pass-through columns (``options``, ``label_columns`` of
    :meth:`BqmlEngine.model_metadata`) may be missing from the input, as at prediction time. The
    local warehouse runs it for ML.PREDICT and the other model functions; the local endpoint
    server for each request."""
    transform_sql = metadata.get("transform_sql")
    if not transform_sql:
        return None
    droppable = [*special_columns(metadata.get("options") or {}), *(metadata.get("label_columns") or [])]
    return select_over(transform_for_input(parse_select_list(transform_sql), input_columns, droppable), table)


def transform_for_input(
    items: Sequence[exp.Expression], input_columns: Sequence[str], droppable: Sequence[str]
) -> list[exp.Expression]:
    """The TRANSFORM items to apply to an input that may lack the label (and the other
    pass-through columns in ``droppable``): items naming a missing one of those are dropped."""
    present = {c.lower() for c in input_columns}
    drop = {c.lower() for c in droppable} - present
    kept = [i for i in items if not (isinstance(i, exp.Column) and i.name.lower() in drop)]
    needed = {
        c.name
        for item in kept
        for c in item.find_all(exp.Column)
        if not isinstance(c.parent, exp.Star) and c.name.lower() not in present
    }
    # Columns named only in * EXCEPT(...) are not needed.
    needed -= {
        c.name for item in kept if isinstance(item, exp.Star) for c in (item.args.get("except_") or [])
    }
    if needed:
        raise BqmlError(
            f"The input lacks column(s) {', '.join(sorted(needed))} that the model's TRANSFORM clause uses."
        )
    return kept


# =================================================================================================
# Running: a session on one DuckDB connection
# =================================================================================================

RunStatement = Callable[[TranslatedStatement, bool], Any]


def _to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow → pandas for the engine: NUMERIC/BIGNUMERIC (decimal) columns become FLOAT64."""
    columns = []
    for column in table.columns:
        if pa.types.is_decimal(column.type):
            column = pc.cast(column, pa.float64())
        columns.append(column)
    return pa.table(columns, names=table.column_names).to_pandas()


class BqmlSession:
    """Runs BigQuery SQL with BigQuery ML on one DuckDB connection.

    ``run(statement, fetch_arrow)`` runs a translated statement on the connection (the warehouse's
    error handling and parameter binding); ``engine`` is the :class:`BqmlEngine`. Placeholder
    tables stay registered until :meth:`close`.
    """

    def __init__(self, conn: Any, engine: Any, run: RunStatement, params: Mapping[str, Any] | None = None):
        self._conn = conn
        self._engine = engine
        self._run_translated = run
        self._params = dict(params or {})
        self._registered: list[str] = []
        self._prefix = f"__bqml_{uuid.uuid4().hex[:8]}_"
        self._counter = 0

    def _new_name(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter}"

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> BqmlSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        while self._registered:
            name = self._registered.pop()
            try:
                self._conn.unregister(name)
            except Exception:  # noqa: BLE001, S110 - best effort: the connection may be gone
                pass

    def _register(self, table: pa.Table) -> str:
        name = self._new_name()
        self._conn.register(name, table)
        self._registered.append(name)
        return name

    # -- scripts and statements -------------------------------------------------------------------
    def run_script(self, sql: str) -> pa.Table | None:
        """Run every statement of ``sql``; the rows of the last one when it is a query."""
        statements = split_statements(sql)
        if not statements:
            raise WarehouseError("The SQL is empty: give at least one statement.")
        result = None
        for text in statements:
            result = self.run_statement(text)
        return result

    def run_statement(self, text: str) -> pa.Table | None:
        model_statement = parse_model_statement(text, self._params)
        if isinstance(model_statement, CreateModel):
            self.create_model(model_statement)
            return None
        if isinstance(model_statement, DropModel):
            self._engine.drop_model(model_statement.model.name, if_exists=model_statement.if_exists)
            log.info("Dropped model %s", model_statement.model.name)
            return None
        if isinstance(model_statement, AlterModel):
            if model_statement.if_exists and not self._engine.model_exists(model_statement.model.name):
                return None
            self._engine.alter_model(model_statement.model.name, model_statement.options)
            return None
        statement = self.prepare(text)
        translated = translate_query(statement)
        if translated.returns_rows:
            return self._run_translated(translated, True)
        self._run_translated(translated, False)
        return None

    def prepare(self, text: str | exp.Expression, ctes: Sequence[exp.CTE] = ()) -> exp.Expression:
        """One statement (text, or a tree that is rewritten in place) with its ML calls evaluated
        (each :class:`MLFunction` node replaced by its registered placeholder table), the CTEs
        ``ctes`` it references attached, and preprocessing functions lowered: ready to translate."""
        statement = one_ml_statement(text) if isinstance(text, str) else text
        # Every outermost call is replaced first, so the CTEs an input sees hold placeholders only.
        calls: list[tuple[MLCall, exp.Table]] = []
        for node in ml_functions(statement):  # outermost calls; their inputs hold the inner ones
            holder = node.parent
            if not isinstance(holder, exp.Table) or holder is statement:
                raise BqmlError(f"ML.{node.function}(...) must be used as a table (FROM, JOIN, subquery).")
            call = ml_call(node, self._params)
            placeholder = exp.to_table(self._new_name())
            if holder.args.get("alias") is not None:
                placeholder.set("alias", holder.args["alias"])
            holder.replace(placeholder)
            calls.append((call, placeholder))
        for call, placeholder in calls:
            result = self.call(call, [*ctes, *visible_ctes(placeholder)])
            self._conn.register(placeholder.name, result)
            self._registered.append(placeholder.name)
        statement = attach_ctes(statement, ctes)
        return lower_preprocessing(statement)

    def relation(self, query: str | exp.Expression, ctes: Sequence[exp.CTE] = ()) -> pa.Table:
        """The rows of ``query`` (text or a tree; it may hold ML calls), seeing the CTEs ``ctes``."""
        statement = self.prepare(query, ctes)
        if not isinstance(statement, exp.Query):
            shown = query if isinstance(query, str) else query.sql("bigquery")
            raise BqmlError(
                f"Expected a query, got {type(statement).__name__.upper()}: {shown.strip()[:80]!r}."
            )
        return self._run_translated(translate_query(statement), True)

    def translate_query(self, sql: str) -> TranslatedStatement:
        """``sql`` (exactly one query, possibly with ML calls) translated for DuckDB."""
        statement = self.prepare(sql)
        if not isinstance(statement, exp.Query):
            raise WarehouseError(
                f"Expected exactly one SELECT query, got: {type(statement).__name__.upper()}."
            )
        return translate_query(statement)

    # -- the engine -------------------------------------------------------------------------------
    def _transform_items(self, model: str) -> list[exp.Expression] | None:
        transform_sql = self._engine.model_metadata(model).get("transform_sql")
        return parse_select_list(transform_sql) if transform_sql else None

    def _select_over(self, items: Sequence[exp.Expression], table: pa.Table) -> pa.Table:
        return self._run_translated(translate_query(select_over(items, self._register(table))), True)

    def _apply_transform(self, model: str, table: pa.Table) -> pa.Table:
        """The input of a model function after the model's TRANSFORM (itself without one)."""
        metadata = self._engine.model_metadata(model)
        query = model_transform_query(metadata, table.column_names, self._register(table))
        return table if query is None else self._run_translated(translate_query(query), True)

    def call(self, call: MLCall, ctes: Sequence[exp.CTE] = ()) -> pa.Table:
        """The result of one ML table function."""
        if call.function == "VALIDATE_DATA_DRIFT":
            return self._validate_data_drift(call, ctes)
        assert call.model is not None
        engine, name, options = self._engine, call.model.name, dict(call.options)
        if call.function in _OPTIONAL_ENGINE_METHODS and not hasattr(
            engine, _OPTIONAL_ENGINE_METHODS[call.function]
        ):
            raise BqmlError(
                f"ML.{call.function} is not supported locally yet: the local BigQuery ML engine has no "
                f"{_OPTIONAL_ENGINE_METHODS[call.function]}(). Run it "
                "on the gcp backend, or compute it from ML.PREDICT."
            )
        if not engine.model_exists(name):
            raise BqmlError(
                f"Model {call.model.raw} does not exist in the local warehouse. Create it first with "
                f"CREATE MODEL {call.model.raw} OPTIONS(...) AS SELECT ..."
            )
        source = self.relation(call.input.tree(), ctes) if call.input is not None else None
        if call.function == "TRANSFORM":
            items = self._transform_items(name)
            if items is None:
                raise BqmlError(
                    f"ML.TRANSFORM needs a model created with a TRANSFORM clause; {call.model.raw} has none."
                )
            transformed = self._apply_transform(name, source)
            extra = [c for c in source.column_names if c not in transformed.column_names]
            return pa.table(
                [*transformed.columns, *(source.column(c) for c in extra)],
                names=[*transformed.column_names, *extra],
            )
        frame = None
        if source is not None:
            frame = _to_frame(self._apply_transform(name, source))
        if call.function == "PREDICT":
            result = engine.predict(name, frame, options)
        elif call.function == "EVALUATE":
            result = engine.evaluate(name, frame, options)
        elif call.function == "DETECT_ANOMALIES":
            result = engine.detect_anomalies(name, frame, options)
        elif call.function == "EXPLAIN_PREDICT":
            result = engine.explain_predict(name, frame, options)
        elif call.function == "GLOBAL_EXPLAIN":
            result = engine.global_explain(name, options)
        elif call.function == "FEATURE_INFO":
            result = engine.feature_info(name)
        elif call.function == "TRAINING_INFO":
            result = engine.training_info(name)
        elif call.function == "WEIGHTS":
            result = engine.weights(name, options)
        elif call.function == "ROC_CURVE":
            if call.thresholds is not None:
                options["thresholds"] = call.thresholds
            result = engine.roc_curve(name, frame, options)
        elif call.function == "CONFUSION_MATRIX":
            result = engine.confusion_matrix(name, frame, options)
        else:  # pragma: no cover - SIGNATURES and this dispatch list the same functions
            raise AssertionError(call.function)
        if not isinstance(result, pa.Table):
            result = pa.Table.from_pandas(result, preserve_index=False)
        if call.function in _ROW_FUNCTIONS and source is not None and frame is not None:
            result = _with_input_columns(result, list(frame.columns), source)
        return result

    def _validate_data_drift(self, call: MLCall, ctes: Sequence[exp.CTE]) -> pa.Table:
        """``ML.VALIDATE_DATA_DRIFT``: both inputs evaluated on DuckDB, compared by
        :mod:`lakehouse_ml.bigquery.drift` (TFDV's arithmetic, BigQuery's output)."""

        options = DriftOptions.parse(call.options)  # bad options fail before any input query runs
        base, study = (self.relation(relation.tree(), ctes) for relation in call.inputs)
        log.info("ML.VALIDATE_DATA_DRIFT: base %d rows, study %d rows", base.num_rows, study.num_rows)
        return validate_data_drift_arrow(base, study, options)

    def create_model(self, statement: CreateModel) -> dict[str, Any] | None:
        engine, name = self._engine, statement.model.name
        if engine.model_exists(name):
            if statement.if_not_exists:
                log.info("Model %s exists: CREATE MODEL IF NOT EXISTS leaves it as it is", name)
                return None
            if not statement.replace:
                raise BqmlError(
                    f"Model {statement.model.raw} already exists. Use CREATE OR REPLACE MODEL to replace it, "
                    "or CREATE MODEL IF NOT EXISTS to keep it."
                )
        log.info("CREATE MODEL %s: running the training query", name)
        training = self.relation(statement.query)
        transform_sql = None
        input_frame = None
        if statement.transform is not None:
            input_frame = _to_frame(training)
            training, transform_sql = self._transform_training(statement, training)
        if training.num_rows == 0:
            raise BqmlError(f"CREATE MODEL {statement.model.raw}: the training query returned no rows.")
        log.info("CREATE MODEL %s: training on %d rows", name, training.num_rows)
        return engine.create_model(
            name,
            statement.options,
            _to_frame(training),
            replace=statement.replace,
            if_not_exists=statement.if_not_exists,
            transform_sql=transform_sql,
            progress=lambda message: log.info("%s: %s", name, message),
            **({"input_frame": input_frame} if input_frame is not None else {}),
        )

    def _transform_training(self, statement: CreateModel, training: pa.Table) -> tuple[pa.Table, str]:
        items = parse_select_list(statement.transform or "")
        _check_transform_items(items)
        source = self._register(training)

        def evaluate(expression: exp.Expression) -> pa.Array:
            query = lower_preprocessing(exp.select(expression.copy().as_("v")).from_(exp.to_table(source)))
            return self._run_translated(translate_query(query), True).column(0).combine_chunks()

        frozen = freeze_transform(items, evaluate)
        check_pass_through(frozen, statement.options, training.column_names)
        names = transform_output_names(frozen, training.column_names)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise BqmlError(f"TRANSFORM produces column(s) {', '.join(duplicates)} more than once.")
        transformed = self._select_over(frozen, training)
        return transformed, ", ".join(item.sql("bigquery") for item in frozen)


def _with_input_columns(result: pa.Table, frame_columns: Sequence[str], source: pa.Table) -> pa.Table:
    """A row function's output as BigQuery ML returns it: the function's own columns, then every
    column of the input relation (as it was, before any TRANSFORM)."""
    if result.num_rows != source.num_rows:
        return result
    known = set(frame_columns)
    own = [c for c in result.column_names if c not in known]
    arrays = [result.column(c) for c in own] + [source.column(c) for c in source.column_names]
    return pa.table(arrays, names=[*own, *source.column_names])


__all__ = [
    "BqmlSession",
    "attach_ctes",
    "freeze_transform",
    "lower_preprocessing",
    "model_transform_query",
    "visible_ctes",
]
