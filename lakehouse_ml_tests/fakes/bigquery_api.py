"""A local HTTP test double of the BigQuery REST API v2, for wire-level tests of the gcp backend.

The real ``google-cloud-bigquery`` client talks to it unchanged (``client_options={"api_endpoint":
server.url}`` and ``AnonymousCredentials``). It answers in the documented REST shapes
(https://cloud.google.com/bigquery/docs/reference/rest) and really executes what it is sent:

* tables live in an in-memory DuckDB database: a BigQuery project is an attached DuckDB catalog, a
  dataset a schema, so ``project.dataset.table`` maps one to one;
* query text is parsed as BigQuery SQL with sqlglot, table references are resolved against the
  job's project and ``defaultDataset`` (a missing table or dataset answers ``notFound`` in
  BigQuery's words), named parameters are bound from ``queryParameters`` with their declared
  types, and the statements run as DuckDB SQL (``sqlglot`` ``read="bigquery"``, ``write="duckdb"``,
  plus BigQuery's meaning where sqlglot's text would differ: ``DAYOFWEEK`` 1-7, ``COUNTIF`` over no
  rows, ``DATE_ADD`` returning a DATE, ``TIMESTAMP_DIFF`` counting whole units);
* query jobs honour ``destinationTable`` with ``writeDisposition`` / ``createDisposition``,
  ``timePartitioning`` (kept as table metadata and checked like BigQuery does), partition
  decorators (``table$YYYYMMDD``), and multi-statement scripts with child jobs and
  ``BEGIN TRANSACTION`` / ``COMMIT TRANSACTION`` / ``ROLLBACK TRANSACTION`` (a failing statement
  rolls the transaction back, as BigQuery does);
* load jobs arrive through the media upload endpoint (multipart and resumable) as Parquet;
* result schemas use the type names the REST API returns (``INTEGER``, ``FLOAT``, ``BOOLEAN``,
  ``STRING``, ``DATE``, ``DATETIME``, ``TIMESTAMP``, ``NUMERIC``, ``RECORD`` …) and rows come in
  the ``{"f": [{"v": ...}]}`` form, paged with ``pageToken``.

Every request is recorded (:attr:`FakeBigQueryApi.requests`) with its method, path, query string,
JSON body and the answer, so tests can assert on exactly what the client sent.

BigQuery ML runs on the project's local BigQuery ML engine (no other offline BigQuery ML exists),
one model folder per dataset; ``models.get``, ``models.list`` and ``models.delete`` answer the REST
``Model`` resource (``featureColumns``: "If the model is trained with TRANSFORM clause, these are
the input of the TRANSFORM clause"; ``trainingRuns[].vertexAiModelId`` / ``vertexAiModelVersion``).
With a Vertex AI double attached (``FakeVertexApi(bigquery=this)``), ``MODEL_REGISTRY='VERTEX_AI'``
registers each new model as a version there, and CREATE OR REPLACE or DROP of a registered model
deletes its version, refused with BigQuery's FAILED_PRECONDITION while it is deployed ("Manage
BigQuery ML models in Vertex AI"; the text of GoogleCloudPlatform/vertex-ai-samples PR #788).
Plain SQL goes through sqlglot with this double's own fixes for the meanings DuckDB gives
otherwise (:func:`_bigquery_meaning`), not through the project's translator, so that a test can
compare the project's local translation with what the double computes.

Jobs run synchronously inside ``jobs.insert``: the returned job is already ``DONE``, which the
REST contract allows. What it cannot run (BigQuery ML, scripting variables, legacy SQL, Cloud
Storage URIs) fails with a 400 that says so, never with a silent success.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime as dt
import decimal
import io
import json
import math
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
import uvicorn
from sqlglot import exp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lakehouse_ml.bigquery.dialect import (
    AlterModel,
    CreateModel,
    DropModel,
    mentions_bigquery_ml,
    parse_model_name,
    parse_model_statement,
)
from lakehouse_ml.core.errors import WarehouseError
from lakehouse_ml.engine.engine import BqmlEngine
from lakehouse_ml.engine.sql import BqmlSession

API_PREFIX = "/bigquery/v2"
UPLOAD_PREFIX = "/upload/bigquery/v2"

_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
}
# The reason codes of https://cloud.google.com/bigquery/docs/error-messages and their HTTP codes.
_REASON_CODE = {
    "invalid": 400,
    "invalidQuery": 400,
    "notFound": 404,
    "duplicate": 409,
    "accessDenied": 403,
    "conditionNotMet": 412,
    "internalError": 500,
    "notImplemented": 501,
}

# Legacy type names (what the REST API returns) <-> GoogleSQL names.
_LEGACY_TO_STANDARD = {
    "INTEGER": "INT64",
    "FLOAT": "FLOAT64",
    "BOOLEAN": "BOOL",
    "RECORD": "STRUCT",
}
_STANDARD_TO_DUCKDB = {
    "INT64": "BIGINT",
    "FLOAT64": "DOUBLE",
    "BOOL": "BOOLEAN",
    "STRING": "VARCHAR",
    "BYTES": "BLOB",
    "DATE": "DATE",
    "DATETIME": "TIMESTAMP",
    "TIMESTAMP": "TIMESTAMPTZ",
    "TIME": "TIME",
    "NUMERIC": "DECIMAL(38, 9)",
    "BIGNUMERIC": "DECIMAL(38, 9)",
    "JSON": "VARCHAR",
}
_STANDARD_TO_ARROW = {
    "INT64": pa.int64(),
    "FLOAT64": pa.float64(),
    "BOOL": pa.bool_(),
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "DATE": pa.date32(),
    "DATETIME": pa.timestamp("us"),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "TIME": pa.time64("us"),
    "NUMERIC": pa.decimal128(38, 9),
    "BIGNUMERIC": pa.decimal128(38, 9),
    "JSON": pa.string(),
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _now_ms() -> str:
    return str(int(time.time() * 1000))


def _q(name: str) -> str:
    """Quote a DuckDB identifier (only for names the double itself assembles)."""
    return '"' + name.replace('"', '""') + '"'


def _standard(type_name: str) -> str:
    upper = type_name.upper()
    return _LEGACY_TO_STANDARD.get(upper, upper)


class BigQueryApiError(Exception):
    """An error answered in BigQuery's shape (and used as a job's ``errorResult``)."""

    def __init__(self, reason: str, message: str, location: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.location = location
        self.code = _REASON_CODE.get(reason, 400)

    def error_proto(self) -> dict[str, Any]:
        proto = {"reason": self.reason, "message": self.message}
        if self.location:
            proto["location"] = self.location
        return proto

    def body(self) -> dict[str, Any]:
        detail = {"message": self.message, "domain": "global", "reason": self.reason}
        if self.location:
            detail["location"] = self.location
            detail["locationType"] = "other"
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [detail],
                "status": _HTTP_STATUS.get(self.code, "UNKNOWN"),
            }
        }


def _invalid_query(message: str) -> BigQueryApiError:
    return BigQueryApiError("invalidQuery", message, location="query")


@dataclass
class RecordedRequest:
    """One HTTP request the double received, and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    query_string: str
    json: Any
    headers: dict[str, str]
    body_size: int
    status: int | None = None
    response: Any = None


@dataclass
class _Job:
    project: str
    job_id: str
    location: str | None
    configuration: dict[str, Any]
    created_ms: str = field(default_factory=_now_ms)
    ended_ms: str | None = None
    error: BigQueryApiError | None = None
    statement_type: str | None = None
    result: pa.Table | None = None
    num_dml_affected_rows: int | None = None
    output_rows: int | None = None
    input_bytes: int | None = None
    parent_job_id: str | None = None
    child_job_ids: list[str] = field(default_factory=list)
    cancelled: bool = False

    @property
    def job_type(self) -> str:
        for kind in ("query", "load", "copy", "extract"):
            if kind in self.configuration:
                return kind.upper()
        return "UNKNOWN"

    def reference(self) -> dict[str, Any]:
        ref = {"projectId": self.project, "jobId": self.job_id}
        if self.location:
            ref["location"] = self.location
        return ref


@dataclass
class _QueryContext:
    project: str
    default_dataset: tuple[str, str] | None
    params: dict[str, tuple[str, Any]]
    location: str | None


@dataclass
class _StatementResult:
    statement_type: str
    table: pa.Table | None = None
    dml_rows: int | None = None


# ---------------------------------------------------------------------------------------------
# Types and values
# ---------------------------------------------------------------------------------------------


