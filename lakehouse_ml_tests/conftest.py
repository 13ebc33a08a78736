"""Shared fixtures: a small random lakehouse, independent of the simulator, for exact SQL tests."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.backends.local_warehouse import LocalWarehouse

DAY0 = dt.date(2026, 1, 1)
CHANNELS = ["web", "app", "store", "marketplace"]
CATEGORIES = ["apparel", "books", "home", "toys"]


def small_raw_tables(seed: int = 7, customers: int = 25, days: int = 40) -> dict[str, pd.DataFrame]:
    """Random raw tables with the simulator's schema, small enough to check row by row."""
    rng = np.random.default_rng(seed)
    customer_ids = np.arange(1, customers + 1)
    customers_df = pd.DataFrame(
        {
            "customer_id": customer_ids,
            "signup_date": [DAY0 - dt.timedelta(days=int(d)) for d in rng.integers(-20, 400, customers)],
            "region": rng.choice(["north", "south", "east", "west"], customers),
            "acquisition_channel": rng.choice(["organic", "paid_search", "email"], customers),
            "birth_year": rng.integers(1950, 2005, customers),
            "email_opt_in": rng.random(customers) < 0.5,
        }
    )
    products_df = pd.DataFrame(
        {
            "product_id": np.arange(1, 13),
            "category": [CATEGORIES[i % 4] for i in range(12)],
            "brand": [f"brand_{i % 3}" for i in range(12)],
            "list_price": np.round(rng.uniform(5, 200, 12), 2),
            "launch_date": [DAY0 - dt.timedelta(days=500)] * 12,
        }
    )
    lines = []
    order_id = 1000
    for day in range(days):
        date = DAY0 + dt.timedelta(days=day)
        for cid in rng.choice(customer_ids, rng.integers(2, 7), replace=False):
            channel = str(rng.choice(CHANNELS))
            device = "pos" if channel == "store" else str(rng.choice(["desktop", "mobile", "tablet"]))
            ts = dt.datetime.combine(date, dt.time()) + dt.timedelta(seconds=int(rng.integers(0, 86400)))
            for line in range(1, int(rng.integers(1, 4)) + 1):
                pid = int(rng.integers(1, 13))
                discount = float(np.round(rng.choice([0, 0.1, 0.25]), 2))
                lines.append(
                    dict(
                        order_id=order_id,
                        line_number=line,
                        customer_id=int(cid),
                        product_id=pid,
                        order_ts=ts,
                        order_date=date,
                        unit_price=float(np.round(products_df.list_price[pid - 1] * (1 - discount), 2)),
                        quantity=int(rng.integers(1, 4)),
                        discount=discount,
                        channel=channel,
                        device=device,
                        region=customers_df.region[cid - 1],
                    )
                )
            order_id += 1
    orders_df = pd.DataFrame(lines)
    sessions = []
    for sid in range(days * 4):
        date = DAY0 + dt.timedelta(days=int(rng.integers(0, days)))
        anonymous = rng.random() < 0.2
        sessions.append(
            dict(
                session_id=sid + 1,
                customer_id=None if anonymous else int(rng.choice(customer_ids)),
                session_start=dt.datetime.combine(date, dt.time(12)),
                session_date=date,
                device=str(rng.choice(["desktop", "mobile"])),
                traffic_source=str(rng.choice(["organic", "email"])),
                pages_viewed=int(rng.integers(1, 20)),
                duration_seconds=int(rng.integers(0, 900)),
                converted=bool(rng.random() < 0.3),
            )
        )
    sessions_df = pd.DataFrame(sessions)
    sessions_df["customer_id"] = sessions_df["customer_id"].astype("Int64")
    return {
        "raw_customers": customers_df,
        "raw_products": products_df,
        "raw_orders": orders_df,
        "raw_web_sessions": sessions_df,
    }


@pytest.fixture()
def warehouse(tmp_path) -> LocalWarehouse:
    return LocalWarehouse.at(tmp_path / "warehouse.duckdb")


@pytest.fixture()
def small_lakehouse(warehouse) -> tuple[LocalWarehouse, dict[str, pd.DataFrame]]:
    tables = small_raw_tables()
    for name, frame in tables.items():
        warehouse.load_dataframe(frame, name)
    return warehouse, tables
