"""Every file in sql/features/ is translated to DuckDB, run, and checked row by row against an
independent pandas computation of the same definitions."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.backends.warehouse import PartitionWindow
from lakehouse_ml.bigquery.sqlfiles import sql_files
from lakehouse_ml.engine.translate import translate
from lakehouse_ml.lifecycle import features
from lakehouse_ml_tests.conftest import DAY0


def reference_customer_features(
    t: dict[str, pd.DataFrame], lookback: int, interval: int, horizon: int
) -> pd.DataFrame:
    orders = t["raw_orders"].merge(t["raw_products"][["product_id", "category"]], on="product_id")
    sessions = t["raw_web_sessions"].dropna(subset=["customer_id"])
    customers = t["raw_customers"].set_index("customer_id")
    first, last = orders.order_date.min(), orders.order_date.max()
    rows = []
    snapshot = first + dt.timedelta(days=lookback)
    while snapshot <= last + dt.timedelta(days=1):
        start = snapshot - dt.timedelta(days=lookback)
        window = orders[(orders.order_date >= start) & (orders.order_date < snapshot)]
        for cid, g in window.groupby("customer_id"):
            c = customers.loc[cid]
            if not c.signup_date < snapshot:
                continue
            n_orders = g.order_id.nunique()
            revenue = float((g.unit_price * g.quantity).sum())
            cats = g.category.value_counts()
            cats = cats.sort_index().sort_values(ascending=False, kind="stable")
            s = sessions[
                (sessions.customer_id == cid)
                & (sessions.session_date >= start)
                & (sessions.session_date < snapshot)
            ]
            future = orders[
                (orders.customer_id == cid)
                & (orders.order_date >= snapshot)
                & (orders.order_date < snapshot + dt.timedelta(days=horizon))
            ]
            observable = snapshot + dt.timedelta(days=horizon - 1) <= last
            rows.append(
                dict(
                    customer_id=cid,
                    snapshot_date=snapshot,
                    tenure_days=(snapshot - c.signup_date).days,
                    age=snapshot.year - c.birth_year,
                    region=c.region,
                    acquisition_channel=c.acquisition_channel,
                    email_opt_in=bool(c.email_opt_in),
                    recency_days=(snapshot - g.order_date.max()).days,
                    frequency_orders=n_orders,
                    monetary_total=revenue,
                    avg_order_value=revenue / n_orders,
                    units_per_order=g.quantity.sum() / n_orders,
                    avg_discount=g.discount.mean(),
                    active_days=g.order_date.nunique(),
                    share_web=(g.channel == "web").mean(),
                    share_app=(g.channel == "app").mean(),
                    share_store=(g.channel == "store").mean(),
                    share_marketplace=(g.channel == "marketplace").mean(),
                    share_mobile=(g.device == "mobile").mean(),
                    distinct_categories=len(cats),
                    top_category=cats.index[0],
                    top_category_share=cats.iloc[0] / len(g),
                    sessions=len(s),
                    pages_per_session=s.pages_viewed.sum() / len(s) if len(s) else 0.0,
                    avg_session_seconds=s.duration_seconds.sum() / len(s) if len(s) else 0.0,
                    session_conversion_rate=s.converted.sum() / len(s) if len(s) else 0.0,
                    churned=(len(future) == 0) if observable else None,
                )
            )
        snapshot += dt.timedelta(days=interval)
    return pd.DataFrame(rows)


def reference_transaction_features(t: dict[str, pd.DataFrame], start: dt.date, end: dt.date) -> pd.DataFrame:
    lines = t["raw_orders"].merge(
        t["raw_products"][["product_id", "category", "list_price"]], on="product_id"
    )
    lines = lines[(lines.order_date >= start - dt.timedelta(days=90)) & (lines.order_date <= end)]
    lines = lines.assign(amount=lines.unit_price * lines.quantity, ratio=lines.unit_price / lines.list_price)
    orders = (
        lines.groupby("order_id")
        .agg(
            customer_id=("customer_id", "first"),
            order_date=("order_date", "first"),
            order_ts=("order_ts", "first"),
            channel=("channel", "first"),
            device=("device", "first"),
            region=("region", "first"),
            n_lines=("line_number", "size"),
            total_quantity=("quantity", "sum"),
            order_amount=("amount", "sum"),
            avg_discount=("discount", "mean"),
            max_unit_price=("unit_price", "max"),
            avg_price_ratio=("ratio", "mean"),
            n_categories=("category", "nunique"),
        )
        .reset_index()
    )
    signup = t["raw_customers"].set_index("customer_id").signup_date
    rows = []
    for _, o in orders[(orders.order_date >= start) & (orders.order_date <= end)].iterrows():
        mine = orders[orders.customer_id == o.customer_id]
        history = mine[
            (mine.order_ts >= o.order_ts - pd.Timedelta(seconds=7776000))
            & (mine.order_ts <= o.order_ts - pd.Timedelta(seconds=1))
        ]
        earlier = mine[
            (mine.order_ts < o.order_ts) | ((mine.order_ts == o.order_ts) & (mine.order_id < o.order_id))
        ]
        previous = earlier.order_ts.max() if len(earlier) else None
        within = previous is not None and previous >= o.order_ts - pd.Timedelta(days=90)
        rows.append(
            dict(
                o.to_dict(),
                hour_of_day=o.order_ts.hour,
                day_of_week=(o.order_date.isoweekday() % 7) + 1,  # BigQuery: Sunday = 1
                customer_orders_90d=len(history),
                amount_vs_customer_avg=(o.order_amount / history.order_amount.mean())
                if len(history)
                else None,
                days_since_previous_order=((o.order_ts - previous).total_seconds() // 1) / 86400.0
                if within
                else None,
                customer_tenure_days=(o.order_date - signup[o.customer_id]).days,
            )
        )
    return pd.DataFrame(rows)


def _assert_same(actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    assert len(actual) == len(expected) > 0
    assert set(expected.columns) <= set(actual.columns)
    actual = actual[list(expected.columns)].sort_values(keys).reset_index(drop=True)
    expected = expected.sort_values(keys).reset_index(drop=True)
    for column in expected.columns:
        a, e = actual[column], expected[column]
        if pd.api.types.is_numeric_dtype(e) and not pd.api.types.is_bool_dtype(e):
            np.testing.assert_allclose(a.astype(float), e.astype(float), rtol=1e-9, atol=1e-9, err_msg=column)
        else:
            got = [
                None
                if pd.isna(v)
                else (v.date() if isinstance(v, pd.Timestamp) and column.endswith("date") else v)
                for v in a
            ]
            want = [None if v is None or (not isinstance(v, str) and pd.isna(v)) else v for v in e]
            assert got == want, column


def check_customer_features(warehouse, tables):
    params = {"lookback_days": 14, "snapshot_interval_days": 6, "churn_horizon_days": 9}
    rows = features.build(warehouse, features.CUSTOMER_FEATURES, params)
    actual = warehouse.query("SELECT * FROM customer_features")
    assert rows == len(actual)
    expected = reference_customer_features(tables, 14, 6, 9)
    _assert_same(actual, expected, ["customer_id", "snapshot_date"])
    # Both kinds of label occur, and unobservable ones are NULL.
    assert actual.churned.isna().any() and (actual.churned == True).any() and (actual.churned == False).any()  # noqa: E712


def check_transaction_features(warehouse, tables):
    window = PartitionWindow("order_date", DAY0 + dt.timedelta(days=20), DAY0 + dt.timedelta(days=24))
    features.build(warehouse, features.TRANSACTION_FEATURES, window=window)
    actual = warehouse.query("SELECT * FROM transaction_features")
    expected = reference_transaction_features(tables, window.start, window.end)
    _assert_same(actual, expected, ["order_id"])
    assert actual.days_since_previous_order.notna().any() and actual.amount_vs_customer_avg.notna().any()
    # Computing day by day gives the same rows as the range at once.
    warehouse.drop_table("transaction_features")
    for day in window.days():
        features.build(
            warehouse, features.TRANSACTION_FEATURES, window=PartitionWindow("order_date", day, day)
        )
    per_day = warehouse.query("SELECT * FROM transaction_features")
    _assert_same(per_day, expected, ["order_id"])


CHECKERS = {
    "customer_features.sql": check_customer_features,
    "transaction_features.sql": check_transaction_features,
}


@pytest.mark.parametrize("path", sql_files("features"), ids=lambda p: p.name)
def test_feature_sql_translates_and_matches_reference(path, small_lakehouse):
    warehouse, tables = small_lakehouse
    translated = translate(path.read_text())
    assert len(translated) == 1 and translated[0].returns_rows
    assert "@" not in translated[0].duckdb_sql  # every parameter became a DuckDB parameter
    assert path.name in CHECKERS, f"{path.name} has no reference test: add one to CHECKERS"
    CHECKERS[path.name](warehouse, tables)


def test_every_feature_table_has_a_sql_file():
    names = {p.stem for p in sql_files("features")}
    assert {t.name for t in features.FEATURE_TABLES} == names


def test_lineage_is_derived_from_sql(small_lakehouse):
    warehouse, _ = small_lakehouse
    upstream = {name: warehouse.table_schema(name) for name in features.TRANSACTION_FEATURES.upstream_tables}
    lineage = features.column_lineage(features.TRANSACTION_FEATURES.sql, upstream)
    assert lineage["order_amount"] == [("raw_orders", "quantity"), ("raw_orders", "unit_price")]
    assert lineage["customer_tenure_days"] == [("raw_customers", "signup_date"), ("raw_orders", "order_date")]
    assert ("raw_products", "list_price") in lineage["avg_price_ratio"]
