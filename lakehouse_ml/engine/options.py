"""BigQuery ML ``OPTIONS(...)``: names, defaults and validation per model type.

Every default below is read off the BigQuery ML reference pages (the "Arguments" paragraph of
each option); the URL is next to each table. Option names are case-insensitive (the SQL layer
hands them over lower-cased); string enumerations are compared case-insensitively and stored
upper-case.

What this module decides:

* which options a model type has (an unknown option fails, naming it and listing the supported
  ones);
* their defaults and the values they accept;
* the options BigQuery ML documents but the local engine cannot honour (hyperparameter tuning,
  ``WARM_START``): they fail with an error that says so, instead of being ignored;
* the registry options (``MODEL_REGISTRY``, ``VERTEX_AI_MODEL_ID``,
  ``VERTEX_AI_MODEL_VERSION_ALIASES``), validated against Vertex AI's patterns;
* which options ``ALTER MODEL … SET OPTIONS`` may change.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Callable, Mapping, Sequence

import pydantic

from lakehouse_ml.bigquery import model_types
from lakehouse_ml.bigquery.registry import VERTEX_ALIAS_DOC, VERTEX_ALIAS_PATTERN, VERTEX_MODEL_ID_PATTERN
from lakehouse_ml.core.errors import BqmlError
from lakehouse_ml.engine import class_weights as cw

GLM_DOC = "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-glm"
KMEANS_DOC = "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-kmeans"
CREATE_DOC = "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create"
ALTER_DOC = "https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-alter-model"


def _other_bigquery_model_type(value: str, supported: Sequence[str]) -> bool:
    """A BigQuery ML model type the local engine does not train (the BigQuery catalog,
    lakehouse_ml/bigquery/model_types.py), for the error message."""
    return value.upper() in model_types.known_types() and value.upper() not in supported


# --------------------------------------------------------------------------------------------------
# Value checkers
# --------------------------------------------------------------------------------------------------
Checker = Callable[[str, Any], Any]


def _bad(option: str, value: Any, allowed: str) -> BqmlError:
    return BqmlError(f"Invalid value {value!r} for option {option.upper()}: expected {allowed}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def boolean(option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(option, value, "TRUE or FALSE")
    return value


def integer(low: int | None = None, high: int | None = None) -> Checker:
    # A lower bound only reads "an INT64 >= 1", in every message (the tree pages' wording).
    at_least = f"an INT64 >= {low}" if low is not None and high is None else None

    def check(option: str, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(option, value, at_least or "an INT64")
        if (low is not None and value < low) or (high is not None and value > high):
            raise _bad(
                option,
                value,
                at_least
                or f"an INT64 in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]",
            )
        return value

    return check


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Checker:
    def check(option: str, value: Any) -> float:
        if not _is_number(value) or not math.isfinite(float(value)):
            raise _bad(option, value, "a FLOAT64")
        v = float(value)
        if (low is not None and (v < low or (low_open and v == low))) or (
            high is not None and (v > high or (high_open and v == high))
        ):
            raise _bad(
                option,
                value,
                f"a FLOAT64 in {'(' if low_open else '['}{low if low is not None else '-inf'}, "
                f"{high if high is not None else 'inf'}{')' if high_open else ']'}",
            )
        return v

    return check


def enum(*allowed: str) -> Checker:
    def check(option: str, value: Any) -> str:
        if not isinstance(value, str) or value.upper() not in allowed:
            raise _bad(option, value, "one of " + ", ".join(f"'{a}'" for a in allowed))
        return value.upper()

    return check


def string(option: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(option, value, "a non-empty STRING")
    return value


def string_array(option: str, value: Any) -> list[str]:
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(option, value, "an ARRAY<STRING>, for example ['a', 'b']")
    return value


def label_cols(option: str, value: Any) -> list[str]:
    value = string_array(option, value)
    if len(value) != 1:
        raise _bad(
            option, value, "a one-element ARRAY<STRING> naming the label column, for example ['label']"
        )
    return value


def class_weights(option: str, value: Any) -> list[list[Any]]:
    """``[STRUCT('label', weight), …]`` as ``[[label, weight], …]`` (from pairs, dicts or a mapping)."""
    items = cw.pairs(value, lambda: _bad(option, value, f"{cw.SHAPE}, e.g. [('a', 0.5), ('b', 2.0)]"))
    out = []
    for label, weight in items:
        if not _is_number(weight) or not math.isfinite(float(weight)) or float(weight) < 0:
            raise _bad(option, value, "non-negative FLOAT64 class weights")
        out.append([label, float(weight)])
    if not out:
        raise _bad(option, value, "at least one STRUCT(label, weight)")
    return out


def anything(option: str, value: Any) -> Any:
    return value


# --------------------------------------------------------------------------------------------------
# Options as pydantic models
# --------------------------------------------------------------------------------------------------
class Options(pydantic.BaseModel):
    """Base of a family's options model: BigQuery ML's option names as lower-case fields.
    Unknown options are refused by :func:`resolve` (naming the supported ones) before this model
    sees them."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


