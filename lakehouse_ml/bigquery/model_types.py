"""The BigQuery ML model types and their kind: a BigQuery fact both backends share.

The kind decides what the lifecycle evaluates (classification, regression or clustering
metrics) and how Vertex AI serves the model (:mod:`lakehouse_ml.bigquery.served`). The catalog
holds the documented model types the local engine does not train too: on gcp BigQuery trains
them. Source: "The CREATE MODEL statement", MODEL_TYPE
(https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create).

A model family that brings a new type registers it with :func:`register`; every view below
(:data:`CLASSIFIER_TYPES` and the others) is live, so nothing else is edited.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence


class Kind(str, enum.Enum):
    CLASSIFIER = "classifier"
    REGRESSOR = "regressor"
    CLUSTERING = "clustering"
    OTHER = "other"  # matrix factorization, PCA, autoencoders, time series, imported models, …


_CATALOG: dict[str, Kind] = {}
# The types whose served predictions have the Vertex AI format of their kind (served.py).
_SERVED: set[str] = set()


def register(model_type: str, kind: Kind, *, served: bool = True) -> None:
    """Declare ``model_type`` (upper-case) of ``kind``; ``served``: Vertex AI serves it in the
    prediction format of its kind (classifiers, regressors, clustering)."""
    name = model_type.upper()
    known = _CATALOG.get(name)
    if known is not None and known is not kind:
        raise ValueError(f"MODEL_TYPE {name} is already registered as a {known.value}, not a {kind.value}.")
    _CATALOG[name] = kind
    if served and kind is not Kind.OTHER:
        _SERVED.add(name)


def kind_of(model_type: str) -> Kind | None:
    return _CATALOG.get(str(model_type).upper())


def is_served(model_type: str) -> bool:
    return str(model_type).upper() in _SERVED


def known_types() -> list[str]:
    return list(_CATALOG)


class TypesOf(Sequence):
    """The registered model types of one kind, in registration order (a live view)."""

    def __init__(self, *kinds: Kind, served_only: bool = False):
        self._kinds = kinds
        self._served_only = served_only

    def _items(self) -> tuple[str, ...]:
        return tuple(
            t for t, k in _CATALOG.items() if k in self._kinds and (not self._served_only or t in _SERVED)
        )

    def __getitem__(self, index):  # type: ignore[override]
        return self._items()[index]

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __contains__(self, value: object) -> bool:
        return (
            isinstance(value, str)
            and _CATALOG.get(value) in self._kinds
            and (not self._served_only or value in _SERVED)
        )

    def __add__(self, other: Sequence[str]) -> tuple[str, ...]:
        return self._items() + tuple(other)

    def __radd__(self, other: Sequence[str]) -> tuple[str, ...]:
        return tuple(other) + self._items()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


# The served types of each kind: what the lifecycle deploys, evaluates and watches.
CLASSIFIER_TYPES = TypesOf(Kind.CLASSIFIER, served_only=True)
REGRESSOR_TYPES = TypesOf(Kind.REGRESSOR, served_only=True)
CLUSTERING_TYPES = TypesOf(Kind.CLUSTERING, served_only=True)
SERVED_MODEL_TYPES = TypesOf(Kind.CLASSIFIER, Kind.REGRESSOR, Kind.CLUSTERING, served_only=True)

# The documented model types (CREATE MODEL, MODEL_TYPE), in the order the served types were
# listed before (classifiers, regressors, clustering), then the others.
for _type in ("LOGISTIC_REG", "BOOSTED_TREE_CLASSIFIER", "RANDOM_FOREST_CLASSIFIER"):
    register(_type, Kind.CLASSIFIER)
for _type in ("LINEAR_REG", "BOOSTED_TREE_REGRESSOR", "RANDOM_FOREST_REGRESSOR"):
    register(_type, Kind.REGRESSOR)
register("KMEANS", Kind.CLUSTERING)
# Trained by BigQuery, not served here in the format of a kind (or not a kind of their own).
for _type in ("DNN_CLASSIFIER", "DNN_LINEAR_COMBINED_CLASSIFIER", "AUTOML_CLASSIFIER"):
    register(_type, Kind.CLASSIFIER, served=False)
for _type in ("DNN_REGRESSOR", "DNN_LINEAR_COMBINED_REGRESSOR", "AUTOML_REGRESSOR"):
    register(_type, Kind.REGRESSOR, served=False)
for _type in (
    "MATRIX_FACTORIZATION",
    "PCA",
    "AUTOENCODER",
    "ARIMA_PLUS",
    "ARIMA_PLUS_XREG",
    "TENSORFLOW",
    "TENSORFLOW_LITE",
    "ONNX",
    "XGBOOST",
    "CONTRIBUTION_ANALYSIS",
    "TRANSFORM_ONLY",
):
    register(_type, Kind.OTHER)
del _type
