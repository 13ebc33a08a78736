"""The monitoring report of the served churn model on the local backend, window by window.

A small chain is materialized (data, models, registry, endpoint); then traffic goes through the
real endpoint server, and each report is checked against independent computations: feature drift
against ``validate_data_drift`` of the logged instances, performance against scikit-learn's ROC AUC
of the served rows whose labels arrived, the window bookkeeping, the HTML report, and the Dagster
asset's ``feature_drift`` check.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lakehouse_ml.backends import build_endpoints, build_registry, build_request_log, build_warehouse
from lakehouse_ml.bigquery.drift import validate_data_drift
from lakehouse_ml.bigquery.sqlfiles import read_sql
from lakehouse_ml.definitions import build_definitions, reports_dir
from lakehouse_ml.lifecycle import deployment, models, traffic
from lakehouse_ml.lifecycle.monitoring import monitor as mon
from lakehouse_ml_tests.local_chain import materialized_chain

SPEC = models.CHURN_MODEL
FEATURES_SQL = read_sql("serving/churn_model.sql")
LABELLED = "(SELECT MAX(snapshot_date) FROM customer_features WHERE churned IS NOT NULL)"
# The newest labelled snapshot: its label has "arrived", so served predictions on it get scored.
LABELLED_SQL = FEATURES_SQL.replace("(SELECT MAX(snapshot_date) FROM customer_features)", LABELLED)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    yield from materialized_chain(tmp_path_factory.mktemp("monitor_home"), days=130, customers=600, seed=5)


def _send(settings, rows: list[dict]) -> None:
    url, token = traffic.endpoint_predict_url(build_endpoints(settings), "churn_model")
    report = traffic.send_traffic(url, rows, count=len(rows) // 4, rate=None, batch_size=4, token=token)
    assert report.failed == 0, report.summary()


def _monitor(settings):
    return mon.monitor(
        build_warehouse(settings),
        build_registry(settings),
        build_endpoints(settings),
        build_request_log(settings),
        SPEC,
        reports_dir(settings),
    )


def test_windows_drift_performance_and_report(served, monkeypatch):
    settings, _ = served
    warehouse = build_warehouse(settings)

    # 1. Only the deployment's smoke test has been served: too few rows to judge, and the report
    # says what to do.
    first = _monitor(settings)
    assert 0 < first.study_rows < 100
    assert not first.judged and first.status == "NOT JUDGED"
    assert "fewer than the 100 needed" in first.note and "lakehouse-ml traffic" in first.note
    assert first.window_end - first.window_start == mon.FIRST_WINDOW

    # 2. Labelled rows through the endpoint: judged, no drift, performance scored.
    labelled = warehouse.query(LABELLED_SQL)
    rows = deployment.to_instances(SPEC, warehouse.query_arrow(LABELLED_SQL))
    rows = rows[: len(rows) // 4 * 4]
    assert len(rows) >= 120
    _send(settings, rows)
    second = _monitor(settings)
    assert second.window_start == first.window_end  # the window since the previous report
    assert second.judged and second.study_rows == len(rows)
    assert second.version.version_id == "1"

    baseline = warehouse.query(f"SELECT * FROM {mon.baseline_table(SPEC, '1')}")
    features = list(labelled.columns)
    expected = validate_data_drift(
        baseline[features],
        pd.DataFrame(rows)[features],
        {"thresholds": list(SPEC.serving.drift_thresholds)},
    ).set_index("input")
    got = second.drift.set_index("input")
    assert sorted(got.index) == sorted(expected.index) == sorted(features)
    np.testing.assert_allclose(
        got.loc[features, "value"].astype(float), expected.loc[features, "value"].astype(float), rtol=1e-9
    )
    np.testing.assert_allclose(
        got.loc[features, "threshold"].astype(float), expected.loc[features, "threshold"].astype(float)
    )
    assert got.loc["share_store", "threshold"] == 0.15 and got.loc["age", "threshold"] == 0.3
    assert not second.drifted

    # Prediction drift: the served probabilities against the version's on its evaluation split
    # (SEQ on snapshot_ts: the newest 20% of the training rows, whole snapshots).
    assert set(second.prediction_drift["input"]) == {"churned_probability", "predicted_churned"}
    evaluation, how = mon.evaluation_rows(SPEC, baseline)
    cut = baseline["snapshot_ts"].sort_values().iloc[len(baseline) - round(0.2 * len(baseline))]
    assert (evaluation["snapshot_ts"] >= cut).all() and len(evaluation) == (
        baseline["snapshot_ts"] >= cut
    ).sum()
    assert 0 < len(evaluation) < len(baseline) and how.startswith("the evaluation split (SEQ on snapshot_ts")
    served_probs = [
        next(
            p for v, p in zip(json.loads(t)["churned_values"], json.loads(t)["churned_probs"]) if v == "true"
        )
        for t in build_endpoints(settings).request_log("churn_model", second.window_start, second.window_end)[
            "prediction"
        ]
    ]
    eval_probs = [
        next(p["prob"] for p in row if p["label"] is True) for row in evaluation["predicted_churned_probs"]
    ]
    expected_prediction = validate_data_drift(
        pd.DataFrame({"churned_probability": eval_probs}), pd.DataFrame({"churned_probability": served_probs})
    )
    got_prediction = second.prediction_drift.set_index("input").loc["churned_probability", "value"]
    assert got_prediction == pytest.approx(float(expected_prediction["value"].iloc[0]), rel=1e-9)

    # Performance: scikit-learn's ROC AUC over the sent rows whose features identify exactly one
    # labelled snapshot row (their label has arrived).
    truth = warehouse.query(read_sql("monitoring/churn_model_ground_truth.sql"))
    key = lambda frame: [
        tuple(r)
        for r in frame[features]
        .astype(object)
        .where(frame[features].notna(), None)
        .itertuples(index=False, name=None)
    ]  # noqa: E731
    counts = Counter(key(truth))
    label_of = dict(zip(key(truth), truth["churned"]))
    predicted = warehouse.query(
        f"SELECT * FROM ML.PREDICT(MODEL {models.newest_model(warehouse, SPEC)}, ({LABELLED_SQL}))"
    )
    sent = set(key(pd.DataFrame(rows)))
    scores, labels = [], []
    for k, probs in zip(key(predicted), predicted["predicted_churned_probs"]):
        if counts[k] == 1 and k in sent:
            scores.append(next(p["prob"] for p in probs if p["label"] is True or p["label"] == "true"))
            labels.append(bool(label_of[k]))
    assert len(scores) > 100
    perf = second.performance
    assert list(perf["metric"]) == ["roc_auc"] and list(perf["rows"]) == [len(scores)]
    assert perf["window_end"].iloc[0] == pd.Timestamp(second.window_end)
    assert perf["value"].iloc[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)

    html = second.report_path.read_text()
    assert html.count("data:image/png;base64,") >= 2 and "churn_model" in html

    # 3. The channel mix jumps to the store: share_store drifts; those rows have no labels.
    drifted = [
        {**r, "share_store": 1.0, "share_web": 0.0, "share_app": 0.0, "share_mobile": 0.0} for r in rows
    ]
    _send(settings, drifted)
    third = _monitor(settings)
    assert third.window_start == second.window_end and third.study_rows == len(drifted)
    assert third.status == "DRIFT" and "share_store" in third.drifted
    assert third.max_ratio > 1
    # The trend keeps the scored window. In the drifted one only the rows that still equal one
    # labelled row (customers who already bought only in stores) have a label.
    still_labelled = sum(1 for k in key(pd.DataFrame(drifted)) if counts[k] == 1)
    assert 20 <= still_labelled < len(drifted) / 2
    assert list(third.performance["window_end"]) == [
        pd.Timestamp(second.window_end),
        pd.Timestamp(third.window_end),
    ]
    assert list(third.performance["rows"]) == [len(scores), still_labelled]

    # 4. The trend keeps the newest TREND_WINDOWS windows (here 2): the scored window drops out.
    monkeypatch.setattr(mon, "TREND_WINDOWS", 2)
    fourth = _monitor(settings)
    assert fourth.study_rows == 0 and not fourth.judged
    assert list(fourth.performance["window_end"]) == [pd.Timestamp(third.window_end)]

    windows = json.loads((reports_dir(settings) / "churn_model" / "monitoring" / "windows.json").read_text())
    assert [w["rows"] for w in windows] == [first.study_rows, len(rows), len(drifted), 0]
    assert all(
        dt.datetime.fromisoformat(a["end"]) == dt.datetime.fromisoformat(b["start"])
        for a, b in zip(windows, windows[1:])
    )


def test_the_asset_check_fails_naming_the_feature(served):
    settings, instance = served
    rows = deployment.to_instances(SPEC, build_warehouse(settings).query_arrow(LABELLED_SQL))
    drifted = [
        {**r, "share_store": 1.0, "share_web": 0.0, "share_app": 0.0, "share_mobile": 0.0} for r in rows
    ]
    _send(settings, drifted[: len(drifted) // 4 * 4])
    definitions = build_definitions(settings)
    result = dg.materialize(
        list(definitions.assets),
        instance=instance,
        resources=definitions.resources,
        selection="churn_model_monitoring",
        raise_on_error=False,
    )
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "feature_drift" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert "share_store" in check.description
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert "share_store" in metadata["feature_drift"].value
    values = {d["input"]: d for d in metadata["drift_values"].value}
    assert values["share_store"]["value"] > values["share_store"]["threshold"] == 0.15
    assert str(metadata["report"].value).endswith(".html")


def test_kmeans_report_watches_cluster_shares_and_distances(served):
    """customer_segments_model serves too: its report compares the served clusters and distances
    with the version's predictions on its training rows, and says there are no labels to score."""
    settings, _ = served
    spec = models.CUSTOMER_SEGMENTS_MODEL
    warehouse, endpoints = build_warehouse(settings), build_endpoints(settings)
    # A TRANSFORM model: NULLs go as the documented sentinels.
    rows = traffic.serving_instances(warehouse, spec.name)
    assert len(rows) >= 100
    url, token = traffic.endpoint_predict_url(endpoints, spec.serving.endpoint)
    report = traffic.send_traffic(url, rows, count=len(rows), rate=None, batch_size=1, token=token)
    assert report.failed == 0, report.summary()
    result = mon.monitor(
        warehouse, build_registry(settings), endpoints, endpoints, spec, reports_dir(settings)
    )
    assert result.judged and result.study_rows >= len(rows)
    assert "k-means models have no evaluation split" in result.prediction_baseline
    assert result.performance.empty

    # Independently: the served answers from the log against ML.PREDICT on the training rows.
    log = endpoints.request_log(spec.serving.endpoint, result.window_start, result.window_end)
    answers = [json.loads(p) if isinstance(p, str) else p for p in log["prediction"]]
    baseline = warehouse.query(f"SELECT * FROM {mon.baseline_table(spec, '1')}")
    expected = validate_data_drift(
        pd.DataFrame(
            {
                "centroid_id": baseline["CENTROID_ID"].astype(str),
                "nearest_centroid_distance": [
                    min(d["DISTANCE"] for d in n) for n in baseline["NEAREST_CENTROIDS_DISTANCE"]
                ],
            }
        ),
        pd.DataFrame(
            {
                "centroid_id": [str(a["nearest_centroid_id"][0]) for a in answers],
                "nearest_centroid_distance": [min(a["centroid_distances"]) for a in answers],
            }
        ),
        {"numerical_default_threshold": 0.3, "categorical_default_threshold": 0.3},
    )
    got = result.prediction_drift.set_index("input")
    for row in expected.itertuples():
        assert got.loc[row.input, "value"] == pytest.approx(row.value, abs=1e-12), row.input
    # The same customers as the training snapshot: the served clusters hardly move.
    assert got.loc["centroid_id", "metric"] == "L_INFTY" and got.loc["centroid_id", "value"] < 0.1
    html = result.report_path.read_text()
    assert "no labels to score" in html and "nearest_centroid_distance" in html
