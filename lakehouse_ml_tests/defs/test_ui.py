"""The Dagster UI, as `dagster dev` serves it, lists every asset with its lineage.

Starts the real webserver on 127.0.0.1 with a free port, asks its GraphQL API for the asset
graph, and stops it (with its process group) whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lakehouse_ml_tests.local_chain import free_port

ROOT = Path(__file__).resolve().parents[2]
QUERY = "{ assetNodes { assetKey { path } dependencyKeys { path } groupName isPartitioned } }"


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_ui_lists_assets_with_lineage(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEHOUSE_ML_")}
    env.update(DAGSTER_HOME=str(tmp_path), LAKEHOUSE_ML_HOME=str(tmp_path / "home"))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        nodes = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                data = _graphql(port, QUERY)
                nodes = data["data"]["assetNodes"]
                if nodes:
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(0.5)
        assert nodes, "the webserver did not serve the asset graph: " + (
            process.stderr.read().decode()[-2000:] if process.poll() is not None else "timeout"
        )
        graph = {
            "/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes
        }
        assert graph["customer_features"] == {
            "raw_customers",
            "raw_orders",
            "raw_products",
            "raw_web_sessions",
        }
        assert graph["transaction_features"] == {"raw_customers", "raw_orders", "raw_products"}
        assert graph["raw_orders"] == {"landing/orders"}
        partitioned = {"/".join(n["assetKey"]["path"]) for n in nodes if n["isPartitioned"]}
        assert partitioned == {"raw_orders", "raw_web_sessions", "transaction_features"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
