"""Model assets on the local backend: train every declared model from its SQL file, evaluate it,
and check what the Dagster UI shows — metadata, metrics, plots and lineage."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve
from sqlglot.tokens import TokenType

from lakehouse_ml.bigquery.dialect import find_ml_calls, tokenize
from lakehouse_ml.bigquery.sqlfiles import sql_dir
from lakehouse_ml.core.settings import load_settings
from lakehouse_ml.datagen import SimulationConfig, write_landing
from lakehouse_ml.definitions import build_definitions
from lakehouse_ml.lifecycle import models
from lakehouse_ml.runner import DATA_JOBS, MODEL_JOBS, materialize_all

MODEL_NAMES = [m.name for m in models.MODELS]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    settings = load_settings(
        {"LAKEHOUSE_ML_HOME": str(home), "LAKEHOUSE_ML_DAYS": "130", "LAKEHOUSE_ML_CUSTOMERS": "500"}
    )
    write_landing(
        SimulationConfig(
            seed=3, start_date=settings.start_date, days=settings.days, customers=settings.customers
        ),
        settings.landing_dir,
    )
    instance = dg.DagsterInstance.ephemeral()
    reports = materialize_all(settings, instance, jobs=DATA_JOBS + MODEL_JOBS)
    yield settings, instance, reports
    instance.dispose()


def _metadata(instance, asset):
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None, f"{asset} was not materialized"
    return event.asset_materialization.metadata


def _valid_png(path: str) -> None:
    file = Path(path)
    assert file.is_file() and file.read_bytes()[:8] == PNG_MAGIC
    with Image.open(file) as image:
        image.verify()
    with Image.open(file) as image:
        assert image.size[0] > 200 and image.size[1] > 200
    assert not list(file.parent.glob(".*.tmp")), "a temporary file was left behind"


def test_models_job_runs_after_the_data_jobs(trained):
    _, _, reports = trained
    assert [r.job for r in reports] == list(DATA_JOBS) + ["models_job"]
    materialized = set(reports[-1].materializations)
    assert materialized == set(MODEL_NAMES) | {f"{m}_evaluation" for m in MODEL_NAMES}
    assert "roc_auc" in reports[-1].summaries["churn_model_evaluation"]


def test_model_metadata(trained):
    settings, instance, _ = trained
    for spec in models.MODELS:
        metadata = _metadata(instance, spec.name)
        assert metadata["model_type"].value == spec.model_type
        assert metadata["options"].value["model_type"] == spec.model_type
        features = metadata["feature_columns"].value
        assert features and not {
            "customer_id",
            "order_id",
            "snapshot_date",
            "snapshot_ts",
            "order_date",
        } & set(features)
        assert metadata["training_iterations"].value >= 1
        assert np.isfinite(metadata["final_loss"].value)
        assert "|" in metadata["training_info"].value and "|" in metadata["feature_info"].value
        # The run's own BigQuery ML model, under the spec's name and the run's time and id.
        model = metadata["bqml_model"].value
        assert model.startswith(spec.name + "_") and models.is_training_model(spec, model)
        location = Path(metadata["model_location"].value)
        assert location == settings.home_dir / "models" / model and location.is_dir()
        assert _metadata(instance, f"{spec.name}_evaluation")["bqml_model"].value == model
    churn = _metadata(instance, "churn_model")
    assert churn["label"].value == "churned"
    assert churn["registry"].value == {"model_registry": "VERTEX_AI", "vertex_ai_model_id": "churn_model"}
    assert churn["options"].value["enable_global_explain"] is True
    assert "churned" not in churn["feature_columns"].value
    # The segments model has a TRANSFORM: its features are the pre-transform columns.
    assert "monetary_total" in _metadata(instance, "customer_segments_model")["feature_columns"].value


def test_classifier_evaluation(trained):
    settings, instance, _ = trained
    metadata = _metadata(instance, "churn_model_evaluation")
    for metric in ("precision", "recall", "accuracy", "f1_score", "roc_auc"):
        assert 0.0 <= metadata[f"metric/{metric}"].value <= 1.0
    assert metadata["metric/log_loss"].value > 0
    assert metadata["metric/roc_auc"].value > 0.6  # churn is predictable on the simulated data
    assert "| roc_auc |" in metadata["metrics"].value
    for plot in ("roc_curve", "confusion_matrix"):
        path = metadata[f"plot/{plot}"].value
        assert Path(path).parent == settings.home_dir / "reports" / "churn_model"
        _valid_png(path)
    assert 0.5 < metadata["roc_curve_auc"].value <= 1.0
    assert "expected_label" in metadata["confusion_matrix"].value
    assert set(metadata["sources"].value) == {"metrics", "roc_curve", "confusion_matrix"}


def test_clustering_evaluations(trained):
    _, instance, _ = trained
    for name in ("customer_segments_model", "transaction_anomaly_model"):
        metadata = _metadata(instance, f"{name}_evaluation")
        assert metadata["metric/davies_bouldin_index"].value > 0
        assert metadata["metric/mean_squared_distance"].value > 0
        assert metadata["clusters"].value == models.model_spec(name).options["num_clusters"]
        _valid_png(metadata["plot/cluster_sizes"].value)
        assert "centroid_id" in metadata["cluster_sizes"].value
    anomalies = _metadata(instance, "transaction_anomaly_model_evaluation")
    assert anomalies["contamination"].value == 0.02
    assert 0 < anomalies["anomaly_rate"].value <= 0.05


def test_cluster_sizes_add_up_to_the_training_rows(trained):
    settings, _, _ = trained
    from lakehouse_ml.backends.local_warehouse import LocalWarehouse

    warehouse = LocalWarehouse.at(settings.duckdb_path)
    spec = models.CUSTOMER_SEGMENTS_MODEL
    result = models.evaluate(warehouse, spec, models.newest_model(warehouse, spec))
    rows = warehouse.query(f"SELECT COUNT(*) AS n FROM ({spec.training_query})")["n"][0]
    assert result.cluster_sizes["row_count"].sum() == rows


def test_model_lineage_comes_from_the_sql(tmp_path, monkeypatch):
    definitions = build_definitions(load_settings({"LAKEHOUSE_ML_HOME": str(tmp_path)}))
    graph = definitions.resolve_asset_graph()

    def parents(key):
        return {p.to_user_string() for p in graph.get(dg.AssetKey(key)).parent_keys}

    assert parents("churn_model") == {"customer_features"}
    assert parents("customer_segments_model") == {"customer_features"}
    assert parents("transaction_anomaly_model") == {"transaction_features"}
    for name in MODEL_NAMES:
        assert parents(f"{name}_evaluation") == {name}
    assert set(definitions.resolve_job_def("models_job").asset_layer.executable_asset_keys) == {
        dg.AssetKey(k) for n in MODEL_NAMES for k in (n, f"{n}_evaluation")
    }
    # Change the SQL, and the lineage follows.
    copy = tmp_path / "sql"
    shutil.copytree(sql_dir(), copy)
    path = copy / "models" / "churn_model.sql"
    path.write_text(
        path.read_text().replace(
            "FROM customer_features", "FROM customer_features JOIN raw_customers USING (customer_id)"
        )
    )
    monkeypatch.setenv("LAKEHOUSE_ML_SQL_DIR", str(copy))
    graph = build_definitions(load_settings({"LAKEHOUSE_ML_HOME": str(tmp_path)})).resolve_asset_graph()
    assert {p.to_user_string() for p in graph.get(dg.AssetKey("churn_model")).parent_keys} == {
        "customer_features",
        "raw_customers",
    }


def test_every_model_file_is_declared_once():
    files = sorted(p.stem for p in (sql_dir() / "models").glob("*.sql"))
    assert files == sorted(MODEL_NAMES)
    for spec in models.MODELS:
        assert spec.statement.replace  # CREATE OR REPLACE: the file runs again on its own
        # No query parameters: the statement runs unchanged on BigQuery.
        assert not [t for t in tokenize(spec.sql) if t.token_type == TokenType.PARAMETER]
        # A training run sends the file with only the model's name changed.
        run = models.training_model_name(spec, "0123456789abcdef")
        assert models.training_sql(spec, run) == spec.sql.replace(f"MODEL {spec.name}\n", f"MODEL {run}\n", 1)


def test_a_registered_model_file_must_name_its_vertex_model_id(tmp_path, monkeypatch):
    """Each run's model has a name of its own: without VERTEX_AI_MODEL_ID each would register as a
    model of its own instead of a new version."""
    copy = tmp_path / "sql"
    shutil.copytree(sql_dir(), copy)
    path = copy / "models" / "churn_model.sql"
    path.write_text(
        path.read_text()
        .replace("  vertex_ai_model_id = 'churn_model'\n", "")
        .replace("model_registry = 'VERTEX_AI',", "model_registry = 'VERTEX_AI'")
    )
    monkeypatch.setenv("LAKEHOUSE_ML_SQL_DIR", str(copy))
    with pytest.raises(
        Exception,
        match="registers the model without VERTEX_AI_MODEL_ID: add vertex_ai_model_id = 'churn_model'",
    ):
        build_definitions(load_settings({"LAKEHOUSE_ML_HOME": str(tmp_path)}))


def test_a_spec_that_does_not_fit_its_sql_fails_at_load(tmp_path, monkeypatch):
    copy = tmp_path / "sql"
    shutil.copytree(sql_dir(), copy)
    path = copy / "models" / "churn_model.sql"
    path.write_text(path.read_text().replace("'LOGISTIC_REG'", "'KMEANS'"))
    monkeypatch.setenv("LAKEHOUSE_ML_SQL_DIR", str(copy))
    with pytest.raises(Exception, match="KMEANS does not fit its binary_classification evaluation"):
        build_definitions(load_settings({"LAKEHOUSE_ML_HOME": str(tmp_path)}))


def test_roc_and_confusion_fallbacks_match_scikit_learn():
    rng = np.random.default_rng(4)
    truth = rng.random(400) < 0.4
    scores = np.clip(truth * 0.3 + rng.random(400) * 0.7, 0, 1).round(2)  # ties included
    roc = models.roc_from_scores(truth, scores)
    assert models.auc(roc) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    np.testing.assert_allclose(roc["false_positive_rate"], fpr)
    np.testing.assert_allclose(roc["recall"], tpr)
    predicted = pd.Series(scores > 0.5)
    table = models.confusion_from_labels(pd.Series(truth), predicted)
    np.testing.assert_array_equal(table.to_numpy(), confusion_matrix(truth, predicted, labels=[False, True]))
    assert (
        models.positive_label(pd.Series([0, 1, 1])) == 1
        and models.positive_label(pd.Series([True, False])) is True
    )


def test_gate_directions():
    assert models.Gate("roc_auc", "higher").better_or_equal(0.8, 0.79)
    assert not models.Gate("davies_bouldin_index", "lower").better_or_equal(1.2, 1.1)
    with pytest.raises(ValueError):
        models.Gate("roc_auc", "up")


def test_classifier_plots_fall_back_to_predict_where_the_functions_are_missing(trained):
    """On a warehouse without ML.ROC_CURVE / ML.CONFUSION_MATRIX the evaluation computes both from
    ML.PREDICT over the labelled training rows, and says so."""
    settings, _, _ = trained
    from lakehouse_ml.backends.local_warehouse import LocalWarehouse
    from lakehouse_ml.core.errors import WarehouseError

    class WithoutCurves(LocalWarehouse):
        def query_arrow(self, sql, params=None):
            if {c.function for c in find_ml_calls(sql)} & {"ROC_CURVE", "CONFUSION_MATRIX"}:
                raise WarehouseError("ML.ROC_CURVE is not supported here")
            return super().query_arrow(sql, params)

    base = LocalWarehouse.at(settings.duckdb_path)
    warehouse = WithoutCurves(duckdb=base.duckdb)
    spec = models.CHURN_MODEL
    model = models.newest_model(base, spec)
    result = models.evaluate(warehouse, spec, model)
    assert "ML.PREDICT on all labelled training rows" in result.sources["roc_curve"]
    assert "ML.PREDICT" in result.sources["confusion_matrix"]
    predictions = base.query(f"SELECT * FROM ML.PREDICT(MODEL {model}, ({spec.training_query}))")
    scores = [
        next(p["prob"] for p in probs if p["label"]) for probs in predictions["predicted_churned_probs"]
    ]
    assert result.roc_auc == pytest.approx(roc_auc_score(predictions["churned"], scores), abs=1e-12)
    assert int(result.confusion.to_numpy().sum()) == len(predictions)
    np.testing.assert_array_equal(
        result.confusion.to_numpy(),
        confusion_matrix(predictions["churned"], predictions["predicted_churned"], labels=[False, True]),
    )


def test_the_model_file_still_runs_unchanged_on_its_own(trained):
    """Run as it is, sql/models/churn_model.sql creates `churn_model` and registers it as a new
    version of the same Vertex AI model; the spec treats it as one of its models."""
    settings, instance, _ = trained
    from lakehouse_ml.backends.local_warehouse import LocalWarehouse

    warehouse = LocalWarehouse.at(settings.duckdb_path)
    spec = models.CHURN_MODEL
    registry = warehouse.model_registry()
    before = [v.version_id for v in registry.list_versions("churn_model")]
    warehouse.execute(spec.sql)
    version = registry.find_bqml_version(warehouse.model_source("churn_model"))
    assert version.model_id == "churn_model" and int(version.version_id) > int(before[-1])
    assert models.newest_model(warehouse, spec) == "churn_model"
    assert "churn_model" in {m for m, _ in models.training_models(warehouse, spec)}
