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

Instances are JSON objects keyed by the model's feature columns (as for a BigQuery ML model
exported to a TensorFlow SavedModel and served by Vertex AI). For a model created with a
``TRANSFORM`` clause these are the TRANSFORM's input columns, as for ``ML.PREDICT``: the
endpoint applies the TRANSFORM (with its training statistics) itself, as the exported model's
preprocessing part does. ``parameters`` accepts ``threshold`` (binary classifiers, as
``ML.PREDICT``'s THRESHOLD).

Prediction objects: the output keys of BigQuery ML models served by Vertex AI (exported
models' serving signature, https://cloud.google.com/bigquery/docs/exporting-models), one object
per instance, with the values of ``ML.PREDICT`` on the same row:

* LINEAR_REG, BOOSTED_TREE_REGRESSOR, RANDOM_FOREST_REGRESSOR:
  ``predicted_<label>`` (number) — ML.PREDICT's ``predicted_<label>``.
* LOGISTIC_REG, BOOSTED_TREE_CLASSIFIER, RANDOM_FOREST_CLASSIFIER:
  ``predicted_<label>`` (the predicted class), ``<label>_probs`` (the class probabilities) and
  ``<label>_values`` (the classes, aligned with ``<label>_probs``) — ML.PREDICT's
  ``predicted_<label>`` and ``predicted_<label>_probs`` (``prob`` and ``label`` of each struct,
  in the same descending label order).
* KMEANS: ``nearest_centroid_id``, ``centroid_ids`` and ``centroid_distances`` (the
  ``min(num_clusters, 5)`` nearest centroids, nearest first) — ML.PREDICT's ``CENTROID_ID`` and
  ``NEAREST_CENTROIDS_DISTANCE`` (``CENTROID_ID`` and ``DISTANCE`` of each struct).

Modules: :mod:`.app` (the ASGI app, routing, traffic split, hot swap), :mod:`.models` (artifact
-> predictor), :mod:`.log` (the request-response log), :mod:`.server` (processes, pidfile).
"""
