"""The gcp registry and endpoints: Vertex AI Model Registry and Vertex AI endpoints.

Built on ``google-cloud-aiplatform``:

* the GAPIC clients (``aiplatform_v1.ModelServiceClient``, ``EndpointServiceClient``,
  ``PredictionServiceClient``) with ``client_options={"api_endpoint": …}`` and
  ``transport="rest"`` make every call. The high-level ``aiplatform.Model`` / ``aiplatform.Endpoint``
  objects take their API endpoint and transport only from the process-global ``aiplatform.init``,
  so using them here would redirect every other aiplatform user of the process (and race between
  Dagster runs in threads); the GAPIC clients take them per client;
* the high-level SDK's own traffic arithmetic (``aiplatform.Endpoint._allocate_traffic`` and
  ``_unallocate_traffic``, static methods that touch no global state) computes the
  ``trafficSplit`` of ``deployModel`` and ``undeployModel`` exactly as ``Endpoint.deploy`` and
  ``Endpoint.undeploy`` do, and its defaults are kept (machine type ``n1-standard-2``, one replica,
  key ``"0"`` for the model being deployed).

REST methods used (``aiplatform_v1/services/*/transports/rest_base.py`` of the SDK, and
https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.models and
…/projects.locations.endpoints): ``models.get`` (``name@version`` or ``name@alias``),
``models.listVersions``, ``models.list``, ``models.mergeVersionAliases``, ``models.deleteVersion``,
``models.delete``; ``endpoints.create`` (``endpointId``), ``get``, ``list`` (``display_name="…"``
filter), ``deployModel``, ``undeployModel``, ``patch`` (``updateMask`` ``trafficSplit`` /
``predictRequestResponseLoggingConfig``), ``predict``; long-running operations are polled with
``operations.get`` until done or until ``operation_timeout_s``.

BigQuery ML registers models itself (``CREATE MODEL … OPTIONS(MODEL_REGISTRY='VERTEX_AI',
VERTEX_AI_MODEL_ID=…)``, https://cloud.google.com/bigquery/docs/update_vertex), so registering,
replacing and dropping versions from Python is refused here with a message that says so. The
link from a BigQuery ML model to its registry version is BigQuery's: the model's training runs
carry ``vertexAiModelId`` and ``vertexAiModelVersion`` (BigQuery REST ``models.get``,
``TrainingRun``); the Vertex AI ``Model`` resource itself only says ``modelSourceInfo.sourceType =
BQML``, not which BigQuery model, so :meth:`VertexModelRegistry.find_bqml_version` asks BigQuery.

Request-response logging (https://cloud.google.com/vertex-ai/docs/predictions/online-prediction-logging:
"You can enable request-response logging by creating or patching the prediction endpoint") is
endpoint-wide on Vertex AI. :meth:`VertexEndpoints.deploy` patches the endpoint's
``predictRequestResponseLoggingConfig`` to ``bq://{project}.{dataset}.request_response_logging_{endpoint_id}``
(Vertex AI's own default would be dataset ``logging_<display name>_<endpoint id>``, table
``request_response_logging``: the project's dataset keeps the monitoring SQL unqualified).

:meth:`VertexEndpoints.request_log` reads that table back with the ``google-cloud-bigquery`` client
(through :class:`lakehouse_ml.backends.gcp_warehouse.GcpWarehouse`, so the client setup, the typed
``@start`` / ``@end`` TIMESTAMP parameters and the error messages are the warehouse's). What it
relies on, and where that comes from:

* where the table is: ``PredictRequestResponseLoggingConfig.bigquery_destination``
  (``aiplatform_v1/types/endpoint.py`` of the SDK: a project-only URI gets dataset
  ``logging_<endpoint-display-name>_<endpoint-id>``, a URI without a table gets table
  ``request_response_logging``), resolved by ``_log_table``; the table's schema is versioned and
  output-only (``request_response_logging_schema_version``, "v1" or "v2", same file in v1beta1);
* the columns read: ``logging_time`` (TIMESTAMP, when the request was logged), ``request_id``
  (one per request), ``deployed_model_id`` (STRING: the deployed model that answered) and
  ``request_payload`` / ``response_payload`` (REPEATED STRING: one JSON text per instance of the
  request, and per prediction of its response, in request order). Vertex AI documents the
  schema on its request-response logging pages
  (https://cloud.google.com/vertex-ai/docs/predictions/online-prediction-logging,
  https://cloud.google.com/vertex-ai/generative-ai/docs/multimodal/request-response-logging); the
  copies searchable while this was written held only those pages' openings, so ``logging_time``,
  ``request_id`` and ``request_payload`` were checked against public code that reads such
  tables: a Google-authored Vertex AI pipeline (``FROM <endpoint log table>,
  UNNEST(request_payload) AS payload WHERE logging_time >= …``, one instance per element) and
  streamsec-terraform/terraform-streamsec-google-integration (``WHERE logging_time > watermark``,
  de-duplication on ``request_id``); ``deployed_model_id`` and ``response_payload`` rest on the
  docs' schema alone (a table without them fails with BigQuery's "Unrecognized name", which
  the error repeats). Not confirmed, so not relied on: the type of ``request_id`` (read as
  whatever comes back, NUMERIC, INT64 or STRING, and turned into its decimal text) and that
  ``response_payload`` has exactly one element per instance (an instance without one gets
  prediction None). The ``endpoint`` column is not read: the table is the endpoint's own.
* the log carries the deployed model id, not the model: ``model_id`` / ``model_version_id`` come
  from the endpoint's deployed models at read time. Vertex AI keeps no record of an undeployed
  model, so the rows of a model that has since been undeployed keep their ``deployed_model_id``
  and get no ``model_id`` / ``model_version_id`` (None).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import dagster as dg
import pyarrow as pa
from google.api_core import exceptions as google_exceptions
from pydantic import Field, PrivateAttr

from lakehouse_ml.backends.endpoints import Endpoints
from lakehouse_ml.backends.gcp_warehouse import GcpWarehouse, LakehouseBigQueryResource
from lakehouse_ml.backends.google_errors import error_status, error_text
from lakehouse_ml.backends.registry import (
    ModelRegistry,
    ModelVersion,
    check_alias,
    check_model_id,
    parse_merge,
)
from lakehouse_ml.backends.request_log import RequestLog
from lakehouse_ml.bigquery.registry import DEFAULT_ALIAS, vertex_region
from lakehouse_ml.bigquery.request_log import LOG_COLUMNS, feature_array
from lakehouse_ml.core.errors import (
    EndpointError,
    ModelNotRegisteredError,
    RegistryError,
    VersionDeployedError,
    WarehouseError,
)
from lakehouse_ml.core.identifiers import check_identifier

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from lakehouse_ml.backends.gcp_warehouse import LakehouseBigQueryResource
    from lakehouse_ml.core.settings import Settings

DEFAULT_MACHINE_TYPE = "n1-standard-2"  # aiplatform.models._DEFAULT_MACHINE_TYPE
DEPLOYING_MODEL_KEY = "0"  # aiplatform.models._DEPLOYING_MODEL_TRAFFIC_SPLIT_KEY
REQUEST_LOG_TABLE_PREFIX = "request_response_logging"
# One window of an endpoint's request-response log (columns: see the module docstring). The table
# is named unqualified (it resolves in the log's dataset, the job's default dataset) after
# check_identifier; the window comes in as TIMESTAMP parameters.
REQUEST_LOG_SQL = """SELECT deployed_model_id, logging_time, request_id, request_payload, response_payload
FROM {table}
WHERE logging_time >= @start AND logging_time < @end
ORDER BY logging_time, request_id"""
CONSOLE = "https://console.cloud.google.com/vertex-ai"
# Cloud Monitoring: Vertex AI's built-in count of online predictions per endpoint (resource type
# aiplatform.googleapis.com/Endpoint, label endpoint_id), read with projects.timeSeries.list.
MONITORING_API = "https://monitoring.googleapis.com"
PREDICTION_COUNT_METRIC = "aiplatform.googleapis.com/prediction/online/prediction_count"
# endpoints.create ``endpointId``: a letter then up to 62 of [a-z0-9-] ending in a letter or digit,
# or up to 9 digits without a leading zero.
NEW_ENDPOINT_ID_PATTERN = re.compile(r"^([a-z]([a-z0-9-]{0,61}[a-z0-9])?|[1-9][0-9]{0,8})$")
# Ids Vertex AI generates are longer numbers (19 digits).
ENDPOINT_ID_PATTERN = re.compile(r"^([a-z]([a-z0-9-]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})$")
_NUMERIC_ID = re.compile(r"^[0-9]+$")
_RESOURCE = re.compile(
    r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/(?P<kind>models|endpoints)/(?P<id>[^/@]+)(@(?P<version>.+))?$"
)
_BQML_SOURCE = re.compile(
    r"^bqml://(?:(?P<project>[a-z][a-z0-9-]{4,28}[a-z0-9])\.)?(?P<dataset>[A-Za-z0-9_]+)\.(?P<model>[A-Za-z0-9_]+)$"
)
_OUTPUT_URI = re.compile(r"^bq://(?P<project>[^.]+)(\.(?P<dataset>[^.]+))?(\.(?P<table>[^.]+))?$")

# -- shared plumbing ---------------------------------------------------------------------------------


def _iso(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


# One set of credentials and one GAPIC client per service and API endpoint, per process: building
# a client (and, with application default credentials, finding and refreshing them) on every call
# costs time and quota. GAPIC clients over REST are safe to share between threads.
_PROCESS_LOCK = threading.Lock()
_CREDENTIALS: dict[bool, Any] = {}
_CLIENTS: dict[tuple[str, str, bool], Any] = {}
# How many credentials and clients this process has made, by kind (what the client-count test reads).
CREATED: Counter = Counter()
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def process_credentials(anonymous: bool) -> Any:
    """The process's credentials: ``AnonymousCredentials`` for a test double, else application
    default credentials (``google.auth.default``, found once; the clients refresh the token)."""
    with _PROCESS_LOCK:
        found = _CREDENTIALS.get(anonymous)
        if found is None:
            if anonymous:
                from google.auth.credentials import AnonymousCredentials

                found = AnonymousCredentials()
            else:
                import google.auth

                found, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            _CREDENTIALS[anonymous] = found
            CREATED["credentials"] += 1
        return found


def process_client(cls: Any, api_endpoint: str, anonymous: bool) -> Any:
    """The process's GAPIC client of ``cls`` for ``api_endpoint`` (REST transport)."""
    key = (cls.__name__, api_endpoint, anonymous)
    with _PROCESS_LOCK:
        client = _CLIENTS.get(key)
    if client is not None:
        return client
    from google.api_core.client_options import ClientOptions

    credentials = process_credentials(anonymous)
    with _PROCESS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = cls(
                credentials=credentials,
                client_options=ClientOptions(api_endpoint=api_endpoint),
                transport="rest",
            )
            _CLIENTS[key] = client
            CREATED[cls.__name__] += 1
    return client


