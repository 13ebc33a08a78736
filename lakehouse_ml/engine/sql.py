"""BigQuery ML in SQL: model statements and ``ML.*`` functions inside the local warehouse.

sqlglot parses neither ``ALTER MODEL`` nor most ``ML.*`` table functions (their ``MODEL m``
argument), so this module works at the token level, with sqlglot's BigQuery tokenizer (it knows
strings, comments and quoted identifiers, so ``'ML.PREDICT('`` in a string is not a call):

* a script is split into statements at its ``;`` tokens;
* ``CREATE [OR REPLACE] MODEL [IF NOT EXISTS] m [TRANSFORM(...)] [OPTIONS(...)] AS query``,
  ``DROP MODEL [IF EXISTS] m`` and ``ALTER MODEL [IF EXISTS] m SET OPTIONS(...)`` are parsed here
  (:func:`parse_model_statement`) and run by the engine;
* in every other statement each ``ML.<function>(MODEL m, ...)`` call is cut out
  (:func:`find_ml_calls`) and replaced by a placeholder table name. Its input relation
  (``TABLE t`` or ``(query)``) is evaluated first — recursively, because the input query can hold
  ML calls itself, and with those CTEs of the enclosing ``WITH`` clauses that it references
  carried into it — then the engine computes the function, its Arrow result is registered on the
  DuckDB connection under the placeholder name, and the rewritten statement runs through the
  ordinary BigQuery → DuckDB translation. ML calls therefore work anywhere a table can appear:
  joins, subqueries, CTEs, ``WHERE … IN (SELECT … FROM ML.PREDICT(...))``, ``CREATE TABLE … AS``,
  ``INSERT … SELECT``, scripts. ``ML.VALIDATE_DATA_DRIFT(base, study [, STRUCT])`` takes no model:
  both its input relations are evaluated the same way and compared by
  :mod:`lakehouse_ml.bigquery.drift`;
* the manual preprocessing functions (``ML.BUCKETIZE``, ``ML.STANDARD_SCALER(x) OVER()`` …) are
  lowered to plain SQL (:func:`lower_preprocessing`); inside a ``TRANSFORM`` clause the analytic
  ones are *frozen* with the statistics of the training data (:func:`freeze_transform`), and the
  frozen clause is stored with the model as BigQuery SQL, so ``ML.PREDICT`` and the other
  functions re-apply exactly the training-time transformation to their input.

Model names ``project.dataset.model``, ``dataset.model`` and ``model`` (quoted or not) map to the
plain model identifier: the local warehouse has one dataset. ``OPTIONS(...)`` and ``STRUCT(...)``
arguments take literal values (:func:`literal_value`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp
from sqlglot.dialects.bigquery import BigQuery
from sqlglot.tokens import Token, TokenType

from lakehouse_ml.bigquery.dialect import parse_bigquery
from lakehouse_ml.core.errors import BqmlError, SQLTranslationError, WarehouseError
from lakehouse_ml.core.identifiers import check_identifier
from lakehouse_ml.engine.translate import TranslatedStatement, translate_query

log = logging.getLogger("lakehouse_ml.engine")

# ML table functions the local warehouse runs, with their argument shapes in the documented order
# (bigqueryml-syntax-<function> reference pages). "?" marks an optional argument; "input" is
# ``TABLE t`` or ``(query)``; "struct" is ``STRUCT(value AS name, ...)``; "array" is an ARRAY of
# thresholds (``GENERATE_ARRAY(...)`` or ``[...]``).
SIGNATURES: dict[str, tuple[str, ...]] = {
    "PREDICT": ("input", "struct?"),
    "EVALUATE": ("input?", "struct?"),
    "DETECT_ANOMALIES": ("struct?", "input?"),
    "EXPLAIN_PREDICT": ("input", "struct?"),
    "GLOBAL_EXPLAIN": ("struct?",),
    "FEATURE_INFO": (),
    "TRAINING_INFO": (),
    "WEIGHTS": ("struct?",),
    "ROC_CURVE": ("input?", "array?", "struct?"),
    "CONFUSION_MATRIX": ("input?", "struct?"),
    "TRANSFORM": ("input",),
    # No MODEL argument: two input relations (base, study); the optional trailing MODEL only adds
    # a Vertex AI visualization_link and is refused locally.
    "VALIDATE_DATA_DRIFT": ("input", "input", "struct?", "model?"),
}
# Functions that take no MODEL as their first argument.
_MODEL_FREE = ("VALIDATE_DATA_DRIFT",)
_SIGNATURE_TEXT = {
    "PREDICT": "ML.PREDICT(MODEL m, {TABLE t | (query)} [, STRUCT(...)])",
    "EVALUATE": "ML.EVALUATE(MODEL m [, {TABLE t | (query)}] [, STRUCT(...)])",
    "DETECT_ANOMALIES": "ML.DETECT_ANOMALIES(MODEL m [, STRUCT(contamination AS contamination)] [, {TABLE t | (query)}])",
    "EXPLAIN_PREDICT": "ML.EXPLAIN_PREDICT(MODEL m, {TABLE t | (query)} [, STRUCT(...)])",
    "GLOBAL_EXPLAIN": "ML.GLOBAL_EXPLAIN(MODEL m [, STRUCT(class_level_explain AS class_level_explain)])",
    "FEATURE_INFO": "ML.FEATURE_INFO(MODEL m)",
    "TRAINING_INFO": "ML.TRAINING_INFO(MODEL m)",
    "WEIGHTS": "ML.WEIGHTS(MODEL m [, STRUCT(standardize AS standardize)])",
    "ROC_CURVE": "ML.ROC_CURVE(MODEL m [, {TABLE t | (query)}] [, GENERATE_ARRAY(thresholds)] [, STRUCT(...)])",
    "CONFUSION_MATRIX": "ML.CONFUSION_MATRIX(MODEL m [, {TABLE t | (query)}] [, STRUCT(threshold AS threshold)])",
    "TRANSFORM": "ML.TRANSFORM(MODEL m, {TABLE t | (query)})",
    "VALIDATE_DATA_DRIFT": (
        "ML.VALIDATE_DATA_DRIFT({TABLE base | (query)}, {TABLE study | (query)} [, STRUCT(... AS num_histogram_buckets, "
        "... AS categorical_default_threshold, [('col', 0.1)] AS thresholds, ...)])"
    ),
}
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

_WORD = re.compile(r"^[A-Za-z0-9_]+$")
_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


# =================================================================================================
# Tokens
# =================================================================================================


def tokenize(sql: str) -> list[Token]:
    """BigQuery tokens of ``sql`` (``start``/``end`` are inclusive character offsets)."""
    try:
        return BigQuery().tokenize(sql)
    except sqlglot.errors.TokenError as err:
        raise WarehouseError(f"Could not parse the BigQuery SQL: {err}") from None


def _text(sql: str, tokens: Sequence[Token], lo: int, hi: int) -> str:
    """The source text of ``tokens[lo:hi]`` (with the comments and spaces between them)."""
    if hi <= lo:
        return ""
    return sql[tokens[lo].start : tokens[hi - 1].end + 1]


def _closing(tokens: Sequence[Token], i: int) -> int:
    """Index of the ``)`` (or ``]``) that closes the bracket at ``tokens[i]``."""
    opening = tokens[i].token_type
    pairs = {TokenType.L_PAREN: TokenType.R_PAREN, TokenType.L_BRACKET: TokenType.R_BRACKET}
    closing = pairs[opening]
    depth = 0
    for j in range(i, len(tokens)):
        kind = tokens[j].token_type
        if kind == opening:
            depth += 1
        elif kind == closing:
            depth -= 1
            if depth == 0:
                return j
    raise WarehouseError(
        f"Could not parse the BigQuery SQL: the {tokens[i].text!r} at line {tokens[i].line}, "
        f"column {tokens[i].col} is never closed."
    )


def _split_top_level(tokens: Sequence[Token], lo: int, hi: int) -> list[tuple[int, int]]:
    """Ranges of ``tokens[lo:hi]`` between commas that are not inside brackets."""
    parts: list[tuple[int, int]] = []
    depth = 0
    start = lo
    for j in range(lo, hi):
        kind = tokens[j].token_type
        if kind in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
        elif kind in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1
        elif kind == TokenType.COMMA and depth == 0:
            parts.append((start, j))
            start = j + 1
    parts.append((start, hi))
    return parts


def _is(token: Token | None, word: str) -> bool:
    return token is not None and token.token_type != TokenType.STRING and token.text.upper() == word


def split_statements(sql: str) -> list[str]:
    """The statements of a script, split at ``;`` tokens (empty statements dropped)."""
    tokens = tokenize(sql)
    statements: list[str] = []
    start = 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            text = sql[start : token.start]
            if tokenize(text):
                statements.append(text)
            start = token.end + 1
    rest = sql[start:]
    if tokenize(rest):
        statements.append(rest)
    return statements


@functools.lru_cache(maxsize=512)
def mentions_bigquery_ml(sql: str) -> bool:
    """Whether ``sql`` may hold BigQuery ML (a ``MODEL`` keyword or an ``ML.``/``AI.`` call).

    A cheap token test: when False the SQL takes the plain translation path unchanged.
    """
    try:
        tokens = tokenize(sql)
    except WarehouseError:
        return False
    for i, token in enumerate(tokens):
        if token.token_type == TokenType.MODEL:
            return True
        if (
            token.text.upper() in ("ML", "AI")
            and i + 1 < len(tokens)
            and tokens[i + 1].token_type == TokenType.DOT
        ):
            return True
    return False


# =================================================================================================
# Parsed forms
# =================================================================================================


@dataclass(frozen=True)
class ModelRef:
    """A model as written (``raw``) and the plain identifier it maps to (``name``)."""

    raw: str
    name: str


@dataclass(frozen=True)
class CreateModel:
    model: ModelRef
    replace: bool
    if_not_exists: bool
    options: dict[str, Any]
    query: str
    transform: str | None = None  # the TRANSFORM select list, as written
    name_span: tuple[int, int] = (0, 0)  # where the model name is in the statement's text


@dataclass(frozen=True)
class DropModel:
    model: ModelRef
    if_exists: bool


@dataclass(frozen=True)
class AlterModel:
    model: ModelRef
    if_exists: bool
    options: dict[str, Any]


ModelStatement = CreateModel | DropModel | AlterModel


@dataclass(frozen=True)
class InputRelation:
    """``TABLE name`` (``table`` set) or ``(query)`` (``query`` set)."""

    table: str | None = None
    query: str | None = None

    def sql(self) -> str:
        if self.query is not None:
            return self.query
        return exp.select("*").from_(exp.to_table(self.table)).sql("bigquery")


@dataclass(frozen=True)
class MLCall:
    """One ``ML.<function>(MODEL m, ...)`` call; ``start``/``end`` are its character offsets.

    ``ML.VALIDATE_DATA_DRIFT`` has no model (``model`` is None) and two input relations
    (``inputs``: base, study)."""

    function: str
    model: ModelRef | None
    input: InputRelation | None
    options: dict[str, Any]
    thresholds: list[float] | None
    start: int
    end: int  # exclusive
    text: str = field(default="", compare=False)
    inputs: tuple[InputRelation, ...] = ()


# =================================================================================================
# Names and literal values
# =================================================================================================


def _name_token(token: Token) -> bool:
    return token.token_type in (TokenType.IDENTIFIER, TokenType.VAR) or (
        token.token_type not in (TokenType.STRING, TokenType.NUMBER) and bool(_WORD.match(token.text))
    )


def _take_path(sql: str, tokens: Sequence[Token], i: int, what: str) -> tuple[list[str], str, int]:
    """Read a dotted path (``p-1.ds.m``, ```p.ds.m```, ``ds.m``) at ``tokens[i]``; return its
    parts, its source text and the index after it."""
    if i >= len(tokens) or not _name_token(tokens[i]):
        found = tokens[i].text if i < len(tokens) else "the end of the statement"
        raise WarehouseError(f"Expected a {what} name, found {found!r}.")
    parts: list[str] = []
    current = ""
    j = i
    expect_name = True
    while j < len(tokens):
        token = tokens[j]
        contiguous = j > i and token.start == tokens[j - 1].end + 1
        if expect_name and _name_token(token):
            pieces = token.text.split(".") if token.token_type == TokenType.IDENTIFIER else [token.text]
            current += pieces[0]
            if len(pieces) > 1:
                parts.append(current)
                parts.extend(pieces[1:-1])
                current = pieces[-1]
            expect_name = False
        elif not expect_name and token.token_type == TokenType.DOT:
            parts.append(current)
            current = ""
            expect_name = True
        elif not expect_name and token.token_type == TokenType.DASH and contiguous:
            current += "-"  # an unquoted project id with hyphens (my-project.dataset.model)
            expect_name = True
        elif expect_name and token.token_type == TokenType.NUMBER and contiguous:
            # my-project-2.ds.m: the tokenizer reads "2." as one number.
            if token.text.endswith("."):
                parts.append(current + token.text[:-1])
                current = ""
            else:
                current += token.text
                expect_name = False
        else:
            break
        j += 1
    parts.append(current)
    return parts, sql[tokens[i].start : tokens[j - 1].end + 1], j


def _model_ref(parts: list[str], raw: str) -> ModelRef:
    if not 1 <= len(parts) <= 3 or any(not p for p in parts):
        raise WarehouseError(
            f"Invalid model name {raw}: write model, dataset.model or project.dataset.model."
        )
    name = check_identifier(parts[-1], "model")
    if len(parts) >= 2:
        check_identifier(parts[-2], "dataset")
    if len(parts) == 3 and not _PROJECT.match(parts[0]):
        raise WarehouseError(f"Invalid project {parts[0]!r} in model name {raw}.")
    return ModelRef(raw=raw, name=name)


def parse_model_name(text: str) -> ModelRef:
    """``project.dataset.model`` / ``dataset.model`` / ``model`` (quoted or not) → :class:`ModelRef`."""
    tokens = tokenize(text)
    parts, raw, end = _take_path(text, tokens, 0, "model")
    if end != len(tokens):
        raise WarehouseError(f"Invalid model name {text.strip()!r}.")
    return _model_ref(parts, raw)


def _table_name(parts: list[str], raw: str) -> str:
    if not 1 <= len(parts) <= 3 or any(not p for p in parts):
        raise WarehouseError(f"Invalid table name {raw}.")
    for part in parts[-2:]:
        check_identifier(part, "table")
    return parts[-1]


def parse_expression(text: str) -> exp.Expression:
    try:
        parsed = sqlglot.parse_one(text, read="bigquery")
    except sqlglot.errors.ParseError as err:
        raise WarehouseError(f"Could not parse {text.strip()!r}: {err}") from None
    if parsed is None:
        raise WarehouseError(f"Expected a value, found {text.strip()!r}.")
    return parsed


def _number(text: str) -> int | float:
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    return float(text)


def _generate_array(node: exp.GenerateSeries, params: Mapping[str, Any] | None) -> list[int | float]:
    """``GENERATE_ARRAY(start, end[, step])`` as BigQuery computes it (end inclusive)."""
    start = literal_value(node.args["start"], params)
    end = literal_value(node.args["end"], params)
    step = literal_value(node.args["step"], params) if node.args.get("step") is not None else 1
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, end, step)):
        raise BqmlError("GENERATE_ARRAY takes numbers.")
    if step == 0:
        raise BqmlError("GENERATE_ARRAY: the step cannot be 0.")
    as_int = all(isinstance(v, int) for v in (start, end, step))
    # Exact decimal arithmetic, so GENERATE_ARRAY(0.4, 0.6, 0.01) ends at 0.6 as in BigQuery.
    d_start, d_end, d_step = (decimal.Decimal(repr(v)) for v in (start, end, step))
    count = int((d_end - d_start) / d_step) + 1
    if count > 100_000:
        raise BqmlError("GENERATE_ARRAY would produce more than 100,000 values.")
    values = [d_start + i * d_step for i in range(max(count, 0))]
    return [int(v) if as_int else float(v) for v in values]


def literal_value(node: exp.Expression, params: Mapping[str, Any] | None = None) -> Any:
    """The Python value of a literal ``OPTIONS``/``STRUCT`` value.

    Strings, numbers (negative ones too), ``TRUE``/``FALSE``, ``NULL``, arrays, ``STRUCT``s
    (named fields → dict, unnamed → list), ``DATE``/``TIMESTAMP``/``DATETIME`` literals,
    ``INTERVAL n unit``, ``GENERATE_ARRAY(...)`` and query parameters (``@name``, from ``params``).
    """
    if isinstance(node, exp.Paren):
        return literal_value(node.this, params)
    if isinstance(node, exp.Literal):
        return node.this if node.is_string else _number(node.this)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Neg):
        value = literal_value(node.this, params)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BqmlError(f"Cannot negate {node.this.sql('bigquery')}: it is not a number.")
        return -value
    if isinstance(node, exp.Array):
        return [literal_value(e, params) for e in node.expressions]
    if isinstance(node, exp.Tuple):  # ('col_a', 0.1): an unnamed STRUCT (ML.VALIDATE_DATA_DRIFT thresholds)
        return [literal_value(e, params) for e in node.expressions]
    if (
        isinstance(node, exp.Cast)
        and isinstance(node.this, exp.Array)
        and node.to.is_type(exp.DataType.Type.ARRAY)
    ):
        return literal_value(node.this, params)  # a typed array literal: ARRAY<STRUCT<STRING, FLOAT64>>[...]
    if isinstance(node, exp.Struct):
        fields = node.expressions
        named = [isinstance(f, (exp.PropertyEQ, exp.Alias)) for f in fields]
        if all(named) and fields:
            out: dict[str, Any] = {}
            for f in fields:
                key = (f.this.name if isinstance(f, exp.PropertyEQ) else f.alias).lower()
                value_node = f.expression if isinstance(f, exp.PropertyEQ) else f.this
                if key in out:
                    raise BqmlError(f"STRUCT field {key} is given twice.")
                out[key] = literal_value(value_node, params)
            return out
        if any(named):
            raise BqmlError(f"Name every STRUCT field or none: {node.sql('bigquery')}.")
        return [literal_value(f, params) for f in fields]
    if isinstance(node, exp.Parameter):
        name = node.name
        if params is None or name not in params:
            raise BqmlError(f"Query parameter @{name} has no value; pass it as a parameter.")
        return params[name]
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and node.this.is_string:
        kind = node.to.this
        text = node.this.this
        try:
            if kind == exp.DataType.Type.DATE:
                return dt.date.fromisoformat(text)
            if kind in (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ):
                stamp = dt.datetime.fromisoformat(text.replace(" UTC", "+00:00").replace("Z", "+00:00"))
                return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
            if kind == exp.DataType.Type.DATETIME:
                return dt.datetime.fromisoformat(text)
        except ValueError:
            raise BqmlError(f"Invalid {kind.value} literal {text!r}.") from None
    if isinstance(node, exp.Interval) and node.unit is not None:
        amount = literal_value(node.this, params)
        amount = _number(amount) if isinstance(amount, str) else amount
        unit = node.unit.name.upper()
        seconds = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400, "WEEK": 604800}
        if unit in seconds and isinstance(amount, (int, float)):
            return dt.timedelta(seconds=amount * seconds[unit])
    if isinstance(node, exp.GenerateSeries):
        return _generate_array(node, params)
    raise BqmlError(
        f"{node.sql('bigquery')} is not a literal value. OPTIONS and STRUCT arguments take literals: "
        "strings, numbers, TRUE/FALSE, NULL, arrays [...], STRUCT(...), DATE/TIMESTAMP '...', "
        "GENERATE_ARRAY(...) or @parameters."
    )


def parse_options(
    sql: str, tokens: Sequence[Token], lo: int, hi: int, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``name = value`` list in ``tokens[lo:hi]`` (inside ``OPTIONS(...)``) as a dict with
    lower-case names."""
    options: dict[str, Any] = {}
    if hi <= lo:
        return options
    for a, b in _split_top_level(tokens, lo, hi):
        if a == b:
            raise BqmlError("OPTIONS(...) has an empty entry (a stray comma).")
        if b - a < 3 or tokens[a + 1].token_type != TokenType.EQ or not _name_token(tokens[a]):
            raise BqmlError(f"Invalid option {_text(sql, tokens, a, b)!r}: write name = value.")
        name = tokens[a].text.lower()
        if name in options:
            raise BqmlError(f"Option {name.upper()} is given twice.")
        options[name] = literal_value(parse_expression(_text(sql, tokens, a + 2, b)), params)
    return options


