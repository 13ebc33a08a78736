"""A model family: everything the local engine knows about some BigQuery ML model types.

One module per family (``glm.py``: LINEAR_REG and LOGISTIC_REG; ``kmeans.py``: KMEANS;
``tree.py``: BOOSTED_TREE_* and RANDOM_FOREST_*) subclasses :class:`ModelFamily` and calls
:func:`register`. The engine (``engine.py``), the local endpoint server
(``lakehouse_ml/serving/models.py``) and the SQL layer dispatch through :data:`FAMILIES`;
registering also declares the type's kind and served format in the BigQuery catalog
(:mod:`lakehouse_ml.bigquery.model_types`). ``docs/adding-a-model-type.md`` walks through
adding one.

A family declares:

* ``model_types`` and their :class:`~lakehouse_ml.bigquery.model_types.Kind` (``kinds``);
* its options: the pydantic model ``options_model`` with BigQuery ML's names (lower-case
  fields), defaults and ranges, the rules between them (:meth:`ModelFamily.check_options`),
  and which of the options shared by all types it takes (:meth:`ModelFamily.shared_option_names`;
  :mod:`lakehouse_ml.engine.options` parses those once);
* its preprocessing (``preprocessing``: ``"linear"`` standardizes numeric columns and one-hot
  encodes categorical ones, ``"kmeans"`` the same with STANDARDIZE_FEATURES, ``"tree"``
  label-encodes) and whether training splits off evaluation rows (``splits``);
* training (:meth:`ModelFamily.train`), scores (:meth:`ModelFamily.scores`), and the ``ML.*``
  functions it supports (``functions``), with the methods that compute them
  (:meth:`ModelFamily.explain` for ML.EXPLAIN_PREDICT and ML.GLOBAL_EXPLAIN,
  :meth:`ModelFamily.weights`, :meth:`ModelFamily.detect_anomalies`,
  :meth:`ModelFamily.centroid_distances`);
* whether the endpoint server has a numpy fast path for it (``fast_serving``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np
import pyarrow as pa

from lakehouse_ml.bigquery import model_types
from lakehouse_ml.bigquery.model_types import Kind
from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine.options import Options, validate_options

__all__ = [
    "BASE_FUNCTIONS",
    "CLASSIFIER_FUNCTIONS",
    "Explanation",
    "class_key",
    "FAMILIES",
    "Kind",
    "ModelFamily",
    "Options",
    "evaluation_arrays",
    "family_of",
    "list_of_structs",
    "predicted_index",
    "register",
    "supported_model_types",
    "validate_options",
]

if TYPE_CHECKING:  # pragma: no cover
    from lakehouse_ml.bigquery.preprocess import Columns, Design

# The ML.* functions every family supports.
BASE_FUNCTIONS = frozenset({"ML.PREDICT", "ML.EVALUATE", "ML.FEATURE_INFO", "ML.TRAINING_INFO"})
CLASSIFIER_FUNCTIONS = frozenset({"ML.ROC_CURVE", "ML.CONFUSION_MATRIX"})


class ModelFamily:
    """The declaration of a family; subclass it and :func:`register` an instance."""

    # MODEL_TYPE -> kind (the BigQuery catalog learns them at registration).
    kinds: ClassVar[Mapping[str, Kind]] = {}
    # The family's own options (without the shared ones); None: the family resolves its options
    # itself (resolve_options): the tree family, whose four model types have a pydantic model
    # each (lakehouse_ml/engine/xgb.py OPTIONS_MODELS).
    options_model: ClassVar[type[Options] | None] = None
    # Shared options the family accepts (lakehouse_ml.engine.options.SHARED; see
    # shared_option_names).
    shared_options: ClassVar[tuple[str, ...]] = ()
    preprocessing: ClassVar[str] = "linear"
    splits: ClassVar[bool] = True
    functions: ClassVar[frozenset[str]] = BASE_FUNCTIONS
    fast_serving: ClassVar[bool] = False
    # Largest number of label values a classifier of this family takes (None: no limit).
    max_classes: ClassVar[int | None] = None

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.kinds)

    def kind(self, model_type: str) -> Kind:
        return self.kinds[model_type]

    def is_classifier(self, model_type: str) -> bool:
        return self.kinds[model_type] is Kind.CLASSIFIER

    def is_supervised(self, model_type: str) -> bool:
        return self.kinds[model_type] in (Kind.CLASSIFIER, Kind.REGRESSOR)

    def supports(self, model_type: str, function: str) -> bool:
        functions = set(self.functions)
        if self.is_classifier(model_type):
            functions |= CLASSIFIER_FUNCTIONS
        return function in functions

    # -- options -----------------------------------------------------------------------------------
    def shared_option_names(self, model_type: str) -> tuple[str, ...]:
        """The shared options ``model_type`` takes (besides MODEL_TYPE, the registry options and
        KMS_KEY_NAME, which every type takes)."""
        return self.shared_options

    def check_options(self, model_type: str, given: Mapping[str, Any], resolved: dict[str, Any]) -> None:
        """The rules between options (``given``: as written; ``resolved``: with defaults)."""

    def resolve_options(self, model_type: str, given: dict[str, Any]) -> dict[str, Any]:
        """Only for a family without ``options_model``: every option of ``given`` (with the shared
        ones) validated, with defaults."""
        raise NotImplementedError(f"{type(self).__name__} declares no options_model")

    # -- training ----------------------------------------------------------------------------------
    def train(self, ctx: Any) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
        """Train on ``ctx`` (the engine's training context: ``model_type``, ``options``,
        ``frame``, ``prep``, ``y_all``, ``data_split``, ``meta``, ``say``, …); fill
        ``ctx.meta["training_info"]``, ``["evaluation"]``, ``["evaluation_rows"]``; return the
        arrays (NPZ) and files (JSON text) to store."""
        raise NotImplementedError

    # -- applying ----------------------------------------------------------------------------------
    def scores(self, model: Any, features: "Columns") -> np.ndarray:
        """Regression values (n,), or class probabilities (n, C) in class order."""
        raise NotImplementedError

    def predict_columns(self, model: Any, features: "Columns") -> list[tuple[str, Any]] | None:
        """ML.PREDICT's prediction columns when they are not those of the kind (k-means)."""
        return None

    def evaluate(self, model: Any, features: "Columns") -> dict[str, Any] | None:
        """ML.EVALUATE's metrics when they need no label (k-means); None: by the kind."""
        return None

    # -- the ML.* functions of ``functions`` (the engine checks ``supports`` before calling) ---------
    # ML.EXPLAIN_PREDICT's arguments besides TOP_K_FEATURES and THRESHOLD, with their defaults
    # (DOCS: "APPROX_FEATURE_CONTRIB … only applies to boosted tree and random forest models").
    explain_arguments: ClassVar[Mapping[str, Any]] = {"approx_feature_contrib": False}

    def explain_approximation(self, arguments: Mapping[str, Any]) -> bool:
        """Whether ML.EXPLAIN_PREDICT approximates (``arguments``: with ``explain_arguments``);
        a family without an approximation refuses APPROX_FEATURE_CONTRIB=TRUE."""
        approximate = arguments["approx_feature_contrib"]
        if not isinstance(approximate, bool):
            raise BqmlError("ML.EXPLAIN_PREDICT: APPROX_FEATURE_CONTRIB must be TRUE or FALSE.")
        if approximate:
            raise BqmlError(
                "ML.EXPLAIN_PREDICT: APPROX_FEATURE_CONTRIB applies to boosted tree and random forest models."
            )
        return False

    def explain(
        self,
        model: Any,
        features: "Columns | None",
        threshold: float | None,
        approximate: bool = False,
        *,
        prepared: "Design | np.ndarray | None" = None,
        class_level: bool = False,
    ) -> "Explanation":
        """ML.EXPLAIN_PREDICT's and ML.GLOBAL_EXPLAIN's attributions of each row of ``features``
        (or of ``prepared``: the rows already in the family's preprocessed form, during training).
        ``approximate``: APPROX_FEATURE_CONTRIB (a family that has no approximation refuses it);
        ``class_level``: also the attributions towards each class (classifiers)."""
        raise NotImplementedError(f"{type(self).__name__} has no explanations")

    def weights(self, model: Any, standardize: bool) -> pa.Table:
        """ML.WEIGHTS: processed_input, weight, category_weights (and class_label)."""
        raise NotImplementedError(f"{type(self).__name__} has no ML.WEIGHTS")

    def detect_anomalies(
        self, model: Any, features: "Columns", contamination: float
    ) -> list[tuple[str, Any]]:
        """ML.DETECT_ANOMALIES' columns (is_anomaly, … ) for the rows of ``features``."""
        raise NotImplementedError(f"{type(self).__name__} has no ML.DETECT_ANOMALIES")

    def centroid_distances(self, model: Any, features: "Columns") -> np.ndarray:
        """Clustering models: each row's distance to every centroid, (rows, centroids) in
        centroid-id order (the served predictions' ``centroid_distances``)."""
        raise NotImplementedError(f"{type(self).__name__} has no centroids")


