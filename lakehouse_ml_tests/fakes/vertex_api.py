"""A local HTTP test double of the Vertex AI REST API (v1), for wire-level tests of the gcp backend.

The real ``google-cloud-aiplatform`` clients talk to it unchanged (``client_options={"api_endpoint":
api.url}``, ``transport="rest"``, ``AnonymousCredentials``). It keeps its state in memory and
answers in the documented REST shapes
(https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.models,
https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.endpoints); the routes
are the ones the GAPIC REST transports of ``google-cloud-aiplatform`` use
(``aiplatform_v1/services/{model,endpoint,prediction}_service/transports/rest_base.py``):

* models: ``GET {name}`` (``name`` may end in ``@<version id>`` or ``@<alias>``; without it the
  ``default`` version), ``GET {parent}/models`` (one entry per model: its default version),
  ``GET {name}:listVersions``, ``POST {name}@v:mergeVersionAliases``, ``DELETE {name}@v:deleteVersion``
  and ``DELETE {name}`` (both long-running);
* endpoints: ``POST {parent}/endpoints[?endpointId=]`` (long-running), ``GET``, ``GET`` list with a
  ``display_name="…"`` filter, ``PATCH ?updateMask=`` (``displayName``, ``description``, ``labels``,
  ``trafficSplit``, ``predictRequestResponseLoggingConfig``), ``:deployModel`` and ``:undeployModel``
  (long-running), ``:predict``;
* operations: ``GET …/operations/{id}`` under ``/v1/`` and ``/ui/`` (the REST transport's
  operations client lists the ``/ui/`` route first).

Vertex AI rules it enforces (each answers Google's JSON error shape ``{"error": {"code", "message",
"status"}}``):

* aliases are unique within a model (merging an alias another version holds moves it), exactly one
  version holds ``default``, and it cannot be removed from its holder (add it elsewhere instead);
  the alias pattern ``[a-z][a-zA-Z0-9-]{0,126}[a-z-0-9]``; a version id looks like an integer, so
  an alias cannot;
* ``deleteVersion`` refuses a version with DeployedModels and the only version
  (FAILED_PRECONDITION: "Model version can only be deleted if there are no DeployedModels created
  from it. Deleting the only version in the Model is not allowed"); a deleted ``default`` version
  hands ``default`` to the next most recent one; ``models.delete`` refuses a model with deployed
  versions;
* ``deployModel``: ``dedicatedResources`` with ``machineSpec.machineType`` and
  ``minReplicaCount`` ≥ 1 for models that support DEDICATED_RESOURCES (BigQuery ML ARIMA_PLUS models
  support no deployment: FAILED_PRECONDITION); ``trafficSplit`` refers to the new model as ``"0"``,
  must name deployed models only and sum to 100; left empty, the split is not changed (the first
  model on an endpoint then gets 100);
* ``undeployModel``: the remaining split must sum to 100 (or be empty when nothing is left);
* long-running operations are **not done** in the first answer nor in the first
  ``polls_before_done`` ``operations.get`` answers; their change is applied when they complete,
  as on Vertex AI, where the endpoint changes only when the operation finishes.

Predictions are computed from the real model. A version that BigQuery ML registered (through the
BigQuery double, :meth:`FakeVertexApi.register_bqml`) keeps the BigQuery ML model it came from;
``:predict`` checks the instances against that model's input columns (BigQuery's
``Model.featureColumns``: for a model with TRANSFORM, "the input of the TRANSFORM clause"), has the
BigQuery double run ``ML.PREDICT`` on them, and answers in the export serving signature of the
model type, built here from the "Export models" page (*Prediction output format*) and the real
responses cited in ``lakehouse_ml_tests/golden/`` (not with the project's own code):
``predicted_<label>`` a one-element list, classes as STRINGs, every k-means centroid in id order.
Each endpoint picks the deployed model by smooth weighted round robin over its traffic split, so a
90/10 split sends exactly one request in ten to the canary. Every request is recorded
(:attr:`FakeVertexApi.requests`). A version seeded with :meth:`FakeVertexApi.seed_bqml_model` has no
model behind it, for the registry's tests; predicting with it answers INTERNAL.

Other behaviour it reproduces, each with its source:

* CREATE OR REPLACE / DROP of a registered BigQuery ML model deletes its version, refused while the
  version is deployed ("Manage BigQuery ML models in Vertex AI"; the FAILED_PRECONDITION text of
  GoogleCloudPlatform/vertex-ai-samples PR #788), see :meth:`FakeVertexApi.bqml_refusal`;
* deleting the version that holds ``default`` moves ``default`` to the next most recent version
  (model-alias page: "When you delete a model version assigned the default alias, the alias is
  automatically assigned to the next most recent version");
* ``refuse_deletes_after_undeploy``: a delete right after an undeploy is refused that many times
  (googleapis/python-aiplatform#2807: "Cannot clean up model registry, after undeploy");
* ``log_delay_s``: request-response log rows land in BigQuery that long after the predict, as
  Vertex AI writes them asynchronously; :meth:`FakeVertexApi.deliver_logs` moves the due ones;
* :meth:`FakeVertexApi.fail_next`: answer the next calls 429 RESOURCE_EXHAUSTED or 503 UNAVAILABLE
  (Vertex AI's quota errors, "Retry after a few seconds");
* Cloud Monitoring's ``projects.timeSeries.list`` of
  ``aiplatform.googleapis.com/prediction/online/prediction_count`` for the endpoints served here.

Request-response logging: with a BigQuery double attached (``FakeVertexApi(bigquery=…)``, a
:class:`lakehouse_ml_tests.fakes.bigquery_api.FakeBigQueryApi`), a predict on an endpoint whose
``predictRequestResponseLoggingConfig`` is enabled appends one row per logged request to the
configured ``bq://project[.dataset[.table]]`` (Vertex AI's defaults for the missing parts), in the
columns :data:`REQUEST_LOG_SCHEMA` (the sources are listed in ``lakehouse_ml/backends/vertex.py``):
``request_payload`` / ``response_payload`` hold one JSON text per instance / prediction,
``request_id`` is a NUMERIC and ``logging_time`` comes from :attr:`FakeVertexApi.clock`. Sampling
is deterministic (a rate of 0.25 logs every fourth request). A write BigQuery refuses (its dataset
missing, say) is not an error for the predict, as on Vertex AI: it is kept in
:attr:`FakeVertexApi.logging_errors`.

:meth:`FakeVertexApi.seed_bqml_model` registers versions as BigQuery ML does
(``modelSourceInfo.sourceType = BQML``); it also records the BigQuery model's training runs with
``vertexAiModelId`` / ``vertexAiModelVersion``, served on BigQuery's ``models.get`` route
(``GET /bigquery/v2/projects/{p}/datasets/{d}/models/{m}``), so the same server can stand in for
both APIs when a test needs the link from a BigQuery ML model to its registry version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import http.server
import itertools
import json
import re
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterator

_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."
_STATUS_HTTP = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
}
_STATUS_CODE = {  # google.rpc.Code numbers (for errors inside operations)
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "FAILED_PRECONDITION": 9,
    "INTERNAL": 13,
    "UNIMPLEMENTED": 12,
}
ALIAS_PATTERN = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z-0-9]$")
# endpoints.create, endpointId: "If the first character is a letter, this value may be up to 63
# characters, and valid characters are [a-z0-9-]. The last character must be a letter or number.
# If the first character is a number, this value may be up to 9 characters, and valid characters
# are [0-9] with no leading zeros."
ENDPOINT_ID_PATTERN = re.compile(r"^([a-z][a-z0-9-]{0,61}[a-z0-9]|[a-z]|[1-9][0-9]{0,8})$")
NON_DEPLOYABLE_BQML_TYPES = ("ARIMA_PLUS", "ARIMA_PLUS_XREG")
DEFAULT_PROJECT_NUMBER = "123456789012"
# The request-response logging table (REST field dicts for the BigQuery double).
REQUEST_LOG_SCHEMA = [
    {"name": "endpoint", "type": "STRING", "mode": "NULLABLE"},
    {"name": "deployed_model_id", "type": "STRING", "mode": "NULLABLE"},
    {"name": "logging_time", "type": "TIMESTAMP", "mode": "NULLABLE"},
    {"name": "request_id", "type": "NUMERIC", "mode": "NULLABLE"},
    {"name": "request_payload", "type": "STRING", "mode": "REPEATED"},
    {"name": "response_payload", "type": "STRING", "mode": "REPEATED"},
]

_LOC = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_MODEL = _LOC + r"/models/(?P<model>[^/@:]+)(?:@(?P<version>[^/:]+))?"
_ENDPOINT = _LOC + r"/endpoints/(?P<endpoint>[^/:]+)"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class VertexApiError(Exception):
    """An answer in Google's error shape."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def http_code(self) -> int:
        return _STATUS_HTTP.get(self.status, 500)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.http_code, "message": self.message, "status": self.status}}

    def rpc_status(self) -> dict[str, Any]:
        return {"code": _STATUS_CODE.get(self.status, 2), "message": self.message}


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    status: int = 0
    response: Any = None


