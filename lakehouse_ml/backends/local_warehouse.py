"""The local warehouse: DuckDB (through dagster-duckdb's ``DuckDBResource``) running BigQuery SQL.

Every statement is translated by :mod:`lakehouse_ml.engine.translate`. Writes go through a
staging table inside one DuckDB transaction, so a failure leaves the table as it was.

BigQuery ML (``CREATE/DROP/ALTER MODEL`` and ``ML.*`` functions, anywhere in a statement) goes
through :mod:`lakehouse_ml.engine.sql` to the local BigQuery ML engine, whose models live in
``models_dir`` (by default a ``models/`` folder beside the DuckDB file).
"""

from __future__ import annotations

import datetime as dt
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
from dagster_duckdb import DuckDBResource
from sqlglot import exp

from lakehouse_ml.backends.local_registry import LocalModelRegistry
from lakehouse_ml.backends.registry import bqml_source
from lakehouse_ml.backends.warehouse import Params, PartitionWindow, Warehouse, check_params
from lakehouse_ml.bigquery.dialect import (
    mentions_bigquery_ml,
    single_select,
    split_statements,
    statement_returns_rows,
)
from lakehouse_ml.core.errors import TableNotFoundError, WarehouseError
from lakehouse_ml.core.identifiers import check_identifier
from lakehouse_ml.engine.engine import BqmlEngine
from lakehouse_ml.engine.sql import BqmlSession
from lakehouse_ml.engine.translate import TranslatedStatement, arrow_table, translate, translate_query

if TYPE_CHECKING:
    from lakehouse_ml.engine.engine import BqmlEngine
    from lakehouse_ml.engine.sql import BqmlSession

# DuckDB type → BigQuery type, for schemas shown to users.
_DUCKDB_TO_BIGQUERY = {
    "VARCHAR": "STRING",
    "BIGINT": "INT64",
    "INTEGER": "INT64",
    "SMALLINT": "INT64",
    "TINYINT": "INT64",
    "HUGEINT": "INT64",
    "UBIGINT": "INT64",
    "UINTEGER": "INT64",
    "DOUBLE": "FLOAT64",
    "FLOAT": "FLOAT64",
    "REAL": "FLOAT64",
    "BOOLEAN": "BOOL",
    "DATE": "DATE",
    "TIMESTAMP": "TIMESTAMP",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP",
    "TIMESTAMP_NS": "TIMESTAMP",
    "TIMESTAMP_MS": "TIMESTAMP",
    "BLOB": "BYTES",
}

_MISSING_TABLE = re.compile(r"Table with name (\S+) does not exist")


def bigquery_type(duckdb_type: str) -> str:
    upper = duckdb_type.upper()
    if upper.startswith("DECIMAL"):
        return "NUMERIC"
    if upper.endswith("[]"):
        return "ARRAY<" + bigquery_type(upper[:-2]) + ">"
    return _DUCKDB_TO_BIGQUERY.get(upper, upper)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


