"""The Cymbal simulator and its landing zone: determinism, schema, integrity, scale, reliability."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakehouse_ml.datagen import (
    ARROW_SCHEMAS,
    DAILY_TABLES,
    MANIFEST,
    PANDAS_DTYPES,
    SCENARIOS,
    TABLES,
    CymbalSimulator,
    DriftScenario,
    SimulationConfig,
    config_for_order_lines,
    landing_file,
    landing_files,
    read_manifest,
    write_landing,
)
from lakehouse_ml.datagen import landing as landing_module

START = dt.date(2026, 1, 1)
SMALL = SimulationConfig(seed=3, start_date=START, days=20, customers=3000, products=120)


def day(d: int) -> dt.date:
    return START + dt.timedelta(days=d)


def all_customers(sim: CymbalSimulator, chunk_size: int = 250_000) -> pd.DataFrame:
    return pd.concat(list(sim.customers(chunk_size)), ignore_index=True)


def all_days(sim: CymbalSimulator, which: str) -> pd.DataFrame:
    get = sim.orders_for_day if which == "orders" else sim.sessions_for_day
    return pd.concat([get(day(d)) for d in range(sim.config.days)], ignore_index=True)


@pytest.fixture(scope="module")
def small_tables() -> dict[str, pd.DataFrame]:
    sim = CymbalSimulator(SMALL)
    return {
        "customers": all_customers(sim),
        "products": sim.products(),
        "orders": all_days(sim, "orders"),
        "web_sessions": all_days(sim, "web_sessions"),
    }


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_gives_identical_frames():
    a, b = CymbalSimulator(SMALL), CymbalSimulator(SMALL)
    pd.testing.assert_frame_equal(all_customers(a), all_customers(b))
    pd.testing.assert_frame_equal(a.products(), b.products())
    for d in (0, 7, 19):
        pd.testing.assert_frame_equal(a.orders_for_day(day(d)), b.orders_for_day(day(d)))
        pd.testing.assert_frame_equal(a.sessions_for_day(day(d)), b.sessions_for_day(day(d)))


def test_different_seed_gives_different_data():
    a = CymbalSimulator(SMALL)
    b = CymbalSimulator(SimulationConfig(**{**SMALL.__dict__, "seed": 4}))
    assert not all_customers(a).equals(all_customers(b))
    assert not a.products().equals(b.products())
    for d in (0, 7):
        assert not a.orders_for_day(day(d)).equals(b.orders_for_day(day(d)))
        assert not a.sessions_for_day(day(d)).equals(b.sessions_for_day(day(d)))


def test_days_are_independent_of_generation_order_and_chunking():
    forward = CymbalSimulator(SMALL)
    frames = {d: (forward.orders_for_day(day(d)), forward.sessions_for_day(day(d))) for d in range(12)}
    backward = CymbalSimulator(SMALL)
    for d in (11, 3, 7, 0):
        pd.testing.assert_frame_equal(backward.sessions_for_day(day(d)), frames[d][1])
        pd.testing.assert_frame_equal(backward.orders_for_day(day(d)), frames[d][0])
    # The customers are the same whatever the chunk size.
    pd.testing.assert_frame_equal(all_customers(forward, 700), all_customers(backward))
    assert [len(c) for c in forward.customers(700)] == [700, 700, 700, 700, 200]


def test_write_landing_is_reproducible(tmp_path):
    config = SimulationConfig(seed=9, start_date=START, days=6, customers=1500, products=60)
    first = write_landing(config, tmp_path / "a")
    second = write_landing(config, tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.parquet"))
    assert files_a == files_b and len(files_a) == 1 + 1 + 2 * 6
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for manifest in (first, second):
        manifest.pop("created_at")
    assert first == second


# ----------------------------------------------------------------------------------------- schema
@pytest.mark.parametrize("table", TABLES)
def test_frames_have_the_exact_columns_and_dtypes(small_tables, table):
    frame = small_tables[table]
    assert list(frame.columns) == list(PANDAS_DTYPES[table])
    assert {c: str(t) for c, t in frame.dtypes.items()} == PANDAS_DTYPES[table]
    assert list(frame.columns) == ARROW_SCHEMAS[table].names
    for column, dtype in PANDAS_DTYPES[table].items():
        if dtype == "object":
            kind = dt.date if ARROW_SCHEMAS[table].field(column).type == pa.date32() else str
            assert frame[column].map(type).eq(kind).all(), column


def test_keys_are_unique(small_tables):
    orders, sessions = small_tables["orders"], small_tables["web_sessions"]
    assert not orders.duplicated(["order_id", "line_number"]).any()
    assert sessions.session_id.is_unique
    assert small_tables["customers"].customer_id.tolist() == list(range(1, SMALL.customers + 1))
    assert small_tables["products"].product_id.tolist() == list(range(1, SMALL.products + 1))
    # Line numbers run 1..k within an order; an order belongs to one customer, channel and time.
    lines = orders.groupby("order_id").line_number.agg(["min", "max", "count"])
    assert (lines["min"] == 1).all() and (lines["max"] == lines["count"]).all() and lines["max"].le(5).all()
    per_order = orders.groupby("order_id")[["customer_id", "channel", "device", "order_ts"]].nunique()
    assert (per_order == 1).all().all()
    # Ids are YYYYMMDD * 10**8 + rank within the day, ranked by time.
    date_part = orders.order_id // 10**8
    expected = orders.order_date.map(lambda d: d.year * 10_000 + d.month * 100 + d.day)
    assert (date_part == expected).all()
    first_lines = orders[orders.line_number == 1]
    assert first_lines.sort_values("order_id").order_ts.is_monotonic_increasing


def test_referential_integrity_and_value_domains(small_tables):
    customers = small_tables["customers"].set_index("customer_id")
    products = small_tables["products"].set_index("product_id")
    orders, sessions = small_tables["orders"], small_tables["web_sessions"]
    assert orders.customer_id.isin(customers.index).all()
    assert orders.product_id.isin(products.index).all()
    known = sessions.customer_id.dropna()
    assert known.isin(customers.index).all()

    # Customers order (and browse as themselves) only from their sign-up day on, in their region.
    assert (orders.order_date >= orders.customer_id.map(customers.signup_date)).all()
    assert (sessions.loc[known.index, "session_date"] >= known.map(customers.signup_date)).all()
    assert (orders.region == orders.customer_id.map(customers.region)).all()
    # Products are sold only once launched.
    assert (orders.order_date >= orders.product_id.map(products.launch_date)).all()

    assert ((orders.device == "pos") == (orders.channel == "store")).all()
    assert set(orders.channel) == {"web", "app", "store", "marketplace"}
    assert set(orders.device) == {"desktop", "mobile", "tablet", "pos"}
    assert set(orders.region) <= {"north", "south", "east", "west"}
    assert orders.quantity.between(1, 3).all()
    assert orders.discount.between(0, 0.6).all() and (orders.discount > 0).any()
    assert (orders.unit_price > 0).all()
    assert (orders.order_ts.dt.date == orders.order_date).all()

    assert set(customers.region) == {"north", "south", "east", "west"}
    assert set(customers.acquisition_channel) == {"organic", "paid_search", "social", "referral", "email"}
    assert customers.birth_year.between(1940, 2010).all()
    assert customers.signup_date.min() >= START - dt.timedelta(days=731)
    assert customers.signup_date.max() <= SMALL.end_date
    assert customers.signup_date.is_monotonic_increasing  # ids are given at sign-up
    assert len(set(products.category)) == 8 and (products.list_price > 0).all()
    assert products.launch_date.max() <= SMALL.end_date

    assert (sessions.session_start.dt.date == sessions.session_date).all()
    assert sessions.pages_viewed.ge(1).all() and sessions.duration_seconds.ge(0).all()
    assert set(sessions.device) == {"desktop", "mobile", "tablet"}
    assert set(sessions.traffic_source) == {"organic", "paid_search", "email", "social", "direct"}
    anonymous = sessions.customer_id.isna()
    assert 0.1 < anonymous.mean() < 0.5 and not sessions.converted[anonymous].any()


def test_converted_sessions_match_orders(small_tables):
    orders, sessions = small_tables["orders"], small_tables["web_sessions"]
    ordered = set(zip(orders.customer_id, orders.order_date))
    known = sessions.dropna(subset=["customer_id"])
    did_order = [(int(c), d) in ordered for c, d in zip(known.customer_id, known.session_date)]
    assert (known.converted == np.array(did_order)).all()
    # Every web or app order comes with a converted session on the order's device.
    online = orders[orders.channel.isin(["web", "app"]) & (orders.line_number == 1)]
    with_session = set(zip(known.customer_id.astype(int), known.session_date, known.device))
    assert all(k in with_session for k in zip(online.customer_id, online.order_date, online.device))
    # Sessions outnumber orders a few times.
    assert 2 < len(sessions) / orders.order_id.nunique() < 8


def test_behaviour_is_plausible(small_tables):
    orders = small_tables["orders"]
    sim = CymbalSimulator(SMALL)
    latent = sim.latent_frame()
    assert 0.04 < latent.order_rate.mean() < 0.06
    # Latent price sensitivity shows in the discounts a customer takes.
    per_customer = orders.groupby("customer_id").discount.apply(lambda d: (d > 0).mean())
    sensitivity = latent.set_index("customer_id").price_sensitivity.reindex(per_customer.index)
    assert np.corrcoef(per_customer, sensitivity)[0, 1] > 0.4
    # The preferred channel shows in the channel mix.
    preferred = latent.set_index("customer_id").preferred_channel
    assert (orders.channel == orders.customer_id.map(preferred)).mean() > 0.6


def test_scenarios_leave_days_before_their_start_untouched():
    start = day(12)
    base = CymbalSimulator(SMALL)
    for name in SCENARIOS:
        drifted = CymbalSimulator(
            SimulationConfig(**{**SMALL.__dict__, "scenarios": (DriftScenario(name, start),)})
        )
        for d in (0, 11):
            pd.testing.assert_frame_equal(drifted.orders_for_day(day(d)), base.orders_for_day(day(d)))
            pd.testing.assert_frame_equal(drifted.sessions_for_day(day(d)), base.sessions_for_day(day(d)))
        assert not drifted.orders_for_day(day(15)).equals(base.orders_for_day(day(15)))


def test_new_region_adds_central_customers_from_its_start():
    start = day(10)
    config = SimulationConfig(**{**SMALL.__dict__, "scenarios": (DriftScenario("new_region", start, 0.5),)})
    customers = all_customers(CymbalSimulator(config))
    central = customers[customers.region == "central"]
    assert len(central) == round(0.3 * 0.5 * SMALL.customers)
    assert central.customer_id.min() == SMALL.customers + 1 and customers.customer_id.is_unique
    assert central.signup_date.min() >= start and central.signup_date.max() <= config.end_date
    assert set(customers.region[: SMALL.customers]) == {"north", "south", "east", "west"}
    assert central.signup_date.is_monotonic_increasing


# ------------------------------------------------------------------------------------------ scale
@pytest.mark.parametrize(("target", "days"), [(40_000, 60), (250_000, 120)])
def test_for_order_lines_hits_the_target(target, days):
    config = config_for_order_lines(target, seed=1, start_date=START, days=days)
    sim = CymbalSimulator(config)
    lines = sum(sim.orders_table(day(d)).num_rows for d in range(days))
    assert abs(lines / target - 1) <= 0.15, (lines, target, config.customers)


def test_for_order_lines_accounts_for_scenarios():
    scenario = DriftScenario("new_region", day(30))
    config = config_for_order_lines(60_000, seed=2, start_date=START, days=60, scenarios=(scenario,))
    sim = CymbalSimulator(config)
    lines = sum(sim.orders_table(day(d)).num_rows for d in range(60))
    assert abs(lines / 60_000 - 1) <= 0.15
    with pytest.raises(ValueError, match="customers"):
        config_for_order_lines(1000, customers=50)


def _daily_peak_bytes(config: SimulationConfig, landing_dir: Path) -> int:
    """Peak memory while the days are generated and written: Python/numpy (tracemalloc) + Arrow."""
    arrow = [0]

    def progress(table, done, total):
        if table == "products":  # the days come next: measure from here
            tracemalloc.reset_peak()
        arrow.append(pa.total_allocated_bytes())

    tracemalloc.start()
    try:
        write_landing(config, landing_dir, progress)
        return tracemalloc.get_traced_memory()[1] + max(arrow)
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_days_grow(tmp_path):
    base = {"seed": 1, "start_date": START, "customers": 40_000, "products": 200}
    short = _daily_peak_bytes(SimulationConfig(days=10, **base), tmp_path / "short")
    long = _daily_peak_bytes(SimulationConfig(days=40, **base), tmp_path / "long")
    rows = read_manifest(tmp_path / "long")["row_counts"]
    # Holding all 40 days at once would take several times the peak of one day.
    assert rows["orders"] > 50_000 and rows["web_sessions"] > 100_000
    assert long / short < 1.3, (short, long)


# ----------------------------------------------------------------------------------- landing zone
def test_landing_layout_manifest_and_round_trip(tmp_path):
    config = SimulationConfig(seed=2, start_date=START, days=5, customers=1200, products=50)
    calls = []
    manifest = write_landing(config, tmp_path, progress=lambda t, done, total: calls.append((t, done, total)))
    assert read_manifest(tmp_path) == manifest
    assert json.loads((tmp_path / MANIFEST).read_text()) == manifest
    assert manifest["config"] == config.to_dict()
    assert SimulationConfig.from_dict(manifest["config"]) == config
    assert manifest["end_date"] == "2026-01-05"
    assert ("customers", 1, 1) in calls and ("products", 1, 1) in calls
    for table in DAILY_TABLES:
        done = [c[1] for c in calls if c[0] == table]
        assert done == [1, 2, 3, 4, 5] and all(c[2] == 5 for c in calls if c[0] == table)

    sim = CymbalSimulator(config)
    assert (
        landing_file(tmp_path, "orders", day(2))
        == tmp_path / "orders" / "dt=2026-01-03" / "part-00000.parquet"
    )
    assert landing_files(tmp_path, "customers") == [tmp_path / "customers" / "part-00000.parquet"]
    assert len(landing_files(tmp_path, "web_sessions")) == 5
    assert landing_files(tmp_path, "orders", day(30)) == []
    for table in TABLES:
        files = landing_files(tmp_path, table)
        schema = pq.read_schema(files[0])
        assert schema.remove_metadata() == ARROW_SCHEMAS[table]
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        assert total == manifest["row_counts"][table]
    # Reading a file back with pandas gives exactly the simulator's frame.
    pd.testing.assert_frame_equal(
        pd.read_parquet(landing_file(tmp_path, "orders", day(3))), sim.orders_for_day(day(3))
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(landing_file(tmp_path, "web_sessions", day(1))), sim.sessions_for_day(day(1))
    )
    pd.testing.assert_frame_equal(pd.read_parquet(landing_file(tmp_path, "products")), sim.products())
    pd.testing.assert_frame_equal(pd.read_parquet(landing_file(tmp_path, "customers")), all_customers(sim))
    assert manifest["daily_row_counts"]["orders"]["2026-01-04"] == len(sim.orders_for_day(day(3)))


def test_customers_are_split_into_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(landing_module, "CUSTOMER_PART_ROWS", 500)
    config = SimulationConfig(seed=2, start_date=START, days=2, customers=1200, products=50)
    write_landing(config, tmp_path)
    parts = landing_files(tmp_path, "customers")
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(frame, all_customers(CymbalSimulator(config)))


def test_rewriting_replaces_previous_data_cleanly(tmp_path):
    write_landing(SimulationConfig(seed=1, start_date=START, days=6, customers=800, products=40), tmp_path)
    (tmp_path / "orders" / "dt=2026-01-02" / ".part-00000.parquet.tmp-1-dead").write_bytes(b"half")
    smaller = SimulationConfig(seed=2, start_date=day(1), days=3, customers=500, products=30)
    manifest = write_landing(smaller, tmp_path)
    assert sorted(p.parent.name for p in landing_files(tmp_path, "orders")) == [
        "dt=2026-01-02",
        "dt=2026-01-03",
        "dt=2026-01-04",
    ]
    assert sorted(p.name for p in (tmp_path / "orders").iterdir()) == [
        "dt=2026-01-02",
        "dt=2026-01-03",
        "dt=2026-01-04",
    ]
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert manifest["config"]["seed"] == 2 and read_manifest(tmp_path)["row_counts"]["customers"] == 500


def test_a_crash_leaves_no_manifest_and_no_broken_file(tmp_path, monkeypatch):
    config = SimulationConfig(seed=1, start_date=START, days=8, customers=800, products=40)
    write_landing(config, tmp_path)
    real_write = pq.write_table
    calls = {"n": 0}

    def crashing_write(table, where, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            Path(where).write_bytes(b"PAR1 truncated")  # a partial temp file, then the crash
            raise OSError("disk full")
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(landing_module.pq, "write_table", crashing_write)
    with pytest.raises(OSError, match="disk full"):
        write_landing(
            SimulationConfig(seed=2, start_date=START, days=8, customers=800, products=40), tmp_path
        )
    monkeypatch.setattr(landing_module.pq, "write_table", real_write)

    with pytest.raises(FileNotFoundError, match="run `lakehouse-ml generate` first"):
        read_manifest(tmp_path)
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    for path in tmp_path.rglob("*.parquet"):
        pq.read_table(path)  # every file under a final name is complete
    manifest = write_landing(config, tmp_path)
    assert read_manifest(tmp_path) == manifest


def test_a_second_writer_is_refused(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / landing_module.LOCK, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="Another process is writing"):
            write_landing(SimulationConfig(days=2, customers=100), tmp_path)
    assert not (tmp_path / MANIFEST).exists()


def test_read_manifest_without_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No landing data at .*: run `lakehouse-ml generate` first"):
        read_manifest(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------- bad input
def test_scenario_text_parses_and_round_trips():
    assert DriftScenario.parse("price_shock@2026-04-01") == DriftScenario(
        "price_shock", dt.date(2026, 4, 1), 1.0
    )
    parsed = DriftScenario.parse(" channel_shift@2026-02-03:1.5 ")
    assert parsed == DriftScenario("channel_shift", dt.date(2026, 2, 3), 1.5)
    assert DriftScenario.parse(str(parsed)) == parsed
    config = SimulationConfig(scenarios=("new_region@2026-03-01:0.5",))
    assert config.scenarios == (DriftScenario("new_region", dt.date(2026, 3, 1), 0.5),)
    assert SimulationConfig.from_dict(config.to_dict()) == config
    assert set(SCENARIOS) == {"price_shock", "channel_shift", "new_region"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: DriftScenario("price_hike", dt.date(2026, 4, 1)),
            "known scenarios: channel_shift, new_region, price_shock",
        ),
        (lambda: DriftScenario.parse("price_hike@2026-04-01"), "Unknown drift scenario 'price_hike'"),
        (lambda: DriftScenario.parse("price_shock"), "expected NAME@YYYY-MM-DD"),
        (lambda: DriftScenario.parse("price_shock@2026-13-01"), "not a valid date"),
        (lambda: DriftScenario.parse("price_shock@2026-04-01:strong"), "intensity 'strong' is not a number"),
        (lambda: DriftScenario.parse("price_shock@2026-04-01:0"), "intensity must be > 0"),
        (lambda: DriftScenario("price_shock", dt.date(2026, 4, 1), -1.0), "intensity must be > 0"),
        (
            lambda: SimulationConfig(days=30, scenarios=(DriftScenario.parse("price_shock@2026-04-01"),)),
            r"starts outside the simulated window 2026-01-01\.\.2026-01-30",
        ),
        (
            lambda: SimulationConfig(scenarios=("price_shock@2025-12-31",)),
            "starts outside the simulated window",
        ),
        (
            lambda: SimulationConfig(scenarios=("price_shock@2026-02-01", "price_shock@2026-03-01")),
            "given twice",
        ),
        (lambda: SimulationConfig(days=0), "days must be >= 1"),
        (lambda: SimulationConfig(days=5000), "days must be >= 1 and <= 3650"),
        (lambda: SimulationConfig(customers=5), "customers must be >= 10"),
        (lambda: SimulationConfig(products=3), "products must be >= 8"),
        (lambda: SimulationConfig(seed=-1), "seed must be a non-negative integer"),
        (lambda: SimulationConfig(start_date="2026-02-30"), "not a date"),
        (lambda: config_for_order_lines(0), "order_lines must be a positive integer"),
        (
            lambda: CymbalSimulator(SimulationConfig(days=3, customers=20)).orders_for_day(
                dt.date(2026, 1, 4)
            ),
            "outside the simulated window",
        ),
        (lambda: landing_file(Path("x"), "orders"), "daily table: give the day"),
        (lambda: landing_file(Path("x"), "customers", dt.date(2026, 1, 1)), "not a daily table"),
        (lambda: landing_files(Path("x"), "refunds"), "Unknown landing table 'refunds'"),
    ],
)
def test_bad_input_gets_a_clear_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()
