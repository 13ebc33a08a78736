"""Model artifacts: safe formats, bit-identical round trips, atomic CREATE / REPLACE / DROP / ALTER,
registry options kept with the model."""

from __future__ import annotations

import json
import threading
import zipfile

import numpy as np
import pytest

from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine.engine import BqmlEngine, ModelExistsError, ModelNotFoundError

from .engine_data import binary, clusters, multiclass, regression

MODELS = [
    ("logreg", {"model_type": "LOGISTIC_REG", "enable_global_explain": True}, lambda: binary(600)),
    ("multi", {"model_type": "LOGISTIC_REG", "input_label_cols": ["plan"]}, lambda: multiclass(600)),
    ("linreg", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, lambda: regression(600)),
    ("km", {"model_type": "KMEANS", "num_clusters": 3}, lambda: clusters(600)),
    ("btc", {"model_type": "BOOSTED_TREE_CLASSIFIER"}, lambda: binary(600)),
    (
        "rfr",
        {"model_type": "RANDOM_FOREST_REGRESSOR", "input_label_cols": ["revenue"], "num_parallel_tree": 5},
        lambda: regression(600),
    ),
]


def _entries(path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


@pytest.mark.parametrize("name, options, data", MODELS, ids=[m[0] for m in MODELS])
def test_round_trip_gives_bit_identical_predictions(tmp_path, name, options, data):
    frame = data()
    first = BqmlEngine(tmp_path / "models")
    first.create_model(name, options, frame)
    before = first.predict(name, frame)
    second = BqmlEngine(tmp_path / "models")  # a fresh process would see only the files
    after = second.predict(name, frame)
    assert before.schema == after.schema
    for column in before.column_names:
        a, b = before.column(column), after.column(column)
        if pa_is_float(a.type):
            assert np.array_equal(a.to_numpy(), b.to_numpy(), equal_nan=True), column
        else:
            assert a.equals(b), column
    assert first.evaluate(name, frame).equals(second.evaluate(name, frame))
    assert first.evaluate(name, None).equals(second.evaluate(name, None))

    directory = tmp_path / "models" / name
    files = set(_entries(directory))
    assert "model.json" in files and not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in files)
    json.loads((directory / "model.json").read_text())
    if "arrays.npz" in files:
        with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:  # no object arrays
            assert all(arrays[k].dtype != object for k in arrays.files)
        with zipfile.ZipFile(directory / "arrays.npz") as archive:
            assert all(n.endswith(".npy") for n in archive.namelist())
    if options["model_type"].startswith(("BOOSTED", "RANDOM")):
        json.loads((directory / "booster.json").read_bytes())  # XGBoost's JSON model format


def pa_is_float(t) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(t)


def test_failed_create_leaves_nothing(tmp_path):
    models = tmp_path / "models"
    eng = BqmlEngine(models)
    one_class = binary(300).assign(label=True)
    with pytest.raises(BqmlError, match="one-class"):
        eng.create_model("churn", {"model_type": "LOGISTIC_REG"}, one_class)
    assert _entries(models) == []
    assert not eng.model_exists("churn")


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    models = tmp_path / "models"
    eng = BqmlEngine(models)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        eng.create_model("churn", {"model_type": "LOGISTIC_REG"}, binary(300))
    assert _entries(models) == []


