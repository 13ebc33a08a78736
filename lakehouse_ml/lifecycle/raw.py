"""The raw tables: the Cymbal simulator's landing files as warehouse tables (orders and web
sessions day-partitioned)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RawTable:
    name: str
    landing: str
    description: str
    partition_column: str | None = None


RAW_TABLES = (
    RawTable(
        "raw_customers", "customers", "Cymbal customers: signup date, region, acquisition channel, profile."
    ),
    RawTable("raw_products", "products", "Cymbal product catalogue: category, brand, list price."),
    RawTable(
        "raw_orders",
        "orders",
        "Order lines: price paid, quantity, discount, channel, device and region, one row per line.",
        partition_column="order_date",
    ),
    RawTable(
        "raw_web_sessions",
        "web_sessions",
        "Web and app sessions: device, traffic source, pages, duration, conversion.",
        partition_column="session_date",
    ),
)