@dataclasses.dataclass
class _Version:
    version_id: str
    display_name: str
    model_type: str
    labels: dict[str, str]
    description: str
    create_time: str
    update_time: str
    source_type: str
    deployable: bool
    bq_model: tuple[str, str, str] | None = None  # (project, dataset, model) of its BigQuery ML model


@dataclasses.dataclass
class _Model:
    project: str
    location: str
    model_id: str
    display_name: str
    create_time: str
    next_version: int = 1
    versions: dict[str, _Version] = dataclasses.field(default_factory=dict)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # alias -> version id


@dataclasses.dataclass
class _Endpoint:
    project: str
    location: str
    endpoint_id: str
    display_name: str
    create_time: str
    update_time: str
    description: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    deployed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    traffic_split: dict[str, int] = dataclasses.field(default_factory=dict)
    logging: dict[str, Any] | None = None
    rr_credit: dict[str, int] = dataclasses.field(default_factory=dict)  # smooth weighted round robin
    log_credit: float = 0.0  # deterministic request-response log sampling


@dataclasses.dataclass
class _Operation:
    name: str
    metadata_type: str
    response_type: str
    complete: Callable[[], dict[str, Any]]  # applies the change; returns the response body
    polls_left: int
    create_time: str
    done: bool = False
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class FakeVertexApi:
    """The test double. Use :func:`fake_vertex_api` (or ``with FakeVertexApi() as api``)."""

    def __init__(
        self,
        *,
        project_number: str = DEFAULT_PROJECT_NUMBER,
        polls_before_done: int = 1,
        page_size: int = 50,
        bigquery: Any = None,
        log_delay_s: float = 0.0,
        refuse_deletes_after_undeploy: int = 0,
    ):
        self.project_number = project_number
        self.bigquery = bigquery  # a FakeBigQueryApi: runs the models, receives the request-response log
        if bigquery is not None:
            bigquery.vertex = self
        self.log_delay_s = log_delay_s
        # The request-response log cannot be written (the Vertex AI service agent may not write to
        # the dataset): rows are dropped, the predictions still succeed.
        self.log_writes_fail = False
        self.refuse_deletes_after_undeploy = refuse_deletes_after_undeploy
        self._pending_logs: list[tuple[float, tuple[str, str, str], dict[str, Any]]] = []
        self._undeploying: dict[tuple[tuple[str, str, str], str], int] = {}
        self._failures: list[tuple[str | None, str]] = []
        self._served: list[
            tuple[dt.datetime, str, str, int]
        ] = []  # time, endpoint id, deployed model, predictions
        self.clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
        self.logging_errors: list[str] = []
        self._request_ids = itertools.count(7_000_000_000_000_000_001)
        self.polls_before_done = polls_before_done
        self.page_size = page_size
        self.lock = threading.RLock()
        self._models: dict[tuple[str, str, str], _Model] = {}
        self._endpoints: dict[tuple[str, str, str], _Endpoint] = {}
        self._operations: dict[str, _Operation] = {}
        self._bq_models: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._recently_undeployed: dict[tuple[tuple[str, str, str], str], list[str]] = {}
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("The fake Vertex AI API is not running: call start() first.")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeVertexApi":
        api = self

        class Handler(_Handler):
            fake = api

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = False  # server_close() joins the request threads
        server.block_on_close = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-vertex-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._server = None
        self._thread = None

    def __enter__(self) -> "FakeVertexApi":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self.lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self.lock:
            self._requests.clear()

    def find_requests(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Requests with this method whose path matches the regular expression ``path`` in full."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path is None or re.fullmatch(path, r.path))
        ]

    def _register(
        self,
        project: str,
        location: str,
        model_id: str,
        *,
        model_type: str,
        aliases,
        display_name: str | None,
        labels: dict[str, str] | None,
        bq_model: tuple[str, str, str] | None,
    ) -> str:
        """A new version as BigQuery ML's CREATE MODEL with ``MODEL_REGISTRY='VERTEX_AI'`` makes it
        (version 1 of a new id also gets ``default``; the given aliases move to it)."""
        for alias in aliases:
            if not ALIAS_PATTERN.match(alias):
                raise VertexApiError("INVALID_ARGUMENT", f"invalid alias {alias!r}")
        key = (project, location, model_id)
        now = _now()
        model = self._models.get(key)
        if model is None:
            model = _Model(project, location, model_id, display_name or model_id, now)
            self._models[key] = model
        version_id = str(model.next_version)
        model.next_version += 1
        model.versions[version_id] = _Version(
            version_id=version_id,
            display_name=display_name or model.display_name,
            model_type=model_type.upper(),
            labels=dict(labels or {}),
            description="",
            create_time=now,
            update_time=now,
            source_type="BQML",
            deployable=model_type.upper() not in NON_DEPLOYABLE_BQML_TYPES,
            bq_model=bq_model,
        )
        if "default" not in model.aliases:
            model.aliases["default"] = version_id
        for alias in aliases:
            model.aliases[alias] = version_id
        return version_id

    def seed_bqml_model(
        self,
        project: str,
        location: str,
        model_id: str,
        *,
        dataset: str,
        bq_model: str | None = None,
        model_type: str = "LOGISTIC_REG",
        aliases: list[str] | tuple[str, ...] = (),
        display_name: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        """Register a version with no model behind it (for the registry's tests; predicting with
        it answers INTERNAL); returns the version id. The BigQuery model ``dataset.bq_model``
        (default: the model id) then reports this version in its last training run, served on
        BigQuery's ``models.get`` route by this double."""
        with self.lock:
            version_id = self._register(
                project,
                location,
                model_id,
                model_type=model_type,
                aliases=aliases,
                display_name=display_name,
                labels=labels,
                bq_model=None,
            )
            bq_key = (project, dataset, bq_model or model_id)
            self._bq_models[bq_key] = {
                "modelReference": {
                    "projectId": project,
                    "datasetId": dataset,
                    "modelId": bq_model or model_id,
                },
                "modelType": model_type.upper(),
                "location": location,
                "trainingRuns": [
                    {
                        "startTime": _now(),
                        "vertexAiModelId": model_id,
                        "vertexAiModelVersion": version_id,
                        "trainingOptions": {"modelRegistry": "VERTEX_AI"},
                    }
                ],
            }
            return version_id

    # -- what the BigQuery double calls when BigQuery ML registers, replaces or drops a model --------
    def register_bqml(
        self,
        project: str,
        location: str,
        model_id: str,
        *,
        dataset: str,
        bq_model: str,
        model_type: str,
        aliases=(),
        labels: dict[str, str] | None = None,
    ) -> str:
        with self.lock:
            return self._register(
                project,
                location,
                model_id,
                model_type=model_type,
                aliases=aliases,
                display_name=model_id,
                labels=labels,
                bq_model=(project, dataset, bq_model),
            )

    def bqml_version(self, project: str, dataset: str, bq_model: str) -> tuple[_Model, _Version] | None:
        """The version registered from the BigQuery ML model, if any."""
        with self.lock:
            for model in self._models.values():
                for version in model.versions.values():
                    if version.bq_model == (project, dataset, bq_model):
                        return model, version
            return None

    def bqml_refusal(self, project: str, dataset: str, bq_model: str) -> str | None:
        """Why the version of a BigQuery ML model cannot be deleted now (None when it can): it is
        deployed, or was undeployed a moment ago (``refuse_deletes_after_undeploy``)."""
        with self.lock:
            found = self.bqml_version(project, dataset, bq_model)
            if found is None:
                return None
            model, version = found
            endpoints = [d["endpoint"] for d in self._deployments_of(model, version.version_id)]
            key = ((model.project, model.location, model.model_id), version.version_id)
            if not endpoints and self._undeploying.get(key, 0) > 0:
                self._undeploying[key] -= 1
                endpoints = [e for e in self._recently_undeployed.get(key, [])]
            if not endpoints:
                return None
            # The answer BigQuery gave in GoogleCloudPlatform/vertex-ai-samples PR #788.
            return (
                "Model Registry failed: com.google.cloud.ai.platform.common.errors.AiPlatformException: "
                "code=FAILED_PRECONDITION, message=The Model is deployed or being deployed at the following "
                f"Endpoint(s): {', '.join(sorted(set(endpoints)))}. Please undeploy the model before retry., cause=null"
            )

    def delete_registered(self, model: _Model, version: _Version) -> None:
        """The version of a replaced or dropped BigQuery ML model is deleted ("the existing Model
        Registry model version is deleted and replaced with the new model"); the caller checked
        :meth:`bqml_refusal` first."""
        with self.lock:
            if model.versions.get(version.version_id) is version:
                self._delete_version_now(model, version)

    def _delete_version_now(self, model: _Model, version: _Version) -> None:
        vid = version.version_id
        model.versions.pop(vid, None)
        held_default = model.aliases.get("default") == vid
        for alias in [a for a, v in model.aliases.items() if v == vid]:
            del model.aliases[alias]
        if not model.versions:
            self._models.pop((model.project, model.location, model.model_id), None)
        elif held_default:
            model.aliases["default"] = max(model.versions, key=int)

    def fail_next(self, count: int, status: str = "RESOURCE_EXHAUSTED", path: str | None = None) -> None:
        """Answer the next ``count`` requests (whose path matches the regular expression ``path``)
        with 429 RESOURCE_EXHAUSTED or 503 UNAVAILABLE."""
        with self.lock:
            self._failures.extend([(path, status)] * count)

    def deliver_logs(self) -> int:
        """Write the request-response log rows whose delay has passed; returns how many."""
        with self.lock:
            now = time.monotonic()
            due = [item for item in self._pending_logs if item[0] <= now]
            self._pending_logs = [item for item in self._pending_logs if item[0] > now]
        for _, (project, dataset, table), row in due:
            if self.log_writes_fail:
                self.logging_errors.append(f"Permission denied while writing to {project}.{dataset}.{table}")
                continue
            try:
                self.bigquery.append_rows(project, dataset, table, [row], REQUEST_LOG_SCHEMA)
            except Exception as err:  # the BigQuery double's refusal: the predict still succeeded
                self.logging_errors.append(str(err))
        return len(due)

    def model_state(self, project: str, location: str, model_id: str) -> dict[str, Any]:
        """``{"versions": [...], "aliases": {alias: version}}`` read directly (not through the API)."""
        with self.lock:
            model = self._models[(project, location, model_id)]
            return {"versions": sorted(model.versions, key=int), "aliases": dict(model.aliases)}

    def endpoint_state(self, project: str, location: str, endpoint_id: str) -> dict[str, Any]:
        """The endpoint resource as ``endpoints.get`` would answer it, read directly."""
        with self.lock:
            return self._endpoint_json(self._endpoints[(project, location, endpoint_id)])

    def operations_polled(self) -> list[RecordedRequest]:
        return self.find_requests("GET", r"/(v1|ui)/.*/operations/[^/]+")

    # -- resources -------------------------------------------------------------------------------
    def _pnum(self, project: str) -> str:
        return self.project_number

    def _model_name(self, model: _Model) -> str:
        return f"projects/{self._pnum(model.project)}/locations/{model.location}/models/{model.model_id}"

    def _version_aliases(self, model: _Model, version_id: str) -> list[str]:
        held = [a for a, v in model.aliases.items() if v == version_id]
        return sorted(held, key=lambda a: (a != "default", a))

    def _deployments_of(self, model: _Model, version_id: str | None = None) -> list[dict[str, str]]:
        refs = []
        for ep in self._endpoints.values():
            for dm in ep.deployed:
                if dm["_model_key"] == (model.project, model.location, model.model_id) and (
                    version_id is None or dm["modelVersionId"] == version_id
                ):
                    refs.append({"endpoint": self._endpoint_name(ep), "deployedModelId": dm["id"]})
        return refs

    def _version_json(self, model: _Model, version: _Version) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self._model_name(model),
            "versionId": version.version_id,
            "versionAliases": self._version_aliases(model, version.version_id),
            "versionCreateTime": version.create_time,
            "versionUpdateTime": version.update_time,
            "displayName": version.display_name,
            "createTime": model.create_time,
            "updateTime": version.update_time,
            "modelSourceInfo": {"sourceType": version.source_type},
            "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"] if version.deployable else [],
            "etag": f"etag-{version.version_id}-{version.update_time}",
        }
        if version.labels:
            body["labels"] = dict(version.labels)
        if version.description:
            body["versionDescription"] = version.description
        deployed = self._deployments_of(model, version.version_id)
        if deployed:
            body["deployedModels"] = deployed
        return body

    def _find_model(self, project: str, location: str, model_id: str) -> _Model:
        model = self._models.get((project, location, model_id))
        if model is None and project == self.project_number:
            matches = [m for (p, loc, i), m in self._models.items() if loc == location and i == model_id]
            model = matches[0] if matches else None
        if model is None:
            raise VertexApiError(
                "NOT_FOUND",
                f"Model projects/{project}/locations/{location}/models/{model_id} not found.",
            )
        return model

    def _find_version(self, model: _Model, version_or_alias: str | None) -> _Version:
        ref = version_or_alias or "default"
        version_id = model.aliases.get(ref, ref)
        version = model.versions.get(version_id)
        if version is None:
            raise VertexApiError(
                "NOT_FOUND",
                f'Model {self._model_name(model)}@{ref} not found: no version or alias "{ref}".',
            )
        return version

    def _endpoint_name(self, ep: _Endpoint) -> str:
        return f"projects/{self._pnum(ep.project)}/locations/{ep.location}/endpoints/{ep.endpoint_id}"

    def _endpoint_json(self, ep: _Endpoint) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self._endpoint_name(ep),
            "displayName": ep.display_name,
            "createTime": ep.create_time,
            "updateTime": ep.update_time,
            "etag": f"etag-{ep.update_time}",
        }
        if ep.description:
            body["description"] = ep.description
        if ep.labels:
            body["labels"] = dict(ep.labels)
        if ep.deployed:
            body["deployedModels"] = [
                {k: v for k, v in dm.items() if not k.startswith("_")} for dm in ep.deployed
            ]
        if ep.traffic_split:
            body["trafficSplit"] = dict(ep.traffic_split)
        if ep.logging is not None:
            body["predictRequestResponseLoggingConfig"] = json.loads(json.dumps(ep.logging))
        return body

    def _find_endpoint(self, project: str, location: str, endpoint_id: str) -> _Endpoint:
        ep = self._endpoints.get((project, location, endpoint_id))
        if ep is None and project == self.project_number:
            matches = [
                e for (p, loc, i), e in self._endpoints.items() if loc == location and i == endpoint_id
            ]
            ep = matches[0] if matches else None
        if ep is None:
            raise VertexApiError(
                "NOT_FOUND",
                f"Endpoint projects/{project}/locations/{location}/endpoints/{endpoint_id} not found.",
            )
        return ep

    # -- operations ------------------------------------------------------------------------------
    def _start_operation(
        self, parent: str, metadata_type: str, response_type: str, complete: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        op_id = str(8000000000000000000 + next(self._ids))
        name = f"{parent}/operations/{op_id}"
        op = _Operation(name, metadata_type, response_type, complete, self.polls_before_done, _now())
        self._operations[name] = op
        return self._operation_json(op)

    def _operation_json(self, op: _Operation) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": op.name,
            "metadata": {
                "@type": _TYPE + op.metadata_type,
                "genericMetadata": {"createTime": op.create_time, "updateTime": _now()},
            },
            "done": op.done,
        }
        if op.done:
            if op.error is not None:
                body["error"] = op.error
            else:
                body["response"] = {"@type": op.response_type, **(op.response or {})}
        return body

    def _get_operation(self, name: str) -> dict[str, Any]:
        op = self._operations.get(name)
        if op is None:
            # Names come back with the project number; a client may use the project id.
            tail = name.split("/locations/", 1)[-1]
            hits = [o for n, o in self._operations.items() if n.split("/locations/", 1)[-1] == tail]
            op = hits[0] if hits else None
        if op is None:
            raise VertexApiError("NOT_FOUND", f"Operation {name} not found.")
        if not op.done:
            if op.polls_left > 0:
                op.polls_left -= 1
            else:
                try:
                    op.response = op.complete()
                except VertexApiError as err:
                    op.error = err.rpc_status()
                op.done = True
        return self._operation_json(op)

    # -- dispatch --------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if self.bigquery is not None:
            self.deliver_logs()
        with self.lock:
            failure = next((f for f in self._failures if f[0] is None or re.search(f[0], path)), None)
            if failure is not None:
                self._failures.remove(failure)
                err = VertexApiError(
                    failure[1],
                    "Quota exceeded: retry after a few seconds."
                    if failure[1] == "RESOURCE_EXHAUSTED"
                    else "The service is currently unavailable.",
                )
                return err.http_code, err.body()
            try:
                return 200, self._dispatch(method, path, query, body)
            except VertexApiError as err:
                return err.http_code, err.body()

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        path = urllib.parse.unquote(path)
        m = re.fullmatch(r"/bigquery/v2/projects/([^/]+)/datasets/([^/]+)/models/([^/]+)", path)
        if m and method == "GET":
            found = self._bq_models.get(m.groups())
            if found is None:
                raise VertexApiError("NOT_FOUND", f"Not found: Model {m[1]}:{m[2]}.{m[3]}")
            return found
        m = re.fullmatch(r"/v3/projects/([^/]+)/timeSeries", path)
        if m and method == "GET":
            return self._time_series(m[1], query)
        m = re.fullmatch(r"/(?:v1|ui)/(" + _LOC + r"(?:/(?:models|endpoints)/[^/]+)?/operations/[^/]+)", path)
        if m and method == "GET":
            return self._get_operation(m[1])
        if not path.startswith("/v1/"):
            raise VertexApiError("NOT_FOUND", f"The test double has no route {method} {path}.")
        rest = path[len("/v1/") :]
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", _LOC + r"/models", self._models_list),
            ("GET", _MODEL + r":listVersions", self._models_list_versions),
            ("POST", _MODEL + r":mergeVersionAliases", self._models_merge_aliases),
            ("DELETE", _MODEL + r":deleteVersion", self._models_delete_version),
            ("GET", _MODEL, self._models_get),
            ("DELETE", _MODEL, self._models_delete),
            ("POST", _LOC + r"/endpoints", self._endpoints_create),
            ("GET", _LOC + r"/endpoints", self._endpoints_list),
            ("POST", _ENDPOINT + r":deployModel", self._endpoints_deploy),
            ("POST", _ENDPOINT + r":undeployModel", self._endpoints_undeploy),
            ("POST", _ENDPOINT + r":predict", self._endpoints_predict),
            ("GET", _ENDPOINT, self._endpoints_get),
            ("PATCH", _ENDPOINT, self._endpoints_patch),
            ("DELETE", _ENDPOINT, self._endpoints_delete),
        ]
        for verb, pattern, handler in routes:
            m = re.fullmatch(pattern, rest)
            if m and verb == method:
                return handler(query=query, body=body if isinstance(body, dict) else {}, **m.groupdict())
        raise VertexApiError("UNIMPLEMENTED", f"The test double does not implement {method} {path}.")

    # -- models ----------------------------------------------------------------------------------
    def _page(self, items: list[dict[str, Any]], key: str, query: dict[str, str]) -> dict[str, Any]:
        size = int(query.get("pageSize") or self.page_size) or self.page_size
        start = int(query.get("pageToken") or 0)
        out: dict[str, Any] = {key: items[start : start + size]}
        if start + size < len(items):
            out["nextPageToken"] = str(start + size)
        return out

    def _models_get(self, project, location, model, version, query, body):
        found = self._find_model(project, location, model)
        return self._version_json(found, self._find_version(found, version))

    def _models_list(self, project, location, query, body):
        if query.get("filter"):
            raise VertexApiError(
                "INVALID_ARGUMENT", "The test double supports models.list without a filter only."
            )
        models = sorted(
            (
                m
                for (p, loc, _), m in self._models.items()
                if project in (p, self.project_number) and loc == location
            ),
            key=lambda m: m.model_id,
        )
        return self._page(
            [self._version_json(m, self._find_version(m, "default")) for m in models], "models", query
        )

    def _models_list_versions(self, project, location, model, version, query, body):
        found = self._find_model(project, location, model)
        items = [
            self._version_json(found, v) for _, v in sorted(found.versions.items(), key=lambda kv: int(kv[0]))
        ]
        return self._page(items, "models", query)

    def _models_merge_aliases(self, project, location, model, version, query, body):
        found = self._find_model(project, location, model)
        target = self._find_version(found, version)
        aliases = body.get("versionAliases")
        if not isinstance(aliases, list) or not aliases:
            raise VertexApiError("INVALID_ARGUMENT", "versionAliases is required and must not be empty.")
        add, remove = [], []
        for raw in aliases:
            name = raw[1:] if isinstance(raw, str) and raw.startswith("-") else raw
            if not isinstance(name, str) or not ALIAS_PATTERN.match(name):
                raise VertexApiError(
                    "INVALID_ARGUMENT",
                    f'Invalid version alias "{raw}": it must match [a-z][a-zA-Z0-9-]{{0,126}}[a-z-0-9].',
                )
            (remove if raw.startswith("-") else add).append(name)
        both = set(add) & set(remove)
        add = [a for a in add if a not in both]
        remove = [r for r in remove if r not in both]
        if "default" in remove and found.aliases.get("default") == target.version_id:
            raise VertexApiError(
                "FAILED_PRECONDITION",
                "The default alias cannot be removed from the default version; add it to another version.",
            )
        now = _now()
        for name in remove:
            if found.aliases.get(name) == target.version_id:
                del found.aliases[name]
        for name in add:
            old = found.aliases.get(name)
            if old is not None and old != target.version_id and old in found.versions:
                found.versions[old].update_time = now
            found.aliases[name] = target.version_id
        target.update_time = now
        return self._version_json(found, target)

    def _models_delete_version(self, project, location, model, version, query, body):
        found = self._find_model(project, location, model)
        if not version:
            raise VertexApiError("INVALID_ARGUMENT", "deleteVersion needs a name with @<version id>.")
        target = self._find_version(found, version)
        vid = target.version_id
        deployed = self._deployments_of(found, vid)
        if deployed:
            raise VertexApiError(
                "FAILED_PRECONDITION",
                f"Model version {self._model_name(found)}@{vid} has deployed models and cannot be deleted: "
                + ", ".join(f"{d['endpoint']} ({d['deployedModelId']})" for d in deployed)
                + ". Undeploy them first.",
            )
        key = ((found.project, found.location, found.model_id), vid)
        if self._undeploying.get(key, 0) > 0:  # googleapis/python-aiplatform#2807
            self._undeploying[key] -= 1
            raise VertexApiError(
                "FAILED_PRECONDITION",
                f"Model version {self._model_name(found)}@{vid} is being undeployed from "
                f"{', '.join(self._recently_undeployed.get(key, []))}; retry later.",
            )
        if len(found.versions) == 1:
            raise VertexApiError(
                "FAILED_PRECONDITION",
                "Deleting the only version in the Model is not allowed. "
                "Use models.delete for deleting the Model instead.",
            )

        def complete() -> dict[str, Any]:
            # "When you delete a model version assigned the default alias, the alias is
            # automatically assigned to the next most recent version" (model-alias page).
            if vid in found.versions:
                self._delete_version_now(found, found.versions[vid])
            return {}

        return self._start_operation(
            self._model_name(found),
            "DeleteOperationMetadata",
            "type.googleapis.com/google.protobuf.Empty",
            complete,
        )

    def _models_delete(self, project, location, model, version, query, body):
        if version:
            raise VertexApiError("INVALID_ARGUMENT", "models.delete takes a model name without a version.")
        found = self._find_model(project, location, model)
        deployed = self._deployments_of(found)
        if deployed:
            raise VertexApiError(
                "FAILED_PRECONDITION",
                f"Model {self._model_name(found)} has deployed models and cannot be deleted: "
                + ", ".join(f"{d['endpoint']} ({d['deployedModelId']})" for d in deployed)
                + ". Undeploy them first.",
            )

        def complete() -> dict[str, Any]:
            self._models.pop((found.project, found.location, found.model_id), None)
            return {}

        return self._start_operation(
            self._model_name(found),
            "DeleteOperationMetadata",
            "type.googleapis.com/google.protobuf.Empty",
            complete,
        )

    # -- endpoints -------------------------------------------------------------------------------
    def _endpoints_create(self, project, location, query, body):
        endpoint_id = query.get("endpointId") or str(100000000 + next(self._ids))  # up to 9 digits
        if not ENDPOINT_ID_PATTERN.match(endpoint_id):
            raise VertexApiError(
                "INVALID_ARGUMENT",
                f'Invalid endpointId "{endpoint_id}": up to 63 characters from [a-z0-9-] starting with a letter, '
                "or up to 9 digits without a leading zero.",
            )
        if (project, location, endpoint_id) in self._endpoints:
            raise VertexApiError("ALREADY_EXISTS", f"Endpoint with id {endpoint_id} already exists.")
        display_name = body.get("displayName")
        if not display_name:
            raise VertexApiError("INVALID_ARGUMENT", "endpoint.displayName is required.")
        now = _now()
        ep = _Endpoint(project, location, endpoint_id, display_name, now, now)
        if body.get("predictRequestResponseLoggingConfig"):
            ep.logging = self._check_logging(body["predictRequestResponseLoggingConfig"])
        parent = f"projects/{self._pnum(project)}/locations/{location}/endpoints/{endpoint_id}"

        def complete() -> dict[str, Any]:
            self._endpoints[(project, location, endpoint_id)] = ep
            return self._endpoint_json(ep)

        return self._start_operation(parent, "CreateEndpointOperationMetadata", _TYPE + "Endpoint", complete)

    def _endpoints_get(self, project, location, endpoint, query, body):
        return self._endpoint_json(self._find_endpoint(project, location, endpoint))

    def _endpoints_list(self, project, location, query, body):
        items = [
            e
            for (p, loc, _), e in sorted(self._endpoints.items())
            if project in (p, self.project_number) and loc == location
        ]
        flt = (query.get("filter") or "").strip()
        if flt:
            m = re.fullmatch(r'display_name\s*=\s*"([^"]*)"', flt) or re.fullmatch(
                r"display_name\s*=\s*(\S+)", flt
            )
            if m is None:
                raise VertexApiError(
                    "INVALID_ARGUMENT",
                    f'The test double supports only display_name="…" filters; got {flt!r}.',
                )
            items = [e for e in items if e.display_name == m[1]]
        return self._page([self._endpoint_json(e) for e in items], "endpoints", query)

    def _endpoints_delete(self, project, location, endpoint, query, body):
        ep = self._find_endpoint(project, location, endpoint)
        if ep.deployed:
            raise VertexApiError(
                "FAILED_PRECONDITION", "The endpoint has deployed models; undeploy them first."
            )

        def complete() -> dict[str, Any]:
            self._endpoints.pop((ep.project, ep.location, ep.endpoint_id), None)
            return {}

        return self._start_operation(
            self._endpoint_name(ep),
            "DeleteOperationMetadata",
            "type.googleapis.com/google.protobuf.Empty",
            complete,
        )

    @staticmethod
    def _check_split(split: Any, deployed: set[str], what: str) -> dict[str, int]:
        if not isinstance(split, dict):
            raise VertexApiError(
                "INVALID_ARGUMENT", f"{what} must be a map of deployed model id to percentage."
            )
        out: dict[str, int] = {}
        for k, v in split.items():
            if k not in deployed:
                raise VertexApiError(
                    "INVALID_ARGUMENT", f"{what} refers to DeployedModel {k}, which is not deployed."
                )
            if not isinstance(v, int) or not 0 <= v <= 100:
                raise VertexApiError(
                    "INVALID_ARGUMENT", f"{what}[{k}] must be an integer between 0 and 100; got {v!r}."
                )
            out[k] = v
        if deployed and sum(out.values()) != 100:
            raise VertexApiError(
                "INVALID_ARGUMENT", f"The {what} values must add up to 100; got {sum(out.values())} ({out})."
            )
        if not deployed and out:
            raise VertexApiError("INVALID_ARGUMENT", f"{what} must be empty when no models are deployed.")
        return out

    @staticmethod
    def _check_logging(config: Any) -> dict[str, Any]:
        if not isinstance(config, dict):
            raise VertexApiError("INVALID_ARGUMENT", "predictRequestResponseLoggingConfig must be an object.")
        rate = config.get("samplingRate", 0)
        if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise VertexApiError("INVALID_ARGUMENT", f"samplingRate must be in [0, 1]; got {rate!r}.")
        uri = (config.get("bigqueryDestination") or {}).get("outputUri", "")
        if (
            config.get("enabled")
            and uri
            and not re.fullmatch(r"bq://[a-z][a-z0-9-]{4,28}[a-z0-9](\.\w+){0,2}", uri)
        ):
            raise VertexApiError(
                "INVALID_ARGUMENT",
                f"bigqueryDestination.outputUri must be bq://project[.dataset[.table]]; got {uri!r}.",
            )
        return json.loads(json.dumps(config))

    def _endpoints_patch(self, project, location, endpoint, query, body):
        ep = self._find_endpoint(project, location, endpoint)
        mask = [p.strip() for p in (query.get("updateMask") or "").split(",") if p.strip()]
        if not mask:
            raise VertexApiError("INVALID_ARGUMENT", "updateMask is required.")
        camel = {
            "display_name": "displayName",
            "traffic_split": "trafficSplit",
            "predict_request_response_logging_config": "predictRequestResponseLoggingConfig",
        }
        changes: dict[str, Any] = {}
        for path in mask:
            field = camel.get(path, path)
            if field == "trafficSplit":
                changes[field] = self._check_split(
                    body.get("trafficSplit", {}), {d["id"] for d in ep.deployed}, "trafficSplit"
                )
            elif field == "predictRequestResponseLoggingConfig":
                changes[field] = self._check_logging(body.get(field) or {})
            elif field in ("displayName", "description", "labels"):
                changes[field] = body.get(field)
            else:
                raise VertexApiError(
                    "INVALID_ARGUMENT", f"updateMask path {path!r} is not supported by endpoints.patch."
                )
        if "trafficSplit" in changes:
            ep.traffic_split = {k: v for k, v in changes["trafficSplit"].items() if v}
        if "predictRequestResponseLoggingConfig" in changes:
            ep.logging = changes["predictRequestResponseLoggingConfig"]
        if "displayName" in changes:
            if not changes["displayName"]:
                raise VertexApiError("INVALID_ARGUMENT", "displayName must not be empty.")
            ep.display_name = changes["displayName"]
        if "description" in changes:
            ep.description = changes["description"] or ""
        if "labels" in changes:
            ep.labels = dict(changes["labels"] or {})
        ep.update_time = _now()
        return self._endpoint_json(ep)

    def _endpoints_deploy(self, project, location, endpoint, query, body):
        ep = self._find_endpoint(project, location, endpoint)
        spec = body.get("deployedModel")
        if not isinstance(spec, dict) or not spec.get("model"):
            raise VertexApiError("INVALID_ARGUMENT", "deployedModel.model is required.")
        m = re.fullmatch(_MODEL, spec["model"])
        if m is None:
            raise VertexApiError(
                "INVALID_ARGUMENT", f"deployedModel.model {spec['model']!r} is not a model resource name."
            )
        model = self._find_model(m["project"], m["location"], m["model"])
        if m["location"] != location:
            raise VertexApiError(
                "INVALID_ARGUMENT", "The model and the endpoint must be in the same location."
            )
        version = self._find_version(model, m["version"])
        if not version.deployable:
            raise VertexApiError(
                "FAILED_PRECONDITION",
                f"Model {self._model_name(model)}@{version.version_id} ({version.model_type}) does not support "
                "deployment: its supportedDeploymentResourcesTypes is empty.",
            )
        resources = spec.get("dedicatedResources")
        if not isinstance(resources, dict):
            raise VertexApiError(
                "INVALID_ARGUMENT",
                "deployedModel.dedicatedResources is required: the model supports DEDICATED_RESOURCES only.",
            )
        machine = (resources.get("machineSpec") or {}).get("machineType")
        if not machine:
            raise VertexApiError(
                "INVALID_ARGUMENT", "dedicatedResources.machineSpec.machineType is required."
            )
        min_replicas = resources.get("minReplicaCount", 0)
        if not isinstance(min_replicas, int) or min_replicas < 1:
            raise VertexApiError("INVALID_ARGUMENT", "dedicatedResources.minReplicaCount must be at least 1.")
        max_replicas = max(int(resources.get("maxReplicaCount") or min_replicas), min_replicas)
        dm_id = str(4000000000000000000 + next(self._ids))
        split_in = body.get("trafficSplit")
        new_split: dict[str, int] | None = None
        if split_in:
            current = {d["id"] for d in ep.deployed}
            renamed = {(dm_id if k == "0" else k): v for k, v in split_in.items()}
            new_split = self._check_split(renamed, current | {dm_id}, "trafficSplit")
        deployed = {
            "id": dm_id,
            "model": self._model_name(model),
            "modelVersionId": version.version_id,
            "displayName": spec.get("displayName") or version.display_name,
            "createTime": _now(),
            "dedicatedResources": {
                "machineSpec": {"machineType": machine},
                "minReplicaCount": min_replicas,
                "maxReplicaCount": max_replicas,
            },
            "_model_key": (model.project, model.location, model.model_id),
        }

        def complete() -> dict[str, Any]:
            if model.versions.get(version.version_id) is not version:
                raise VertexApiError(
                    "NOT_FOUND", "The model version was deleted while it was being deployed."
                )
            ep.deployed.append(deployed)
            if new_split is not None:
                ep.traffic_split = {k: v for k, v in new_split.items() if v}
            elif not ep.traffic_split:
                ep.traffic_split = {dm_id: 100}
            ep.update_time = _now()
            return {"deployedModel": {k: v for k, v in deployed.items() if not k.startswith("_")}}

        return self._start_operation(
            self._endpoint_name(ep), "DeployModelOperationMetadata", _TYPE + "DeployModelResponse", complete
        )

    def _endpoints_undeploy(self, project, location, endpoint, query, body):
        ep = self._find_endpoint(project, location, endpoint)
        dm_id = body.get("deployedModelId")
        if dm_id not in {d["id"] for d in ep.deployed}:
            raise VertexApiError(
                "NOT_FOUND", f"DeployedModel {dm_id} not found on endpoint {self._endpoint_name(ep)}."
            )
        remaining = {d["id"] for d in ep.deployed} - {dm_id}
        split_in = body.get("trafficSplit")
        if split_in:
            new_split = self._check_split(split_in, remaining, "trafficSplit")
        else:
            new_split = {k: v for k, v in ep.traffic_split.items() if k != dm_id}
            if remaining and sum(new_split.values()) != 100:
                raise VertexApiError(
                    "FAILED_PRECONDITION",
                    f"Undeploying DeployedModel {dm_id} would leave the traffic split at "
                    f"{sum(new_split.values())}%; send a trafficSplit for the remaining models.",
                )

        def complete() -> dict[str, Any]:
            gone = next(d for d in ep.deployed if d["id"] == dm_id)
            key = (gone["_model_key"], gone["modelVersionId"])
            if self.refuse_deletes_after_undeploy:
                self._undeploying[key] = self.refuse_deletes_after_undeploy
                self._recently_undeployed[key] = [self._endpoint_name(ep)]
            ep.deployed = [d for d in ep.deployed if d["id"] != dm_id]
            ep.traffic_split = {k: v for k, v in new_split.items() if v}
            ep.rr_credit.pop(dm_id, None)
            ep.update_time = _now()
            return {}

        return self._start_operation(
            self._endpoint_name(ep),
            "UndeployModelOperationMetadata",
            _TYPE + "UndeployModelResponse",
            complete,
        )

    def _endpoints_predict(self, project, location, endpoint, query, body):
        """Route by the traffic split under the lock, then compute outside it: the model runs in
        the BigQuery double, which takes its own lock (and calls back into this double when
        BigQuery ML registers a model)."""
        ep = self._find_endpoint(project, location, endpoint)
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise VertexApiError("INVALID_ARGUMENT", "instances must be a non-empty list.")
        live = {k: v for k, v in ep.traffic_split.items() if v > 0}
        if not live:
            raise VertexApiError(
                "FAILED_PRECONDITION",
                f"Endpoint {self._endpoint_name(ep)} has no deployed model taking traffic.",
            )
        # Smooth weighted round robin: deterministic and exact over a full cycle.
        for k, v in live.items():
            ep.rr_credit[k] = ep.rr_credit.get(k, 0) + v
        chosen = max(sorted(live), key=lambda k: ep.rr_credit[k])
        ep.rr_credit[chosen] -= sum(live.values())
        dm = next(d for d in ep.deployed if d["id"] == chosen)
        model = self._models.get(dm["_model_key"])
        version = model.versions.get(dm["modelVersionId"]) if model else None
        if version is None:
            raise VertexApiError("INTERNAL", "The deployed model version no longer exists.")
        if version.bq_model is None or self.bigquery is None:
            raise VertexApiError(
                "INTERNAL",
                "This version was seeded without a BigQuery ML model: the test double cannot predict with it.",
            )
        answer = {
            "deployedModelId": chosen,
            "model": dm["model"],
            "modelDisplayName": dm["displayName"],
            "modelVersionId": dm["modelVersionId"],
        }
        return _Deferred(lambda: self._predict_with(ep, chosen, version.bq_model, instances, answer))

    def _predict_with(
        self, ep: _Endpoint, chosen: str, bq_model: tuple[str, str, str], instances: list, answer: dict
    ) -> dict:
        resource = self.bigquery.model_resource(*bq_model)
        features = [(f["name"], f["type"]["typeKind"]) for f in resource["featureColumns"]]
        transform = bool(resource.get("transformColumns"))
        rows = [_instance_row(i, instance, features, transform) for i, instance in enumerate(instances)]
        predictions = _export_predictions(self.bigquery, bq_model, resource, features, rows)
        with self.lock:
            self._served.append((self.clock(), ep.endpoint_id, chosen, len(instances)))
            self._log_request(ep, chosen, instances, predictions)
        if self.log_delay_s <= 0:
            self.deliver_logs()
        return {"predictions": predictions, **answer}

    def _time_series(self, project: str, query: dict[str, str]) -> dict[str, Any]:
        """Cloud Monitoring ``projects.timeSeries.list`` of the prediction count
        (``aiplatform.googleapis.com/prediction/online/prediction_count`` of resource type
        ``aiplatform.googleapis.com/Endpoint`` with label ``endpoint_id``, as public code queries
        it), one point per predict served here. Assumed, not documented in what was found: that it
        is a DELTA INT64 metric and counts instances (monitoring only needs it to be non-zero when
        the endpoint served, and uses it with a margin either way)."""
        text = query.get("filter", "")
        if "aiplatform.googleapis.com/prediction/online/prediction_count" not in text:
            raise VertexApiError(
                "INVALID_ARGUMENT", f"The test double serves the prediction count metric only; got {text!r}."
            )
        wanted = re.search(r'resource\.labels\.endpoint_id\s*=\s*"([^"]+)"', text)
        try:
            lo = dt.datetime.fromisoformat(query["interval.startTime"].replace("Z", "+00:00"))
            hi = dt.datetime.fromisoformat(query["interval.endTime"].replace("Z", "+00:00"))
        except (KeyError, ValueError):
            raise VertexApiError(
                "INVALID_ARGUMENT", "interval.startTime and interval.endTime are required RFC 3339 times."
            ) from None
        series: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for when, endpoint_id, deployed_model_id, count in self._served:
            if (wanted is None or wanted[1] == endpoint_id) and lo <= when < hi:
                stamp = when.isoformat().replace("+00:00", "Z")
                series.setdefault((endpoint_id, deployed_model_id), []).append(
                    {"interval": {"startTime": stamp, "endTime": stamp}, "value": {"int64Value": str(count)}}
                )
        return {
            "timeSeries": [
                {
                    "metric": {
                        "type": "aiplatform.googleapis.com/prediction/online/prediction_count",
                        "labels": {"deployed_model_id": deployed_model_id},
                    },
                    "resource": {
                        "type": "aiplatform.googleapis.com/Endpoint",
                        "labels": {"endpoint_id": endpoint_id},
                    },
                    "metricKind": "DELTA",
                    "valueType": "INT64",
                    "points": points,
                }
                for (endpoint_id, deployed_model_id), points in sorted(series.items())
            ]
        }

    def _log_request(self, ep: _Endpoint, deployed_model_id: str, instances: list, predictions: list) -> None:
        """Vertex AI's request-response logging of one predict (see the module docstring): the row
        lands in BigQuery ``log_delay_s`` later."""
        config = ep.logging or {}
        if self.bigquery is None or not config.get("enabled"):
            return
        ep.log_credit += float(config.get("samplingRate") or 0)
        if ep.log_credit < 1 - 1e-9:
            return
        ep.log_credit -= 1
        uri = (config.get("bigqueryDestination") or {}).get("outputUri", "")
        m = re.fullmatch(r"bq://([^.]+)(?:\.([^.]+))?(?:\.([^.]+))?", uri)
        if m is None:
            self.logging_errors.append(f"no BigQuery destination in {config!r}")
            return
        dataset = m[2] or "logging_" + re.sub(r"[^A-Za-z0-9_]", "_", ep.display_name) + f"_{ep.endpoint_id}"
        row = {
            "endpoint": self._endpoint_name(ep),
            "deployed_model_id": deployed_model_id,
            "logging_time": self.clock(),
            "request_id": decimal.Decimal(next(self._request_ids)),
            "request_payload": [json.dumps(instance) for instance in instances],
            "response_payload": [json.dumps(prediction) for prediction in predictions],
        }
        self._pending_logs.append(
            (time.monotonic() + self.log_delay_s, (m[1], dataset, m[3] or "request_response_logging"), row)
        )


