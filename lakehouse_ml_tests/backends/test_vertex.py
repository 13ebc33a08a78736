"""Wire-level tests of the Vertex AI registry and endpoints (gcp backend).

The real ``google-cloud-aiplatform`` clients (built from settings by :func:`build_vertex_registry`
and :func:`build_vertex_endpoints`) talk HTTP to a local test double of the Vertex AI REST API
(:mod:`lakehouse_ml_tests.fakes.vertex_api`). The tests check the exact request bodies that go over
the wire, that long-running operations are polled, the state that results, and that API errors
become the project's exceptions with messages that say what to do next.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading

import pytest
from google.api_core import exceptions as google_exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials

from lakehouse_ml.backends.registry import ModelRegistry
from lakehouse_ml.backends.vertex import (
    REQUEST_LOG_SQL,
    VertexEndpoints,
    VertexModelRegistry,
    build_vertex_endpoints,
    build_vertex_registry,
)
from lakehouse_ml.bigquery.request_log import LOG_COLUMNS
from lakehouse_ml.core.errors import (
    EndpointError,
    ModelNotRegisteredError,
    RegistryError,
    VersionDeployedError,
)
from lakehouse_ml.core.settings import load_settings
from lakehouse_ml_tests.fakes.bigquery_api import FakeBigQueryApi, fake_bigquery_api
from lakehouse_ml_tests.fakes.vertex_api import (
    DEFAULT_PROJECT_NUMBER,
    REQUEST_LOG_SCHEMA,
    FakeVertexApi,
    fake_vertex_api,
)

pytestmark = pytest.mark.timeout(60)

PROJECT = "lakehouse-test"
DATASET = "lakehouse_ml"
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
V1 = f"/v1/{PARENT}"
# Resources come back named with the project number; calls on them use that name, as the SDK's do.
EP = f"/v1/projects/{DEFAULT_PROJECT_NUMBER}/locations/{REGION}/endpoints/churn-ep"
MACHINE = {"machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1, "maxReplicaCount": 1}


@pytest.fixture()
def api() -> FakeVertexApi:
    with fake_vertex_api() as running:
        yield running
    leftovers = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("fake-vertex-api") or "process_request_thread" in t.name
    ]
    assert leftovers == [], f"the test double left threads behind: {leftovers}"


def settings_for(api: FakeVertexApi, location: str = "US", bigquery: FakeBigQueryApi | None = None):
    return load_settings(
        {
            "LAKEHOUSE_ML_BACKEND": "gcp",
            "LAKEHOUSE_ML_GCP_PROJECT": PROJECT,
            "LAKEHOUSE_ML_GCP_DATASET": DATASET,
            "LAKEHOUSE_ML_BIGQUERY_LOCATION": location,
            "LAKEHOUSE_ML_VERTEX_API_ENDPOINT": api.url,
            # without a BigQuery double, the Vertex AI double answers BigQuery's models.get itself
            "LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT": (bigquery or api).url,
            "LAKEHOUSE_ML_MONITORING_API_ENDPOINT": api.url,
            "LAKEHOUSE_ML_GCP_ANONYMOUS_CREDENTIALS": "true",
        }
    )


@pytest.fixture()
def registry(api: FakeVertexApi) -> VertexModelRegistry:
    return build_vertex_registry(settings_for(api))


@pytest.fixture()
def endpoints(api: FakeVertexApi) -> VertexEndpoints:
    return build_vertex_endpoints(settings_for(api))


def seed_churn(api: FakeVertexApi, versions: int = 2, **kwargs) -> None:
    """``churn`` registered by BigQuery ML: v1 (default), v2 (champion) … from ``lakehouse_ml.churn_model``."""
    for i in range(versions):
        api.seed_bqml_model(
            PROJECT,
            REGION,
            "churn",
            dataset=DATASET,
            bq_model="churn_model",
            aliases=["champion"] if i == 1 else [],
            **kwargs,
        )


def train_churn(bq: FakeBigQueryApi, api: FakeVertexApi, versions: int = 2, dataset: str = DATASET) -> None:
    """``churn`` registered by BigQuery ML from real models (the BigQuery double trains them):
    version i from ``churn_model_i`` on features ``a`` and ``b``; v2 gets ``champion``."""
    import numpy as np
    import pandas as pd

    from lakehouse_ml.backends.gcp_warehouse import build_gcp_warehouse

    warehouse = build_gcp_warehouse(settings_for(api, bigquery=bq)).model_copy(update={"dataset": dataset})
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    frame["y"] = frame["a"] + 0.5 * rng.normal(size=200) > 0
    if not warehouse.table_exists("churn_rows"):
        warehouse.load_dataframe(frame, "churn_rows")
    start = len([m for m, _ in warehouse.list_models() if m.startswith("churn_model_")])
    for i in range(start + 1, start + versions + 1):
        aliases = ", vertex_ai_model_version_aliases=['champion']" if i == 2 else ""
        warehouse.execute(
            f"CREATE MODEL churn_model_{i} OPTIONS(model_type='LOGISTIC_REG', input_label_cols=['y'], l2_reg={i}, "
            f"model_registry='VERTEX_AI', vertex_ai_model_id='churn'{aliases}) AS SELECT a, b, y FROM churn_rows"
        )


def bodies(api: FakeVertexApi, method: str, path: str) -> list:
    return [r.json for r in api.find_requests(method, path)]


# -- registry ----------------------------------------------------------------------------------------


def test_versions_and_aliases_round_trip(api, registry):
    seed_churn(api)
    default = registry.get_version("churn")
    assert (default.model_id, default.version_id, default.aliases) == ("churn", "1", ["default"])
    champion = registry.get_version("churn", "champion")
    assert (champion.version_id, champion.aliases) == ("2", ["champion"])
    assert registry.get_version("churn", "2") == champion
    assert champion.deployable and champion.metrics == {} and champion.create_time and champion.update_time
    assert champion.artifact_uri == f"{PARENT}/models/churn@2"
    # name@alias and name@version go over the wire as such
    assert [r.path for r in api.find_requests("GET", rf"{V1}/models/churn@.*")] == [
        f"{V1}/models/churn@default",
        f"{V1}/models/churn@champion",
        f"{V1}/models/churn@2",
    ]
    assert [(v.version_id, v.aliases) for v in registry.list_versions("churn")] == [
        ("1", ["default"]),
        ("2", ["champion"]),
    ]
    assert api.find_requests("GET", rf"{V1}/models/churn:listVersions")
    api.seed_bqml_model(PROJECT, REGION, "arima", dataset=DATASET, model_type="ARIMA_PLUS")
    assert registry.list_models() == ["arima", "churn"]
    assert registry.get_version("arima").deployable is False
    assert registry.latest_version("churn").version_id == "2"
    assert registry.version_url(champion) == (
        "https://console.cloud.google.com/vertex-ai/models/locations/us-central1/models/churn/versions/2"
        f"?project={PROJECT}"
    )


def test_merge_aliases_moves_the_alias_with_the_exact_body(api, registry):
    seed_churn(api)
    merged = registry.merge_version_aliases("churn", "1", ["champion", "prod"])
    assert (merged.version_id, merged.aliases) == ("1", ["default", "champion", "prod"])
    assert registry.get_version("churn", "2").aliases == []  # moved, not copied
    assert bodies(api, "POST", rf"{V1}/models/churn@1:mergeVersionAliases") == [
        {"versionAliases": ["champion", "prod"]}
    ]
    registry.merge_version_aliases("churn", "2", ["default", "-prod"])
    # '-prod' removes 'prod' from version 2 only: version 1 keeps it
    assert api.model_state(PROJECT, REGION, "churn")["aliases"] == {
        "default": "2",
        "champion": "1",
        "prod": "1",
    }
    assert bodies(api, "POST", rf"{V1}/models/churn@2:mergeVersionAliases") == [
        {"versionAliases": ["default", "-prod"]}
    ]


def test_alias_rules_are_enforced(api, registry):
    seed_churn(api)
    with pytest.raises(RegistryError, match="'default' to another version"):
        registry.merge_version_aliases("churn", "1", ["-default"])
    assert api.model_state(PROJECT, REGION, "churn")["aliases"]["default"] == "1"
    sent = len(api.requests)
    for bad in (["Bad"], ["1x"], "champion", ["a"]):
        with pytest.raises(RegistryError, match="alias|list"):
            registry.merge_version_aliases("churn", "1", bad)
    with pytest.raises(RegistryError, match="model id"):
        registry.get_version("Churn Model")
    assert len(api.requests) == sent, "invalid input must be refused before anything is sent"


def test_missing_models_versions_and_aliases_say_what_exists(api, registry):
    seed_churn(api)
    with pytest.raises(
        ModelNotRegisteredError,
        match=r"'nope' is not in Vertex AI Model Registry.*\['churn'\].*MODEL_REGISTRY='VERTEX_AI'",
    ):
        registry.get_version("nope")
    with pytest.raises(
        ModelNotRegisteredError,
        match=r"no version or alias 'golden'.*\['1', '2'\].*\['champion', 'default'\]",
    ):
        registry.get_version("churn", "golden")
    with pytest.raises(ModelNotRegisteredError, match="no version or alias '7'"):
        registry.merge_version_aliases("churn", "7", ["x1"])
    with pytest.raises(ModelNotRegisteredError):
        registry.list_versions("nope")


def test_delete_version_rules(api, registry, endpoints):
    seed_churn(api, versions=3)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    dm = endpoints.deploy("churn-ep", "churn", "2", "", logging_sampling_rate=0)
    with pytest.raises(
        VersionDeployedError, match=rf"deployed to .*endpoints/churn-ep \(deployed model {dm}\).*Undeploy"
    ):
        registry.delete_version("churn", "champion")
    # the double itself refuses deleting a deployed version (as Vertex AI does)
    from google.cloud.aiplatform_v1 import ModelServiceClient

    raw = ModelServiceClient(
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=api.url),
        transport="rest",
    )
    with pytest.raises(google_exceptions.BadRequest, match="deployed models") as info:
        raw.delete_model_version(name=f"{PARENT}/models/churn@2")
    assert info.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"
    raw.transport.close()

    api.clear_requests()
    registry.delete_version("churn", "3")
    assert [r.method for r in api.find_requests(path=rf"{V1}/models/churn@3:deleteVersion")] == ["DELETE"]
    assert len(api.operations_polled()) >= 2, "the long-running operation was not polled to completion"
    assert api.model_state(PROJECT, REGION, "churn")["versions"] == ["1", "2"]

    # "When you delete a model version assigned the default alias, the alias is automatically
    # assigned to the next most recent version" (model-alias page).
    registry.delete_version("churn", "1")
    assert api.model_state(PROJECT, REGION, "churn") == {
        "versions": ["2"],
        "aliases": {"champion": "2", "default": "2"},
    }
    endpoints.undeploy("churn-ep", dm)
    with pytest.raises(RegistryError, match="only version.*delete_model"):
        registry.delete_version("churn", "2")


def test_delete_model_refused_while_deployed(api, registry, endpoints):
    seed_churn(api)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    dm = endpoints.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=0)
    with pytest.raises(VersionDeployedError, match="Undeploy"):
        registry.delete_model("churn")
    endpoints.undeploy("churn-ep", dm)
    registry.delete_model("churn")
    assert registry.list_models() == []
    with pytest.raises(ModelNotRegisteredError):
        registry.get_version("churn")


def test_bigquery_ml_registers_models_itself(api, registry):
    # CREATE MODEL … MODEL_REGISTRY='VERTEX_AI' registers in BigQuery: the Vertex registry has no
    # way to register, replace or drop a BigQuery ML model's version (the local one has, for the
    # local engine: lakehouse_ml.engine.registry_hook.RegistryHook).
    for name in ("register_version", "replace_bqml_version", "drop_bqml_model"):
        assert not hasattr(registry, name)
        assert not hasattr(ModelRegistry, name)
    assert api.requests == []


def test_find_bqml_version_follows_bigquery_training_runs(api, registry):
    seed_churn(api)
    found = registry.find_bqml_version(f"bqml://{DATASET}.churn_model")
    assert (found.model_id, found.version_id, found.source) == ("churn", "2", f"bqml://{DATASET}.churn_model")
    assert api.find_requests("GET", rf"/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/models/churn_model")
    assert registry.find_bqml_version(f"bqml://{DATASET}.never_trained") is None
    with pytest.raises(RegistryError, match="bqml://<dataset>.<model>"):
        registry.find_bqml_version("churn_model")


def test_region_follows_the_bigquery_location(api):
    api.seed_bqml_model(PROJECT, "europe-west4", "churn", dataset=DATASET)
    eu = build_vertex_registry(settings_for(api, "EU"))
    assert eu.region == "europe-west4"
    assert eu.get_version("churn").version_id == "1"
    assert api.requests[-1].path == f"/v1/projects/{PROJECT}/locations/europe-west4/models/churn@default"
    us = build_vertex_registry(settings_for(api, "US"))
    assert us.region == "us-central1"
    with pytest.raises(ModelNotRegisteredError):
        us.get_version("churn")  # registered in europe-west4 only
    assert (
        build_vertex_endpoints(settings_for(api, "EU")).parent == f"projects/{PROJECT}/locations/europe-west4"
    )
    assert build_vertex_endpoints(settings_for(api, "asia-northeast1")).region == "asia-northeast1"
    assert (
        VertexModelRegistry(project=PROJECT).endpoint_url == "https://us-central1-aiplatform.googleapis.com"
    )


# -- endpoints ---------------------------------------------------------------------------------------


def test_create_endpoint_waits_for_the_operation(api, endpoints):
    created = endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    assert created["endpoint_id"] == "churn-ep"
    assert created["display_name"] == "churn"
    assert created["resource_name"].endswith("/locations/us-central1/endpoints/churn-ep")
    assert created["deployed_models"] == [] and created["traffic_split"] == {}
    (create,) = api.find_requests("POST", rf"{V1}/endpoints")
    assert create.json == {"displayName": "churn"}
    assert create.query["endpointId"] == "churn-ep"
    polls = api.operations_polled()
    assert len(polls) == 2 and polls[0].response["done"] is False and polls[-1].response["done"] is True
    # again: found, not created twice
    assert endpoints.create_endpoint("churn", endpoint_id="churn-ep")["endpoint_id"] == "churn-ep"
    assert len(api.find_requests("POST", rf"{V1}/endpoints")) == 1
    # by display name (endpoints.list with a filter)
    assert endpoints.get_endpoint("churn")["endpoint_id"] == "churn-ep"
    assert endpoints.get_endpoint("no-such-endpoint") is None
    assert (
        api.find_requests("GET", rf"{V1}/endpoints")[-1].query["filter"] == 'display_name="no-such-endpoint"'
    )
    with pytest.raises(EndpointError, match="Invalid endpoint id"):
        endpoints.create_endpoint("churn", endpoint_id="Churn_EP")


def test_deploy_sends_resources_traffic_and_logging(api, endpoints):
    seed_churn(api)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    api.clear_requests()
    dm = endpoints.deploy("churn-ep", "churn", "1", "ignored-on-vertex", logging_sampling_rate=0.25)
    (patch,) = api.find_requests("PATCH", rf"{EP}")
    assert patch.query["updateMask"] == "predictRequestResponseLoggingConfig"
    assert patch.json == {
        "predictRequestResponseLoggingConfig": {
            "enabled": True,
            "samplingRate": 0.25,
            "bigqueryDestination": {
                "outputUri": f"bq://{PROJECT}.{DATASET}.request_response_logging_churn_ep"
            },
        }
    }
    assert bodies(api, "POST", rf"{EP}:deployModel") == [
        {
            "deployedModel": {
                "model": f"{PARENT}/models/churn@1",
                "dedicatedResources": MACHINE,
                "disableExplanations": True,
            },
            "trafficSplit": {"0": 100},
        }
    ]
    assert len(api.operations_polled()) == 2
    info = endpoints.get_endpoint("churn-ep")
    assert info["traffic_split"] == {dm: 100}
    (deployed,) = info["deployed_models"]
    assert {
        k: deployed[k]
        for k in ("deployed_model_id", "model_id", "version_id", "traffic_percentage", "machine_type")
    } == {
        "deployed_model_id": dm,
        "model_id": "churn",
        "version_id": "1",
        "traffic_percentage": 100,
        "machine_type": "n1-standard-2",
    }
    assert deployed["min_replica_count"] == 1 and deployed["logging_sampling_rate"] == 0.25
    assert endpoints.request_log_table("churn-ep") == f"{PROJECT}.{DATASET}.request_response_logging_churn_ep"
    assert info["request_log_table"] == endpoints.request_log_table("churn")
    assert endpoints.console_url("churn-ep") == (
        f"https://console.cloud.google.com/vertex-ai/online-prediction/locations/us-central1/endpoints/churn-ep?project={PROJECT}"
    )


def test_canary_rollout_bodies_and_final_state(logging_api, bq, logged):
    api, endpoints = logging_api, logged
    train_churn(bq, api)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    old = endpoints.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=1.0)
    api.clear_requests()
    new = endpoints.deploy(
        "churn-ep",
        "churn",
        "champion",
        "",
        traffic_percentage=10,
        machine_type="n1-highmem-4",
        logging_sampling_rate=1.0,
    )
    assert bodies(api, "POST", rf"{EP}:deployModel") == [
        {
            "deployedModel": {
                "model": f"{PARENT}/models/churn@champion",
                "dedicatedResources": {**MACHINE, "machineSpec": {"machineType": "n1-highmem-4"}},
                "disableExplanations": True,
            },
            "trafficSplit": {old: 90, "0": 10},
        }
    ]
    assert api.find_requests("PATCH") == [], "logging already configured: no second patch"
    assert endpoints.get_endpoint("churn-ep")["traffic_split"] == {old: 90, new: 10}

    # the double routes by the split: exactly one request in ten reaches the canary
    served = [endpoints.predict("churn-ep", [{"a": 1.0, "b": 0.0}])["deployedModelId"] for _ in range(10)]
    assert served.count(new) == 1 and served.count(old) == 9

    api.clear_requests()
    endpoints.set_traffic_split("churn-ep", {new: 100, old: 0})
    (patch,) = api.find_requests("PATCH", rf"{EP}")
    assert patch.query["updateMask"] == "trafficSplit"
    assert patch.json == {"trafficSplit": {new: 100, old: 0}}

    endpoints.undeploy("churn-ep", old)
    assert bodies(api, "POST", rf"{EP}:undeployModel") == [
        {"deployedModelId": old, "trafficSplit": {new: 100}}
    ]
    final = endpoints.get_endpoint("churn-ep")
    assert final["traffic_split"] == {new: 100}
    assert [(d["deployed_model_id"], d["version_id"]) for d in final["deployed_models"]] == [(new, "2")]
    assert api.endpoint_state(PROJECT, REGION, "churn-ep")["trafficSplit"] == {new: 100}


def test_explicit_split_and_undeploy_of_the_model_with_all_traffic(api, endpoints):
    seed_churn(api)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    a = endpoints.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=0)
    b = endpoints.deploy(
        "churn-ep", "churn", "2", "", traffic_split={a: 30, "0": 70}, logging_sampling_rate=0
    )
    assert bodies(api, "POST", rf"{EP}:deployModel")[-1]["trafficSplit"] == {a: 30, "0": 70}
    assert endpoints.get_endpoint("churn-ep")["traffic_split"] == {a: 30, b: 70}
    c = endpoints.deploy("churn-ep", "churn", "1", "", traffic_percentage=0, logging_sampling_rate=0)
    assert bodies(api, "POST", rf"{EP}:deployModel")[-1]["trafficSplit"] == {a: 30, b: 70, "0": 0}
    endpoints.set_traffic_split("churn-ep", {b: 100})
    endpoints.undeploy("churn-ep", b)  # b had everything: a and c share it
    assert bodies(api, "POST", rf"{EP}:undeployModel")[-1] == {
        "deployedModelId": b,
        "trafficSplit": {a: 50, c: 50},
    }
    assert endpoints.get_endpoint("churn-ep")["traffic_split"] == {a: 50, c: 50}
    endpoints.undeploy("churn-ep", a)  # proportional: c takes a's half
    assert bodies(api, "POST", rf"{EP}:undeployModel")[-1]["trafficSplit"] == {c: 100}
    endpoints.undeploy("churn-ep", c)
    assert bodies(api, "POST", rf"{EP}:undeployModel")[-1] == {"deployedModelId": c}
    assert endpoints.get_endpoint("churn-ep")["deployed_models"] == []


def test_predict_answers_the_real_model_in_the_export_shape(logging_api, bq, logged):
    """The double predicts with the BigQuery ML model behind the version: the values of ML.PREDICT
    (run here through the BigQuery double), in the export serving signature."""
    from lakehouse_ml.backends.gcp_warehouse import build_gcp_warehouse

    api, endpoints = logging_api, logged
    train_churn(bq, api)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    dm = endpoints.deploy("churn-ep", "churn", "2", "", logging_sampling_rate=0)
    answer = endpoints.predict("churn", [{"a": 1, "b": 2.5}, {"a": -1, "b": 0}])
    assert answer["deployedModelId"] == dm and answer["modelVersionId"] == "2"
    assert answer["model"].endswith("/locations/us-central1/models/churn")
    expected = build_gcp_warehouse(settings_for(api, bigquery=bq)).query(
        "SELECT * FROM ML.PREDICT(MODEL churn_model_2, (SELECT 1.0 AS a, 2.5 AS b UNION ALL SELECT -1.0, 0.0))"
    )
    for prediction, (_, want) in zip(answer["predictions"], expected.iterrows(), strict=True):
        assert set(prediction) == {"predicted_y", "y_values", "y_probs"}
        assert prediction["predicted_y"] == ["true" if want["predicted_y"] else "false"]
        probs = {("true" if p["label"] else "false"): p["prob"] for p in want["predicted_y_probs"]}
        assert dict(zip(prediction["y_values"], prediction["y_probs"])) == pytest.approx(probs)
    (sent,) = bodies(api, "POST", rf"{EP}:predict")
    assert sent == {"instances": [{"a": 1.0, "b": 2.5}, {"a": -1.0, "b": 0.0}]}
    with pytest.raises(
        EndpointError, match=r"instances\[0\]\.a.*not a value of type FLOAT64.*Check the instances"
    ):
        endpoints.predict("churn-ep", [{"a": "text", "b": 1.0}])
    with pytest.raises(EndpointError, match=r"missing \['b'\]"):
        endpoints.predict("churn-ep", [{"a": 1.0}])
    with pytest.raises(EndpointError, match="not found.*create_endpoint"):
        endpoints.predict("missing-ep", [{"a": 1}])


def test_one_client_per_process_and_a_smoke_test_makes_no_management_call(logging_api, bq, logged):
    from lakehouse_ml.backends import vertex
    from lakehouse_ml.lifecycle.deployment import smoke_test

    api, endpoints = logging_api, logged
    train_churn(bq, api)
    before = {k: v for k, v in vertex.CREATED.items()}
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    dm = endpoints.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=0)
    registry = build_vertex_registry(settings_for(api, bigquery=bq))
    for _ in range(5):
        registry.get_version("churn", "2")
        endpoints.get_endpoint("churn-ep")
        endpoints.predict("churn-ep", [{"a": 0.0, "b": 0.0}])
    made = {k: vertex.CREATED[k] - before.get(k, 0) for k in vertex.CREATED}
    # One client per service for this API endpoint (and no new credentials), however many calls.
    assert {k: v for k, v in made.items() if v} == {
        "ModelServiceClient": 1,
        "EndpointServiceClient": 1,
        "PredictionServiceClient": 1,
    }
    assert sum(1 for key in vertex._CLIENTS if key[1] == api.url) == 3

    api.clear_requests()
    result = smoke_test(
        endpoints, _Spec(), [{"a": float(i), "b": 1.0} for i in range(30)], endpoint="churn-ep"
    )
    assert result.passed, result.describe()
    predicts = api.find_requests("POST", r".*:predict")
    assert len(predicts) == result.requests == 21
    assert [r for r in api.requests if r not in predicts] == [], "the smoke test made management calls"
    assert dm


class _Spec:
    """What smoke_test reads of a spec: the served model's format and endpoint."""

    name = "churn"
    model_type = "LOGISTIC_REG"
    options: dict = {}

    def prediction_format(self, label_type=None):
        from lakehouse_ml.bigquery.served import PredictionFormat

        return PredictionFormat("LOGISTIC_REG", "y", label_type)

    @property
    def serving(self):
        from lakehouse_ml.lifecycle.models import Serving

        return Serving(endpoint="churn")


