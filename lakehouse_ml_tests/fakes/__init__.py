"""Local test doubles of the Google Cloud APIs that the real client libraries talk to over HTTP."""

from lakehouse_ml_tests.fakes.bigquery_api import (
    BigQueryApiError,
    FakeBigQueryApi,
    RecordedRequest,
    fake_bigquery_api,
)

__all__ = ["BigQueryApiError", "FakeBigQueryApi", "RecordedRequest", "fake_bigquery_api"]
