"""The gcp warehouse: BigQuery through dagster-gcp's ``BigQueryResource``.

Every statement is BigQuery SQL sent as it is written (the same ``sql/`` files run on the local
backend); values travel as typed named query parameters, tables are referenced unqualified and
resolved through the job's default dataset. Results come back through the REST API
(``jobs.getQueryResults``) as Arrow, without the BigQuery Storage API.

Atomic writes, per :mod:`lakehouse_ml.backends.warehouse`:

* **Whole table** (``write_query`` / ``load_dataframe`` without a window): one job writes the table
  with ``WRITE_TRUNCATE``. A BigQuery job either commits its whole output or nothing, so a failed
  write leaves the previous content. An existing table keeps its partitioning and clustering
  (the job repeats them; BigQuery would otherwise refuse the job).
* **Window**: the SQL runs exactly as written (or the data is loaded, one upload for all the
  Parquet files) into a staging table ``_lakehouse_ml_staging_<table>_<id>`` that expires after a
  day (so a crash leaves nothing permanent) and is dropped afterwards. The window is then
  published from the staging table:

  - *table missing*: one query job creates it, day-partitioned on the window column, with
    ``WRITE_EMPTY``; a failure creates nothing. If another run created the table meanwhile the
    job fails with ``duplicate`` and the transaction below runs instead.
  - *table present*: one script with a multi-statement transaction, built as sqlglot expressions
    from :func:`replace_window_statements`: ``BEGIN TRANSACTION; DELETE … WHERE col BETWEEN
    @lakehouse_window_start AND @lakehouse_window_end; INSERT INTO t (cols…) SELECT cols… FROM
    (SELECT * FROM staging) WHERE IF(col BETWEEN …, TRUE, ERROR(…)); COMMIT TRANSACTION;``.
    Columns are matched by name (as the local backend's ``INSERT … BY NAME``).

* **Rows outside the window** are refused inside the publishing job: the ``WHERE IF(…, TRUE,
  ERROR(…))`` guard makes the statement fail on the first row whose partition column is outside
  the window or NULL, BigQuery rolls the transaction back (or the creating job writes nothing),
  and the table is unchanged. Loading straight into partition decorators ``table$YYYYMMDD`` (one
  load per day) was rejected: each day would be atomic but the window would not. DataFrames are
  also checked for out-of-window rows before anything is sent.

Timezone-naive DataFrame datetimes are loaded as UTC TIMESTAMP (the client would make them
DATETIME), the type the project's SQL and the local backend use for event times; query parameters
keep the plain mapping (naive ``datetime`` → DATETIME, aware → TIMESTAMP).

Errors are turned into :class:`WarehouseError` / :class:`TableNotFoundError` with what to do
next; nothing here assumes a particular endpoint, so ``api_endpoint`` can point at private
service connect or a test double.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import tempfile
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from dagster_gcp import BigQueryResource
from dagster_gcp.bigquery.utils import setup_gcp_creds
from google.api_core import exceptions as google_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from pydantic import Field, PrivateAttr
from sqlglot import exp

from lakehouse_ml.backends.google_errors import error_messages, job_note
from lakehouse_ml.backends.registry import bqml_source
from lakehouse_ml.backends.warehouse import (
    Params,
    PartitionWindow,
    Warehouse,
    check_params,
    combine_parquet,
    in_window,
    replace_window_statements,
    window_params,
)
from lakehouse_ml.bigquery.dialect import single_select
from lakehouse_ml.core.errors import TableNotFoundError, WarehouseError
from lakehouse_ml.core.identifiers import check_identifier

if TYPE_CHECKING:
    from lakehouse_ml.core.settings import Settings

DATASET_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
STAGING_PREFIX = "_lakehouse_ml_staging_"
STAGING_TTL = dt.timedelta(days=1)
GUARD_MARKER = "lakehouse_ml: partition window violated"
_GUARD_ALIAS = "lakehouse_ml_window_rows"

# Legacy SQL type names (returned by the REST API) → GoogleSQL names used across the project.
_LEGACY_TYPES = {
    "INTEGER": "INT64",
    "FLOAT": "FLOAT64",
    "BOOLEAN": "BOOL",
    "RECORD": "STRUCT",
}
_NOT_FOUND_TABLE = re.compile(r"Table ([\w.-]+):(\w+)\.(\w+)")
_NOT_FOUND_DATASET = re.compile(r"Dataset ([\w.-]+):(\w+)")


def bigquery_type_name(field: bigquery.SchemaField) -> str:
    """The GoogleSQL type of a schema field: ``INT64``, ``ARRAY<STRING>``, ``STRUCT<a INT64>``…"""
    type_name = _LEGACY_TYPES.get(field.field_type.upper(), field.field_type.upper())
    if type_name == "STRUCT":
        type_name = (
            "STRUCT<" + ", ".join(f"{sub.name} {bigquery_type_name(sub)}" for sub in field.fields) + ">"
        )
    if (field.mode or "").upper() == "REPEATED":
        return f"ARRAY<{type_name}>"
    return type_name


# -- query parameters ------------------------------------------------------------------------------


def _scalar_type(name: str, value: Any) -> tuple[str, Any]:
    """BigQuery type and client value of a Python parameter value."""
    if isinstance(value, (bool, np.bool_)):
        return "BOOL", bool(value)
    if isinstance(value, (int, np.integer)):
        return "INT64", int(value)
    if isinstance(value, (float, np.floating)):
        return "FLOAT64", float(value)
    if isinstance(value, decimal.Decimal):
        return "NUMERIC", value
    if isinstance(value, str):
        return "STRING", value
    if isinstance(value, bytes):
        return "BYTES", value
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        if isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        if value.tzinfo is not None and value.utcoffset() is not None:
            return "TIMESTAMP", value
        return "DATETIME", value
    if isinstance(value, dt.date):
        return "DATE", value
    if isinstance(value, dt.time):
        return "TIME", value
    raise WarehouseError(
        f"Query parameter @{name} has a {type(value).__name__} value; use bool, int, float, str, "
        "datetime.date, datetime.datetime (with a timezone for TIMESTAMP, without for DATETIME) or a "
        "list of one of these."
    )


def query_parameter(name: str, value: Any) -> bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter:
    """A typed BigQuery query parameter from a Python value (see the warehouse module docstring)."""
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        items = list(value)
        if not items:
            raise WarehouseError(
                f"Query parameter @{name} is an empty list: BigQuery needs the element type. Pass at "
                "least one value, or leave the condition out of the SQL."
            )
        typed = []
        for item in items:
            if item is None or isinstance(item, (list, tuple)):
                raise WarehouseError(
                    f"Query parameter @{name} holds {item!r}: array elements must be non-NULL scalars."
                )
            typed.append(_scalar_type(name, item))
        types = {t for t, _ in typed}
        if types == {"INT64", "FLOAT64"}:
            return bigquery.ArrayQueryParameter(name, "FLOAT64", [float(v) for _, v in typed])
        if len(types) > 1:
            raise WarehouseError(
                f"Query parameter @{name} mixes element types {sorted(types)}: a BigQuery array has "
                "one element type."
            )
        return bigquery.ArrayQueryParameter(name, types.pop(), [v for _, v in typed])
    type_name, converted = _scalar_type(name, value)
    return bigquery.ScalarQueryParameter(name, type_name, converted)


def query_parameters(
    params: dict[str, Any],
) -> list[bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter]:
    return [query_parameter(name, value) for name, value in params.items()]


def timestamps_as_utc(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its timezone-naive datetime columns read as UTC, so they load as TIMESTAMP.

    google-cloud-bigquery loads a naive ``datetime64`` column as DATETIME, but the project's SQL
    treats event times as TIMESTAMP (``UNIX_SECONDS``, ``TIMESTAMP_SUB``…) and the local backend
    reports such columns as TIMESTAMP. Reading them as UTC keeps both backends on one schema.
    """
    naive = [
        column
        for column in df.columns
        if pd.api.types.is_datetime64_dtype(df[column]) and getattr(df[column].dt, "tz", None) is None
    ]
    naive += [
        column
        for column in df.columns
        if df[column].dtype == object and pd.api.types.infer_dtype(df[column], skipna=True) == "datetime"
    ]
    if not naive:
        return df
    converted = df.copy()
    for column in naive:
        values = pd.to_datetime(converted[column])
        converted[column] = values if values.dt.tz is not None else values.dt.tz_localize("UTC")
    return converted