def test_create_or_replace_swaps_the_whole_model(tmp_path):
    models = tmp_path / "models"
    eng = BqmlEngine(models)
    frame = regression(600)
    eng.create_model("rev", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, frame)
    before = eng.predict("rev", frame).column("predicted_revenue").to_numpy()
    with pytest.raises(ModelExistsError, match="already exists"):
        eng.create_model("rev", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, frame)
    # IF NOT EXISTS keeps the model as it is
    kept = eng.create_model("rev", {"model_type": "KMEANS"}, frame, if_not_exists=True)
    assert kept["model_type"] == "LINEAR_REG"
    # a failed replacement leaves the old model in place
    with pytest.raises(BqmlError):
        eng.create_model(
            "rev", {"model_type": "LINEAR_REG", "input_label_cols": ["nope"]}, frame, replace=True
        )
    assert np.array_equal(eng.predict("rev", frame).column("predicted_revenue").to_numpy(), before)
    eng.create_model(
        "rev",
        {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"], "l2_reg": 100.0},
        frame,
        replace=True,
    )
    after = eng.predict("rev", frame).column("predicted_revenue").to_numpy()
    assert not np.array_equal(after, before)
    versions = [e for e in _entries(models) if e.startswith(".v-")]
    assert len(versions) == 1 and (models / "rev").resolve().name == versions[0]
    assert not [e for e in _entries(models) if e.startswith((".tmp-", ".lnk-"))]


def test_concurrent_replacements_end_in_one_whole_model(tmp_path):
    models = tmp_path / "models"
    frame = regression(400)
    errors = []

    def create(l2):
        try:
            BqmlEngine(models).create_model(
                "rev",
                {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"], "l2_reg": l2},
                frame,
                replace=True,
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(float(i),)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len([e for e in _entries(models) if e.startswith(".v-")]) == 1
    assert BqmlEngine(models).predict("rev", frame).num_rows == len(frame)


def test_drop_model(tmp_path):
    models = tmp_path / "models"
    eng = BqmlEngine(models)
    eng.create_model("km", {"model_type": "KMEANS", "num_clusters": 2}, clusters(100))
    eng.drop_model("km")
    assert not eng.model_exists("km")
    assert [e for e in _entries(models) if not e.startswith(".lock-")] == []
    eng.drop_model("km", if_exists=True)
    with pytest.raises(ModelNotFoundError, match="not found"):
        eng.drop_model("km")
    with pytest.raises(ModelNotFoundError):
        eng.predict("km", clusters(5))


def test_registry_options_are_kept_and_alter_changes_only_what_bigquery_allows(tmp_path):
    eng = BqmlEngine(tmp_path / "models")
    meta = eng.create_model(
        "churn",
        {
            "model_type": "LOGISTIC_REG",
            "model_registry": "VERTEX_AI",
            "vertex_ai_model_id": "churn_model",
            "vertex_ai_model_version_aliases": ["candidate", "q1-2024"],
        },
        binary(300),
    )
    assert meta["registry"] == {
        "model_registry": "VERTEX_AI",
        "vertex_ai_model_id": "churn_model",
        "vertex_ai_model_version_aliases": ["candidate", "q1-2024"],
    }
    before = eng.predict("churn", binary(20, seed=3))
    altered = eng.alter_model(
        "churn",
        {
            "vertex_ai_model_id": "churn_v2",
            "description": "Churn classifier",
            "labels": [("team", "growth")],
            "expiration_timestamp": "2030-01-01 00:00:00 UTC",
        },
    )
    assert altered["registry"]["vertex_ai_model_id"] == "churn_v2"
    assert altered["descriptive"]["description"] == "Churn classifier"
    assert altered["descriptive"]["labels"] == {"team": "growth"}
    assert altered["descriptive"]["expiration_timestamp"].startswith("2030-01-01T00:00:00")
    assert eng.predict("churn", binary(20, seed=3)).equals(before)  # the model itself is unchanged
    with pytest.raises(
        BqmlError, match="cannot change L2_REG; options BigQuery ML lets you change: VERTEX_AI_MODEL_ID"
    ):
        eng.alter_model("churn", {"l2_reg": 1.0})
    with pytest.raises(BqmlError, match="Vertex AI model ID"):
        eng.alter_model("churn", {"vertex_ai_model_id": "9lives"})
    with pytest.raises(ModelNotFoundError):
        eng.alter_model("nope", {"description": "x"})
    # ALTER MODEL … SET OPTIONS(vertex_ai_model_id=…) registers a model that was not registered
    eng.create_model("plain", {"model_type": "LINEAR_REG", "input_label_cols": ["revenue"]}, regression(100))
    assert (
        eng.alter_model("plain", {"vertex_ai_model_id": "revenue"})["registry"]["model_registry"]
        == "VERTEX_AI"
    )
