"""What a Google API error says, read the same way by the BigQuery warehouse and the Vertex AI
backend: its canonical status, its text, BigQuery's per-error messages and the job it came from.

The functions only read attributes of ``google.api_core.exceptions.GoogleAPICallError``; the Google
client is imported for type checking only, so this module loads without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.api_core import exceptions as google_exceptions


def error_status(err: google_exceptions.GoogleAPICallError) -> str:
    """Google's canonical status (``NOT_FOUND``, ``FAILED_PRECONDITION``…) of an API error."""
    response = getattr(err, "response", None)
    if response is not None:
        try:
            status = response.json().get("error", {}).get("status")
            if status:
                return str(status)
        except Exception:
            pass
    code = getattr(err, "grpc_status_code", None)
    return getattr(code, "name", "") or type(err).__name__.upper()


def error_text(err: google_exceptions.GoogleAPICallError) -> str:
    """The error's message, without the status code the client puts before it."""
    return str(getattr(err, "message", "") or err).strip()


def error_messages(err: google_exceptions.GoogleAPICallError) -> str:
    """BigQuery's messages of the error (its ``errors`` list, each once), else its message without
    the job location the client appends."""
    messages: list[str] = []
    for item in getattr(err, "errors", None) or []:
        text = item.get("message") if isinstance(item, dict) else str(item)
        if text and text not in messages:
            messages.append(text)
    if not messages:
        messages.append(str(getattr(err, "message", "") or err).split("\n\nLocation:")[0])
    return "; ".join(messages)


def job_note(err: google_exceptions.GoogleAPICallError, default_location: str) -> str:
    """`` (job project:location.id)`` for an error of a BigQuery job, else ``""``."""
    job = getattr(err, "query_job", None)
    if job is not None and getattr(job, "job_id", None):
        return f" (job {job.project}:{job.location or default_location}.{job.job_id})"
    return ""
