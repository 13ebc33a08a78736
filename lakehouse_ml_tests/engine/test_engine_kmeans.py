"""KMEANS: training, ML.PREDICT, ML.EVALUATE against scikit-learn, ML.DETECT_ANOMALIES."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

from lakehouse_ml.core.errors import BqmlError

from .engine_data import clusters, engine


@pytest.fixture
def eng(tmp_path):
    return engine(tmp_path)


def _standardized(frame: pd.DataFrame, reference: pd.DataFrame) -> np.ndarray:
    num = reference[["a", "b"]]
    Z = ((frame[["a", "b"]] - num.mean()) / num.std(ddof=1)).to_numpy()
    kinds = np.column_stack([(frame.kind == k).to_numpy() for k in ["x", "y", "z"]]).astype(float)
    return np.column_stack([Z, kinds])


def _distances(table) -> np.ndarray:
    rows = table.column("NEAREST_CENTROIDS_DISTANCE").to_pylist()
    out = np.full((len(rows), 3), np.nan)
    for i, row in enumerate(rows):
        for entry in row:
            out[i, entry["CENTROID_ID"] - 1] = entry["DISTANCE"]
    return out


def test_kmeans_finds_the_clusters_and_metrics_equal_sklearn(eng):
    frame = clusters(1500)
    eng.create_model(
        "seg",
        {"model_type": "KMEANS", "kmeans_init_method": "KMEANS++", "early_stop": False, "max_iterations": 50},
        frame,
    )
    meta = eng.model_metadata("seg")
    assert meta["options"]["num_clusters"] == 3  # default: log10(1500) rounded
    assert meta["data_split"]["evaluation_rows"] == 0  # k-means does not split
    prediction = eng.predict("seg", frame)
    labels = prediction.column("CENTROID_ID").to_numpy() - 1
    assert metrics.adjusted_rand_score(frame.kind, labels) == pytest.approx(1.0)

    X = _standardized(frame, frame)
    # Converged Lloyd iterations: each centroid is the mean of its rows, so the distances of
    # ML.PREDICT are the Euclidean distances to those means.
    means = np.stack([X[labels == j].mean(axis=0) for j in range(3)])
    expected = np.sqrt(((X[:, None, :] - means[None, :, :]) ** 2).sum(axis=2))
    np.testing.assert_allclose(_distances(prediction), expected, rtol=1e-9, atol=1e-12)

    for evaluated in (eng.evaluate("seg", None), eng.evaluate("seg", frame)):
        got = evaluated.to_pylist()[0]
        assert list(got) == ["davies_bouldin_index", "mean_squared_distance"]
        assert got["davies_bouldin_index"] == pytest.approx(metrics.davies_bouldin_score(X, labels), rel=1e-9)
        assert got["mean_squared_distance"] == pytest.approx(np.mean(expected.min(axis=1) ** 2), rel=1e-9)

    info = eng.training_info("seg").to_pandas()
    assert "eval_loss" not in info.columns and len(info) == 50
    last = info.sort_values("iteration").iloc[-1]
    assert [c["centroid_id"] for c in last.cluster_info] == [1, 2, 3]
    assert sum(c["cluster_size"] for c in last.cluster_info) == len(frame)


def test_detect_anomalies_normalized_distance_and_contamination(eng):
    frame = clusters(1200, seed=1)
    eng.create_model(
        "seg", {"model_type": "KMEANS", "num_clusters": 3, "kmeans_init_method": "KMEANS++"}, frame
    )
    info = eng.training_info("seg").to_pandas().sort_values("iteration").iloc[-1]
    radius = np.array([c["cluster_radius"] for c in info.cluster_info])
    probe = pd.concat(
        [frame.head(200), pd.DataFrame({"a": [40.0], "b": [-300.0], "kind": ["x"]})], ignore_index=True
    )
    out = eng.detect_anomalies("seg", probe, {"contamination": 0.1})
    assert out.column_names[:3] == ["is_anomaly", "normalized_distance", "CENTROID_ID"]
    d = _distances(eng.predict("seg", probe))
    normalized = d / radius[None, :]
    np.testing.assert_allclose(
        out.column("normalized_distance").to_numpy(), normalized.min(axis=1), rtol=1e-12
    )
    np.testing.assert_array_equal(out.column("CENTROID_ID").to_numpy(), normalized.argmin(axis=1) + 1)
    assert out.column("is_anomaly").to_pylist()[-1] is True  # the far-away point

    # CONTAMINATION is the share of the training data that is anomalous.
    for contamination in (0.0, 0.05, 0.2):
        flagged = (
            eng.detect_anomalies("seg", frame, {"contamination": contamination})
            .column("is_anomaly")
            .to_numpy(zero_copy_only=False)
        )
        assert flagged.mean() == pytest.approx(contamination, abs=0.002)


def test_custom_init_and_cosine_and_unstandardized(eng):
    frame = clusters(900, seed=2)
    first = frame.groupby("kind").head(1).index
    frame["init"] = frame.index.isin(first)
    eng.create_model(
        "custom",
        {
            "model_type": "KMEANS",
            "kmeans_init_method": "CUSTOM",
            "kmeans_init_col": "init",
            "num_clusters": 3,
        },
        frame,
    )
    labels = eng.predict("custom", frame).column("CENTROID_ID").to_numpy()
    assert metrics.adjusted_rand_score(frame.kind, labels) == pytest.approx(1.0)
    assert "init" not in [f["name"] for f in eng.model_metadata("custom")["feature_columns"]]
    with pytest.raises(BqmlError, match="TRUE rows but NUM_CLUSTERS is 4"):
        eng.create_model(
            "bad",
            {
                "model_type": "KMEANS",
                "kmeans_init_method": "CUSTOM",
                "kmeans_init_col": "init",
                "num_clusters": 4,
            },
            frame,
        )

    converged = {
        "early_stop": False,
        "max_iterations": 60,
        "num_clusters": 3,
        "kmeans_init_method": "KMEANS++",
    }
    eng.create_model(
        "cos", {"model_type": "KMEANS", "distance_type": "COSINE", **converged}, frame.drop(columns=["init"])
    )
    X = _standardized(frame, frame)
    out = eng.predict("cos", frame)
    labels = out.column("CENTROID_ID").to_numpy() - 1
    means = np.stack([X[labels == j].mean(axis=0) for j in range(3)])
    cos = (X @ means.T) / (np.linalg.norm(X, axis=1)[:, None] * np.linalg.norm(means, axis=1)[None, :])
    np.testing.assert_allclose(_distances(out), np.sqrt(np.clip(1 - cos, 0, None)), rtol=1e-7, atol=1e-9)

    # STANDARDIZE_FEATURES=FALSE: distances on the raw values.
    eng.create_model(
        "raw", {"model_type": "KMEANS", "standardize_features": False, **converged}, frame[["a", "b"]]
    )
    out = eng.predict("raw", frame[["a", "b"]])
    labels = out.column("CENTROID_ID").to_numpy() - 1
    raw = frame[["a", "b"]].to_numpy()
    means = np.stack([raw[labels == j].mean(axis=0) for j in range(3)])
    expected = np.sqrt(((raw[:, None, :] - means[None, :, :]) ** 2).sum(axis=2))
    np.testing.assert_allclose(_distances(out), expected, rtol=1e-9)


def test_floats_that_differ_in_their_last_bits_train_the_same_model(eng):
    """A warehouse that sums in parallel may return a feature a bit off from one run to the next;
    the seed of the random initialization must not change with it (nor the model, then)."""
    frame = clusters(800)
    nudged = frame.assign(
        a=np.nextafter(frame["a"].to_numpy(), np.inf), b=np.nextafter(frame["b"].to_numpy(), -np.inf)
    )
    assert (nudged["a"] != frame["a"]).all()
    options = {"model_type": "KMEANS", "num_clusters": 4, "kmeans_init_method": "RANDOM", "max_iterations": 3}
    eng.create_model("first", options, frame)
    eng.create_model("second", options, nudged)
    first, second = eng.evaluate("first", None).to_pylist()[0], eng.evaluate("second", None).to_pylist()[0]
    assert first == pytest.approx(second, rel=1e-9)
    assert (
        eng.predict("first", frame).column("CENTROID_ID").to_pylist()
        == eng.predict("second", frame).column("CENTROID_ID").to_pylist()
    )
