"""Feature tables: their declarations, how they are built, checked and described.

This is the logic behind the feature assets, testable without Dagster. A feature table is
declared once: a BigQuery SQL file in ``sql/features/`` plus one :class:`FeatureTable` entry.
Its upstream tables are read from the SQL itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd
import sqlglot
from sqlglot import exp
from sqlglot.lineage import lineage
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import build_scope

from lakehouse_ml.backends.warehouse import PartitionWindow, Warehouse, in_window, window_params
from lakehouse_ml.bigquery.sqlfiles import read_sql, referenced_tables
from lakehouse_ml.core.identifiers import check_identifier


@dataclass(frozen=True)
class LabelBand:
    """A plausible range for the rate of a boolean label (share of TRUE among known labels)."""

    column: str
    low: float
    high: float


@dataclass(frozen=True)
class FeatureTable:
    """One feature table: ``sql/features/<name>.sql`` and the checks that hold it to account."""

    name: str
    description: str
    keys: tuple[str, ...]
    required: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    label: LabelBand | None = None
    # Day-partitioned on this DATE column; the SQL then takes @start_date and @end_date.
    partition_column: str | None = None
    # How many days before a partition the SQL reads (for the partition mapping of upstream tables).
    history_days: int = 0

    def __post_init__(self) -> None:
        check_identifier(self.name, "feature table")
        for column in (*self.keys, *self.required):
            check_identifier(column, "column")
        if self.partition_column:
            check_identifier(self.partition_column, "partition column")

    @property
    def sql_path(self) -> str:
        return f"features/{self.name}.sql"

    @property
    def sql(self) -> str:
        return read_sql(self.sql_path)

    @property
    def upstream_tables(self) -> list[str]:
        return referenced_tables(self.sql)


CUSTOMER_FEATURES = FeatureTable(
    name="customer_features",
    description=(
        "One row per customer and weekly snapshot: recency/frequency/monetary, channel and "
        "category mix, engagement, tenure and profile, with the churn label (no order in the "
        "next churn_horizon_days days; NULL while not yet observable)."
    ),
    keys=("customer_id", "snapshot_date"),
    required=(
        "customer_id",
        "snapshot_date",
        "tenure_days",
        "region",
        "recency_days",
        "frequency_orders",
        "monetary_total",
        "top_category",
    ),
    params={"lookback_days": 90, "snapshot_interval_days": 7, "churn_horizon_days": 30},
    # Clean simulated data churns at about 35%, drift scenarios push it to about 70%: the band
    # catches a broken label (all or nothing), not drift, which monitoring measures.
    label=LabelBand(column="churned", low=0.05, high=0.85),
)

TRANSACTION_FEATURES = FeatureTable(
    name="transaction_features",
    description=(
        "One row per order: basket size, amount, discount and price ratio, time of day, and how "
        "the order compares with the customer's previous 90 days. Input to anomaly detection."
    ),
    keys=("order_id",),
    required=("order_id", "order_date", "order_ts", "customer_id", "channel", "order_amount", "n_lines"),
    partition_column="order_date",
    history_days=90,
)

FEATURE_TABLES: tuple[FeatureTable, ...] = (CUSTOMER_FEATURES, TRANSACTION_FEATURES)


# -- building ----------------------------------------------------------------------------------


def build(
    warehouse: Warehouse,
    table: FeatureTable,
    params: Mapping[str, Any] | None = None,
    window: PartitionWindow | None = None,
) -> int:
    """Run the table's SQL into the warehouse (atomically); return the rows written."""
    values = {**table.params, **(params or {})}
    if table.partition_column:
        if window is None:
            raise ValueError(f"{table.name} is partitioned on {table.partition_column}: give a window.")
        values.update(start_date=window.start, end_date=window.end)
    return warehouse.write_query(table.name, table.sql, values, window=window)


# -- checks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any]


def _scoped(table: str, window: PartitionWindow | None) -> exp.Select:
    query = exp.select("*").from_(exp.to_table(check_identifier(table, "table")))
    if window is not None:
        query = query.where(in_window(window))
    return query