def _throttled(err: Exception) -> bool:
    return isinstance(err, google_exceptions.TooManyRequests)


class _Retrying:
    """A GAPIC client whose calls retry, with exponential backoff, on 429 (quota) and, for reads,
    503 (unavailable): the GAPIC methods of ``aiplatform_v1`` have no default retry
    (``default_retry=None`` in their transports), and Vertex AI's rate quotas (600 resource
    management requests a minute) answer 429 RESOURCE_EXHAUSTED, "Retry after a few seconds"."""

    def __init__(self, client: Any, retry: Any):
        self._client = client
        self._retry = retry

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute) or name in ("transport",):
            return attribute
        # A 429 was not executed: every call may be sent again. A 503 may come after the service
        # acted: only reads (and predictions, which change nothing) are sent again, never a call
        # that starts an operation (a second deployModel would deploy twice).
        retry = (
            self._retry
            if name.startswith(("get_", "list_")) or name == "predict"
            else self._retry.with_predicate(_throttled)
        )

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("retry", retry)
            return attribute(*args, **kwargs)

        return call


class _VertexClients:
    """The process's clients for one API endpoint, each call retried on 429 and 503."""

    def __init__(self, api_endpoint: str, anonymous: bool, retry: Any):
        self.api_endpoint = api_endpoint
        self.anonymous = anonymous
        self.retry = retry

    def _get(self, name: str) -> Any:
        from google.cloud import aiplatform_v1

        return _Retrying(
            process_client(getattr(aiplatform_v1, name), self.api_endpoint, self.anonymous), self.retry
        )

    @property
    def models(self) -> Any:
        return self._get("ModelServiceClient")

    @property
    def endpoints(self) -> Any:
        return self._get("EndpointServiceClient")

    @property
    def prediction(self) -> Any:
        return self._get("PredictionServiceClient")


class _VertexConfig:
    """Configuration and plumbing shared by the registry and the endpoints (a mixin for pydantic
    resources that declare ``project``, ``bigquery_location``, ``api_endpoint``,
    ``bigquery_api_endpoint``, ``anonymous_credentials``, ``operation_timeout_s`` and
    ``poll_interval_s``)."""

    error_type: ClassVar[type[Exception]] = RuntimeError

    def _bigquery(self, project: str | None = None) -> "LakehouseBigQueryResource":
        """The gcp warehouse's BigQuery client setup for these settings (API endpoint,
        credentials). No fixed location: BigQuery runs each job where the tables it reads are."""

        return LakehouseBigQueryResource(
            project=project or self.project,
            api_endpoint=self.bigquery_api_endpoint,
            anonymous_credentials=self.anonymous_credentials,
        )

    def _bigquery_client(self, project: str | None = None) -> Any:
        """The process's BigQuery client for a project (with the process's credentials), for the
        few BigQuery calls the registry and endpoints make themselves (models.get, datasets.get)."""
        from google.cloud import bigquery

        project = project or self.project
        key = (
            "bigquery.Client",
            f"{self.bigquery_api_endpoint or ''}|{project}",
            bool(self.anonymous_credentials),
        )
        with _PROCESS_LOCK:
            client = _CLIENTS.get(key)
        if client is None:
            credentials = process_credentials(bool(self.anonymous_credentials))
            options = {"api_endpoint": self.bigquery_api_endpoint} if self.bigquery_api_endpoint else None
            with _PROCESS_LOCK:
                client = _CLIENTS.get(key)
                if client is None:
                    client = bigquery.Client(project=project, credentials=credentials, client_options=options)
                    _CLIENTS[key] = client
                    CREATED["bigquery.Client"] += 1
        return client

    @property
    def region(self) -> str:
        try:
            return vertex_region(self.bigquery_location)
        except RegistryError as err:
            raise self.error_type(str(err)) from None

    @property
    def endpoint_url(self) -> str:
        return self.api_endpoint or f"https://{self.region}-aiplatform.googleapis.com"

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def _retry(self) -> Any:
        from google.api_core import retry as api_retry

        return api_retry.Retry(
            predicate=api_retry.if_exception_type(
                google_exceptions.TooManyRequests, google_exceptions.ServiceUnavailable
            ),
            initial=float(self.retry_initial_s),
            maximum=float(self.retry_maximum_s),
            multiplier=2.0,
            timeout=float(self.retry_timeout_s),
        )

    @contextlib.contextmanager
    def _clients(self, action: str) -> Iterator[_VertexClients]:
        """The process's clients (:func:`process_client`); transport, credential and unexpected
        API errors become ``error_type`` with what to do next."""
        clients = _VertexClients(self.endpoint_url, bool(self.anonymous_credentials), self._retry)
        try:
            yield clients
        except google_exceptions.GoogleAPICallError as err:  # not translated where it was raised
            raise self.error_type(
                f"Vertex AI could not {action}: {error_text(err)} ({error_status(err)}). If this is transient "
                "(HTTP 5xx, quota), run again; otherwise check the request in the Vertex AI console."
            ) from None
        except google_exceptions.RetryError as err:
            raise self.error_type(
                f"Vertex AI did not answer in time to {action} ({err}). Check that {self.endpoint_url} is reachable "
                "(LAKEHOUSE_ML_VERTEX_API_ENDPOINT, network, proxy), then run again."
            ) from None
        except Exception as err:
            module = type(err).__module__
            if module.startswith("google.auth"):
                raise self.error_type(
                    f"No usable Google Cloud credentials for Vertex AI: {err}. Run `gcloud auth application-default "
                    "login`, or point GOOGLE_APPLICATION_CREDENTIALS at a service account key, then run again."
                ) from None
            if module.startswith(("requests", "urllib3")):
                raise self.error_type(
                    f"Could not reach Vertex AI at {self.endpoint_url} to {action}: {err}. Check the endpoint "
                    "(LAKEHOUSE_ML_VERTEX_API_ENDPOINT), the network and any proxy, then run again."
                ) from None
            raise

    def _wait(self, operation: Any, what: str) -> Any:
        """Poll a long-running operation (``operations.get``) until it is done; its result."""
        name = getattr(getattr(operation, "operation", None), "name", "") or "?"
        deadline = time.monotonic() + float(self.operation_timeout_s)
        delay = max(float(self.poll_interval_s), 0.001)
        while not operation.done(retry=self._retry):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.error_type(
                    f"Vertex AI did not finish {what} within {self.operation_timeout_s:g} s (operation {name}). It may "
                    "still complete: check the operation in the Vertex AI console, then run again (or raise "
                    "operation_timeout_s; deployments can take 15-30 minutes)."
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 10.0)
        proto = operation.operation
        if proto.HasField("error") and proto.error.code:
            raise self.error_type(
                f"Vertex AI failed to finish {what}: {proto.error.message} (code {proto.error.code}, operation {name})."
            )
        return operation.result()


