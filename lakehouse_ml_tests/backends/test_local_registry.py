"""The local model registry: Vertex AI Model Registry semantics on SQLite, and the BigQuery ML hook."""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lakehouse_ml.backends.local_registry import LocalModelRegistry
from lakehouse_ml.backends.local_warehouse import LocalWarehouse
from lakehouse_ml.bigquery.registry import vertex_region
from lakehouse_ml.core.errors import BqmlError, ModelNotRegisteredError, RegistryError, VersionDeployedError


# -- helpers ---------------------------------------------------------------------------------------
def artifacts(tmp_path: Path, tag: str = "a") -> Path:
    folder = tmp_path / f"artifacts-{tag}"
    folder.mkdir(exist_ok=True)
    (folder / "model.json").write_text(f'{{"name": "m", "tag": "{tag}"}}')
    (folder / "arrays.npz").write_bytes(b"\x00" * 16)
    return folder


def register(reg: LocalModelRegistry, tmp_path: Path, model_id: str = "churn", **kwargs):
    kwargs.setdefault("source", "bqml://main.m")
    kwargs.setdefault("model_type", "LOGISTIC_REG")
    return reg.register_version(model_id, artifact_dir=artifacts(tmp_path), **kwargs)


def deploy(reg: LocalModelRegistry, model_id: str, version_id: str, endpoint: str = "e1") -> None:
    """What the local endpoints do: a row in deployed_models of the same registry.db."""
    with sqlite3.connect(reg.db_path) as conn:
        conn.execute(
            "INSERT INTO deployed_models VALUES (?, ?, ?, ?, 100, '2026-01-01T00:00:00+00:00')",
            (endpoint, f"dm-{model_id}-{version_id}", model_id, version_id),
        )


def undeploy(reg: LocalModelRegistry, model_id: str, version_id: str) -> None:
    with sqlite3.connect(reg.db_path) as conn:
        conn.execute(
            "DELETE FROM deployed_models WHERE model_id = ? AND version_id = ?", (model_id, version_id)
        )


def aliases(reg: LocalModelRegistry, model_id: str = "churn") -> dict[str, list[str]]:
    return {v.version_id: v.aliases for v in reg.list_versions(model_id)}


@pytest.fixture()
def reg(tmp_path) -> LocalModelRegistry:
    return LocalModelRegistry.at(tmp_path / "registry")


# -- versions and aliases --------------------------------------------------------------------------
def test_versions_count_up_and_the_first_gets_default(reg, tmp_path):
    v1 = register(reg, tmp_path, metrics={"roc_auc": 0.8}, labels={"team": "ml"})
    v2 = register(reg, tmp_path, aliases=["challenger"])
    assert (v1.version_id, v2.version_id) == ("1", "2")
    assert v1.aliases == ["default"] and v2.aliases == ["challenger"]
    assert v1.metrics == {"roc_auc": 0.8} and v1.labels == {"team": "ml"} and v1.deployable
    assert reg.get_version("churn").version_id == "1"  # no version given: default
    assert reg.get_version("churn", "challenger").version_id == "2"
    assert reg.get_version("churn", "2") == v2
    assert reg.list_models() == ["churn"]
    # artifacts are copied under registry/<model_id>/<version_id>/
    assert Path(v2.artifact_uri) == reg.root_path / "churn" / "2"
    assert (Path(v2.artifact_uri) / "model.json").read_text() == (
        tmp_path / "artifacts-a" / "model.json"
    ).read_text()


def test_version_ids_are_never_reused(reg, tmp_path):
    for _ in range(3):
        register(reg, tmp_path)
    reg.delete_version("churn", "3")
    assert register(reg, tmp_path).version_id == "4"


def test_aliases_add_move_and_remove(reg, tmp_path):
    register(reg, tmp_path)
    register(reg, tmp_path)
    reg.merge_version_aliases("churn", "1", ["champion", "blue"])
    assert aliases(reg) == {"1": ["default", "blue", "champion"], "2": []}
    reg.merge_version_aliases("churn", "2", ["champion"])  # moving: taken from version 1
    assert aliases(reg) == {"1": ["default", "blue"], "2": ["champion"]}
    reg.merge_version_aliases("churn", "1", ["-blue"])  # "-" removes
    assert aliases(reg) == {"1": ["default"], "2": ["champion"]}
    reg.merge_version_aliases("churn", "2", ["default"])  # default moves too
    assert aliases(reg) == {"1": [], "2": ["default", "champion"]}
    reg.merge_version_aliases("churn", "1", ["x1", "-x1"])  # add and remove cancel out
    assert aliases(reg)["1"] == []


