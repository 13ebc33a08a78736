"""Settings: defaults, and a clear error naming the variable and an example for each bad value."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse_ml.core.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_local():
    settings = load_settings({})
    assert settings.backend == "local"
    assert settings.home == Path(".lakehouse_ml")
    assert settings.start_date == dt.date(2026, 1, 1) and settings.days == 310
    assert settings.end_date == dt.date(2026, 11, 6)
    assert settings.duckdb_path == Path(".lakehouse_ml").resolve() / "warehouse.duckdb"


def test_gcp_settings():
    settings = load_settings(
        {
            "LAKEHOUSE_ML_BACKEND": "gcp",
            "LAKEHOUSE_ML_GCP_PROJECT": "my-analytics-project",
            "LAKEHOUSE_ML_GCP_DATASET": "ml_lake",
            "LAKEHOUSE_ML_BIGQUERY_LOCATION": "EU",
            "LAKEHOUSE_ML_BIGQUERY_API_ENDPOINT": "http://127.0.0.1:9050",
            "UNRELATED": "ignored",
        }
    )
    assert (settings.gcp_project, settings.gcp_dataset, settings.bigquery_location) == (
        "my-analytics-project",
        "ml_lake",
        "EU",
    )
    assert settings.bigquery_api_endpoint == "http://127.0.0.1:9050"


@pytest.mark.parametrize(
    "env, variable, example",
    [
        ({"LAKEHOUSE_ML_BACKEND": "aws"}, "LAKEHOUSE_ML_BACKEND", "LAKEHOUSE_ML_BACKEND=local"),
        (
            {"LAKEHOUSE_ML_BACKEND": "gcp"},
            "LAKEHOUSE_ML_GCP_PROJECT",
            "LAKEHOUSE_ML_GCP_PROJECT=my-analytics-project",
        ),
        ({"LAKEHOUSE_ML_GCP_PROJECT": "Not_A_Project"}, "LAKEHOUSE_ML_GCP_PROJECT", "my-analytics-project"),
        (
            {"LAKEHOUSE_ML_GCP_DATASET": "has-dash"},
            "LAKEHOUSE_ML_GCP_DATASET",
            "LAKEHOUSE_ML_GCP_DATASET=lakehouse_ml",
        ),
        ({"LAKEHOUSE_ML_BIGQUERY_LOCATION": "mars"}, "LAKEHOUSE_ML_BIGQUERY_LOCATION", "=US"),
        ({"LAKEHOUSE_ML_START_DATE": "2026-13-01"}, "LAKEHOUSE_ML_START_DATE", "=2026-01-01"),
        ({"LAKEHOUSE_ML_DAYS": "many"}, "LAKEHOUSE_ML_DAYS", "LAKEHOUSE_ML_DAYS=310"),
        ({"LAKEHOUSE_ML_DAYS": "0"}, "LAKEHOUSE_ML_DAYS", "LAKEHOUSE_ML_DAYS=310"),
        ({"LAKEHOUSE_ML_VERTEX_API_ENDPOINT": "not a url"}, "LAKEHOUSE_ML_VERTEX_API_ENDPOINT", "https://"),
    ],
)
def test_bad_settings_name_the_variable_and_an_example(env, variable, example):
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert variable in str(info.value) and example in str(info.value)


def test_several_problems_are_reported_together():
    with pytest.raises(SettingsError) as info:
        load_settings({"LAKEHOUSE_ML_DAYS": "x", "LAKEHOUSE_ML_SEED": "-1"})
    assert "LAKEHOUSE_ML_DAYS" in str(info.value) and "LAKEHOUSE_ML_SEED" in str(info.value)


def _validate(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAKEHOUSE_ML_")}
    return subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "lakehouse_ml.definitions"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_dagster_definitions_validate(tmp_path):
    result = _validate({"LAKEHOUSE_ML_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


@pytest.mark.slow
def test_bad_setting_fails_definitions_load_with_the_variable(tmp_path):
    result = _validate({"LAKEHOUSE_ML_BACKEND": "azure", "DAGSTER_HOME": str(tmp_path)})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "LAKEHOUSE_ML_BACKEND" in output and "LAKEHOUSE_ML_BACKEND=local" in output
