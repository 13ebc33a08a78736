"""The landing tables' exact columns and types: a contract with the SQL in ``sql/``.

Every table is written to Parquet with the Arrow schema below (dates as ``date32``, timestamps as
``timestamp[us]`` without a time zone, holding UTC wall-clock time; strings as plain ``string``).
The DataFrames of :class:`~lakehouse_ml.datagen.CymbalSimulator` carry the pandas dtypes of
:data:`PANDAS_DTYPES` (dates as ``datetime.date`` objects, which is how pandas reads ``date32``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

TABLES = ("customers", "products", "orders", "web_sessions")
DAILY_TABLES = ("orders", "web_sessions")
DATE_COLUMN = {"orders": "order_date", "web_sessions": "session_date"}

# Vocabularies (codes in the simulator index these tuples).
BASE_REGIONS = ("north", "south", "east", "west")
NEW_REGION = "central"
REGIONS = (*BASE_REGIONS, NEW_REGION)
ACQUISITION_CHANNELS = ("organic", "paid_search", "social", "referral", "email")
CATEGORIES = ("electronics", "apparel", "home", "beauty", "grocery", "toys", "sports", "books")
CHANNELS = ("web", "app", "store", "marketplace")
DEVICES = ("desktop", "mobile", "tablet", "pos")
TRAFFIC_SOURCES = ("organic", "paid_search", "email", "social", "direct")

ARROW_SCHEMAS: dict[str, pa.Schema] = {
    "customers": pa.schema(
        [
            ("customer_id", pa.int64()),
            ("signup_date", pa.date32()),
            ("region", pa.string()),
            ("acquisition_channel", pa.string()),
            ("birth_year", pa.int64()),
            ("email_opt_in", pa.bool_()),
        ]
    ),
    "products": pa.schema(
        [
            ("product_id", pa.int64()),
            ("category", pa.string()),
            ("brand", pa.string()),
            ("list_price", pa.float64()),
            ("launch_date", pa.date32()),
        ]
    ),
    "orders": pa.schema(
        [
            ("order_id", pa.int64()),
            ("line_number", pa.int64()),
            ("customer_id", pa.int64()),
            ("product_id", pa.int64()),
            ("order_ts", pa.timestamp("us")),
            ("order_date", pa.date32()),
            ("unit_price", pa.float64()),
            ("quantity", pa.int64()),
            ("discount", pa.float64()),
            ("channel", pa.string()),
            ("device", pa.string()),
            ("region", pa.string()),
        ]
    ),
    "web_sessions": pa.schema(
        [
            ("session_id", pa.int64()),
            ("customer_id", pa.int64()),  # NULL for anonymous visitors
            ("session_start", pa.timestamp("us")),
            ("session_date", pa.date32()),
            ("device", pa.string()),
            ("traffic_source", pa.string()),
            ("pages_viewed", pa.int64()),
            ("duration_seconds", pa.int64()),
            ("converted", pa.bool_()),
        ]
    ),
}

PANDAS_DTYPES: dict[str, dict[str, str]] = {
    "customers": {
        "customer_id": "int64",
        "signup_date": "object",
        "region": "object",
        "acquisition_channel": "object",
        "birth_year": "int64",
        "email_opt_in": "bool",
    },
    "products": {
        "product_id": "int64",
        "category": "object",
        "brand": "object",
        "list_price": "float64",
        "launch_date": "object",
    },
    "orders": {
        "order_id": "int64",
        "line_number": "int64",
        "customer_id": "int64",
        "product_id": "int64",
        "order_ts": "datetime64[us]",
        "order_date": "object",
        "unit_price": "float64",
        "quantity": "int64",
        "discount": "float64",
        "channel": "object",
        "device": "object",
        "region": "object",
    },
    "web_sessions": {
        "session_id": "int64",
        "customer_id": "Int64",
        "session_start": "datetime64[us]",
        "session_date": "object",
        "device": "object",
        "traffic_source": "object",
        "pages_viewed": "int64",
        "duration_seconds": "int64",
        "converted": "bool",
    },
}


def arrow_to_pandas(table: pa.Table, name: str):
    """The pandas view of a landing table, with the dtypes of :data:`PANDAS_DTYPES`."""

    frame = table.to_pandas(date_as_object=True, coerce_temporal_nanoseconds=False)
    for column, dtype in PANDAS_DTYPES[name].items():
        if dtype == "Int64":
            values = table.column(column)
            frame[column] = pd.arrays.IntegerArray(
                values.fill_null(0).to_numpy().astype(np.int64),
                values.is_null().to_numpy(zero_copy_only=False).astype(bool),
            )
    return frame


def pandas_metadata(name: str) -> dict[bytes, bytes]:
    """Arrow schema metadata that makes ``pandas.read_parquet`` restore :data:`PANDAS_DTYPES`."""

    schema = ARROW_SCHEMAS[name]
    sample = {
        pa.int64(): 1,
        pa.float64(): 1.0,
        pa.string(): "x",
        pa.bool_(): True,
        pa.date32(): dt.date(2026, 1, 1),
        pa.timestamp("us"): dt.datetime(2026, 1, 1),
    }
    one_row = pa.table({f.name: pa.array([sample[f.type]], f.type) for f in schema}, schema=schema)
    return pa.Schema.from_pandas(arrow_to_pandas(one_row, name), preserve_index=False).metadata
