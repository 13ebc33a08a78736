"""The local endpoint server process: uvicorn serving :class:`lakehouse_ml.serving.app.ServingApp`
in the foreground until SIGINT or SIGTERM.

``python -m lakehouse_ml.serving.main --home H --host 127.0.0.1 --port N`` runs it (the token
comes from ``LAKEHOUSE_ML_SERVING_TOKEN``, never from the command line).
:mod:`lakehouse_ml.serving.server` starts, finds and stops it from other processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

import uvicorn

from lakehouse_ml.core.atomic import write_bytes
from lakehouse_ml.serving.app import ServingApp
from lakehouse_ml.serving.server import DEFAULT_HOST, DEFAULT_PORT, pidfile


def run(
    home: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    **app_options,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn; the request log is flushed on exit)."""
    app = ServingApp(home, token=token, **app_options)
    path = pidfile(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, json.dumps({"pid": os.getpid(), "host": host, "port": port}).encode())
    try:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=30,
            backlog=2048,
        )
        uvicorn.Server(config).run()
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lakehouse_ml.serving.main")
    parser.add_argument("--home", required=True)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--log-flush-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    run(
        args.home,
        args.host,
        args.port,
        os.environ.get("LAKEHOUSE_ML_SERVING_TOKEN") or None,
        log_flush_seconds=args.log_flush_seconds,
    )


if __name__ == "__main__":
    main()
