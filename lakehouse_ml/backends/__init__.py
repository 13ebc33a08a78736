"""The seam between lakehouse_ml and a cloud: only this package knows which one it talks to."""

from __future__ import annotations

import dagster as dg

from lakehouse_ml.backends.warehouse import (
    PartitionWindow,
    SQLTranslationError,
    TableNotFoundError,
    Warehouse,
    WarehouseError,
)
from lakehouse_ml.settings import Settings


def build_warehouse(settings: Settings) -> Warehouse:
    """The warehouse of the configured backend (imports the gcp client only when asked for)."""
    if settings.backend == "gcp":
        from lakehouse_ml.backends.gcp_warehouse import build_gcp_warehouse

        return build_gcp_warehouse(settings)
    from lakehouse_ml.backends.local_warehouse import LocalWarehouse

    return LocalWarehouse.at(settings.duckdb_path)


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    """How run steps execute: DuckDB allows one writer process, so local runs stay in one process."""
    return dg.in_process_executor if settings.backend == "local" else dg.multiprocess_executor


__all__ = [
    "build_executor",
    "PartitionWindow",
    "SQLTranslationError",
    "TableNotFoundError",
    "Warehouse",
    "WarehouseError",
    "build_warehouse",
]
