"""Local endpoints: state in the local registry's SQLite file, served by the local endpoint server.

Tables in ``$LAKEHOUSE_ML_HOME/registry/registry.db`` (shared with the local model registry, which
reads ``deployed_models`` to refuse deleting a deployed version):

* ``deployed_models(endpoint_id, deployed_model_id, model_id, version_id, traffic_percentage,
  create_time)`` — one row per deployed model;
* ``serving_endpoints(endpoint_id, display_name, create_time)``;
* ``serving_deployments(endpoint_id, deployed_model_id, artifact_uri, machine_type,
  logging_sampling_rate)`` — what the server needs besides ``deployed_models``;
* ``serving_state(key, value)`` — ``generation``, bumped in every transaction that changes the
  state; the server polls it (one indexed read) and reloads when it moves.

Every change runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent processes serialize.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import dagster as dg
import duckdb
import httpx
import pandas as pd

from lakehouse_ml.backends.endpoints import Endpoints, LocalServing
from lakehouse_ml.backends.request_log import RequestLog
from lakehouse_ml.bigquery.request_log import LOG_COLUMNS
from lakehouse_ml.core.errors import EndpointError
from lakehouse_ml.serving.models import NotServable, load_predictor
from lakehouse_ml.serving.server import ensure_server, request_flush, request_reload, stop_server
from lakehouse_ml.serving.state import connect, ensure_schema, load_state, registry_db

LOG_GRACE_SECONDS = 5.0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def allocate(current: Mapping[str, int], new_id: str, percentage: int) -> dict[str, int]:
    """Vertex AI's rule: the new model gets ``percentage``; the others are scaled to fill the rest
    (largest remainders get the rounding)."""
    if not current:
        return {new_id: 100}
    rest = 100 - percentage
    total = sum(current.values())
    if total == 0:
        shares = {k: rest / len(current) for k in current}
    else:
        shares = {k: v * rest / total for k, v in current.items()}
    out = {k: int(v) for k, v in shares.items()}
    left = rest - sum(out.values())
    for k in sorted(shares, key=lambda k: shares[k] - out[k], reverse=True)[:left]:
        out[k] += 1
    out[new_id] = percentage
    return out


class LocalEndpoints(dg.ConfigurableResource, Endpoints, RequestLog, LocalServing):
    """Endpoints on this machine, served by one local endpoint server (``lakehouse-ml serve``)."""

    home: str
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    project: str = "local"
    location: str = "us-central1"

    # -- plumbing ----------------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return registry_db(self.home)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = connect(self.db_path)
        try:
            ensure_schema(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("UPDATE serving_state SET value = value + 1 WHERE key = 'generation'")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        self._notify()

    def _notify(self) -> None:
        """Ask a running server to reload now (it also polls); silent when none answers."""

        request_reload(self.host, self.port, self.token)

    def _endpoint_id(self, conn: sqlite3.Connection, endpoint: str) -> str:
        endpoint = str(endpoint).rsplit("/", 1)[-1]
        row = conn.execute(
            "SELECT endpoint_id FROM serving_endpoints WHERE endpoint_id = ? OR display_name = ? "
            "ORDER BY endpoint_id = ? DESC LIMIT 1",
            (endpoint, endpoint, endpoint),
        ).fetchone()
        if row is None:
            raise EndpointError(f"Endpoint {endpoint!r} not found; create it with create_endpoint().")
        return row[0]

    @staticmethod
    def _split(conn: sqlite3.Connection, endpoint_id: str) -> dict[str, int]:
        return dict(
            conn.execute(
                "SELECT deployed_model_id, traffic_percentage FROM deployed_models WHERE endpoint_id = ?",
                (endpoint_id,),
            ).fetchall()
        )

    @staticmethod
    def _write_split(conn: sqlite3.Connection, endpoint_id: str, split: Mapping[str, int]) -> None:
        for dmid, pct in split.items():
            conn.execute(
                "UPDATE deployed_models SET traffic_percentage = ? WHERE endpoint_id = ? AND deployed_model_id = ?",
                (int(pct), endpoint_id, dmid),
            )

    # -- the interface -----------------------------------------------------------------------------
    def create_endpoint(self, display_name: str, endpoint_id: str | None = None) -> dict[str, Any]:
        with self._tx() as conn:
            existing = conn.execute(
                "SELECT endpoint_id FROM serving_endpoints WHERE endpoint_id = ?", (endpoint_id,)
            ).fetchone()
            if existing is None:
                endpoint_id = endpoint_id or str(secrets.randbelow(9 * 10**18) + 10**18)
                conn.execute(
                    "INSERT INTO serving_endpoints VALUES (?, ?, ?)", (endpoint_id, display_name, _now())
                )
        return self.get_endpoint(endpoint_id)

    def get_endpoint(self, endpoint: str) -> dict[str, Any] | None:
        conn = connect(self.db_path)
        try:
            ensure_schema(conn)
            try:
                endpoint_id = self._endpoint_id(conn, endpoint)
            except EndpointError:
                return None
            _, state = load_state(conn)
        finally:
            conn.close()
        ep = state[endpoint_id]
        return {
            "endpoint_id": endpoint_id,
            "display_name": ep["display_name"],
            "resource_name": f"projects/{self.project}/locations/{self.location}/endpoints/{endpoint_id}",
            "deployed_models": ep["deployed"],
            "traffic_split": {d["deployed_model_id"]: d["traffic_percentage"] for d in ep["deployed"]},
        }

    def deploy(
        self,
        endpoint: str,
        model_id: str,
        version_id: str,
        artifact_uri: str,
        *,
        traffic_percentage: int | None = None,
        traffic_split: Mapping[str, int] | None = None,
        machine_type: str | None = None,
        logging_sampling_rate: float = 1.0,
    ) -> str:

        if not 0.0 <= float(logging_sampling_rate) <= 1.0:
            raise EndpointError(
                f"logging_sampling_rate must be between 0 and 1; got {logging_sampling_rate!r}."
            )
        if traffic_percentage is not None and traffic_split is not None:
            raise EndpointError("Give traffic_percentage or traffic_split, not both.")
        try:
            load_predictor(artifact_uri)  # refuse what the server could not load, before any change
        except NotServable as err:
            raise EndpointError(f"Cannot deploy model {model_id} version {version_id}: {err}") from None
        deployed_model_id = str(secrets.randbelow(9 * 10**18) + 10**18)
        with self._tx() as conn:
            endpoint_id = self._endpoint_id(conn, endpoint)
            current = self._split(conn, endpoint_id)
            if traffic_split is not None:
                split = {deployed_model_id if k == "0" else k: int(v) for k, v in traffic_split.items()}
                self._check_split(split, set(current) | {deployed_model_id})
            else:
                pct = 0 if traffic_percentage is None else int(traffic_percentage)
                if not 0 <= pct <= 100:
                    raise EndpointError(f"traffic_percentage must be between 0 and 100; got {pct}.")
                split = allocate(current, deployed_model_id, pct)
            conn.execute(
                "INSERT INTO deployed_models VALUES (?, ?, ?, ?, ?, ?)",
                (endpoint_id, deployed_model_id, str(model_id), str(version_id), 0, _now()),
            )
            conn.execute(
                "INSERT INTO serving_deployments VALUES (?, ?, ?, ?, ?)",
                (
                    endpoint_id,
                    deployed_model_id,
                    str(artifact_uri),
                    machine_type,
                    float(logging_sampling_rate),
                ),
            )
            self._write_split(
                conn, endpoint_id, {k: split.get(k, 0) for k in set(current) | {deployed_model_id}}
            )
        return deployed_model_id

    @staticmethod
    def _check_split(split: Mapping[str, int], deployed: set[str]) -> None:
        unknown = set(split) - deployed
        if unknown:
            raise EndpointError(
                f"traffic_split names models not deployed on the endpoint: {sorted(unknown)}."
            )
        if any(not 0 <= v <= 100 for v in split.values()) or (deployed and sum(split.values()) != 100):
            raise EndpointError(
                f"traffic_split percentages must be 0..100 and sum to 100; got {dict(split)}."
            )

    def undeploy(self, endpoint: str, deployed_model_id: str) -> None:
        with self._tx() as conn:
            endpoint_id = self._endpoint_id(conn, endpoint)
            current = self._split(conn, endpoint_id)
            if deployed_model_id not in current:
                raise EndpointError(f"Model {deployed_model_id!r} is not deployed on endpoint {endpoint_id}.")
            gone = current.pop(deployed_model_id)
            if current and gone:
                total = sum(current.values())
                if total == 0:  # nobody else took traffic: share it equally
                    keys = list(current)
                    current = {
                        k: 100 // len(keys) + (1 if i < 100 % len(keys) else 0) for i, k in enumerate(keys)
                    }
                else:
                    current = allocate(current, "\0", 0)
                    current.pop("\0")
            conn.execute(
                "DELETE FROM deployed_models WHERE endpoint_id = ? AND deployed_model_id = ?",
                (endpoint_id, deployed_model_id),
            )
            conn.execute(
                "DELETE FROM serving_deployments WHERE endpoint_id = ? AND deployed_model_id = ?",
                (endpoint_id, deployed_model_id),
            )
            self._write_split(conn, endpoint_id, current)

    def delete_endpoint(self, endpoint: str) -> None:
        with self._tx() as conn:
            endpoint_id = self._endpoint_id(conn, endpoint)
            if self._split(conn, endpoint_id):
                raise EndpointError(
                    f"Endpoint {endpoint_id} has deployed models; undeploy them before deleting it."
                )
            conn.execute("DELETE FROM serving_endpoints WHERE endpoint_id = ?", (endpoint_id,))

    def set_traffic_split(self, endpoint: str, traffic_split: Mapping[str, int]) -> None:
        with self._tx() as conn:
            endpoint_id = self._endpoint_id(conn, endpoint)
            current = self._split(conn, endpoint_id)
            split = {k: int(v) for k, v in traffic_split.items()}
            self._check_split(split, set(current))
            self._write_split(conn, endpoint_id, {k: split.get(k, 0) for k in current})

    # -- predictions -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ensure_server(self) -> str:
        """Start the local endpoint server in the background unless one answers; returns its URL."""

        return ensure_server(self.home, self.host, self.port, self.token)

    def ensure_serving(self) -> str:
        return self.ensure_server()

    def stop_serving(self) -> None:

        stop_server(Path(self.home).expanduser().resolve())

    def request_log(self, endpoint: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
        """Read the Parquet request-response log (after asking a running server to flush it)."""

        info = self.get_endpoint(endpoint)
        if info is None:
            raise EndpointError(f"Endpoint {endpoint!r} not found; create it with create_endpoint().")
        request_flush(self.host, self.port, self.token)
        folder = Path(self.home).expanduser().resolve() / "serving" / "logs" / info["endpoint_id"]
        files = sorted(str(f) for f in folder.glob("*.parquet")) if folder.is_dir() else []
        if not files:
            return pd.DataFrame(columns=list(LOG_COLUMNS))
        utc = dt.timezone.utc
        bounds = [t.astimezone(utc) if t.tzinfo else t.replace(tzinfo=utc) for t in (start, end)]
        with duckdb.connect() as conn:
            return conn.execute(
                "SELECT * FROM read_parquet(?, union_by_name = true) WHERE logging_time >= ? AND logging_time < ? "
                "ORDER BY logging_time, request_id, instance_index",
                [files, *bounds],
            ).df()

    def request_log_grace_seconds(self) -> float:
        """A request answered while monitoring flushes the log lands in the next file: a few
        seconds cover it (the server writes its log itself, on every flush)."""
        return LOG_GRACE_SECONDS

    def predict_target(self, endpoint: str) -> tuple[str, str | None]:
        info = self.get_endpoint(endpoint)
        if info is None:
            raise EndpointError(
                f"Endpoint {endpoint!r} not found. Deploy the model first (`lakehouse-ml materialize` "
                "materializes its deployment) or give an existing endpoint's name or id."
            )
        return f"{self.base_url}/v1/{info['resource_name']}:predict", self.token

    def console_url(self, endpoint_id: str) -> str:
        return f"{self.base_url}/v1/projects/{self.project}/locations/{self.location}/endpoints/{endpoint_id}"

    def predict(
        self, endpoint: str, instances: Sequence[Any], parameters: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:

        info = self.get_endpoint(endpoint)
        if info is None:
            raise EndpointError(f"Endpoint {endpoint!r} not found; create it with create_endpoint().")
        body: dict[str, Any] = {"instances": list(instances)}
        if parameters is not None:
            body["parameters"] = dict(parameters)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = f"{self.base_url}/v1/{info['resource_name']}:predict"
        response = httpx.post(url, json=body, headers=headers, timeout=60)
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except Exception:
                message = response.text
            raise EndpointError(
                f"predict on endpoint {info['endpoint_id']} failed ({response.status_code}): {message}"
            )
        return response.json()
