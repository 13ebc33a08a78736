"""Wire-level tests of the Vertex AI registry and endpoints (gcp backend).

The real ``google-cloud-aiplatform`` clients (built from settings by :func:`build_vertex_registry`
and :func:`build_vertex_endpoints`) talk HTTP to a local test double of the Vertex AI REST API
(:mod:`lakehouse_ml_tests.fakes.vertex_api`). The tests check the exact request bodies that go over
the wire, that long-running operations are polled, the state that results, and that API errors
become the project's exceptions with messages that say what to do next.
"""

from __future__ import annotations

import threading

import pytest
from google.api_core import exceptions as google_exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials

from lakehouse_ml.backends.endpoints import EndpointError
from lakehouse_ml.backends.registry import ModelNotRegisteredError, RegistryError, VersionDeployedError
from lakehouse_ml.backends.vertex import (
    VertexEndpoints,
    VertexModelRegistry,
    build_vertex_endpoints,
    build_vertex_registry,
)
from lakehouse_ml.settings import load_settings
from lakehouse_ml_tests.fakes.vertex_api import DEFAULT_PROJECT_NUMBER, FakeVertexApi, fake_vertex_api

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
        t.name for t in threading.enumerate() if t.name.startswith("fake-vertex-api") or "process_request_thread" in t.name
    ]
    assert leftovers == [], f"the test double left threads behind: {leftovers}"


