"""BigQuery and BigQuery ML semantics that both backends share.

Nothing here talks to a service or to the local engine: these modules say what BigQuery ML and
Vertex AI define (the shape of a served prediction, how NULL is sent to a served model), so the
lifecycle code, the local endpoint server and the gcp backend all follow one definition.

* :mod:`.served` — the export serving signature of BigQuery ML models on Vertex AI endpoints:
  building, encoding and parsing served predictions and instances.
"""