def option_model(name: str, table: Mapping[str, tuple[Any, Checker]]) -> type[Options]:
    """An options model from a table option -> (default, checker): each given value goes through
    its checker (which raises the BqmlError of this module, naming the option and the values it
    accepts)."""

    def field(option: str, checker: Checker) -> Any:
        return Annotated[Any, pydantic.BeforeValidator(lambda value: checker(option, value))]

    return pydantic.create_model(
        name,
        __base__=Options,
        **{option: (field(option, checker), default) for option, (default, checker) in table.items()},
    )


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
    return dict(parsed)


# --------------------------------------------------------------------------------------------------
# Registry options (CREATE_DOC: MODEL_REGISTRY, VERTEX_AI_MODEL_ID, VERTEX_AI_MODEL_VERSION_ALIASES)
# --------------------------------------------------------------------------------------------------


def vertex_model_id(option: str, value: Any) -> str:
    if not isinstance(value, str) or not VERTEX_MODEL_ID_PATTERN.match(value):
        raise BqmlError(
            f"Invalid {option.upper()} {value!r}: a Vertex AI model ID has up to 63 characters from "
            "[a-z0-9_-] and does not start with a digit or a hyphen (for example 'churn_model')."
        )
    return value


def vertex_aliases(option: str, value: Any) -> list[str]:
    value = string_array(option, value)
    for alias in value:
        if not VERTEX_ALIAS_PATTERN.match(alias):
            raise BqmlError(
                f"Invalid Vertex AI model version alias {alias!r} in {option.upper()}: an alias has 2 to "
                "128 characters, starts with a lower-case letter, then letters, digits or hyphens, and "
                "ends with a lower-case letter, a digit or a hyphen (pattern "
                f"[a-z][a-zA-Z0-9-]{{0,126}}[a-z-0-9], {VERTEX_ALIAS_DOC})."
            )
    if len(set(value)) != len(value):
        raise BqmlError(
            f"{option.upper()} lists an alias more than once: {value}; aliases are unique within a model."
        )
    return value


def timestamp(option: str, value: Any) -> str:
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return stamp.astimezone(dt.timezone.utc).isoformat()
    if isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value.replace(" UTC", "+00:00").replace("Z", "+00:00"))
        except ValueError:
            raise _bad(option, value, "a TIMESTAMP, for example '2030-01-01 00:00:00 UTC'") from None
        return (
            (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc))
            .astimezone(dt.timezone.utc)
            .isoformat()
        )
    raise _bad(option, value, "a TIMESTAMP, for example '2030-01-01 00:00:00 UTC'")


def labels(option: str, value: Any) -> dict[str, str]:
    """``[('key', 'value'), …]`` or a mapping, as a dict of strings."""
    pairs = value.items() if isinstance(value, Mapping) else value
    try:
        out = {str(k): str(v) for k, v in (tuple(p.values()) if isinstance(p, Mapping) else p for p in pairs)}
    except (TypeError, ValueError):
        raise _bad(option, value, "an ARRAY<STRUCT<STRING, STRING>>, for example [('team', 'ml')]") from None
    return out