# =================================================================================================
# Model statements
# =================================================================================================


def _expect_paren(sql: str, tokens: Sequence[Token], i: int, after: str) -> int:
    if i >= len(tokens) or tokens[i].token_type != TokenType.L_PAREN:
        raise BqmlError(f"Expected '(' after {after}.")
    return _closing(tokens, i)


def parse_model_statement(sql: str, params: Mapping[str, Any] | None = None) -> ModelStatement | None:
    """``CREATE MODEL``, ``DROP MODEL`` or ``ALTER MODEL`` parsed; None for any other statement."""
    tokens = tokenize(sql)
    if not tokens:
        return None
    first = tokens[0].token_type
    if first == TokenType.CREATE:
        return _parse_create(sql, tokens, params)
    if (
        first in (TokenType.DROP, TokenType.ALTER)
        and len(tokens) > 1
        and tokens[1].token_type == TokenType.MODEL
    ):
        i = 2
        if_exists = _is(tokens[i] if i < len(tokens) else None, "IF")
        if if_exists:
            if not (i + 1 < len(tokens) and tokens[i + 1].token_type == TokenType.EXISTS):
                raise BqmlError("Expected IF EXISTS.")
            i += 2
        parts, raw, i = _take_path(sql, tokens, i, "model")
        model = _model_ref(parts, raw)
        if first == TokenType.DROP:
            if i != len(tokens):
                raise BqmlError(f"Unexpected {tokens[i].text!r} after DROP MODEL {raw}.")
            return DropModel(model=model, if_exists=if_exists)
        if not (
            i + 1 < len(tokens) and tokens[i].token_type == TokenType.SET and _is(tokens[i + 1], "OPTIONS")
        ):
            raise BqmlError(
                "ALTER MODEL supports only ALTER MODEL [IF EXISTS] name SET OPTIONS(...) "
                "(bigqueryml-syntax-alter-model)."
            )
        close = _expect_paren(sql, tokens, i + 2, "SET OPTIONS")
        if close != len(tokens) - 1:
            raise BqmlError(f"Unexpected {tokens[close + 1].text!r} after ALTER MODEL … SET OPTIONS(...).")
        return AlterModel(
            model=model, if_exists=if_exists, options=parse_options(sql, tokens, i + 3, close, params)
        )
    return None