def test_management_calls_retry_on_429_and_503(api):
    seed_churn(api)
    endpoints = VertexEndpoints(
        project=PROJECT, api_endpoint=api.url, anonymous_credentials=True, retry_initial_s=0.01
    )
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    api.clear_requests()
    api.fail_next(2, "RESOURCE_EXHAUSTED", path=r":deployModel$")
    api.fail_next(1, "UNAVAILABLE", path=r"/endpoints/churn-ep$")
    dm = endpoints.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=0)
    assert [r.status for r in api.find_requests("POST", r".*/endpoints/churn-ep:deployModel")] == [
        429,
        429,
        200,
    ]
    assert [r.status for r in api.find_requests("GET", r".*/endpoints/churn-ep")][:2] == [503, 200]
    assert endpoints.get_endpoint("churn-ep")["traffic_split"] == {dm: 100}
    # A call that stays throttled fails after its retry deadline, saying what to do.
    impatient = VertexEndpoints(
        project=PROJECT,
        api_endpoint=api.url,
        anonymous_credentials=True,
        retry_initial_s=0.01,
        retry_timeout_s=0.2,
    )
    api.fail_next(10**6, "RESOURCE_EXHAUSTED", path=r"/endpoints/churn-ep$")
    with pytest.raises(EndpointError, match="did not answer in time|quota|Quota"):
        impatient.get_endpoint("churn-ep")
    api._failures.clear()


