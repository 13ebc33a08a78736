"""Served predictions have the shape Vertex AI gives BigQuery ML models (the export serving
signature): the golden fixtures (real responses and the "Export models" page's samples, each
citing its source in ``lakehouse_ml_tests/golden/``) parse with the one parser, and the local
endpoint server answers every model type the engine trains in exactly that shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from lakehouse_ml.backends.local_endpoints import LocalEndpoints
from lakehouse_ml.bigquery import served
from lakehouse_ml.engine.engine import BqmlEngine
from lakehouse_ml.serving.app import ServingApp

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
URL = "/v1/projects/p/locations/us-central1/endpoints/{}:predict"


def golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text())


def skeleton(value):
    """The JSON shape of a value: object keys, list element kinds, scalar kinds (numbers are one
    kind: JSON has one, and a protobuf Value carries every number as a double)."""
    if isinstance(value, dict):
        return {k: skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return ("list", tuple(sorted({json.dumps(skeleton(v), sort_keys=True) for v in value})))
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def renamed(sample: dict, label: str) -> dict:
    """A page sample keyed by the label column (the page writes the placeholder 'label')."""
    out = {}
    for key, value in sample.items():
        out[key.replace("predicted_label", f"predicted_{label}").replace("label_", f"{label}_")] = value
    return out


# -- the golden fixtures parse -----------------------------------------------------------------------


def test_real_logistic_reg_registry_response_parses():
    fixture = golden("logistic_reg_registry_penguins.json")
    fmt = served.PredictionFormat(fixture["model_type"], fixture["label"], fixture["label_type"])
    (prediction,) = fixture["response"]["predictions"]
    parsed = fmt.parse(prediction)
    assert parsed.predicted == "Adelie Penguin (Pygoscelis adeliae)"
    # The classes are not sorted: a probability is read by its class, never by position.
    assert parsed.probability("Adelie Penguin (Pygoscelis adeliae)") == pytest.approx(0.9958568976496748)
    assert parsed.probability("Gentoo penguin (Pygoscelis papua)") == pytest.approx(8.708736467696576e-06)
    assert fmt.problems(prediction) == []


def test_real_int64_label_comes_back_as_strings_and_parses_to_integers():
    fixture = golden("logistic_reg_int64_label_export.json")
    fmt = served.PredictionFormat(fixture["model_type"], fixture["label"], fixture["label_type"])
    parsed = fmt.parse(fixture["response"]["predictions"][0])
    assert parsed.predicted == 0 and isinstance(parsed.predicted, int)
    assert parsed.probability(1) == pytest.approx(0.18314189215181109)
    assert parsed.probability(0) == pytest.approx(0.81685810784818891)
    # The text stays text when the label's type is not given.
    assert (
        served.PredictionFormat("LOGISTIC_REG", "Class")
        .parse(fixture["response"]["predictions"][0])
        .predicted
        == "0"
    )


def test_real_kmeans_response_parses_with_every_centroid_in_id_order():
    fixture = golden("kmeans_export.json")
    fmt = served.PredictionFormat("KMEANS")
    prediction = fixture["response"]["predictions"][0]
    parsed = fmt.parse(prediction)
    assert parsed.predicted == 3 and parsed.nearest_distance == pytest.approx(14.73747037975442)
    assert sorted(parsed.distances) == [1, 2, 3, 4]
    assert fmt.problems(prediction, num_clusters=4) == []
    # Through the aiplatform client every number is a double: 3.0 parses the same.
    as_doubles = {k: [float(x) for x in v] for k, v in prediction.items()}
    assert fmt.parse(as_doubles) == parsed


@pytest.mark.parametrize(
    "name", sorted(p.name for p in GOLDEN.glob("*.json") if "response" in json.loads(p.read_text()))
)
def test_every_real_response_fixture_has_the_documented_shape(name):
    """Every captured response (these, and what `lakehouse-ml gcp-check` saves and a user copies
    here) parses, names its source, and has no problem."""
    fixture = golden(name)
    assert fixture["source"]
    fmt = served.PredictionFormat(fixture["model_type"], fixture["label"], fixture["label_type"])
    for prediction in fixture["response"]["predictions"]:
        assert fmt.problems(prediction) == [], prediction


@pytest.mark.parametrize("model_type", sorted(golden("export_page_samples.json")["samples"]))
def test_the_export_page_samples_parse(model_type):
    for sample in golden("export_page_samples.json")["samples"][model_type]:
        fmt = served.PredictionFormat(model_type, "label")
        assert fmt.problems(sample) == [], sample


@pytest.mark.parametrize(
    ("prediction", "problem"),
    [
        (
            {"centroid_ids": [1, 2], "centroid_distances": [0.5, 0.2], "nearest_centroid_id": [1]},
            "not the nearest",
        ),
        ({"centroid_ids": [2, 1], "centroid_distances": [0.5, 0.2], "nearest_centroid_id": [1]}, "id order"),
        ({"centroid_ids": [1, 2], "centroid_distances": [0.5], "nearest_centroid_id": [1]}, "one length"),
        ({"centroid_ids": [1, 2], "centroid_distances": [0.5, 0.7]}, "no nearest_centroid_id"),
        (
            {"centroid_ids": [1, 2], "centroid_distances": [0.5, 0.7], "nearest_centroid_id": [1, 2]},
            "one-element list",
        ),
    ],
)
def test_a_wrong_kmeans_prediction_is_named(prediction, problem):
    problems = served.PredictionFormat("KMEANS").problems(prediction)
    assert problems and problem in problems[0], problems


def test_a_wrong_classifier_prediction_is_named():
    fmt = served.PredictionFormat("LOGISTIC_REG", "churned", "BOOL")
    good = {"predicted_churned": ["true"], "churned_values": ["true", "false"], "churned_probs": [0.7, 0.3]}
    assert fmt.problems(good) == [] and fmt.parse(good).predicted is True
    assert "not a distribution" in fmt.problems(good | {"churned_probs": [0.7, 0.7]})[0]
    assert (
        "not one of churned_values"
        in served.PredictionFormat("LOGISTIC_REG", "churned").problems(
            good | {"predicted_churned": ["maybe"]}
        )[0]
    )
    assert "'true' or 'false'" in fmt.problems(good | {"churned_values": ["yes", "no"]})[0]
    assert "no predicted_churned" in fmt.problems({"churned_values": [], "churned_probs": []})[0]


# -- the local endpoint server answers in exactly that shape -----------------------------------------


def _training(n: int = 300, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    channel = rng.choice(["web", "app", "store"], n)
    member = rng.random(n) < 0.5
    z = 1.2 * x + np.where(channel == "app", 0.8, 0.0) + np.where(member, 0.5, -0.5)
    frame = pd.DataFrame(
        {
            "x": x,
            "visits": rng.integers(0, 30, n).astype("int64"),
            "channel": channel,
            "member": member,
            "spend": 3 * x + rng.normal(size=n),
            "churned": rng.random(n) < 1 / (1 + np.exp(-z)),
        }
    )
    frame.loc[::13, "x"] = np.nan
    frame.loc[::17, "channel"] = None
    return frame


MODELS = {
    "LOGISTIC_REG": ("churned", {"input_label_cols": ["churned"]}),
    "BOOSTED_TREE_CLASSIFIER": ("churned", {"input_label_cols": ["churned"], "max_iterations": 5}),
    "RANDOM_FOREST_CLASSIFIER": ("churned", {"input_label_cols": ["churned"], "num_parallel_tree": 5}),
    "LINEAR_REG": ("spend", {"input_label_cols": ["spend"]}),
    "BOOSTED_TREE_REGRESSOR": ("spend", {"input_label_cols": ["spend"], "max_iterations": 5}),
    "RANDOM_FOREST_REGRESSOR": ("spend", {"input_label_cols": ["spend"], "num_parallel_tree": 5}),
    "KMEANS": (None, {"num_clusters": 3}),
}
FEATURES = ["x", "visits", "channel", "member"]


@pytest.fixture(scope="module")
def every_type(tmp_path_factory):
    """The local server with one deployed model of every served type (an endpoint each)."""
    root = tmp_path_factory.mktemp("types")
    engine = BqmlEngine(root / "models")
    frame = _training()
    home = root / "home"
    endpoints = LocalEndpoints(home=str(home), port=1)  # no server needed: the app runs in process
    for model_type, (label, options) in MODELS.items():
        name = model_type.lower()
        columns = FEATURES + ([label] if label else [])
        engine.create_model(name, {"model_type": model_type, **options}, frame[columns])
        endpoints.create_endpoint(name, endpoint_id=name.replace("_", "-"))
        endpoints.deploy(
            name.replace("_", "-"), name, "1", str(engine.store.version_dir(name)), logging_sampling_rate=0.0
        )
    rows = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in frame[FEATURES]
        .head(8)
        .astype(object)
        .where(frame[FEATURES].head(8).notna(), None)
        .to_dict("records")
    ]
    rows = [r | {"member": bool(r["member"]), "visits": int(r["visits"])} for r in rows]
    with TestClient(ServingApp(home)) as client:
        yield engine, client, rows


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_the_local_server_answers_in_the_export_shape(every_type, model_type):
    engine, client, rows = every_type
    label, _ = MODELS[model_type]
    name = model_type.lower()
    answer = client.post(URL.format(name.replace("_", "-")), json={"instances": rows})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == len(rows)
    page = [
        renamed(s, label) if label else s for s in golden("export_page_samples.json")["samples"][model_type]
    ]
    fmt = served.PredictionFormat(model_type, label, "BOOL" if label == "churned" else None)
    for prediction in predictions:
        # Field by field the documented shape: the same keys, the same nesting and kinds.
        assert skeleton(prediction) == skeleton(page[0]), (prediction, page[0])
        assert fmt.problems(prediction, num_clusters=3 if label is None else None) == []
    # And ML.PREDICT's values.
    expected = engine.predict(name, pd.DataFrame(rows)).to_pylist()
    for prediction, want in zip(predictions, expected, strict=True):
        parsed = fmt.parse(prediction)
        if model_type == "KMEANS":
            assert parsed.predicted == want["CENTROID_ID"]
            for near in want["NEAREST_CENTROIDS_DISTANCE"]:
                assert parsed.distances[near["CENTROID_ID"]] == pytest.approx(
                    near["DISTANCE"], rel=1e-9, abs=1e-12
                )
        elif label == "churned":
            assert parsed.predicted == want["predicted_churned"]
            for p in want["predicted_churned_probs"]:
                assert parsed.probability(p["label"]) == pytest.approx(p["prob"], rel=1e-9, abs=1e-12)
        else:
            assert parsed.predicted == pytest.approx(want["predicted_spend"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in GOLDEN.glob("*.json") if "response" in json.loads(p.read_text()))
)
def test_every_real_response_has_the_shape_the_local_server_answers(every_type, name):
    """Each captured response (these, and what a user copies here from `lakehouse-ml gcp-check`)
    has, field by field, the JSON shape the local server answers for that model type: a capture
    that differs fails here."""
    _, client, rows = every_type
    fixture = golden(name)
    model_type = fixture["model_type"]
    local_label = MODELS[model_type][0]
    local = client.post(
        URL.format(model_type.lower().replace("_", "-")), json={"instances": rows[:1]}
    ).json()["predictions"][0]

    def keyed(prediction: dict, label: str | None) -> dict:
        return {k.replace(label, "L") if label else k: v for k, v in prediction.items()}

    for prediction in fixture["response"]["predictions"]:
        assert skeleton(keyed(prediction, fixture["label"])) == skeleton(keyed(local, local_label)), (
            name,
            prediction,
            local,
        )


def test_instances_encode_nulls_for_the_model():
    import pyarrow as pa

    table = pa.table(
        {
            "n": pa.array([1.5, None], pa.float64()),
            "i": pa.array([None, 2], pa.int64()),
            "s": pa.array(["a", None]),
            "b": pa.array([True, False]),
        }
    )
    assert served.instances(table) == [
        {"n": 1.5, "i": None, "s": "a", "b": True},
        {"n": None, "i": 2, "s": None, "b": False},
    ]
    assert served.instances(table, transform=True) == [
        {"n": 1.5, "i": 1234567890000000000, "s": "a", "b": True},
        {"n": 123456789.0e10, "i": 2, "s": " __MISSING__ ", "b": False},
    ]
    with pytest.raises(
        served.ServedFormatError, match="BOOL input of a model with a TRANSFORM clause has no NULL sentinel"
    ):
        served.instances(pa.table({"b": pa.array([None, True])}), transform=True)


# -- the Vertex AI double answers the same, for every type ------------------------------------------


def test_the_vertex_double_answers_every_type_like_the_local_server(every_type, tmp_path):
    """The same models trained on BigQuery (the double) and registered by BigQuery ML, deployed on
    the Vertex AI double: each answer has the documented shape and equals the local server's,
    field by field. The double builds its answers from ML.PREDICT with its own code."""
    from lakehouse_ml.backends.gcp_warehouse import build_gcp_warehouse
    from lakehouse_ml.backends.vertex import build_vertex_endpoints
    from lakehouse_ml_tests.fakes import fake_bigquery_api
    from lakehouse_ml_tests.fakes.vertex_api import fake_vertex_api
    from lakehouse_ml_tests.local_chain import local_settings

    _, client, rows = every_type
    with fake_bigquery_api() as bq, fake_vertex_api(bigquery=bq) as vertex:
        settings = local_settings(
            tmp_path,
            backend="gcp",
            gcp_project="lakehouse-test",
            gcp_anonymous_credentials="true",
            bigquery_api_endpoint=bq.url,
            vertex_api_endpoint=vertex.url,
        )
        warehouse, endpoints = build_gcp_warehouse(settings), build_vertex_endpoints(settings)
        warehouse.load_dataframe(_training(), "training")
        _compare_transform_models(warehouse, endpoints, tmp_path)
        for model_type, (label, options) in MODELS.items():
            name = model_type.lower()
            columns = ", ".join(FEATURES + ([label] if label else []))
            written = ", ".join(
                f"{k} = {json.dumps(v).replace(chr(34), chr(39))}" for k, v in options.items()
            )
            warehouse.execute(
                f"CREATE MODEL {name} OPTIONS(model_type = '{model_type}', {written}, model_registry = 'VERTEX_AI', "
                f"vertex_ai_model_id = '{name}') AS SELECT {columns} FROM training"
            )
            endpoints.create_endpoint(name, endpoint_id=name.replace("_", "-"))
            endpoints.deploy(name.replace("_", "-"), name, "1", "", logging_sampling_rate=0)
            answer = endpoints.predict(name.replace("_", "-"), rows)["predictions"]
            local = client.post(URL.format(name.replace("_", "-")), json={"instances": rows}).json()[
                "predictions"
            ]
            page = [
                renamed(s, label) if label else s
                for s in golden("export_page_samples.json")["samples"][model_type]
            ]
            for remote, here in zip(answer, local, strict=True):
                assert skeleton(remote) == skeleton(page[0]), (model_type, remote)
                assert set(remote) == set(here)
                for key, value in here.items():
                    if all(isinstance(v, str) for v in value):
                        assert remote[key] == value, (model_type, key)
                    else:
                        assert remote[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (model_type, key)


TRANSFORM_MODELS = {
    "KMEANS": "CREATE MODEL {name} TRANSFORM(LN(1 + ABS(x)) AS log_x, "
    "visits, IFNULL(channel, 'none') AS channel, member) "
    "OPTIONS(model_type = 'KMEANS', num_clusters = 3{registry}) AS SELECT x, visits, channel, member FROM training",
    "LOGISTIC_REG": "CREATE MODEL {name} TRANSFORM(LN(1 + ABS(x)) AS log_x, visits, channel, member, churned) "
    "OPTIONS(model_type = 'LOGISTIC_REG', input_label_cols = ['churned']{registry}) "
    "AS SELECT x, visits, channel, member, churned FROM training",
}


def _compare_transform_models(gcp_warehouse, gcp_endpoints, tmp_path) -> None:
    """Models with a TRANSFORM clause, instances with NULLs as the documented sentinels: the double
    and the local server answer alike, field by field."""
    import pyarrow as pa

    from lakehouse_ml.backends.local_warehouse import LocalWarehouse

    local = LocalWarehouse.at(tmp_path / "local" / "warehouse.duckdb")
    local.load_dataframe(_training(), "training")
    home = tmp_path / "local"
    endpoints = LocalEndpoints(home=str(home), port=1)
    table = pa.Table.from_pandas(_training()[FEATURES].head(12), preserve_index=False)
    rows = served.instances(table, transform=True)
    assert any(v == served.NULL_FLOAT64 for r in rows for v in r.values())
    assert any(v == served.NULL_STRING for r in rows for v in r.values())
    for model_type, sql in TRANSFORM_MODELS.items():
        name = f"{model_type.lower()}_transform"
        local.execute(sql.format(name=name, registry=""))
        gcp_warehouse.execute(
            sql.format(name=name, registry=f", model_registry = 'VERTEX_AI', vertex_ai_model_id = '{name}'")
        )
        endpoint = name.replace("_", "-")
        endpoints.create_endpoint(name, endpoint_id=endpoint)
        endpoints.deploy(
            endpoint, name, "1", str(local.bqml_engine().store.version_dir(name)), logging_sampling_rate=0.0
        )
        gcp_endpoints.create_endpoint(name, endpoint_id=endpoint)
        gcp_endpoints.deploy(endpoint, name, "1", "", logging_sampling_rate=0)
        remote = gcp_endpoints.predict(endpoint, rows)["predictions"]
        with TestClient(ServingApp(home)) as client:
            here = client.post(URL.format(endpoint), json={"instances": rows}).json()["predictions"]
            # JSON null is refused by both: a TRANSFORM model's NULL is its sentinel
            refused = client.post(URL.format(endpoint), json={"instances": [rows[0] | {"x": None}]})
        assert refused.status_code == 400 and "sentinel" in refused.json()["error"]["message"]
        with pytest.raises(Exception, match="null is not a value"):
            gcp_endpoints.predict(endpoint, [rows[0] | {"x": None}])
        for a, b in zip(remote, here, strict=True):
            assert set(a) == set(b) and skeleton(a) == skeleton(b)
            for key, value in b.items():
                if all(isinstance(v, str) for v in value):
                    assert a[key] == value, (model_type, key)
                else:
                    assert a[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (model_type, key)