class LocalWarehouse(dg.ConfigurableResource, Warehouse):
    """BigQuery SQL on a DuckDB file under the local home."""

    duckdb: DuckDBResource
    # Where the local BigQuery ML engine keeps its models; None: ``models/`` beside the DuckDB file.
    models_dir: str | None = None
    # The local model registry (``MODEL_REGISTRY='VERTEX_AI'`` models register there); None:
    # ``registry/`` beside the DuckDB file (an in-memory warehouse without it has no registry).
    registry_dir: str | None = None

    @classmethod
    def at(cls, path: str | Path, models_dir: str | Path | None = None) -> "LocalWarehouse":
        """A local warehouse on the DuckDB file ``path`` (created, with its folder, when missing)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return cls(
            duckdb=DuckDBResource(database=str(path)), models_dir=str(models_dir) if models_dir else None
        )

    # -- BigQuery ML -----------------------------------------------------------------------------
    def models_path(self) -> Path:
        """The folder of the local BigQuery ML models."""
        if self.models_dir:
            return Path(self.models_dir)
        if self.duckdb.database == ":memory:":
            raise WarehouseError(
                "An in-memory local warehouse has no folder for BigQuery ML models: set models_dir "
                "(LocalWarehouse(duckdb=..., models_dir='path/to/models'))."
            )
        return Path(self.duckdb.database).parent / "models"

    def bqml_engine(self) -> BqmlEngine:

        return BqmlEngine(self.models_path(), registry=self.model_registry())

    def registry_path(self) -> Path | None:
        """The folder of the local model registry (None for an in-memory warehouse without one)."""
        if self.registry_dir:
            return Path(self.registry_dir)
        if self.duckdb.database == ":memory:":
            return None
        return Path(self.duckdb.database).parent / "registry"

    def model_registry(self):  # -> LocalModelRegistry | None

        path = self.registry_path()
        return LocalModelRegistry(root=str(path)) if path is not None else None

    def model_url(self, model: str) -> str | None:
        """Where a model's artifacts are (a local folder), for links in the Dagster UI."""
        check_identifier(model, "model")
        return str((self.models_path() / model).absolute())

    def list_models(self) -> list[tuple[str, dt.datetime]]:
        engine = self.bqml_engine()
        out = []
        for name in engine.store.names():
            try:
                created = dt.datetime.fromisoformat(engine.store.load_meta(name)["creation_time"])
            except (FileNotFoundError, KeyError, ValueError):
                continue  # dropped meanwhile, or not a model folder
            out.append((name, created if created.tzinfo else created.replace(tzinfo=dt.timezone.utc)))
        return out

    def model_source(self, model: str) -> str:

        return bqml_source(self.bqml_engine().dataset, check_identifier(model, "model"))

    def _session(self, conn: duckdb.DuckDBPyConnection, params: dict[str, Any]) -> BqmlSession:

        return BqmlSession(
            conn,
            self.bqml_engine(),
            lambda statement, fetch_arrow: self._run(conn, statement, params, fetch_arrow=fetch_arrow),
            params,
        )

    @staticmethod
    def _uses_bqml(sql: str) -> bool:

        return mentions_bigquery_ml(sql)

    # -- plumbing --------------------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        database = self.duckdb.database
        if database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.duckdb.get_connection() as conn:
                # DuckDB's Python client would otherwise read a missing table from any Python
                # variable of that name on the call stack (a "replacement scan"): a query of a
                # missing table must fail, not read a local DataFrame.
                conn.execute("SET python_enable_replacements = false")
                yield conn
        except duckdb.IOException as err:
            if "lock" in str(err).lower():
                raise WarehouseError(
                    f"The local warehouse {database} is locked by another process ({err}). "
                    "Wait for the running materialization to finish, then try again."
                ) from None
            raise

    def _run(
        self,
        conn: duckdb.DuckDBPyConnection,
        statement: TranslatedStatement,
        params: dict[str, Any],
        fetch_arrow: bool = False,
    ):
        missing = [p for p in statement.parameters if p not in params]
        if missing:
            raise WarehouseError(
                "The SQL uses query parameter(s) "
                + ", ".join("@" + p for p in missing)
                + " but no value was given. Pass them as params={...}"
                + " (on the command line: --param name=value)."
            )
        values = {p: params[p] for p in statement.parameters}
        try:
            if fetch_arrow:
                return arrow_table(conn.sql(statement.duckdb_sql, params=values or None))
            return (
                conn.execute(statement.duckdb_sql, values) if values else conn.execute(statement.duckdb_sql)
            )
        except duckdb.CatalogException as err:
            match = _MISSING_TABLE.search(str(err))
            if match:
                table = match.group(1)
                raise TableNotFoundError(
                    table,
                    f"Table {table} does not exist in the local warehouse ({self.duckdb.database}). "
                    f"Materialize the asset that builds it first (for raw tables: run "
                    f"`lakehouse-ml generate`, then materialize the raw assets).",
                ) from None
            raise WarehouseError(f"DuckDB rejected the translated SQL: {err}") from None
        except duckdb.Error as err:
            raise WarehouseError(f"DuckDB rejected the translated SQL: {err}") from None

    # -- reading ---------------------------------------------------------------------------------
    def query_arrow(self, sql: str, params: Params | None = None) -> pa.Table:
        if self._uses_bqml(sql):
            checked = check_params(params)
            statements = split_statements(sql)
            if not statements or not statement_returns_rows(statements[-1], checked):
                raise WarehouseError("The last statement is not a query, so there are no rows to return.")
            with self._connection() as conn, self._session(conn, checked) as session:
                return session.run_script(sql)
        statements = translate(sql)
        checked = check_params(params)
        if not statements[-1].returns_rows:
            raise WarehouseError("The last statement is not a query, so there are no rows to return.")
        with self._connection() as conn:
            for statement in statements[:-1]:
                self._run(conn, statement, checked)
            return self._run(conn, statements[-1], checked, fetch_arrow=True)

    def execute(self, sql: str, params: Params | None = None) -> None:
        self.run(sql, params)

    def run(self, sql: str, params: Params | None = None) -> pa.Table | None:
        """Run a script; return the rows of its last statement when that is a query, else None."""
        checked = check_params(params)
        if self._uses_bqml(sql):
            with self._connection() as conn, self._session(conn, checked) as session:
                return session.run_script(sql)
        statements = translate(sql)
        with self._connection() as conn:
            for statement in statements[:-1]:
                self._run(conn, statement, checked)
            last = statements[-1]
            if last.returns_rows:
                return self._run(conn, last, checked, fetch_arrow=True)
            self._run(conn, last, checked)
        return None

    # -- writing ---------------------------------------------------------------------------------
    def write_query(
        self,
        table: str,
        sql: str,
        params: Params | None = None,
        *,
        window: PartitionWindow | None = None,
    ) -> int:
        check_identifier(table, "table")
        checked = check_params(params)
        bqml = self._uses_bqml(sql)
        translated = None if bqml else translate_query(single_select(sql))
        with self._connection() as conn, self._session(conn, checked) if bqml else _nothing() as session:
            if session is not None:
                # ML.* calls are evaluated (and their results registered) before the transaction.
                translated = session.translate_query(sql)
            conn.execute("BEGIN TRANSACTION")
            try:
                self._stage(conn, translated, checked)
                rows = self._publish(conn, table, window)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return rows

    def load_dataframe(self, df: pd.DataFrame, table: str, *, window: PartitionWindow | None = None) -> int:
        check_identifier(table, "table")
        if window is not None and window.column not in df.columns:
            raise WarehouseError(f"The DataFrame has no partition column {window.column!r}.")
        with self._connection() as conn:
            conn.register("__incoming", df)
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute("CREATE OR REPLACE TEMP TABLE __staging AS SELECT * FROM __incoming")
                rows = self._publish(conn, table, window)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                conn.unregister("__incoming")
        return rows

    def load_parquet(self, paths, table: str, *, window: PartitionWindow | None = None) -> int:
        check_identifier(table, "table")
        files = [str(Path(p)) for p in paths]
        if not files:
            raise WarehouseError(f"No Parquet files given to load into {table}.")
        with self._connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute(
                    "CREATE OR REPLACE TEMP TABLE __staging AS SELECT * "
                    "FROM read_parquet($files, hive_partitioning = false)",
                    {"files": files},
                )
                if window is not None and window.column not in [
                    c[0] for c in conn.execute("DESCRIBE __staging").fetchall()
                ]:
                    raise WarehouseError(f"The Parquet files have no partition column {window.column!r}.")
                rows = self._publish(conn, table, window)
                conn.execute("COMMIT")
            except duckdb.Error as err:
                conn.execute("ROLLBACK")
                raise WarehouseError(f"Could not load Parquet files into {table}: {err}") from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return rows

    def _stage(
        self, conn: duckdb.DuckDBPyConnection, query: TranslatedStatement, params: dict[str, Any]
    ) -> None:
        staging = TranslatedStatement(
            bigquery=query.bigquery,
            duckdb_sql=exp.Create(
                this=exp.to_table("__staging"),
                kind="TABLE",
                replace=True,
                properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
                expression=exp.maybe_parse(query.duckdb_sql, dialect="duckdb"),
            ).sql("duckdb"),
            parameters=query.parameters,
            returns_rows=False,
        )
        self._run(conn, staging, params)
        # BigQuery's SUM of INT64 is INT64; DuckDB widens it to HUGEINT, which readers get as
        # Python Decimals. Store BigQuery's type.
        for name, kind in conn.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE "
            "table_name = '__staging' AND database_name = 'temp'"
        ).fetchall():
            if kind in ("HUGEINT", "UHUGEINT"):
                quoted = '"' + name.replace('"', '""') + '"'
                conn.execute(f"ALTER TABLE __staging ALTER COLUMN {quoted} TYPE BIGINT")

    def _publish(self, conn: duckdb.DuckDBPyConnection, table: str, window: PartitionWindow | None) -> int:
        """Move ``__staging`` into ``table`` (whole, or the window); runs inside the caller's transaction."""
        target = exp.to_table(table).sql("duckdb")
        staged = conn.execute("SELECT COUNT(*) FROM __staging").fetchone()[0]
        if window is None:
            conn.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM __staging")
            return staged
        column = exp.column(window.column).sql("duckdb")
        outside = conn.execute(
            f"SELECT COUNT(*), MIN({column}), MAX({column}) FROM __staging "
            f"WHERE {column} IS NULL OR {column} NOT BETWEEN $start AND $end",
            {"start": window.start, "end": window.end},
        ).fetchone()
        if outside[0]:
            raise WarehouseError(
                f"{outside[0]} row(s) for {table} fall outside the partition window "
                f"{window.start}..{window.end} on {window.column} (found {outside[1]}..{outside[2]}, or NULL). "
                "Nothing was written. Filter the query on the window (@start_date/@end_date)."
            )
        if not self._exists(conn, table):
            conn.execute(f"CREATE TABLE {target} AS SELECT * FROM __staging")
        else:
            conn.execute(
                f"DELETE FROM {target} WHERE {column} BETWEEN $start AND $end",
                {"start": window.start, "end": window.end},
            )
            try:
                conn.execute(f"INSERT INTO {target} BY NAME SELECT * FROM __staging")
            except duckdb.BinderException as err:
                raise WarehouseError(
                    f"The new rows do not fit the columns of {table} ({err}). The schema changed: "
                    f"drop {table} and materialize all of its partitions again."
                ) from None
        return staged

    # -- catalog ---------------------------------------------------------------------------------
    @staticmethod
    def _exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
        return bool(
            conn.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = $t",
                {"t": table},
            ).fetchone()[0]
        )

    def table_exists(self, table: str) -> bool:
        check_identifier(table, "table")
        with self._connection() as conn:
            return self._exists(conn, table)

    def table_schema(self, table: str) -> list[tuple[str, str]]:
        check_identifier(table, "table")
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'main' AND table_name = $t ORDER BY ordinal_position",
                {"t": table},
            ).fetchall()
        if not rows:
            raise TableNotFoundError(table, f"Table {table} does not exist in the local warehouse.")
        return [(name, bigquery_type(dtype)) for name, dtype in rows]

    def row_count(self, table: str) -> int:
        check_identifier(table, "table")
        with self._connection() as conn:
            if not self._exists(conn, table):
                raise TableNotFoundError(table, f"Table {table} does not exist in the local warehouse.")
            return conn.execute(f"SELECT COUNT(*) FROM {exp.to_table(table).sql('duckdb')}").fetchone()[0]

    def drop_table(self, table: str) -> None:
        check_identifier(table, "table")
        with self._connection() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {exp.to_table(table).sql('duckdb')}")

    def describe(self) -> str:
        return f"DuckDB at {self.duckdb.database}"

    def table_url(self, table: str) -> str | None:
        return None
