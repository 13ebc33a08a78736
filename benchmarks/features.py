"""Benchmark: simulator generation + materialization of every raw and feature asset, at 1M order lines.

Target (issue 2): under 60 s on the 2-core machine, with peak memory recorded.

Also runs a baseline in the same process: the same feature SQL, already translated, on a bare
DuckDB connection reading the same landing files (no Dagster, no sqlglot, no checks or metadata).
The ratio pipeline / baseline is the cost of the Dagster layer around the SQL.

    python benchmarks/features.py [--order-lines 1000000] [--record]

``--record`` rewrites this benchmark's section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakRSS, print_figures, record_figures  # noqa: E402

from lakehouse_ml.core.settings import load_settings  # noqa: E402
from lakehouse_ml.datagen import SimulationConfig, config_for_order_lines, landing_files, write_landing  # noqa: E402
from lakehouse_ml.engine.translate import translate  # noqa: E402
from lakehouse_ml.lifecycle import features  # noqa: E402


def baseline(landing: Path, config: SimulationConfig, database: Path) -> float:
    """Bare DuckDB: load the landing files and run the translated feature SQL, nothing else."""
    start = time.perf_counter()
    conn = duckdb.connect(str(database))
    for table, landing_name in [
        ("raw_customers", "customers"),
        ("raw_products", "products"),
        ("raw_orders", "orders"),
        ("raw_web_sessions", "web_sessions"),
    ]:
        if landing_name in ("orders", "web_sessions"):
            files = [
                str(f)
                for d in range(config.days)
                for f in landing_files(landing, landing_name, config.start_date + dt.timedelta(days=d))
            ]
        else:
            files = [str(f) for f in landing_files(landing, landing_name)]
        conn.execute(
            f"CREATE TABLE {table} AS SELECT * FROM read_parquet($f, hive_partitioning = false)", {"f": files}
        )
    (customer,) = translate(features.CUSTOMER_FEATURES.sql)
    conn.execute(
        "CREATE TABLE customer_features AS " + customer.duckdb_sql, dict(features.CUSTOMER_FEATURES.params)
    )
    (transaction,) = translate(features.TRANSACTION_FEATURES.sql)
    conn.execute(
        "CREATE TABLE transaction_features AS " + transaction.duckdb_sql,
        {"start_date": config.start_date, "end_date": config.end_date},
    )
    conn.close()
    return time.perf_counter() - start


GENERATION_PROBE = """
import sys, tempfile, time
from pathlib import Path
from lakehouse_ml.datagen import SimulationConfig, write_landing
config = config_for_order_lines(int(sys.argv[1]))
with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    manifest = write_landing(config, Path(tmp))
    seconds = time.perf_counter() - start
# VmHWM: this process's peak resident memory (ru_maxrss would include the parent's, kept across exec).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(manifest["row_counts"]["orders"], seconds, hwm)
"""


def generation_scaling(sizes: list[int]) -> list[tuple[int, float, float]]:
    """Generation alone at several scales, each in a fresh process: (order lines, s, max RSS MiB)."""
    import subprocess

    results = []
    for size in sizes:
        out = subprocess.run(
            [sys.executable, "-c", GENERATION_PROBE, str(size)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.split()
        results.append((int(out[0]), float(out[1]), int(out[2]) / 1024))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--order-lines", type=int, default=1_000_000)
    parser.add_argument("--record", action="store_true", help="write the figures to docs/benchmarks.md")
    args = parser.parse_args()

    import dagster as dg

    from lakehouse_ml.runner import materialize_all

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        settings = load_settings({"LAKEHOUSE_ML_HOME": str(home)})
        config = config_for_order_lines(args.order_lines, start_date=settings.start_date, days=settings.days)
        settings = load_settings(
            {"LAKEHOUSE_ML_HOME": str(home), "LAKEHOUSE_ML_CUSTOMERS": str(config.customers)}
        )

        with PeakRSS() as memory:
            t0 = time.perf_counter()
            manifest = write_landing(config, settings.landing_dir)
            t_generate = time.perf_counter() - t0
            gen_peak = memory.peak
            t1 = time.perf_counter()
            with dg.DagsterInstance.ephemeral() as instance:
                reports = materialize_all(settings, instance)
            t_materialize = time.perf_counter() - t1
        t_baseline = baseline(settings.landing_dir, config, Path(tmp) / "baseline.duckdb")

    rows = {asset: n for r in reports for asset, n in r.materializations.items()}
    total = t_generate + t_materialize
    figures = {
        "order lines": f"{manifest['row_counts']['orders']:,}",
        "customers": f"{config.customers:,}",
        "customer_features rows": f"{rows['customer_features']:,}",
        "transaction_features rows": f"{rows['transaction_features']:,}",
        "generation": f"{t_generate:.1f} s",
        "materialization (6 assets, 5 checks, metadata)": f"{t_materialize:.1f} s",
        "**total (target < 60 s)**": f"**{total:.1f} s**",
        "baseline: bare DuckDB load + feature SQL": f"{t_baseline:.1f} s",
        "materialization / baseline": f"{t_materialize / t_baseline:.2f}x",
        "peak RSS, generation": f"{gen_peak / 2**20:.0f} MiB",
        "peak RSS, whole run": f"{memory.peak / 2**20:.0f} MiB",
        "max RSS (getrusage)": f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB",
    }
    print_figures(figures)
    scaling = generation_scaling([args.order_lines // 4, args.order_lines, args.order_lines * 4])
    for lines, seconds, rss in scaling:
        print(
            f"{'generation alone, ' + format(lines, ',') + ' lines':>50}: {seconds:.1f} s, max RSS {rss:.0f} MiB"
        )

    if args.record:
        provenance = (
            f"`python benchmarks/features.py --record` on {dt.date.today()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, {args.order_lines:,} target order lines, local backend."
        )
        record_figures(
            "features",
            "features: generation + feature materialization",
            provenance,
            figures,
            "Generation alone, each scale in a fresh process (memory stays flat: days are generated",
            "and written one at a time; only the per-customer latent arrays grow, 31 bytes a customer):",
            "",
            "| order lines | seconds | max RSS |",
            "| --- | --- | --- |",
            *[f"| {lines:,} | {seconds:.1f} | {rss:.0f} MiB |" for lines, seconds, rss in scaling],
            "",
        )


if __name__ == "__main__":
    main()
