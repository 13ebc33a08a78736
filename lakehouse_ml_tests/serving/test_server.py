"""The local endpoint server: Vertex AI's REST shapes, ML.PREDICT equality, the aiplatform client,
traffic split, hot swap under load, the request-response log and kill -9."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import numpy as np
import pyarrow.parquet as pq

from lakehouse_ml.serving import server
from lakehouse_ml.serving.log import read_log
from lakehouse_ml_tests.serving.conftest import artifact, free_port, instances


def _url(ep, endpoint_id, project="local", location="us-central1"):
    return f"{ep.base_url}/v1/projects/{project}/locations/{location}/endpoints/{endpoint_id}:predict"


def test_predictions_equal_ml_predict(trained, running):
    engine, _, frame = trained
    ep = running
    ep.create_endpoint("churn", endpoint_id="churn-ep")
    ep.create_endpoint("segments", endpoint_id="seg-ep")
    churn_dm = ep.deploy("churn-ep", "churn", "1", artifact(engine, "churn"))
    seg_dm = ep.deploy("seg-ep", "segments", "3", artifact(engine, "segments"))
    rows = frame.head(60)
    answer = httpx.post(_url(ep, "churn-ep", "my-project"), json={"instances": instances(rows)}).json()
    assert answer["deployedModelId"] == churn_dm
    assert answer["model"] == "projects/my-project/locations/us-central1/models/churn"
    assert answer["modelVersionId"] == "1"
    expected = engine.predict("churn", rows).to_pylist()
    # The export serving signature: the class as a STRING in a one-element list, the classes as
    # STRINGs aligned with their probabilities (docs/serving-format.md).
    for got, want in zip(answer["predictions"], expected, strict=True):
        assert set(got) == {"predicted_churned", "churned_values", "churned_probs"}
        assert got["predicted_churned"] == [str(want["predicted_churned"]).lower()]
        assert got["churned_values"] == [str(s["label"]).lower() for s in want["predicted_churned_probs"]]
        np.testing.assert_allclose(
            got["churned_probs"], [s["prob"] for s in want["predicted_churned_probs"]], rtol=1e-12
        )
    answer = ep.predict("seg-ep", instances(rows))
    assert answer["deployedModelId"] == seg_dm and answer["modelVersionId"] == "3"
    expected = engine.predict("segments", rows).to_pylist()
    # Every centroid in id order, the nearest as a one-element list.
    for got, want in zip(answer["predictions"], expected, strict=True):
        assert set(got) == {"nearest_centroid_id", "centroid_ids", "centroid_distances"}
        assert got["nearest_centroid_id"] == [want["CENTROID_ID"]]
        assert got["centroid_ids"] == [1, 2, 3, 4]
        by_id = {s["CENTROID_ID"]: s["DISTANCE"] for s in want["NEAREST_CENTROIDS_DISTANCE"]}
        np.testing.assert_allclose(
            [got["centroid_distances"][i - 1] for i in by_id], list(by_id.values()), rtol=1e-9, atol=1e-12
        )


def test_aiplatform_client_works_unchanged(trained, running):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    engine, _, frame = trained
    ep = running
    ep.create_endpoint("churn", endpoint_id="1234567890")
    dm = ep.deploy("1234567890", "churn", "2", artifact(engine, "churn"))
    aiplatform.init(
        project="my-project",
        location="us-central1",
        credentials=AnonymousCredentials(),
        api_endpoint=ep.base_url,
        api_transport="rest",
    )
    try:
        endpoint = aiplatform.Endpoint("1234567890")
        prediction = endpoint.predict(instances=instances(frame.head(3)))
    finally:
        aiplatform.init(api_endpoint=None)
    assert prediction.deployed_model_id == dm
    assert prediction.model_version_id == "2"
    assert prediction.model_resource_name == "projects/my-project/locations/us-central1/models/churn"
    want = engine.predict("churn", frame.head(3)).column("predicted_churned").to_pylist()
    assert [p["predicted_churned"] for p in prediction.predictions] == [
        ["true" if w else "false"] for w in want
    ]


def test_traffic_split_is_honoured(trained, running):
    engine, _, frame = trained
    ep = running
    ep.create_endpoint("churn", endpoint_id="split")
    a = ep.deploy("split", "churn", "1", artifact(engine, "churn"), logging_sampling_rate=0.0)
    b = ep.deploy(
        "split", "churn", "2", artifact(engine, "churn2"), traffic_percentage=20, logging_sampling_rate=0.0
    )
    assert ep.get_endpoint("split")["traffic_split"] == {a: 80, b: 20}
    n = 1500
    body = {"instances": instances(frame.head(1))}
    with httpx.Client() as client:
        served = [client.post(_url(ep, "split"), json=body).json()["deployedModelId"] for _ in range(n)]
    share = served.count(b) / n
    # binomial(1500, 0.2): sd = 0.0103; 5 sd
    assert abs(share - 0.2) < 0.052, share
    assert set(served) == {a, b}


def test_hot_swap_under_load_fails_no_request(trained, running):
    engine, _, frame = trained
    ep = running
    ep.create_endpoint("churn", endpoint_id="swap")
    old = ep.deploy("swap", "churn", "1", artifact(engine, "churn"))
    body = json.dumps({"instances": instances(frame.head(2))})
    results: list[tuple[int, str | None, str | None]] = []
    lock = threading.Lock()
    swapped = threading.Event()

    def client(k: int) -> None:
        local = []
        with httpx.Client() as c:
            for i in range(250):
                r = c.post(_url(ep, "swap"), content=body, headers={"content-type": "application/json"})
                data = r.json()
                local.append((r.status_code, data.get("deployedModelId"), data.get("modelVersionId")))
                if k == 0 and i == 80:
                    swapped.set()
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    assert swapped.wait(60)
    new = ep.deploy("swap", "churn", "2", artifact(engine, "churn2"), traffic_percentage=100)
    ep.undeploy("swap", old)
    for t in threads:
        t.join(120)
    assert len(results) == 1000
    assert all(status == 200 for status, _, _ in results)
    assert {(d, v) for _, d, v in results} <= {(old, "1"), (new, "2")}
    assert (new, "2") in {(d, v) for _, d, v in results}
    # after the swap, only the new version answers
    assert httpx.post(_url(ep, "swap"), content=body).json()["modelVersionId"] == "2"


def test_request_response_log_rows(trained, running, home):
    engine, _, frame = trained
    ep = running
    ep.create_endpoint("churn", endpoint_id="logged")
    dm = ep.deploy("logged", "churn", "1", artifact(engine, "churn"), logging_sampling_rate=1.0)
    rows = instances(frame.head(3))
    ep.predict("logged", rows)
    ep.predict("logged", rows[:1])
    deadline = time.monotonic() + 20
    table = None
    while time.monotonic() < deadline:
        table = read_log(home / "serving" / "logs", "logged")
        if table is not None and table.num_rows == 4:
            break
        time.sleep(0.1)
    assert table is not None and table.num_rows == 4
    data = table.to_pylist()
    assert {r["deployed_model_id"] for r in data} == {dm}
    assert {r["model_version_id"] for r in data} == {"1"}
    assert {r["endpoint_id"] for r in data} == {"logged"}
    assert len({r["request_id"] for r in data}) == 2
    assert [r["x1"] for r in data[:3]] == [r["x1"] for r in rows]
    assert json.loads(data[0]["prediction"])["predicted_churned"] in (["true"], ["false"])
    assert table.schema.field("logging_time").type.tz == "UTC"


def test_log_sampling_rate_zero_logs_nothing(trained, running, home):
    engine, _, frame = trained
    ep = running
    ep.create_endpoint("churn", endpoint_id="quiet")
    ep.deploy("quiet", "churn", "1", artifact(engine, "churn"), logging_sampling_rate=0.0)
    for _ in range(5):
        ep.predict("quiet", instances(frame.head(1)))
    time.sleep(0.5)
    assert read_log(home / "serving" / "logs", "quiet") is None


def test_kill_9_leaves_no_corrupt_log_file(trained, endpoints, home):
    engine, _, frame = trained
    ep = endpoints
    ep.create_endpoint("churn", endpoint_id="crash")
    ep.deploy("crash", "churn", "1", artifact(engine, "churn"))
    process = server.start_background(home, ep.host, ep.port, extra_args=["--log-flush-seconds", "0.02"])
    try:
        body = {"instances": instances(frame.head(20))}
        stop = threading.Event()

        def hammer():
            with httpx.Client() as c:
                while not stop.is_set():
                    try:
                        c.post(_url(ep, "crash"), json=body, timeout=5)
                    except httpx.HTTPError:
                        return

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    files = sorted((home / "serving" / "logs" / "crash").glob("*.parquet"))
    files = [f for f in files if not f.name.startswith(".")]
    assert files, "the server wrote no batch before the kill"
    for f in files:
        assert pq.read_table(f).num_rows > 0
    server.pidfile(home).unlink(missing_ok=True)


def test_background_server_start_and_stop(trained, home):
    port = free_port()
    url = server.ensure_server(home, "127.0.0.1", port)
    try:
        info = server.health("127.0.0.1", port)
        assert info["status"] == "ok"
        assert json.loads(server.pidfile(home).read_text())["pid"] == info["pid"]
        assert server.ensure_server(home, "127.0.0.1", port) == url  # answers: no second process
    finally:
        assert server.stop_server(home)
    assert server.health("127.0.0.1", port) is None
    assert not server.pidfile(home).exists()
    assert not server.stop_server(home)
