"""One typed settings object, read from ``LAKEHOUSE_ML_*`` environment variables.

Nothing here runs at import time: call :func:`load_settings` (the Dagster definitions function
does, so a bad value fails at definitions load with a message that names the variable).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lakehouse_ml.core.identifiers import DATASET_ID_PATTERN, LOCATION_PATTERN, PROJECT_ID_PATTERN

ENV_PREFIX = "LAKEHOUSE_ML_"

# Google Cloud identifier rules (https://cloud.google.com/resource-manager/docs/creating-managing-projects,
# https://cloud.google.com/bigquery/docs/datasets#dataset-naming).

# One example value per variable: every error message shows one.
EXAMPLES: dict[str, str] = {
    "backend": "local",
    "home": "./.lakehouse_ml",
    "start_date": "2026-01-01",
    "days": "310",
    "seed": "42",
    "customers": "5000",
    "gcp_project": "my-analytics-project",
    "gcp_dataset": "lakehouse_ml",
    "bigquery_location": "US",
    "bigquery_api_endpoint": "https://bigquery.googleapis.com",
    "vertex_api_endpoint": "https://us-central1-aiplatform.googleapis.com",
    "monitoring_api_endpoint": "https://monitoring.googleapis.com",
    "request_log_grace_seconds": "600",
    "gcp_anonymous_credentials": "false",
    "serving_host": "127.0.0.1",
    "serving_port": "8765",
    "serving_token": "a-long-random-string",
    "schedules": "true",
    "retrain_cooldown_seconds": "3600",
}


class SettingsError(ValueError):
    """A setting is missing or malformed. The message names the variable and an example."""


class Settings(BaseModel):
    """Every knob of lakehouse_ml. Field ``x`` is read from ``LAKEHOUSE_ML_X``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    backend: Literal["local", "gcp"] = Field(
        "local", description="Which backend runs the work: the offline 'local' default or 'gcp'."
    )
    home: Path = Field(
        Path("./.lakehouse_ml"),
        description="Where local state lives: landing files, the DuckDB warehouse, the Dagster instance.",
    )
    # The simulated history. Daily partitions of the raw tables span exactly these days.
    start_date: dt.date = Field(
        dt.date(2026, 1, 1), description="First simulated day (daily partitions start here)."
    )
    days: int = Field(
        310, ge=1, le=3650, description="Number of simulated days (the demo drifts the last 154)."
    )
    seed: int = Field(42, ge=0, description="Seed of the Cymbal retail simulator.")
    customers: int = Field(5000, ge=10, description="Simulated customers (sets the scale).")

    # gcp backend
    gcp_project: str | None = Field(None, description="Google Cloud project id (required when backend=gcp).")
    gcp_dataset: str = Field("lakehouse_ml", description="BigQuery dataset that holds every table.")
    bigquery_location: str = Field("US", description="BigQuery location of the dataset and jobs.")
    bigquery_api_endpoint: str | None = Field(
        None, description="Override the BigQuery API endpoint (private service connect, or a test double)."
    )
    vertex_api_endpoint: str | None = Field(
        None, description="Override the Vertex AI API endpoint (private service connect, or a test double)."
    )
    monitoring_api_endpoint: str | None = Field(
        None,
        description="Override the Cloud Monitoring API endpoint (served prediction counts of Vertex AI endpoints).",
    )
    gcp_anonymous_credentials: bool = Field(
        False, description="Send no credentials (only for a local test double of the Google APIs)."
    )
    request_log_grace_seconds: int = Field(
        600,
        ge=0,
        le=86400,
        description="How long Vertex AI's request-response log rows may take to land in BigQuery: each monitoring "
        "report re-reads this much before its window (gcp backend; `lakehouse-ml gcp-check` measures the delay).",
    )

    # local endpoint server
    serving_host: str = Field(
        "127.0.0.1", description="Address the local endpoint server binds (loopback by default)."
    )
    serving_port: int = Field(8765, ge=1, le=65535, description="Port of the local endpoint server.")
    serving_token: str | None = Field(
        None,
        description="Optional bearer token: when set, the local endpoint server refuses calls without it (401).",
    )

    # automation
    schedules: bool = Field(
        True,
        description="Start the daily feature and hourly monitoring schedules and the drift retraining sensor as "
        "RUNNING (false: they start STOPPED; switch them on in the UI).",
    )
    retrain_cooldown_seconds: int = Field(
        3600, ge=0, description="Least time between two drift-triggered retraining runs of one model."
    )

    @field_validator("gcp_project")
    @classmethod
    def _project(cls, value: str | None) -> str | None:
        if value is not None and not PROJECT_ID_PATTERN.match(value):
            raise ValueError(
                "a project id is 6-30 lowercase letters, digits or hyphens, starting with a letter"
            )
        return value

    @field_validator("gcp_dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if not DATASET_ID_PATTERN.match(value):
            raise ValueError("a dataset id has only letters, digits and underscores")
        return value

    @field_validator("bigquery_location")
    @classmethod
    def _location(cls, value: str) -> str:
        if not LOCATION_PATTERN.match(value):
            raise ValueError("a BigQuery location is US, EU or a region such as us-central1")
        return value

    @field_validator("bigquery_api_endpoint", "vertex_api_endpoint", "monitoring_api_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+(:\d+)?(/.*)?$", value):
            raise ValueError("an API endpoint is an http(s) URL")
        return value

    @model_validator(mode="after")
    def _gcp_needs_project(self) -> "Settings":
        if self.backend == "gcp" and not self.gcp_project:
            raise ValueError("gcp_project: required when LAKEHOUSE_ML_BACKEND=gcp")
        return self

    # derived paths -----------------------------------------------------------------------------
    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def landing_dir(self) -> Path:
        return self.home_dir / "landing"

    @property
    def duckdb_path(self) -> Path:
        return self.home_dir / "warehouse.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home_dir / "dagster"

    @property
    def end_date(self) -> dt.date:
        """Last simulated day (inclusive)."""
        return self.start_date + dt.timedelta(days=self.days - 1)


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default: the process environment).

    Raises :class:`SettingsError` naming each bad variable with an example value.
    """
    if environ is None:
        environ = os.environ
    try:
        values = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in environ.items()
            if key.startswith(ENV_PREFIX)
        }
        return Settings.model_validate({k: v for k, v in values.items() if k in Settings.model_fields})
    except ValidationError as err:
        problems = []
        for error in err.errors():
            loc = [str(part) for part in error.get("loc", ()) if part != "__root__"]
            msg = error.get("msg", "invalid value")
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            field = loc[0] if loc else msg.split(":", 1)[0].strip()
            if field not in Settings.model_fields:
                field = "backend"
            if msg.startswith(field + ":"):
                msg = msg[len(field) + 1 :].strip()
            given = error.get("input")
            shown = f" (got {given!r})" if isinstance(given, (str, int, float)) and loc else ""
            problems.append(
                f"{_env_name(field)}: {msg}{shown}; example: {_env_name(field)}={EXAMPLES.get(field, '...')}"
            )
        raise SettingsError("Invalid lakehouse_ml settings:\n  " + "\n  ".join(problems)) from None
