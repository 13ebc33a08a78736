"""The model registry seam: model versions and aliases with Vertex AI Model Registry semantics.

Two implementations: :class:`lakehouse_ml.backends.local_registry.LocalModelRegistry` (SQLite under
the local home) and the Vertex AI one (``google-cloud-aiplatform``). Assets only see
:class:`ModelRegistry`.

Semantics (each from the Vertex AI / BigQuery ML documentation):

* A model id holds versions ``"1"``, ``"2"``, … that increase and are never reused
  (https://cloud.google.com/vertex-ai/docs/model-registry/versioning).
* Version aliases are unique within a model; applying an alias that another version holds moves
  it ("If you apply an existing alias that is used in another model version, the alias is removed
  from that version"). The first version gets ``default`` and exactly one version carries it at
  all times (https://cloud.google.com/vertex-ai/docs/model-registry/model-alias).
* ``merge_version_aliases``: models.mergeVersionAliases — an alias prefixed with ``-`` is removed
  from the version; the pattern is ``[a-z][a-zA-Z0-9-]{0,126}[a-z-0-9]``; adding and removing the
  same alias in one request cancel out
  (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.models/mergeVersionAliases).
* ``delete_version``: models.deleteVersion — "Model version can only be deleted if there are no
  DeployedModels created from it. Deleting the only version in the Model is not allowed. Use
  models.delete for deleting the Model instead"
  (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.models/deleteVersion);
  "When you delete a model version assigned the default alias, the alias is automatically assigned
  to the next most recent version" (the model-alias page): deleting the ``default`` version moves
  ``default`` to the newest remaining version.
* ``CREATE OR REPLACE MODEL`` of a registered BigQuery ML model deletes its version and registers
  the new model (v1, v2 → v1, v3); while that version is deployed BigQuery refuses it, and
  ``DROP MODEL``, with FAILED_PRECONDITION (:mod:`lakehouse_ml.bigquery.registry`).
* BigQuery ML models with ``MODEL_REGISTRY='VERTEX_AI'`` register at CREATE MODEL under
  ``VERTEX_AI_MODEL_ID`` (default: the model name), with ``VERTEX_AI_MODEL_VERSION_ALIASES`` on
  the new version; ``ALTER MODEL … SET OPTIONS(vertex_ai_model_id=…)`` registers an existing
  model, as version 1 of a new id or as the latest version of an existing one; "Each BigQuery ML
  model can only be registered to one model_id" (https://cloud.google.com/bigquery/docs/update_vertex).
* ARIMA_PLUS models "can be registered in Model Registry, but they can't be deployed"
  (https://cloud.google.com/vertex-ai/docs/model-registry/model-registry-bqml).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from lakehouse_ml.bigquery.registry import (
    DEFAULT_ALIAS,
    VERTEX_ALIAS_DOC,
    VERTEX_ALIAS_PATTERN,
    VERTEX_MODEL_ID_PATTERN,
    vertex_region,
)
from lakehouse_ml.core.errors import (
    ModelNotRegisteredError,
    RegistryError,
)


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model (Vertex AI ``Model`` with its ``versionId``)."""

    model_id: str
    version_id: str
    aliases: list[str]
    display_name: str
    source: str  # "bqml://<dataset>.<model>" locally; the BigQuery model on gcp
    model_type: str
    artifact_uri: str
    labels: dict[str, str]
    metrics: dict[str, Any]
    create_time: str
    update_time: str
    deployable: bool
    # Where the version is deployed: endpoint resource names (the Model resource's deployedModels).
    deployments: tuple[str, ...] = ()

    @property
    def is_default(self) -> bool:
        return DEFAULT_ALIAS in self.aliases

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bqml_source(dataset: str, model: str) -> str:
    """The source of a version registered from a BigQuery ML model."""
    return f"bqml://{dataset}.{model}"


