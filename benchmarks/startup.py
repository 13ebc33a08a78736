"""Start-up time of the local endpoint server: from spawning its process to its first answer on
/health, with nothing deployed, against the bare interpreter's start-up in the same run.

    python benchmarks/startup.py [runs]

The runs alternate: interpreter, server, interpreter, server, … on a free port of 127.0.0.1, each
in a fresh temporary home. Each server is stopped (SIGTERM) before the next starts. Figures go to
docs/benchmarks.md (section "startup").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_figures, record_figures  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def interpreter_seconds() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def server_seconds() -> tuple[float, list[str]]:
    """Seconds to the first /health answer, and the Dagster modules the server process loaded."""
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        t0 = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "lakehouse_ml.serving.main", "--home", home, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                        json.loads(answer.read())
                    break
                except OSError:
                    if process.poll() is not None:
                        raise RuntimeError(f"the server exited with code {process.returncode}") from None
                    time.sleep(0.005)
            elapsed = time.perf_counter() - t0
            # The Dagster modules the server's imports pull in, seen from a child that makes them.
            loaded = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys, lakehouse_ml.serving.main, lakehouse_ml.serving.app, "
                    "lakehouse_ml.serving.models; print(sorted({m.split('.')[0] for m in sys.modules "
                    "if m.split('.')[0].startswith('dagster')}))",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    return elapsed, json.loads(loaded.replace("'", '"'))


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    interpreter, server, dagster_modules = [], [], set()
    for _ in range(runs):
        interpreter.append(interpreter_seconds())
        seconds, modules = server_seconds()
        server.append(seconds)
        dagster_modules.update(modules)
    i50, s50 = statistics.median(interpreter), statistics.median(server)
    figures = {
        "server start to first /health answer, median": f"{s50 * 1e3:.0f} ms (min {min(server) * 1e3:.0f}, "
        f"max {max(server) * 1e3:.0f})",
        "bare interpreter start (python -c pass), median": f"{i50 * 1e3:.0f} ms",
        "ratio server / bare interpreter": f"{s50 / i50:.1f}×",
        "Dagster modules the server imports": ", ".join(sorted(dagster_modules)) or "none",
        "goal": "server start-up under 500 ms, no Dagster",
    }
    print_figures(figures)
    record_figures(
        "startup",
        "Local endpoint server start-up (benchmarks/startup.py)",
        f"{runs} alternating runs each of the bare interpreter and of `python -m lakehouse_ml.serving.main` "
        f"(nothing deployed, fresh home, free port), on {os.cpu_count()} shared cores. Before the layering, "
        "the server imported all of Dagster for an exception base class: about 2.4 s, 2.2 s of it Dagster.",
        figures,
    )


if __name__ == "__main__":
    main()
