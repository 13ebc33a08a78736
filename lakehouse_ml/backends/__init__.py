"""The seam between lakehouse_ml and a cloud: only this package knows which one it talks to."""

from __future__ import annotations

import dagster as dg

from lakehouse_ml.backends.endpoints import Endpoints
from lakehouse_ml.backends.request_log import RequestLog
from lakehouse_ml.backends.warehouse import PartitionWindow, Warehouse
from lakehouse_ml.core.errors import SQLTranslationError, TableNotFoundError, WarehouseError
from lakehouse_ml.core.settings import Settings


def build_warehouse(settings: Settings) -> Warehouse:
    """The warehouse of the configured backend (imports the gcp client only when asked for)."""
    if settings.backend == "gcp":
        from lakehouse_ml.backends.gcp_warehouse import build_gcp_warehouse

        return build_gcp_warehouse(settings)
    from lakehouse_ml.backends.local_warehouse import LocalWarehouse

    return LocalWarehouse.at(settings.duckdb_path)


def build_registry(settings: Settings):  # -> ModelRegistry
    """The model registry of the configured backend: Vertex AI Model Registry on gcp, the local
    SQLite registry under ``$LAKEHOUSE_ML_HOME/registry`` (where the local BigQuery ML engine
    registers ``MODEL_REGISTRY='VERTEX_AI'`` models) locally."""
    if settings.backend == "gcp":
        from lakehouse_ml.backends.vertex import build_vertex_registry

        return build_vertex_registry(settings)
    from lakehouse_ml.backends.local_registry import LocalModelRegistry

    return LocalModelRegistry.at(settings.duckdb_path.parent / "registry")


def build_endpoints(settings: Settings) -> Endpoints:
    """Vertex AI endpoints on gcp; locally, endpoints served by the local endpoint server."""
    if settings.backend == "gcp":
        from lakehouse_ml.backends.vertex import build_vertex_endpoints

        return build_vertex_endpoints(settings)
    from lakehouse_ml.backends.local_endpoints import LocalEndpoints

    return LocalEndpoints(
        home=str(settings.home_dir),
        host=settings.serving_host,
        port=settings.serving_port,
        token=settings.serving_token,
    )


def build_request_log(settings: Settings, endpoints: Endpoints | None = None) -> RequestLog:
    """The request-response log of the configured backend's endpoints: Vertex AI's BigQuery tables
    on gcp, the local server's Parquet files locally. The endpoints keep their own log on both
    backends, so this is the endpoints' object (``endpoints`` when given, else a new one), seen
    through the RequestLog port."""
    log = endpoints if endpoints is not None else build_endpoints(settings)
    if not isinstance(log, RequestLog):  # pragma: no cover - every backend's endpoints keep a log
        raise TypeError(f"{type(log).__name__} keeps no request-response log.")
    return log


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    """How run steps execute: DuckDB allows one writer process, so local runs stay in one process."""
    return dg.in_process_executor if settings.backend == "local" else dg.multiprocess_executor


__all__ = [
    "build_endpoints",
    "build_executor",
    "build_registry",
    "PartitionWindow",
    "SQLTranslationError",
    "TableNotFoundError",
    "Warehouse",
    "WarehouseError",
    "build_warehouse",
]