@pytest.mark.parametrize("alias", ["Prod", "1", "a", "2024", "prod_1", "-"])
def test_aliases_follow_the_vertex_pattern(reg, tmp_path, alias):
    register(reg, tmp_path)
    with pytest.raises(RegistryError, match=r"Invalid version alias .*\[a-z\]\[a-zA-Z0-9-\]"):
        reg.merge_version_aliases("churn", "1", [alias])
    with pytest.raises(RegistryError, match="Invalid version alias"):
        register(reg, tmp_path, aliases=[alias])


def test_default_cannot_be_removed_only_moved(reg, tmp_path):
    register(reg, tmp_path)
    with pytest.raises(
        RegistryError, match="one version must carry 'default'.*Add 'default' to another version"
    ):
        reg.merge_version_aliases("churn", "1", ["-default"])
    assert aliases(reg) == {"1": ["default"]}


def test_unknown_model_version_and_alias_name_the_problem(reg, tmp_path):
    with pytest.raises(ModelNotRegisteredError, match="Model 'nope' is not in the local model registry"):
        reg.get_version("nope")
    register(reg, tmp_path)
    with pytest.raises(ModelNotRegisteredError, match="has no version '7'; its versions: \\['1'\\]"):
        reg.get_version("churn", "7")
    with pytest.raises(ModelNotRegisteredError, match="no version with alias 'gold'"):
        reg.get_version("churn", "gold")
    with pytest.raises(RegistryError, match="Invalid model id 'Churn'"):
        register(reg, tmp_path, model_id="Churn")


def test_delete_version_rules(reg, tmp_path):
    register(reg, tmp_path)
    with pytest.raises(RegistryError, match="only version.*delete_model"):
        reg.delete_version("churn", "1")
    register(reg, tmp_path)
    deploy(reg, "churn", "2")
    with pytest.raises(
        VersionDeployedError, match="is deployed \\(endpoint/deployed model: e1/dm-churn-2\\). Undeploy"
    ) as err:
        reg.delete_version("churn", "2")
    assert err.value.endpoints == ["projects/local/locations/us-central1/endpoints/e1"]
    with pytest.raises(VersionDeployedError):
        reg.delete_model("churn")
    register(reg, tmp_path)
    reg.merge_version_aliases("churn", "3", ["gold"])
    reg.delete_version("churn", "3")  # its aliases go with it
    assert aliases(reg) == {"1": ["default"], "2": []}
    assert not (reg.root_path / "churn" / "3").exists()
    # "When you delete a model version assigned the default alias, the alias is automatically
    # assigned to the next most recent version" (Vertex AI, model-alias page).
    reg.delete_version("churn", "1")
    assert aliases(reg) == {"2": ["default"]}


def test_delete_model_removes_every_version(reg, tmp_path):
    register(reg, tmp_path)
    register(reg, tmp_path)
    reg.delete_model("churn")
    assert reg.list_models() == [] and not (reg.root_path / "churn").exists()
    assert register(reg, tmp_path).version_id == "1"  # a new model starts at 1 again


def test_arima_plus_registers_but_is_not_deployable(reg, tmp_path):
    for model_type in ("ARIMA_PLUS", "ARIMA_PLUS_XREG"):
        assert not register(reg, tmp_path, model_id=model_type.lower(), model_type=model_type).deployable
    assert register(reg, tmp_path, model_type="BOOSTED_TREE_CLASSIFIER").deployable


def test_region_mapping():
    assert vertex_region("US") == "us-central1"
    assert vertex_region("EU") == "europe-west4"
    assert vertex_region("europe-west2") == "europe-west2"
    with pytest.raises(RegistryError, match="use US, EU or a region"):
        vertex_region("mars")


def test_a_failed_registration_leaves_nothing(reg, tmp_path, monkeypatch):
    register(reg, tmp_path)
    import lakehouse_ml.backends.local_registry as local

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(local.LocalModelRegistry, "_set_alias", staticmethod(boom))
    with pytest.raises(RuntimeError, match="disk full"):
        register(reg, tmp_path, aliases=["x1"])
    monkeypatch.undo()
    assert [v.version_id for v in reg.list_versions("churn")] == ["1"]
    assert sorted(p.name for p in (reg.root_path / "churn").iterdir()) == ["1"]  # no folder, no temp dir
    with pytest.raises(RegistryError, match="is not a folder"):
        reg.register_version("churn", source="s", model_type="LINEAR_REG", artifact_dir=tmp_path / "missing")


