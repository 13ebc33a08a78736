"""The local BigQuery ML engine.

* :mod:`lakehouse_ml.engine.engine` — the facade the SQL layer calls (``BqmlEngine``, ``BqmlError``).
* :mod:`lakehouse_ml.engine.options` — the options every model type shares, the value checkers and
  the pydantic plumbing of the families' options.
* :mod:`lakehouse_ml.bigquery.preprocess` — BigQuery types of input columns and automatic preprocessing.
* :mod:`lakehouse_ml.bigquery.split` — ``DATA_SPLIT_METHOD``.
* :mod:`lakehouse_ml.bigquery.metrics` — ``ML.EVALUATE`` metric definitions.
* :mod:`lakehouse_ml.engine.artifacts` — safe, atomic model storage (JSON + NPZ + XGBoost JSON).
* :mod:`lakehouse_ml.engine.models` — the model families (``base``: ``ModelFamily``, ``FAMILIES``),
  one module per family; ``docs/adding-a-model-type.md``.
* :mod:`lakehouse_ml.engine.xgb` — XGBoost training for the tree model types.
* :mod:`lakehouse_ml.engine.sql` — runs BigQuery ML statements and ``ML.*`` functions in SQL, as
  parsed by :mod:`lakehouse_ml.bigquery.dialect`.
"""