def _parse_create(sql: str, tokens: Sequence[Token], params: Mapping[str, Any] | None) -> CreateModel | None:
    i = 1
    replace = False
    if (
        i + 1 < len(tokens)
        and tokens[i].token_type == TokenType.OR
        and tokens[i + 1].token_type == TokenType.REPLACE
    ):
        replace = True
        i += 2
    if i >= len(tokens) or tokens[i].token_type != TokenType.MODEL:
        if (
            i + 1 < len(tokens)
            and tokens[i].text.upper() in ("TEMP", "TEMPORARY")
            and tokens[i + 1].token_type == TokenType.MODEL
        ):
            raise BqmlError(
                f"CREATE {tokens[i].text.upper()} MODEL is not supported: write CREATE [OR REPLACE] MODEL [IF NOT EXISTS]."
            )
        return None
    i += 1
    if_not_exists = False
    if _is(tokens[i] if i < len(tokens) else None, "IF"):
        if not (
            i + 2 < len(tokens)
            and tokens[i + 1].token_type == TokenType.NOT
            and tokens[i + 2].token_type == TokenType.EXISTS
        ):
            raise BqmlError("Expected IF NOT EXISTS.")
        if_not_exists = True
        i += 3
    if replace and if_not_exists:
        raise BqmlError("CREATE OR REPLACE MODEL and IF NOT EXISTS cannot be combined.")
    name_start = tokens[i].start if i < len(tokens) else len(sql)
    parts, raw, i = _take_path(sql, tokens, i, "model")
    model = _model_ref(parts, raw)
    name_span = (name_start, name_start + len(raw))
    transform = None
    options: dict[str, Any] = {}
    if i < len(tokens) and _is(tokens[i], "TRANSFORM"):
        close = _expect_paren(sql, tokens, i + 1, "TRANSFORM")
        transform = _text(sql, tokens, i + 2, close)
        if not transform.strip():
            raise BqmlError("TRANSFORM() is empty: list the columns to train on.")
        i = close + 1
    for clause in ("INPUT", "OUTPUT", "REMOTE"):
        if i < len(tokens) and _is(tokens[i], clause):
            raise BqmlError(
                f"CREATE MODEL … {clause} (remote and imported models) is not supported by the local "
                "BigQuery ML engine; it trains models from an AS query. Run it on the gcp backend."
            )
    if i < len(tokens) and _is(tokens[i], "OPTIONS"):
        close = _expect_paren(sql, tokens, i + 1, "OPTIONS")
        options = parse_options(sql, tokens, i + 2, close, params)
        i = close + 1
    if i < len(tokens) and _is(tokens[i], "TRANSFORM"):
        raise BqmlError("TRANSFORM(...) goes before OPTIONS(...) in CREATE MODEL.")
    if i >= len(tokens) or tokens[i].token_type != TokenType.ALIAS:
        found = repr(tokens[i].text) if i < len(tokens) else "nothing"
        raise BqmlError(
            f"CREATE MODEL {raw} needs AS followed by the training query (found {found}); "
            "the local engine trains models from an AS query."
        )
    query = _text(sql, tokens, i + 1, len(tokens))
    if (
        i + 2 < len(tokens)
        and tokens[i + 1].token_type == TokenType.L_PAREN
        and _is(tokens[i + 2], "TRAINING_DATA")
    ):
        raise BqmlError(
            "CREATE MODEL … AS (training_data AS (...), custom_holiday AS (...)) is for ARIMA_PLUS "
            "models, which the local engine does not train."
        )
    if not query.strip():
        raise BqmlError(f"CREATE MODEL {raw}: the AS query is empty.")
    return CreateModel(
        model=model,
        replace=replace,
        if_not_exists=if_not_exists,
        options=options,
        query=query,
        transform=transform,
        name_span=name_span,
    )


