"""Benchmark: ML.VALIDATE_DATA_DRIFT over 1M rows × 20 features (15 numeric, 5 categorical).

A base and a study data set of ``--rows`` rows each (the study shifted in some features). In the
same process, on the same data:

* the pure function ``lakehouse_ml.bigquery.drift.validate_data_drift`` on Arrow tables (what
  the SQL layer hands it) and on the pandas frames Evidently gets (pandas → Arrow included);
* the full SQL statement ``SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE base, TABLE study)`` on the
  local warehouse (DuckDB reads both tables, then the computation);
* the baseline: Evidently's ``DataDriftPreset`` on the same pandas frames (``pip install -e
  '.[bench]'``).

Target: the pure function well under 1 s on 2 cores. Each figure is the best of ``--repeat`` runs
(Evidently: one run, it takes minutes at this size).

Then the drift demo, ``lakehouse-ml demo`` at the default scale (``run_demo`` in a fresh local
home; the server on a free port): its total time (goal under 5 minutes) and the time from drift
onset — the first drifted request — to the retrained version serving (goal under 2 minutes).

    python benchmarks/drift.py [--rows 1000000] [--repeat 3] [--part all|drift|demo] [--record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakRSS, print_figures, record_figures  # noqa: E402

from lakehouse_ml.backends.local_warehouse import LocalWarehouse  # noqa: E402
from lakehouse_ml.bigquery.drift import validate_data_drift  # noqa: E402

NUMERIC = [f"x{i}" for i in range(15)]
CATEGORICAL = [f"c{i}" for i in range(5)]


def make_data(rows: int, seed: int, shift: float) -> pd.DataFrame:
    """15 numeric columns of different scales and 5 categorical ones (4 to 20 levels); ``shift``
    moves every third numeric column and tilts the first level of every categorical one."""
    rng = np.random.default_rng(seed)
    scales = np.random.default_rng(0).uniform(0.5, 20, len(NUMERIC))
    data = {}
    for i, name in enumerate(NUMERIC):
        data[name] = rng.normal(shift * scales[i] * (i % 3 == 0), scales[i], rows)
    for i, name in enumerate(CATEGORICAL):
        levels = 4 + 4 * i
        weights = np.ones(levels)
        weights[0] += shift * levels / 2
        codes = rng.choice(levels, rows, p=weights / weights.sum())
        data[name] = np.array([f"{name}_v{k}" for k in range(levels)], dtype=object)[codes]
    frame = pd.DataFrame(data)
    frame.loc[rng.random(rows) < 0.01, "x0"] = np.nan  # 1% NULLs
    frame.loc[rng.random(rows) < 0.01, "c0"] = None
    return frame


def best_of(repeat: int, action) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return min(times), result


def evidently_drift(base: pd.DataFrame, study: pd.DataFrame) -> list[str]:
    """Evidently's DataDriftPreset (its default per-column tests); the drifted column names."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset()]).run(current_data=study, reference_data=base)
    drifted = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        column = config.get("column")
        if column is None or "ValueDrift" not in str(config.get("type", "")):
            continue
        value, threshold = metric.get("value"), config.get("threshold")
        method = str(config.get("method", ""))
        # p-value tests drift below the threshold, distances above it.
        if value is not None and threshold is not None:
            p_value = "p_value" in method.lower() or "test" in method.lower()
            if (value < threshold) if p_value else (value >= threshold):
                drifted.append(column)
    return drifted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--part", choices=("all", "drift", "demo"), default="all")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.part in ("all", "drift"):
        drift_benchmark(args)
    if args.part in ("all", "demo"):
        demo_benchmark(args)


def demo_benchmark(args: argparse.Namespace) -> None:
    """``lakehouse-ml demo`` at the default scale, in a fresh local home."""
    import socket

    from lakehouse_ml.core.settings import load_settings
    from lakehouse_ml.demo import run_demo
    from lakehouse_ml.serving.server import stop_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings({"LAKEHOUSE_ML_HOME": tmp, "LAKEHOUSE_ML_SERVING_PORT": str(port)})
        try:
            summary = run_demo(settings, progress=lambda line: print(line, flush=True))
        finally:
            stop_server(settings.home_dir)
    print(summary.table())
    seconds = summary.seconds
    checks = ", ".join(f"{step}: {'passed' if passed else 'FAILED'}" for step, passed, _ in summary.checks)
    drifted = ", ".join(
        f"{name} {value:.3f} > {threshold:g}" for name, value, threshold, over in summary.drift_values if over
    )
    onset_to_serving = seconds["drift onset -> retrained version serving"]
    figures = {
        "scale": f"{settings.customers:,} customers, {settings.days} days, {summary.scenario}",
        "generate the landing data": f"{seconds['generate']:.1f} s",
        "materialize everything before the drift (data, 3 "
        "models, their registry versions and endpoints)": f"{seconds['materialize']:.1f} s",
        "drift: load the drifted days, traffic, "
        "monitoring, sensor, retraining, canary, promotion": f"{seconds['drift']:.1f} s",
        "**drift onset → retrained version serving (goal < 2 min)**": f"**{onset_to_serving:.1f} s**",
        "**demo total (goal < 5 min)**": f"**{seconds['total']:.1f} s**",
        "drift check": checks,
        "drift that failed the check": drifted or "none",
        f"{summary.metric} on post-drift data, stale → retrained": f"{summary.stale_quality:.4f} → "
        f"{summary.retrained_quality:.4f}",
        "runs started by the sensor": str(summary.sensor_runs),
        "versions after": summary.versions_after,
    }
    print_figures(figures)
    if args.record:
        provenance = (
            f"`python benchmarks/drift.py --part demo --record` on {dt.date.today()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}: `run_demo` with the default settings in a fresh local home. "
            "Drift onset is the first drifted request; from there the time covers the monitoring run, the "
            "sensor tick, the retraining run (features, CREATE MODEL of the run's own model, evaluation, gate, canary, "
            "smoke test, promotion). In production the hourly monitoring schedule and the sensor's interval "
            "add their wait to it."
        )
        record_figures(
            "drift-demo", "drift demo: `lakehouse-ml demo` at the default scale", provenance, figures
        )


