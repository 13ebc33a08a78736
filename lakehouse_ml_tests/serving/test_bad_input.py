"""Bad input gets a 4xx in Vertex AI's error shape naming the problem, never a 5xx; auth, health
and OpenAPI (the ASGI app in process)."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from lakehouse_ml.backends.local_endpoints import LocalEndpoints
from lakehouse_ml.core.errors import EndpointError
from lakehouse_ml.serving.app import MAX_INSTANCES, MAX_PAYLOAD_BYTES, ServingApp
from lakehouse_ml_tests.serving.conftest import artifact, instances

URL = "/v1/projects/p/locations/us-central1/endpoints/{}:predict"


@pytest.fixture
def client(trained, home):
    engine, _, frame = trained
    ep = LocalEndpoints(home=str(home), port=1)  # no server answers there
    ep.create_endpoint("churn", endpoint_id="churn")
    ep.create_endpoint("empty", endpoint_id="empty")
    ep.deploy("churn", "churn", "1", artifact(engine, "churn"), logging_sampling_rate=0.0)
    with TestClient(ServingApp(home)) as c:
        c.good = instances(frame.head(2))
        yield c


def _error(response, code, status="INVALID_ARGUMENT", *words):
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["status"] == status
    for word in words:
        assert word.lower() in body["error"]["message"].lower(), body["error"]["message"]


def test_good_request(client):
    r = client.post(URL.format("churn"), json={"instances": client.good})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


def test_malformed_json(client):
    _error(
        client.post(URL.format("churn"), content=b'{"instances": [{"x1": 1,'),
        400,
        "INVALID_ARGUMENT",
        "invalid json",
    )


def test_nan_literal_is_malformed_json(client):
    _error(
        client.post(URL.format("churn"), content=b'{"instances": [{"x1": NaN}]}'),
        400,
        "INVALID_ARGUMENT",
        "json",
    )


def test_missing_instances(client):
    _error(
        client.post(URL.format("churn"), json={"rows": client.good}), 400, "INVALID_ARGUMENT", '"instances"'
    )


def test_instances_not_a_list(client):
    _error(client.post(URL.format("churn"), json={"instances": {"x1": 1}}), 400, "INVALID_ARGUMENT", "array")


def test_missing_feature(client):
    inst = dict(client.good[0])
    del inst["x2"]
    _error(
        client.post(URL.format("churn"), json={"instances": [inst]}), 400, "INVALID_ARGUMENT", "missing", "x2"
    )


def test_extra_feature(client):
    inst = {**client.good[0], "shoe_size": 44}
    _error(
        client.post(URL.format("churn"), json={"instances": [inst]}),
        400,
        "INVALID_ARGUMENT",
        "unknown",
        "shoe_size",
    )


def test_wrong_type_numeric(client):
    inst = {**client.good[0], "x1": "high"}
    _error(
        client.post(URL.format("churn"), json={"instances": [inst]}),
        400,
        "INVALID_ARGUMENT",
        "instances[0].x1",
        "number",
    )


def test_wrong_type_categorical(client):
    inst = {**client.good[0], "channel": 3}
    _error(
        client.post(URL.format("churn"), json={"instances": [client.good[1], inst]}),
        400,
        "INVALID_ARGUMENT",
        "instances[1].channel",
        "string",
    )


def test_instance_not_an_object(client):
    _error(
        client.post(URL.format("churn"), json={"instances": [[1, 2, "web", True]]}),
        400,
        "INVALID_ARGUMENT",
        "object",
    )


def test_too_many_instances(client):
    body = {"instances": [client.good[0]] * (MAX_INSTANCES + 1)}
    _error(client.post(URL.format("churn"), json=body), 400, "INVALID_ARGUMENT", "too many instances")


def test_payload_over_limit(client):
    body = json.dumps({"instances": [{"x1": 1.0, "x2": 1.0, "channel": "w" * 1000, "member": True}] * 1600})
    assert len(body) > MAX_PAYLOAD_BYTES
    _error(client.post(URL.format("churn"), content=body), 400, "INVALID_ARGUMENT", "payload size exceeds")


def test_unknown_endpoint(client):
    _error(
        client.post(URL.format("nope"), json={"instances": client.good}),
        404,
        "NOT_FOUND",
        "nope",
        "not found",
    )


def test_endpoint_with_nothing_deployed(client):
    _error(
        client.post(URL.format("empty"), json={"instances": client.good}),
        400,
        "FAILED_PRECONDITION",
        "no deployed model",
    )


def test_bad_parameters(client):
    _error(
        client.post(URL.format("churn"), json={"instances": client.good, "parameters": {"threshold": 7}}),
        400,
        "INVALID_ARGUMENT",
        "threshold",
    )


def test_threshold_parameter(client):
    r = client.post(URL.format("churn"), json={"instances": client.good, "parameters": {"threshold": 1.0}})
    # A BOOL class is served as BigQuery casts it to STRING, in a one-element list.
    assert [p["predicted_churned"] for p in r.json()["predictions"]] == [["false"], ["false"]]


def test_unknown_route_and_method(client):
    _error(client.get("/v2/whatever"), 404, "NOT_FOUND")
    assert client.get(URL.format("churn")).status_code == 405


def test_health_and_openapi(client):
    assert client.get("/health").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict" in spec["paths"]


def test_bearer_token(trained, home):
    engine, _, frame = trained
    ep = LocalEndpoints(home=str(home), port=1)
    ep.create_endpoint("churn", endpoint_id="churn")
    ep.deploy("churn", "churn", "1", artifact(engine, "churn"), logging_sampling_rate=0.0)
    with TestClient(ServingApp(home, token="s3cret")) as c:
        body = {"instances": instances(frame.head(1))}
        _error(c.post(URL.format("churn"), json=body), 401, "UNAUTHENTICATED", "bearer")
        _error(
            c.post(URL.format("churn"), json=body, headers={"Authorization": "Bearer wrong"}),
            401,
            "UNAUTHENTICATED",
        )
        assert (
            c.post(URL.format("churn"), json=body, headers={"Authorization": "Bearer s3cret"}).status_code
            == 200
        )
        assert c.get("/health").status_code == 200


def test_deploy_refuses_unservable_model(tmp_path, home):
    folder = tmp_path / "arima"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"model_type": "ARIMA_PLUS"}))
    ep = LocalEndpoints(home=str(home), port=1)
    ep.create_endpoint("ts", endpoint_id="ts")
    with pytest.raises(EndpointError, match="ARIMA_PLUS cannot be deployed"):
        ep.deploy("ts", "sales", "1", str(folder))
    assert ep.get_endpoint("ts")["deployed_models"] == []


def test_traffic_bookkeeping(trained, home):
    engine, _, _ = trained
    ep = LocalEndpoints(home=str(home), port=1)
    ep.create_endpoint("c", endpoint_id="c")
    a = ep.deploy("c", "churn", "1", artifact(engine, "churn"))
    assert ep.get_endpoint("c")["traffic_split"] == {a: 100}
    b = ep.deploy("c", "churn", "2", artifact(engine, "churn2"), traffic_percentage=10)
    assert ep.get_endpoint("c")["traffic_split"] == {a: 90, b: 10}
    ep.set_traffic_split("c", {a: 0, b: 100})
    assert ep.get_endpoint("c")["traffic_split"] == {a: 0, b: 100}
    with pytest.raises(EndpointError, match="sum to 100"):
        ep.set_traffic_split("c", {a: 50, b: 20})
    ep.undeploy("c", b)
    assert ep.get_endpoint("c")["traffic_split"] == {a: 100}
    import sqlite3

    with sqlite3.connect(ep.db_path) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(deployed_models)")]
    assert cols == [
        "endpoint_id",
        "deployed_model_id",
        "model_id",
        "version_id",
        "traffic_percentage",
        "create_time",
    ]


def test_cli_serve_stop_without_server(home, capsys):
    from lakehouse_ml.cli import main

    assert main(["--home", str(home), "serve", "--stop"]) == 0
    assert "No local endpoint server" in capsys.readouterr().err