def rename_created_model(sql: str, model: str) -> str:
    """``sql`` (one ``CREATE MODEL`` statement, as in ``sql/models/``) creating the plain model
    name ``model`` instead of its own: only the name changes, the rest of the text is kept as
    written (a training run's own BigQuery ML model, :func:`lakehouse_ml.lifecycle.models.training_sql`)."""
    check_identifier(model, "model")
    statement = parse_model_statement(sql)
    if not isinstance(statement, CreateModel):
        raise BqmlError("Only a CREATE MODEL statement can be given another model name.")
    start, end = statement.name_span
    return sql[:start] + model + sql[end:]


# =================================================================================================
# ML table-function calls
# =================================================================================================


def _function_at(tokens: Sequence[Token], i: int) -> str | None:
    """``ML``/``AI`` ``.`` name ``(`` starting at ``tokens[i]`` → ``"ML.NAME"``, else None."""
    if (
        i + 3 < len(tokens)
        and tokens[i].token_type in (TokenType.VAR, TokenType.IDENTIFIER)
        and tokens[i].text.upper() in ("ML", "AI")
        and tokens[i + 1].token_type == TokenType.DOT
        and _name_token(tokens[i + 2])
        and tokens[i + 3].token_type == TokenType.L_PAREN
        and (i == 0 or tokens[i - 1].token_type != TokenType.DOT)
    ):
        return f"{tokens[i].text.upper()}.{tokens[i + 2].text.upper()}"
    return None


