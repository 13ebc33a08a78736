"""The request-response log's schema, one row per logged instance, as both backends write it.

Vertex AI's request-response logging writes each request to a BigQuery table; the local endpoint
server writes the same columns as Parquet files. Monitoring reads either through this one schema:

* ``endpoint_id``, ``deployed_model_id``, ``model_id``, ``model_version_id`` (STRING);
* ``logging_time`` (TIMESTAMP, UTC) and ``request_id`` (STRING, one per HTTP request; the
  instance's position in the request is ``instance_index``);
* the instance's features, one column each under the feature's name (numbers as DOUBLE, others
  as their JSON type), see :func:`feature_array`;
* ``prediction``: the prediction object as a JSON string.
"""

from __future__ import annotations

import json

import pyarrow as pa

LOG_COLUMNS = (
    "endpoint_id",
    "deployed_model_id",
    "model_id",
    "model_version_id",
    "logging_time",
    "request_id",
    "instance_index",
    "prediction",
)


def feature_array(values: list) -> pa.Array:
    """One feature's logged values as a column: numbers as DOUBLE, booleans as BOOL, strings as
    STRING, anything else as its JSON text."""
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds == {bool}:
        return pa.array(values, pa.bool_())
    if kinds == {str} or not kinds:
        return pa.array(values, pa.string())
    return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