@dataclass
class Explanation:
    """Attributions of rows, as ML.EXPLAIN_PREDICT reports them. ``names``: the features (or
    processed inputs); ``attributions``: (rows, features); ``baseline`` and ``prediction``:
    (rows,), in the space the attributions add up in (logits for classifiers); classifiers also
    give the ``predicted`` class index, its ``probability`` and, with ``class_level``, the
    attributions towards each class (``per_class``)."""

    names: list[str]
    attributions: np.ndarray
    baseline: np.ndarray
    prediction: np.ndarray
    predicted: np.ndarray | None = None
    probability: np.ndarray | None = None
    per_class: list[np.ndarray] | None = None


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Make ``family``'s model types trainable, and declare their kind (and served format) in
    the BigQuery catalog."""
    for model_type, kind in family.kinds.items():
        if model_type != model_type.upper():
            raise ValueError(f"MODEL_TYPE {model_type!r} must be upper-case.")
        known = FAMILIES.get(model_type)
        if known is not None and type(known) is not type(family):
            raise ValueError(f"MODEL_TYPE {model_type} is already declared by {type(known).__name__}.")
        model_types.register(model_type, kind)
    for model_type in family.kinds:
        FAMILIES[model_type] = family
    return family


def supported_model_types() -> tuple[str, ...]:
    return tuple(FAMILIES)


def family_of(model_type: str) -> ModelFamily:
    family = FAMILIES.get(model_type)
    if family is None:
        raise BqmlError(
            f"MODEL_TYPE {model_type!r} is not trained locally; supported locally: {', '.join(FAMILIES)}."
        )
    return family


# -- helpers the families share --------------------------------------------------------------------
def class_key(label: Any) -> str:
    """A class label as BigQuery ML's STRING class label (BOOL: 'true' / 'false'), to match
    CLASS_WEIGHTS' labels and name columns."""
    return ("true" if label else "false") if isinstance(label, bool) else str(label)


