"""The project's error types, at the bottom of the house so every layer can raise them.

Every message says what went wrong and what to do next. The hierarchy follows where a failure
comes from: :class:`WarehouseError` for BigQuery SQL (and BigQuery ML, whose statements run in the
warehouse), :class:`RegistryError` for the model registry, :class:`EndpointError` for endpoints.
"""

from __future__ import annotations

from collections.abc import Sequence


class WarehouseError(RuntimeError):
    """Any warehouse failure. Messages say what went wrong and what to do next."""


class SQLTranslationError(WarehouseError):
    """BigQuery SQL that the local warehouse cannot run. The message names the construct."""


class TableNotFoundError(WarehouseError):
    """A referenced table does not exist."""

    def __init__(self, table: str, message: str):
        super().__init__(message)
        self.table = table


class BqmlError(WarehouseError):
    """A BigQuery ML statement or function that cannot run, with what is supported instead."""


class ModelExistsError(BqmlError):
    """``CREATE MODEL`` (without OR REPLACE / IF NOT EXISTS) of a model that exists."""


class ModelNotFoundError(BqmlError):
    """A statement or function on a model that does not exist."""


class RegistryError(WarehouseError):
    """A registry operation that cannot run. The message says what to do next."""


class ModelNotRegisteredError(RegistryError):
    """The model id, version or alias does not exist."""


class VersionDeployedError(RegistryError):
    """A version (or the BigQuery ML model behind it) is deployed to an endpoint. ``endpoints``:
    the resource names of the endpoints it is deployed to."""

    def __init__(self, message: str, endpoints: Sequence[str] = ()):
        super().__init__(message)
        self.endpoints = list(endpoints)


class EndpointError(RuntimeError):
    """Any endpoint failure; the message says what went wrong and what to do next."""
