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

import re
from collections.abc import Sequence

from lakehouse_ml.core.errors import RegistryError
from lakehouse_ml.core.identifiers import LOCATION_PATTERN

DEFAULT_ALIAS = "default"

# Registered but not deployable (model-registry-bqml page, "Limitations"; the local engine trains
# none of them, the registry still records them as BigQuery does).
NON_DEPLOYABLE_MODEL_TYPES = ("ARIMA_PLUS", "ARIMA_PLUS_XREG")

# BigQuery multi-regions → the Vertex AI region their models register in (the project's registry
# rule, docs/architecture.md "Registry rules"; no Google page found that states it); a region
# passes through.
MULTI_REGION_TO_VERTEX = {"US": "us-central1", "EU": "europe-west4"}

# Vertex AI alias pattern: models.mergeVersionAliases, field versionAliases[]: "The alias should be
# at most 128 characters, and match `[a-z][a-zA-Z0-9-]{0,126}[a-z-0-9]`".
VERTEX_ALIAS_DOC = (
    "https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.models/mergeVersionAliases"
)
# The GLM and k-means CREATE MODEL pages (VERTEX_AI_MODEL_ID) and VERTEX_ALIAS_DOC.
# "The VERTEX_AI_MODEL_ID value can have up to 63 characters, and valid characters are [a-z0-9_-].
# The first character cannot be a number or hyphen." (GLM_DOC / KMEANS_DOC, VERTEX_AI_MODEL_ID)
VERTEX_MODEL_ID_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,62}$")
# VERTEX_ALIAS_DOC: at most 128 characters, `[a-z][a-zA-Z0-9-]{0,126}[a-z-0-9]`.
VERTEX_ALIAS_PATTERN = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9-]$")


def deployed_model_message(endpoints: Sequence[str]) -> str:
    """BigQuery's answer to replacing or dropping a BigQuery ML model whose registry version is
    deployed (``endpoints``: the endpoints' resource names), as vertex-ai-samples PR #788 shows it."""
    return (
        "Model Registry failed: com.google.cloud.ai.platform.common.errors.AiPlatformException: "
        "code=FAILED_PRECONDITION, message=The Model is deployed or being deployed at the following Endpoint(s): "
        f"{', '.join(endpoints)}. Please undeploy the model before retry., cause=null"
    )


def vertex_region(bigquery_location: str) -> str:
    """The Vertex AI region of models registered from a BigQuery location (US → us-central1,
    EU → europe-west4; a region such as ``europe-west2`` passes through)."""
    if not isinstance(bigquery_location, str) or not bigquery_location:
        raise RegistryError(
            f"Invalid BigQuery location {bigquery_location!r}: use US, EU or a region such as us-central1."
        )
    mapped = MULTI_REGION_TO_VERTEX.get(bigquery_location.upper())
    if mapped:
        return mapped
    region = bigquery_location.lower()
    if not LOCATION_PATTERN.match(region):
        raise RegistryError(
            f"Invalid BigQuery location {bigquery_location!r}: use US, EU or a region such as us-central1."
        )
    return region
