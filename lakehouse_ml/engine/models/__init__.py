"""The model types of the local BigQuery ML engine: :mod:`glm` (LINEAR_REG, LOGISTIC_REG),
:mod:`kmeans` (KMEANS) and :mod:`tree` (BOOSTED_TREE_*, RANDOM_FOREST_* through
:mod:`lakehouse_ml.engine.xgb`)."""