def drift_benchmark(args: argparse.Namespace) -> None:

    base, study = make_data(args.rows, 1, 0.0), make_data(args.rows, 2, 0.25)
    base_arrow = pa.Table.from_pandas(base, preserve_index=False)
    study_arrow = pa.Table.from_pandas(study, preserve_index=False)

    with PeakRSS() as memory:
        t_arrow, result = best_of(args.repeat, lambda: validate_data_drift(base_arrow, study_arrow))
    peak = memory.peak
    t_pandas, _ = best_of(args.repeat, lambda: validate_data_drift(base, study))

    with tempfile.TemporaryDirectory() as tmp:
        warehouse = LocalWarehouse.at(Path(tmp) / "warehouse.duckdb")
        warehouse.load_dataframe(base, "drift_base")
        warehouse.load_dataframe(study, "drift_study")
        sql = "SELECT * FROM ML.VALIDATE_DATA_DRIFT(TABLE drift_base, TABLE drift_study)"
        # Warm up the SQL layer (imports, parser caches) on a small call first.
        warehouse.query_arrow(
            "SELECT * FROM ML.VALIDATE_DATA_DRIFT((SELECT * FROM "
            "drift_base LIMIT 10), (SELECT * FROM drift_study LIMIT 10))"
        )
        t_sql, sql_result = best_of(args.repeat, lambda: warehouse.query_arrow(sql))
    assert sql_result.num_rows == 20

    try:
        # One run: Evidently takes minutes at this size.
        t_evidently, evidently_drifted = best_of(1, lambda: evidently_drift(base, study))
        import evidently

        evidently_version = evidently.__version__
    except ImportError:
        t_evidently, evidently_drifted, evidently_version = float("nan"), [], "not installed"

    ours_drifted = list(result.input[result.is_anomaly.fillna(False).astype(bool)])
    figures = {
        "rows × features": f"base {args.rows:,} + study {args.rows:,} rows × 20 (15 numeric, 5 categorical)",
        "**validate_data_drift, Arrow tables (target well under 1 s)**": f"**{t_arrow:.3f} s**",
        "validate_data_drift, the pandas frames (pandas → Arrow included)": f"{t_pandas:.3f} s",
        "**SQL `ML.VALIDATE_DATA_DRIFT(TABLE base, TABLE study)` on the local warehouse**": f"**{t_sql:.3f} s**",
        f"baseline: Evidently {evidently_version} `DataDriftPreset`, same pandas frames": f"{t_evidently:.2f} s",
        "**Evidently / validate_data_drift (pandas frames, same input)**": f"**{t_evidently / t_pandas:.1f}×**",
        "Evidently / validate_data_drift (Arrow)": f"{t_evidently / t_arrow:.1f}×",
        "Evidently / SQL statement": f"{t_evidently / t_sql:.1f}×",
        "peak RSS during validate_data_drift (Arrow, inputs included)": f"{peak / 2**20:.0f} MiB",
        "columns flagged (threshold 0.3) / by Evidently (its defaults)": (
            f"{', '.join(ours_drifted) or 'none'} / {', '.join(evidently_drifted) or 'none'}"
        ),
    }
    print_figures(figures)
    if args.record:
        provenance = (
            f"`python benchmarks/drift.py --record` on {dt.date.today()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, local backend; best of {args.repeat} runs (Evidently: "
            "one), all in one process on the same data. The study set shifts every third numeric column by one "
            "standard deviation × 0.25 and tilts the first level of every categorical column. "
            "Evidently's preset picks its own test per column (Wasserstein distance for numeric and "
            "Jensen-Shannon for categorical columns at this size), so its flags differ from "
            "BigQuery's 0.3 thresholds; the figure compares the cost of a full drift report."
        )
        record_figures("drift", "drift: ML.VALIDATE_DATA_DRIFT", provenance, figures)


if __name__ == "__main__":
    main()