def predicted_index(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    if probs.shape[1] == 2:
        return (probs[:, 1] > (0.5 if threshold is None else threshold)).astype(np.int64)
    return np.argmax(probs, axis=1)


def evaluation_arrays(y: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """What ML.ROC_CURVE and ML.CONFUSION_MATRIX need without input data: the evaluation rows'
    class index and the model's output (positive-class probability, predicted class)."""
    out = {
        "eval_label_index": y.astype(np.int64),
        "eval_predicted_index": np.argmax(probs, axis=1).astype(np.int64),
    }
    if probs.shape[1] == 2:
        out["eval_positive_prob"] = probs[:, 1].astype(np.float64)
        out["eval_predicted_index"] = (probs[:, 1] > 0.5).astype(np.int64)
    return out


def list_of_structs(
    n: int, k: int, fields: dict[str, pa.Array], offsets: np.ndarray | None = None
) -> pa.Array:
    """``n`` rows of ``k`` structs each (or ``offsets``) as an ARRAY<STRUCT<…>> column."""
    struct = pa.StructArray.from_arrays(list(fields.values()), names=list(fields))
    if offsets is None:
        offsets = np.arange(0, n * k + 1, k, dtype=np.int32) if n * k < 2**31 else np.arange(0, n * k + 1, k)
    array_type = pa.list_ if offsets.dtype == np.int32 else pa.large_list
    return (pa.ListArray if array_type is pa.list_ else pa.LargeListArray).from_arrays(
        pa.array(offsets), struct
    )
