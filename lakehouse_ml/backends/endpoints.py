"""The endpoints seam: Vertex AI endpoints and their deployed models.

Two implementations: :class:`lakehouse_ml.backends.local_endpoints.LocalEndpoints` (state in the
local registry's SQLite file, predictions from the local endpoint server :mod:`lakehouse_ml.serving`)
and a Vertex AI one. Semantics follow Vertex AI:

* An endpoint holds deployed models, each with an id (``deployedModelId``) and a traffic share;
  the shares of an endpoint with deployed models sum to 100.
* ``deploy(..., traffic_percentage=p)`` gives the new model ``p`` % and scales the others to fill
  the rest (the first model deployed gets 100 %); ``traffic_split`` sets the whole split instead,
  with the key ``"0"`` for the model being deployed.
* ``undeploy`` of a model that takes traffic hands its share to the others proportionally.
* ``predict`` answers like ``PredictionService.Predict``: ``predictions``, ``deployedModelId``,
  ``model`` and ``modelVersionId``.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence


class Endpoints(abc.ABC):
    """Create endpoints, deploy model versions with a traffic split, predict."""

    @abc.abstractmethod
    def create_endpoint(self, display_name: str, endpoint_id: str | None = None) -> dict[str, Any]: ...

    @abc.abstractmethod
    def get_endpoint(self, endpoint: str) -> dict[str, Any] | None:
        """The endpoint (by id or display name): ``endpoint_id``, ``display_name``,
        ``deployed_models`` (list of dicts) and ``traffic_split``; None when missing."""
        ...

    @abc.abstractmethod
    def deploy(
        self,
        endpoint: str,
        model_id: str,
        version_id: str,
        artifact_uri: str,
        *,
        traffic_percentage: int | None = None,
        traffic_split: Mapping[str, int] | None = None,
        machine_type: str | None = None,
        logging_sampling_rate: float = 1.0,
    ) -> str:
        """Deploy a model version; returns its deployed model id."""
        ...

    @abc.abstractmethod
    def undeploy(self, endpoint: str, deployed_model_id: str) -> None: ...

    @abc.abstractmethod
    def delete_endpoint(self, endpoint: str) -> None:
        """Delete an endpoint that has nothing deployed (refused otherwise)."""
        ...

    @abc.abstractmethod
    def set_traffic_split(self, endpoint: str, traffic_split: Mapping[str, int]) -> None: ...

    @abc.abstractmethod
    def predict(
        self, endpoint: str, instances: Sequence[Any], parameters: Mapping[str, Any] | None = None
    ) -> dict[str, Any]: ...

    def console_url(self, endpoint_id: str) -> str | None:
        """A link to the endpoint for the Dagster UI (None when there is none)."""
        return None

    @abc.abstractmethod
    def predict_target(self, endpoint: str) -> tuple[str, str | None]:
        """The full ``…:predict`` URL of an endpoint (by id or display name) and the bearer token to
        send with it (None when none is needed): what a website or ``lakehouse-ml traffic`` calls."""
        ...


class LocalServing(abc.ABC):
    """Endpoints served by a process on this machine (the local endpoint server), which the
    backend starts and stops. A cloud's deployments serve by themselves: its endpoints are not
    :class:`LocalServing`, and :func:`ensure_serving` and :func:`stop_serving` do nothing there."""

    @abc.abstractmethod
    def ensure_serving(self) -> str:
        """Make sure the local server answers predictions (start it in the background when none
        answers); return its base URL."""

    @abc.abstractmethod
    def stop_serving(self) -> None:
        """Stop the server :meth:`ensure_serving` started."""


def ensure_serving(endpoints: Endpoints) -> str | None:
    """Make sure something answers predictions: where the local server answers, or None when the
    cloud serves."""
    return endpoints.ensure_serving() if isinstance(endpoints, LocalServing) else None


def stop_serving(endpoints: Endpoints) -> None:
    """Stop what :func:`ensure_serving` started on this machine; nothing on a cloud, whose
    deployments keep serving until undeployed."""
    if isinstance(endpoints, LocalServing):
        endpoints.stop_serving()