# --------------------------------------------------------------------------------------------------
# Option tables: option -> (default, checker). ``None`` default = unset.
# --------------------------------------------------------------------------------------------------
# Every model type: https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create
# (MODEL_REGISTRY, VERTEX_AI_MODEL_ID, VERTEX_AI_MODEL_VERSION_ALIASES, KMS_KEY_NAME; each model's
# page repeats them).
COMMON: dict[str, tuple[Any, Checker]] = {
    "model_type": (None, anything),
    "model_registry": (None, enum("VERTEX_AI")),
    "vertex_ai_model_id": (None, vertex_model_id),
    "vertex_ai_model_version_aliases": (None, vertex_aliases),
    "kms_key_name": (None, string),
}

_SPLIT_METHODS = ("AUTO_SPLIT", "RANDOM", "CUSTOM", "SEQ", "NO_SPLIT")

# Hyperparameter tuning options: documented, refused locally (see _REFUSED).
TUNING: dict[str, tuple[Any, Checker]] = {
    "num_trials": (None, integer(1, 100)),
    "max_parallel_trials": (1, integer(1, 5)),
    "hparam_tuning_algorithm": ("VIZIER_DEFAULT", enum("VIZIER_DEFAULT", "RANDOM_SEARCH", "GRID_SEARCH")),
    "hparam_tuning_objectives": (None, anything),
}

# Options BigQuery ML documents that the local engine refuses (value given and not the default).
_REFUSED = {
    "num_trials": "hyperparameter tuning (NUM_TRIALS and the HPARAM_* options) is not available in the "
    "local engine; train with fixed option values, or run this statement on BigQuery",
    "hparam_tuning_objectives": "hyperparameter tuning is not available in the local engine",
    "hparam_tuning_algorithm": "hyperparameter tuning is not available in the local engine",
    "max_parallel_trials": "hyperparameter tuning is not available in the local engine",
    "warm_start": "WARM_START=TRUE (retraining an existing model) is not available in the local engine; "
    "use CREATE OR REPLACE MODEL to train from scratch",
    "data_split_test_fraction": "DATA_SPLIT_TEST_FRACTION is only used with hyperparameter tuning, which "
    "is not available in the local engine",
}

# "ALTER MODEL … SET OPTIONS", the options BigQuery lets you change on a model:
# https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-alter-model
# DEPLOY_MODEL and ENDPOINT_IDLE_TTL apply to open models deployed by BigQuery (not the model
# types trained here), so they are refused with that reason.
ALTER_OPTIONS: dict[str, Checker] = {
    "vertex_ai_model_id": vertex_model_id,
    "expiration_timestamp": timestamp,
    "kms_key_name": string,
    "description": lambda option, value: (
        value if value is None or isinstance(value, str) else string(option, value)
    ),
    "labels": labels,
}
ALTER_REFUSED = {
    "deploy_model": "DEPLOY_MODEL applies to open models that BigQuery deploys to Vertex AI, not to "
    "models trained by BigQuery ML",
    "endpoint_idle_ttl": "ENDPOINT_IDLE_TTL applies to open models that BigQuery deploys to Vertex AI, not "
    "to models trained by BigQuery ML",
}
# Descriptive model metadata BigQuery keeps on a model but does not accept in CREATE MODEL's
# option list (CREATE_DOC): set them with ALTER MODEL … SET OPTIONS.
DESCRIPTIVE_OPTIONS = ("description", "labels", "expiration_timestamp")

REGISTRY_OPTIONS = ("model_registry", "vertex_ai_model_id", "vertex_ai_model_version_aliases")


