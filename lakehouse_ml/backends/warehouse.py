"""The warehouse seam: run BigQuery SQL, read results, write tables.

Two implementations: :class:`lakehouse_ml.backends.local_warehouse.LocalWarehouse` (DuckDB, with the
BigQuery SQL translated by sqlglot) and :class:`lakehouse_ml.backends.gcp_warehouse.GcpWarehouse`
(BigQuery through dagster-gcp's ``BigQueryResource``). Assets only ever see :class:`Warehouse`.

Conventions shared by both implementations:

* SQL is BigQuery Standard SQL. Tables are referenced unqualified (``raw_orders``); they live in
  one dataset (the gcp backend sets it as the job's default dataset, the local one uses DuckDB's
  ``main`` schema).
* Values go in as named query parameters (``@snapshot_date``) given as a mapping of Python values:
  ``bool``, ``int``, ``float``, ``str``, ``datetime.date``, ``datetime.datetime`` or a list of one
  of these. ``None`` is refused because BigQuery needs a type for it.
* Identifiers that come from configuration (table and column names) go through
  :func:`check_identifier` before use, and statements around user SQL are built as sqlglot
  expressions, never by string concatenation.
* Writes are atomic: a failing write leaves the previous content of the table as it was.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from lakehouse_ml.core.errors import WarehouseError
from lakehouse_ml.core.identifiers import check_identifier

ParamValue = bool | int | float | str | dt.date | dt.datetime | Sequence[Any]
Params = Mapping[str, ParamValue]

# BigQuery type names used for schemas everywhere in the project.
BIGQUERY_TYPES = ("STRING", "INT64", "FLOAT64", "NUMERIC", "BOOL", "DATE", "DATETIME", "TIMESTAMP", "BYTES")


def check_params(params: Params | None) -> dict[str, ParamValue]:
    """Validate query parameter names and values; return them as a plain dict."""
    checked: dict[str, ParamValue] = {}
    for name, value in (params or {}).items():
        check_identifier(name, "query parameter")
        if value is None:
            raise WarehouseError(
                f"Query parameter @{name} is None; BigQuery needs a typed value. Pass a value or "
                "leave the parameter out of the SQL."
            )
        checked[name] = value
    return checked


@dataclass(frozen=True)
class PartitionWindow:
    """The rows of a table whose DATE ``column`` lies in ``[start, end]`` (both inclusive).

    Writing with a window replaces exactly those rows and leaves the rest of the table alone. On
    BigQuery the table is day-partitioned on ``column``.
    """

    column: str
    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        check_identifier(self.column, "partition column")
        if self.end < self.start:
            raise WarehouseError(f"Partition window ends ({self.end}) before it starts ({self.start}).")

    def days(self) -> list[dt.date]:
        n = (self.end - self.start).days + 1
        return [self.start + dt.timedelta(days=i) for i in range(n)]


# Names of the query parameters that carry a partition window's bounds.
WINDOW_START = "lakehouse_window_start"
WINDOW_END = "lakehouse_window_end"


def in_window(window: PartitionWindow) -> exp.Between:
    """``column BETWEEN @lakehouse_window_start AND @lakehouse_window_end`` (see :func:`window_params`)."""
    return exp.Between(
        this=exp.column(window.column),
        low=exp.Parameter(this=exp.var(WINDOW_START)),
        high=exp.Parameter(this=exp.var(WINDOW_END)),
    )


def window_params(window: PartitionWindow | None) -> dict[str, dt.date]:
    """The query parameters :func:`in_window` uses (none without a window)."""
    return {WINDOW_START: window.start, WINDOW_END: window.end} if window else {}


def replace_window_statements(
    table: str, query: exp.Query, window: PartitionWindow, columns: Sequence[str] | None = None
) -> list[exp.Expression]:
    """Statements (dialect-neutral ASTs) that replace ``window`` of ``table`` with the rows of ``query``.

    The caller runs them in one transaction, after creating the table when it is missing. The
    window bounds are the parameters of :func:`window_params`. With ``columns`` the INSERT names
    them, so columns match by name rather than by position.
    """
    check_identifier(table, "table")
    delete = exp.delete(exp.to_table(table), where=in_window(window))
    insert = exp.insert(
        query.copy(),
        exp.to_table(table),
        columns=[check_identifier(c, "column") for c in columns] if columns else None,
    )
    return [delete, insert]


def combine_parquet(paths: Sequence[str | Path], target: Path, utc_timestamps: bool = True) -> int:
    """Stream Parquet files of one schema into one file (a row group each); return the row count.

    With ``utc_timestamps`` naive timestamps are marked UTC, so BigQuery loads them as TIMESTAMP
    (a naive Parquet timestamp would become a DATETIME).
    """

    writer = None
    rows = 0
    try:
        for path in paths:
            table = pq.read_table(path)
            if utc_timestamps:
                fields = [
                    f.with_type(pa.timestamp(f.type.unit, tz="UTC"))
                    if pa.types.is_timestamp(f.type) and f.type.tz is None
                    else f
                    for f in table.schema
                ]
                table = table.cast(pa.schema(fields, metadata=table.schema.metadata))
            if writer is None:
                writer = pq.ParquetWriter(target, table.schema)
            elif table.schema != writer.schema:
                raise WarehouseError(
                    f"{path} does not have the schema of the files before it; they must match."
                )
            writer.write_table(table)
            rows += table.num_rows
    except (OSError, pa.ArrowException) as err:
        raise WarehouseError(f"Could not read the Parquet files to load: {err}") from None
    finally:
        if writer is not None:
            writer.close()
    return rows


class Warehouse(abc.ABC):
    """Run BigQuery SQL and move data in and out of tables. See the module docstring."""

    # -- reading ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def query_arrow(self, sql: str, params: Params | None = None) -> pa.Table:
        """Run a query (or a script whose last statement is a query) and return its rows."""
        ...

    def query(self, sql: str, params: Params | None = None) -> pd.DataFrame:
        """Like :meth:`query_arrow`, as a pandas DataFrame."""
        return self.query_arrow(sql, params).to_pandas()

    @abc.abstractmethod
    def execute(self, sql: str, params: Params | None = None) -> None:
        """Run statements for their effect (DDL, DML, scripts)."""
        ...

    # -- writing ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def write_query(
        self,
        table: str,
        sql: str,
        params: Params | None = None,
        *,
        window: PartitionWindow | None = None,
    ) -> int:
        """Materialize the single SELECT ``sql`` into ``table`` atomically; return the rows written.

        Without ``window`` the table is replaced as a whole. With ``window`` only the rows whose
        ``window.column`` is in the window are replaced (the table is created when missing), and
        a query that returns rows outside the window is refused.
        """
        ...

    @abc.abstractmethod
    def load_dataframe(self, df: pd.DataFrame, table: str, *, window: PartitionWindow | None = None) -> int:
        """Write a DataFrame to ``table`` with the same semantics as :meth:`write_query`."""
        ...

    def load_parquet(
        self, paths: Sequence[str | Path], table: str, *, window: PartitionWindow | None = None
    ) -> int:
        """Write the rows of Parquet files (all of the same schema) to ``table``, as :meth:`load_dataframe`.

        The default reads the files with pyarrow and calls :meth:`load_dataframe`; a backend can
        do better (DuckDB reads the files itself).
        """
        if not paths:
            raise WarehouseError(f"No Parquet files given to load into {table}.")

        frame = pa.concat_tables([pq.read_table(path) for path in paths]).to_pandas()
        return self.load_dataframe(frame, table, window=window)

    # -- catalog ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def table_exists(self, table: str) -> bool: ...

    @abc.abstractmethod
    def table_schema(self, table: str) -> list[tuple[str, str]]:
        """``(column, BigQuery type)`` pairs, in table order. Raises :class:`TableNotFoundError`."""
        ...

    @abc.abstractmethod
    def row_count(self, table: str) -> int: ...

    @abc.abstractmethod
    def drop_table(self, table: str) -> None:
        """Drop ``table`` if it exists."""
        ...

    @abc.abstractmethod
    def describe(self) -> str:
        """A one-line human description of where the data lives."""
        ...

    def table_url(self, table: str) -> str | None:
        """A link to the table for the Dagster UI (console URL on gcp), if there is one."""
        return None

    def model_url(self, model: str) -> str | None:
        """Where a BigQuery ML model is, for the Dagster UI: a console URL on gcp, the artifact
        folder locally."""
        return None

    @abc.abstractmethod
    def list_models(self) -> list[tuple[str, dt.datetime]]:
        """The BigQuery ML models of the dataset: (name, creation time in UTC)."""
        ...

    @abc.abstractmethod
    def model_source(self, model: str) -> str:
        """How the model registry names the BigQuery ML model ``model`` as a version's source:
        ``bqml://<dataset>.<model>``."""
        ...
