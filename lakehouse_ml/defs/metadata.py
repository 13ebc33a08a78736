"""Dagster metadata for warehouse tables: row count, column schema, preview, lineage, links."""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from typing import Iterator, Mapping

import dagster as dg

from lakehouse_ml.backends.warehouse import PartitionWindow, Warehouse
from lakehouse_ml.core.errors import WarehouseError
from lakehouse_ml.lifecycle import features


def table_metadata(
    warehouse: Warehouse,
    table: str,
    window: PartitionWindow | None = None,
    lineage: Mapping[str, list[tuple[str, str]]] | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> dict[str, dg.MetadataValue | object]:
    """Standard metadata of a materialized table (of its window, when partitioned)."""
    schema = warehouse.table_schema(table)
    rows = features.count_rows(warehouse, table, window)
    head = features.preview(warehouse, table, window)
    metadata: dict[str, object] = {
        "dagster/row_count": dg.MetadataValue.int(rows),
        "dagster/table_name": dg.MetadataValue.text(table),
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(name=name, type=kind, description=(descriptions or {}).get(name))
                for name, kind in schema
            ]
        ),
        "preview": dg.MetadataValue.md(
            head.to_markdown(index=False, floatfmt=".4g") if len(head) else "(no rows)"
        ),
        "warehouse": dg.MetadataValue.text(warehouse.describe()),
    }
    if window is not None:
        metadata["partition_window"] = dg.MetadataValue.text(
            f"{window.start} .. {window.end} on {window.column}"
        )
    url = warehouse.table_url(table)
    if url:
        metadata["console"] = dg.MetadataValue.url(url)
    if lineage:
        metadata["dagster/column_lineage"] = dg.TableColumnLineage(
            deps_by_column={
                column: [
                    dg.TableColumnDep(asset_key=dg.AssetKey(src_table), column_name=src_column)
                    for src_table, src_column in deps
                ]
                for column, deps in lineage.items()
                if deps
            }
        )
    return metadata


def window_of(context: dg.AssetExecutionContext, column: str) -> PartitionWindow:
    """The partition window (inclusive days) of a run of a daily-partitioned asset."""
    time_window = context.partition_time_window
    last_day = (time_window.end - dt.timedelta(days=1)).date()
    return PartitionWindow(column=column, start=time_window.start.date(), end=last_day)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn errors meant for the user into a ``dagster.Failure`` whose description is the message,
    so the UI and the run log show it as it is, not as a traceback."""
    try:
        yield
    except (WarehouseError, FileNotFoundError, ValueError) as err:
        raise dg.Failure(description=str(err)) from err
