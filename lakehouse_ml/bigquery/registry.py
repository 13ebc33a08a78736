"""How BigQuery ML and the Vertex AI Model Registry behave together (both backends follow it).

* ``CREATE OR REPLACE MODEL`` of a registered BigQuery ML model: "the existing Model Registry model
  version is deleted and replaced with the new model" (v1, v2 → v1, v3), and a model "registered in
  the Model Registry and deployed to an endpoint" must be undeployed before it is deleted ("Manage
  BigQuery ML models in Vertex AI", https://cloud.google.com/bigquery/docs/managing-models-vertex).
  BigQuery refuses the statement with the error of :func:`deployed_model_message` (seen by
  GoogleCloudPlatform/vertex-ai-samples PR #788, whose fix was a unique model name per run). The
  same holds for ``DROP MODEL``.
* Deleting the version that holds ``default`` moves ``default``: "When you delete a model version
  assigned the default alias, the alias is automatically assigned to the next most recent version"
  (https://cloud.google.com/vertex-ai/docs/model-registry/model-alias). A deleted version's other
  aliases go with it.
"""

from __future__ import annotations

from collections.abc import Sequence


def deployed_model_message(endpoints: Sequence[str]) -> str:
    """BigQuery's answer to replacing or dropping a BigQuery ML model whose registry version is
    deployed (``endpoints``: the endpoints' resource names), as vertex-ai-samples PR #788 shows it."""
    return (
        "Model Registry failed: com.google.cloud.ai.platform.common.errors.AiPlatformException: "
        "code=FAILED_PRECONDITION, message=The Model is deployed or being deployed at the following Endpoint(s): "
        f"{', '.join(endpoints)}. Please undeploy the model before retry., cause=null"
    )
