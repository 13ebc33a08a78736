"""``lakehouse-ml``: the command line of lakehouse_ml.

lakehouse-ml generate       write the Cymbal retail simulator's data to the landing zone
lakehouse-ml materialize    materialize every asset on the configured backend (headless)
lakehouse-ml demo           the whole loop: data, models, serving, traffic, drift, retraining
lakehouse-ml traffic        send realistic prediction requests to an endpoint (the website)
lakehouse-ml serve          run (or --stop) the local endpoint server
lakehouse-ml query          run BigQuery SQL against the local warehouse
lakehouse-ml ui             open the Dagster UI on the local home's instance
lakehouse-ml gcp-check      check the project's assumptions in your Google Cloud project (costs a little)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from lakehouse_ml.core.settings import Settings, SettingsError, load_settings


class CliError(Exception):
    """An error for the user: printed without a traceback, exit status 2."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    if getattr(args, "home", None):
        env["LAKEHOUSE_ML_HOME"] = str(args.home)
    return load_settings(env)


# -- generate ----------------------------------------------------------------------------------


def _progress_printer():
    state = {"last": 0.0}

    def progress(table: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - state["last"] > 0.5:
            state["last"] = now
            _say(f"  {table}: {done}/{total}")

    return progress


def cmd_generate(args: argparse.Namespace) -> int:
    from lakehouse_ml.datagen import DriftScenario, SimulationConfig, config_for_order_lines, write_landing

    settings = _settings(args)
    try:
        scenarios = tuple(DriftScenario.parse(text) for text in args.scenario)
        common = dict(
            seed=args.seed if args.seed is not None else settings.seed,
            start_date=args.start_date or settings.start_date,
            days=args.days or settings.days,
            scenarios=scenarios,
        )
        if args.order_lines:
            config = config_for_order_lines(args.order_lines, **common)
        else:
            config = SimulationConfig(customers=args.customers or settings.customers, **common)
    except ValueError as err:
        raise CliError(str(err)) from None
    _say(
        f"Generating {config.days} days from {config.start_date} for {config.customers:,} customers "
        f"(seed {config.seed}" + (", scenarios: " + ", ".join(args.scenario) if scenarios else "") + ")"
    )
    start = time.perf_counter()
    manifest = write_landing(config, settings.landing_dir, progress=_progress_printer())
    counts = manifest.get("row_counts", {})
    _say(
        f"Wrote {settings.landing_dir} in {time.perf_counter() - start:.1f} s: "
        + ", ".join(f"{t} {n:,}" for t, n in counts.items())
    )
    if (config.start_date, config.days) != (settings.start_date, settings.days):
        _say(
            "Note: the Dagster partitions follow LAKEHOUSE_ML_START_DATE/LAKEHOUSE_ML_DAYS; set them to "
            f"{config.start_date} and {config.days} to load these days."
        )
    return 0


# -- materialize / demo / ui ---------------------------------------------------------------------


def _materialize(settings: Settings) -> None:
    from lakehouse_ml.runner import materialize_all, persistent_instance

    start = time.perf_counter()
    with persistent_instance(settings) as instance:
        materialize_all(settings, instance, progress=_say)
    _say(
        f"Materialized every asset in {time.perf_counter() - start:.1f} s on the {settings.backend} backend."
    )


def cmd_materialize(args: argparse.Namespace) -> int:
    _materialize(_settings(args))
    return 0


def _ui_hint(settings: Settings) -> str:
    return (
        "Open the Dagster UI with its history:\n"
        "  lakehouse-ml ui\n"
        f"(the same as: DAGSTER_HOME={settings.dagster_home} dagster dev), then http://127.0.0.1:3000"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from lakehouse_ml.demo import run_demo

    settings = _settings(args)
    summary = run_demo(
        settings,
        scenario=args.scenario,
        intensity=args.intensity,
        drift_days=args.drift_days,
        requests=args.requests,
        keep_serving=args.keep_serving,
        progress=_say,
    )
    print()
    print(summary.table())
    print()
    print(_ui_hint(settings))
    if args.keep_serving:
        print("The endpoint server keeps running; stop it with: lakehouse-ml serve --stop")
    return 0


def cmd_gcp_check(args: argparse.Namespace) -> int:
    from lakehouse_ml.gcp_check import run_gcp_check

    settings = _settings(args)
    if settings.backend != "gcp":
        raise CliError(
            "gcp-check runs on the gcp backend: set LAKEHOUSE_ML_BACKEND=gcp and LAKEHOUSE_ML_GCP_PROJECT."
        )
    out = Path(args.out) if args.out else settings.home_dir / "gcp-check"
    _say(
        "gcp-check deploys two tiny models to two Vertex AI endpoints (each deploy takes minutes; the nodes are "
        "billed while deployed) and deletes everything it made at the end."
    )
    report = run_gcp_check(
        settings, out, progress=_say, poll_s=args.poll_seconds, log_timeout_s=args.log_timeout
    )
    print(report.table())
    if report.fixtures:
        print(
            "Copy the fixtures into lakehouse_ml_tests/golden/ to test "
            f"against them: cp {out}/*.json lakehouse_ml_tests/golden/"
        )
    return 0 if report.passed else 1


def cmd_traffic(args: argparse.Namespace) -> int:
    from lakehouse_ml.lifecycle.traffic import run_traffic_command

    return run_traffic_command(args, _settings(args))


def cmd_ui(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from lakehouse_ml.runner import persistent_instance

    with persistent_instance(settings):
        pass  # creates DAGSTER_HOME and its dagster.yaml
    dagster = shutil.which("dagster")
    if dagster is None:
        raise CliError("The `dagster` command is not installed: pip install -e .")
    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home)}
    command = [dagster, "dev", "-m", "lakehouse_ml.definitions", "-h", args.host, "-p", str(args.port)]
    _say("Starting: DAGSTER_HOME=" + str(settings.dagster_home) + " " + " ".join(command[1:]))
    return subprocess.call(command, env=env)


# -- query -------------------------------------------------------------------------------------

_TYPED_PARAM = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*):(?P<type>[A-Za-z0-9]+):(?P<value>.*)$")
_PARAM = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def parse_param(text: str) -> tuple[str, Any]:
    """``name=value`` (type inferred) or ``name:TYPE:value`` as the bq command line writes it."""
    typed = _TYPED_PARAM.match(text)
    if typed:
        name, kind, value = typed["name"], typed["type"].upper(), typed["value"]
        try:
            converters = {
                "STRING": str,
                "INT64": int,
                "FLOAT64": float,
                "BOOL": lambda v: {"true": True, "false": False}[v.lower()],
                "DATE": dt.date.fromisoformat,
                "TIMESTAMP": dt.datetime.fromisoformat,
                "DATETIME": dt.datetime.fromisoformat,
            }
            if kind not in converters:
                raise CliError(f"--param {text}: type {kind} is not one of {', '.join(converters)}.")
            return name, converters[kind](value)
        except (ValueError, KeyError):
            raise CliError(f"--param {text}: {value!r} is not a valid {kind}.") from None
    plain = _PARAM.match(text)
    if not plain:
        raise CliError(
            f"--param {text!r}: write name=value or name:TYPE:value, e.g. snapshot_date=2026-03-01."
        )
    name, value = plain["name"], plain["value"]
    for convert in (int, float, dt.date.fromisoformat):
        try:
            return name, convert(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    return name, value


def _render(frame, fmt: str, max_rows: int) -> str:
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", date_format="iso", lines=False, indent=1) + "\n"
    shown = frame.head(max_rows)
    text = (
        shown.to_markdown(index=False, tablefmt="simple", floatfmt=".6g")
        if len(frame.columns)
        else "(no columns)"
    )
    footer = f"({len(frame):,} row{'s' if len(frame) != 1 else ''}"
    footer += f", first {max_rows} shown; use --format csv for all)" if len(frame) > max_rows else ")"
    return text + "\n" + footer + "\n"


def cmd_query(args: argparse.Namespace) -> int:
    from lakehouse_ml.backends.local_warehouse import LocalWarehouse

    if args.file and args.sql:
        raise CliError("Give the SQL either as an argument or with -f, not both.")
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise CliError(f"-f {path}: no such file.")
        sql = path.read_text()
    elif args.sql:
        sql = args.sql
    elif not sys.stdin.isatty():
        sql = sys.stdin.read()
    else:
        raise CliError("Give the SQL as an argument, with -f FILE, or on standard input.")
    params = dict(parse_param(p) for p in args.param)
    settings = _settings(args)
    warehouse = LocalWarehouse.at(settings.duckdb_path)
    from lakehouse_ml.bigquery.dialect import split_statements

    statements = split_statements(sql)
    if not statements:
        raise CliError("The SQL is empty: give at least one statement.")
    with _bqml_progress():
        table = warehouse.run(sql, params)
    if table is not None:
        sys.stdout.write(_render(table.to_pandas(), args.format, args.max_rows))
    else:
        _say(f"Ran {len(statements)} statement(s).")
    return 0


@contextlib.contextmanager
def _bqml_progress():
    """Show the local BigQuery ML engine's progress (training, models created) on stderr."""
    import logging

    logger = logging.getLogger("lakehouse_ml.engine")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the local endpoint server in the foreground, or stop the background one (--stop)."""
    from lakehouse_ml.serving import main as serving_main
    from lakehouse_ml.serving import server

    settings = _settings(args)
    if args.stop:
        stopped = server.stop_server(settings.home_dir)
        _say("Stopped the local endpoint server." if stopped else "No local endpoint server was running.")
        return 0
    host = args.host or settings.serving_host
    port = args.port or settings.serving_port
    _say(f"Serving every local endpoint on http://{host}:{port} (Ctrl-C stops; see /openapi.json).")
    serving_main.run(settings.home_dir, host, port, settings.serving_token)
    return 0


# -- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakehouse-ml", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--home", type=Path, help="local home (default: $LAKEHOUSE_ML_HOME or ./.lakehouse_ml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write simulated Cymbal retail data to the landing zone")
    gen.add_argument("--seed", type=int, help="random seed (default: $LAKEHOUSE_ML_SEED or 42)")
    gen.add_argument(
        "--start-date",
        type=dt.date.fromisoformat,
        help="first day, YYYY-MM-DD (default: $LAKEHOUSE_ML_START_DATE)",
    )
    gen.add_argument("--days", type=int, help="number of days (default: $LAKEHOUSE_ML_DAYS or 180)")
    scale = gen.add_mutually_exclusive_group()
    scale.add_argument(
        "--customers", type=int, help="number of customers (default: $LAKEHOUSE_ML_CUSTOMERS or 5000)"
    )
    scale.add_argument(
        "--order-lines", type=int, help="pick the number of customers to get about this many order lines"
    )
    gen.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME@YYYY-MM-DD[:INTENSITY]",
        help="drift scenario starting on a day, e.g. price_shock@2026-04-01 (repeatable)",
    )
    gen.set_defaults(func=cmd_generate)

    mat = sub.add_parser(
        "materialize", help="materialize every asset (headless, persistent Dagster instance)"
    )
    mat.set_defaults(func=cmd_materialize)

    demo = sub.add_parser(
        "demo",
        help="the whole loop on the configured backend: generate, "
        "materialize, serve, traffic, drift, retrain, redeploy",
    )
    demo.add_argument(
        "--scenario", default="channel_shift", help="drift scenario (price_shock, channel_shift, new_region)"
    )
    demo.add_argument("--intensity", type=float, default=1.5, help="drift intensity (default 1.5)")
    demo.add_argument(
        "--drift-days", type=int, default=154, help="the last N simulated days drift (default 154)"
    )
    demo.add_argument(
        "--requests", type=int, default=600, help="instances sent per traffic step (default 600)"
    )
    demo.add_argument(
        "--keep-serving", action="store_true", help="leave the local endpoint server running afterwards"
    )
    demo.set_defaults(func=cmd_demo)

    from lakehouse_ml.lifecycle.traffic import add_traffic_arguments

    traffic = add_traffic_arguments(
        sub.add_parser("traffic", help="send realistic prediction requests to an endpoint")
    )
    traffic.set_defaults(func=cmd_traffic)

    check = sub.add_parser(
        "gcp-check",
        help="train, register, deploy, serve, retrain and clean up two tiny models in your project (gcp backend)",
    )
    check.add_argument(
        "--out", help="where to save the real responses (default: $LAKEHOUSE_ML_HOME/gcp-check)"
    )
    check.add_argument(
        "--poll-seconds", type=float, default=10.0, help="how often to look at the request log (default 10)"
    )
    check.add_argument(
        "--log-timeout",
        type=float,
        default=1800.0,
        help="how long to wait for the request log (default 1800 s)",
    )
    check.set_defaults(func=cmd_gcp_check)

    ui = sub.add_parser("ui", help="run `dagster dev` on the local home's Dagster instance")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)

    query = sub.add_parser("query", help="run BigQuery SQL on the local warehouse")
    query.add_argument("sql", nargs="?", help="the SQL (or use -f, or standard input)")
    query.add_argument("-f", "--file", help="read the SQL from this file")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    query.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="query parameter @NAME (repeatable); NAME:TYPE:VALUE to give the type",
    )
    query.add_argument("--max-rows", type=int, default=50, help="rows shown by --format table (default 50)")
    query.set_defaults(func=cmd_query)

    serve = sub.add_parser("serve", help="run the local endpoint server (Vertex AI prediction REST format)")
    serve.add_argument("--host", help="address to bind (default: $LAKEHOUSE_ML_SERVING_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: $LAKEHOUSE_ML_SERVING_PORT or 8765)")
    serve.add_argument("--stop", action="store_true", help="stop the server started in the background")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import warnings

    import dagster as dg

    # Dagster flags beta parameters (single-run backfills) on every load; not news on a terminal.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from lakehouse_ml.core.errors import WarehouseError

    try:
        return args.func(args)
    except (CliError, SettingsError, WarehouseError, FileNotFoundError) as err:
        _say(f"error: {err}")
        return 2
    except RuntimeError as err:
        _say(f"error: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
