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
* its options (:meth:`ModelFamily.resolve_options`): by default the pydantic model
  ``options_model`` with BigQuery ML's names (lower-case fields), defaults and ranges, plus the
  options every type shares (:mod:`lakehouse_ml.engine.options`, parsed once);
* its preprocessing (``preprocessing``: ``"linear"`` standardizes numeric columns and one-hot
  encodes categorical ones, ``"kmeans"`` the same with STANDARDIZE_FEATURES, ``"tree"``
  label-encodes) and whether training splits off evaluation rows (``splits``);
* training (:meth:`ModelFamily.train`), scores (:meth:`ModelFamily.scores`), and the ``ML.*``
  functions it supports (``functions``), with the hooks those need;
* whether the endpoint server has a numpy fast path for it (``fast_serving``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np
import pyarrow as pa
import pydantic

from lakehouse_ml.bigquery import model_types
from lakehouse_ml.bigquery.model_types import Kind
from lakehouse_ml.core.errors import BqmlError

if TYPE_CHECKING:  # pragma: no cover
    from lakehouse_ml.bigquery.preprocess import Columns

# The ML.* functions every family supports.
BASE_FUNCTIONS = frozenset({"ML.PREDICT", "ML.EVALUATE", "ML.FEATURE_INFO", "ML.TRAINING_INFO"})
CLASSIFIER_FUNCTIONS = frozenset({"ML.ROC_CURVE", "ML.CONFUSION_MATRIX"})


class Options(pydantic.BaseModel):
    """Base of a family's options model: BigQuery ML's option names as lower-case fields;
    unknown options are refused by :func:`lakehouse_ml.engine.options.resolve` (naming the
    supported ones) before this model sees them."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


_BIGQUERY_TYPES = {float: "FLOAT64", int: "INT64", bool: "BOOL", str: "STRING"}


def _expected(field: Any) -> str:
    """What a field accepts, in BigQuery's words: ``a FLOAT64 in [0.0, 100.0]``."""
    what = _BIGQUERY_TYPES.get(field.annotation, getattr(field.annotation, "__name__", str(field.annotation)))
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    if not bounds:
        return f"a {what}"
    low = bounds.get("ge", bounds.get("gt", "-inf"))
    high = bounds.get("le", bounds.get("lt", "inf"))
    return (
        f"a {what} in {'(' if 'gt' in bounds or low == '-inf' else '['}{low}, "
        f"{high}{')' if 'lt' in bounds or high == 'inf' else ']'}"
    )


def validate_options(model: type[Options], model_type: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` (lower-case names, the family's own options only) validated by ``model``, with
    every default filled in; a bad value fails naming the option and the values it accepts."""
    try:
        parsed = model.model_validate(dict(given))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        field = model.model_fields.get(name)
        expected = _expected(field) if field is not None else first["msg"]
        raise BqmlError(
            f"Invalid value {given.get(name)!r} for option {name.upper()} of MODEL_TYPE {model_type}: "
            f"expected {expected} ({first['msg']})."
        ) from None
    return parsed.model_dump()


class ModelFamily:
    """The declaration of a family; subclass it and :func:`register` an instance."""

    # MODEL_TYPE -> kind (the BigQuery catalog learns them at registration).
    kinds: ClassVar[Mapping[str, Kind]] = {}
    # The family's own options (without the shared ones); None: the family resolves its options
    # itself (resolve_options).
    options_model: ClassVar[type[Options] | None] = None
    # Shared options the family accepts (lakehouse_ml.engine.options.SHARED).
    shared_options: ClassVar[tuple[str, ...]] = ()
    preprocessing: ClassVar[str] = "linear"
    splits: ClassVar[bool] = True
    functions: ClassVar[frozenset[str]] = BASE_FUNCTIONS
    fast_serving: ClassVar[bool] = False
    # Largest number of label values a classifier of this family takes (None: no limit).
    max_classes: ClassVar[int | None] = None
    # The column names of ML.EVALUATE, by kind (lakehouse_ml.bigquery.metrics) unless set.

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
    def option_names(self, model_type: str) -> list[str]:
        """The family's own option names for ``model_type`` (for "supported options")."""
        return list(self.options_model.model_fields) if self.options_model is not None else []

    def resolve_options(self, model_type: str, given: dict[str, Any]) -> dict[str, Any]:
        """The family's own options of ``given`` validated, with defaults (lower-case keys)."""
        assert self.options_model is not None, f"{type(self).__name__} declares no options_model"
        return validate_options(self.options_model, model_type, given)

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