# -- the registry ------------------------------------------------------------------------------------


class VertexModelRegistry(_VertexConfig, dg.ConfigurableResource, ModelRegistry):
    """Vertex AI Model Registry of one project; models live in the region of the BigQuery location."""

    project: str = Field(description="Google Cloud project id.")
    bigquery_location: str = Field(
        "US", description="BigQuery location; US → us-central1, EU → europe-west4."
    )
    api_endpoint: str | None = Field(
        None, description="Vertex AI API endpoint (default https://{region}-aiplatform.googleapis.com)."
    )
    bigquery_api_endpoint: str | None = Field(
        None, description="BigQuery API endpoint (to follow a BigQuery ML model to its version)."
    )
    anonymous_credentials: bool = Field(
        False, description="Send no credentials (only for a local test double)."
    )
    operation_timeout_s: float = Field(600.0, description="How long to wait for a long-running operation.")
    poll_interval_s: float = Field(
        0.05, description="First wait between operations.get polls (grows ×1.5 to 10 s)."
    )
    retry_initial_s: float = Field(
        1.0, description="First wait before retrying a call answered 429 or 503 (doubles each time)."
    )
    retry_maximum_s: float = Field(32.0, description="Longest wait between two retries of a call.")
    retry_timeout_s: float = Field(
        300.0, description="How long one call is retried on 429 and 503 before it fails."
    )

    error_type: ClassVar[type[Exception]] = RegistryError

    # -- plumbing ----------------------------------------------------------------------------------
    def model_name(self, model_id: str, version_or_alias: str | None = None) -> str:
        check_model_id(model_id)
        name = f"{self.parent}/models/{model_id}"
        if version_or_alias is not None:
            name += f"@{self._check_ref(version_or_alias)}"
        return name

    @staticmethod
    def _check_ref(version_or_alias: str) -> str:
        ref = str(version_or_alias)
        if _NUMERIC_ID.match(ref):
            return ref
        return check_alias(ref)

    def _to_version(self, model: Any, source: str = "") -> ModelVersion:
        match = _RESOURCE.match(model.name)
        model_id = match["id"] if match else model.name.rsplit("/", 1)[-1]
        types = {getattr(t, "name", str(t)) for t in model.supported_deployment_resources_types}
        aliases = sorted(model.version_aliases, key=lambda a: (a != DEFAULT_ALIAS, a))
        return ModelVersion(
            model_id=model_id,
            version_id=model.version_id,
            aliases=aliases,
            display_name=model.display_name,
            source=source,
            model_type="",  # the Model resource does not carry the BigQuery ML model type
            artifact_uri=model.artifact_uri or f"{self.parent}/models/{model_id}@{model.version_id}",
            labels=dict(model.labels),
            metrics={},
            create_time=_iso(model.version_create_time) or _iso(model.create_time),
            update_time=_iso(model.version_update_time) or _iso(model.update_time),
            deployable=bool(types & {"DEDICATED_RESOURCES", "AUTOMATIC_RESOURCES", "SHARED_RESOURCES"}),
            deployments=tuple(sorted({ref.endpoint for ref in model.deployed_models})),
        )

    def _not_registered(
        self, clients: _VertexClients, model_id: str, ref: str | None
    ) -> ModelNotRegisteredError:
        """The most useful 'not found' message: is the model missing, or only that version/alias?"""
        try:
            versions = list(clients.models.list_model_versions(name=self.model_name(model_id)))
        except google_exceptions.NotFound:
            try:
                known = sorted(
                    {m.name.rsplit("/", 1)[-1] for m in clients.models.list_models(parent=self.parent)}
                )
            except google_exceptions.GoogleAPICallError:
                known = []
            return ModelNotRegisteredError(
                f"Model {model_id!r} is not in Vertex AI Model Registry ({self.parent}); registered models: "
                f"{known or 'none'}. Register it with CREATE MODEL … OPTIONS(MODEL_REGISTRY='VERTEX_AI', "
                f"VERTEX_AI_MODEL_ID='{model_id}') in BigQuery ML."
            )
        ids = sorted((v.version_id for v in versions), key=int)
        aliases = sorted({a for v in versions for a in v.version_aliases})
        return ModelNotRegisteredError(
            f"Model {model_id!r} has no version or alias {ref!r}; its versions: {ids}, its aliases: {aliases}. "
            "Use one of those, or add the alias with merge_version_aliases."
        )

    def _get(self, clients: _VertexClients, model_id: str, ref: str) -> Any:
        try:
            return clients.models.get_model(name=self.model_name(model_id, ref))
        except google_exceptions.NotFound:
            raise self._not_registered(clients, model_id, ref) from None

    # -- reading -----------------------------------------------------------------------------------
    def get_version(self, model_id: str, version_or_alias: str = DEFAULT_ALIAS) -> ModelVersion:
        self.model_name(model_id, version_or_alias)  # validate before any call
        with self._clients(f"get model {model_id}@{version_or_alias}") as clients:
            return self._to_version(self._get(clients, model_id, str(version_or_alias)))

    def list_versions(self, model_id: str) -> list[ModelVersion]:
        name = self.model_name(model_id)
        with self._clients(f"list the versions of model {model_id}") as clients:
            try:
                versions = [self._to_version(m) for m in clients.models.list_model_versions(name=name)]
            except google_exceptions.NotFound:
                raise self._not_registered(clients, model_id, None) from None
        return sorted(versions, key=lambda v: int(v.version_id) if v.version_id.isdigit() else 0)

    def latest_version(self, model_id: str) -> ModelVersion:
        versions = self.list_versions(model_id)
        if not versions:
            raise ModelNotRegisteredError(f"Model {model_id!r} has no versions in Vertex AI Model Registry.")
        return versions[-1]

    def list_models(self) -> list[str]:
        with self._clients("list models") as clients:
            return sorted({m.name.rsplit("/", 1)[-1] for m in clients.models.list_models(parent=self.parent)})

    def find_bqml_version(self, source: str) -> ModelVersion | None:
        """The registry version of the BigQuery ML model ``bqml://[project.]dataset.model``: BigQuery's
        ``models.get`` reports it in the last training run's ``vertexAiModelId`` /
        ``vertexAiModelVersion``; None when the model is missing, unregistered, or its version is gone."""
        match = _BQML_SOURCE.match(source or "")
        if match is None:
            raise RegistryError(
                f"Invalid BigQuery ML source {source!r}: use bqml://<dataset>.<model> (for example bqml://lakehouse_ml.churn_model)."
            )
        project = match["project"] or self.project
        runs = self._bigquery_training_runs(project, match["dataset"], match["model"])
        registered = [r for r in runs if r.get("vertexAiModelId")]
        if not registered:
            return None
        run = registered[-1]
        model_id, version_id = run["vertexAiModelId"], run.get("vertexAiModelVersion")
        if not version_id:
            raise RegistryError(
                f"BigQuery reports bqml://{match['dataset']}.{match['model']} "
                f"registered as {model_id!r} but no version of "
                "it yet (its training run has no vertexAiModelVersion): the registration may still be in progress. "
                "Run again in a minute."
            )
        version_id = str(version_id)
        with self._clients(f"get model {model_id}@{version_id}") as clients:
            try:
                model = clients.models.get_model(name=self.model_name(model_id, version_id))
            except google_exceptions.NotFound:
                return None
        return self._to_version(model, source=f"bqml://{match['dataset']}.{match['model']}")

    def _bigquery_training_runs(self, project: str, dataset: str, model: str) -> list[dict[str, Any]]:
        name = f"{project}.{dataset}.{model}"
        try:
            found = self._bigquery_client(project).get_model(name)
        except google_exceptions.NotFound:
            return []
        except google_exceptions.GoogleAPICallError as err:
            raise RegistryError(
                f"BigQuery could not read model {name}: {error_text(err)}. Check LAKEHOUSE_ML_GCP_PROJECT, "
                "LAKEHOUSE_ML_GCP_DATASET and the credentials, then run again."
            ) from None
        except Exception as err:
            if type(err).__module__.startswith("google.auth"):
                raise RegistryError(
                    f"Cannot open a BigQuery client to look up bqml://{dataset}.{model}: {err}. Run `gcloud auth "
                    "application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS), then run again."
                ) from None
            raise
        return list(found._properties.get("trainingRuns") or [])

    # -- changing ----------------------------------------------------------------------------------
    def merge_version_aliases(self, model_id: str, version_id: str, aliases: Sequence[str]) -> ModelVersion:
        """models.mergeVersionAliases; the body is exactly ``{"versionAliases": aliases}``."""
        add, remove = parse_merge(aliases)  # validates every alias before anything is sent
        aliases = list(aliases)
        if not aliases:
            raise RegistryError(
                "Give at least one alias to merge (a leading '-' removes it), for example ['champion']."
            )
        name = self.model_name(model_id, version_id)
        with self._clients(f"merge aliases into model {model_id}@{version_id}") as clients:
            try:
                merged = clients.models.merge_version_aliases(name=name, version_aliases=aliases)
            except google_exceptions.NotFound:
                raise self._not_registered(clients, model_id, str(version_id)) from None
            except (google_exceptions.BadRequest, google_exceptions.FailedPrecondition) as err:
                hint = (
                    " One version must carry 'default' at all times: add 'default' to another version instead (that "
                    "moves it)."
                    if DEFAULT_ALIAS in remove
                    else ""
                )
                raise RegistryError(
                    f"Vertex AI refused to merge aliases {aliases} into model {model_id!r} version {version_id}: "
                    f"{error_text(err)}.{hint}"
                ) from None
        return self._to_version(merged)

    @staticmethod
    def _deployments(model: Any) -> list[str]:
        return [f"{ref.endpoint} (deployed model {ref.deployed_model_id})" for ref in model.deployed_models]

    def delete_version(self, model_id: str, version_id: str) -> None:
        """models.deleteVersion (long-running): refused when deployed or when it is the only version;
        a deleted ``default`` version hands ``default`` to the next most recent version."""
        with self._clients(f"delete model {model_id}@{version_id}") as clients:
            model = self._get(clients, model_id, str(version_id))
            number = model.version_id
            deployed = self._deployments(model)
            if deployed:
                raise VersionDeployedError(
                    f"Cannot delete version {number} of model {model_id!r}: it is deployed to {', '.join(deployed)}. "
                    "Undeploy it from those endpoints first."
                )
            try:
                operation = clients.models.delete_model_version(name=self.model_name(model_id, number))
            except google_exceptions.NotFound:
                raise self._not_registered(clients, model_id, str(version_id)) from None
            except (google_exceptions.BadRequest, google_exceptions.FailedPrecondition) as err:
                text = error_text(err)
                if "deployed" in text.lower():
                    raise VersionDeployedError(
                        f"Cannot delete version {number} of model {model_id!r}: {text} Undeploy it first."
                    ) from None
                raise RegistryError(
                    f"Vertex AI refused to delete version {number} of model {model_id!r}: {text} A model keeps at "
                    "least one version: delete the whole model with delete_model."
                ) from None
            self._wait(operation, f"deleting version {number} of model {model_id!r}")

    def delete_model(self, model_id: str) -> None:
        """models.delete (long-running): every version goes; refused while any version is deployed."""
        name = self.model_name(model_id)
        with self._clients(f"delete model {model_id}") as clients:
            try:
                versions = list(clients.models.list_model_versions(name=name))
            except google_exceptions.NotFound:
                raise self._not_registered(clients, model_id, None) from None
            deployed = [d for v in versions for d in self._deployments(v)]
            if deployed:
                raise VersionDeployedError(
                    f"Cannot delete model {model_id!r}: versions are deployed "
                    f"to {', '.join(deployed)}. Undeploy them first."
                )
            try:
                operation = clients.models.delete_model(name=name)
            except (google_exceptions.BadRequest, google_exceptions.FailedPrecondition) as err:
                raise VersionDeployedError(
                    f"Vertex AI refused to delete model {model_id!r}: {error_text(err)} Undeploy its versions first."
                ) from None
            self._wait(operation, f"deleting model {model_id!r}")

    def version_url(self, version: ModelVersion) -> str:
        """The version's page in the Google Cloud console (the form the SDK links to in
        ``aiplatform/utils/_ipython_utils.py``)."""
        return (
            f"{CONSOLE}/models/locations/{self.region}/models/{version.model_id}/versions/{version.version_id}"
            f"?project={self.project}"
        )

    # -- BigQuery ML registers models itself ---------------------------------------------------------