def test_the_deployed_models_table_has_the_endpoints_schema(reg, tmp_path):
    register(reg, tmp_path)
    with sqlite3.connect(reg.db_path) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'deployed_models'").fetchone()[0]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert " ".join(sql.split()) == (
        "CREATE TABLE deployed_models(endpoint_id TEXT, deployed_model_id TEXT, model_id TEXT, version_id TEXT, "
        "traffic_percentage INTEGER, create_time TEXT, PRIMARY KEY(endpoint_id, deployed_model_id))"
    )


# -- concurrency -----------------------------------------------------------------------------------
def _register_many(root: str, artifact_dir: str, count: int, queue) -> None:
    reg = LocalModelRegistry(root=root)
    ids = [
        reg.register_version(
            "shared", source="bqml://main.m", model_type="LINEAR_REG", artifact_dir=artifact_dir
        ).version_id
        for _ in range(count)
    ]
    queue.put(ids)


@pytest.mark.slow
def test_eight_processes_register_at_once(tmp_path):
    root = str(tmp_path / "registry")
    folder = str(artifacts(tmp_path))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_register_many, args=(root, folder, 3, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for ids in results:  # each process sees its own ids increase
        assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    every = sorted(int(i) for ids in results for i in ids)
    assert every == list(range(1, 25))  # unique, no gaps
    reg = LocalModelRegistry(root=root)
    versions = reg.list_versions("shared")
    assert [v.version_id for v in versions] == [str(i) for i in range(1, 25)]
    assert [v.version_id for v in versions if "default" in v.aliases] == ["1"]
    assert all((Path(v.artifact_uri) / "model.json").is_file() for v in versions)


# -- the BigQuery ML hook --------------------------------------------------------------------------
@pytest.fixture()
def warehouse(tmp_path) -> LocalWarehouse:
    wh = LocalWarehouse.at(tmp_path / "w.duckdb")
    rng = np.random.default_rng(3)
    n = 300
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "y": (x1 - 0.5 * x2 + rng.normal(0, 0.5, n) > 0)})
    wh.load_dataframe(frame, "t")
    return wh


def _create(wh: LocalWarehouse, name: str, extra: str = "", replace: bool = False) -> None:
    wh.execute(
        f"CREATE {'OR REPLACE ' if replace else ''}MODEL {name} OPTIONS(model_type='LOGISTIC_REG', "
        f"input_label_cols=['y'], model_registry='VERTEX_AI'{extra}) AS SELECT x1, x2, y FROM t"
    )


def test_create_model_registers_a_version_that_predicts_the_same(warehouse):
    _create(warehouse, "churn_a", ", vertex_ai_model_version_aliases=['champion']")
    reg = warehouse.model_registry()
    assert (
        reg.root_path
        == warehouse.registry_path().absolute()
        == Path(warehouse.duckdb.database).parent.absolute() / "registry"
    )
    version = reg.get_version("churn_a")  # VERTEX_AI_MODEL_ID defaults to the model name
    assert (version.version_id, version.aliases, version.source) == (
        "1",
        ["default", "champion"],
        "bqml://main.churn_a",
    )
    assert version.model_type == "LOGISTIC_REG" and "roc_auc" in version.metrics
    rows = warehouse.query("SELECT x1, x2 FROM t ORDER BY x1 LIMIT 50")
    expected = warehouse.query(
        "SELECT * FROM ML.PREDICT(MODEL churn_a, (SELECT x1, x2 FROM t ORDER BY x1 LIMIT 50))"
    )
    engine, name, _ = reg.bqml_engine("churn_a", "champion")
    got = engine.predict(name, rows).to_pandas()
    assert got["predicted_y"].tolist() == expected["predicted_y"].tolist()
    np.testing.assert_allclose(
        [p[0]["prob"] for p in got["predicted_y_probs"]],
        [p[0]["prob"] for p in expected["predicted_y_probs"]],
    )


def test_create_or_replace_replaces_that_models_version(warehouse):
    _create(warehouse, "model_a", ", vertex_ai_model_id='churn'")
    _create(
        warehouse, "model_b", ", vertex_ai_model_id='churn', vertex_ai_model_version_aliases=['candidate']"
    )
    reg = warehouse.model_registry()
    reg.merge_version_aliases("churn", "2", ["default"])
    v2_files = Path(reg.get_version("churn", "2").artifact_uri)
    assert aliases(reg) == {"1": [], "2": ["default", "candidate"]}
    _create(warehouse, "model_b", ", vertex_ai_model_id='churn'", replace=True)
    # v2 deleted ("the existing Model Registry model version is deleted and replaced with the new
    # model"): default moves to the newest remaining version, v3; candidate went with v2.
    assert aliases(reg) == {"1": [], "3": ["default"]}
    assert reg.get_version("churn", "3").source == "bqml://main.model_b"
    assert not v2_files.exists()
    # and v1 kept its artifacts although nothing changed for model_a
    assert (Path(reg.get_version("churn", "1").artifact_uri) / "model.json").is_file()


