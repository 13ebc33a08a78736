"""``lakehouse-ml gcp-check`` against the BigQuery and Vertex AI test doubles: every step runs over
the wire with the real clients, the real responses are saved as golden fixtures that parse, the
request-log delay is measured, and nothing is left behind."""

from __future__ import annotations

import json

import pytest

from lakehouse_ml.bigquery import served
from lakehouse_ml.cli import main
from lakehouse_ml.gcp_check import run_gcp_check
from lakehouse_ml_tests.fakes import fake_bigquery_api
from lakehouse_ml_tests.fakes.vertex_api import fake_vertex_api
from lakehouse_ml_tests.local_chain import local_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PROJECT = "lakehouse-test"


def _env(bq, vertex) -> dict[str, str]:
    return dict(
        backend="gcp",
        gcp_project=PROJECT,
        gcp_anonymous_credentials="true",
        bigquery_api_endpoint=bq.url,
        vertex_api_endpoint=vertex.url,
        monitoring_api_endpoint=vertex.url,
    )


def test_the_check_runs_every_step_saves_fixtures_and_cleans_up(tmp_path):
    with (
        fake_bigquery_api() as bq,
        fake_vertex_api(bigquery=bq, log_delay_s=0.5, refuse_deletes_after_undeploy=1) as vertex,
    ):
        settings = local_settings(tmp_path / "home", **_env(bq, vertex))
        lines: list[str] = []
        report = run_gcp_check(
            settings,
            tmp_path / "captures",
            progress=lines.append,
            poll_s=0.1,
            log_timeout_s=30,
            stamp="20261202000000",
        )
        assert report.passed, report.table()
        steps = {step: (ok, detail) for step, ok, detail in report.steps}
        assert (
            steps["retrain while deployed"][0]
            and "the deployed version 1 stays" in steps["retrain while deployed"][1]
        )
        assert "FAILED_PRECONDITION" in steps["CREATE OR REPLACE of the deployed model"][1]
        # NULL: JSON null is refused by a TRANSFORM model (its NULLs are sentinels) — a finding.
        assert steps["JSON null, model with TRANSFORM"][1].startswith("refused")
        assert steps["KMEANS shape"] == (True, "as documented (every centroid in id order)")
        assert 0.4 <= report.log_delay_s < 30
        assert "LAKEHOUSE_ML_REQUEST_LOG_GRACE_SECONDS" in report.table()
        # Everything it made is gone: endpoints, models and their versions, the dataset.
        assert report.leftovers == []
        assert vertex.find_requests("DELETE", r".*/endpoints/\d+") and not vertex._endpoints
        assert not vertex._models
        assert (PROJECT, "lakehouse_ml_check_20261202000000") not in bq._engine.datasets
        # The endpoints logged into LAKEHOUSE_ML_GCP_DATASET (what the pipeline's do): the check
        # created it, so it deleted it again with its log tables.
        assert (
            bq.find_requests("POST", rf"/bigquery/v2/projects/{PROJECT}/datasets")
            and (PROJECT, "lakehouse_ml") not in bq._engine.datasets
        )
        assert any("retrying" in line for line in lines), "the drop right after the undeploy was retried"
    # The saved responses are golden fixtures: they parse and have the documented shape.
    assert sorted(p.name for p in report.fixtures) == [
        "kmeans_gcp_check_20261202000000.json",
        "logistic_reg_gcp_check_20261202000000.json",
    ]
    for path in report.fixtures:
        fixture = json.loads(path.read_text())
        assert fixture["source"].startswith(f"lakehouse-ml gcp-check in project {PROJECT}")
        fmt = served.PredictionFormat(fixture["model_type"], fixture["label"], fixture["label_type"])
        for prediction in fixture["response"]["predictions"]:
            assert fmt.problems(prediction) == []


def test_the_command_needs_the_gcp_backend(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "gcp-check"]) == 2
    assert "runs on the gcp backend" in capsys.readouterr().err