# -- the resource that makes clients ----------------------------------------------------------------


class LakehouseBigQueryResource(BigQueryResource):
    """dagster-gcp's ``BigQueryResource`` that can also target another API endpoint.

    ``api_endpoint`` points the client at private service connect or a local test double;
    ``anonymous_credentials`` sends no credentials (only for a test double). Otherwise it behaves
    like ``BigQueryResource``: application default credentials, or ``gcp_credentials``.
    """

    api_endpoint: str | None = Field(
        default=None,
        description=(
            "BigQuery API endpoint, e.g. https://bigquery.googleapis.com (the default) or a private "
            "service connect URL."
        ),
    )
    anonymous_credentials: bool = Field(
        default=False,
        description="Send no credentials. Only for a local test double of the BigQuery API.",
    )

    def _new_client(self) -> bigquery.Client:
        kwargs: dict[str, Any] = {"project": self.project, "location": self.location}
        if self.api_endpoint:
            kwargs["client_options"] = {"api_endpoint": self.api_endpoint}
        if self.anonymous_credentials:
            if not self.project:
                raise WarehouseError(
                    "Anonymous credentials need an explicit project: set LAKEHOUSE_ML_GCP_PROJECT."
                )
            kwargs["credentials"] = AnonymousCredentials()
        return bigquery.Client(**kwargs)

    @contextmanager
    def get_client(self) -> Iterator[bigquery.Client]:
        """A BigQuery client for this configuration, closed on exit."""
        if self.gcp_credentials and not self.anonymous_credentials:
            with setup_gcp_creds(self.gcp_credentials):
                client = self._new_client()
                try:
                    yield client
                finally:
                    client.close()
        else:
            client = self._new_client()
            try:
                yield client
            finally:
                client.close()