# -- the endpoints -----------------------------------------------------------------------------------


class VertexEndpoints(_VertexConfig, dg.ConfigurableResource, Endpoints, RequestLog):
    """Vertex AI endpoints of one project, in the region of the BigQuery location."""

    project: str = Field(description="Google Cloud project id.")
    dataset: str = Field(
        "lakehouse_ml", description="BigQuery dataset that receives the request-response log."
    )
    bigquery_location: str = Field(
        "US", description="BigQuery location; US → us-central1, EU → europe-west4."
    )
    api_endpoint: str | None = Field(
        None, description="Vertex AI API endpoint (default https://{region}-aiplatform.googleapis.com)."
    )
    bigquery_api_endpoint: str | None = Field(
        None, description="BigQuery API endpoint (to read the request-response log)."
    )
    anonymous_credentials: bool = Field(
        False, description="Send no credentials (only for a local test double)."
    )
    operation_timeout_s: float = Field(
        1800.0, description="How long to wait for a long-running operation (deployments are slow)."
    )
    poll_interval_s: float = Field(
        0.05, description="First wait between operations.get polls (grows ×1.5 to 10 s)."
    )
    retry_initial_s: float = Field(
        1.0, description="First wait before retrying a call answered 429 or 503 (doubles each time)."
    )
    retry_maximum_s: float = Field(32.0, description="Longest wait between two retries of a call.")
    retry_timeout_s: float = Field(
        300.0, description="How long one call is retried on 429 and 503 before it fails."
    )
    request_log_grace_s: float = Field(
        600.0,
        description="How long a request-response log row may take to land in BigQuery after its logging_time "
        "(monitoring re-reads this much before each window; `lakehouse-ml gcp-check` measures it).",
    )
    monitoring_api_endpoint: str | None = Field(
        None,
        description="Cloud Monitoring API endpoint (default https://monitoring.googleapis.com), for served counts.",
    )

    _endpoint_names: dict[str, str] = PrivateAttr(default_factory=dict)

    error_type: ClassVar[type[Exception]] = EndpointError

    # -- plumbing ----------------------------------------------------------------------------------
    def _lookup(self, clients: _VertexClients, endpoint: str) -> Any | None:
        """The Endpoint resource, by resource name, id or display name (None when missing)."""
        endpoint = str(endpoint).strip()
        if not endpoint:
            raise EndpointError("Give an endpoint id or display name.")
        service = clients.endpoints
        if "/" in endpoint:
            try:
                return service.get_endpoint(name=endpoint)
            except google_exceptions.NotFound:
                return None
        if ENDPOINT_ID_PATTERN.match(endpoint):
            try:
                return service.get_endpoint(name=f"{self.parent}/endpoints/{endpoint}")
            except google_exceptions.NotFound:
                pass
        if '"' in endpoint or "\\" in endpoint:
            return None
        found = list(
            service.list_endpoints(request={"parent": self.parent, "filter": f'display_name="{endpoint}"'})
        )
        if len(found) > 1:
            raise EndpointError(
                f"{len(found)} endpoints are named {endpoint!r} "
                f"({', '.join(e.name.rsplit('/', 1)[-1] for e in found)}); "
                "use the endpoint id instead."
            )
        return found[0] if found else None

    def _resource_name(self, clients: _VertexClients, endpoint: str) -> str:
        """The endpoint's resource name, with no API call for a resource name or a numeric id,
        and one lookup per display name for the life of this resource (predictions after the
        first make no management call)."""
        endpoint = str(endpoint).strip()
        if endpoint.startswith("projects/"):
            return endpoint
        if _NUMERIC_ID.match(endpoint) and ENDPOINT_ID_PATTERN.match(endpoint):
            return f"{self.parent}/endpoints/{endpoint}"
        known = self._endpoint_names.get(endpoint)
        if known is None:
            known = self._require(clients, endpoint).name
            self._endpoint_names[endpoint] = known
        return known

    def _require(self, clients: _VertexClients, endpoint: str) -> Any:
        found = self._lookup(clients, endpoint)
        if found is None:
            raise EndpointError(
                f"Endpoint {endpoint!r} not found in {self.parent}; create it with create_endpoint() (or check "
                "LAKEHOUSE_ML_GCP_PROJECT and LAKEHOUSE_ML_BIGQUERY_LOCATION)."
            )
        return found

    @staticmethod
    def _endpoint_id(resource: Any) -> str:
        return resource.name.rsplit("/", 1)[-1]

    def _as_dict(self, resource: Any) -> dict[str, Any]:
        split = {k: int(v) for k, v in resource.traffic_split.items()}
        logging_config = resource.predict_request_response_logging_config
        rate = float(logging_config.sampling_rate) if logging_config.enabled else 0.0
        deployed = []
        for dm in resource.deployed_models:
            match = _RESOURCE.match(dm.model)
            resources = dm.dedicated_resources
            deployed.append(
                {
                    "deployed_model_id": dm.id,
                    "model_id": match["id"] if match else dm.model.rsplit("/", 1)[-1],
                    "version_id": dm.model_version_id
                    or (match["version"] if match and match["version"] else ""),
                    "traffic_percentage": split.get(dm.id, 0),
                    "create_time": _iso(dm.create_time),
                    "display_name": dm.display_name,
                    "model_resource_name": dm.model,
                    "artifact_uri": dm.model,
                    "machine_type": resources.machine_spec.machine_type or None,
                    "min_replica_count": int(resources.min_replica_count),
                    "max_replica_count": int(resources.max_replica_count),
                    "logging_sampling_rate": rate,
                }
            )
        return {
            "endpoint_id": self._endpoint_id(resource),
            "display_name": resource.display_name,
            "resource_name": resource.name,
            "deployed_models": deployed,
            "traffic_split": {d["deployed_model_id"]: d["traffic_percentage"] for d in deployed},
            "request_log_table": self._log_table(resource),
        }

    def _log_table(self, resource: Any) -> str | None:
        config = resource.predict_request_response_logging_config
        if not config.enabled:
            return None
        match = _OUTPUT_URI.match(config.bigquery_destination.output_uri or "")
        if match is None:
            return None
        endpoint_id = self._endpoint_id(resource)
        # Vertex AI's defaults when the URI stops at the project or the dataset
        # (PredictRequestResponseLoggingConfig.bigquery_destination).
        dataset = (
            match["dataset"]
            or "logging_" + re.sub(r"[^A-Za-z0-9_]", "_", resource.display_name) + f"_{endpoint_id}"
        )
        table = match["table"] or REQUEST_LOG_TABLE_PREFIX
        return f"{match['project']}.{dataset}.{table}"

    def predict_target(self, endpoint: str) -> tuple[str, str | None]:
        """The REST ``:predict`` URL of the endpoint (by resource name, id or display name) under
        the API endpoint, and an OAuth access token of the process's credentials (refreshed when
        stale; None with anonymous credentials)."""
        with self._clients(f"get endpoint {endpoint!r}") as clients:
            name = self._resource_name(clients, endpoint)
        url = f"{self.endpoint_url.rstrip('/')}/v1/{name}:predict"
        if self.anonymous_credentials:
            return url, None
        credentials = process_credentials(False)
        if not getattr(credentials, "valid", False):
            import google.auth.transport.requests

            try:
                credentials.refresh(google.auth.transport.requests.Request())
            except Exception as err:
                raise EndpointError(
                    f"No usable Google Cloud credentials to call {url}: {err}. Run `gcloud auth application-default "
                    "login`, or point GOOGLE_APPLICATION_CREDENTIALS at a service account key, then run again."
                ) from None
        return url, credentials.token

    def request_log_grace_seconds(self) -> float:
        return float(self.request_log_grace_s)

    def request_log_exists(self, endpoint: str) -> bool | None:
        """Whether the BigQuery table of the endpoint's request-response log exists (None when
        logging is off)."""

        table = self.request_log_table(endpoint)
        if table is None:
            return None
        project, dataset, name = table.split(".")
        return GcpWarehouse(bigquery=self._bigquery(project), dataset=dataset).table_exists(name)

    def served_predictions(self, endpoint: str, start: dt.datetime, end: dt.datetime) -> int | None:
        """Cloud Monitoring's ``aiplatform.googleapis.com/prediction/online/prediction_count`` of
        the endpoint over ``[start, end)`` (the sum of its points), through the REST method
        ``projects.timeSeries.list``; None when Cloud Monitoring cannot be asked (no permission,
        not reachable): the report then cannot tell a broken log from no traffic, and says nothing."""
        import requests

        with self._clients(f"get endpoint {endpoint!r}") as clients:
            endpoint_id = self._resource_name(clients, endpoint).rsplit("/", 1)[-1]
        window = {"start": _utc(start, "start"), "end": _utc(end, "end")}
        base = (self.monitoring_api_endpoint or MONITORING_API).rstrip("/")
        params = {
            "filter": f'metric.type="{PREDICTION_COUNT_METRIC}" AND resource.labels.endpoint_id="{endpoint_id}"',
            "interval.startTime": window["start"].isoformat().replace("+00:00", "Z"),
            "interval.endTime": window["end"].isoformat().replace("+00:00", "Z"),
        }
        credentials = process_credentials(bool(self.anonymous_credentials))
        if self.anonymous_credentials:
            session: Any = requests.Session()
        else:
            import google.auth.transport.requests

            session = google.auth.transport.requests.AuthorizedSession(credentials)
        total = 0
        try:
            page: str | None = None
            while True:
                answer = session.get(
                    f"{base}/v3/projects/{self.project}/timeSeries",
                    params=params | ({"pageToken": page} if page else {}),
                    timeout=30,
                )
                if answer.status_code != 200:
                    return None
                body = answer.json()
                for series in body.get("timeSeries") or []:
                    for point in series.get("points") or []:
                        value = point.get("value") or {}
                        total += int(float(value.get("int64Value", value.get("doubleValue", 0)) or 0))
                page = body.get("nextPageToken")
                if not page:
                    return total
        except (requests.RequestException, ValueError):
            return None
        finally:
            session.close()

    def console_url(self, endpoint_id: str) -> str | None:
        """The endpoint's page in the Google Cloud console."""
        return f"{CONSOLE}/online-prediction/locations/{self.region}/endpoints/{endpoint_id}?project={self.project}"

    def log_destination(self, endpoint_id: str) -> str:
        """The ``bigqueryDestination.outputUri`` this backend gives an endpoint."""
        return (
            f"bq://{self.project}.{self.dataset}.{REQUEST_LOG_TABLE_PREFIX}_{endpoint_id.replace('-', '_')}"
        )

    # -- endpoints -----------------------------------------------------------------------------------
    def create_endpoint(self, display_name: str, endpoint_id: str | None = None) -> dict[str, Any]:
        """endpoints.create (long-running). With ``endpoint_id``, an endpoint that already exists
        under it is returned as it is (so a re-run does not fail)."""
        from google.cloud.aiplatform_v1 import Endpoint

        if not isinstance(display_name, str) or not display_name.strip() or len(display_name) > 128:
            raise EndpointError(f"Invalid endpoint display name {display_name!r}: give 1 to 128 characters.")
        if endpoint_id is not None and not NEW_ENDPOINT_ID_PATTERN.match(str(endpoint_id)):
            raise EndpointError(
                f"Invalid endpoint id {endpoint_id!r}: use up to 63 characters from [a-z0-9-] starting with a letter "
                "and ending with a letter or digit (for example 'churn-endpoint'), or up to 9 digits."
            )
        with self._clients(f"create endpoint {display_name!r}") as clients:
            service = clients.endpoints
            if endpoint_id is not None:
                try:
                    return self._as_dict(service.get_endpoint(name=f"{self.parent}/endpoints/{endpoint_id}"))
                except google_exceptions.NotFound:
                    pass
            kwargs: dict[str, Any] = {"parent": self.parent, "endpoint": Endpoint(display_name=display_name)}
            if endpoint_id is not None:
                kwargs["endpoint_id"] = str(endpoint_id)
            try:
                operation = service.create_endpoint(**kwargs)
            except google_exceptions.Conflict:
                return self._as_dict(service.get_endpoint(name=f"{self.parent}/endpoints/{endpoint_id}"))
            except google_exceptions.BadRequest as err:
                raise EndpointError(
                    f"Vertex AI refused to create endpoint {display_name!r}: {error_text(err)}"
                ) from None
            created = self._wait(operation, f"creating endpoint {display_name!r}")
            return self._as_dict(service.get_endpoint(name=created.name))

    def get_endpoint(self, endpoint: str) -> dict[str, Any] | None:
        """``endpoint_id``, ``display_name``, ``resource_name``, ``deployed_models`` (dicts with
        ``deployed_model_id``, ``model_id``, ``version_id``, ``traffic_percentage``, ``create_time``,
        ``display_name``, ``model_resource_name``, ``artifact_uri``, ``machine_type``,
        ``min_replica_count``, ``max_replica_count``, ``logging_sampling_rate``), ``traffic_split``
        and ``request_log_table``; None when missing."""
        with self._clients(f"get endpoint {endpoint!r}") as clients:
            found = self._lookup(clients, endpoint)
            return None if found is None else self._as_dict(found)

    def request_log_table(self, endpoint: str) -> str | None:
        """The BigQuery table (``project.dataset.table``) the endpoint's request-response log goes to,
        or None when request-response logging is off."""
        with self._clients(f"get endpoint {endpoint!r}") as clients:
            return self._log_table(self._require(clients, endpoint))

    def request_log(self, endpoint: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
        """The endpoint's request-response log for ``start <= logging_time < end`` (naive times
        are UTC), read from its BigQuery table with one query: one row per logged instance, in the
        local backend's columns and types (:mod:`lakehouse_ml.serving.log`): ``endpoint_id``,
        ``deployed_model_id``, ``model_id``, ``model_version_id``, ``logging_time`` (UTC),
        ``request_id`` (text), ``instance_index`` (the instance's position in its request), the
        instance's features (one column each, in name order: clients send instances as protobuf
        Structs, whose keys keep no order; numbers as float) and ``prediction`` (JSON text), the
        rows ordered by time, request and position.

        * ``model_id`` / ``model_version_id`` come from the endpoint's deployed models: the rows
          of a model undeployed since it answered cannot be mapped (Vertex AI keeps no record of
          it) and keep only their ``deployed_model_id`` (model columns None).
        * Logging off on the endpoint, or its dataset missing: :class:`EndpointError` saying
          what to do (nothing could ever be logged there).
        * The table missing (nothing logged to it yet): an empty frame, as the local backend
          answers before its first log file.
        """
        window = {"start": _utc(start, "start"), "end": _utc(end, "end")}
        with self._clients(f"get endpoint {endpoint!r}") as clients:
            info = self._as_dict(self._require(clients, endpoint))
        endpoint_id, table = info["endpoint_id"], info["request_log_table"]
        if table is None:
            raise EndpointError(
                f"Request-response logging is off on endpoint {endpoint_id}, so it has no request log to read. "
                "Deploy to it with logging_sampling_rate > 0 (that turns the endpoint's logging on), then send traffic."
            )
        versions = {d["deployed_model_id"]: (d["model_id"], d["version_id"]) for d in info["deployed_models"]}
        return _log_frame(endpoint_id, self._read_log(endpoint_id, table, window), versions)

    def _read_log(self, endpoint_id: str, table: str, window: dict[str, dt.datetime]) -> pa.Table | None:
        """The log's rows in the window (None when the table does not exist yet)."""

        project, dataset, name = table.split(".")
        warehouse = GcpWarehouse(bigquery=self._bigquery(project), dataset=dataset)
        try:
            if not warehouse.table_exists(check_identifier(name, "request-response log table")):
                self._require_dataset(endpoint_id, project, dataset)
                return None
            return warehouse.query_arrow(REQUEST_LOG_SQL.format(table=name), window)
        except WarehouseError as err:
            raise EndpointError(
                f"Could not read the request-response log {table} of endpoint {endpoint_id}: {err} The table must be "
                "a Vertex AI request-response logging table (deployed_model_id, logging_time, request_id, "
                "request_payload, response_payload): check the endpoint's predictRequestResponseLoggingConfig "
                "(deploying with logging_sampling_rate > 0 points it at this project's dataset)."
            ) from None

    def _require_dataset(self, endpoint_id: str, project: str, dataset: str) -> None:
        try:
            self._bigquery_client(project).get_dataset(f"{project}.{dataset}")
        except google_exceptions.NotFound:
            raise EndpointError(
                f"Endpoint {endpoint_id} logs requests to BigQuery dataset {project}.{dataset}, which does not exist, "
                "so Vertex AI cannot log there. Create it (the gcp warehouse creates LAKEHOUSE_ML_GCP_DATASET on its "
                "first write) or check LAKEHOUSE_ML_GCP_PROJECT and LAKEHOUSE_ML_GCP_DATASET, then send traffic."
            ) from None
        except google_exceptions.GoogleAPICallError as err:
            raise EndpointError(
                f"BigQuery could not read dataset {project}.{dataset} (the request-response log of endpoint "
                f"{endpoint_id}): {error_text(err)}. Check the credentials' BigQuery roles, then run again."
            ) from None

    def deploy(
        self,
        endpoint: str,
        model_id: str,
        version_id: str,
        artifact_uri: str = "",
        *,
        traffic_percentage: int | None = None,
        traffic_split: Mapping[str, int] | None = None,
        machine_type: str | None = None,
        logging_sampling_rate: float = 1.0,
    ) -> str:
        """endpoints.deployModel of ``models/{model_id}@{version_id}`` (long-running); returns the
        deployed model id. ``artifact_uri`` is not used: Vertex AI serves the registered version.

        Traffic as ``aiplatform.Endpoint.deploy`` computes it: ``traffic_split`` is sent as given
        (``"0"`` = the model being deployed); otherwise the new model gets ``traffic_percentage``
        (default 0) and the others are scaled to fill the rest, except on an endpoint that takes no
        traffic yet, where the new model gets 100. ``logging_sampling_rate`` > 0 turns on the
        endpoint's request-response logging to :meth:`log_destination` with that sampling rate
        (it is endpoint-wide on Vertex AI; 0 leaves the endpoint's logging as it is)."""
        from google.cloud.aiplatform import Endpoint as SdkEndpoint
        from google.cloud.aiplatform_v1 import DedicatedResources, DeployedModel, MachineSpec

        rate = float(logging_sampling_rate)
        if not 0.0 <= rate <= 1.0:
            raise EndpointError(
                f"logging_sampling_rate must be between 0 and 1; got {logging_sampling_rate!r}."
            )
        if traffic_percentage is not None and traffic_split is not None:
            raise EndpointError("Give traffic_percentage or traffic_split, not both.")
        pct = 0 if traffic_percentage is None else int(traffic_percentage)
        if not 0 <= pct <= 100:
            raise EndpointError(f"traffic_percentage must be between 0 and 100; got {traffic_percentage!r}.")
        try:
            check_model_id(model_id)
            model = f"{self.parent}/models/{model_id}@{VertexModelRegistry._check_ref(str(version_id))}"
        except RegistryError as err:
            raise EndpointError(str(err)) from None
        with self._clients(f"deploy model {model_id}@{version_id}") as clients:
            service = clients.endpoints
            resource = self._require(clients, endpoint)
            endpoint_id = self._endpoint_id(resource)
            deployed_ids = {dm.id for dm in resource.deployed_models}
            current = {k: int(v) for k, v in resource.traffic_split.items() if k in deployed_ids}
            if traffic_split is not None:
                split = self._check_split(traffic_split, deployed_ids | {DEPLOYING_MODEL_KEY}, endpoint_id)
            elif not any(current.values()):
                split = {DEPLOYING_MODEL_KEY: 100}  # nothing takes traffic yet: the new model takes it all
            else:
                split = SdkEndpoint._allocate_traffic(traffic_split=current, traffic_percentage=pct)
            if rate > 0:
                self._enable_logging(service, resource, rate)
            deployed_model = DeployedModel(
                model=model,
                dedicated_resources=DedicatedResources(
                    machine_spec=MachineSpec(machine_type=machine_type or DEFAULT_MACHINE_TYPE),
                    min_replica_count=1,
                    max_replica_count=1,
                ),
                # Predictions from BigQuery ML models deployed through the SDK have failed in
                # "Explanation preprocessing" (GoogleCloudPlatform/vertex-ai-samples#2723); nothing
                # here calls :explain. DeployedModel.disable_explanations: "If true, deploy the model
                # without explainable feature, regardless the existence of Model.explanation_spec".
                disable_explanations=True,
            )
            try:
                operation = service.deploy_model(
                    endpoint=resource.name, deployed_model=deployed_model, traffic_split=split
                )
            except google_exceptions.NotFound as err:
                raise EndpointError(
                    f"Cannot deploy model {model_id!r} version {version_id}: {error_text(err)} Register it first "
                    "(CREATE MODEL … OPTIONS(MODEL_REGISTRY='VERTEX_AI') in BigQuery ML) or pick an existing version."
                ) from None
            except (google_exceptions.BadRequest, google_exceptions.FailedPrecondition) as err:
                raise EndpointError(
                    f"Vertex AI refused to deploy model {model_id!r} version {version_id} to endpoint {endpoint_id}: "
                    f"{error_text(err)} (ARIMA_PLUS models register but cannot be deployed; a traffic split must "
                    "name deployed models and sum to 100.)"
                ) from None
            response = self._wait(
                operation, f"deploying model {model_id}@{version_id} to endpoint {endpoint_id}"
            )
            return response.deployed_model.id

    def _enable_logging(self, service: Any, resource: Any, rate: float) -> None:
        """endpoints.patch of ``predictRequestResponseLoggingConfig`` (only when it changes)."""
        from google.cloud.aiplatform_v1 import (
            BigQueryDestination,
            Endpoint,
            PredictRequestResponseLoggingConfig,
        )
        from google.protobuf import field_mask_pb2

        uri = self.log_destination(self._endpoint_id(resource))
        config = resource.predict_request_response_logging_config
        if (
            config.enabled
            and abs(float(config.sampling_rate) - rate) < 1e-9
            and config.bigquery_destination.output_uri == uri
        ):
            return
        try:
            service.update_endpoint(
                endpoint=Endpoint(
                    name=resource.name,
                    predict_request_response_logging_config=PredictRequestResponseLoggingConfig(
                        enabled=True,
                        sampling_rate=rate,
                        bigquery_destination=BigQueryDestination(output_uri=uri),
                    ),
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["predict_request_response_logging_config"]),
            )
        except google_exceptions.BadRequest as err:
            raise EndpointError(
                f"Vertex AI refused the request-response logging config of endpoint {resource.name} ({uri}, sampling "
                f"rate {rate}): {error_text(err)} Check LAKEHOUSE_ML_GCP_DATASET, "
                "or deploy with logging_sampling_rate=0."
            ) from None

    @staticmethod
    def _check_split(split: Mapping[str, int], allowed: set[str], endpoint_id: str) -> dict[str, int]:
        if not isinstance(split, Mapping):
            raise EndpointError(f"traffic_split must map deployed model ids to percentages; got {split!r}.")
        out = {}
        for key, value in split.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise EndpointError(
                    f"traffic_split[{key!r}] must be an integer between 0 and 100; got {value!r}."
                )
            out[str(key)] = int(value)
        unknown = set(out) - allowed
        if unknown:
            raise EndpointError(
                f"traffic_split names models not deployed on endpoint {endpoint_id}: {sorted(unknown)} (deployed: "
                f"{sorted(allowed - {DEPLOYING_MODEL_KEY})}; '0' is the model being deployed)."
            )
        if sum(out.values()) != 100:
            raise EndpointError(
                f"traffic_split percentages must sum to 100; got {sum(out.values())} ({out})."
            )
        return out

    def undeploy(self, endpoint: str, deployed_model_id: str) -> None:
        """endpoints.undeployModel (long-running). Its traffic goes to the others proportionally
        (``aiplatform.Endpoint._unallocate_traffic``); if it had all the traffic, the others share
        it equally."""
        from google.cloud.aiplatform import Endpoint as SdkEndpoint

        deployed_model_id = str(deployed_model_id)
        with self._clients(f"undeploy {deployed_model_id} from endpoint {endpoint!r}") as clients:
            service = clients.endpoints
            resource = self._require(clients, endpoint)
            endpoint_id = self._endpoint_id(resource)
            deployed_ids = [dm.id for dm in resource.deployed_models]
            if deployed_model_id not in deployed_ids:
                raise EndpointError(
                    f"Model {deployed_model_id!r} is not deployed on endpoint {endpoint_id} (deployed: {deployed_ids})."
                )
            current = {k: int(v) for k, v in resource.traffic_split.items() if k in deployed_ids}
            if deployed_model_id in current:
                split = SdkEndpoint._unallocate_traffic(
                    traffic_split=current, deployed_model_id=deployed_model_id
                )
                split.pop(deployed_model_id)
            else:
                split = dict(current)
            remaining = [d for d in deployed_ids if d != deployed_model_id]
            split = {k: split.get(k, 0) for k in remaining}
            if remaining and sum(split.values()) != 100:  # it had everything: share it equally
                n = len(remaining)
                split = {k: 100 // n + (1 if i < 100 % n else 0) for i, k in enumerate(remaining)}
            try:
                operation = service.undeploy_model(
                    endpoint=resource.name, deployed_model_id=deployed_model_id, traffic_split=split
                )
            except google_exceptions.GoogleAPICallError as err:
                raise EndpointError(
                    f"Vertex AI refused to undeploy {deployed_model_id} from endpoint {endpoint_id}: {error_text(err)}"
                ) from None
            self._wait(operation, f"undeploying {deployed_model_id} from endpoint {endpoint_id}")

    def delete_endpoint(self, endpoint: str) -> None:
        """endpoints.delete (long-running); refused while models are deployed."""
        with self._clients(f"delete endpoint {endpoint!r}") as clients:
            resource = self._require(clients, endpoint)
            if resource.deployed_models:
                raise EndpointError(
                    f"Endpoint {self._endpoint_id(resource)} has deployed models; undeploy them before deleting it."
                )
            operation = clients.endpoints.delete_endpoint(name=resource.name)
            self._wait(operation, f"deleting endpoint {self._endpoint_id(resource)}")
            self._endpoint_names = {k: v for k, v in self._endpoint_names.items() if v != resource.name}

    def set_traffic_split(self, endpoint: str, traffic_split: Mapping[str, int]) -> None:
        """endpoints.patch with ``updateMask=trafficSplit``; deployed models left out get 0."""
        from google.cloud.aiplatform_v1 import Endpoint
        from google.protobuf import field_mask_pb2

        with self._clients(f"set the traffic split of endpoint {endpoint!r}") as clients:
            service = clients.endpoints
            resource = self._require(clients, endpoint)
            endpoint_id = self._endpoint_id(resource)
            split = self._check_split(traffic_split, {dm.id for dm in resource.deployed_models}, endpoint_id)
            try:
                service.update_endpoint(
                    endpoint=Endpoint(name=resource.name, traffic_split=split),
                    update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]),
                )
            except google_exceptions.BadRequest as err:
                raise EndpointError(
                    f"Vertex AI refused traffic split {split} on endpoint {endpoint_id}: {error_text(err)}"
                ) from None

    def predict(
        self, endpoint: str, instances: Sequence[Any], parameters: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """PredictionService.Predict: ``predictions``, ``deployedModelId``, ``model``,
        ``modelVersionId`` (and ``modelDisplayName``)."""
        from google.protobuf import json_format, struct_pb2

        try:
            values = [
                json_format.ParseDict(json.loads(json.dumps(i, default=_plain)), struct_pb2.Value())
                for i in instances
            ]
            params = (
                json_format.ParseDict(
                    json.loads(json.dumps(dict(parameters), default=_plain)), struct_pb2.Value()
                )
                if parameters is not None
                else None
            )
        except (TypeError, ValueError, json_format.ParseError) as err:
            raise EndpointError(
                f"The instances must be JSON values (objects of feature values): {err}."
            ) from None
        with self._clients(f"predict on endpoint {endpoint!r}") as clients:
            name = self._resource_name(clients, endpoint)
            kwargs: dict[str, Any] = {"endpoint": name, "instances": values}
            if params is not None:
                kwargs["parameters"] = params
            try:
                response = clients.prediction.predict(**kwargs)
            except google_exceptions.NotFound:
                self._endpoint_names.pop(str(endpoint).strip(), None)
                raise EndpointError(
                    f"Endpoint {endpoint!r} not found in {self.parent}; create it with create_endpoint() (or check "
                    "LAKEHOUSE_ML_GCP_PROJECT and LAKEHOUSE_ML_BIGQUERY_LOCATION)."
                ) from None
            except (google_exceptions.BadRequest, google_exceptions.FailedPrecondition) as err:
                raise EndpointError(
                    f"predict on endpoint {name.rsplit('/', 1)[-1]} failed: {error_text(err)} Check the instances "
                    "(feature names and types) and that a model is deployed with traffic."
                ) from None
        body = json_format.MessageToDict(type(response).pb(response))
        body.setdefault("predictions", [])
        for key in ("deployedModelId", "model", "modelVersionId", "modelDisplayName"):
            body.setdefault(key, "")
        return body


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and dates as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _utc(value: Any, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise EndpointError(f"The request log window's {name} must be a datetime; got {value!r}.")
    return value.astimezone(dt.timezone.utc) if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _parsed(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _request_id_text(value: Any) -> str | None:
    """A request id as decimal text (BigQuery NUMERIC arrives as a Decimal with 9 decimals)."""
    if isinstance(value, decimal.Decimal):
        return format(value.normalize(), "f")
    return None if value is None else str(value)


def _log_frame(
    endpoint_id: str, rows: pa.Table | None, versions: Mapping[str, tuple[str, str]]
) -> pd.DataFrame:
    """One row per logged instance, in the columns and types of the local request log."""

    meta: dict[str, list] = {name: [] for name in LOG_COLUMNS}
    instances: list[dict] = []
    read = ("deployed_model_id", "logging_time", "request_id", "request_payload", "response_payload")
    records = zip(*(rows.column(c).to_pylist() for c in read)) if rows is not None else ()
    for deployed_model_id, logged, request_id, payloads, predictions in records:
        model_id, version_id = versions.get(deployed_model_id, (None, None))
        predictions = predictions or []
        for i, payload in enumerate(payloads or []):
            instance = _parsed(payload)
            instances.append(instance if isinstance(instance, dict) else {})
            prediction = predictions[i] if i < len(predictions) else None
            parsed = _parsed(prediction)
            values = {
                "endpoint_id": endpoint_id,
                "deployed_model_id": deployed_model_id,
                "model_id": model_id,
                "model_version_id": version_id,
                "logging_time": logged,
                "request_id": _request_id_text(request_id),
                "instance_index": i,
                "prediction": prediction if parsed is None else json.dumps(parsed),
            }
            for name, value in values.items():
                meta[name].append(value)
    types = {"logging_time": pa.timestamp("us", tz="UTC"), "instance_index": pa.int32()}
    arrays = {
        name: pa.array(meta[name], types.get(name, pa.string()))
        for name in LOG_COLUMNS
        if name != "prediction"
    }
    names = {
        name: f"feature_{name}" if name in LOG_COLUMNS else name
        for instance in instances
        for name in instance
    }
    for name, column in sorted(names.items(), key=lambda item: item[1]):
        arrays[column] = feature_array([row.get(name) for row in instances])
    arrays["prediction"] = pa.array(meta["prediction"], pa.string())
    return pa.table(arrays).to_pandas()


# -- factories ---------------------------------------------------------------------------------------


def _project(settings: "Settings", error: type[Exception]) -> str:
    if not settings.gcp_project:
        raise error(
            "The gcp backend needs a Google Cloud project: set LAKEHOUSE_ML_GCP_PROJECT "
            "(example: LAKEHOUSE_ML_GCP_PROJECT=my-analytics-project)."
        )
    return settings.gcp_project


def build_vertex_registry(settings: "Settings") -> VertexModelRegistry:
    """Vertex AI Model Registry for these settings (project, region from the BigQuery location,
    API endpoints, credentials)."""
    return VertexModelRegistry(
        project=_project(settings, RegistryError),
        bigquery_location=settings.bigquery_location,
        api_endpoint=settings.vertex_api_endpoint,
        bigquery_api_endpoint=settings.bigquery_api_endpoint,
        anonymous_credentials=settings.gcp_anonymous_credentials,
    )


def build_vertex_endpoints(settings: "Settings") -> VertexEndpoints:
    """Vertex AI endpoints for these settings; request-response logs go to the project's dataset."""
    return VertexEndpoints(
        project=_project(settings, EndpointError),
        dataset=settings.gcp_dataset,
        bigquery_location=settings.bigquery_location,
        api_endpoint=settings.vertex_api_endpoint,
        bigquery_api_endpoint=settings.bigquery_api_endpoint,
        anonymous_credentials=settings.gcp_anonymous_credentials,
        request_log_grace_s=float(settings.request_log_grace_seconds),
        monitoring_api_endpoint=settings.monitoring_api_endpoint,
    )