def test_predict_target_and_served_counts(logging_api, bq, logged):
    api, endpoints = logging_api, logged
    train_churn(bq, api)
    endpoints.create_endpoint("churn", endpoint_id="4567")
    endpoints.deploy("4567", "churn", "1", "", logging_sampling_rate=0)
    url, token = endpoints.predict_target("churn")
    assert (
        url == f"{api.url}/v1/projects/{DEFAULT_PROJECT_NUMBER}/locations/us-central1/endpoints/4567:predict"
        and token is None
    )
    assert endpoints.predict_target("4567")[0] == f"{api.url}/v1/{PARENT}/endpoints/4567:predict"
    eu = VertexEndpoints(project=PROJECT, bigquery_location="EU")
    assert eu.endpoint_url == "https://europe-west4-aiplatform.googleapis.com"
    # Cloud Monitoring's prediction count: what tells a broken request log from no traffic.
    for i in range(3):
        api.clock = lambda i=i: T0 + i * dt.timedelta(minutes=1)
        endpoints.predict("4567", [{"a": 0.0, "b": 0.0}] * (i + 1))
    assert endpoints.served_predictions("4567", T0, T0 + HOUR) == 6
    assert endpoints.served_predictions("4567", T0 + dt.timedelta(minutes=1), T0 + HOUR) == 5
    assert endpoints.served_predictions("4567", T0 - HOUR, T0) == 0
    (query,) = [r.query for r in api.find_requests("GET", rf"/v3/projects/{PROJECT}/timeSeries")][:1]
    assert (
        query["filter"] == 'metric.type="aiplatform.googleapis.com/prediction/online/prediction_count" '
        'AND resource.labels.endpoint_id="4567"'
    )
    unreachable = VertexEndpoints(
        project=PROJECT,
        api_endpoint=api.url,
        anonymous_credentials=True,
        monitoring_api_endpoint="http://127.0.0.1:9",
    )
    assert unreachable.served_predictions("4567", T0, T0 + HOUR) is None