def _normalize_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type that holds a BigQuery value of the column (DuckDB's result → BigQuery's)."""
    if pa.types.is_null(t):
        return pa.int64()  # BigQuery types an untyped NULL as INT64
    if pa.types.is_boolean(t):
        return t
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_decimal(t):
        # DuckDB sums integers into HUGEINT, exported as DECIMAL(38, 0): BigQuery says INT64.
        return pa.int64() if t.scale == 0 else pa.decimal128(38, 9)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return pa.string()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return pa.binary()
    if pa.types.is_date(t):
        return pa.date32()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC") if t.tz else pa.timestamp("us")
    if pa.types.is_time(t):
        return pa.time64("us")
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(_normalize_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _normalize_type(f.type)) for f in t])
    if pa.types.is_dictionary(t):
        return _normalize_type(t.value_type)
    raise BigQueryApiError("invalid", f"The BigQuery test double cannot represent the Arrow type {t}.")


def _normalize_table(table: pa.Table) -> pa.Table:
    fields = [pa.field(f.name, _normalize_type(f.type)) for f in table.schema]
    target = pa.schema(fields)
    if target.equals(table.schema):
        return table
    columns = [col.cast(f.type) for col, f in zip(table.columns, fields)]
    return pa.Table.from_arrays(columns, schema=target)


def _bq_field(name: str, t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_list(t):
        inner = _bq_field(name, t.value_type)
        inner["mode"] = "REPEATED"
        return inner
    if pa.types.is_struct(t):
        return {
            "name": name,
            "type": "RECORD",
            "mode": "NULLABLE",
            "fields": [_bq_field(f.name, f.type) for f in t],
        }
    if pa.types.is_boolean(t):
        type_name = "BOOLEAN"
    elif pa.types.is_integer(t):
        type_name = "INTEGER"
    elif pa.types.is_floating(t):
        type_name = "FLOAT"
    elif pa.types.is_decimal(t):
        type_name = "NUMERIC"
    elif pa.types.is_string(t):
        type_name = "STRING"
    elif pa.types.is_binary(t):
        type_name = "BYTES"
    elif pa.types.is_date(t):
        type_name = "DATE"
    elif pa.types.is_timestamp(t):
        type_name = "TIMESTAMP" if t.tz else "DATETIME"
    elif pa.types.is_time(t):
        type_name = "TIME"
    else:  # pragma: no cover - _normalize_type refuses the rest
        raise BigQueryApiError("invalid", f"No BigQuery type for Arrow type {t}.")
    return {"name": name, "type": type_name, "mode": "NULLABLE"}


def _bq_schema(schema: pa.Schema) -> dict[str, Any]:
    return {"fields": [_bq_field(f.name, f.type) for f in schema]}


def _arrow_type_for_field(f: dict[str, Any]) -> pa.DataType:
    type_name = _standard(f.get("type", "STRING"))
    if type_name == "STRUCT":
        t: pa.DataType = pa.struct(
            [pa.field(sub["name"], _arrow_type_for_field(sub)) for sub in f.get("fields", [])]
        )
    elif type_name in _STANDARD_TO_ARROW:
        t = _STANDARD_TO_ARROW[type_name]
    else:
        raise BigQueryApiError(
            "invalid", f"The BigQuery test double does not support the field type {type_name}."
        )
    if f.get("mode", "NULLABLE").upper() == "REPEATED":
        t = pa.list_(t)
    return t


def _duckdb_type_for_field(f: dict[str, Any]) -> str:
    type_name = _standard(f.get("type", "STRING"))
    if type_name == "STRUCT":
        inner = ", ".join(f"{_q(sub['name'])} {_duckdb_type_for_field(sub)}" for sub in f.get("fields", []))
        t = f"STRUCT({inner})"
    elif type_name in _STANDARD_TO_DUCKDB:
        t = _STANDARD_TO_DUCKDB[type_name]
    else:
        raise BigQueryApiError(
            "invalid", f"The BigQuery test double does not support the field type {type_name}."
        )
    if f.get("mode", "NULLABLE").upper() == "REPEATED":
        t += "[]"
    return t


def _json_value(value: Any, f: dict[str, Any], int64_timestamp: bool) -> Any:
    """A cell value in the REST form: every scalar is a string, arrays and records nest."""
    if value is None:
        return None
    if f.get("mode") == "REPEATED":
        scalar_field = {**f, "mode": "NULLABLE"}
        return [{"v": _json_value(v, scalar_field, int64_timestamp)} for v in value]
    type_name = f["type"]
    if type_name == "RECORD":
        return {
            "f": [{"v": _json_value(value.get(sub["name"]), sub, int64_timestamp)} for sub in f["fields"]]
        }
    if type_name == "BOOLEAN":
        return "true" if value else "false"
    if type_name == "FLOAT":
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(float(value))
    if type_name in ("INTEGER", "NUMERIC", "BIGNUMERIC", "STRING"):
        return str(value)
    if type_name == "BYTES":
        return base64.b64encode(value).decode("ascii")
    if type_name == "DATE":
        return value.isoformat()
    if type_name == "DATETIME":
        return value.isoformat()
    if type_name == "TIME":
        return value.isoformat()
    if type_name == "TIMESTAMP":
        micros = (value - _EPOCH) // dt.timedelta(microseconds=1)
        return str(micros) if int64_timestamp else f"{micros / 1_000_000:.6f}"
    raise BigQueryApiError("invalid", f"Cannot serialize a value of type {type_name}.")


def _json_rows(table: pa.Table, fields: list[dict[str, Any]], int64_timestamp: bool) -> list[dict[str, Any]]:
    columns = [col.to_pylist() for col in table.columns]
    return [
        {"f": [{"v": _json_value(values[i], f, int64_timestamp)} for values, f in zip(columns, fields)]}
        for i in range(table.num_rows)
    ]


def _parse_scalar(type_name: str, value: Any) -> Any:
    if value is None:
        return None
    if type_name == "INT64":
        return int(value)
    if type_name == "FLOAT64":
        return float(value)
    if type_name == "BOOL":
        return str(value).lower() == "true"
    if type_name in ("STRING", "JSON"):
        return str(value)
    if type_name in ("NUMERIC", "BIGNUMERIC"):
        return decimal.Decimal(value)
    if type_name == "BYTES":
        return base64.b64decode(value)
    if type_name == "DATE":
        return dt.date.fromisoformat(value)
    if type_name == "DATETIME":
        return dt.datetime.fromisoformat(value.replace(" ", "T"))
    if type_name == "TIMESTAMP":
        text = value.replace(" ", "T")
        if text.endswith(("Z", "UTC")):
            text = text.removesuffix("UTC").removesuffix("Z") + "+00:00"
        parsed = dt.datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return parsed
    if type_name == "TIME":
        return dt.time.fromisoformat(value)
    raise BigQueryApiError(
        "invalid", f"The BigQuery test double does not support query parameters of type {type_name}."
    )


def _parse_parameters(parameters: list[dict[str, Any]], mode: str | None) -> dict[str, tuple[str, Any]]:
    """``queryParameters`` → ``{name: (GoogleSQL type, Python value)}``."""
    if parameters and (mode or "NAMED").upper() != "NAMED":
        raise BigQueryApiError("invalid", "The BigQuery test double supports named query parameters only.")
    parsed: dict[str, tuple[str, Any]] = {}
    for param in parameters:
        name = param.get("name")
        if not name:
            raise BigQueryApiError("invalid", "Query parameter is missing its name (parameterMode NAMED).")
        ptype = param.get("parameterType") or {}
        pvalue = param.get("parameterValue") or {}
        type_name = _standard(ptype.get("type", ""))
        if type_name == "ARRAY":
            element = _standard((ptype.get("arrayType") or {}).get("type", ""))
            if element in ("ARRAY", "STRUCT"):
                raise BigQueryApiError(
                    "invalid",
                    f"Query parameter {name}: nested ARRAY/STRUCT types are not supported "
                    "by the test double.",
                )
            values = [_parse_scalar(element, v.get("value")) for v in pvalue.get("arrayValues", [])]
            parsed[name] = (f"ARRAY<{element}>", values)
        elif type_name == "STRUCT":
            raise BigQueryApiError(
                "invalid", f"Query parameter {name}: STRUCT parameters are not supported by the test double."
            )
        else:
            parsed[name] = (type_name, _parse_scalar(type_name, pvalue.get("value")))
    return parsed


def _duckdb_param_type(type_name: str) -> str:
    if type_name.startswith("ARRAY<"):
        return _STANDARD_TO_DUCKDB[type_name[6:-1]] + "[]"
    return _STANDARD_TO_DUCKDB[type_name]


def _table_parts(table_id: str) -> tuple[str, str | None]:
    """``'t$20260301'`` → ``('t', '20260301')``."""
    name, _, decorator = table_id.partition("$")
    return name, (decorator or None)


def _partition_spec(spec: dict[str, Any] | None) -> str:
    if not spec:
        return "none"
    return f"interval(type:{spec.get('type', 'DAY').lower()},field:{spec.get('field') or '_PARTITIONTIME'})"


def _statement_type(stmt: exp.Expression) -> str:
    if isinstance(stmt, exp.Query):
        return "SELECT"
    simple = {
        exp.Insert: "INSERT",
        exp.Delete: "DELETE",
        exp.Update: "UPDATE",
        exp.Merge: "MERGE",
        exp.Transaction: "BEGIN_TRANSACTION",
        exp.Commit: "COMMIT_TRANSACTION",
        exp.Rollback: "ROLLBACK_TRANSACTION",
        exp.TruncateTable: "TRUNCATE_TABLE",
    }
    for kind, name in simple.items():
        if isinstance(stmt, kind):
            return name
    if isinstance(stmt, exp.Create):
        kind = (stmt.args.get("kind") or "").upper()
        if kind == "TABLE":
            return "CREATE_TABLE_AS_SELECT" if stmt.expression else "CREATE_TABLE"
        if kind == "VIEW":
            return "CREATE_VIEW"
        if kind == "SCHEMA":
            return "CREATE_SCHEMA"
        return f"CREATE_{kind or 'UNKNOWN'}"
    if isinstance(stmt, exp.Drop):
        kind = (stmt.args.get("kind") or "").upper()
        return f"DROP_{kind or 'UNKNOWN'}"
    if isinstance(stmt, exp.Alter):
        return "ALTER_TABLE"
    if isinstance(stmt, exp.Command):
        return str(stmt.this).upper()
    return type(stmt).__name__.upper()


_SUPPORTED_STATEMENTS = {
    "SELECT",
    "INSERT",
    "DELETE",
    "UPDATE",
    "MERGE",
    "TRUNCATE_TABLE",
    "CREATE_TABLE",
    "CREATE_TABLE_AS_SELECT",
    "CREATE_VIEW",
    "DROP_TABLE",
    "DROP_VIEW",
    "BEGIN_TRANSACTION",
    "COMMIT_TRANSACTION",
    "ROLLBACK_TRANSACTION",
}
_DML = {"INSERT", "DELETE", "UPDATE", "MERGE"}


def _duckdb_error_message(err: duckdb.Error) -> str:
    text = str(err).strip()
    match = re.search(r'Referenced column "([^"]+)" not found', text)
    if match:
        return f"Unrecognized name: {match.group(1)}"
    for prefix in (
        "Invalid Input Error: ",
        "Binder Error: ",
        "Conversion Error: ",
        "Catalog Error: ",
        "Constraint Error: ",
        "Out of Range Error: ",
        "Not implemented Error: ",
        "TransactionContext Error: ",
    ):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if text.startswith("Parser Error: "):
        return "The BigQuery test double could not run the translated SQL: " + text
    return text.splitlines()[0] if text else "Query error"


# ---------------------------------------------------------------------------------------------
# The storage and execution engine
# ---------------------------------------------------------------------------------------------


def _bigquery_meaning(stmt: exp.Expression) -> exp.Expression:
    """Where sqlglot's DuckDB text of a BigQuery function means something else in DuckDB, the
    BigQuery meaning (written here from BigQuery's function reference, independently of the
    project's translator):

    * ``EXTRACT(DAYOFWEEK …)``: "Returns values in the range [1,7] with Sunday as the first day of
      the week" — from DuckDB's ISO day of week (Monday 1 … Sunday 7) as ``ISODOW % 7 + 1``;
    * ``COUNTIF``: a count, 0 over no rows (DuckDB's ``count_if`` is NULL there);
    * ``DATE_ADD`` / ``DATE_SUB`` of a DATE: a DATE (DuckDB's date ± interval is a TIMESTAMP);
    * ``TIMESTAMP_DIFF``: "the number of whole specified date_part intervals between two
      timestamps" — DuckDB's ``date_sub`` counts whole units, its ``date_diff`` boundaries."""
    kinds = (exp.Extract, exp.CountIf, exp.DateAdd, exp.DateSub, exp.TimestampDiff)
    for node in reversed([n for n in stmt.walk(bfs=False) if isinstance(n, kinds)]):  # innermost first
        new: exp.Expression | None = None
        if isinstance(node, exp.Extract) and node.this.name.upper() == "DAYOFWEEK":
            iso = exp.Extract(this=exp.var("ISODOW"), expression=node.expression.copy())
            new = exp.paren(
                exp.Add(
                    this=exp.Mod(this=iso, expression=exp.Literal.number(7)), expression=exp.Literal.number(1)
                )
            )
        elif isinstance(node, exp.CountIf):
            new = exp.Coalesce(this=node.copy(), expressions=[exp.Literal.number(0)])
        elif isinstance(node, (exp.DateAdd, exp.DateSub)) and not isinstance(node.parent, exp.Cast):
            new = exp.Cast(this=node.copy(), to=exp.DataType.build("DATE"))
        elif isinstance(node, exp.TimestampDiff):
            unit = (node.unit.name if node.unit else "DAY").upper()
            new = exp.Anonymous(
                this="DATE_SUB",
                expressions=[exp.Literal.string(unit), node.expression.copy(), node.this.copy()],
            )
        if new is not None:
            if node is stmt:
                return new
            node.replace(new)
    return stmt


# Where BigQuery ML models of a multi-region register in Vertex AI ("A BigQuery ML US multi-region
# model is synced to … us-central1 and a BigQuery ML multi-region EU model is synced to …
# europe-west4. For single region models, there are no changes.").
_VERTEX_REGION = {"US": "us-central1", "EU": "europe-west4"}


class _Engine:
    """Datasets, tables and jobs, kept in DuckDB and dictionaries. Every method holds the lock."""

    def __init__(self, location: str):
        self.location = location
        self.lock = threading.RLock()
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'").fetchall()
        self.projects: set[str] = set()
        self.datasets: dict[tuple[str, str], dict[str, Any]] = {}
        self.table_meta: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], _Job] = {}
        self.job_order: list[tuple[str, str]] = []
        # BigQuery ML: the project's local engine stands in for BigQuery's (models live in a
        # temporary folder for the life of the double, one folder per dataset).
        self.models_dir = tempfile.mkdtemp(prefix="fake-bigquery-models-")
        self.vertex: Any = None  # a FakeVertexApi that BigQuery ML registers models in

    def close(self) -> None:
        with self.lock:
            self.con.close()
        shutil.rmtree(self.models_dir, ignore_errors=True)

    def _exec(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one DuckDB statement and consume its result (DuckDB wants every result fetched)."""
        cursor = self.con.execute(sql, params) if params is not None else self.con.execute(sql)
        return cursor.fetchall()

    def _arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self.con.sql(sql, params=params or None).to_arrow_table()

    # -- catalog ---------------------------------------------------------------------------
    def _attach_project(self, project: str) -> None:
        if project not in self.projects:
            self._exec(f"ATTACH ':memory:' AS {_q(project)}")
            self.projects.add(project)

    def dataset_resource(self, project: str, dataset: str) -> dict[str, Any]:
        meta = self.datasets.get((project, dataset))
        if meta is None:
            raise BigQueryApiError("notFound", f"Not found: Dataset {project}:{dataset}")
        return meta

    def create_dataset(
        self, project: str, dataset: str, body: dict[str, Any], base_url: str
    ) -> dict[str, Any]:
        with self.lock:
            if (project, dataset) in self.datasets:
                raise BigQueryApiError("duplicate", f"Already Exists: Dataset {project}:{dataset}")
            if not re.fullmatch(r"[A-Za-z0-9_]{1,1024}", dataset):
                raise BigQueryApiError(
                    "invalid",
                    f'Invalid dataset ID "{dataset}". Dataset IDs must be alphanumeric (plus underscores) '
                    "and must be at most 1024 characters long.",
                )
            self._attach_project(project)
            self._exec(f"CREATE SCHEMA {_q(project)}.{_q(dataset)}")
            now = _now_ms()
            resource = {
                "kind": "bigquery#dataset",
                "etag": uuid.uuid4().hex,
                "id": f"{project}:{dataset}",
                "selfLink": f"{base_url}{API_PREFIX}/projects/{project}/datasets/{dataset}",
                "datasetReference": {"projectId": project, "datasetId": dataset},
                "location": body.get("location") or self.location,
                "creationTime": now,
                "lastModifiedTime": now,
                "type": "DEFAULT",
            }
            for key in ("description", "friendlyName", "labels", "defaultTableExpirationMs"):
                if key in body:
                    resource[key] = body[key]
            self.datasets[(project, dataset)] = resource
            return resource

    def delete_dataset(self, project: str, dataset: str, delete_contents: bool) -> None:
        with self.lock:
            self.dataset_resource(project, dataset)
            tables = self.list_table_names(project, dataset)
            if tables and not delete_contents:
                raise BigQueryApiError("resourceInUse", f"Dataset {project}:{dataset} is still in use")
            self._exec(f"DROP SCHEMA {_q(project)}.{_q(dataset)} CASCADE")
            del self.datasets[(project, dataset)]
            for key in [k for k in self.table_meta if k[:2] == (project, dataset)]:
                del self.table_meta[key]

    def list_table_names(self, project: str, dataset: str) -> list[str]:
        rows = self._exec(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
            "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = ? AND schema_name = ? "
            "AND NOT internal ORDER BY 1",
            [project, dataset, project, dataset],
        )
        names = [r[0] for r in rows]
        return [n for n in names if self.table_exists(project, dataset, n)]

    def _relation_kind(self, project: str, dataset: str, table: str) -> str | None:
        if project not in self.projects:
            return None
        row = (
            self._exec(
                "SELECT 'TABLE' FROM duckdb_tables() "
                "WHERE database_name = ? AND schema_name = ? AND table_name = ? "
                "UNION ALL SELECT 'VIEW' FROM duckdb_views() WHERE database_name = ? AND schema_name = ? "
                "AND view_name = ? AND NOT internal",
                [project, dataset, table, project, dataset, table],
            )
            or [None]
        )[0]
        return row[0] if row else None

    def table_exists(self, project: str, dataset: str, table: str) -> bool:
        kind = self._relation_kind(project, dataset, table)
        if kind is None:
            self.table_meta.pop((project, dataset, table), None)
            return False
        meta = self.table_meta.get((project, dataset, table))
        expires = meta.get("expirationTime") if meta else None
        if expires is not None and int(expires) <= int(_now_ms()):
            # BigQuery deletes expired tables; so does the double, when it next looks.
            self._exec(f"DROP {kind} {self._qualified(project, dataset, table)}")
            self.table_meta.pop((project, dataset, table), None)
            return False
        return True

    def _qualified(self, project: str, dataset: str, table: str) -> str:
        return f"{_q(project)}.{_q(dataset)}.{_q(table)}"

    def _meta(self, project: str, dataset: str, table: str) -> dict[str, Any]:
        key = (project, dataset, table)
        if key not in self.table_meta:
            now = _now_ms()
            self.table_meta[key] = {"creationTime": now, "lastModifiedTime": now}
        return self.table_meta[key]

    def _touch(self, project: str, dataset: str, table: str) -> None:
        self._meta(project, dataset, table)["lastModifiedTime"] = _now_ms()

    def table_resource(self, project: str, dataset: str, table: str, base_url: str) -> dict[str, Any]:
        with self.lock:
            ds = self.dataset_resource(project, dataset)
            if not self.table_exists(project, dataset, table):
                raise BigQueryApiError("notFound", f"Not found: Table {project}:{dataset}.{table}")
            kind = self._relation_kind(project, dataset, table)
            qualified = self._qualified(project, dataset, table)
            schema = _normalize_table(self._arrow(f"SELECT * FROM {qualified} LIMIT 0")).schema
            num_rows = self._exec(f"SELECT COUNT(*) FROM {qualified}")[0][0]
            meta = self._meta(project, dataset, table)
            resource: dict[str, Any] = {
                "kind": "bigquery#table",
                "etag": uuid.uuid5(uuid.NAMESPACE_URL, f"{qualified}@{meta['lastModifiedTime']}").hex,
                "id": f"{project}:{dataset}.{table}",
                "selfLink": f"{base_url}{API_PREFIX}/projects/{project}/datasets/{dataset}/tables/{table}",
                "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
                "schema": _bq_schema(schema),
                "numBytes": "0",
                "numLongTermBytes": "0",
                "numRows": str(num_rows) if kind == "TABLE" else "0",
                "creationTime": meta["creationTime"],
                "lastModifiedTime": meta["lastModifiedTime"],
                "type": kind,
                "location": ds["location"],
            }
            for key in (
                "timePartitioning",
                "clustering",
                "expirationTime",
                "description",
                "friendlyName",
                "labels",
            ):
                if meta.get(key) is not None:
                    resource[key] = meta[key]
            return resource

    def create_table(self, project: str, dataset: str, body: dict[str, Any], base_url: str) -> dict[str, Any]:
        with self.lock:
            self.dataset_resource(project, dataset)
            table = (body.get("tableReference") or {}).get("tableId")
            if not table or not re.fullmatch(r"[\w-]{1,1024}", table):
                raise BigQueryApiError("invalid", f'Invalid table ID "{table}".')
            if self.table_exists(project, dataset, table):
                raise BigQueryApiError("duplicate", f"Already Exists: Table {project}:{dataset}.{table}")
            fields = (body.get("schema") or {}).get("fields") or []
            if "view" in body:
                raise BigQueryApiError(
                    "invalid", "The BigQuery test double creates views with CREATE VIEW only."
                )
            if not fields:
                raise BigQueryApiError(
                    "invalid", "The BigQuery test double needs a schema to create a table."
                )
            columns = ", ".join(f"{_q(f['name'])} {_duckdb_type_for_field(f)}" for f in fields)
            self._exec(f"CREATE TABLE {self._qualified(project, dataset, table)} ({columns})")
            self.table_meta.pop((project, dataset, table), None)
            meta = self._meta(project, dataset, table)
            for key in (
                "timePartitioning",
                "clustering",
                "expirationTime",
                "description",
                "friendlyName",
                "labels",
            ):
                if key in body:
                    meta[key] = body[key]
            return self.table_resource(project, dataset, table, base_url)

    def patch_table(
        self, project: str, dataset: str, table: str, body: dict[str, Any], base_url: str
    ) -> dict[str, Any]:
        with self.lock:
            self.table_resource(project, dataset, table, base_url)  # 404 when missing
            meta = self._meta(project, dataset, table)
            if "schema" in body:
                raise BigQueryApiError("invalid", "The BigQuery test double does not patch schemas.")
            for key in ("expirationTime", "description", "friendlyName", "labels"):
                if key in body:
                    meta[key] = body[key]
            meta["lastModifiedTime"] = _now_ms()
            return self.table_resource(project, dataset, table, base_url)

    def delete_table(self, project: str, dataset: str, table: str) -> None:
        with self.lock:
            self.dataset_resource(project, dataset)
            if not self.table_exists(project, dataset, table):
                raise BigQueryApiError("notFound", f"Not found: Table {project}:{dataset}.{table}")
            kind = self._relation_kind(project, dataset, table)
            self._exec(f"DROP {kind} {self._qualified(project, dataset, table)}")
            self.table_meta.pop((project, dataset, table), None)

    def table_arrow(self, project: str, dataset: str, table: str) -> pa.Table:
        with self.lock:
            self.dataset_resource(project, dataset)
            if not self.table_exists(project, dataset, table):
                raise BigQueryApiError("notFound", f"Not found: Table {project}:{dataset}.{table}")
            return _normalize_table(self._arrow(f"SELECT * FROM {self._qualified(project, dataset, table)}"))

    # -- jobs ------------------------------------------------------------------------------
    def add_job(self, job: _Job) -> None:
        key = (job.project, job.job_id)
        if key in self.jobs:
            raise BigQueryApiError(
                "duplicate", f"Already Exists: Job {job.project}:{job.location or self.location}.{job.job_id}"
            )
        self.jobs[key] = job
        self.job_order.append(key)

    def get_job(self, project: str, job_id: str, location: str | None = None) -> _Job:
        job = self.jobs.get((project, job_id))
        if job is None:
            raise BigQueryApiError(
                "notFound", f"Not found: Job {project}:{location or self.location}.{job_id}"
            )
        return job

    def run_query_job(self, job: _Job) -> None:
        with self.lock:
            try:
                self._run_query(job)
            except BigQueryApiError as err:
                job.error = err
            job.ended_ms = _now_ms()

    def run_load_job(self, job: _Job, data: bytes) -> None:
        with self.lock:
            try:
                self._run_load(job, data)
            except BigQueryApiError as err:
                job.error = err
            job.ended_ms = _now_ms()

    def _run_query(self, job: _Job) -> None:
        cfg = job.configuration["query"]
        if cfg.get("useLegacySql", True):
            raise _invalid_query("The BigQuery test double runs GoogleSQL only: set useLegacySql to false.")
        default = cfg.get("defaultDataset")
        ctx = _QueryContext(
            project=job.project,
            default_dataset=(
                (default.get("projectId") or job.project, default["datasetId"]) if default else None
            ),
            params=_parse_parameters(cfg.get("queryParameters") or [], cfg.get("parameterMode")),
            location=job.location,
        )
        text = cfg.get("query") or ""
        if mentions_bigquery_ml(text):
            self._run_bigquery_ml(job, text, ctx, cfg.get("destinationTable"))
            return
        try:
            statements = [s for s in sqlglot.parse(text, read="bigquery") if s is not None]
        except sqlglot.errors.ParseError as err:
            first = err.errors[0] if err.errors else {}
            raise _invalid_query(
                f"Syntax error: {first.get('description', str(err))} "
                f"at [{first.get('line', 1)}:{first.get('col', 1)}]"
            ) from None
        if not statements:
            raise _invalid_query("Syntax error: Unexpected end of script at [1:1]")
        destination = cfg.get("destinationTable")
        if len(statements) > 1:
            if destination:
                raise BigQueryApiError(
                    "invalid", "configuration.query.destinationTable cannot be set for scripts"
                )
            job.statement_type = "SCRIPT"
            last = self._run_script(job, statements, ctx)
            job.result = last.table
            return
        stmt = statements[0]
        kind = _statement_type(stmt)
        if kind in ("BEGIN_TRANSACTION", "COMMIT_TRANSACTION", "ROLLBACK_TRANSACTION"):
            raise _invalid_query("Transaction control statements are supported only in scripts or sessions")
        job.statement_type = kind
        if destination:
            if kind != "SELECT":
                raise BigQueryApiError(
                    "invalid", f"Cannot set destination table in jobs with {kind} statements"
                )
            result = self._execute(stmt, ctx, in_transaction=False)
            assert result.table is not None
            self.write_arrow(
                destination,
                result.table,
                write_disposition=cfg.get("writeDisposition") or "WRITE_EMPTY",
                create_disposition=cfg.get("createDisposition") or "CREATE_IF_NEEDED",
                partitioning=cfg.get("timePartitioning"),
                clustering=cfg.get("clustering"),
            )
            job.result = result.table
            return
        result = self._execute(stmt, ctx, in_transaction=False)
        job.result = result.table
        job.num_dml_affected_rows = result.dml_rows

    def bqml_engine(self, project: str, dataset: str) -> BqmlEngine:
        return BqmlEngine(Path(self.models_dir) / project / dataset, dataset=dataset)

    def _session_query(
        self, project: str, dataset: str, sql: str, tables: dict[str, pa.Table] | None = None
    ) -> pa.Table:
        """A BigQuery ML query on the dataset (the other services' view of a model)."""
        self._exec(f"USE {_q(project)}.{_q(dataset)}")
        registered = []
        try:
            for name, table in (tables or {}).items():
                self.con.register(name, table)
                registered.append(name)

            def run(statement, fetch_arrow: bool):
                return (
                    self._arrow(statement.duckdb_sql)
                    if fetch_arrow
                    else self.con.execute(statement.duckdb_sql)
                )

            with BqmlSession(self.con, self.bqml_engine(project, dataset), run, {}) as session:
                return session.run_script(sql)
        except WarehouseError as err:
            raise _invalid_query(str(err)) from None
        finally:
            for name in registered:
                self.con.unregister(name)

    def _vertex_location(self, project: str, dataset: str) -> str:
        location = self.datasets[(project, dataset)]["location"]
        return _VERTEX_REGION.get(location.upper(), location.lower())

    def _registry_before(self, project: str, dataset: str, statement: Any) -> Any:
        """Before a CREATE OR REPLACE / DROP of a registered model: BigQuery's refusal while its
        version is deployed; the version that will be deleted."""
        if self.vertex is None or not isinstance(statement, (CreateModel, DropModel)):
            return None
        name = statement.model.name
        if not self.bqml_engine(project, dataset).store.exists(name):
            return None
        if isinstance(statement, CreateModel) and not statement.replace:
            return None
        refusal = self.vertex.bqml_refusal(project, dataset, name)
        if refusal:
            raise BigQueryApiError("invalid", refusal)
        return self.vertex.bqml_version(project, dataset, name)

    def _registry_after(
        self, project: str, dataset: str, statement: Any, replaced: Any, existed: bool
    ) -> None:
        """After the statement: the new model registered (MODEL_REGISTRY='VERTEX_AI', or ALTER MODEL
        … SET OPTIONS(vertex_ai_model_id=…)), the replaced or dropped model's version deleted."""
        if self.vertex is None or statement is None:
            return
        name = statement.model.name
        options = {str(k).lower(): v for k, v in (getattr(statement, "options", None) or {}).items()}
        register = None
        if isinstance(statement, CreateModel) and not (statement.if_not_exists and existed):
            if str(options.get("model_registry", "")).upper() == "VERTEX_AI":
                register = options.get("vertex_ai_model_id") or name
        if isinstance(statement, AlterModel) and options.get("vertex_ai_model_id"):
            if self.vertex.bqml_version(project, dataset, name) is None:
                register = options["vertex_ai_model_id"]
        if register is not None:
            meta = self.bqml_engine(project, dataset).store.load_meta(name)
            aliases = options.get("vertex_ai_model_version_aliases") or []
            self.vertex.register_bqml(
                project,
                self._vertex_location(project, dataset),
                str(register),
                dataset=dataset,
                bq_model=name,
                model_type=meta["model_type"],
                aliases=list(aliases) if isinstance(statement, CreateModel) else [],
            )
        if replaced is not None and isinstance(statement, (CreateModel, DropModel)):
            self.vertex.delete_registered(*replaced)

    def _run_bigquery_ml(
        self, job: _Job, text: str, ctx: _QueryContext, destination: dict[str, Any] | None
    ) -> None:
        """CREATE/DROP/ALTER MODEL and ML.* calls, run by the project's local BigQuery ML engine on
        this double's tables (unqualified names resolve in the default dataset)."""
        if ctx.default_dataset is None:
            raise _invalid_query("The BigQuery test double runs BigQuery ML only with a default dataset.")
        project, dataset = ctx.default_dataset
        if (project, dataset) not in self.datasets:
            raise BigQueryApiError("notFound", f"Not found: Dataset {project}:{dataset}")
        self._exec(f"USE {_q(project)}.{_q(dataset)}")
        params = {name: value for name, (_type, value) in ctx.params.items()}
        try:
            statement = parse_model_statement(text, params)
        except WarehouseError as err:
            raise _invalid_query(str(err)) from None
        engine = self.bqml_engine(project, dataset)
        existed = statement is not None and engine.store.exists(statement.model.name)
        replaced = self._registry_before(project, dataset, statement)

        def run(statement, fetch_arrow: bool):
            values = {p: params[p] for p in statement.parameters if p in params}
            try:
                if fetch_arrow:
                    return self._arrow(statement.duckdb_sql, values)
                return (
                    self.con.execute(statement.duckdb_sql, values)
                    if values
                    else self.con.execute(statement.duckdb_sql)
                )
            except duckdb.Error as err:
                raise _invalid_query(_duckdb_error_message(err)) from None

        try:
            with BqmlSession(self.con, engine, run, params) as session:
                result = session.run_script(text)
        except WarehouseError as err:
            raise _invalid_query(str(err)) from None
        self._registry_after(project, dataset, statement, replaced, existed)
        job.statement_type = {
            CreateModel: "CREATE_MODEL",
            DropModel: "DROP_MODEL",
            AlterModel: "ALTER_MODEL",
        }.get(type(statement), "SELECT")
        job.result = _normalize_table(result) if result is not None else None
        if destination and job.result is not None:
            cfg = job.configuration["query"]
            self.write_arrow(
                destination,
                job.result,
                write_disposition=cfg.get("writeDisposition") or "WRITE_EMPTY",
                create_disposition=cfg.get("createDisposition") or "CREATE_IF_NEEDED",
                partitioning=cfg.get("timePartitioning"),
            )

    # -- models (what models.get answers, and what the Vertex AI double runs) ---------------------
    def model_resource(self, project: str, dataset: str, name: str) -> dict[str, Any]:
        """The REST ``Model`` resource of a BigQuery ML model (``notFound`` when missing)."""
        engine = self.bqml_engine(project, dataset)
        if (project, dataset) not in self.datasets or not engine.store.exists(name):
            raise BigQueryApiError("notFound", f"Not found: Model {project}:{dataset}.{name}")
        meta = engine.store.load_meta(name)
        prep = meta["preprocessing"]
        inputs = prep.get("info_features") or prep["features"]

        def columns(features: list[dict]) -> list[dict[str, Any]]:
            return [{"name": f["name"], "type": {"typeKind": f["bq_type"]}} for f in features]

        created = dt.datetime.fromisoformat(meta["creation_time"])
        created_ms = str(int(created.timestamp() * 1000))
        run: dict[str, Any] = {"startTime": created.isoformat().replace("+00:00", "Z"), "trainingOptions": {}}
        resource: dict[str, Any] = {
            "modelReference": {"projectId": project, "datasetId": dataset, "modelId": name},
            "modelType": meta["model_type"],
            "creationTime": created_ms,
            "lastModifiedTime": created_ms,
            "location": self.datasets[(project, dataset)]["location"],
            "featureColumns": columns(inputs),
            "trainingRuns": [run],
        }
        label = meta.get("label")
        if label:
            resource["labelColumns"] = [{"name": label["name"], "type": {"typeKind": label["bq_type"]}}]
        if meta.get("transform_sql"):
            resource["transformColumns"] = columns(prep["features"])
        found = self.vertex.bqml_version(project, dataset, name) if self.vertex is not None else None
        if found is not None:
            model, version = found
            run["trainingOptions"]["modelRegistry"] = "VERTEX_AI"
            run["vertexAiModelId"] = model.model_id
            run["vertexAiModelVersion"] = version.version_id
        return resource

    def model_names(self, project: str, dataset: str) -> list[str]:
        self.dataset_resource(project, dataset)
        return self.bqml_engine(project, dataset).store.names()

    def drop_model(self, project: str, dataset: str, name: str) -> None:
        """``models.delete``: as DROP MODEL (refused while its registry version is deployed)."""
        statement = DropModel(model=parse_model_name(name), if_exists=False)
        replaced = self._registry_before(project, dataset, statement)
        if not self.bqml_engine(project, dataset).store.drop(name):
            raise BigQueryApiError("notFound", f"Not found: Model {project}:{dataset}.{name}")
        self._registry_after(project, dataset, statement, replaced, True)

    def ml_predict(self, project: str, dataset: str, name: str, instances: pa.Table) -> pa.Table:
        with self.lock:
            table = f"__vertex_instances_{uuid.uuid4().hex}"
            return self._session_query(
                project, dataset, f"SELECT * FROM ML.PREDICT(MODEL {name}, TABLE {table})", {table: instances}
            )

    def kmeans_distances(
        self, project: str, dataset: str, name: str, instances: pa.Table
    ) -> list[list[float]]:
        """Every centroid's distance from each row, in centroid-id order. ML.PREDICT's
        NEAREST_CENTROIDS_DISTANCE holds the nearest min(num_clusters, 5): for up to five clusters
        that is every centroid, reordered here by id; beyond five the local engine's distances
        (after the model's TRANSFORM) stand in, the one place the double's values are the
        project's own."""
        with self.lock:
            engine = self.bqml_engine(project, dataset)
            meta = engine.store.load_meta(name)
            k = int(meta["options"]["num_clusters"])
            table = f"__vertex_instances_{uuid.uuid4().hex}"
            if k <= 5:
                rows = self._session_query(
                    project,
                    dataset,
                    f"SELECT * FROM ML.PREDICT(MODEL {name}, TABLE {table})",
                    {table: instances},
                )
                return [
                    [d["DISTANCE"] for d in sorted(near, key=lambda d: d["CENTROID_ID"])]
                    for near in rows.column("NEAREST_CENTROIDS_DISTANCE").to_pylist()
                ]
            rows = instances
            if meta.get("transform_sql"):
                rows = self._session_query(
                    project,
                    dataset,
                    f"SELECT * FROM ML.TRANSFORM(MODEL {name}, TABLE {table})",
                    {table: instances},
                )
            return engine.centroid_distances(name, rows.to_pandas()).tolist()

    def _run_script(
        self, job: _Job, statements: list[exp.Expression], ctx: _QueryContext
    ) -> _StatementResult:
        in_transaction = False
        last = _StatementResult("SCRIPT")
        try:
            for index, stmt in enumerate(statements):
                child = _Job(
                    project=job.project,
                    job_id=f"script_job_{uuid.uuid4().hex}_{index}",
                    location=job.location,
                    configuration={"query": {"query": stmt.sql("bigquery"), "useLegacySql": False}},
                    parent_job_id=job.job_id,
                )
                child.statement_type = _statement_type(stmt)
                self.add_job(child)
                job.child_job_ids.append(child.job_id)
                try:
                    if child.statement_type == "BEGIN_TRANSACTION":
                        if in_transaction:
                            raise _invalid_query("Nested transactions are not supported")
                        self._exec("BEGIN TRANSACTION")
                        in_transaction = True
                        last = _StatementResult(child.statement_type)
                    elif child.statement_type in ("COMMIT_TRANSACTION", "ROLLBACK_TRANSACTION"):
                        if not in_transaction:
                            raise _invalid_query(
                                f"{child.statement_type.replace('_', ' ')} without BEGIN TRANSACTION"
                            )
                        self._exec("COMMIT" if child.statement_type == "COMMIT_TRANSACTION" else "ROLLBACK")
                        in_transaction = False
                        last = _StatementResult(child.statement_type)
                    else:
                        last = self._execute(stmt, ctx, in_transaction=in_transaction)
                except BigQueryApiError as err:
                    child.error = err
                    raise
                finally:
                    child.ended_ms = _now_ms()
                child.result = last.table
                child.num_dml_affected_rows = last.dml_rows
        except BaseException:
            if in_transaction:
                # "If an error occurs during a transaction and there is no exception handler,
                # the query fails and BigQuery automatically rolls back the transaction."
                self._exec("ROLLBACK")
            raise
        if in_transaction:
            # A script that ends inside a transaction is rolled back.
            self._exec("ROLLBACK")
        return last

    def _resolve(self, table: exp.Table, ctx: _QueryContext) -> tuple[str, str, str]:
        name = table.name
        if table.args.get("catalog") is not None and table.catalog:
            project, dataset = table.catalog, table.db
        elif table.db:
            project, dataset = ctx.project, table.db
        elif ctx.default_dataset is not None:
            project, dataset = ctx.default_dataset
        else:
            raise _invalid_query(f'Table "{name}" must be qualified with a dataset (e.g. dataset.table).')
        ds = self.datasets.get((project, dataset))
        location = ctx.location or self.location
        if ds is None or (ctx.location and ds["location"].upper() != ctx.location.upper()):
            raise BigQueryApiError(
                "notFound", f"Not found: Dataset {project}:{dataset} was not found in location {location}"
            )
        return project, dataset, name

    def _translate(
        self, stmt: exp.Expression, ctx: _QueryContext
    ) -> tuple[str, dict[str, Any], list[tuple[str, str, str]]]:
        """BigQuery AST → (DuckDB SQL, bound parameters, tables the statement writes)."""
        stmt = stmt.copy()
        cte_names = {cte.alias_or_name.lower() for cte in stmt.find_all(exp.CTE)}
        target: exp.Table | None = None
        if isinstance(
            stmt, (exp.Insert, exp.Delete, exp.Update, exp.Merge, exp.Create, exp.Drop, exp.TruncateTable)
        ):
            node = stmt.this
            if isinstance(stmt, exp.TruncateTable):
                node = stmt.expressions[0] if stmt.expressions else None
            if isinstance(node, exp.Schema):
                node = node.this
            if isinstance(node, exp.Table):
                target = node
        no_existence_check = isinstance(stmt, exp.Create) or (
            isinstance(stmt, exp.Drop) and stmt.args.get("exists")
        )
        written: list[tuple[str, str, str]] = []
        for table in list(stmt.find_all(exp.Table)):
            if not isinstance(table.this, exp.Identifier):
                continue  # table functions, UNNEST, …
            if not table.db and table.name.lower() in cte_names:
                continue
            project, dataset, name = self._resolve(table, ctx)
            if "$" in name:
                raise _invalid_query(
                    f"Invalid table name {name!r}: partition decorators are not allowed in SQL."
                )
            if not (table is target and no_existence_check) and not self.table_exists(project, dataset, name):
                raise BigQueryApiError(
                    "notFound",
                    f"Not found: Table {project}:{dataset}.{name} was not found in location "
                    f"{ctx.location or self.location}",
                )
            if table is target:
                written.append((project, dataset, name))
            table.set("catalog", exp.to_identifier(project, quoted=True))
            table.set("db", exp.to_identifier(dataset, quoted=True))
            table.set("this", exp.to_identifier(name, quoted=True))
        bound: dict[str, Any] = {}
        for param in list(stmt.find_all(exp.Parameter)):
            pname = param.name
            if pname not in ctx.params:
                raise _invalid_query(f"Query parameter '{pname}' not found")
            type_name, value = ctx.params[pname]
            bound[pname] = value
            param.replace(
                exp.cast(
                    exp.Parameter(this=exp.var(pname)),
                    exp.DataType.build(_duckdb_param_type(type_name), dialect="duckdb"),
                )
            )
        if isinstance(stmt, exp.Create):
            prop = stmt.find(exp.PartitionedByProperty)
            if prop is not None:
                prop.pop()
        stmt = _bigquery_meaning(stmt)
        try:
            sql = stmt.sql("duckdb", unsupported_level=sqlglot.ErrorLevel.RAISE)
        except sqlglot.errors.UnsupportedError as err:
            raise _invalid_query(
                f"The BigQuery test double cannot translate this statement to DuckDB: {err}"
            ) from None
        return sql, bound, written

    def _execute(self, stmt: exp.Expression, ctx: _QueryContext, *, in_transaction: bool) -> _StatementResult:
        kind = _statement_type(stmt)
        if kind not in _SUPPORTED_STATEMENTS:
            raise _invalid_query(
                f"The BigQuery test double cannot run {kind.replace('_', ' ')} statements; it runs "
                f"{', '.join(sorted(s.replace('_', ' ') for s in _SUPPORTED_STATEMENTS))}."
            )
        if in_transaction and kind.startswith(("CREATE", "DROP")):
            raise _invalid_query(
                f"{kind.replace('_', ' ')} statements on permanent tables are not supported "
                "inside a transaction"
            )
        sql, params, written = self._translate(stmt, ctx)
        partitioning = None
        if isinstance(stmt, exp.Create):
            prop = stmt.find(exp.PartitionedByProperty)
            if prop is not None and isinstance(prop.this, exp.Column):
                partitioning = {"type": "DAY", "field": prop.this.name}
        try:
            if kind == "SELECT":
                table = self._arrow(sql, params)
                return _StatementResult(kind, table=_normalize_table(table))
            rows = self._exec(sql, params or None)
        except duckdb.Error as err:
            raise _invalid_query(_duckdb_error_message(err)) from None
        for project, dataset, name in written:
            if kind.startswith("DROP"):
                self.table_meta.pop((project, dataset, name), None)
            elif kind.startswith("CREATE"):
                self.table_meta.pop((project, dataset, name), None)
                meta = self._meta(project, dataset, name)
                if partitioning:
                    meta["timePartitioning"] = partitioning
            else:
                self._touch(project, dataset, name)
        dml_rows = int(rows[0][0]) if kind in _DML and rows and rows[0] else (0 if kind in _DML else None)
        return _StatementResult(kind, dml_rows=dml_rows)

    def write_arrow(
        self,
        destination: dict[str, Any],
        data: pa.Table,
        *,
        write_disposition: str,
        create_disposition: str,
        partitioning: dict[str, Any] | None,
        clustering: dict[str, Any] | None = None,
    ) -> None:
        """Write rows to a destination table the way a query or load job does."""
        project = destination["projectId"]
        dataset = destination["datasetId"]
        table, decorator = _table_parts(destination["tableId"])
        self.dataset_resource(project, dataset)
        exists = self.table_exists(project, dataset, table)
        meta = self.table_meta.get((project, dataset, table)) if exists else None
        existing_spec = meta.get("timePartitioning") if meta else None
        if not exists:
            if create_disposition == "CREATE_NEVER":
                raise BigQueryApiError("notFound", f"Not found: Table {project}:{dataset}.{table}")
            if decorator and not partitioning:
                raise BigQueryApiError(
                    "invalid",
                    "Partitioning specification must be provided in order to create partitioned table",
                )
        elif (
            partitioning is not None and _partition_spec(partitioning) != _partition_spec(existing_spec)
        ) or (
            partitioning is None and existing_spec and write_disposition == "WRITE_TRUNCATE" and not decorator
        ):
            raise BigQueryApiError(
                "invalid",
                "Incompatible table partitioning specification. Expects partitioning specification "
                f"{_partition_spec(existing_spec)}, but input partitioning specification is "
                f"{_partition_spec(partitioning)}",
            )
        spec = partitioning or existing_spec
        if spec and spec.get("field") and spec["field"] not in data.column_names:
            raise BigQueryApiError(
                "invalid",
                f"The field specified for time partitioning can not be found in the schema: {spec['field']}",
            )
        if spec and spec.get("field"):
            field_type = data.schema.field(spec["field"]).type
            if not (pa.types.is_date(field_type) or pa.types.is_timestamp(field_type)):
                raise BigQueryApiError(
                    "invalid",
                    "The field specified for time partitioning can only be of type TIMESTAMP, DATE "
                    "or DATETIME. "
                    f"The type found is: {_bq_field('x', field_type)['type']}.",
                )
        if decorator and not (spec and spec.get("field")):
            raise BigQueryApiError(
                "invalid",
                f"Cannot write to partition {table}${decorator}: the table is not partitioned by a column",
            )
        qualified = self._qualified(project, dataset, table)
        source = f"__lakehouse_ml_fake_source_{uuid.uuid4().hex}"
        self.con.register(source, data)
        try:
            if decorator:
                try:
                    day = dt.datetime.strptime(decorator, "%Y%m%d").date()
                except ValueError:
                    raise BigQueryApiError(
                        "invalid", f"Invalid partition decorator {decorator!r}: use YYYYMMDD"
                    ) from None
                column = _q(spec["field"])
                outside = self._exec(
                    f"SELECT COUNT(*) FROM {_q(source)} WHERE CAST({column} AS DATE) IS DISTINCT FROM ?",
                    [day],
                )[0][0]
                if outside:
                    raise BigQueryApiError(
                        "invalid",
                        "Some rows belong to different partitions rather than destination partition "
                        f"{decorator}",
                    )
            if exists and write_disposition == "WRITE_EMPTY":
                where = (
                    f" WHERE CAST({_q(spec['field'])} AS DATE) = DATE '{day.isoformat()}'"
                    if decorator
                    else ""
                )
                if self._exec(f"SELECT COUNT(*) FROM {qualified}{where}")[0][0]:
                    raise BigQueryApiError("duplicate", f"Already Exists: Table {project}:{dataset}.{table}")
            self._exec("BEGIN TRANSACTION")
            try:
                if not exists:
                    self._exec(f"CREATE TABLE {qualified} AS SELECT * FROM {_q(source)}")
                elif decorator:
                    if write_disposition == "WRITE_TRUNCATE":
                        self._exec(
                            f"DELETE FROM {qualified} WHERE CAST({_q(spec['field'])} AS DATE) = ?", [day]
                        )
                    self._exec(f"INSERT INTO {qualified} BY NAME SELECT * FROM {_q(source)}")
                elif write_disposition == "WRITE_TRUNCATE":
                    self._exec(f"CREATE OR REPLACE TABLE {qualified} AS SELECT * FROM {_q(source)}")
                else:
                    self._exec(f"INSERT INTO {qualified} BY NAME SELECT * FROM {_q(source)}")
                self._exec("COMMIT")
            except duckdb.Error as err:
                self._exec("ROLLBACK")
                raise BigQueryApiError("invalid", _duckdb_error_message(err)) from None
        finally:
            self.con.unregister(source)
        if not exists:
            self.table_meta.pop((project, dataset, table), None)
        meta = self._meta(project, dataset, table)
        meta["lastModifiedTime"] = _now_ms()
        if spec:
            meta["timePartitioning"] = spec
        if clustering:
            meta["clustering"] = clustering

    def _run_load(self, job: _Job, data: bytes) -> None:
        cfg = job.configuration["load"]
        source_format = (cfg.get("sourceFormat") or "CSV").upper()
        if source_format != "PARQUET":
            raise BigQueryApiError(
                "invalid", f"The BigQuery test double loads PARQUET only, got sourceFormat {source_format}."
            )
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as err:
            raise BigQueryApiError("invalid", f"Error while reading data, error message: {err}") from None
        fields = (cfg.get("schema") or {}).get("fields")
        if fields:
            columns = []
            for f in fields:
                if f["name"] not in table.column_names:
                    raise BigQueryApiError(
                        "invalid",
                        f"Provided Schema does not match Table. Field {f['name']} is missing in the data.",
                    )
                try:
                    columns.append(table.column(f["name"]).cast(_arrow_type_for_field(f)))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    raise BigQueryApiError(
                        "invalid", f"Field {f['name']} cannot be read as {f['type']}: {err}"
                    ) from None
            table = pa.Table.from_arrays(columns, names=[f["name"] for f in fields])
        table = _normalize_table(table)
        destination = cfg.get("destinationTable")
        if not destination:
            raise BigQueryApiError("invalid", "Load configuration must specify a destination table")
        self.write_arrow(
            destination,
            table,
            write_disposition=cfg.get("writeDisposition") or "WRITE_APPEND",
            create_disposition=cfg.get("createDisposition") or "CREATE_IF_NEEDED",
            partitioning=cfg.get("timePartitioning"),
            clustering=cfg.get("clustering"),
        )
        job.output_rows = table.num_rows
        job.input_bytes = len(data)


# ---------------------------------------------------------------------------------------------
# The HTTP server
# ---------------------------------------------------------------------------------------------


class FakeBigQueryApi:
    """The test double. Use as a context manager (or :func:`fake_bigquery_api`)."""

    def __init__(self, *, location: str = "US", page_size: int = 1000):
        self.location = location
        self.page_size = page_size
        self._engine = _Engine(location)
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._uploads: dict[str, dict[str, Any]] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.app = Starlette(routes=self._routes())

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("The fake BigQuery API is not running: call start() first.")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeBigQueryApi":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="fake-bigquery-api-worker"
        )
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-bigquery-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("The fake BigQuery API did not start.")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(5)
        self._thread = None
        self._server = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._engine.close()

    def __enter__(self) -> "FakeBigQueryApi":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at ------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    def find_requests(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Requests with this method whose path matches the regular expression ``path`` in full."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path is None or re.fullmatch(path, r.path))
        ]

    def job_inserts(self) -> list[dict[str, Any]]:
        """The bodies of every ``jobs.insert`` call (uploads included: their JSON metadata part)."""
        return [
            r.json
            for r in self.requests
            if r.method == "POST"
            and re.fullmatch(
                rf"({re.escape(UPLOAD_PREFIX)}|{re.escape(API_PREFIX)})/projects/[^/]+/jobs", r.path
            )
            and isinstance(r.json, dict)
            and "configuration" in r.json
        ]

    def table(self, project: str, dataset: str, table: str) -> pa.Table:
        """The current content of a table, read directly (not through the API)."""
        return self._engine.table_arrow(project, dataset, table)

    def table_metadata(self, project: str, dataset: str, table: str) -> dict[str, Any]:
        return self._engine.table_resource(project, dataset, table, self.url)

    def has_table(self, project: str, dataset: str, table: str) -> bool:
        with self._engine.lock:
            return (project, dataset) in self._engine.datasets and self._engine.table_exists(
                project, dataset, table
            )

    def create_dataset(self, project: str, dataset: str, location: str | None = None) -> dict[str, Any]:
        """Create a dataset directly (not through the API); its resource."""
        return self._engine.create_dataset(
            project, dataset, {"location": location} if location else {}, self.url
        )

    def append_rows(
        self, project: str, dataset: str, table: str, rows: list[dict[str, Any]], schema: list[dict[str, Any]]
    ) -> None:
        """Append rows as a streaming insert by another service would (Vertex AI's request-response
        logging, for example), creating the table with ``schema`` (REST field dicts) when it is
        missing. The dataset must exist (``notFound`` otherwise)."""
        arrow_schema = pa.schema([pa.field(f["name"], _arrow_type_for_field(f)) for f in schema])
        data = pa.Table.from_pylist(rows, schema=arrow_schema)
        with self._engine.lock:
            self._engine.dataset_resource(project, dataset)
            if not self._engine.table_exists(project, dataset, table):
                body = {"tableReference": {"tableId": table}, "schema": {"fields": schema}}
                self._engine.create_table(project, dataset, body, self.url)
            destination = {"projectId": project, "datasetId": dataset, "tableId": table}
            self._engine.write_arrow(
                destination,
                data,
                write_disposition="WRITE_APPEND",
                create_disposition="CREATE_NEVER",
                partitioning=None,
            )

    def job(self, project: str, job_id: str) -> dict[str, Any]:
        with self._engine.lock:
            return self._job_resource(self._engine.get_job(project, job_id))

    # -- what the Vertex AI double uses ------------------------------------------------------
    @property
    def vertex(self) -> Any:
        return self._engine.vertex

    @vertex.setter
    def vertex(self, api: Any) -> None:
        self._engine.vertex = api

    def model_resource(self, project: str, dataset: str, model: str) -> dict[str, Any]:
        with self._engine.lock:
            return self._engine.model_resource(project, dataset, model)

    def ml_predict(self, project: str, dataset: str, model: str, instances: pa.Table) -> pa.Table:
        return self._engine.ml_predict(project, dataset, model, instances)

    def kmeans_distances(
        self, project: str, dataset: str, model: str, instances: pa.Table
    ) -> list[list[float]]:
        return self._engine.kmeans_distances(project, dataset, model, instances)

    # -- plumbing ------------------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        p = API_PREFIX + "/projects/{project}"
        return [
            Route(p + "/datasets", self._datasets_insert, methods=["POST"]),
            Route(p + "/datasets", self._datasets_list, methods=["GET"]),
            Route(p + "/datasets/{dataset}", self._datasets_get, methods=["GET"]),
            Route(p + "/datasets/{dataset}", self._datasets_delete, methods=["DELETE"]),
            Route(p + "/datasets/{dataset}/tables", self._tables_insert, methods=["POST"]),
            Route(p + "/datasets/{dataset}/tables", self._tables_list, methods=["GET"]),
            Route(p + "/datasets/{dataset}/tables/{table}", self._tables_get, methods=["GET"]),
            Route(p + "/datasets/{dataset}/tables/{table}", self._tables_patch, methods=["PATCH", "PUT"]),
            Route(p + "/datasets/{dataset}/tables/{table}", self._tables_delete, methods=["DELETE"]),
            Route(p + "/datasets/{dataset}/tables/{table}/data", self._tabledata_list, methods=["GET"]),
            Route(p + "/datasets/{dataset}/models", self._models_list, methods=["GET"]),
            Route(p + "/datasets/{dataset}/models/{model}", self._models_get, methods=["GET"]),
            Route(p + "/datasets/{dataset}/models/{model}", self._models_delete, methods=["DELETE"]),
            Route(p + "/jobs", self._jobs_insert, methods=["POST"]),
            Route(p + "/jobs", self._jobs_list, methods=["GET"]),
            Route(p + "/jobs/{job_id}", self._jobs_get, methods=["GET"]),
            Route(p + "/jobs/{job_id}/cancel", self._jobs_cancel, methods=["POST"]),
            Route(p + "/queries", self._jobs_query, methods=["POST"]),
            Route(p + "/queries/{job_id}", self._jobs_get_query_results, methods=["GET"]),
            Route(UPLOAD_PREFIX + "/projects/{project}/jobs", self._upload_start, methods=["POST"]),
            Route(UPLOAD_PREFIX + "/projects/{project}/jobs", self._upload_chunk, methods=["PUT"]),
            Route("/{path:path}", self._no_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]

    async def _record(self, request: Request) -> tuple[RecordedRequest, bytes]:
        body = await request.body()
        payload: Any = None
        content_type = request.headers.get("content-type", "")
        if body and "json" in content_type:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        elif body and content_type.startswith("multipart/related"):
            payload = self._multipart_parts(content_type, body)[0]
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            query_string=request.url.query,
            json=payload,
            headers={k.lower(): v for k, v in request.headers.items()},
            body_size=len(body),
        )
        with self._requests_lock:
            self._requests.append(recorded)
        return recorded, body

    @staticmethod
    def _multipart_parts(content_type: str, body: bytes) -> tuple[Any, bytes]:
        match = re.search(r'boundary="?([^";]+)"?', content_type)
        if not match:
            raise BigQueryApiError("invalid", "Multipart upload without a boundary")
        boundary = b"--" + match.group(1).encode()
        parts = [p for p in body.split(boundary) if p not in (b"", b"--", b"--\r\n")]
        contents = []
        for part in parts:
            head, _, content = part.partition(b"\r\n\r\n")
            if content.endswith(b"\r\n"):
                content = content[:-2]
            contents.append(content)
        if len(contents) < 2:
            raise BigQueryApiError("invalid", "A multipart upload needs a metadata part and a media part")
        try:
            metadata = json.loads(contents[0])
        except ValueError:
            raise BigQueryApiError("invalid", "The metadata part of the upload is not JSON") from None
        return metadata, contents[1]

    def _answer(
        self,
        recorded: RecordedRequest,
        payload: Any,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response:
        recorded.status = status
        recorded.response = payload
        if payload is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(payload, status_code=status, headers=headers)

    def _fail(self, recorded: RecordedRequest, err: BigQueryApiError) -> Response:
        return self._answer(recorded, err.body(), err.code)

    def _handler(fn):  # type: ignore[no-untyped-def]  # decorator used inside the class body
        async def wrapper(self: "FakeBigQueryApi", request: Request) -> Response:
            recorded, body = await self._record(request)
            if self._engine.vertex is not None:  # log rows whose delay has passed land first
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._engine.vertex.deliver_logs
                )
            try:
                # Blocking work (DuckDB, under the engine lock) runs on the double's own pool, which
                # stop() shuts down, so no worker thread outlives the server.
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, fn, self, request, recorded, body)
            except BigQueryApiError as err:
                return self._fail(recorded, err)
            except Exception as err:  # a bug in the double: say so, in BigQuery's shape
                return self._fail(
                    recorded,
                    BigQueryApiError("invalid", f"BigQuery test double failure: {type(err).__name__}: {err}"),
                )

        return wrapper

    def _job_resource(self, job: _Job) -> dict[str, Any]:
        location = job.location or self.location
        status: dict[str, Any] = {"state": "DONE"}
        if job.error is not None:
            status["errorResult"] = job.error.error_proto()
            status["errors"] = [job.error.error_proto()]
        statistics: dict[str, Any] = {
            "creationTime": job.created_ms,
            "startTime": job.created_ms,
            "endTime": job.ended_ms or _now_ms(),
        }
        if job.job_type == "QUERY":
            query_stats: dict[str, Any] = {
                "totalBytesProcessed": "0",
                "totalBytesBilled": "0",
                "cacheHit": False,
            }
            if job.statement_type:
                query_stats["statementType"] = job.statement_type
            if job.num_dml_affected_rows is not None:
                query_stats["numDmlAffectedRows"] = str(job.num_dml_affected_rows)
            if job.result is not None and job.error is None:
                query_stats["schema"] = _bq_schema(job.result.schema)
            statistics["totalBytesProcessed"] = "0"
            statistics["query"] = query_stats
            if job.child_job_ids:
                statistics["numChildJobs"] = str(len(job.child_job_ids))
            if job.parent_job_id:
                statistics["parentJobId"] = job.parent_job_id
                statistics["scriptStatistics"] = {"evaluationKind": "STATEMENT"}
        elif job.job_type == "LOAD" and job.error is None and job.output_rows is not None:
            statistics["load"] = {
                "inputFiles": "1",
                "inputFileBytes": str(job.input_bytes or 0),
                "outputRows": str(job.output_rows),
                "outputBytes": "0",
                "badRecords": "0",
            }
        configuration = {**job.configuration, "jobType": job.job_type}
        return {
            "kind": "bigquery#job",
            "etag": uuid.uuid5(uuid.NAMESPACE_URL, f"{job.project}/{job.job_id}").hex,
            "id": f"{job.project}:{location}.{job.job_id}",
            "selfLink": (
                f"{self.url}{API_PREFIX}/projects/{job.project}/jobs/{job.job_id}?location={location}"
            ),
            "user_email": "anonymous@bigquery-test-double.invalid",
            "principal_subject": "anonymous",
            "configuration": configuration,
            "jobReference": {**job.reference(), "location": location},
            "statistics": statistics,
            "status": status,
        }

    def _new_job(self, project: str, body: dict[str, Any]) -> _Job:
        ref = body.get("jobReference") or {}
        configuration = body.get("configuration")
        if not isinstance(configuration, dict) or not configuration:
            raise BigQueryApiError("invalid", "Required parameter is missing: configuration")
        if ref.get("projectId") and ref["projectId"] != project:
            raise BigQueryApiError(
                "invalid", f"Job project {ref['projectId']} does not match the URL project {project}"
            )
        job = _Job(
            project=project,
            job_id=ref.get("jobId") or f"job_{uuid.uuid4().hex}",
            location=ref.get("location") or self.location,
            configuration=configuration,
        )
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,1024}", job.job_id):
            raise BigQueryApiError("invalid", f'Invalid job ID "{job.job_id}".')
        return job

    def _rows_page(self, table: pa.Table, query: dict[str, str], int64_default: bool) -> dict[str, Any]:
        start = int(query.get("startIndex") or 0)
        token = query.get("pageToken")
        if token:
            try:
                start = int(token)
            except ValueError:
                raise BigQueryApiError("invalid", f"Invalid page token {token!r}") from None
        max_results = query.get("maxResults")
        size = self.page_size if max_results in (None, "") else min(int(max_results), self.page_size)
        schema = _bq_schema(table.schema)
        page: dict[str, Any] = {"schema": schema, "totalRows": str(table.num_rows)}
        if size > 0:
            int64 = str(query.get("formatOptions.useInt64Timestamp", str(int64_default))).lower() == "true"
            sliced = table.slice(start, size)
            page["rows"] = _json_rows(sliced, schema["fields"], int64)
            if start + sliced.num_rows < table.num_rows:
                page["pageToken"] = str(start + sliced.num_rows)
        return page

    # -- datasets ------------------------------------------------------------------------------
    @_handler
    def _datasets_insert(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        project = request.path_params["project"]
        payload = recorded.json or {}
        ref = payload.get("datasetReference") or {}
        dataset = ref.get("datasetId")
        if not dataset:
            raise BigQueryApiError("invalid", "Required parameter is missing: datasetReference.datasetId")
        return self._answer(
            recorded, self._engine.create_dataset(ref.get("projectId") or project, dataset, payload, self.url)
        )

    @_handler
    def _datasets_get(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        with self._engine.lock:
            return self._answer(
                recorded,
                self._engine.dataset_resource(request.path_params["project"], request.path_params["dataset"]),
            )

    @_handler
    def _datasets_list(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        project = request.path_params["project"]
        with self._engine.lock:
            items = [
                {
                    "kind": "bigquery#dataset",
                    "id": r["id"],
                    "datasetReference": r["datasetReference"],
                    "location": r["location"],
                }
                for (p, _), r in sorted(self._engine.datasets.items())
                if p == project
            ]
        return self._answer(
            recorded, {"kind": "bigquery#datasetList", "etag": uuid.uuid4().hex, "datasets": items}
        )

    @_handler
    def _datasets_delete(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        delete_contents = request.query_params.get("deleteContents", "false").lower() == "true"
        self._engine.delete_dataset(
            request.path_params["project"], request.path_params["dataset"], delete_contents
        )
        return self._answer(recorded, None, 204)

    # -- tables --------------------------------------------------------------------------------
    @_handler
    def _tables_get(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        return self._answer(
            recorded, self._engine.table_resource(pp["project"], pp["dataset"], pp["table"], self.url)
        )

    @_handler
    def _tables_insert(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        return self._answer(
            recorded, self._engine.create_table(pp["project"], pp["dataset"], recorded.json or {}, self.url)
        )

    @_handler
    def _tables_patch(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        return self._answer(
            recorded,
            self._engine.patch_table(
                pp["project"], pp["dataset"], pp["table"], recorded.json or {}, self.url
            ),
        )

    @_handler
    def _tables_delete(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        self._engine.delete_table(pp["project"], pp["dataset"], pp["table"])
        return self._answer(recorded, None, 204)

    @_handler
    def _tables_list(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        with self._engine.lock:
            self._engine.dataset_resource(pp["project"], pp["dataset"])
            names = self._engine.list_table_names(pp["project"], pp["dataset"])
            items = [
                {
                    "kind": "bigquery#table",
                    "id": f"{pp['project']}:{pp['dataset']}.{name}",
                    "tableReference": {
                        "projectId": pp["project"],
                        "datasetId": pp["dataset"],
                        "tableId": name,
                    },
                    "type": self._engine._relation_kind(pp["project"], pp["dataset"], name),
                }
                for name in names
            ]
        return self._answer(
            recorded,
            {
                "kind": "bigquery#tableList",
                "etag": uuid.uuid4().hex,
                "tables": items,
                "totalItems": len(items),
            },
        )

    @_handler
    def _tabledata_list(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        table = self._engine.table_arrow(pp["project"], pp["dataset"], pp["table"])
        selected = request.query_params.get("selectedFields")
        if selected:
            table = table.select([name.strip() for name in selected.split(",")])
        page = self._rows_page(table, dict(request.query_params), int64_default=False)
        page.pop("schema")
        page.setdefault("rows", [])
        return self._answer(recorded, {"kind": "bigquery#tableDataList", "etag": uuid.uuid4().hex, **page})

    # -- jobs ----------------------------------------------------------------------------------
    @_handler
    def _models_list(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        with self._engine.lock:
            names = self._engine.model_names(pp["project"], pp["dataset"])
            models = [self._engine.model_resource(pp["project"], pp["dataset"], n) for n in names]
        # models.list answers each model's reference, type, times and labels (not its columns).
        keep = ("modelReference", "modelType", "creationTime", "lastModifiedTime", "location")
        return self._answer(
            recorded, {"models": [{k: m[k] for k in keep if k in m} for m in models]} if models else {}
        )

    @_handler
    def _models_get(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        with self._engine.lock:
            return self._answer(
                recorded, self._engine.model_resource(pp["project"], pp["dataset"], pp["model"])
            )

    @_handler
    def _models_delete(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        with self._engine.lock:
            self._engine.drop_model(pp["project"], pp["dataset"], pp["model"])
        return self._answer(recorded, None, 204)

    @_handler
    def _jobs_insert(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        project = request.path_params["project"]
        job = self._new_job(project, recorded.json or {})
        if "query" in job.configuration:
            if job.configuration.get("dryRun"):
                raise BigQueryApiError("invalid", "The BigQuery test double does not support dry runs.")
            with self._engine.lock:
                self._engine.add_job(job)
            self._engine.run_query_job(job)
        elif "load" in job.configuration:
            raise BigQueryApiError(
                "invalid",
                "The BigQuery test double has no Cloud Storage: send load data with a media upload "
                f"({UPLOAD_PREFIX}/projects/{{project}}/jobs?uploadType=multipart).",
            )
        else:
            kinds = ", ".join(sorted(job.configuration))
            raise BigQueryApiError(
                "invalid", f"The BigQuery test double runs query and load jobs, not: {kinds}."
            )
        return self._answer(recorded, self._job_resource(job))

    @_handler
    def _jobs_get(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        with self._engine.lock:
            job = self._engine.get_job(pp["project"], pp["job_id"], request.query_params.get("location"))
            return self._answer(recorded, self._job_resource(job))

    @_handler
    def _jobs_cancel(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        with self._engine.lock:
            job = self._engine.get_job(pp["project"], pp["job_id"], request.query_params.get("location"))
            job.cancelled = True  # jobs finish at insert time: cancelling a DONE job changes nothing
            return self._answer(
                recorded, {"kind": "bigquery#jobCancelResponse", "job": self._job_resource(job)}
            )

    @_handler
    def _jobs_list(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        project = request.path_params["project"]
        parent = request.query_params.get("parentJobId")
        with self._engine.lock:
            jobs = [self._engine.jobs[key] for key in reversed(self._engine.job_order) if key[0] == project]
            if parent:
                jobs = [j for j in jobs if j.parent_job_id == parent]
            else:
                jobs = [j for j in jobs if j.parent_job_id is None]
            items = []
            for job in jobs:
                resource = self._job_resource(job)
                item = {
                    "id": resource["id"],
                    "kind": resource["kind"],
                    "jobReference": resource["jobReference"],
                    "state": "DONE",
                    "configuration": resource["configuration"],
                    "status": resource["status"],
                    "statistics": resource["statistics"],
                    "user_email": resource["user_email"],
                }
                if "errorResult" in resource["status"]:
                    item["errorResult"] = resource["status"]["errorResult"]
                items.append(item)
        return self._answer(recorded, {"kind": "bigquery#jobList", "etag": uuid.uuid4().hex, "jobs": items})

    @_handler
    def _jobs_get_query_results(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        pp = request.path_params
        with self._engine.lock:
            job = self._engine.get_job(pp["project"], pp["job_id"], request.query_params.get("location"))
            if job.job_type != "QUERY":
                raise BigQueryApiError("invalid", f"Job {job.project}:{job.job_id} is not a query job")
            if job.error is not None:
                raise job.error
            response = self._query_response(
                job, dict(request.query_params), "bigquery#getQueryResultsResponse"
            )
        return self._answer(recorded, response)

    def _query_response(
        self, job: _Job, query: dict[str, str], kind: str, int64_default: bool = False
    ) -> dict[str, Any]:
        response: dict[str, Any] = {
            "kind": kind,
            "etag": uuid.uuid4().hex,
            "jobReference": {**job.reference(), "location": job.location or self.location},
            "jobComplete": True,
            "totalBytesProcessed": "0",
            "cacheHit": False,
        }
        if job.result is not None:
            response.update(self._rows_page(job.result, query, int64_default))
        if job.num_dml_affected_rows is not None:
            response["numDmlAffectedRows"] = str(job.num_dml_affected_rows)
        return response

    @_handler
    def _jobs_query(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        project = request.path_params["project"]
        payload = dict(recorded.json or {})
        config = {
            key: payload[key]
            for key in (
                "query",
                "useLegacySql",
                "defaultDataset",
                "queryParameters",
                "parameterMode",
                "maximumBytesBilled",
                "labels",
                "connectionProperties",
                "createSession",
                "useQueryCache",
            )
            if key in payload
        }
        if payload.get("dryRun"):
            raise BigQueryApiError("invalid", "The BigQuery test double does not support dry runs.")
        job = _Job(
            project=project,
            job_id=f"job_{uuid.uuid4().hex}",
            location=payload.get("location") or self.location,
            configuration={"query": config},
        )
        with self._engine.lock:
            self._engine.add_job(job)
        self._engine.run_query_job(job)
        if job.error is not None:
            raise job.error
        format_options = payload.get("formatOptions") or {}
        query = {"formatOptions.useInt64Timestamp": str(format_options.get("useInt64Timestamp", False))}
        if payload.get("maxResults") is not None:
            query["maxResults"] = str(payload["maxResults"])
        with self._engine.lock:
            response = self._query_response(job, query, "bigquery#queryResponse")
        return self._answer(recorded, response)

    # -- media uploads (load jobs) -------------------------------------------------------------
    @_handler
    def _upload_start(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        project = request.path_params["project"]
        upload_type = request.query_params.get("uploadType")
        if upload_type == "multipart":
            metadata, data = self._multipart_parts(request.headers.get("content-type", ""), body)
            return self._answer(recorded, self._run_upload(project, metadata, data))
        if upload_type == "resumable":
            metadata = recorded.json or {}
            self._new_job(project, metadata)  # validate now, as BigQuery does
            upload_id = uuid.uuid4().hex
            with self._engine.lock:
                self._uploads[upload_id] = {"project": project, "metadata": metadata, "data": bytearray()}
            location = (
                f"{self.url}{UPLOAD_PREFIX}/projects/{project}/jobs"
                f"?uploadType=resumable&upload_id={upload_id}"
            )
            return self._answer(recorded, None, 200, headers={"Location": location})
        raise BigQueryApiError(
            "invalid", f"Unsupported uploadType {upload_type!r}: use multipart or resumable"
        )

    @_handler
    def _upload_chunk(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        upload_id = request.query_params.get("upload_id", "")
        with self._engine.lock:
            upload = self._uploads.get(upload_id)
        if upload is None:
            raise BigQueryApiError("notFound", f"Not found: upload {upload_id}")
        content_range = request.headers.get("content-range", "")
        match = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", content_range.strip())
        if not match:
            raise BigQueryApiError("invalid", f"Invalid Content-Range header {content_range!r}")
        start, _end, total = match.groups()
        if start is not None and int(start) != len(upload["data"]):
            raise BigQueryApiError("invalid", f"Chunk starts at byte {start}, expected {len(upload['data'])}")
        upload["data"].extend(body)
        if total != "*" and len(upload["data"]) >= int(total):
            with self._engine.lock:
                self._uploads.pop(upload_id, None)
            return self._answer(
                recorded, self._run_upload(upload["project"], upload["metadata"], bytes(upload["data"]))
            )
        received = len(upload["data"])
        headers = {"Range": f"bytes=0-{received - 1}"} if received else {}
        return self._answer(recorded, None, 308, headers=headers)

    def _run_upload(self, project: str, metadata: dict[str, Any], data: bytes) -> dict[str, Any]:
        job = self._new_job(project, metadata)
        if "load" not in job.configuration:
            raise BigQueryApiError("invalid", "A media upload must carry a load job configuration")
        with self._engine.lock:
            self._engine.add_job(job)
        self._engine.run_load_job(job, data)
        with self._engine.lock:
            return self._job_resource(job)

    @_handler
    def _no_route(self, request: Request, recorded: RecordedRequest, body: bytes) -> Response:
        raise BigQueryApiError(
            "notImplemented", f"The BigQuery test double has no route for {request.method} {request.url.path}"
        )

    del _handler


@contextlib.contextmanager
def fake_bigquery_api(**kwargs: Any) -> Iterator[FakeBigQueryApi]:
    """Start a :class:`FakeBigQueryApi` on a free port of 127.0.0.1; stop it (and its thread) on exit."""
    api = FakeBigQueryApi(**kwargs)
    api.start()
    try:
        yield api
    finally:
        api.stop()
