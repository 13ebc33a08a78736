"""The local BigQuery ML engine.

* :mod:`lakehouse_ml.bqml.engine` — the facade the SQL layer calls (``BqmlEngine``, ``BqmlError``).
* :mod:`lakehouse_ml.bqml.options` — option names, defaults and validation per model type.
* :mod:`lakehouse_ml.bqml.preprocess` — BigQuery types of input columns and automatic preprocessing.
* :mod:`lakehouse_ml.bqml.split` — ``DATA_SPLIT_METHOD``.
* :mod:`lakehouse_ml.bqml.metrics` — ``ML.EVALUATE`` metric definitions.
* :mod:`lakehouse_ml.bqml.artifacts` — safe, atomic model storage (JSON + NPZ + XGBoost JSON).
* :mod:`lakehouse_ml.bqml.models` — the model types.
* :mod:`lakehouse_ml.bqml.xgb` — XGBoost training for the tree model types.
* :mod:`lakehouse_ml.bqml.sql` — BigQuery ML statements and ``ML.*`` functions in SQL.
"""
