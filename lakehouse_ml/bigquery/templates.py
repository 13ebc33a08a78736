"""SQL templates bound to one model and its tables (``sql/models/evaluation/*.sql``,
``sql/monitoring/*.sql``): the result runs unchanged on BigQuery and on the local warehouse."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlglot import exp
from sqlglot.tokens import TokenType

from lakehouse_ml.bigquery.dialect import (
    find_ml_calls,
    one_statement,
    replace_calls,
    split_statements,
    tokenize,
)
from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.core.identifiers import check_identifier

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
    if training_query is not None and not isinstance(one_statement(training_query), exp.Query):
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
        one_statement(replace_calls(statement, calls, [f"__bqml_check_{k}" for k in range(len(calls))]))
    return bound
