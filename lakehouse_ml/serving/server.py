"""Process management of the local endpoint server, from the outside: its pidfile
(``$LAKEHOUSE_ML_HOME/serving/server.pid``), health, reload and flush requests, starting it in the
background when none answers, stopping it. This half loads neither uvicorn nor the app: the
server process itself is :mod:`lakehouse_ml.serving.main`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def pidfile(home: str | Path) -> Path:
    return Path(home).expanduser().resolve() / "serving" / "server.pid"


def _get(url: str, token: str | None = None, method: str = "GET", timeout: float = 2.0) -> dict | None:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def health(host: str, port: int) -> dict | None:
    return _get(f"http://{host}:{port}/health")


def request_reload(host: str, port: int, token: str | None = None) -> int | None:
    """Ask the server at host:port to load the deployment state now; None when none answers."""
    answer = _get(f"http://{host}:{port}/_control/reload", token, method="POST", timeout=60)
    return None if answer is None else answer.get("generation")


def request_flush(host: str, port: int, token: str | None = None) -> list[str] | None:
    """Ask the server at host:port to write its buffered request-response log; None when none answers."""
    answer = _get(f"http://{host}:{port}/_control/flush", token, method="POST", timeout=60)
    return None if answer is None else list(answer.get("files", []))


def start_background(
    home: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    timeout: float = 60.0,
    extra_args: list[str] | None = None,
) -> subprocess.Popen:
    """Start a server process detached from this one and wait until it answers."""
    env = dict(os.environ)
    env["LAKEHOUSE_ML_HOME"] = str(Path(home).expanduser().resolve())
    if token:
        env["LAKEHOUSE_ML_SERVING_TOKEN"] = token
    else:
        env.pop("LAKEHOUSE_ML_SERVING_TOKEN", None)
    log_dir = Path(home).expanduser().resolve() / "serving"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "server.log", "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lakehouse_ml.serving.main",
                "--home",
                env["LAKEHOUSE_ML_HOME"],
                "--host",
                host,
                "--port",
                str(port),
                *(extra_args or []),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = health(host, port)
        if answer is not None and answer.get("pid") == process.pid:
            return process
        if process.poll() is not None:
            raise RuntimeError(
                f"The local endpoint server exited with code {process.returncode}; see {log_dir / 'server.log'}."
            )
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"The local endpoint server did not answer on {host}:{port} within {timeout:.0f} s.")


def ensure_server(
    home: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None
) -> str:
    """The URL of a server answering on host:port, starting one in the background when none does."""
    if health(host, port) is None:
        start_background(home, host, port, token)
    return f"http://{host}:{port}"


def stop_server(home: str | Path, timeout: float = 30.0) -> bool:
    """Stop the server recorded in the pidfile (SIGTERM: it flushes its log); False when none runs."""
    path = pidfile(home)
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return False
    pid = int(info["pid"])
    answer = health(info.get("host", DEFAULT_HOST), int(info.get("port", DEFAULT_PORT)))
    if answer is None or answer.get("pid") != pid:  # stale pidfile: never signal an unrelated process
        path.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True