def quality_checks(
    warehouse: Warehouse, table: FeatureTable, window: PartitionWindow | None = None
) -> list[CheckOutcome]:
    """Data-quality checks on a feature table (the window of it, when partitioned)."""
    scoped = _scoped(table.name, window).subquery("t")
    outcomes: list[CheckOutcome] = []

    keys = [exp.column(k) for k in table.keys]
    duplicates_sql = (
        exp.select(exp.func("COUNT", exp.Star()).as_("duplicate_keys"))
        .from_(exp.select(*keys).from_(scoped).group_by(*keys).having("COUNT(*) > 1").subquery("d"))
        .sql("bigquery")
    )
    duplicates = int(warehouse.query(duplicates_sql, window_params(window)).iloc[0, 0])
    outcomes.append(
        CheckOutcome(
            name="unique_keys",
            passed=duplicates == 0,
            description=f"({', '.join(table.keys)}) identifies each row.",
            metadata={"key": ", ".join(table.keys), "duplicate_keys": duplicates},
        )
    )

    nulls_sql = (
        exp.select(
            exp.func("COUNT", exp.Star()).as_("__rows"),
            *[exp.func("COUNTIF", exp.column(c).is_(exp.null())).as_(c) for c in table.required],
        )
        .from_(scoped)
        .sql("bigquery")
    )
    counts = warehouse.query(nulls_sql, window_params(window)).iloc[0]
    null_counts = {c: int(counts[c] or 0) for c in table.required}
    offenders = {c: n for c, n in null_counts.items() if n}
    outcomes.append(
        CheckOutcome(
            name="required_columns_not_null",
            passed=not offenders,
            description="Required columns hold no NULL.",
            metadata={
                "rows": int(counts["__rows"]),
                "null_counts": null_counts,
                "columns_with_nulls": ", ".join(offenders) or "none",
            },
        )
    )

    if table.label is not None:
        label = exp.column(table.label.column)
        rate_sql = (
            exp.select(
                exp.func("COUNT", exp.Star()).as_("rows"),
                exp.func("COUNTIF", label.copy().is_(exp.null()).not_()).as_("labelled"),
                exp.func("COUNTIF", exp.EQ(this=label.copy(), expression=exp.true())).as_("positives"),
            )
            .from_(scoped)
            .sql("bigquery")
        )
        row = warehouse.query(rate_sql, window_params(window)).iloc[0]
        labelled, positives = int(row["labelled"]), int(row["positives"])
        rate = positives / labelled if labelled else None
        band = table.label
        passed = rate is not None and band.low <= rate <= band.high
        outcomes.append(
            CheckOutcome(
                name="label_rate_in_band",
                passed=passed,
                description=f"The rate of {band.column} = TRUE lies in [{band.low:.0%}, {band.high:.0%}].",
                metadata={
                    "label": band.column,
                    "rows": int(row["rows"]),
                    "labelled_rows": labelled,
                    "label_rate": round(rate, 4) if rate is not None else "no labelled rows",
                    "band": f"[{band.low}, {band.high}]",
                },
            )
        )
    return outcomes


# -- description -------------------------------------------------------------------------------


def preview(
    warehouse: Warehouse, table: str, window: PartitionWindow | None = None, rows: int = 10
) -> pd.DataFrame:
    return warehouse.query(_scoped(table, window).limit(rows).sql("bigquery"), window_params(window))


def count_rows(warehouse: Warehouse, table: str, window: PartitionWindow | None = None) -> int:
    query = exp.select(exp.func("COUNT", exp.Star())).from_(_scoped(table, window).subquery("t"))
    return int(warehouse.query(query.sql("bigquery"), window_params(window)).iloc[0, 0])


@functools.lru_cache(maxsize=32)
def _lineage_cached(
    sql: str, schema_items: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
) -> dict[str, list[tuple[str, str]]]:
    schema = {table: dict(columns) for table, columns in schema_items}
    query = sqlglot.parse_one(sql, read="bigquery")
    qualified = qualify(query, schema=schema, dialect="bigquery", validate_qualify_columns=False)
    scope = build_scope(qualified)
    result: dict[str, list[tuple[str, str]]] = {}
    for select in qualified.selects:
        column = select.alias_or_name
        node = lineage(column, qualified, schema=schema, dialect="bigquery", scope=scope, copy=False)
        sources = {
            (leaf.source.name, leaf.name.split(".")[-1].strip('"`'))
            for leaf in node.walk()
            if isinstance(leaf.source, exp.Table) and leaf.source.name in schema
        }
        result[column] = sorted(sources)
    return result


def column_lineage(
    sql: str, upstream_schemas: Mapping[str, list[tuple[str, str]]]
) -> dict[str, list[tuple[str, str]]]:
    """For each output column of ``sql``, the ``(table, column)`` pairs it is computed from.

    Derived with sqlglot from the SQL and the upstream tables' schemas. Columns with no upstream
    column (constants) map to an empty list.
    """
    items = tuple(sorted((t, tuple(cols)) for t, cols in upstream_schemas.items()))
    return _lineage_cached(sql, items)