def test_deploy_errors_say_what_to_do(api, endpoints):
    seed_churn(api)
    api.seed_bqml_model(PROJECT, REGION, "sales_forecast", dataset=DATASET, model_type="ARIMA_PLUS")
    with pytest.raises(EndpointError, match="not found.*create_endpoint"):
        endpoints.deploy("missing-ep", "churn", "1", "")
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    with pytest.raises(EndpointError, match="does not support deployment.*ARIMA_PLUS"):
        endpoints.deploy("churn-ep", "sales_forecast", "1", "", logging_sampling_rate=0)
    with pytest.raises(EndpointError, match="not found.*Register it first"):
        endpoints.deploy("churn-ep", "churn", "9", "", logging_sampling_rate=0)
    sent = len(api.requests)
    with pytest.raises(EndpointError, match="not deployed on endpoint churn-ep"):
        endpoints.deploy("churn-ep", "churn", "1", "", traffic_split={"123": 50, "0": 50})
    with pytest.raises(EndpointError, match="sum to 100"):
        endpoints.deploy("churn-ep", "churn", "1", "", traffic_split={"0": 50})
    with pytest.raises(EndpointError, match="not both"):
        endpoints.deploy("churn-ep", "churn", "1", "", traffic_percentage=5, traffic_split={"0": 100})
    with pytest.raises(EndpointError, match="logging_sampling_rate"):
        endpoints.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=2)
    with pytest.raises(EndpointError, match="not deployed on endpoint"):
        endpoints.undeploy("churn-ep", "42")
    assert len(api.find_requests("POST", rf"{EP}:deployModel")) == 2  # the two the server refused
    assert all(r.method == "GET" for r in api.requests[sent:]), "invalid arguments must not change anything"