def find_ml_calls(sql: str, params: Mapping[str, Any] | None = None) -> list[MLCall]:
    """The outermost ``ML.<function>(MODEL m, ...)`` calls of ``sql``, in textual order.

    Calls nested inside another call's input query are part of that input (they are found when
    the input is evaluated). An ML or AI function with a ``MODEL`` argument that the local
    warehouse does not run fails here, naming it.
    """
    tokens = tokenize(sql)
    calls: list[MLCall] = []
    i = 0
    while i < len(tokens):
        function = _function_at(tokens, i)
        if function in (f"ML.{name}" for name in _MODEL_FREE):
            close = _closing(tokens, i + 3)
            calls.append(_parse_model_free_call(sql, tokens, function.split(".", 1)[1], i, close, params))
            i = close + 1
            continue
        if function is None or not (i + 4 < len(tokens) and tokens[i + 4].token_type == TokenType.MODEL):
            i += 1
            continue
        close = _closing(tokens, i + 3)
        name = function.split(".", 1)[1]
        if function.startswith("AI.") or name not in SIGNATURES:
            supported = ", ".join(f"ML.{f}" for f in SIGNATURES)
            raise BqmlError(
                f"{function} is not supported by the local BigQuery ML engine. It runs {supported}. "
                "Run this query on the gcp backend (LAKEHOUSE_ML_BACKEND=gcp)."
            )
        calls.append(_parse_call(sql, tokens, name, i, close, params))
        i = close + 1
    return calls


