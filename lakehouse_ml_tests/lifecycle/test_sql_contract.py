"""A served model's serving and gate files name the features its CREATE MODEL declares, and the
definitions refuse to load when they do not."""

from __future__ import annotations

import shutil

import pytest

from lakehouse_ml.bigquery.sqlfiles import read_sql, sql_dir
from lakehouse_ml.core.errors import WarehouseError
from lakehouse_ml.core.settings import load_settings
from lakehouse_ml.definitions import build_definitions
from lakehouse_ml.lifecycle.models import MODELS
from lakehouse_ml.lifecycle.sql_contract import model_features, model_sql_problems, output_columns

SERVED = [spec for spec in MODELS if spec.serving is not None]


@pytest.mark.parametrize("spec", SERVED, ids=lambda s: s.name)
def test_the_shipped_files_agree(spec):
    features = model_features(spec)
    assert features and spec.label not in features
    assert output_columns(read_sql(f"serving/{spec.name}.sql"), "serving") == features
    gate = output_columns(read_sql(f"gate/{spec.name}.sql"), "gate")
    assert gate == features + ([spec.label] if spec.label else [])
    assert model_sql_problems(spec) == []


def test_the_split_column_and_the_label_are_not_features():
    churn = next(spec for spec in SERVED if spec.name == "churn_model")
    training = output_columns(churn.training_query, "training")
    assert "snapshot_ts" in training and "churned" in training
    assert "snapshot_ts" not in model_features(churn) and "churned" not in model_features(churn)


@pytest.fixture
def sql_copy(tmp_path, monkeypatch):
    copy = tmp_path / "sql"
    shutil.copytree(sql_dir(), copy)
    monkeypatch.setenv("LAKEHOUSE_ML_SQL_DIR", str(copy))
    return copy


def test_a_serving_file_without_a_feature_fails_definitions_load(tmp_path, sql_copy):
    path = sql_copy / "serving" / "churn_model.sql"
    path.write_text(path.read_text().replace("  avg_discount,\n", "", 1))
    with pytest.raises(WarehouseError, match=r"churn_model: sql/serving/churn_model.sql lacks avg_discount"):
        build_definitions(load_settings({"LAKEHOUSE_ML_HOME": str(tmp_path / "home")}))


def test_a_gate_file_with_an_extra_column_fails(sql_copy):
    path = sql_copy / "gate" / "customer_segments_model.sql"
    text = path.read_text()
    assert "SELECT\n" in text
    path.write_text(text.replace("SELECT\n", "SELECT\n  1 AS stray,\n", 1))
    spec = next(s for s in SERVED if s.name == "customer_segments_model")
    assert model_sql_problems(spec) == [
        "sql/gate/customer_segments_model.sql has columns the model does not declare: stray"
    ]


def test_a_missing_gate_file_fails_definitions_load(tmp_path, sql_copy):
    (sql_copy / "gate" / "transaction_anomaly_model.sql").unlink()
    with pytest.raises(WarehouseError, match=r"sql/gate/transaction_anomaly_model.sql is missing"):
        build_definitions(load_settings({"LAKEHOUSE_ML_HOME": str(tmp_path / "home")}))


def test_a_star_is_refused_with_the_reason(sql_copy):
    (sql_copy / "serving" / "churn_model.sql").write_text("SELECT * FROM customer_features")
    spec = next(s for s in SERVED if s.name == "churn_model")
    with pytest.raises(WarehouseError, match=r"selects \*: list its columns"):
        model_sql_problems(spec)
