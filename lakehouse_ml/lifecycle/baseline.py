"""The monitoring baseline of a registry version: its training rows with its predictions on them.

Saved when the version is registered (:func:`save_baseline`, table ``<model>_baseline_v<version>``:
``ML.PREDICT`` of the version's BigQuery ML model over the model's training query,
``sql/models/evaluation/labelled_predictions.sql``); the monitoring report compares served traffic
with it, and garbage collection drops it with the version's model.
"""

from __future__ import annotations

from lakehouse_ml.backends.warehouse import Warehouse
from lakehouse_ml.bigquery.sqlfiles import read_sql
from lakehouse_ml.bigquery.templates import bind_template
from lakehouse_ml.core.errors import RegistryError
from lakehouse_ml.core.identifiers import check_identifier
from lakehouse_ml.lifecycle.models import ModelSpec


def baseline_table(spec: ModelSpec, version_id: str) -> str:
    if not str(version_id).isdigit():
        raise RegistryError(f"Unexpected version id {version_id!r}: Vertex AI version ids are numbers.")
    return check_identifier(f"{spec.name}_baseline_v{version_id}", "table")


def save_baseline(warehouse: Warehouse, spec: ModelSpec, version_id: str, model: str) -> int:
    """Keep the training rows of a new version with the predictions of its BigQuery ML model
    ``model`` on them."""
    sql = bind_template(read_sql("models/evaluation/labelled_predictions.sql"), model, spec.training_query)
    return warehouse.write_query(baseline_table(spec, version_id), sql)