@dataclasses.dataclass
class _Deferred:
    """An answer computed after the double's lock is released."""

    compute: Callable[[], dict[str, Any]]


# -- the model's answers, in the export serving signature ----------------------------------------------
# "Export models", Prediction output format (https://cloud.google.com/bigquery/docs/exporting-models)
# and the real responses in lakehouse_ml_tests/golden/: classifiers answer predicted_<label> as a
# one-element list and the classes as STRINGs, aligned with <label>_probs; regressors
# predicted_<label> as a one-element list; KMEANS nearest_centroid_id as a one-element list, and
# every centroid's id (ascending) and distance. Input: "Input should generally match that used for
# BigQuery ML ML.PREDICT. All numerical values in the exported model signatures are cast as data
# type FLOAT64"; a model with TRANSFORM takes NULL as 123456789.0e10 / 1234567890000000000 (both
# the same double over JSON) or ' __MISSING__ ' (the page's Supported data types, NULL row), and
# has no BOOL sentinel.
_NUMBER_KINDS = ("INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC")
_MISSING = {" __MISSING__ ", "__MISSING__"}


def _instance_row(i: int, instance: Any, features: list[tuple[str, str]], transform: bool) -> dict[str, Any]:
    """One instance checked against the model's inputs. Assumed, not documented (the page lists
    the sentinels, not what else is refused; ``lakehouse-ml gcp-check`` records the real answers):
    JSON null to a TRANSFORM model is refused (a TensorFlow input tensor has no null), a value of
    the wrong JSON type is refused, feature names match case-insensitively as BigQuery's columns
    do. The error wording is this double's."""
    if not isinstance(instance, dict):
        raise VertexApiError(
            "INVALID_ARGUMENT",
            f"instances[{i}] must be a JSON object keyed by feature name; got {instance!r}.",
        )
    given = {str(k).lower(): v for k, v in instance.items()}
    names = {name.lower(): name for name, _ in features}
    extra = sorted(set(given) - set(names))
    missing = sorted(n for n in names if n not in given)
    if extra or missing:
        raise VertexApiError(
            "INVALID_ARGUMENT",
            f"instances[{i}] does not have the model's inputs: missing "
            f"{missing or 'none'}, unexpected {extra or 'none'}.",
        )
    row: dict[str, Any] = {}
    for name, kind in features:
        value = given[name.lower()]
        if value is None and transform:
            raise VertexApiError(
                "INVALID_ARGUMENT", f"instances[{i}].{name}: null is not a value of type {kind}."
            )
        if transform and value is not None and kind != "BOOL":
            if (
                kind in _NUMBER_KINDS
                and not isinstance(value, bool)
                and isinstance(value, (int, float))
                and value == 123456789.0e10
            ) or (kind not in _NUMBER_KINDS and value in _MISSING):
                value = None
        if value is not None:
            if kind in _NUMBER_KINDS:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif kind == "BOOL":
                ok = isinstance(value, bool)
            else:
                ok = isinstance(value, str)
            if not ok:
                raise VertexApiError(
                    "INVALID_ARGUMENT",
                    f"instances[{i}].{name}: {json.dumps(value)} is not a value of type {kind}.",
                )
        row[name] = value
    return row