def _arg_kind(tokens: Sequence[Token], a: int, b: int) -> str:
    first = tokens[a]
    if first.token_type == TokenType.MODEL:
        return "model"
    if first.token_type == TokenType.TABLE:
        return "input"
    if first.token_type == TokenType.L_PAREN and _closing(tokens, a) == b - 1:
        return "input"
    if first.token_type == TokenType.STRUCT:
        return "struct"
    if first.token_type == TokenType.L_BRACKET or (_is(first, "GENERATE_ARRAY") or _is(first, "ARRAY")):
        return "array"
    return "unknown"


def _parse_call(
    sql: str, tokens: Sequence[Token], function: str, i: int, close: int, params: Mapping[str, Any] | None
) -> MLCall:
    signature = _SIGNATURE_TEXT[function]
    ranges = _split_top_level(tokens, i + 4, close)
    if len(ranges) > 1 and ranges[-1][0] == ranges[-1][1]:
        ranges = ranges[:-1]  # a trailing comma, as in the reference's ML.TRAINING_INFO(MODEL m,)
    if any(a == b for a, b in ranges):
        raise BqmlError(f"ML.{function} has an empty argument. Syntax: {signature}.")
    (ma, mb), rest = ranges[0], ranges[1:]
    parts, raw, end = _take_path(sql, tokens, ma + 1, "model")
    if end != mb:
        raise BqmlError(
            f"Unexpected {tokens[end].text!r} after MODEL {raw} in ML.{function}. Syntax: {signature}."
        )
    model = _model_ref(parts, raw)
    relation: InputRelation | None = None
    options: dict[str, Any] = {}
    thresholds: list[float] | None = None
    expected = list(SIGNATURES[function])
    for a, b in rest:
        kind = _arg_kind(tokens, a, b)
        while expected and expected[0].rstrip("?") != kind and expected[0].endswith("?"):
            expected.pop(0)
        if not expected or expected[0].rstrip("?") != kind:
            described = {"input": "an input relation", "struct": "a STRUCT", "array": "an array"}.get(
                kind, "the argument"
            )
            raise BqmlError(
                f"ML.{function} does not take {described} {_text(sql, tokens, a, b)!r} here. Syntax: {signature}."
            )
        expected.pop(0)
        if kind == "input":
            if tokens[a].token_type == TokenType.TABLE:
                parts_t, raw_t, end_t = _take_path(sql, tokens, a + 1, "table")
                if end_t != b:
                    raise BqmlError(
                        f"Unexpected {tokens[end_t].text!r} after TABLE {raw_t} in ML.{function}."
                    )
                relation = InputRelation(table=_table_name(parts_t, raw_t))
            else:
                inner = _text(sql, tokens, a + 1, b - 1)
                if not inner.strip():
                    raise BqmlError(f"ML.{function} has an empty input query ().")
                relation = InputRelation(query=inner)
        elif kind == "struct":
            value = literal_value(parse_expression(_text(sql, tokens, a, b)), params)
            if isinstance(value, list) and not value:
                value = {}
            if not isinstance(value, dict):
                raise BqmlError(f"ML.{function}: name the STRUCT fields, e.g. STRUCT(0.6 AS threshold).")
            options = value
        else:  # array of thresholds
            values = literal_value(parse_expression(_text(sql, tokens, a, b)), params)
            if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise BqmlError(f"ML.{function}: the thresholds must be an ARRAY<FLOAT64>.")
            thresholds = [float(v) for v in values]
    missing = [e for e in expected if not e.endswith("?")]
    if missing:
        raise BqmlError(f"ML.{function} needs an input: TABLE t or (query). Syntax: {signature}.")
    start, end_char = tokens[i].start, tokens[close].end + 1
    return MLCall(
        function=function,
        model=model,
        input=relation,
        options=options,
        thresholds=thresholds,
        start=start,
        end=end_char,
        text=sql[start:end_char],
    )


def _input_relation(sql: str, tokens: Sequence[Token], a: int, b: int, function: str) -> InputRelation:
    """``TABLE name`` or ``(query)`` in ``tokens[a:b]``."""
    if tokens[a].token_type == TokenType.TABLE:
        parts_t, raw_t, end_t = _take_path(sql, tokens, a + 1, "table")
        if end_t != b:
            raise BqmlError(f"Unexpected {tokens[end_t].text!r} after TABLE {raw_t} in ML.{function}.")
        return InputRelation(table=_table_name(parts_t, raw_t))
    inner = _text(sql, tokens, a + 1, b - 1)
    if not inner.strip():
        raise BqmlError(f"ML.{function} has an empty input query ().")
    return InputRelation(query=inner)


