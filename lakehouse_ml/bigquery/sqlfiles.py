"""The ``sql/`` folder: BigQuery SQL files, the single source of truth for both backends."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import sqlglot
from sqlglot import exp

from lakehouse_ml.bigquery.dialect import parse_bigquery
from lakehouse_ml.core.errors import WarehouseError


def sql_dir() -> Path:
    """The ``sql/`` folder: ``LAKEHOUSE_ML_SQL_DIR`` if set; else the copy inside the installed
    package (``lakehouse_ml/sql``, where a wheel puts it); else the repository's ``sql/`` beside
    the package (a source checkout or an editable install)."""
    override = os.environ.get("LAKEHOUSE_ML_SQL_DIR")
    package = Path(__file__).resolve().parent.parent
    candidates = [Path(override)] if override else [package / "sql", package.parent / "sql"]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"No SQL folder at {' or '.join(str(c) for c in candidates)}. Reinstall lakehouse_ml (its wheel "
        "ships the SQL inside the package), or point LAKEHOUSE_ML_SQL_DIR at a copy of the repository's sql/ folder."
    )


def sql_files(subdir: str) -> list[Path]:
    """The ``.sql`` files of ``sql/<subdir>``, sorted by name."""
    return sorted((sql_dir() / subdir).glob("*.sql"))


@functools.lru_cache(maxsize=128)
def _read(path: Path, mtime: float) -> str:
    return path.read_text()


def read_sql(relative: str) -> str:
    """The text of ``sql/<relative>``."""
    path = sql_dir() / relative
    if not path.is_file():
        raise FileNotFoundError(f"SQL file {path} does not exist.")
    return _read(path, path.stat().st_mtime)


def referenced_tables(sql: str) -> list[str]:
    """The tables a query reads, excluding its own CTEs, sorted. Used to derive asset lineage."""
    statements = parse_bigquery(sql)
    tables: set[str] = set()
    for statement in statements:
        ctes = {cte.alias_or_name for cte in statement.find_all(exp.CTE)}
        for table in statement.find_all(exp.Table):
            if isinstance(table.this, exp.Identifier) and table.name not in ctes and table.name:
                tables.add(table.name)
    return sorted(tables)


def query_parameters(sql: str) -> list[str]:
    """The named query parameters (``@name``) a script uses, sorted."""
    try:
        statements = sqlglot.parse(sql, read="bigquery")
    except sqlglot.errors.ParseError as err:
        raise WarehouseError(f"Could not parse the BigQuery SQL: {err}") from None
    return sorted({p.name for s in statements if s is not None for p in s.find_all(exp.Parameter)})
