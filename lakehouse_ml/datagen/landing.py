"""The landing zone: the simulator's tables as Parquet files, ready for the raw assets to load.

Layout under ``landing_dir``::

    _manifest.json                                 written last: config, row counts, created time
    customers/part-00000.parquet, part-00001...    250,000 customers per part
    products/part-00000.parquet
    orders/dt=YYYY-MM-DD/part-00000.parquet        one file per day (also for a day without rows)
    web_sessions/dt=YYYY-MM-DD/part-00000.parquet

Every file is written to a temporary name in its own directory, flushed to disk and renamed
(``os.replace``), so a crash never leaves a truncated file under a final name. A new generation
first removes the manifest, then replaces the files, deletes what the previous generation left
over (files of days no longer in the window, extra customer parts) and finally writes the
manifest atomically: a landing zone with a manifest is complete and consistent. One writer at a
time: a second concurrent ``write_landing`` on the same directory fails fast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse_ml.core.atomic import fsync_dir, replacing, write_bytes
from lakehouse_ml.datagen.config import SimulationConfig
from lakehouse_ml.datagen.scenarios import SCENARIOS
from lakehouse_ml.datagen.schema import DAILY_TABLES, TABLES, pandas_metadata
from lakehouse_ml.datagen.simulator import CymbalSimulator

MANIFEST = "_manifest.json"
LOCK = ".write.lock"
FORMAT_VERSION = 1
CUSTOMER_PART_ROWS = 250_000
PARQUET_COMPRESSION = "snappy"
WRITE_QUEUE = 2

Progress = Callable[[str, int, int], None]

try:  # POSIX only: the landing zone's cross-process lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"Unknown landing table {table!r}; tables are: {', '.join(TABLES)}")


def _part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def landing_file(landing_dir: Path, table: str, day: dt.date | None = None) -> Path:
    """The (first) file of ``table``; daily tables need ``day``, dimension tables take none."""
    _check_table(table)
    landing_dir = Path(landing_dir)
    if table in DAILY_TABLES:
        if day is None:
            raise ValueError(f"{table} is a daily table: give the day of the file")
        if isinstance(day, dt.datetime):
            day = day.date()
        return landing_dir / table / f"dt={day.isoformat()}" / _part_name(0)
    if day is not None:
        raise ValueError(f"{table} is not a daily table: it has no file per day")
    return landing_dir / table / _part_name(0)


def landing_files(landing_dir: Path, table: str, day: dt.date | None = None) -> list[Path]:
    """The existing files of ``table`` (of ``day`` for a daily table; all days when None), sorted.

    Returns an empty list when there are none.
    """
    _check_table(table)
    base = Path(landing_dir) / table
    if table in DAILY_TABLES:
        if day is not None:
            return sorted(landing_file(landing_dir, table, day).parent.glob("part-*.parquet"))
        return sorted(base.glob("dt=*/part-*.parquet"))
    if day is not None:
        raise ValueError(f"{table} is not a daily table: it has no file per day")
    return sorted(base.glob("part-*.parquet"))


def read_manifest(landing_dir: Path) -> dict:
    """The manifest of a complete landing zone."""
    path = Path(landing_dir) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"No landing data at {Path(landing_dir)}: run `lakehouse-ml generate` first"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"Landing manifest {path} is not valid JSON ({err}): run `lakehouse-ml generate` again"
        ) from None


def _write_parquet(table: pa.Table, path: Path, metadata: dict) -> None:
    with replacing(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp, compression=PARQUET_COMPRESSION)


def _write_json(data: dict, path: Path) -> None:
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


@contextlib.contextmanager
def _exclusive(landing_dir: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - not POSIX: no cross-process lock
        yield
        return
    with open(landing_dir / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"Another process is writing landing data to {landing_dir}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_stale(landing_dir: Path, table: str, keep: set[Path]) -> None:
    """Delete files of ``table`` that this generation did not write (and temp files of crashed runs)."""
    base = landing_dir / table
    if not base.exists():
        return
    for path in sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds when empty
        elif path not in keep:
            path.unlink()


def write_landing(config: SimulationConfig, landing_dir: Path, progress: Progress | None = None) -> dict:
    """Simulate ``config`` and write every table to ``landing_dir``; returns the manifest.

    ``progress(table, done, total)`` is called after each unit written: customer parts,
    the products file, and each day of orders and web sessions.
    """
    if not isinstance(config, SimulationConfig):
        raise TypeError(f"config must be a SimulationConfig, got {type(config).__name__}")
    landing_dir = Path(landing_dir)
    landing_dir.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda table, done, total: None)
    with _exclusive(landing_dir):
        (landing_dir / MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest lands
        fsync_dir(landing_dir)
        sim = CymbalSimulator(config)
        metadata = {table: pandas_metadata(table) for table in TABLES}
        written: dict[str, set[Path]] = {table: set() for table in TABLES}
        rows = {table: 0 for table in TABLES}
        daily_rows: dict[str, dict[str, int]] = {table: {} for table in DAILY_TABLES}

        # One writer thread: day D+1 is generated while day D is compressed and written (both
        # release the GIL). At most WRITE_QUEUE tables are in flight, so memory stays flat.
        pending: deque = deque()

        def finish(entry) -> None:
            future, name, path, num_rows, unit = entry
            future.result()
            written[name].add(path)
            rows[name] += num_rows
            if name in daily_rows:
                daily_rows[name][unit[0]] = num_rows
            report(name, unit[1], unit[2])

        def submit(name: str, table: pa.Table, path: Path, unit: tuple) -> None:
            pending.append(
                (pool.submit(_write_parquet, table, path, metadata[name]), name, path, table.num_rows, unit)
            )
            while len(pending) > WRITE_QUEUE:
                finish(pending.popleft())

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="landing-writer") as pool:
            parts = max(1, -(-sim.n_customers // CUSTOMER_PART_ROWS))
            for index, table in enumerate(sim.customer_tables(CUSTOMER_PART_ROWS)):
                submit(
                    "customers",
                    table,
                    landing_dir / "customers" / _part_name(index),
                    (None, index + 1, parts),
                )
            submit("products", sim.products_table(), landing_file(landing_dir, "products"), (None, 1, 1))
            for d in range(config.days):
                day = config.start_date + dt.timedelta(days=d)
                unit = (day.isoformat(), d + 1, config.days)
                submit("orders", sim.orders_table(day), landing_file(landing_dir, "orders", day), unit)
                submit(
                    "web_sessions",
                    sim.sessions_table(day),
                    landing_file(landing_dir, "web_sessions", day),
                    unit,
                )
            while pending:
                finish(pending.popleft())

        for table in TABLES:
            _remove_stale(landing_dir, table, written[table])
            fsync_dir(landing_dir / table)

        manifest = {
            "format_version": FORMAT_VERSION,
            "generator": "lakehouse_ml.datagen.CymbalSimulator",
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "start_date": config.start_date.isoformat(),
            "end_date": config.end_date.isoformat(),
            "scenarios": [{**s.to_dict(), "description": SCENARIOS[s.name]} for s in config.scenarios],
            "customers_total": sim.n_customers,
            "row_counts": rows,
            "daily_row_counts": daily_rows,
            "files": {table: len(written[table]) for table in TABLES},
            "layout": {
                "customers": "customers/part-NNNNN.parquet",
                "products": "products/part-00000.parquet",
                "orders": "orders/dt=YYYY-MM-DD/part-00000.parquet",
                "web_sessions": "web_sessions/dt=YYYY-MM-DD/part-00000.parquet",
            },
        }
        _write_json(manifest, landing_dir / MANIFEST)
    return manifest