def _parse_model_free_call(
    sql: str, tokens: Sequence[Token], function: str, i: int, close: int, params: Mapping[str, Any] | None
) -> MLCall:
    """``ML.VALIDATE_DATA_DRIFT({TABLE base | (query)}, {TABLE study | (query)} [, STRUCT(...)]
    [, MODEL m])`` (bigqueryml-syntax-validate-data-drift)."""
    signature = _SIGNATURE_TEXT[function]
    ranges = _split_top_level(tokens, i + 4, close)
    if len(ranges) > 1 and ranges[-1][0] == ranges[-1][1]:
        ranges = ranges[:-1]
    if any(a == b for a, b in ranges):
        raise BqmlError(f"ML.{function} has an empty argument. Syntax: {signature}.")
    inputs: list[InputRelation] = []
    options: dict[str, Any] = {}
    expected = list(SIGNATURES[function])
    for a, b in ranges:
        kind = _arg_kind(tokens, a, b)
        while expected and expected[0].rstrip("?") != kind and expected[0].endswith("?"):
            expected.pop(0)
        if not expected or expected[0].rstrip("?") != kind:
            described = {
                "input": "an input relation",
                "struct": "a STRUCT",
                "array": "an array",
                "model": "a MODEL",
            }
            raise BqmlError(
                f"ML.{function} does not take {described.get(kind, 'the argument')} {_text(sql, tokens, a, b)!r} "
                f"here. Syntax: {signature}."
            )
        expected.pop(0)
        if kind == "input":
            inputs.append(_input_relation(sql, tokens, a, b, function))
        elif kind == "struct":
            value = literal_value(parse_expression(_text(sql, tokens, a, b)), params)
            if isinstance(value, list) and not value:
                value = {}
            if not isinstance(value, dict):
                raise BqmlError(
                    f"ML.{function}: name the STRUCT fields, e.g. STRUCT(0.2 AS categorical_default_threshold)."
                )
            options = value
        else:  # MODEL m
            raise BqmlError(
                f"ML.{function}(..., MODEL {_text(sql, tokens, a + 1, b)}) is not supported locally: the MODEL "
                "argument only adds visualization_link, a Vertex AI model monitoring console URL. Leave it out "
                "(the drift rows are the same), or run the query on the gcp backend."
            )
    if len(inputs) < 2:
        raise BqmlError(
            f"ML.{function} needs a base and a study input: TABLE t or (query). Syntax: {signature}."
        )
    start, end_char = tokens[i].start, tokens[close].end + 1
    return MLCall(
        function=function,
        model=None,
        input=None,
        options=options,
        thresholds=None,
        start=start,
        end=end_char,
        text=sql[start:end_char],
        inputs=tuple(inputs),
    )


def replace_calls(sql: str, calls: Sequence[MLCall], names: Sequence[str]) -> str:
    """``sql`` with each call replaced by the table name at the same position of ``names``."""
    out = []
    position = 0
    for call, name in zip(calls, names):
        out.append(sql[position : call.start])
        out.append(name)
        position = call.end
    out.append(sql[position:])
    return "".join(out)


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


def _ml_function(node: exp.Expression) -> str | None:
    """``ML.NAME(...)`` as sqlglot parses it (a Dot of ML and a function) → ``"NAME"``."""
    if (
        isinstance(node, exp.Dot)
        and isinstance(node.this, (exp.Identifier, exp.Column, exp.Var))
        and node.this.name.upper() == "ML"
        and isinstance(node.expression, exp.Func)
    ):
        func = node.expression
        return (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).upper()
    return None


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
    targets = [n for n in statement.walk(bfs=False) if isinstance(n, exp.Dot) and _ml_function(n)]
    for node in reversed(targets):  # innermost first
        name = _ml_function(node)
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
        targets = [n for n in item.walk(bfs=False) if isinstance(n, exp.Dot) and _ml_function(n)]
        for node in reversed(targets):  # innermost first: an outer function sees frozen inner ones
            name = _ml_function(node)
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


# =================================================================================================
# TRANSFORM clause
# =================================================================================================


def parse_select_list(text: str) -> list[exp.Expression]:
    """The items of a ``TRANSFORM(select_list)`` as sqlglot expressions."""
    select = parse_expression("SELECT " + text)
    if not isinstance(select, exp.Select) or select.args.get("from_") or select.args.get("where"):
        raise BqmlError(f"Invalid TRANSFORM clause {text.strip()!r}: list expressions with aliases.")
    return list(select.expressions)


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
                isinstance(node.this, exp.Dot) and _ml_function(node.this)
            ):
                raise BqmlError(
                    f"TRANSFORM allows only BigQuery ML analytic functions, not {node.sql('bigquery')}."
                )


def transform_output_names(items: Sequence[exp.Expression], input_columns: Sequence[str]) -> list[str]:
    """The column names a TRANSFORM select list produces over input columns ``input_columns``."""
    names: list[str] = []
    for item in items:
        if isinstance(item, exp.Star):
            excluded = {c.name.lower() for c in item.args.get("except_") or item.args.get("except") or []}
            names.extend(c for c in input_columns if c.lower() not in excluded)
        else:
            names.append(item.alias_or_name)
    return names


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

    def prepare(self, text: str, ctes: Sequence[exp.CTE] = ()) -> exp.Expression:
        """One statement with its ML calls evaluated (placeholders registered), the CTEs ``ctes``
        it references attached, and preprocessing functions lowered: ready to translate."""
        calls = find_ml_calls(text, self._params)
        if not calls:
            statement = _single_statement(text)
        else:
            names = [self._new_name() for _ in calls]
            statement = _single_statement(replace_calls(text, calls, names))
            tables = {t.name: t for t in statement.find_all(exp.Table) if t.name in names}
            for call, name in zip(calls, names):
                if name not in tables:
                    raise BqmlError(
                        f"ML.{call.function}(...) must be used as a table (FROM, JOIN, subquery)."
                    )
                context = [*ctes, *visible_ctes(tables[name])]
                result = self.call(call, context)
                self._conn.register(name, result)
                self._registered.append(name)
        statement = attach_ctes(statement, ctes)
        return lower_preprocessing(statement)

    def relation(self, sql: str, ctes: Sequence[exp.CTE] = ()) -> pa.Table:
        """The rows of the query ``sql`` (which may hold ML calls), seeing the CTEs ``ctes``."""
        statement = self.prepare(sql, ctes)
        if not isinstance(statement, exp.Query):
            raise BqmlError(
                f"Expected a query, got {type(statement).__name__.upper()}: {sql.strip()[:80]!r}."
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
                f"{_OPTIONAL_ENGINE_METHODS[call.function]}(). Run it on the gcp backend, or compute it from ML.PREDICT."
            )
        if not engine.model_exists(name):
            raise BqmlError(
                f"Model {call.model.raw} does not exist in the local warehouse. Create it first with "
                f"CREATE MODEL {call.model.raw} OPTIONS(...) AS SELECT ..."
            )
        source = self.relation(call.input.sql(), ctes) if call.input is not None else None
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
        from lakehouse_ml.bigquery.drift import DriftOptions, validate_data_drift_arrow

        options = DriftOptions.parse(call.options)  # bad options fail before any input query runs
        base, study = (self.relation(relation.sql(), ctes) for relation in call.inputs)
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


