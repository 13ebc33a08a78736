"""Each port's contract, run with the same assertions against the local implementation and the
gcp one (the real Google clients against the HTTP doubles in lakehouse_ml_tests/fakes/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.backends.gcp_warehouse import build_gcp_warehouse
from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.backends.registry import ModelRegistry
from lakehouse_ml.backends.vertex import build_vertex_registry
from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.core.settings import load_settings
from lakehouse_ml_tests.fakes.bigquery_api import fake_bigquery_api
from lakehouse_ml_tests.fakes.vertex_api import fake_vertex_api

PROJECT = "lakehouse-test"
DATASET = "lakehouse_ml"


@dataclass
class Backend:
    name: str
    warehouse: Warehouse
    registry: ModelRegistry


@pytest.fixture(params=["local", "gcp"])
def backend(request, tmp_path) -> Iterator[Backend]:
    if request.param == "local":
        warehouse = LocalWarehouse.at(tmp_path / "warehouse.duckdb")
        yield Backend("local", warehouse, warehouse.model_registry())
        return
    with fake_bigquery_api() as bq, fake_vertex_api(bigquery=bq) as vertex:
        settings = load_settings(
            {
                "LAKEHOUSE_ML_BACKEND": "gcp",
                "LAKEHOUSE_ML_GCP_PROJECT": PROJECT,
                "LAKEHOUSE_ML_GCP_DATASET": DATASET,
                "LAKEHOUSE_ML_BIGQUERY_LOCATION": "US",
                "LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT": bq.url,
                "LAKEHOUSE_ML_VERTEX_API_ENDPOINT": vertex.url,
                "LAKEHOUSE_ML_MONITORING_API_ENDPOINT": vertex.url,
                "LAKEHOUSE_ML_GCP_ANONYMOUS_CREDENTIALS": "true",
            }
        )
        yield Backend("gcp", build_gcp_warehouse(settings), build_vertex_registry(settings))


def labelled_rows(n: int = 240, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    frame["y"] = frame["a"] + 0.5 * rng.normal(size=n) > 0
    return frame
