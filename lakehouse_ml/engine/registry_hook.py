"""What the local BigQuery ML engine needs from a model registry: :class:`RegistryHook`.

``BqmlEngine(models_dir, registry=…)`` takes one so that ``MODEL_REGISTRY='VERTEX_AI'`` models
register at CREATE MODEL, ``ALTER MODEL … SET OPTIONS(vertex_ai_model_id=…)`` registers an
existing model, CREATE OR REPLACE replaces the registered version and DROP MODEL removes it.
The local backend's :class:`lakehouse_ml.backends.local_registry.LocalModelRegistry` satisfies
it; the engine sits below the backends, so it declares the methods it calls rather than
importing the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["RegisteredVersion", "RegistryHook"]


@runtime_checkable
class RegisteredVersion(Protocol):
    """The parts of a registered model version the engine reads."""

    @property
    def model_id(self) -> str: ...

    @property
    def version_id(self) -> str: ...


@runtime_checkable
class RegistryHook(Protocol):
    """The registry methods the engine calls. ``source`` is the model's registered source,
    ``bqml://<dataset>.<model>``."""

    def find_bqml_version(self, source: str) -> RegisteredVersion | None:
        """The current registered version whose source is ``source``, or None."""
        ...

    def register_version(
        self,
        model_id: str,
        *,
        source: str,
        model_type: str,
        artifact_dir: str | Path,
        aliases: Sequence[str] = (),
        display_name: str | None = None,
        labels: Mapping[str, str] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> RegisteredVersion:
        """Register ``artifact_dir`` as a new version of ``model_id``."""
        ...

    def replace_bqml_version(
        self,
        source: str,
        model_id: str | None,
        *,
        model_type: str = "",
        artifact_dir: str | Path | None = None,
        aliases: Sequence[str] = (),
        display_name: str | None = None,
        labels: Mapping[str, str] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> RegisteredVersion | None:
        """After CREATE [OR REPLACE] MODEL: retire the version registered from ``source`` and, with
        a ``model_id``, register the new model under it."""
        ...

    def drop_bqml_model(self, source: str, *, check_only: bool = False) -> None:
        """DROP MODEL: retire the version registered from ``source``; raises
        :class:`~lakehouse_ml.core.errors.VersionDeployedError` while it is deployed (with
        ``check_only``, only that check)."""
        ...
