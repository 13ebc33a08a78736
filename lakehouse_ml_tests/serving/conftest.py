"""Fixtures: trained engine models, local endpoints on a temporary home, servers on free ports
that are always stopped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.backends.local_endpoints import LocalEndpoints
from lakehouse_ml.engine.engine import BqmlEngine
from lakehouse_ml.serving import server
from lakehouse_ml_tests.local_chain import free_port, stop_server


def training_frame(n: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.uniform(0, 10, size=n)
    channel = rng.choice(["web", "app", "store"], size=n)
    member = rng.random(n) < 0.4
    z = 1.5 * x1 - 0.3 * x2 + np.where(channel == "app", 1.0, 0.0) + np.where(member, 0.7, 0.0)
    label = rng.random(n) < 1 / (1 + np.exp(-z))
    frame = pd.DataFrame({"x1": x1, "x2": x2, "channel": channel, "member": member, "churned": label})
    frame.loc[::17, "x2"] = np.nan
    frame.loc[::23, "channel"] = None
    return frame


def instances(frame: pd.DataFrame) -> list[dict]:
    rows = []
    for rec in frame[["x1", "x2", "channel", "member"]].to_dict("records"):
        rows.append(
            {
                k: (None if (isinstance(v, float) and np.isnan(v)) else (bool(v) if k == "member" else v))
                for k, v in rec.items()
            }
        )
    return rows


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(engine, models dir, frame): LOGISTIC_REG 'churn', KMEANS 'segments', LINEAR_REG 'spend'."""
    root = tmp_path_factory.mktemp("models")
    engine = BqmlEngine(root)
    frame = training_frame()
    engine.create_model("churn", {"model_type": "LOGISTIC_REG", "input_label_cols": ["churned"]}, frame)
    engine.create_model(
        "churn2", {"model_type": "LOGISTIC_REG", "input_label_cols": ["churned"], "l2_reg": 5.0}, frame
    )
    engine.create_model(
        "segments", {"model_type": "KMEANS", "num_clusters": 4}, frame.drop(columns=["churned"])
    )
    return engine, root, frame


def artifact(engine: BqmlEngine, name: str) -> str:
    return str(engine.store.version_dir(name))


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def endpoints(home):
    return LocalEndpoints(home=str(home), port=free_port())


@pytest.fixture
def running(endpoints, home):
    """A server for ``endpoints`` in a background process; always stopped."""
    process = server.start_background(
        home, endpoints.host, endpoints.port, endpoints.token, extra_args=["--log-flush-seconds", "0.2"]
    )
    try:
        yield endpoints
    finally:
        stop_server(process)
