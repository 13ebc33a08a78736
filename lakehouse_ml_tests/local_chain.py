"""Helpers for tests that run the local stack: free loopback ports, settings on a temporary home,
and a materialized chain (data, models, registry, endpoint) whose server is always stopped."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from lakehouse_ml.core.settings import Settings, load_settings


def stop_server(process: subprocess.Popen) -> None:
    """Stop a server process started by the test (SIGTERM, then kill after 30 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_settings(home: Path, **env: str) -> Settings:
    """Settings on ``home`` with the endpoint server on a free port; ``env``: more
    ``LAKEHOUSE_ML_*`` values by field name (``days="130"``)."""
    values = {"LAKEHOUSE_ML_HOME": str(home), "LAKEHOUSE_ML_SERVING_PORT": str(free_port())}
    values |= {f"LAKEHOUSE_ML_{k.upper()}": v for k, v in env.items()}
    return load_settings(values)


def materialized_chain(
    home: Path, *, days: int, customers: int, seed: int
) -> Iterator[tuple[Settings, dg.DagsterInstance]]:
    """A fixture body: generate, materialize every job on an ephemeral instance, yield, then stop
    the endpoint server the deployment started and check that nothing answers any more."""
    from lakehouse_ml.datagen import SimulationConfig, write_landing
    from lakehouse_ml.runner import ALL_JOBS, materialize_all
    from lakehouse_ml.serving import server

    settings = local_settings(home, days=str(days), customers=str(customers))
    write_landing(
        SimulationConfig(
            seed=seed, start_date=settings.start_date, days=settings.days, customers=settings.customers
        ),
        settings.landing_dir,
    )
    instance = dg.DagsterInstance.ephemeral()
    try:
        assert server.health(settings.serving_host, settings.serving_port) is None
        materialize_all(settings, instance, jobs=ALL_JOBS)
        yield settings, instance
    finally:
        server.stop_server(settings.home_dir)
        instance.dispose()
    assert server.health(settings.serving_host, settings.serving_port) is None