def settings_for(api: FakeVertexApi, location: str = "US"):
    return load_settings(
        {
            "LAKEHOUSE_ML_BACKEND": "gcp",
            "LAKEHOUSE_ML_GCP_PROJECT": PROJECT,
            "LAKEHOUSE_ML_GCP_DATASET": DATASET,
            "LAKEHOUSE_ML_BIGQUERY_LOCATION": location,
            "LAKEHOUSE_ML_VERTEX_API_ENDPOINT": api.url,
            "LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT": api.url,  # the double also answers BigQuery's models.get
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
            PROJECT, REGION, "churn", dataset=DATASET, bq_model="churn_model",
            aliases=["champion"] if i == 1 else [], **kwargs,
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
    assert bodies(api, "POST", rf"{V1}/models/churn@1:mergeVersionAliases") == [{"versionAliases": ["champion", "prod"]}]
    registry.merge_version_aliases("churn", "2", ["default", "-prod"])
    # '-prod' removes 'prod' from version 2 only: version 1 keeps it
    assert api.model_state(PROJECT, REGION, "churn")["aliases"] == {"default": "2", "champion": "1", "prod": "1"}
    assert bodies(api, "POST", rf"{V1}/models/churn@2:mergeVersionAliases") == [{"versionAliases": ["default", "-prod"]}]


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
    with pytest.raises(ModelNotRegisteredError, match=r"'nope' is not in Vertex AI Model Registry.*\['churn'\].*MODEL_REGISTRY='VERTEX_AI'"):
        registry.get_version("nope")
    with pytest.raises(ModelNotRegisteredError, match=r"no version or alias 'golden'.*\['1', '2'\].*\['champion', 'default'\]"):
        registry.get_version("churn", "golden")
    with pytest.raises(ModelNotRegisteredError, match="no version or alias '7'"):
        registry.merge_version_aliases("churn", "7", ["x1"])
    with pytest.raises(ModelNotRegisteredError):
        registry.list_versions("nope")


def test_delete_version_rules(api, registry, endpoints):
    seed_churn(api, versions=3)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    dm = endpoints.deploy("churn-ep", "churn", "2", "", logging_sampling_rate=0)
    with pytest.raises(VersionDeployedError, match=rf"deployed to .*endpoints/churn-ep \(deployed model {dm}\).*Undeploy"):
        registry.delete_version("churn", "champion")
    with pytest.raises(RegistryError, match="default"):
        registry.delete_version("churn", "1")
    # the double itself refuses deleting a deployed version (as Vertex AI does)
    from google.cloud.aiplatform_v1 import ModelServiceClient

    raw = ModelServiceClient(
        credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=api.url), transport="rest"
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

    endpoints.undeploy("churn-ep", dm)
    registry.delete_version("churn", "2")
    with pytest.raises(RegistryError, match="only version.*delete_model"):
        registry.delete_version("churn", "1")


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
    for call in (
        lambda: registry.register_version("churn", source="bqml://d.m", model_type="LOGISTIC_REG", artifact_dir="."),
        lambda: registry.replace_bqml_version("bqml://d.m", "churn"),
        lambda: registry.drop_bqml_model("bqml://d.m"),
    ):
        with pytest.raises(RegistryError, match="BigQuery ML registers models.*MODEL_REGISTRY='VERTEX_AI'"):
            call()
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
    assert build_vertex_endpoints(settings_for(api, "EU")).parent == f"projects/{PROJECT}/locations/europe-west4"
    assert build_vertex_endpoints(settings_for(api, "asia-northeast1")).region == "asia-northeast1"
    assert VertexModelRegistry(project=PROJECT).endpoint_url == "https://us-central1-aiplatform.googleapis.com"


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
    assert api.find_requests("GET", rf"{V1}/endpoints")[-1].query["filter"] == 'display_name="no-such-endpoint"'
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
            "bigqueryDestination": {"outputUri": f"bq://{PROJECT}.{DATASET}.request_response_logging_churn_ep"},
        }
    }
    assert bodies(api, "POST", rf"{EP}:deployModel") == [
        {
            "deployedModel": {"model": f"{PARENT}/models/churn@1", "dedicatedResources": MACHINE},
            "trafficSplit": {"0": 100},
        }
    ]
    assert len(api.operations_polled()) == 2
    info = endpoints.get_endpoint("churn-ep")
    assert info["traffic_split"] == {dm: 100}
    (deployed,) = info["deployed_models"]
    assert {k: deployed[k] for k in ("deployed_model_id", "model_id", "version_id", "traffic_percentage", "machine_type")} == {
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


def test_canary_rollout_bodies_and_final_state(api, endpoints):
    seed_churn(api, intercept=None)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    old = endpoints.deploy("churn-ep", "churn", "1", "", logging_sampling_rate=1.0)
    api.clear_requests()
    new = endpoints.deploy(
        "churn-ep", "churn", "champion", "", traffic_percentage=10, machine_type="n1-highmem-4", logging_sampling_rate=1.0
    )
    assert bodies(api, "POST", rf"{EP}:deployModel") == [
        {
            "deployedModel": {
                "model": f"{PARENT}/models/churn@champion",
                "dedicatedResources": {**MACHINE, "machineSpec": {"machineType": "n1-highmem-4"}},
            },
            "trafficSplit": {old: 90, "0": 10},
        }
    ]
    assert api.find_requests("PATCH") == [], "logging already configured: no second patch"
    assert endpoints.get_endpoint("churn-ep")["traffic_split"] == {old: 90, new: 10}

    # the double routes by the split: exactly one request in ten reaches the canary
    served = [endpoints.predict("churn-ep", [{"x": 1.0}])["deployedModelId"] for _ in range(10)]
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
    b = endpoints.deploy("churn-ep", "churn", "2", "", traffic_split={a: 30, "0": 70}, logging_sampling_rate=0)
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


def test_predict_returns_vertex_fields(api, endpoints):
    seed_churn(api, intercept=0.5, weight=2.0)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    dm = endpoints.deploy("churn-ep", "churn", "2", "", logging_sampling_rate=0)
    answer = endpoints.predict("churn", [{"a": 1, "b": 2.5}, {"a": -1, "b": 0}], parameters={"confidence": 0.5})
    assert answer["predictions"] == [{"value": 0.5 + 2.0 * 3.5}, {"value": 0.5 - 2.0}]
    assert answer["deployedModelId"] == dm
    assert answer["modelVersionId"] == "2"
    assert answer["model"].endswith("/locations/us-central1/models/churn")
    (sent,) = bodies(api, "POST", rf"{EP}:predict")
    assert sent == {"instances": [{"a": 1.0, "b": 2.5}, {"a": -1.0, "b": 0.0}], "parameters": {"confidence": 0.5}}
    with pytest.raises(EndpointError, match=r"instances\[0\].*Check the instances"):
        endpoints.predict("churn-ep", [{"a": "text"}])
    with pytest.raises(EndpointError, match="not found.*create_endpoint"):
        endpoints.predict("missing-ep", [{"a": 1}])


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
        project=PROJECT, api_endpoint=api.url, anonymous_credentials=True, operation_timeout_s=0.3, poll_interval_s=0.02
    )
    with pytest.raises(EndpointError, match=r"did not finish creating endpoint 'churn' within 0.3 s \(operation .*/operations/\d+\).*console"):
        slow.create_endpoint("churn", endpoint_id="churn-ep")
    assert len(api.operations_polled()) >= 3


def test_high_level_sdk_reads_the_double(api, endpoints):
    """The double is faithful enough for aiplatform.Endpoint (the SDK users write against)."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    seed_churn(api)
    endpoints.create_endpoint("churn", endpoint_id="churn-ep")
    dm = endpoints.deploy("churn-ep", "churn", "2", "", logging_sampling_rate=0)
    aiplatform.init(
        project=PROJECT, location=REGION, credentials=AnonymousCredentials(), api_endpoint=api.url, api_transport="rest"
    )
    try:
        sdk_endpoint = aiplatform.Endpoint("churn-ep")
        assert sdk_endpoint.traffic_split == {dm: 100}
        prediction = sdk_endpoint.predict(instances=[{"x": 1.0}])
        model = aiplatform.Model("churn", version="champion")
        assert model.version_id == "2" and "champion" in model.version_aliases
    finally:
        initializer.global_config.__init__()  # back to the SDK's defaults for the rest of the process
    assert prediction.deployed_model_id == dm and prediction.model_version_id == "2"
