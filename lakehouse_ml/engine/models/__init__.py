"""The model families of the local BigQuery ML engine (:mod:`base`: the interface and the
registry): :mod:`glm` (LINEAR_REG, LOGISTIC_REG), :mod:`kmeans` (KMEANS) and :mod:`tree`
(BOOSTED_TREE_*, RANDOM_FOREST_* through :mod:`lakehouse_ml.engine.xgb`). Importing this package
registers them.

Out-of-tree families: ``LAKEHOUSE_ML_MODEL_FAMILIES`` names modules (comma-separated, importable
from ``PYTHONPATH``) that define and register model families; importing this package imports them
too, so every process (the engine, the local endpoint server) knows their model types.
``docs/adding-a-model-type.md`` describes both ways.
"""

import importlib
import os

from lakehouse_ml.engine.models import base, glm, kmeans, tree
from lakehouse_ml.engine.models.base import FAMILIES, ModelFamily, register

__all__ = ["FAMILIES", "ModelFamily", "base", "glm", "kmeans", "load_families", "register", "tree"]

FAMILIES_ENV = "LAKEHOUSE_ML_MODEL_FAMILIES"


def load_families(names: str | None = None) -> list[str]:
    """Import the family modules ``names`` (comma-separated; default: ``$LAKEHOUSE_ML_MODEL_FAMILIES``),
    which register their families. Returns the modules imported."""
    text = os.environ.get(FAMILIES_ENV, "") if names is None else names
    modules = [n.strip() for n in text.split(",") if n.strip()]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"{FAMILIES_ENV}: cannot import model family module {module!r}: {exc}") from exc
    return modules


load_families()
