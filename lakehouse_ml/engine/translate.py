"""BigQuery Standard SQL → DuckDB, with sqlglot.

sqlglot does the translation (``read="bigquery", write="duckdb"``) with
``unsupported_level=RAISE``, so a construct it cannot express in DuckDB fails with an error that
names it instead of running with other semantics. On top of sqlglot this module:

* fixes the few BigQuery semantics that sqlglot passes through unchanged but DuckDB reads
  differently (``EXTRACT(DAYOFWEEK …)`` is 1 = Sunday … 7 in BigQuery, 0 … 6 in DuckDB);
* refuses what the local warehouse does not run, by name, such as ``EXPORT DATA`` or scripting
  with variables;
* refuses BigQuery ML (``CREATE MODEL``, ``ML.*``): that is not a translation, so
  :class:`~lakehouse_ml.backends.local_warehouse.LocalWarehouse` routes it to
  :mod:`lakehouse_ml.engine.sql` and the local BigQuery ML engine before anything reaches here;
* reports the named query parameters each statement uses, so each gets exactly its values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp

from lakehouse_ml.bigquery.dialect import parse_bigquery
from lakehouse_ml.core.errors import SQLTranslationError, WarehouseError


@dataclass(frozen=True)
class TranslatedStatement:
    """One BigQuery statement and its DuckDB text."""

    bigquery: exp.Expression
    duckdb_sql: str
    parameters: tuple[str, ...]
    returns_rows: bool


# Statement kinds (sqlglot expression classes) the local warehouse runs.
_SUPPORTED_STATEMENTS = (
    exp.Query,
    exp.Create,
    exp.Insert,
    exp.Delete,
    exp.Update,
    exp.Merge,
    exp.Drop,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Alter,
)


def _unsupported_statement(statement: exp.Expression) -> str | None:
    if isinstance(statement, exp.Command):
        # sqlglot keeps statements it does not model as raw commands: name the keyword.
        return str(statement.this).upper()
    if not isinstance(statement, _SUPPORTED_STATEMENTS):
        return type(statement).__name__.upper()
    if (
        isinstance(statement, (exp.Create, exp.Drop))
        and str(statement.args.get("kind", "")).upper() == "MODEL"
    ):
        return f"{type(statement).__name__.upper()} MODEL"
    return None


def _bigquery_ml_call(statement: exp.Expression) -> str | None:
    for table in statement.find_all(exp.Table):
        if table.db and table.db.upper() == "ML" and not isinstance(table.this, exp.Identifier):
            return f"ML.{table.this.key.upper()}" if hasattr(table.this, "key") else "ML.*"
    for func in statement.find_all(exp.Dot):
        left = func.this
        if isinstance(left, (exp.Column, exp.Identifier, exp.Var)) and left.name.upper() == "ML":
            right = func.expression
            return f"ML.{getattr(right, 'name', '') or right.sql().split('(')[0]}".upper()
    return None


def bigquery_semantics(node: exp.Expression) -> exp.Expression:
    """Keep BigQuery's meaning where sqlglot's DuckDB text would compute something else."""
    if isinstance(node, exp.Extract) and node.this.name.upper() == "DAYOFWEEK":
        # BigQuery numbers the days 1 (Sunday) to 7; DuckDB 0 (Sunday) to 6.
        return exp.paren(exp.Add(this=node.copy(), expression=exp.Literal.number(1)))
    if isinstance(node, exp.CountIf):
        # COUNTIF over no rows is 0 in BigQuery (it is a COUNT), NULL for DuckDB's COUNT_IF.
        return exp.Count(this=exp.If(this=node.this.copy(), true=exp.Literal.number(1)))
    if isinstance(node, (exp.DateAdd, exp.DateSub)) and not isinstance(node.parent, exp.Cast):
        # DATE_ADD / DATE_SUB of a DATE is a DATE in BigQuery; DuckDB's date ± interval is a TIMESTAMP.
        return exp.cast(node.copy(), "DATE")
    if isinstance(node, exp.TimestampDiff):
        # TIMESTAMP_DIFF counts whole elapsed units (13:59:59 → 14:00:00 is 0 HOUR); DuckDB's
        # DATE_DIFF counts boundaries crossed (1 HOUR), its DATE_SUB whole units.
        unit = (node.unit.name if node.unit else "DAY").upper()
        return exp.Anonymous(
            this="DATE_SUB", expressions=[exp.Literal.string(unit), node.expression.copy(), node.this.copy()]
        )
    return node


_SEMANTIC_NODES = (exp.Extract, exp.CountIf, exp.DateAdd, exp.DateSub, exp.TimestampDiff)


def apply_bigquery_semantics(statement: exp.Expression) -> exp.Expression:
    """Rewrite ``statement`` in place with :func:`bigquery_semantics`, innermost nodes first
    (so nested calls are all rewritten); return it."""
    targets = [node for node in statement.walk(bfs=False) if isinstance(node, _SEMANTIC_NODES)]
    for node in reversed(targets):
        replacement = bigquery_semantics(node)
        if replacement is not node:
            if node is statement:
                return replacement
            node.replace(replacement)
    return statement


def _translate_one(statement: exp.Expression) -> TranslatedStatement:
    unsupported = _unsupported_statement(statement)
    if unsupported and unsupported.endswith(" MODEL"):
        raise SQLTranslationError(
            f"{unsupported} is BigQuery ML, which the SQL translator does not run: run it through the "
            "local warehouse (LocalWarehouse.query/execute, lakehouse-ml query), which hands it to the "
            "local BigQuery ML engine."
        )
    if unsupported:
        raise SQLTranslationError(
            f"The local warehouse does not run {unsupported} statements. It runs SELECT, CREATE "
            "TABLE/VIEW, INSERT, UPDATE, DELETE, MERGE, DROP, transactions and BigQuery ML "
            "(CREATE/DROP/ALTER MODEL, ML.* functions)."
        )
    ml_call = _bigquery_ml_call(statement)
    if ml_call:
        raise SQLTranslationError(
            f"{ml_call} is BigQuery ML, which the SQL translator does not run: run it through the "
            "local warehouse (LocalWarehouse.query/execute, lakehouse-ml query), which hands it to the "
            "local BigQuery ML engine."
        )
    fixed = apply_bigquery_semantics(statement.copy())
    try:
        duckdb_sql = fixed.sql(dialect="duckdb", unsupported_level=sqlglot.ErrorLevel.RAISE, comments=False)
    except sqlglot.errors.UnsupportedError as err:
        raise SQLTranslationError(f"Cannot translate this BigQuery SQL to DuckDB: {err}") from None
    parameters = tuple(sorted({p.name for p in statement.find_all(exp.Parameter)}))
    return TranslatedStatement(
        bigquery=statement,
        duckdb_sql=duckdb_sql,
        parameters=parameters,
        returns_rows=isinstance(statement, exp.Query),
    )


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> tuple[TranslatedStatement, ...]:
    """Translate a BigQuery script into DuckDB statements. Raises a named error on failure."""
    return tuple(_translate_one(statement) for statement in parse_bigquery(sql))


def translate_query(query: exp.Query) -> TranslatedStatement:
    """Translate one parsed BigQuery query."""
    return _translate_one(query)


def arrow_table(relation: Any) -> Any:
    """The rows of a DuckDB relation as an Arrow table (``to_arrow_table`` in DuckDB 1.4 and
    later, ``arrow`` before)."""
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()


def to_duckdb(sql: str) -> str:
    """The DuckDB text of a BigQuery script, statements separated by ``;``."""
    return ";\n".join(t.duckdb_sql for t in translate(sql))


__all__ = [
    "TranslatedStatement",
    "arrow_table",
    "translate",
    "translate_query",
    "to_duckdb",
    "WarehouseError",
]