# The options shared by model types, parsed here once: families declare their own options as a
# pydantic model (ModelFamily.options_model) and list the shared ones they take
# (ModelFamily.shared_option_names). GLM_DOC, "Arguments", for their defaults.
SHARED: dict[str, tuple[Any, Checker]] = {
    "input_label_cols": (["label"], label_cols),
    "data_split_method": ("AUTO_SPLIT", enum(*_SPLIT_METHODS)),
    "data_split_eval_fraction": (0.2, number(0.0, 1.0, low_open=True, high_open=True)),
    "data_split_col": (None, string),
    "auto_class_weights": (False, boolean),
    "class_weights": (None, class_weights),
    "enable_global_explain": (False, boolean),
}


def check_model_type(value: Any, supported: Sequence[str]) -> str:
    if value is None:
        raise BqmlError(
            "CREATE MODEL needs OPTIONS(MODEL_TYPE=...); supported model types: " + ", ".join(supported) + "."
        )
    if not isinstance(value, str) or value.upper() not in supported:
        other = isinstance(value, str) and _other_bigquery_model_type(value, supported)
        reason = (
            "is a BigQuery ML model type the local engine does not train" if other else "is not a model type"
        )
        raise BqmlError(
            f"MODEL_TYPE {value!r} {reason}; supported locally: {', '.join(supported)}. "
            "See docs/bqml-coverage.md."
        )
    return value.upper()


def _unknown(model_type: str, names: list[str], supported: list[str]) -> BqmlError:
    hint = ""
    descriptive = [n for n in names if n in DESCRIPTIVE_OPTIONS]
    if descriptive:
        hint = (
            f" {', '.join(n.upper() for n in descriptive)} is not a CREATE MODEL option in BigQuery ML; "
            "set it afterwards with ALTER MODEL … SET OPTIONS."
        )
    return BqmlError(
        f"Unknown option(s) {', '.join(n.upper() for n in names)} for MODEL_TYPE {model_type}; "
        "supported options: "
        f"{', '.join(sorted(s.upper() for s in supported))}.{hint}"
    )


def resolve(options: Mapping[str, Any], families: Mapping[str, Any]) -> dict[str, Any]:
    """Validated options with every default filled in (lower-case keys; ``model_type`` upper-case).
    ``families``: MODEL_TYPE -> model family (lakehouse_ml/engine/models/base.py FAMILIES)."""
    given = {str(k).lower(): v for k, v in (options or {}).items()}
    model_type = check_model_type(given.get("model_type"), list(families))
    given["model_type"] = model_type
    family = families[model_type]
    if family.options_model is None:
        resolved = family.resolve_options(model_type, given)
    else:
        resolved = _resolve_declared(family, model_type, given)
    _check_registry(resolved)
    _check_split(model_type, resolved)
    return resolved


def _checked(given: dict[str, Any], table: dict[str, tuple[Any, Checker]]) -> dict[str, Any]:
    out = {}
    for name, (default, checker) in table.items():
        out[name] = checker(name, given[name]) if given.get(name) is not None else default
    return out


def _resolve_declared(family: Any, model_type: str, given: dict[str, Any]) -> dict[str, Any]:
    """A family with a pydantic options model: the shared options it takes (parsed here, once)
    and its own (validated by its model)."""
    shared = {**COMMON, **{k: SHARED[k] for k in family.shared_option_names(model_type)}}
    model = family.options_model
    own = list(model.model_fields)
    unknown = sorted(k for k in given if k not in shared and k not in own)
    if unknown:
        raise _unknown(model_type, unknown, [*shared, *own])
    resolved = _checked({k: v for k, v in given.items() if k != "model_type"}, shared)
    resolved["model_type"] = model_type
    check_class_weights(resolved)
    # Given values (not NULL) are validated; the others take their defaults.
    resolved.update(
        validate_options(model, model_type, {k: given[k] for k in own if given.get(k) is not None})
    )
    defaults = {**shared, **{name: (field.default, None) for name, field in model.model_fields.items()}}
    _refuse(given, resolved, defaults)
    family.check_options(model_type, given, resolved)
    return resolved


