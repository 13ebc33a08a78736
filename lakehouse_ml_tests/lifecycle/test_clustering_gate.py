"""The pieces of the k-means gate and smoke test that need no stack: scoring two clusterings of
the same rows in one feature space, the columns k-means clusters on, and the checks of a served
k-means answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import davies_bouldin_score

from lakehouse_ml.lifecycle import deployment, models


def _blobs(seed: int = 5) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    truth = rng.integers(0, 3, 600)
    points = centres[truth] + rng.normal(scale=1.0, size=(600, 2))
    frame = pd.DataFrame({"a": points[:, 0] * 100.0, "b": points[:, 1]})  # different scales
    return frame, truth


def test_cluster_scores_are_scikit_learns_davies_bouldin_on_the_standardized_rows():
    frame, truth = _blobs()
    shuffled = np.random.default_rng(0).permutation(truth)
    scores = deployment.cluster_scores(frame, {"good": truth + 1, "random": shuffled})
    standardized = ((frame - frame.mean()) / frame.std()).to_numpy()
    assert scores["good"]["davies_bouldin_index"] == pytest.approx(
        davies_bouldin_score(standardized, truth), rel=1e-9
    )
    assert scores["random"]["davies_bouldin_index"] == pytest.approx(
        davies_bouldin_score(standardized, shuffled), rel=1e-9
    )
    assert scores["good"]["davies_bouldin_index"] < 0.5 < 5 < scores["random"]["davies_bouldin_index"]
    assert scores["good"]["clusters"] == 3


def test_cluster_scores_one_hot_encode_categories_and_impute_nulls():
    frame = pd.DataFrame(
        {"x": [0.0, 0.1, np.nan, 5.0, 5.1, 5.2], "channel": ["web", "web", None, "store", "store", "store"]}
    )
    labels = np.array([1, 1, 1, 2, 2, 2])
    scores = deployment.cluster_scores(frame, {"v": labels})
    # BigQuery ML standardizes with the mean and standard deviation of the non-NULL values (those
    # ML.FEATURE_INFO reports); a NULL becomes the mean, 0 after standardizing.
    x = (frame["x"] - frame["x"].mean()) / frame["x"].std()
    design = np.column_stack(
        [x.fillna(0.0), frame["channel"] == "store", frame["channel"] == "web", frame["channel"].isna()]
    ).astype(float)
    assert scores["v"]["davies_bouldin_index"] == pytest.approx(
        davies_bouldin_score(design, labels), rel=1e-9
    )


def test_one_cluster_has_no_davies_bouldin_index():
    frame, _ = _blobs()
    scores = deployment.cluster_scores(frame, {"one": np.ones(len(frame), dtype=int)})
    assert np.isnan(scores["one"]["davies_bouldin_index"]) and scores["one"]["clusters"] == 1


def test_cluster_columns_are_the_transform_outputs():
    segments = models.CUSTOMER_SEGMENTS_MODEL
    raw = [
        "recency_days",
        "frequency_orders",
        "monetary_total",
        "avg_order_value",
        "distinct_categories",
        "share_app",
    ]
    assert deployment.cluster_feature_columns(segments, raw) == [
        "log_recency_days",
        "log_frequency_orders",
        "log_monetary_total",
        "log_avg_order_value",
        "distinct_categories",
        "share_app",
    ]
    anomalies = models.TRANSACTION_ANOMALY_MODEL
    assert deployment.cluster_feature_columns(anomalies, ["channel", "n_lines"]) == ["channel", "n_lines"]


@pytest.mark.parametrize(
    ("prediction", "problem"),
    [
        # The export serving signature: every centroid (customer_segments_model has 5) in id order.
        (
            {
                "nearest_centroid_id": [2],
                "centroid_ids": [1, 2, 3, 4, 5],
                "centroid_distances": [1.5, 0.5, 2, 3, 4],
            },
            None,
        ),
        (
            {
                "nearest_centroid_id": [1],
                "centroid_ids": [1, 2, 3, 4, 5],
                "centroid_distances": [1.5, 0.5, 2, 3, 4],
            },
            "not the nearest",
        ),
        (
            {
                "nearest_centroid_id": [2],
                "centroid_ids": [2, 1, 3, 4, 5],
                "centroid_distances": [0.5, 1.5, 2, 3, 4],
            },
            "id order",
        ),
        (
            {
                "nearest_centroid_id": [2],
                "centroid_ids": [1, 2, 3, 4, 5],
                "centroid_distances": [1.5, -0.1, 2, 3, 4],
            },
            "negative",
        ),
        ({"nearest_centroid_id": [2], "centroid_ids": [1, 2], "centroid_distances": [1.5, 0.5]}, "1..5"),
        ({"nearest_centroid_id": [2], "centroid_ids": [1, 2, 3, 4, 5]}, "no centroid_distances"),
    ],
)
def test_a_served_kmeans_answer_is_checked(prediction, problem):
    problems: list[str] = []
    deployment._check_predictions(
        models.CUSTOMER_SEGMENTS_MODEL, [{}], {"predictions": [prediction]}, problems
    )
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


def test_the_kmeans_gate_compares_davies_bouldin_only():
    spec = models.ModelSpec(
        name="customer_segments_model",
        description="",
        evaluation=models.Evaluation.CLUSTERING,
        gate=models.Gate(metric="mean_squared_distance", direction="lower"),
        serving=models.Serving(endpoint="customer_segments_model"),
    )
    with pytest.raises(ValueError, match="compares davies_bouldin_index, not 'mean_squared_distance'"):
        deployment._clustering_gate(
            None, spec, "candidate", "serving", pd.DataFrame(), deployment.GateResult(True, "", "", "", "1")
        )