def test_replacing_a_deployed_version_is_refused_as_bigquery_does(warehouse):
    """BigQuery answers CREATE OR REPLACE of a model whose registry version is deployed with
    FAILED_PRECONDITION (vertex-ai-samples PR #788); nothing is trained, nothing changes."""
    _create(warehouse, "model_a", ", vertex_ai_model_id='churn'")
    reg = warehouse.model_registry()
    deploy(reg, "churn", "1")
    before = warehouse.bqml_engine().model_metadata("model_a")["creation_time"]
    with pytest.raises(
        BqmlError,
        match=re.escape(
            "code=FAILED_PRECONDITION, message=The Model is deployed or being deployed at the following Endpoint(s): "
            "projects/local/locations/us-central1/endpoints/e1. Please undeploy the model before retry."
        ),
    ):
        _create(warehouse, "model_a", ", vertex_ai_model_id='churn'", replace=True)
    assert warehouse.bqml_engine().model_metadata("model_a")["creation_time"] == before
    assert aliases(reg) == {"1": ["default"]}
    # A model of another name under the same model id is a new version: nothing is replaced.
    _create(warehouse, "model_b", ", vertex_ai_model_id='churn'")
    assert aliases(reg) == {"1": ["default"], "2": []}
    assert reg.find_bqml_version("bqml://main.model_a").version_id == "1"
    # Once undeployed, replacing works: v1 goes, default moves to the newest remaining version.
    undeploy(reg, "churn", "1")
    _create(warehouse, "model_a", ", vertex_ai_model_id='churn'", replace=True)
    assert aliases(reg) == {"2": [], "3": ["default"]}
    # CREATE OR REPLACE without MODEL_REGISTRY: the new model is not registered, its old version goes
    warehouse.execute(
        "CREATE OR REPLACE MODEL model_a OPTIONS(model_type='LOGISTIC_REG', "
        "input_label_cols=['y']) AS SELECT x1, x2, y FROM t"
    )
    assert reg.find_bqml_version("bqml://main.model_a") is None
    assert aliases(reg) == {"2": ["default"]}


def test_drop_model_of_a_deployed_version_is_refused(warehouse):
    _create(warehouse, "churn")
    reg = warehouse.model_registry()
    deploy(reg, "churn", "1")
    with pytest.raises(
        BqmlError, match="code=FAILED_PRECONDITION, message=The Model is deployed or being deployed"
    ):
        warehouse.execute("DROP MODEL churn")
    assert warehouse.bqml_engine().model_exists("churn")  # nothing dropped
    assert reg.get_version("churn").version_id == "1"


def test_drop_model_removes_its_version(warehouse):
    _create(warehouse, "model_a", ", vertex_ai_model_id='churn'")
    _create(warehouse, "model_b", ", vertex_ai_model_id='churn'")
    reg = warehouse.model_registry()
    warehouse.execute("DROP MODEL model_a")  # held default: the newest remaining version takes it
    assert aliases(reg) == {"2": ["default"]}
    warehouse.execute("DROP MODEL model_b")  # the last version takes the model with it
    assert reg.list_models() == []


def test_alter_model_registers_an_existing_model(warehouse):
    warehouse.execute(
        "CREATE MODEL plain OPTIONS(model_type='LOGISTIC_REG', input_label_cols=['y']) AS SELECT x1, x2, y FROM t"
    )
    reg = warehouse.model_registry()
    assert reg.list_models() == []  # not registered without MODEL_REGISTRY
    _create(warehouse, "other", ", vertex_ai_model_id='churn'")
    warehouse.execute("ALTER MODEL plain SET OPTIONS(vertex_ai_model_id='churn')")  # latest version of churn
    assert reg.get_version("churn", "2").source == "bqml://main.plain"
    warehouse.execute("ALTER MODEL plain SET OPTIONS(vertex_ai_model_id='churn')")  # already there: no-op
    assert len(reg.list_versions("churn")) == 2
    with pytest.raises(
        BqmlError, match="already registered as version 2 of 'churn'.*only be registered to one model ID"
    ):
        warehouse.execute("ALTER MODEL plain SET OPTIONS(vertex_ai_model_id='elsewhere')")


def test_without_a_registry_the_options_stay_in_metadata(tmp_path):
    from dagster_duckdb import DuckDBResource

    wh = LocalWarehouse(duckdb=DuckDBResource(database=":memory:"), models_dir=str(tmp_path / "models"))
    assert wh.registry_path() is None and wh.bqml_engine().registry is None
