"""The engine's error type (re-exported by :mod:`lakehouse_ml.bqml.engine`)."""

from __future__ import annotations

from lakehouse_ml.backends.warehouse import WarehouseError


class BqmlError(WarehouseError):
    """A BigQuery ML statement or function that cannot run, with what is supported instead."""


class ModelExistsError(BqmlError):
    """``CREATE MODEL`` (without OR REPLACE / IF NOT EXISTS) of a model that exists."""


class ModelNotFoundError(BqmlError):
    """A statement or function on a model that does not exist."""
