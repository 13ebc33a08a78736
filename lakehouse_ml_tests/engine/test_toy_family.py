"""A model type is one module: the toy family of ``toy_family.py`` (registered by importing it,
no other file names it) is trained by CREATE MODEL, applied by ML.PREDICT and ML.EVALUATE in
SQL on the local warehouse, and served by the local endpoint server, in process and in the
server process (which loads it through LAKEHOUSE_ML_MODEL_FAMILIES)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from lakehouse_ml.backends.local_endpoints import LocalEndpoints
from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.bigquery import model_types, served
from lakehouse_ml.bigquery.metrics import REGRESSION_COLUMNS
from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine.engine import BqmlEngine
from lakehouse_ml.engine.models import FAMILIES, FAMILIES_ENV, load_families
from lakehouse_ml.serving import server
from lakehouse_ml.serving.app import ServingApp
from lakehouse_ml_tests.engine import toy_family
from lakehouse_ml_tests.local_chain import free_port, stop_server

URL = "/v1/projects/p/locations/us-central1/endpoints/{}:predict"
TOY = toy_family.MODEL_TYPE


def _rows(n: int = 300, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    city = rng.choice(["paris", "lyon", "nice"], n)
    plan = rng.choice(["a", "b"], n)
    base = {"paris": 10.0, "lyon": 20.0, "nice": 30.0}
    spend = np.array([base[c] for c in city]) + np.where(plan == "b", 5.0, 0.0) + rng.normal(0, 0.1, n)
    return pd.DataFrame({"city": city, "plan": plan, "visits": rng.integers(0, 9, n), "spend": spend})


@pytest.fixture
def warehouse(tmp_path) -> LocalWarehouse:
    wh = LocalWarehouse.at(tmp_path / "warehouse.duckdb")
    wh.load_dataframe(_rows(), "sales")
    return wh


def _create(wh: LocalWarehouse, name: str = "toy", options: str = "") -> None:
    wh.execute(
        f"CREATE OR REPLACE MODEL {name} OPTIONS(model_type='{TOY}', input_label_cols=['spend']{options}) "
        "AS SELECT city, plan, visits, spend FROM sales"
    )


def test_the_family_is_registered_in_the_engine_and_the_bigquery_catalog():
    assert FAMILIES[TOY] is toy_family.FAMILY
    assert model_types.kind_of(TOY) is model_types.Kind.REGRESSOR
    assert TOY in served.REGRESSOR_TYPES and TOY in served.SERVED_MODEL_TYPES
    assert served.PredictionFormat(TOY, "spend").fields == ["predicted_spend"]


def test_trained_predicted_and_evaluated_in_sql(warehouse):
    _create(warehouse)
    predicted = warehouse.query_arrow(
        "SELECT city, plan, predicted_spend FROM ML.PREDICT(MODEL toy, "
        "(SELECT 'lyon' AS city, 'b' AS plan, 3 AS visits UNION ALL "
        "SELECT 'rome' AS city, 'a' AS plan, 1 AS visits)) ORDER BY city"
    ).to_pylist()
    assert predicted[0]["city"] == "lyon" and predicted[0]["predicted_spend"] == pytest.approx(25.0, abs=0.2)
    # an unseen combination gets the training mean
    train = _rows()
    assert predicted[1]["predicted_spend"] == pytest.approx(train["spend"].mean(), abs=1.0)
    metrics = warehouse.query_arrow("SELECT * FROM ML.EVALUATE(MODEL toy)").to_pylist()[0]
    assert list(metrics) == list(REGRESSION_COLUMNS)
    assert metrics["r2_score"] > 0.99
    on_rows = warehouse.query_arrow("SELECT r2_score FROM ML.EVALUATE(MODEL toy, TABLE sales)").to_pylist()
    assert on_rows[0]["r2_score"] > 0.99


def test_the_option_has_a_default_and_a_range(warehouse):
    _create(warehouse)
    engine = BqmlEngine(warehouse.models_path())
    assert engine.model_metadata("toy")["options"]["smoothing"] == 0.0
    _create(warehouse, "toy_smooth", ", smoothing=50")
    assert engine.model_metadata("toy_smooth")["options"]["smoothing"] == 50.0
    with pytest.raises(BqmlError) as err:
        _create(warehouse, "toy_bad", ", smoothing=500")
    message = str(err.value)
    assert "SMOOTHING" in message and "[0.0, 100.0]" in message and "500" in message
    with pytest.raises(BqmlError, match=r"Unknown option\(s\) L2_REG for MODEL_TYPE TOY_MEAN_REGRESSOR"):
        _create(warehouse, "toy_bad", ", l2_reg=1.0")


def _deploy(warehouse: LocalWarehouse, home, port: int = 1) -> LocalEndpoints:
    _create(warehouse)
    ep = LocalEndpoints(home=str(home), port=port)
    ep.create_endpoint("toy", endpoint_id="toy")
    artifact = str(BqmlEngine(warehouse.models_path()).store.version_dir("toy"))
    ep.deploy("toy", "toy", "1", artifact, logging_sampling_rate=0.0)
    return ep


INSTANCES = [{"city": "nice", "plan": "a", "visits": 2}, {"city": "paris", "plan": "b", "visits": None}]


def test_served_in_process(warehouse, tmp_path):
    _deploy(warehouse, tmp_path / "home")
    with TestClient(ServingApp(tmp_path / "home")) as client:
        r = client.post(URL.format("toy"), json={"instances": INSTANCES})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    fmt = served.PredictionFormat(TOY, "spend")
    values = [fmt.parse(p).predicted for p in predictions]
    assert values == pytest.approx([30.0, 15.0], abs=0.2)
    assert all(not fmt.problems(p) for p in predictions)


def test_served_by_the_server_process(warehouse, tmp_path, monkeypatch):
    home = tmp_path / "home"
    ep = _deploy(warehouse, home, port=free_port())
    # The server process imports the family module named by LAKEHOUSE_ML_MODEL_FAMILIES.
    monkeypatch.setenv(FAMILIES_ENV, toy_family.__name__)
    root = str(Path(toy_family.__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    process = server.start_background(home, ep.host, ep.port, ep.token)
    try:
        predictions = ep.predict("toy", INSTANCES)["predictions"]
    finally:
        stop_server(process)
    values = [served.PredictionFormat(TOY, "spend").parse(p).predicted for p in predictions]
    assert values == pytest.approx([30.0, 15.0], abs=0.2)


def test_a_family_module_that_cannot_be_imported_is_named():
    with pytest.raises(ImportError, match="no_such_family_module"):
        load_families("no_such_family_module")
