"""The ModelRegistry port's contract (lakehouse_ml/backends/registry.py): Vertex AI Model
Registry semantics for BigQuery ML models registered by CREATE MODEL, on both backends."""

from __future__ import annotations

import pytest

from lakehouse_ml.backends.registry import ModelRegistry
from lakehouse_ml.core.errors import ModelNotRegisteredError

from .conftest import labelled_rows


def train(backend, runs: int, aliases: dict[int, str] | None = None) -> None:
    """``runs`` training runs of one registered model: each a BigQuery ML model of its own name
    under vertex_ai_model_id 'churn', as the lifecycle trains them."""
    wh = backend.warehouse
    if not wh.table_exists("rows"):
        wh.load_dataframe(labelled_rows(), "rows")
    start = len([m for m, _ in wh.list_models() if m.startswith("churn_run_")])
    for i in range(start + 1, start + runs + 1):
        alias = (aliases or {}).get(i)
        extra = f", vertex_ai_model_version_aliases=['{alias}']" if alias else ""
        wh.execute(
            f"CREATE MODEL churn_run_{i} OPTIONS(model_type='LOGISTIC_REG', input_label_cols=['y'], "
            f"l2_reg={i}, model_registry='VERTEX_AI', vertex_ai_model_id='churn'{extra}) AS SELECT a, b, y FROM rows"
        )


def test_the_implementations_are_the_port(backend):
    assert isinstance(backend.registry, ModelRegistry)


def test_versions_count_up_and_the_first_holds_default(backend):
    train(backend, 2, {2: "champion"})
    reg = backend.registry
    assert [v.version_id for v in reg.list_versions("churn")] == ["1", "2"]
    assert reg.get_version("churn").version_id == "1"
    assert reg.get_version("churn", "champion").version_id == "2"
    assert reg.get_version("churn", "2").aliases == ["champion"]
    assert "churn" in reg.list_models()


def test_each_run_is_found_from_its_bigquery_model(backend):
    train(backend, 2)
    found = backend.registry.find_bqml_version(backend.warehouse.model_source("churn_run_2"))
    assert (found.model_id, found.version_id) == ("churn", "2")
    assert backend.registry.find_bqml_version(backend.warehouse.model_source("churn_run_9")) is None


def test_an_alias_moves_and_is_unique_within_the_model(backend):
    train(backend, 2)
    reg = backend.registry
    reg.merge_version_aliases("churn", "1", ["champion"])
    reg.merge_version_aliases("churn", "2", ["champion"])
    assert [v.version_id for v in reg.list_versions("churn") if "champion" in v.aliases] == ["2"]
    reg.merge_version_aliases("churn", "2", ["-champion"])
    with pytest.raises(ModelNotRegisteredError):
        reg.get_version("churn", "champion")


def test_deleting_the_default_version_moves_default_to_the_newest_remaining(backend):
    train(backend, 3)
    reg = backend.registry
    reg.delete_version("churn", "1")
    assert [v.version_id for v in reg.list_versions("churn")] == ["2", "3"]
    assert reg.get_version("churn").version_id == "3"


def test_unknown_models_versions_and_aliases_are_named(backend):
    train(backend, 1)
    reg = backend.registry
    with pytest.raises(ModelNotRegisteredError, match="nope"):
        reg.get_version("nope")
    with pytest.raises(ModelNotRegisteredError, match="7"):
        reg.get_version("churn", "7")
    with pytest.raises(ModelNotRegisteredError, match="ghost"):
        reg.get_version("churn", "ghost")
