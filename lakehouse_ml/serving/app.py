"""The ASGI app of the local endpoint server (a plain ASGI callable: no framework on the hot path).

Routes:

* ``POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict`` — Vertex AI's predict;
* ``GET /v1/projects/{p}/locations/{l}/endpoints/{e}`` — the Endpoint resource (what
  ``aiplatform.Endpoint(...)`` reads when it is constructed);
* ``GET /health`` — liveness and the state generation served; ``GET /openapi.json``;
* ``POST /_control/reload`` — load the deployment state now (the server also polls it).
* ``POST /_control/flush`` — write the buffered request-response log now (monitoring asks
  before it reads the log).

Hot swap: the served state is one immutable snapshot (endpoint -> deployed models, each with its
loaded predictor and traffic share). A reload runs off the event loop, loads every new artifact
in full (predictors are cached by their immutable ``artifact_uri``), and only then replaces the
snapshot reference in one assignment. A request reads the reference once, so it is served by the
old or the new deployment, never a mix, and never by a half-loaded model.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from lakehouse_ml.serving.log import RequestLog
from lakehouse_ml.serving.models import BadInstance, Predictor, load_predictor
from lakehouse_ml.serving.state import connect, ensure_schema, generation, load_state

LOG = logging.getLogger("lakehouse_ml.serving")

MAX_PAYLOAD_BYTES = 1_572_864  # 1.5 MB, Vertex AI's online prediction request limit
MAX_INSTANCES = 5_000
POLL_SECONDS = 0.25

_ROUTE = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/endpoints/([^/:]+)(:predict)?$")
_STATUS_TEXT = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class Deployed:
    deployed_model_id: str
    model_id: str
    version_id: str
    traffic_percentage: int
    logging_sampling_rate: float
    predictor: Predictor
    artifact_uri: str


@dataclass(frozen=True)
class EndpointState:
    endpoint_id: str
    display_name: str
    deployed: tuple[Deployed, ...]
    serving: tuple[Deployed, ...]  # the deployed models that take traffic
    cumulative: tuple[int, ...]  # cumulative traffic percentages of ``serving``


@dataclass(frozen=True)
class Snapshot:
    generation: int = -1
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS_TEXT.get(code, "INVALID_ARGUMENT")


class ServingApp:
    """The ASGI callable and the state it serves."""

    def __init__(
        self,
        home: str | Path,
        *,
        token: str | None = None,
        log_flush_seconds: float = 1.0,
        log_max_rows: int = 5000,
        poll_seconds: float = POLL_SECONDS,
    ):
        self.home = Path(home).expanduser().resolve()
        self.db_path = self.home / "registry" / "registry.db"
        self.token = token or None
        self.poll_seconds = poll_seconds
        self.snapshot = Snapshot()
        self.log = RequestLog(
            self.home / "serving" / "logs", max_rows=log_max_rows, flush_seconds=log_flush_seconds
        )
        self._cache: dict[str, Predictor] = {}
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._conn = None
        self._seq = 0
        self._prefix = f"{os.getpid():x}-{os.urandom(3).hex()}-"
        self._random = random.random

    # -- lifecycle ---------------------------------------------------------------------------------
    def startup(self) -> None:
        conn = connect(self.db_path)
        ensure_schema(conn)
        self._conn = conn
        self.reload(force=True)
        self.log.start()
        self._poller = threading.Thread(target=self._poll, name="state-poller", daemon=True)
        self._poller.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        self.log.close()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.reload()
            except Exception:  # a locked or briefly missing file: try again at the next tick
                LOG.exception("reloading the deployment state failed")

    def reload(self, force: bool = False) -> int:
        """Load the deployment state when its generation moved; returns the generation served."""
        with self._reload_lock:
            conn = self._conn
            if not force and generation(conn) == self.snapshot.generation:
                return self.snapshot.generation
            gen, state = load_state(conn)
            cache: dict[str, Predictor] = {}
            errors: dict[str, str] = {}
            endpoints: dict[str, EndpointState] = {}
            for eid, ep in state.items():
                deployed = []
                for d in ep["deployed"]:
                    uri = d["artifact_uri"]
                    predictor = cache.get(uri) or self._cache.get(uri)
                    if predictor is None:
                        try:
                            predictor = load_predictor(uri)
                        except Exception as err:  # keep serving the others; health reports it
                            errors[d["deployed_model_id"]] = f"{type(err).__name__}: {err}"
                            continue
                    cache[uri] = predictor
                    deployed.append(
                        Deployed(
                            d["deployed_model_id"],
                            d["model_id"],
                            d["version_id"],
                            int(d["traffic_percentage"] or 0),
                            float(d["logging_sampling_rate"]),
                            predictor,
                            uri,
                        )
                    )
                serving = tuple(d for d in deployed if d.traffic_percentage > 0)
                total, cumulative = 0, []
                for d in serving:
                    total += d.traffic_percentage
                    cumulative.append(total)
                endpoints[eid] = EndpointState(
                    eid, ep["display_name"], tuple(deployed), serving, tuple(cumulative)
                )
            self._cache = cache
            self.snapshot = Snapshot(gen, endpoints, errors)  # the swap: one reference assignment
            return gen

    # -- ASGI --------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                status, body, headers = await self._http(scope, receive)
            except ApiError as err:
                status, body, headers = err.code, _error_body(err), _JSON_HEADERS
            except Exception as err:  # a bug, not bad input
                LOG.exception("internal error")
                status, body, headers = (
                    500,
                    _error_body(ApiError(500, f"Internal error: {type(err).__name__}")),
                    _JSON_HEADERS,
                )
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        await asyncio.to_thread(self.startup)
                    except Exception as err:
                        await send({"type": "lifespan.startup.failed", "message": str(err)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await asyncio.to_thread(self.shutdown)
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    def _check_token(self, scope) -> None:
        if self.token is None:
            return
        for key, value in scope["headers"]:
            if key == b"authorization":
                given = value.decode("latin-1")
                if given.startswith("Bearer ") and hmac.compare_digest(
                    given[7:].encode(), self.token.encode()
                ):
                    return
                break
        raise ApiError(401, "Request is missing a valid bearer token (Authorization: Bearer <token>).")

    async def _http(self, scope, receive):
        path = scope["path"]
        method = scope["method"]
        if path == "/health" or path == "/healthz":
            snap = self.snapshot
            return (
                200,
                orjson.dumps(
                    {"status": "ok", "generation": snap.generation, "errors": snap.errors, "pid": os.getpid()}
                ),
                _JSON_HEADERS,
            )
        if path == "/openapi.json":
            return 200, orjson.dumps(OPENAPI), _JSON_HEADERS
        match = _ROUTE.match(path)
        if match is not None:
            self._check_token(scope)
            project, location, endpoint_id, predict = match.groups()
            if predict:
                if method != "POST":
                    raise ApiError(405, f"{path} takes POST.")
                body = await _read_body(scope, receive)
                return 200, self.predict(project, location, endpoint_id, body), _JSON_HEADERS
            if method != "GET":
                raise ApiError(405, f"{path} takes GET.")
            return 200, orjson.dumps(self.endpoint_resource(project, location, endpoint_id)), _JSON_HEADERS
        if path == "/_control/reload":
            self._check_token(scope)
            if method != "POST":
                raise ApiError(405, f"{path} takes POST.")
            gen = await asyncio.to_thread(self.reload)
            return 200, orjson.dumps({"generation": gen}), _JSON_HEADERS
        if path == "/_control/flush":
            self._check_token(scope)
            if method != "POST":
                raise ApiError(405, f"{path} takes POST.")
            files = await asyncio.to_thread(self.log.flush)
            return 200, orjson.dumps({"files": [str(f) for f in files]}), _JSON_HEADERS
        raise ApiError(404, f"No route {method} {path}; see /openapi.json.", "NOT_FOUND")

    # -- the routes --------------------------------------------------------------------------------
    def _endpoint(self, project: str, location: str, endpoint_id: str) -> EndpointState:
        ep = self.snapshot.endpoints.get(endpoint_id)
        if ep is None:
            raise ApiError(
                404,
                f"Endpoint `projects/{project}/locations/{location}/endpoints/{endpoint_id}` not found.",
                "NOT_FOUND",
            )
        return ep

    def endpoint_resource(self, project: str, location: str, endpoint_id: str) -> dict:
        ep = self._endpoint(project, location, endpoint_id)
        return {
            "name": f"projects/{project}/locations/{location}/endpoints/{endpoint_id}",
            "displayName": ep.display_name,
            "deployedModels": [
                {
                    "id": d.deployed_model_id,
                    "model": f"projects/{project}/locations/{location}/models/{d.model_id}",
                    "modelVersionId": d.version_id,
                    "displayName": d.model_id,
                }
                for d in ep.deployed
            ],
            "trafficSplit": {
                d.deployed_model_id: d.traffic_percentage for d in ep.deployed if d.traffic_percentage
            },
        }

    def predict(self, project: str, location: str, endpoint_id: str, body: bytes) -> bytes:
        ep = self._endpoint(project, location, endpoint_id)
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise ApiError(400, f"Invalid JSON payload received. {err}") from None
        if type(request) is not dict:
            raise ApiError(400, 'The request body must be a JSON object with an "instances" array.')
        instances = request.get("instances")
        if instances is None:
            raise ApiError(
                400, 'Missing "instances" in the request body: send {"instances": [ {...}, ... ]}.'
            )
        if type(instances) is not list or not instances:
            raise ApiError(400, '"instances" must be a non-empty JSON array of instances.')
        if len(instances) > MAX_INSTANCES:
            raise ApiError(
                400, f"Too many instances: {len(instances)}; at most {MAX_INSTANCES} instances per request."
            )
        unknown = set(request) - {"instances", "parameters"}
        if unknown:
            raise ApiError(400, f"Unknown field(s) in the request body: {', '.join(sorted(unknown))}.")
        parameters = request.get("parameters")
        if parameters is not None and type(parameters) is not dict:
            raise ApiError(400, '"parameters" must be a JSON object.')
        serving = ep.serving
        if not serving:
            raise ApiError(
                400,
                f"Endpoint `projects/{project}/locations/{location}/endpoints/{endpoint_id}` has no deployed "
                "model taking traffic; deploy a model version to it first.",
                "FAILED_PRECONDITION",
            )
        if len(serving) == 1:
            chosen = serving[0]
        else:
            r = self._random() * ep.cumulative[-1]
            chosen = serving[-1]
            for d, c in zip(serving, ep.cumulative):
                if r < c:
                    chosen = d
                    break
        try:
            rows, predictions = chosen.predictor.predict(instances, parameters)
        except BadInstance as err:
            raise ApiError(400, str(err)) from None
        if chosen.logging_sampling_rate > 0.0 and self.log.sample(chosen.logging_sampling_rate):
            self._seq += 1
            self.log.add(
                endpoint_id,
                chosen.deployed_model_id,
                chosen.model_id,
                chosen.version_id,
                self._prefix + str(self._seq),
                chosen.predictor.feature_names,
                rows,
                predictions,
            )
        return orjson.dumps(
            {
                "predictions": predictions,
                "deployedModelId": chosen.deployed_model_id,
                "model": f"projects/{project}/locations/{location}/models/{chosen.model_id}",
                "modelVersionId": chosen.version_id,
                "modelDisplayName": chosen.model_id,
            }
        )


async def _read_body(scope, receive) -> bytes:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                size = int(value)
            except ValueError:
                raise ApiError(400, "Invalid Content-Length header.") from None
            if size > MAX_PAYLOAD_BYTES:
                raise ApiError(
                    400,
                    f"Request payload size exceeds the limit: {MAX_PAYLOAD_BYTES} bytes (got {size} bytes).",
                )
            break
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "The client disconnected before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_PAYLOAD_BYTES:
            raise ApiError(400, f"Request payload size exceeds the limit: {MAX_PAYLOAD_BYTES} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _error_body(err: ApiError) -> bytes:
    return orjson.dumps({"error": {"code": err.code, "message": err.message, "status": err.status}})


_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "status": {"type": "string"},
            },
        }
    },
}
_ERRORS = {
    str(code): {"description": text, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for code, text in (
        (400, "Bad input (INVALID_ARGUMENT, FAILED_PRECONDITION)"),
        (401, "Missing or wrong bearer token"),
        (404, "Unknown endpoint"),
    )
}
_PARAMS = [
    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
    for n in ("project", "location", "endpoint")
]
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "lakehouse_ml local endpoint server (Vertex AI prediction REST format)",
        "version": "1",
    },
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict": {
            "post": {
                "summary": "PredictionService.Predict",
                "parameters": _PARAMS,
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["instances"],
                                "properties": {
                                    "instances": {
                                        "type": "array",
                                        "items": {"type": "object"},
                                        "maxItems": MAX_INSTANCES,
                                    },
                                    "parameters": {
                                        "type": "object",
                                        "properties": {"threshold": {"type": "number"}},
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "PredictResponse",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "predictions": {"type": "array", "items": {"type": "object"}},
                                        "deployedModelId": {"type": "string"},
                                        "model": {"type": "string"},
                                        "modelVersionId": {"type": "string"},
                                        "modelDisplayName": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}": {
            "get": {
                "summary": "EndpointService.GetEndpoint",
                "parameters": _PARAMS,
                "responses": {"200": {"description": "Endpoint"}, **_ERRORS},
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness and the deployment state generation served",
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/_control/reload": {
            "post": {
                "summary": "Load the deployment state now",
                "responses": {"200": {"description": "generation"}},
            }
        },
        "/_control/flush": {
            "post": {
                "summary": "Write the buffered request-response log now",
                "responses": {"200": {"description": "files written"}},
            }
        },
    },
}