def test_operation_that_never_finishes_times_out_clearly(api):
    seed_churn(api)
    api.polls_before_done = 10**9
    slow = VertexEndpoints(
        project=PROJECT,
        api_endpoint=api.url,
        anonymous_credentials=True,
        operation_timeout_s=0.3,
        poll_interval_s=0.02,
    )
    with pytest.raises(
        EndpointError,
        match=r"did not finish creating endpoint 'churn' within 0.3 s \(operation .*/operations/\d+\).*console",
    ):
        slow.create_endpoint("churn", endpoint_id="churn-ep")
    assert len(api.operations_polled()) >= 3


def test_high_level_sdk_reads_the_double(logging_api, bq, logged):
    """The double is faithful enough for aiplatform.Endpoint (the SDK users write against)."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    api, endpoints = logging_api, logged
    train_churn(bq, api)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    dm = endpoints.deploy("churn-ep", "churn", "2", "", logging_sampling_rate=0)
    aiplatform.init(
        project=PROJECT,
        location=REGION,
        credentials=AnonymousCredentials(),
        api_endpoint=api.url,
        api_transport="rest",
    )
    try:
        sdk_endpoint = aiplatform.Endpoint("churn-ep")
        assert sdk_endpoint.traffic_split == {dm: 100}
        prediction = sdk_endpoint.predict(instances=[{"a": 1.0, "b": 0.0}])
        model = aiplatform.Model("churn", version="champion")
        assert model.version_id == "2" and "champion" in model.version_aliases
    finally:
        initializer.global_config.__init__()  # back to the SDK's defaults for the rest of the process
    assert prediction.deployed_model_id == dm and prediction.model_version_id == "2"
    assert set(prediction.predictions[0]) == {"predicted_y", "y_values", "y_probs"}


# -- request-response log ----------------------------------------------------------------------------
# Vertex AI logs predictions to BigQuery: the Vertex AI double appends each logged request to a
# BigQuery double (as Vertex AI's logging does), and request_log reads it back with the real
# google-cloud-bigquery client.

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
HOUR = dt.timedelta(hours=1)
LOG_TABLE = "request_response_logging_churn_ep"


@pytest.fixture()
def bq() -> FakeBigQueryApi:
    with fake_bigquery_api() as running:
        yield running


@pytest.fixture()
def logging_api(bq: FakeBigQueryApi) -> FakeVertexApi:
    with fake_vertex_api(bigquery=bq) as running:
        yield running


@pytest.fixture()
def logged(logging_api: FakeVertexApi, bq: FakeBigQueryApi) -> VertexEndpoints:
    """Endpoints on the Vertex AI double, reading the request log from the BigQuery double."""
    return build_vertex_endpoints(settings_for(logging_api, bigquery=bq))


def predict_at(api: FakeVertexApi, endpoints: VertexEndpoints, when: dt.datetime, instances: list) -> dict:
    api.clock = lambda: when
    return endpoints.predict("churn-ep", instances)


def test_request_log_reads_one_window_one_row_per_instance(logging_api, bq, logged):
    train_churn(bq, logging_api)
    logged.create_endpoint("churn", endpoint_id="churn-ep")
    dm = logged.deploy("churn-ep", "churn", "2", "", logging_sampling_rate=1.0)
    predict_at(logging_api, logged, T0 - dt.timedelta(seconds=1), [{"a": 9, "b": 9}])  # before the window
    predict_at(logging_api, logged, T0, [{"a": 1, "b": 2.5}, {"a": -1, "b": 0}])  # at its start: in
    predict_at(logging_api, logged, T0 + HOUR / 2, [{"a": 3, "b": 1}])
    predict_at(logging_api, logged, T0 + HOUR, [{"a": 7, "b": 7}])  # at its end: out
    assert logging_api.logging_errors == []
    assert bq.table(PROJECT, DATASET, LOG_TABLE).num_rows == 4  # one row per request in BigQuery
    bq.clear_requests()

    log = logged.request_log("churn", T0, T0 + HOUR)

    assert list(log.columns) == [*LOG_COLUMNS[:-1], "a", "b", "prediction"]
    assert log[["a", "b"]].to_dict("list") == {"a": [1.0, -1.0, 3.0], "b": [2.5, 0.0, 1.0]}
    # each prediction as the JSON text Vertex AI logs (the export serving signature)
    assert [set(json.loads(p)) for p in log["prediction"]] == [{"predicted_y", "y_values", "y_probs"}] * 3
    assert [json.loads(p)["predicted_y"] for p in log["prediction"]] == [["true"], ["false"], ["true"]]
    assert log["instance_index"].tolist() == [0, 1, 0]
    assert log["request_id"].tolist() == ["7000000000000000002", "7000000000000000002", "7000000000000000003"]
    assert log["logging_time"].tolist() == [T0, T0, T0 + HOUR / 2]
    assert set(log["endpoint_id"]) == {"churn-ep"} and set(log["deployed_model_id"]) == {dm}
    assert set(log["model_id"]) == {"churn"} and set(log["model_version_id"]) == {"2"}
    assert {c: str(log[c].dtype) for c in ("logging_time", "instance_index", "a", "request_id")} == {
        "logging_time": "datetime64[us, UTC]",
        "instance_index": "int32",
        "a": "float64",
        "request_id": "object",
    }
    # one parameterised query on the endpoint's log table, the window as TIMESTAMP parameters
    (job,) = [
        j for j in bq.job_inserts() if "request_response_logging" in j["configuration"]["query"]["query"]
    ]
    query = job["configuration"]["query"]
    assert query["query"] == REQUEST_LOG_SQL.format(table=LOG_TABLE)
    assert query["defaultDataset"] == {"projectId": PROJECT, "datasetId": DATASET}
    params = {p["name"]: p for p in query["queryParameters"]}
    assert {n: p["parameterType"]["type"] for n, p in params.items()} == {
        "start": "TIMESTAMP",
        "end": "TIMESTAMP",
    }
    assert [dt.datetime.fromisoformat(params[n]["parameterValue"]["value"]) for n in ("start", "end")] == [
        T0,
        T0 + HOUR,
    ]
    # naive times are UTC
    again = logged.request_log("churn-ep", T0.replace(tzinfo=None), (T0 + HOUR).replace(tzinfo=None))
    assert again.equals(log)
    # an empty window is an empty log with the same columns
    assert list(logged.request_log("churn-ep", T0 - 2 * HOUR, T0 - HOUR).columns) == list(LOG_COLUMNS)


def test_request_log_maps_deployed_models_to_versions_and_keeps_undeployed_ones(logging_api, bq, logged):
    train_churn(bq, logging_api)
    logged.create_endpoint("churn", endpoint_id="churn-ep")
    old = logged.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=1.0)
    new = logged.deploy("churn-ep", "churn", "2", "", traffic_percentage=50, logging_sampling_rate=1.0)
    for i in range(4):
        predict_at(logging_api, logged, T0 + i * dt.timedelta(minutes=1), [{"a": float(i), "b": 0.0}])
    logged.undeploy("churn-ep", old)  # Vertex AI forgets it: its rows cannot be mapped any more

    log = logged.request_log("churn-ep", T0, T0 + HOUR)

    rows = log[["deployed_model_id", "model_id", "model_version_id", "a", "prediction"]].to_dict("records")
    assert sorted(r["deployed_model_id"] for r in rows) == sorted([old, old, new, new])
    for row in rows:
        if row["deployed_model_id"] == new:
            assert (row["model_id"], row["model_version_id"]) == ("churn", "2")
        else:
            assert row["model_id"] is None and row["model_version_id"] is None
        assert json.loads(row["prediction"])["y_probs"]  # its predictions are kept
    # what monitoring keeps of the serving version
    assert log[log["model_version_id"].astype(str) == "2"]["deployed_model_id"].tolist() == [new, new]


def test_request_log_holds_the_sampled_requests(logging_api, bq, logged):
    train_churn(bq, logging_api)
    logged.create_endpoint("churn", endpoint_id="churn-ep")
    logged.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=0.5)
    for i in range(6):
        predict_at(logging_api, logged, T0 + i * dt.timedelta(minutes=1), [{"a": float(i), "b": 0.0}])
    log = logged.request_log("churn-ep", T0, T0 + HOUR)
    assert log["a"].tolist() == [1.0, 3.0, 5.0]  # the double logs every second request at rate 0.5
    assert log["logging_time"].tolist() == [T0 + i * dt.timedelta(minutes=1) for i in (1, 3, 5)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_request_log_has_the_local_backends_columns_and_types(logging_api, bq, logged, tmp_path):
    from lakehouse_ml.backends.local_endpoints import LocalEndpoints
    from lakehouse_ml.serving.log import RequestLog

    instances = [
        {"tenure": 3, "plan": "basic", "promo": True, "prediction": 1},  # a feature named like a log column
        {"tenure": 10.5, "plan": None, "promo": False, "prediction": 0},
    ]
    predictions = [
        {"predicted_churned": True, "predicted_churned_probs": [{"label": True, "prob": 0.75}]},
        {"predicted_churned": False, "predicted_churned_probs": [{"label": True, "prob": 0.25}]},
    ]
    # the local backend's log of one request
    local = LocalEndpoints(home=str(tmp_path), port=_free_port())
    local.create_endpoint("churn", endpoint_id="churn-ep")
    writer = RequestLog(tmp_path / "serving" / "logs")
    writer.add("churn-ep", "dm-local", "churn", "2", "req-1", list(instances[0]), instances, predictions)
    writer.flush()
    now = dt.datetime.now(dt.timezone.utc)
    local_log = local.request_log("churn-ep", now - HOUR, now + HOUR)
    # Vertex AI's log of the same request
    seed_churn(logging_api)
    bq.create_dataset(PROJECT, DATASET)
    logged.create_endpoint("churn", endpoint_id="churn-ep")
    dm = logged.deploy("churn-ep", "churn", "2", "", logging_sampling_rate=1.0)
    row = {
        "endpoint": f"projects/{DEFAULT_PROJECT_NUMBER}/locations/{REGION}/endpoints/churn-ep",
        "deployed_model_id": dm,
        "logging_time": T0,
        "request_id": 1234,
        "request_payload": [json.dumps(i) for i in instances],
        "response_payload": [json.dumps(p, separators=(",", ":")) for p in predictions],
    }
    bq.append_rows(PROJECT, DATASET, LOG_TABLE, [row], REQUEST_LOG_SCHEMA)
    vertex_log = logged.request_log("churn-ep", T0, T0 + HOUR)

    # the same columns (Vertex AI's features in name order: its instances' keys keep no order)
    assert list(vertex_log.columns) == [
        *LOG_COLUMNS[:-1],
        "feature_prediction",
        "plan",
        "promo",
        "tenure",
        "prediction",
    ]
    assert list(local_log.columns) == [
        *LOG_COLUMNS[:-1],
        "tenure",
        "plan",
        "promo",
        "feature_prediction",
        "prediction",
    ]
    for column in vertex_log.columns:
        if column == "logging_time":
            assert vertex_log[column].dt.tz is not None and local_log[column].dt.tz is not None
        else:
            assert vertex_log[column].dtype == local_log[column].dtype, column
    same = ["instance_index", "tenure", "plan", "promo", "feature_prediction", "prediction"]
    same += ["model_id", "model_version_id"]
    assert vertex_log[same].to_dict("list") == local_log[same].to_dict("list")
    assert vertex_log["plan"].tolist() == ["basic", None] and vertex_log["promo"].tolist() == [True, False]
    assert vertex_log["request_id"].tolist() == ["1234", "1234"]


def test_request_log_without_a_log_says_why(logging_api, bq, logged):
    seed_churn(logging_api)
    logged.create_endpoint("churn", endpoint_id="churn-ep")
    logged.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=0)
    with pytest.raises(EndpointError, match="must be a datetime"):
        logged.request_log("churn-ep", "yesterday", T0)
    with pytest.raises(
        EndpointError, match=r"logging is off on endpoint churn-ep.*logging_sampling_rate > 0"
    ):
        logged.request_log("churn-ep", T0, T0 + HOUR)
    assert bq.requests == [], "nothing to read in BigQuery when logging is off"
    with pytest.raises(EndpointError, match="not found.*create_endpoint"):
        logged.request_log("missing-ep", T0, T0 + HOUR)

    # logging on, but its dataset is missing: Vertex AI cannot log there (the predict still answers)
    train_churn(bq, logging_api, dataset="training")  # in another dataset: the log's own is missing
    logged.deploy("churn-ep", "churn", "3", "", traffic_percentage=100, logging_sampling_rate=1.0)
    assert logged.predict("churn-ep", [{"a": 1.0, "b": 0.0}])["predictions"]
    (refused,) = logging_api.logging_errors
    assert f"Not found: Dataset {PROJECT}:{DATASET}" in refused
    with pytest.raises(
        EndpointError, match=rf"dataset {PROJECT}\.{DATASET}, which does not exist.*Create it"
    ):
        logged.request_log("churn-ep", T0, T0 + HOUR)

    # the dataset is there, nothing logged yet: an empty log, and no query
    bq.create_dataset(PROJECT, DATASET)
    bq.clear_requests()
    empty = logged.request_log("churn-ep", T0, T0 + HOUR)
    assert empty.empty and list(empty.columns) == list(LOG_COLUMNS)
    assert (
        str(empty["logging_time"].dtype) == "datetime64[us, UTC]"
        and str(empty["instance_index"].dtype) == "int32"
    )
    assert bq.job_inserts() == []
    assert [r.path for r in bq.requests] == [  # tables.get, then datasets.get to tell the two apart
        f"/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables/{LOG_TABLE}",
        f"/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}",
    ]

    # a table that is not a request-response log
    bq.append_rows(
        PROJECT, DATASET, LOG_TABLE, [{"x": 1}], [{"name": "x", "type": "INTEGER", "mode": "NULLABLE"}]
    )
    not_a_log = "Unrecognized name: logging_time.*must be a Vertex AI request-response logging table"
    with pytest.raises(EndpointError, match=not_a_log):
        logged.request_log("churn-ep", T0, T0 + HOUR)
