"""BigQuery SQL, parsed: the one way the project reads a BigQuery statement, on both backends."""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from lakehouse_ml.core.errors import WarehouseError


def parse_bigquery(sql: str) -> list[exp.Expression]:
    """Parse a BigQuery script into statements, with a clear error on bad SQL."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
    except sqlglot.errors.ParseError as err:
        details = "; ".join(
            f"line {e.get('line')}, column {e.get('col')}: {e.get('description')}"
            + (f" near {e.get('highlight')!r}" if e.get("highlight") else "")
            for e in err.errors
        ) or str(err)
        raise WarehouseError(f"Could not parse the BigQuery SQL: {details}") from None
    if not statements:
        raise WarehouseError("The SQL is empty: give at least one statement.")
    return statements


def single_select(sql: str) -> exp.Query:
    """Parse ``sql`` as exactly one query (SELECT, WITH … SELECT, or set operation)."""
    statements = parse_bigquery(sql)
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        kinds = ", ".join(type(s).__name__.upper() for s in statements)
        raise WarehouseError(f"Expected exactly one SELECT query, got: {kinds}.")
    return statements[0]