def _single_statement(text: str) -> exp.Expression:
    statements = parse_bigquery(text)
    if len(statements) != 1:
        raise WarehouseError("Expected one statement.")
    return statements[0]


def _with_input_columns(result: pa.Table, frame_columns: Sequence[str], source: pa.Table) -> pa.Table:
    """A row function's output as BigQuery ML returns it: the function's own columns, then every
    column of the input relation (as it was, before any TRANSFORM)."""
    if result.num_rows != source.num_rows:
        return result
    known = set(frame_columns)
    own = [c for c in result.column_names if c not in known]
    arrays = [result.column(c) for c in own] + [source.column(c) for c in source.column_names]
    return pa.table(arrays, names=[*own, *source.column_names])


def statement_returns_rows(text: str, params: Mapping[str, Any] | None = None) -> bool:
    """Whether a statement (which may hold ML calls) is a query."""
    if parse_model_statement(text, params) is not None:
        return False
    calls = find_ml_calls(text, params)
    names = [f"__bqml_check_{k}" for k in range(len(calls))]
    return isinstance(_single_statement(replace_calls(text, calls, names)), exp.Query)


# Names a SQL template uses for what :func:`bind_template` fills in.
TEMPLATE_MODEL = "model"
TEMPLATE_TRAINING_ROWS = "training_rows"


def _template_value(name: str, value: Any) -> str:
    """A template value as SQL: a finite number, or (feature, number) pairs as an
    ``ARRAY<STRUCT<STRING, FLOAT64>>`` literal of checked identifiers."""
    if isinstance(value, (list, tuple)):
        items = []
        for pair in value:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise BqmlError(f"Template value @{name} must be (name, number) pairs, got {pair!r}.")
            if isinstance(pair[1], (list, tuple)):
                raise BqmlError(f"Template value @{name} must be (name, number) pairs, got {pair!r}.")
            items.append(f"('{check_identifier(pair[0], 'feature')}', {_template_value(name, pair[1])})")
        return "ARRAY<STRUCT<STRING, FLOAT64>>[" + ", ".join(items) + "]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BqmlError(f"Template value @{name} must be a finite number, got {value!r}.")
    return repr(value)


def bind_template(
    sql: str,
    model: str | None = None,
    training_query: str | None = None,
    values: Mapping[str, Any] | None = None,
    *,
    tables: Mapping[str, str] | None = None,
) -> str:
    """A BigQuery SQL template (``sql/models/evaluation/*.sql``, ``sql/monitoring/*.sql``) bound
    to one model and its tables.

    At the token level, with each piece checked: ``MODEL model`` becomes ``MODEL <model>`` (a
    plain identifier), ``TABLE training_rows`` becomes ``(<training_query>)`` (exactly one query:
    the model's own AS query), ``TABLE <name>`` becomes ``TABLE <tables[name]>`` (a plain
    identifier), and ``@name`` becomes ``values[name]``: a finite number, or (feature, number)
    pairs as an ``ARRAY<STRUCT<STRING, FLOAT64>>`` literal (per-feature drift thresholds). The
    result is ordinary BigQuery SQL that runs unchanged on BigQuery and on the local warehouse.
    """
    if model is not None:
        check_identifier(model, "model")
    if training_query is not None and not isinstance(_single_statement(training_query), exp.Query):
        raise BqmlError("The training query of a model must be one query.")
    tables = {name: check_identifier(table, "table") for name, table in (tables or {}).items()}
    tokens = tokenize(sql)
    pieces: list[str] = []
    position = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        replacement = None
        end = i + 1
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if token.token_type == TokenType.MODEL and nxt is not None and nxt.text == TEMPLATE_MODEL:
            if model is None:
                raise BqmlError("This SQL template reads a model: give the model's name.")
            token, replacement, end = nxt, model, i + 2
        elif token.token_type == TokenType.TABLE and nxt is not None and nxt.text == TEMPLATE_TRAINING_ROWS:
            if training_query is None:
                raise BqmlError("This SQL template reads the training rows: give the model's training query.")
            replacement, end = f"({training_query.strip()})", i + 2
        elif token.token_type == TokenType.TABLE and nxt is not None and nxt.text in tables:
            token, replacement, end = nxt, tables[nxt.text], i + 2
        elif token.token_type == TokenType.PARAMETER and nxt is not None and values and nxt.text in values:
            replacement, end = _template_value(nxt.text, values[nxt.text]), i + 2
        if replacement is not None:
            pieces.append(sql[position : token.start])
            pieces.append(replacement)
            position = tokens[end - 1].end + 1
        i = end
    pieces.append(sql[position:])
    bound = "".join(pieces)
    for statement in split_statements(bound):  # the bound SQL must parse, ML calls included
        calls = find_ml_calls(statement)
        _single_statement(replace_calls(statement, calls, [f"__bqml_check_{k}" for k in range(len(calls))]))
    return bound


__all__ = [
    "SIGNATURES",
    "rename_created_model",
    "AlterModel",
    "BqmlSession",
    "CreateModel",
    "DropModel",
    "InputRelation",
    "MLCall",
    "ModelRef",
    "SQLTranslationError",
    "attach_ctes",
    "bind_template",
    "find_ml_calls",
    "freeze_transform",
    "literal_value",
    "lower_preprocessing",
    "mentions_bigquery_ml",
    "parse_model_name",
    "parse_model_statement",
    "split_statements",
    "statement_returns_rows",
    "visible_ctes",
]
