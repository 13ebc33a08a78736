"""The local endpoint server: one process serving every local endpoint in Vertex AI's
prediction REST format.

Request (``PredictionService.Predict``, https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.endpoints/predict)::

    POST /v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict
    {"instances": [{...}, ...], "parameters": {...}}

Response (``PredictResponse``, https://cloud.google.com/vertex-ai/docs/reference/rest/v1/PredictResponse)::

    {"predictions": [...], "deployedModelId": "...",
     "model": "projects/{p}/locations/{l}/models/{model_id}", "modelVersionId": "...",
     "modelDisplayName": "..."}

Errors use Google's JSON error shape (``google.rpc.Status`` over REST, https://cloud.google.com/apis/design/errors)::

    {"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}

Instances are JSON objects keyed by the model's feature columns. For a model created with a
``TRANSFORM`` clause these are the TRANSFORM's input columns, as for ``ML.PREDICT``: the
endpoint applies the TRANSFORM (with its training statistics) itself, and NULL is sent as the
documented sentinel of the input's type. ``parameters`` accepts ``threshold`` (binary classifiers,
as ``ML.PREDICT``'s THRESHOLD).

Prediction objects have the shape Vertex AI gives a BigQuery ML model of that type (the export
serving signature: ``predicted_<label>`` a one-element list, classes as STRINGs, every k-means
centroid in id order), built by :mod:`lakehouse_ml.bigquery.served`, with the values of
``ML.PREDICT`` on the same row. ``docs/serving-format.md`` is the table, with its sources.

Modules: :mod:`.app` (the ASGI app, routing, traffic split, hot swap), :mod:`.models` (artifact
-> predictor), :mod:`.log` (the request-response log), :mod:`.server` (processes, pidfile).
"""