# -- the warehouse ----------------------------------------------------------------------------------


class GcpWarehouse(dg.ConfigurableResource, Warehouse):
    """BigQuery SQL on BigQuery: every table lives in one dataset."""

    bigquery: LakehouseBigQueryResource
    dataset: str = Field(description="BigQuery dataset that holds every table (created on the first write).")

    _dataset_ready: bool = PrivateAttr(default=False)

    # -- plumbing ----------------------------------------------------------------------------------
    @contextmanager
    def _client(self) -> Iterator[bigquery.Client]:
        if not DATASET_PATTERN.match(self.dataset or ""):
            raise WarehouseError(
                f"Invalid BigQuery dataset {self.dataset!r}: use letters, digits and underscores "
                "(LAKEHOUSE_ML_GCP_DATASET)."
            )
        try:
            with self.bigquery.get_client() as client:
                yield client
        except google_exceptions.GoogleAPICallError as err:  # not translated where it was raised
            raise self._translate(err, "call BigQuery") from None
        except google_exceptions.RetryError as err:
            raise WarehouseError(
                f"BigQuery did not answer in time ({err}). Check that {self._endpoint()} is reachable "
                "(LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT, network, proxy), then run again."
            ) from None
        except Exception as err:
            module = type(err).__module__
            if module.startswith("google.auth"):
                raise WarehouseError(
                    f"No usable Google Cloud credentials for BigQuery: {err}. Run "
                    "`gcloud auth application-default login`, or point GOOGLE_APPLICATION_CREDENTIALS at "
                    "a service account key, then run again."
                ) from None
            if module.startswith(("requests", "urllib3")):
                raise WarehouseError(
                    f"Could not reach BigQuery at {self._endpoint()}: {err}. Check the endpoint "
                    "(LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT), the network and any proxy, then run again."
                ) from None
            raise

    def _endpoint(self) -> str:
        return self.bigquery.api_endpoint or "https://bigquery.googleapis.com"

    def _location(self) -> str:
        return self.bigquery.location or "US"

    def _ref(self, client: bigquery.Client, table: str) -> bigquery.TableReference:
        return bigquery.TableReference(bigquery.DatasetReference(client.project, self.dataset), table)

    def _full_name(self, client: bigquery.Client | None, table: str) -> str:
        project = client.project if client is not None else (self.bigquery.project or "<project>")
        return f"{project}.{self.dataset}.{table}"

    def _table_not_found(self, project: str, table: str) -> TableNotFoundError:
        return TableNotFoundError(
            table,
            f"Table {project}.{self.dataset}.{table} was not found in BigQuery "
            f"(location {self._location()}). "
            "Materialize the asset that builds it first, or check LAKEHOUSE_ML_GCP_PROJECT, "
            "LAKEHOUSE_ML_GCP_DATASET and LAKEHOUSE_ML_BIGQUERY_LOCATION.",
        )

    def _translate(
        self, err: google_exceptions.GoogleAPICallError, action: str, table: str | None = None
    ) -> WarehouseError:
        """A google API error → a warehouse error that says what to do next."""
        messages = error_messages(err)
        if isinstance(err, google_exceptions.NotFound):
            match = _NOT_FOUND_TABLE.search(messages)
            if match:
                return TableNotFoundError(
                    match.group(3),
                    f"Table {match.group(1)}.{match.group(2)}.{match.group(3)} was not found in BigQuery "
                    f"(location {self._location()}); BigQuery said: {messages}. Materialize the asset that "
                    f"builds it first, or check the table name and LAKEHOUSE_ML_GCP_DATASET.",
                )
            match = _NOT_FOUND_DATASET.search(messages)
            if match:
                return TableNotFoundError(
                    table or "",
                    f"Dataset {match.group(1)}.{match.group(2)} was not found in BigQuery location "
                    f"{self._location()}; BigQuery said: {messages}. Materialize the assets that build its "
                    "tables first (the dataset is created on the first write), or check "
                    "LAKEHOUSE_ML_GCP_DATASET and LAKEHOUSE_ML_BIGQUERY_LOCATION.",
                )
            return WarehouseError(
                f"BigQuery could not {action}: {messages}{job_note(err, self._location())}."
            )
        if GUARD_MARKER in messages:
            return WarehouseError(
                f"Refused to {action}: {messages}. The table was left unchanged. Make the query return "
                "only rows inside the partition window (filter it on the window's dates)."
            )
        if isinstance(err, (google_exceptions.Unauthorized, google_exceptions.Forbidden)):
            return WarehouseError(
                f"BigQuery refused to {action}: {messages}. Check the credentials "
                "(`gcloud auth application-default login` or a service account) and that they hold "
                f"BigQuery Job User and Data Editor roles on project {self.bigquery.project or '<default>'}."
            )
        if isinstance(err, google_exceptions.BadRequest):
            return WarehouseError(
                f"BigQuery rejected the statement to {action}: {messages}{job_note(err, self._location())}. "
                "Fix the BigQuery SQL (or the parameters) and run again."
            )
        return WarehouseError(
            f"BigQuery failed to {action}: {messages}{job_note(err, self._location())}. If this is transient "
            "(HTTP 5xx, quota), run again; otherwise check the job in the BigQuery console."
        )

    def _ensure_dataset(self, client: bigquery.Client) -> None:
        """Create the dataset in the configured location if it is missing (once per resource)."""
        if self._dataset_ready:
            return
        dataset = bigquery.Dataset(bigquery.DatasetReference(client.project, self.dataset))
        dataset.location = self.bigquery.location  # None: BigQuery's default (US)
        try:
            existing = client.create_dataset(dataset, exists_ok=True)
        except google_exceptions.GoogleAPICallError as err:
            raise self._translate(err, f"create dataset {client.project}.{self.dataset}") from None
        configured = self.bigquery.location
        if configured and existing.location and existing.location.upper() != configured.upper():
            raise WarehouseError(
                f"Dataset {client.project}.{self.dataset} is in location {existing.location}, but "
                f"LAKEHOUSE_ML_BIGQUERY_LOCATION is {self._location()}. Set the location to "
                f"{existing.location}, or use another dataset (LAKEHOUSE_ML_GCP_DATASET)."
            )
        self._dataset_ready = True

    def _job_config(
        self, client: bigquery.Client, params: dict[str, Any], **kwargs: Any
    ) -> bigquery.QueryJobConfig:
        return bigquery.QueryJobConfig(
            default_dataset=bigquery.DatasetReference(client.project, self.dataset),
            query_parameters=query_parameters(params),
            use_legacy_sql=False,
            **kwargs,
        )

    def _run(
        self,
        client: bigquery.Client,
        sql: str,
        params: dict[str, Any],
        action: str,
        *,
        passthrough: tuple[type[Exception], ...] = (),
        **job_kwargs: Any,
    ) -> tuple[bigquery.QueryJob, Any]:
        """Run one query job to completion; return it and its row iterator.

        Google API errors become :class:`WarehouseError`, except the ``passthrough`` ones.
        """
        job_config = self._job_config(client, params, **job_kwargs)
        try:
            job = client.query(sql, job_config=job_config)
            rows = job.result()
        except passthrough:
            raise
        except google_exceptions.GoogleAPICallError as err:
            raise self._translate(err, action) from None
        return job, rows

    def _get_table(self, client: bigquery.Client, table: str) -> bigquery.Table | None:
        try:
            return client.get_table(self._ref(client, table))
        except google_exceptions.NotFound:
            return None
        except google_exceptions.GoogleAPICallError as err:
            raise self._translate(
                err, f"read the metadata of {self._full_name(client, table)}", table
            ) from None

    # -- reading -----------------------------------------------------------------------------------
    def query_arrow(self, sql: str, params: Params | None = None) -> pa.Table:
        checked = check_params(params)
        with self._client() as client:
            _, rows = self._run(client, sql, checked, "run the query")
            try:
                return rows.to_arrow(create_bqstorage_client=False)
            except google_exceptions.GoogleAPICallError as err:
                raise self._translate(err, "read the query results") from None

    def execute(self, sql: str, params: Params | None = None) -> None:
        checked = check_params(params)
        with self._client() as client:
            self._ensure_dataset(client)
            self._run(client, sql, checked, "run the statements")

    # -- writing -----------------------------------------------------------------------------------
    def write_query(
        self,
        table: str,
        sql: str,
        params: Params | None = None,
        *,
        window: PartitionWindow | None = None,
    ) -> int:
        check_identifier(table, "table")
        single_select(sql)  # refuse anything but one query before sending it
        checked = check_params(params)
        with self._client() as client:
            self._ensure_dataset(client)
            if window is None:
                existing = self._get_table(client, table)
                _, rows = self._run(
                    client,
                    sql,  # sent exactly as written
                    checked,
                    f"write {self._full_name(client, table)}",
                    destination=self._ref(client, table),
                    write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                    create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
                    **self._layout(existing),
                )
                return int(rows.total_rows or 0)
            # The SQL runs exactly as written into a staging table; the window is then published
            # from there in one transaction.
            with self._staged(client, table) as staging:
                self._run(
                    client,
                    sql,
                    checked,
                    f"stage {window.start}..{window.end} of {self._full_name(client, table)}",
                    destination=staging,
                    write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                    create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
                )
                return self._publish(client, staging, table, window)

    def load_dataframe(self, df: pd.DataFrame, table: str, *, window: PartitionWindow | None = None) -> int:
        check_identifier(table, "table")
        if not isinstance(df, pd.DataFrame):
            raise WarehouseError(f"load_dataframe needs a pandas DataFrame, got {type(df).__name__}.")
        if window is not None:
            self._check_frame_window(df, table, window)
        df = timestamps_as_utc(df)
        with self._client() as client:
            self._ensure_dataset(client)
            if window is None:
                existing = self._get_table(client, table)
                return self._load_frame(client, df, self._ref(client, table), **self._layout(existing))
            with self._staged(client, table) as staging:
                self._load_frame(client, df, staging)
                return self._publish(client, staging, table, window)

    def load_parquet(self, paths: Sequence[Any], table: str, *, window: PartitionWindow | None = None) -> int:
        """Load Parquet files into ``table`` with the semantics of :meth:`load_dataframe`.

        The files are streamed into one Parquet file (one row group each) and sent as one load job
        into a staging table, then published: one upload whatever the number of daily files.
        """
        check_identifier(table, "table")
        files = [str(p) for p in paths]
        if not files:
            raise WarehouseError(f"No Parquet files given to load into {table}.")
        with tempfile.TemporaryDirectory(prefix="lakehouse_ml_load_") as tmp:
            combined = Path(tmp) / f"{table}.parquet"
            combine_parquet(files, combined)
            with self._client() as client:
                self._ensure_dataset(client)
                with self._staged(client, table) as staging:
                    config = bigquery.LoadJobConfig(
                        source_format=bigquery.SourceFormat.PARQUET,
                        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                    )
                    try:
                        with open(combined, "rb") as handle:
                            client.load_table_from_file(handle, staging, job_config=config).result()
                    except google_exceptions.GoogleAPICallError as err:
                        raise self._translate(
                            err, f"load {len(files)} file(s) into {self._full_name(client, table)}"
                        ) from None
                    return self._publish(client, staging, table, window)

    @contextmanager
    def _staged(self, client: bigquery.Client, table: str) -> Iterator[bigquery.TableReference]:
        """A staging table for ``table``, dropped afterwards (and set to expire, should this process die)."""
        staging = self._staging_ref(client, table)
        try:
            yield staging
        finally:
            self._drop_quietly(client, staging)

    def _publish(
        self,
        client: bigquery.Client,
        staging: bigquery.TableReference,
        table: str,
        window: PartitionWindow | None,
    ) -> int:
        """Move the rows of ``staging`` into ``table``: the whole table, or its window."""
        self._expire(client, staging)
        source = exp.select("*").from_(exp.to_table(staging.table_id))
        if window is not None:
            return self._write_window(client, table, source, window)
        existing = self._get_table(client, table)
        _, rows = self._run(
            client,
            source.sql("bigquery"),
            {},
            f"write {self._full_name(client, table)}",
            destination=self._ref(client, table),
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
            **self._layout(existing),
        )
        return int(rows.total_rows or 0)

    @staticmethod
    def _layout(existing: bigquery.Table | None) -> dict[str, Any]:
        """Partitioning and clustering of an existing table, repeated by a job that replaces it."""
        layout: dict[str, Any] = {}
        if existing is not None:
            if existing.time_partitioning is not None:
                layout["time_partitioning"] = existing.time_partitioning
            if existing.clustering_fields:
                layout["clustering_fields"] = existing.clustering_fields
        return layout

    def _load_frame(
        self, client: bigquery.Client, df: pd.DataFrame, ref: bigquery.TableReference, **layout: Any
    ) -> int:
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
            **layout,
        )
        try:
            with warnings.catch_warnings():
                # google-cloud-bigquery nudges DataFrame loads towards pandas-gbq; the load job it
                # sends is the documented Parquet upload either way, so the nudge is not shown to users.
                warnings.filterwarnings("ignore", message=r".*pandas[-_]gbq.*")
                job = client.load_table_from_dataframe(df, ref, job_config=config)
            job.result()
        except google_exceptions.GoogleAPICallError as err:
            raise self._translate(
                err, f"load a DataFrame into {client.project}.{ref.dataset_id}.{ref.table_id}"
            ) from None
        except (pa.ArrowException, ValueError, TypeError) as err:
            raise WarehouseError(
                f"Could not convert the DataFrame for {ref.table_id} to Parquet: {err}. Give each column "
                "one type (e.g. no mixed str/int objects)."
            ) from None
        return int(job.output_rows or 0)

    @staticmethod
    def _check_frame_window(df: pd.DataFrame, table: str, window: PartitionWindow) -> None:
        if window.column not in df.columns:
            raise WarehouseError(f"The DataFrame for {table} has no partition column {window.column!r}.")
        try:
            days = pd.to_datetime(df[window.column]).dt.date
        except (ValueError, TypeError) as err:
            raise WarehouseError(
                f"Column {window.column!r} of the DataFrame for {table} is not a date: {err}."
            ) from None
        known = days.notna()
        inside = known.copy()
        inside[known] = [window.start <= d <= window.end for d in days[known]]
        outside = ~inside
        if outside.any():
            shown = sorted({str(d) for d in days[outside].head(5)})
            raise WarehouseError(
                f"{int(outside.sum())} row(s) for {table} fall outside the partition window "
                f"{window.start}..{window.end} on {window.column} (e.g. {', '.join(shown)}). Nothing was "
                "written. Keep only the rows of the window in the DataFrame."
            )

    def _staging_ref(self, client: bigquery.Client, table: str) -> bigquery.TableReference:
        return self._ref(client, f"{STAGING_PREFIX}{table}_{uuid.uuid4().hex[:12]}")

    def _expire(self, client: bigquery.Client, ref: bigquery.TableReference) -> None:
        """Let BigQuery delete a staging table by itself if this process dies before dropping it."""
        staging = bigquery.Table(ref)
        staging.expires = dt.datetime.now(dt.timezone.utc) + STAGING_TTL
        try:
            client.update_table(staging, ["expires"])
        except google_exceptions.GoogleAPICallError as err:
            raise self._translate(err, f"set the expiration of staging table {ref.table_id}") from None

    @staticmethod
    def _drop_quietly(client: bigquery.Client, ref: bigquery.TableReference) -> None:
        try:
            client.delete_table(ref, not_found_ok=True)
        except google_exceptions.GoogleAPICallError:
            pass  # it expires by itself within a day

    @staticmethod
    def _guarded(source: exp.Query, window: PartitionWindow, columns: list[str] | None) -> exp.Select:
        """``SELECT cols FROM (source) WHERE IF(col BETWEEN @start AND @end, TRUE, ERROR(...))``."""
        column = exp.column(window.column)
        message = exp.func(
            "CONCAT",
            exp.Literal.string(f"{GUARD_MARKER}: {window.column} = "),
            exp.func("IFNULL", exp.cast(column.copy(), "STRING"), exp.Literal.string("NULL")),
            exp.Literal.string(f" is outside {window.start.isoformat()}..{window.end.isoformat()}"),
        )
        guard = exp.If(this=in_window(window), true=exp.true(), false=exp.func("ERROR", message))
        projection = [exp.column(c) for c in columns] if columns else [exp.Star()]
        return exp.select(*projection).from_(source.subquery(_GUARD_ALIAS)).where(guard)

    def _write_window(
        self,
        client: bigquery.Client,
        table: str,
        source: exp.Query,
        window: PartitionWindow,
    ) -> int:
        all_params = window_params(window)
        action = f"write {window.start}..{window.end} of {self._full_name(client, table)}"
        existing = self._get_table(client, table)
        if existing is None:
            try:
                _, rows = self._run(
                    client,
                    self._guarded(source, window, None).sql("bigquery"),
                    all_params,
                    action,
                    passthrough=(google_exceptions.Conflict,),
                    destination=self._ref(client, table),
                    write_disposition=bigquery.WriteDisposition.WRITE_EMPTY,
                    create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
                    time_partitioning=bigquery.TimePartitioning(
                        type_=bigquery.TimePartitioningType.DAY, field=window.column
                    ),
                )
                return int(rows.total_rows or 0)
            except google_exceptions.Conflict:
                pass  # "duplicate": a concurrent run created the table and wrote rows first
            existing = self._get_table(client, table)  # created by a concurrent run: replace its window
            if existing is None:
                raise WarehouseError(
                    f"Table {self._full_name(client, table)} disappeared during the write; run again."
                )
        columns = [f.name for f in existing.schema]
        if window.column not in columns:
            raise WarehouseError(
                f"Table {self._full_name(client, table)} has no column {window.column!r}, so its window "
                "cannot be "
                f"replaced. Drop the table (it was built with another schema) and materialize it again."
            )
        statements = replace_window_statements(table, self._guarded(source, window, columns), window, columns)
        script = ";\n".join(s.sql("bigquery") for s in [exp.Transaction(), *statements, exp.Commit()]) + ";"
        job, _ = self._run(client, script, all_params, action)
        return self._inserted_rows(client, job)

    def _inserted_rows(self, client: bigquery.Client, job: bigquery.QueryJob) -> int:
        try:
            children = list(client.list_jobs(parent_job=job.job_id))
        except google_exceptions.GoogleAPICallError as err:
            raise self._translate(err, f"read the statements of job {job.job_id}") from None
        for child in children:
            if isinstance(child, bigquery.QueryJob) and child.statement_type == "INSERT":
                return int(child.num_dml_affected_rows or 0)
        raise WarehouseError(
            f"BigQuery job {job.job_id} ran no INSERT statement; check it in the BigQuery console."
        )

    # -- catalog -----------------------------------------------------------------------------------
    def table_exists(self, table: str) -> bool:
        check_identifier(table, "table")
        with self._client() as client:
            return self._get_table(client, table) is not None

    def _require_table(self, client: bigquery.Client, table: str) -> bigquery.Table:
        found = self._get_table(client, table)
        if found is None:
            raise self._table_not_found(client.project, table)
        return found

    def table_schema(self, table: str) -> list[tuple[str, str]]:
        check_identifier(table, "table")
        with self._client() as client:
            return [(f.name, bigquery_type_name(f)) for f in self._require_table(client, table).schema]

    def row_count(self, table: str) -> int:
        check_identifier(table, "table")
        with self._client() as client:
            return int(self._require_table(client, table).num_rows or 0)

    def drop_table(self, table: str) -> None:
        check_identifier(table, "table")
        with self._client() as client:
            try:
                client.delete_table(self._ref(client, table), not_found_ok=True)
            except google_exceptions.GoogleAPICallError as err:
                raise self._translate(err, f"drop {self._full_name(client, table)}", table) from None

    def ensure_dataset(self) -> bool:
        """Create the dataset (in the configured location) when it is missing; whether it was."""
        with self._client() as client:
            try:
                client.get_dataset(f"{client.project}.{self.dataset}")
                missing = False
            except google_exceptions.NotFound:
                missing = True
            self._ensure_dataset(client)
        return missing

    def delete_dataset(self) -> None:
        """Delete the whole dataset with its tables and models (datasets.delete with
        deleteContents); a missing dataset is no error."""
        with self._client() as client:
            try:
                client.delete_dataset(
                    f"{client.project}.{self.dataset}", delete_contents=True, not_found_ok=True
                )
            except google_exceptions.GoogleAPICallError as err:
                raise self._translate(err, f"delete dataset {client.project}.{self.dataset}", None) from None

    def describe(self) -> str:
        project = self.bigquery.project or "<default project>"
        where = f"BigQuery dataset {project}.{self.dataset} (location {self._location()})"
        if self.bigquery.api_endpoint:
            where += f" via {self.bigquery.api_endpoint}"
        return where

    def table_url(self, table: str) -> str | None:
        check_identifier(table, "table")
        project = self.bigquery.project
        if not project:
            return None
        return (
            f"https://console.cloud.google.com/bigquery?project={project}"
            f"&ws=!1m5!1m4!4m3!1s{project}!2s{self.dataset}!3s{table}"
        )

    def list_models(self) -> list[tuple[str, dt.datetime]]:
        """BigQuery ``models.list`` of the dataset (a missing dataset has none)."""
        with self._client() as client:
            try:
                found = list(client.list_models(f"{client.project}.{self.dataset}"))
            except google_exceptions.NotFound:
                return []
            except google_exceptions.GoogleAPICallError as err:
                raise self._translate(
                    err, f"list the models of {client.project}.{self.dataset}", None
                ) from None
        return [(m.model_id, _utc(m.created)) for m in found]

    def model_source(self, model: str) -> str:

        return bqml_source(self.dataset, check_identifier(model, "model"))

    def model_url(self, model: str) -> str | None:
        check_identifier(model, "model")
        project = self.bigquery.project
        if not project:
            return None
        # The console's explorer link for a model (resource type 5 = model).
        return (
            f"https://console.cloud.google.com/bigquery?project={project}"
            f"&ws=!1m5!1m4!5m3!1s{project}!2s{self.dataset}!3s{model}"
        )


def _utc(value: dt.datetime | None) -> dt.datetime:
    if value is None:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def build_gcp_warehouse(settings: "Settings") -> GcpWarehouse:
    """The gcp warehouse for these settings (project, dataset, location, endpoint, credentials)."""
    if not settings.gcp_project:
        raise WarehouseError(
            "The gcp backend needs a Google Cloud project: set LAKEHOUSE_ML_GCP_PROJECT "
            "(example: LAKEHOUSE_ML_GCP_PROJECT=my-analytics-project)."
        )
    return GcpWarehouse(
        bigquery=LakehouseBigQueryResource(
            project=settings.gcp_project,
            location=settings.bigquery_location,
            api_endpoint=settings.bigquery_api_endpoint,
            anonymous_credentials=settings.gcp_anonymous_credentials,
        ),
        dataset=settings.gcp_dataset,
    )
