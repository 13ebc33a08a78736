"""The request-response log seam: what an endpoint answered, one row per logged instance, in the
schema of :mod:`lakehouse_ml.bigquery.request_log`.

Two implementations: the local endpoint server's Parquet files
(:class:`lakehouse_ml.backends.local_endpoints.LocalEndpoints`) and Vertex AI's request-response
logging to BigQuery (:class:`lakehouse_ml.backends.vertex.VertexEndpoints`). On both backends the
endpoints' object keeps its own log, so the same object implements both ports; monitoring only
sees this one.
"""

from __future__ import annotations

import abc
import datetime as dt

import pandas as pd


class RequestLog(abc.ABC):
    """Read what endpoints answered, and what tells a broken log from no traffic."""

    @abc.abstractmethod
    def request_log(self, endpoint: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
        """The request-response log of ``endpoint`` for ``start <= logging_time < end`` (UTC): one
        row per logged instance with ``endpoint_id``, ``deployed_model_id``, ``model_id``,
        ``model_version_id``, ``logging_time``, ``request_id``, the instance's features as
        columns, and ``prediction`` (the prediction object as JSON text)."""
        ...

    def request_log_grace_seconds(self) -> float:
        """How long a request-response log row may take to land after its ``logging_time``:
        monitoring re-reads this much before each window."""
        return 0.0

    def served_predictions(self, endpoint: str, start: dt.datetime, end: dt.datetime) -> int | None:
        """How many predictions the endpoint answered in ``[start, end)``, from a source other than
        its request log (None when the backend has none): what tells a broken log from no traffic."""
        return None

    def request_log_exists(self, endpoint: str) -> bool | None:
        """Whether the endpoint's request-response log exists (None when the backend cannot tell,
        or writes it itself)."""
        return None
