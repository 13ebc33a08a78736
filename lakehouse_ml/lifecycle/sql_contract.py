"""Each served model's feature list is declared once: its ``CREATE MODEL`` statement.

A served model has three SQL files that must name the same features:

* ``sql/models/<model>.sql``: the training query, which declares the features. They are its
  columns, without the label (``INPUT_LABEL_COLS``) and the columns BigQuery ML uses for
  something else (``DATA_SPLIT_COL``, ``KMEANS_INIT_COL``, ``INSTANCE_WEIGHT_COL``). For a model
  with a ``TRANSFORM`` clause, these are the TRANSFORM's input columns, which is what
  ``ML.PREDICT`` and the endpoint take.
* ``sql/serving/<model>.sql``: the instances the website sends. Exactly the features.
* ``sql/gate/<model>.sql``: the fresh rows both versions are scored on. The features, plus the
  label for a supervised model.

:func:`check_model_sql` runs when the Dagster definitions load, so a missing file or a column
that is in one file and not the other fails there, naming the file and the columns, instead of in
a deployment run.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlglot import exp

from lakehouse_ml.bigquery.dialect import parse_bigquery
from lakehouse_ml.bigquery.sqlfiles import read_sql, sql_dir
from lakehouse_ml.core.errors import WarehouseError
from lakehouse_ml.lifecycle.models import ModelSpec

# CREATE MODEL options whose column is not a feature (the CREATE MODEL reference pages).
NON_FEATURE_OPTIONS = ("data_split_col", "kmeans_init_col", "instance_weight_col")


def output_columns(sql: str, where: str) -> list[str]:
    """The column names a single query returns, in order. A ``*`` is refused: the files list
    their columns, so that the check can compare them."""
    statements = parse_bigquery(sql)
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise WarehouseError(f"{where} must hold exactly one SELECT query.")
    query = statements[0]
    if any(isinstance(s, exp.Star) or (isinstance(s, exp.Column) and s.is_star) for s in query.selects):
        raise WarehouseError(
            f"{where} selects *: list its columns, so they can be checked against the model."
        )
    return list(query.named_selects)


def _lower(options: dict, name: str) -> list[str]:
    value = options.get(name)
    if value is None:
        return []
    return [str(v).lower() for v in (value if isinstance(value, (list, tuple)) else [value])]


def model_features(spec: ModelSpec) -> list[str]:
    """The features of ``spec``'s model, as its training query declares them (see the module)."""
    options = spec.options
    skip = set(_lower(options, "input_label_cols"))
    for name in NON_FEATURE_OPTIONS:
        skip.update(_lower(options, name))
    columns = output_columns(spec.training_query, f"The AS query of sql/{spec.sql_path}")
    return [c for c in columns if c.lower() not in skip]


def _compare(where: str, got: list[str], expected: list[str]) -> list[str]:
    missing = [c for c in expected if c.lower() not in {g.lower() for g in got}]
    extra = [c for c in got if c.lower() not in {e.lower() for e in expected}]
    problems = []
    if missing:
        problems.append(f"{where} lacks {', '.join(missing)}")
    if extra:
        problems.append(f"{where} has columns the model does not declare: {', '.join(extra)}")
    return problems


def model_sql_problems(spec: ModelSpec) -> list[str]:
    """What disagrees between a served model's three SQL files (empty when they agree)."""
    if spec.serving is None:
        return []
    features = model_features(spec)
    problems: list[str] = []
    label = [spec.label] if spec.label else []
    for folder, expected in (("serving", features), ("gate", features + label)):
        relative = f"{folder}/{spec.name}.sql"
        if not (sql_dir() / relative).is_file():
            problems.append(f"sql/{relative} is missing; a served model needs one")
            continue
        got = output_columns(read_sql(relative), f"sql/{relative}")
        problems.extend(_compare(f"sql/{relative}", got, expected))
    return problems


def check_model_sql(specs: Iterable[ModelSpec]) -> None:
    """Raise :class:`WarehouseError` naming every disagreement among the served models' files."""
    problems = [f"{spec.name}: {p}" for spec in specs for p in model_sql_problems(spec)]
    if problems:
        raise WarehouseError(
            "The served models' SQL files disagree with their CREATE MODEL statements (sql/models/<model>.sql "
            "declares the features): " + "; ".join(problems) + "."
        )