def _refuse(given: dict[str, Any], resolved: dict[str, Any], table: dict[str, tuple[Any, Checker]]) -> None:
    for name in _REFUSED:
        if name in given and name in table and given[name] is not None and resolved[name] != table[name][0]:
            raise refused(name)


def resolve_common(given: Mapping[str, Any]) -> dict[str, Any]:
    """The options of :data:`COMMON` but MODEL_TYPE (the registry options, KMS_KEY_NAME) that
    ``given`` holds, validated, with their defaults: for a family that resolves its own options
    (``ModelFamily.resolve_options``)."""
    return _checked(dict(given), {k: v for k, v in COMMON.items() if k != "model_type"})


def refused(name: str) -> BqmlError:
    """The error for an option BigQuery ML documents that the local engine does not honour."""
    return BqmlError(f"Option {name.upper()} is not supported locally: {_REFUSED[name]}.")


def check_class_weights(o: Mapping[str, Any]) -> None:
    # GLM_DOC, CLASS_WEIGHTS: "You can't specify this option if AUTO_CLASS_WEIGHTS is TRUE."
    if o.get("auto_class_weights") and o.get("class_weights") is not None:
        raise BqmlError("CLASS_WEIGHTS cannot be specified when AUTO_CLASS_WEIGHTS is TRUE.")


def _check_registry(o: dict[str, Any]) -> None:
    # "You can only set the VERTEX_AI_MODEL_ID option when the MODEL_REGISTRY option is set to
    # VERTEX_AI." (and the same for VERTEX_AI_MODEL_VERSION_ALIASES)
    for name in ("vertex_ai_model_id", "vertex_ai_model_version_aliases"):
        if o.get(name) is not None and o.get("model_registry") != "VERTEX_AI":
            raise BqmlError(f"{name.upper()} can only be set when MODEL_REGISTRY='VERTEX_AI'.")


def _check_split(model_type: str, o: dict[str, Any]) -> None:
    if "data_split_method" not in o:
        return
    method, col = o["data_split_method"], o.get("data_split_col")
    if method in ("CUSTOM", "SEQ") and not col:
        raise BqmlError(f"DATA_SPLIT_METHOD='{method}' needs DATA_SPLIT_COL naming the column to split on.")
    if col and method not in ("CUSTOM", "SEQ"):
        raise BqmlError(f"DATA_SPLIT_COL is used with DATA_SPLIT_METHOD 'CUSTOM' or 'SEQ', not '{method}'.")


def check_model_name_for_vertex(name: str, o: Mapping[str, Any]) -> None:
    """'If you don't specify a Vertex AI model ID, the BigQuery ML model name must meet these
    requirements.' (GLM_DOC, VERTEX_AI_MODEL_ID)"""
    if o.get("model_registry") == "VERTEX_AI" and o.get("vertex_ai_model_id") is None:
        if not VERTEX_MODEL_ID_PATTERN.match(name):
            raise BqmlError(
                "MODEL_REGISTRY='VERTEX_AI' without VERTEX_AI_MODEL_ID registers the model under its "
                f"name, but {name!r} is not a valid Vertex AI model ID (up to 63 characters from "
                "[a-z0-9_-], not starting "
                "with a digit or a hyphen); set VERTEX_AI_MODEL_ID."
            )


def resolve_alter(options: Mapping[str, Any]) -> dict[str, Any]:
    """``ALTER MODEL … SET OPTIONS``: validated changes; anything else fails naming what is allowed."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        name = str(key).lower()
        if name in ALTER_REFUSED:
            raise BqmlError(f"ALTER MODEL option {name.upper()} is not supported: {ALTER_REFUSED[name]}.")
        if name not in ALTER_OPTIONS:
            raise BqmlError(
                f"ALTER MODEL … SET OPTIONS cannot change {name.upper()}; options BigQuery ML lets you "
                "change: "
                f"{', '.join(o.upper() for o in ALTER_OPTIONS)}. Other options need CREATE OR REPLACE MODEL."
            )
        out[name] = None if value is None else ALTER_OPTIONS[name](name, value)
    return out
