"""The deployment state of local endpoints in SQLite (no Dagster import: the server reads it).

See :mod:`lakehouse_ml.backends.local_endpoints` for the tables.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployed_models (endpoint_id TEXT, deployed_model_id TEXT, model_id TEXT,
    version_id TEXT, traffic_percentage INTEGER, create_time TEXT,
    PRIMARY KEY(endpoint_id, deployed_model_id));
CREATE TABLE IF NOT EXISTS serving_endpoints (endpoint_id TEXT PRIMARY KEY, display_name TEXT NOT NULL,
    create_time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS serving_deployments (endpoint_id TEXT, deployed_model_id TEXT,
    artifact_uri TEXT NOT NULL, machine_type TEXT, logging_sampling_rate REAL NOT NULL,
    PRIMARY KEY(endpoint_id, deployed_model_id));
CREATE TABLE IF NOT EXISTS serving_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO serving_state VALUES ('generation', 0);
"""


def registry_db(home: str | Path) -> Path:
    return Path(home).expanduser().resolve() / "registry" / "registry.db"


def connect(db: Path) -> sqlite3.Connection:
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


def ensure_schema(conn: sqlite3.Connection) -> None:
    for attempt in range(50):
        try:
            conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
            return
        except sqlite3.OperationalError as err:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if "locked" not in str(err) or attempt == 49:
                raise
            time.sleep(0.05)


def generation(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT value FROM serving_state WHERE key = 'generation'").fetchone()
    except sqlite3.OperationalError:
        return -1
    return row[0] if row else -1


def load_state(conn: sqlite3.Connection) -> tuple[int, dict[str, dict]]:
    """``(generation, {endpoint_id: {display_name, deployed: [dict, ...]}})`` in one read transaction."""
    conn.execute("BEGIN")
    try:
        gen = generation(conn)
        endpoints = {
            eid: {"endpoint_id": eid, "display_name": name, "deployed": []}
            for eid, name in conn.execute("SELECT endpoint_id, display_name FROM serving_endpoints")
        }
        rows = conn.execute(
            "SELECT d.endpoint_id, d.deployed_model_id, d.model_id, d.version_id, d.traffic_percentage, "
            "d.create_time, s.artifact_uri, s.machine_type, s.logging_sampling_rate FROM deployed_models d "
            "JOIN serving_deployments s USING (endpoint_id, "
            "deployed_model_id) ORDER BY d.create_time, d.deployed_model_id"
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    for eid, dmid, mid, vid, pct, created, uri, machine, rate in rows:
        if eid in endpoints:
            endpoints[eid]["deployed"].append(
                {
                    "deployed_model_id": dmid,
                    "model_id": mid,
                    "version_id": vid,
                    "traffic_percentage": pct,
                    "create_time": created,
                    "artifact_uri": uri,
                    "machine_type": machine,
                    "logging_sampling_rate": rate,
                }
            )
    return gen, endpoints