def check_model_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not VERTEX_MODEL_ID_PATTERN.match(model_id):
        raise RegistryError(
            f"Invalid model id {model_id!r}: a Vertex AI model ID has up to 63 characters from [a-z0-9_-] "
            "and does not start with a digit or a hyphen (for example 'churn_model')."
        )
    return model_id


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not VERTEX_ALIAS_PATTERN.match(alias):
        raise RegistryError(
            f"Invalid version alias {alias!r}: an alias has 2 to 128 characters, starts with a lower-case "
            "letter, then letters, digits or hyphens, and ends with a lower-case letter, a digit or a hyphen "
            f"(pattern [a-z][a-zA-Z0-9-]{{0,126}}[a-z-0-9], {VERTEX_ALIAS_DOC})."
        )
    return alias


def parse_merge(aliases: Iterable[str]) -> tuple[list[str], list[str]]:
    """mergeVersionAliases' list → (to add, to remove); an alias both added and removed cancels out."""
    if isinstance(aliases, str):
        raise RegistryError(f"Give the aliases as a list, for example [{aliases!r}], not a string.")
    add: list[str] = []
    remove: list[str] = []
    for raw in aliases:
        if isinstance(raw, str) and raw.startswith("-"):
            name = check_alias(raw[1:])
            if name not in remove:
                remove.append(name)
        else:
            name = check_alias(raw)
            if name not in add:
                add.append(name)
    both = set(add) & set(remove)
    return [a for a in add if a not in both], [r for r in remove if r not in both]


class ModelRegistry(abc.ABC):
    """Versions and aliases of registered models (Vertex AI Model Registry semantics).

    Versions of BigQuery ML models are created by ``CREATE MODEL … MODEL_REGISTRY='VERTEX_AI'``,
    not through this port: BigQuery registers them in Vertex AI itself, and locally the engine
    calls the local registry's ``register_version``, ``replace_bqml_version`` and
    ``drop_bqml_model`` (:class:`lakehouse_ml.engine.registry_hook.RegistryHook`), which only
    :class:`~lakehouse_ml.backends.local_registry.LocalModelRegistry` has.
    """

    @abc.abstractmethod
    def find_bqml_version(self, source: str) -> ModelVersion | None:
        """The current version registered from the BigQuery ML model ``source``, if any."""
        ...

    @abc.abstractmethod
    def get_version(self, model_id: str, version_or_alias: str = DEFAULT_ALIAS) -> ModelVersion: ...

    @abc.abstractmethod
    def list_versions(self, model_id: str) -> list[ModelVersion]: ...

    def latest_version(self, model_id: str) -> ModelVersion:
        """The newest version of ``model_id`` (the highest version id): the one a ``CREATE OR
        REPLACE MODEL`` with ``MODEL_REGISTRY='VERTEX_AI'`` has just registered."""
        versions = self.list_versions(model_id)
        if not versions:
            raise ModelNotRegisteredError(f"Model {model_id!r} has no versions in the registry.")
        return max(versions, key=lambda v: int(v.version_id))

    def find_alias(self, model_id: str, alias: str) -> ModelVersion | None:
        """The version holding ``alias``; None when no version holds it (or the model is missing)."""
        try:
            return self.get_version(model_id, alias)
        except ModelNotRegisteredError:
            return None

    @abc.abstractmethod
    def list_models(self) -> list[str]: ...

    @abc.abstractmethod
    def merge_version_aliases(
        self, model_id: str, version_id: str, aliases: Sequence[str]
    ) -> ModelVersion: ...

    @abc.abstractmethod
    def delete_version(self, model_id: str, version_id: str) -> None: ...

    @abc.abstractmethod
    def delete_model(self, model_id: str) -> None: ...

    @abc.abstractmethod
    def version_url(self, version: ModelVersion) -> str:
        """A link for the Dagster UI (the Vertex console on gcp, the local folder locally)."""
        ...

    def vertex_region(self, bigquery_location: str) -> str:
        return vertex_region(bigquery_location)