def _as_text(value: Any) -> str:
    """A class as STRING, as BigQuery casts it (BOOL -> 'true' / 'false')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _export_predictions(
    bigquery: Any, bq_model: tuple[str, str, str], resource: dict, features: list, rows: list[dict]
) -> list[dict]:
    import pyarrow as pa

    arrow = {
        "BOOL": pa.bool_(),
        "INT64": pa.float64(),
        "FLOAT64": pa.float64(),
        "NUMERIC": pa.float64(),
        "BIGNUMERIC": pa.float64(),
    }
    table = pa.table(
        {name: pa.array([r[name] for r in rows], arrow.get(kind, pa.string())) for name, kind in features}
    )
    model_type = resource["modelType"]
    if model_type == "KMEANS":
        out = []
        for distances in bigquery.kmeans_distances(*bq_model, table):
            nearest = min(range(len(distances)), key=distances.__getitem__) + 1
            out.append(
                {
                    "nearest_centroid_id": [nearest],
                    "centroid_ids": list(range(1, len(distances) + 1)),
                    "centroid_distances": list(distances),
                }
            )
        return out
    label = resource["labelColumns"][0]["name"]
    predicted = bigquery.ml_predict(*bq_model, table).to_pylist()
    if model_type in ("LOGISTIC_REG", "BOOSTED_TREE_CLASSIFIER", "RANDOM_FOREST_CLASSIFIER"):
        return [
            {
                f"predicted_{label}": [_as_text(r[f"predicted_{label}"])],
                f"{label}_values": [_as_text(p["label"]) for p in r[f"predicted_{label}_probs"]],
                f"{label}_probs": [float(p["prob"]) for p in r[f"predicted_{label}_probs"]],
            }
            for r in predicted
        ]
    return [{f"predicted_{label}": [float(r[f"predicted_{label}"])]} for r in predicted]


class _Handler(http.server.BaseHTTPRequestHandler):
    fake: FakeVertexApi
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers at shutdown
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        payload: Any = None
        recorded = RecordedRequest(self.command, urllib.parse.unquote(parsed.path), query, None)
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                status, answer = (
                    400,
                    VertexApiError("INVALID_ARGUMENT", "Invalid JSON payload received.").body(),
                )
                recorded.json = raw.decode("utf-8", "replace")
                self._answer(recorded, status, answer)
                return
        recorded.json = payload
        status, answer = self.fake.handle(self.command, parsed.path, query, payload)
        if isinstance(answer, _Deferred):
            try:
                status, answer = 200, answer.compute()
            except VertexApiError as err:
                status, answer = err.http_code, err.body()
            except Exception as err:  # the BigQuery double refused to run the model
                status, answer = 400, VertexApiError("INVALID_ARGUMENT", str(err)).body()
        self._answer(recorded, status, answer)

    def _answer(self, recorded: RecordedRequest, status: int, answer: Any) -> None:
        recorded.status = status
        recorded.response = answer
        with self.fake.lock:
            self.fake._requests.append(recorded)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve


@contextlib.contextmanager
def fake_vertex_api(**kwargs: Any) -> Iterator[FakeVertexApi]:
    """Start a :class:`FakeVertexApi` on a free port of 127.0.0.1; stop it (and its threads) on exit."""
    api = FakeVertexApi(**kwargs)
    api.start()
    try:
        yield api
    finally:
        api.stop()
